"""Smoke test for bench/run.py: the quick benchmarks run to the end and print their figures.
Timings are never asserted (they depend on the machine and its load); the benchmarks'
own output says whether a target was met."""

import os
import subprocess
import sys

RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run.py")


def run_bench(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    return subprocess.run([sys.executable, RUN, "--quick", "--no-save", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_quick_enqueue_and_reindex_benchmarks_print_their_figures():
    ran = run_bench("--only", "enqueue_cli", "--only", "reindex_100k")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    for expected in ("== enqueue_cli", "queuectl enqueue '{\"command\":\"true\"}'",
                     'python -c "import click, sqlite3, json"', "enqueue / import baseline",
                     "watchdog/psutil on the enqueue path", "== reindex_100k",
                     "reindex of 2,000 jobs", "jobs indexed per second", "== targets"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "median" in out and "FAILED" not in out
    assert "status_list_100k" not in out and "batch_enqueue_10k" not in out


def test_quick_pickup_benchmark_starts_a_worker_and_prints_its_figures():
    ran = run_bench("--only", "pickup")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    for expected in ("== pickup", "pickup, idle worker, inotify", "p50", "p95",
                     "floor: python spawns sh -c 'date ...' directly",
                     "pickup p50 / spawn floor p50", "== targets"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "FAILED" not in out


def test_unknown_benchmark_is_a_usage_error_listing_the_names():
    ran = run_bench("--only", "nope")
    assert ran.returncode == 2
    assert "unknown benchmark nope" in ran.stderr
    assert "enqueue_cli" in ran.stderr and "reindex_100k" in ran.stderr
