#!/usr/bin/env python3
"""queuectl benchmarks: figures and ratios measured in one run, medians of several runs.

Usage (from the repository root, with the project's venv; `make bench` runs the first):
    .venv/bin/python bench/run.py                 # every benchmark, full sizes (~7 min)
    .venv/bin/python bench/run.py --quick         # small sizes, a smoke test (~2 min)
    .venv/bin/python bench/run.py --only enqueue_cli --only batch_enqueue_10k
    .venv/bin/python bench/run.py --only pickup,throughput,memory,metrics_100k,heartbeat_cost \
        --scratch bench/results/scratch-1     # the worker benchmarks (~5 min), scratch on /work
    .venv/bin/python bench/run.py --only hotpath  # issue 9 side by side (`make bench-hotpath`
                                                  # runs it in a normal, non-editable install)
    .venv/bin/python bench/run.py --list

Every command is timed as a fresh process (the `queuectl` beside the Python running this
script), wall clock, in homes under a scratch directory that is removed afterwards. Absolute
times drift between machines and with background load; compare the ratios, which come from
one run with the commands interleaved. Bytecode is cached as in a normal install
(PYTHONDONTWRITEBYTECODE is dropped for the timed processes and PYTHONPYCACHEPREFIX points
into the scratch directory) and each command runs once untimed first, so no timed run
compiles Python source. Results go to stdout and, as JSON, to bench/results/ (gitignored).

The benchmarks live in the bench_*.py modules imported below, registered with
harness.benchmark; see harness.py for how to add one. Standard library only, except that
the worker benchmarks read processes' CPU and memory with psutil (a queuectl dependency); the
library under test is imported to write fixture job files in its own format and, by the
worker benchmarks, to read and write heartbeat rows of the index.

Where the scratch directory lives matters: creating a file in this VM's /tmp costs ~0.3-0.6
ms against ~20 us under /work, and tmpfs has free fsyncs. `--scratch DIR` chooses it; the
header of every run prints the path and its filesystem type."""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import bench_submit  # noqa: F401  (registers enqueue_cli, batch_enqueue_10k)
import bench_reads  # noqa: F401  (registers status_list_100k, reindex_100k)
import bench_workers  # noqa: F401  (pickup, throughput, memory, metrics_100k, heartbeat_cost)
import bench_hotpath  # noqa: F401  (hotpath: issue 9, side by side with task-spooler)
from harness import BENCHMARKS, CommandFailed, Context

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
ORDER = ("enqueue_cli", "status_list_100k", "batch_enqueue_10k", "reindex_100k",
         "pickup", "throughput", "memory", "metrics_100k", "heartbeat_cost", "hotpath")


def ordered_benchmarks():
    """The issue's order first, then any others in registration order."""
    names = [n for n in ORDER if n in BENCHMARKS]
    return names + [n for n in BENCHMARKS if n not in names]


def load_average():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def git_commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def find_queuectl(given):
    if given:
        return os.path.abspath(given)
    beside = os.path.join(os.path.dirname(sys.executable), "queuectl")
    if os.path.exists(beside):
        return beside
    found = shutil.which("queuectl")
    if not found:
        sys.exit("queuectl not found beside this Python: run with .venv/bin/python, "
                 "or give --queuectl PATH")
    return found


def parse_args(argv):
    parser = argparse.ArgumentParser(description="queuectl benchmarks (see bench/run.py)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (2,000 jobs) and fewer runs: a smoke test")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (repeat, or separate names by commas)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--queuectl", metavar="PATH",
                        help="the queuectl executable (default: the one beside this Python)")
    parser.add_argument("--scratch", metavar="DIR",
                        help="make the scratch directory inside DIR (created if missing; "
                             "default: the system's temporary directory, usually /tmp). "
                             "File creation cost differs a lot between filesystems: say "
                             "where a run was made when comparing runs")
    parser.add_argument("--reps", type=int, metavar="N",
                        help="repetitions for the benchmarks that interleave reps (hotpath; "
                             "default 3, 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write the JSON summary into bench/results/")
    args = parser.parse_args(argv)
    names = [n for item in args.only or () for n in item.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; "
                     f"choose from {', '.join(ordered_benchmarks())}")
    args.only = [n for n in ordered_benchmarks() if n in names] if names else None
    return args


def run_all(ctx, names):
    """Run the benchmarks in order; returns the names of those that failed."""
    failed = []
    for name in names:
        ctx.start(BENCHMARKS[name])
        started = time.perf_counter()
        try:
            BENCHMARKS[name].fn(ctx)
        except CommandFailed as exc:
            failed.append(name)
            ctx.note(f"FAILED: {exc}")
        print(f"  ({name} took {time.perf_counter() - started:.0f} s)", flush=True)
    return failed


def print_targets(ctx, failed):
    print("\n== targets")
    for t in ctx.targets:
        print(f"  {'met   ' if t['met'] else 'MISSED'}  {t['benchmark']}: {t['what']}")
    for name in failed:
        print(f"  FAILED  {name} (see above)")


def save(meta, ctx, failed):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS_DIR, f"{stamp}{'-quick' if meta['quick'] else ''}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": ctx.results, "targets": ctx.targets,
                   "failed": failed}, f, indent=2)
    return path


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name in ordered_benchmarks():
            print(f"{name:<20} {BENCHMARKS[name].summary}")
        return 0
    names = args.only or ordered_benchmarks()
    if args.scratch:
        os.makedirs(args.scratch, exist_ok=True)
    root = os.path.abspath(tempfile.mkdtemp(prefix="queuectl-bench-", dir=args.scratch))
    ctx = Context(args.quick, root, sys.executable, find_queuectl(args.queuectl), args.reps)
    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": args.quick, "benchmarks": names, "commit": git_commit(),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "queuectl": ctx.queuectl,
            "scratch": root, "scratch_fs": bench_workers.fs_type(root),
            "load_average_start": load_average()}
    print(f"queuectl benchmarks{' (quick)' if args.quick else ''}: commit {meta['commit']}, "
          f"Python {meta['python']}, {meta['cpus']} CPUs, {meta['platform']}")
    print(f"scratch {root} ({meta['scratch_fs']}); load average {meta['load_average_start']}")
    started = time.perf_counter()
    try:
        failed = run_all(ctx, names)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = load_average()
    print_targets(ctx, failed)
    print(f"\ntotal {meta['seconds']} s; load average {meta['load_average_end']}")
    if not args.no_save:
        print(f"results: {os.path.relpath(save(meta, ctx, failed), os.getcwd())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
