"""Smoke test for bench/run.py: the quick benchmarks run to the end and print their figures.
Timings are never asserted (they depend on the machine and its load); the benchmarks'
own output says whether a target was met."""

import json
import os
import shutil
import subprocess
import sys

import pytest

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


# ---- issue 9: the hot path side by side, task-spooler's driver, the worker profile ---------

BENCH = os.path.dirname(RUN)
HAVE_TSP = shutil.which("tsp") is not None


def test_quick_hotpath_benchmark_prints_the_side_by_side_table_with_its_goals():
    ran = run_bench("--only", "hotpath")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    for expected in ("== hotpath", "| | direct spawn | task-spooler | queuectl |",
                     "| pickup p50 (idle, drop-in) (ms) |", "<= 1.5x direct spawn",
                     "| drain of a full queue (jobs/s) |", ">= 1.2x task-spooler",
                     "drain: the durable spool's floor", "without its 3 fsyncs per job",
                     "drain against the durable floor (jobs/s) |",
                     "| one by one while running (end-to-end) (jobs/s) |",
                     "| CPU per job outside the job, drain (ms) |", "<= 1.5 ms",
                     "<= 1.3x floor", ">= 5000 jobs/s", "load average (1 min) before -> after",
                     "install)", "== targets"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    if HAVE_TSP:
        assert "task-spooler: " in out and ">= 1.2x task-spooler | not judged" not in out
    else:
        assert "task-spooler is NOT installed" in out
    assert "FAILED" not in out


@pytest.mark.skipif(not HAVE_TSP, reason="task-spooler (tsp) is not installed")
def test_tspkit_reaps_tsp_server_and_clients_and_books_their_cpu(tmp_path):
    ran = subprocess.run([sys.executable, os.path.join(BENCH, "tspkit.py"), shutil.which("tsp"),
                          str(tmp_path), "e2e", "20"], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.splitlines()[-1])
    assert result["jobs"] == 20 and result["jobs_per_s"] > 0
    assert result["cpu_ns"]["server"] > 0 and result["cpu_ns"]["clients"] > 0
    assert len(list((tmp_path / "out").iterdir())) == 20       # one output file per job ran


def run_profile(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, os.path.join(BENCH, "profile_worker.py"),
                           "--jobs", "30", "--top", "10", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_profile_with_cprofile_lists_the_worker_functions_per_job():
    ran = run_profile("--profiler", "cprofile")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for expected in ("top 10 functions by cumulative time", "(queuectl/", "us/job",
                     "worker, from the resume to the last job completed (30 jobs"):
        assert expected in ran.stdout, f"{expected!r} missing from:\n{ran.stdout}"


PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(PY_SPY),
                    reason="py-spy needs to be installed (test extras) and ptrace (root)")
def test_profile_with_py_spy_samples_the_worker_threads_per_job():
    ran = run_profile()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for expected in ("samples by thread", "MainThread", "(queuectl/worker.py)",
                     "top 10 by self time", "sampled (GIL held)"):
        assert expected in ran.stdout, f"{expected!r} missing from:\n{ran.stdout}"
