#!/usr/bin/env python3
"""Where a worker's time per job goes: one worker (`queuectl worker run`, no supervisor)
drains N `true` jobs under a profiler, and the profile is printed per function, cumulative,
in microseconds per job. `make profile` runs it; `make profile JOBS=500 PROFILE_ARGS=--gil`.

    .venv/bin/python bench/profile_worker.py [--jobs 2000] [--profiler py-spy|cprofile]
        [--all-threads] [--rate 500] [--top 25] [--scratch DIR] [--keep] [--raw FILE]

py-spy (the default; `pip install py-spy`, in the test extras; it needs ptrace, so root or
kernel.yama.ptrace_scope=0) samples the worker from outside (--nonblocking: the worker is
never paused) and sees every thread: watchdog's observer and emitter threads are in the
profile next to the main loop, each thread under its own root frame. By default it samples
the thread holding the GIL (py-spy --gil), which is where a Python worker's time per job goes:
each sample counts 1/rate seconds. The queue is paused while the worker starts; py-spy
attaches once the worker runs, then the queue is resumed, so imports and start-up are not in
the profile. The sampled GIL time per job is printed next to the worker's CPU per job from
/proc (user + system, all threads). They measure different things: GIL time leaves out system
calls made without the GIL (fsync, most of a spawn) and includes time the holder waits for a
CPU on a loaded machine; read the table as shares of the worker's Python work.

cProfile (--profiler cprofile) runs in the worker's own process, switched on by SIGUSR2 at the
resume and timed by the main thread's CPU clock: the main thread only (it cannot see
watchdog's threads), and its per-call overhead inflates cheap calls; use it where ptrace is
not allowed, or to count calls per job.

Standard library only, besides py-spy itself."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from bench_workers import fs_type, job_count, wait_for
from harness import CommandFailed, Context

# cProfile in the worker's process, timed by the main thread's CPU clock (so waiting in
# select is not counted), switched on by SIGUSR2 just before the queue is resumed.
CPROFILE_WRAPPER = """\
import cProfile, signal, sys, time
import queuectl.cli, queuectl.worker, queuectl.lifecycle, queuectl.runner   # outside the profile
out = sys.argv[1]
sys.argv = ['queuectl', *sys.argv[2:]]
profile = cProfile.Profile(time.thread_time)
signal.signal(signal.SIGUSR2, lambda *_: profile.enable())
try:
    queuectl.cli.main()
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(description="profile one worker draining `true` jobs")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs to drain (default 2000)")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    parser.add_argument("--all-threads", action="store_true",
                        help="py-spy: sample every thread py-spy thinks is active, not only "
                             "the one holding the GIL (in this VM its idle detection fails: "
                             "threads waiting in select/Condition.wait count as busy)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    parser.add_argument("--scratch", metavar="DIR", help="where the home goes (default /tmp)")
    parser.add_argument("--queuectl", metavar="PATH",
                        help="the queuectl executable (default: beside this Python)")
    parser.add_argument("--raw", metavar="FILE", help="also keep py-spy's raw profile here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def tool(name, given=None):
    path = given or os.path.join(os.path.dirname(sys.executable), name)
    path = path if os.path.exists(path) else shutil.which(name)
    if not path:
        raise CommandFailed(f"{name} not found beside {sys.executable} nor on PATH"
                            + (" (pip install py-spy, or use --profiler cprofile)"
                               if name == "py-spy" else ""))
    return path


def proc_cpu(pid):
    """User + system seconds of `pid`, all its threads (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Drain:
    """A home with `jobs` `true` jobs behind the pause flag, and the drain's figures."""

    def __init__(self, ctx, jobs):
        self.ctx, self.jobs = ctx, jobs
        self.home = os.path.join(ctx.root, "home")
        ctx.run(ctx.q(self.home, "pause"))
        ctx.run(ctx.q(self.home, "enqueue", "-"), stdin=b'{"command":"true"}\n' * jobs)
        self.paused = os.path.join(self.home, "spool", "PAUSED")
        if not os.path.exists(self.paused):
            raise CommandFailed(f"`queuectl pause` did not create {self.paused}")

    def run(self, worker, before=None):
        """Resume (after calling before(), if given), wait for every job, stop the worker
        (its Popen; SIGTERM); returns (jobs, CPU seconds of the worker, wall seconds) from the resume
        to the last job completed."""
        if before:
            before()
        cpu, start = proc_cpu(worker.pid), time.perf_counter()
        os.unlink(self.paused)
        wait_for(lambda: self._done(worker), 1800, 0.02, f"{self.jobs} completed jobs")
        cpu, end = proc_cpu(worker.pid) - cpu, time.perf_counter()
        worker.terminate()
        return self.jobs, cpu, end - start


    def _done(self, worker):
        if job_count(self.home, "completed") >= self.jobs:
            return True
        if worker.poll() is not None:
            raise CommandFailed(f"the worker exited ({worker.returncode}) before the drain "
                                "ended")
        return False


def worker_argv(ctx, home):
    return [ctx.python, ctx.queuectl, "--home", home, "worker", "run"]


def wait_started(home, pid):
    """Until the worker's log says it started (after its imports and first setup)."""
    log = os.path.join(home, "data", "logs", "queuectl.log")

    def started():
        try:
            with open(log, errors="replace") as f:
                return any(f":{pid} started" in line for line in f)
        except FileNotFoundError:
            return False
    wait_for(started, 60, 0.02, f"worker {pid} to log that it started")


def profile_pyspy(ctx, args, drain):
    """Returns (Counter of stack -> samples, figures)."""
    pyspy = tool("py-spy")
    worker = subprocess.Popen(worker_argv(ctx, drain.home), env=ctx.env, cwd=ctx.root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = args.raw or os.path.join(ctx.root, "profile.raw")
    err_path = os.path.join(ctx.root, "py-spy.err")
    try:
        wait_started(drain.home, worker.pid)
        time.sleep(0.3)              # let the first heartbeat and scan finish
        argv = [pyspy, "record", "--pid", str(worker.pid), "--format", "raw", "--output", raw,
                "--rate", str(args.rate), "--threads", "--nolineno", "--nonblocking",
                *([] if args.all_threads else ["--gil"])]
        with open(err_path, "w") as err:
            spy = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT)
        wait_for(lambda: spy.poll() is not None or "Sampling" in open(err_path).read(), 30,
                 0.02, "py-spy to attach")
        if spy.poll() is not None:
            raise CommandFailed(f"py-spy exited {spy.returncode}: {open(err_path).read()}")
        jobs, cpu, wall = drain.run(worker)
        worker.wait(60)
        spy.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    said = open(err_path).read()
    stacks = Counter()
    with open(raw) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack and n.isdigit():
                stacks[stack] += int(n)
    return stacks, {"jobs": jobs, "cpu_s": cpu, "wall_s": wall,
                    "warnings": [ln for ln in said.splitlines() if "lagging" in ln.lower()
                                 or "error" in ln.lower()]}


def function_table(stacks, rate, jobs, top):
    """Print cumulative and self time per function, per job, from py-spy's stacks."""
    cumulative, own, threads = Counter(), Counter(), Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        threads[frames[0]] += n
        for frame in set(frames[1:]):
            cumulative[frame] += n
        own[frames[-1] if len(frames) > 1 else "(no Python frame: in C code)"] += n
    total = sum(stacks.values())
    us = 1e6 / rate / jobs
    print(f"\n  samples by thread ({total:,} in all, each 1/{rate} s):")
    for name, n in threads.most_common():
        print(f"    {n * us:9.1f} us/job  {n / total:6.1%}  {name}")
    print(f"\n  top {top} functions by cumulative time (all threads), per job:")
    print(f"    {'cum us/job':>10} {'cum %':>6} {'self us':>8}  function (file)")
    for frame, n in cumulative.most_common(top):
        print(f"    {n * us:10.1f} {n / total:6.1%} {own[frame] * us:8.1f}  {frame}")
    print(f"\n  top {min(top, 15)} by self time, per job:")
    for frame, n in own.most_common(min(top, 15)):
        print(f"    {n * us:10.1f} {n / total:6.1%}  {frame}")
    return total * us


def profile_cprofile(ctx, args, drain):
    out = os.path.join(ctx.root, "worker.prof")
    argv = [ctx.python, "-c", CPROFILE_WRAPPER, out, "--home", drain.home, "worker", "run"]
    worker = subprocess.Popen(argv, env=ctx.env, cwd=ctx.root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_started(drain.home, worker.pid)
        jobs, cpu, wall = drain.run(worker, lambda: os.kill(worker.pid, signal.SIGUSR2))
        worker.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return out, {"jobs": jobs, "cpu_s": cpu, "wall_s": wall}


def cprofile_table(path, jobs, top):
    import pstats
    stats = pstats.Stats(path).stats
    rows = sorted(stats.items(), key=lambda item: item[1][3], reverse=True)[:top]
    # Calls per job do not depend on the machine's load: the steadiest figure to compare
    # two versions of the per-job path by.
    calls = sum(ncalls for _, ncalls, _, _, _ in stats.values())
    print(f"\n  Python function calls per job: {calls / jobs:.0f} (builtins included)")
    print(f"\n  top {top} functions by cumulative time (main thread only, its CPU clock), "
          "per job:")
    print(f"    {'cum us/job':>10} {'self us':>8} {'calls/job':>9}  function (file:line)")
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        where = filename if filename == "~" else os.path.relpath(filename)
        print(f"    {cumtime / jobs * 1e6:10.1f} {tottime / jobs * 1e6:8.1f} "
              f"{ncalls / jobs:9.2f}  {name} ({where}:{line})")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.scratch:
        os.makedirs(args.scratch, exist_ok=True)
    root = os.path.abspath(tempfile.mkdtemp(prefix="queuectl-profile-", dir=args.scratch))
    queuectl = tool("queuectl", args.queuectl)
    ctx = Context(False, root, sys.executable, queuectl)
    mode = "" if args.profiler != "py-spy" else \
        " (every active thread)" if args.all_threads else " (the thread holding the GIL)"
    print(f"profile of one worker draining {args.jobs:,} `true` jobs with {args.profiler}"
          f"{mode}; home in {root} ({fs_type(root)}); "
          f"load average {open('/proc/loadavg').read().split()[0]}", flush=True)
    try:
        drain = Drain(ctx, args.jobs)
        if args.profiler == "py-spy":
            stacks, figures = profile_pyspy(ctx, args, drain)
            sampled = function_table(stacks, args.rate, figures["jobs"], args.top)
        else:
            path, figures = profile_cprofile(ctx, args, drain)
            cprofile_table(path, figures["jobs"], args.top)
            sampled = None
    except CommandFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    jobs = figures["jobs"]
    print(f"\n  worker, from the resume to the last job completed ({jobs:,} jobs, "
          f"{figures['wall_s']:.1f} s, {jobs / figures['wall_s']:.0f} jobs/s): CPU "
          f"{figures['cpu_s'] / jobs * 1e6:.0f} us/job (user + system, all threads, /proc)"
          + (f"; sampled (GIL held) {sampled:.0f} us/job" if sampled else ""))
    for line in figures.get("warnings", ()):
        print(f"  py-spy: {line}")
    print(f"  load average after: {open('/proc/loadavg').read().split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
