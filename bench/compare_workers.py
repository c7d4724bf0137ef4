"""The drain of two or more source trees' workers side by side, interleaved: jobs/s and the
workers' CPU per job (user and system apart), for a before/after of a change to the per-job
path on the same machine in the same minutes.

    python bench/compare_workers.py TREE_BEFORE TREE_AFTER [--jobs 2000] [--reps 4]
        [--workers 2] [--scratch DIR]

Each TREE is a source checkout (its `queuectl/` package is imported through PYTHONPATH, with
the running python: e.g. `git worktree add /tmp/before REV`). Per rep and tree, as the
hot-path benchmark's drain does: a fresh home, the queue paused, WORKERS `worker run`
processes started, JOBS `true` jobs piped to `enqueue -` (the workers read them as they
arrive), then spool/PAUSED removed; jobs/s from that removal to the last job in completed/,
CPU from /proc/PID/stat of the workers from before the enqueue to the end (the jobs' own
processes are not counted). The order of the trees alternates every rep. Prints each run
and the medians with min-max. Standard library only."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid):
    """(user, system) seconds of a process itself, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def drain(tree, args):
    home = tempfile.mkdtemp(prefix="compare-workers-", dir=args.scratch)
    # A neutral working directory: `python -m` puts it first on sys.path.
    env = dict(os.environ, QUEUECTL_HOME=home, PYTHONPATH=os.path.abspath(tree))
    queuectl = [sys.executable, "-m", "queuectl"]

    def run(*argv, stdin=None):
        subprocess.run([*queuectl, *argv], env=env, cwd=home, input=stdin, check=True,
                       stdout=subprocess.DEVNULL)
    run("init")
    run("pause")
    workers = [subprocess.Popen([*queuectl, "worker", "run"], env=env, cwd=home,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(args.workers)]
    try:
        log = os.path.join(home, "data", "logs", "queuectl.log")
        wait_for(lambda: os.path.exists(log) and
                 open(log).read().count(" started (") >= args.workers, 60,
                 "the workers to start")
        before = [cpu_times(w.pid) for w in workers]
        run("enqueue", "-", stdin=b'{"command": "true"}\n' * args.jobs)
        completed = os.path.join(home, "spool", "completed")
        started = time.perf_counter()
        os.unlink(os.path.join(home, "spool", "PAUSED"))
        wait_for(lambda: len(os.listdir(completed)) >= args.jobs, 600, "the drain")
        elapsed = time.perf_counter() - started
        after = [cpu_times(w.pid) for w in workers]
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait()
        shutil.rmtree(home, ignore_errors=True)
    user = sum(a[0] - b[0] for a, b in zip(after, before)) / args.jobs * 1e6
    system = sum(a[1] - b[1] for a, b in zip(after, before)) / args.jobs * 1e6
    return {"jobs_per_s": args.jobs / elapsed, "cpu_us": user + system, "user_us": user,
            "system_us": system}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", help="where the homes go (default $TMPDIR)")
    args = parser.parse_args()
    found = {tree: [] for tree in args.trees}
    for rep in range(args.reps):
        for tree in (args.trees if rep % 2 == 0 else args.trees[::-1]):
            result = drain(tree, args)
            found[tree].append(result)
            print(f"  rep {rep + 1} {tree}: {result['jobs_per_s']:,.0f} jobs/s, worker CPU "
                  f"{result['cpu_us']:,.0f} us/job (user {result['user_us']:,.0f}, system "
                  f"{result['system_us']:,.0f})", flush=True)
    print(f"{args.workers} worker(s), {args.jobs:,} jobs, {args.reps} reps; medians [min-max]:")
    for tree, results in found.items():
        def cell(key):
            values = [r[key] for r in results]
            return (f"{statistics.median(values):,.0f} [{min(values):,.0f}-"
                    f"{max(values):,.0f}]")
        print(f"  {tree}: {cell('jobs_per_s')} jobs/s; worker CPU {cell('cpu_us')} us/job "
              f"(user {cell('user_us')}, system {cell('system_us')})")


if __name__ == "__main__":
    main()
