#!/usr/bin/env python3
"""The task-spooler side of the hot-path benchmark (bench_hotpath.py), run as a process of its
own: `python bench/tspkit.py TSP WORKDIR MODE SIZE` prints one line of JSON.

task-spooler detaches what it starts: `tsp CMD` forks a background client that waits for the
server's go, runs CMD, reports the result and exits, and the first call forks the server. To
see all of them, this process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
tsp's orphans are reparented to it and it reaps every one. Just before reaping a process
(waitid with WNOWAIT, so the zombie is still there) it reads its on-CPU time from
/proc/PID/schedstat: nanoseconds, exact, that process only. The job's own command is a child
of the client, reaped by the client, so it is never counted: server + clients is tsp's CPU
outside the job itself, submission included.

Each run has its own server (TS_SOCKET in WORKDIR, TS_SLOTS=2, output files under WORKDIR
through TMPDIR), stopped with `tsp -K` at the end. Modes:
  pickup K   K idle-queue jobs, one at a time: from spawning `tsp sh -c 'date > stamp'` to
             the stamp the job writes (one untimed warm-up first)
  drain N    2 blocker jobs hold both slots while N `tsp true` are queued (at most
             MAX_QUEUED: see there); then the blockers are released and the jobs drain
  e2e N      N `tsp true` submitted one after another while the server runs them
  submit K   the wall time of K `tsp true` calls (the shell's submit cost)
Standard library only: the benchmark runs this with the Python of the install under test."""

import ctypes
import json
import os
import random
import shlex
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
SLOTS = 2
RELEASE = "release"        # the file whose creation lets the drain's blockers finish
# Every queued job holds a connection to the server (its waiting client), and task-spooler's
# server stops accepting at about 1,000 (MAXCONN): a client past that blocks for good. So at
# most this many jobs wait at once: the drain queues no more, one-by-one waits for a job to
# finish before submitting past it.
MAX_QUEUED = 900
CALL_TIMEOUT = 60          # seconds a tsp call or a wait for one job may take: then we fail


class Stuck(Exception):
    pass


def _alarm(signum, frame):
    raise Stuck("a tsp process did not exit in time (is the server refusing connections?)")


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def on_cpu_ns(pid):
    """Nanoseconds `pid` has run (its own, not its children's), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class Spooler:
    """A private tsp server, the processes it leaves to us, and their CPU time."""

    def __init__(self, tsp, workdir):
        self.tsp, self.workdir = tsp, workdir
        out = os.path.join(workdir, "out")
        os.makedirs(out, exist_ok=True)
        self.env = dict(os.environ, TS_SOCKET=os.path.join(workdir, "socket"),
                        TS_SLOTS=str(SLOTS), TMPDIR=out, TS_MAXFINISHED="100000")
        self.ours = {}              # pid -> "clients" or "control": the tsp calls we spawned
        self.server = None
        self.cpu_ns = {"server": 0, "clients": 0, "control": 0}
        self.clients_done = 0       # background clients that exited: jobs finished
        self.reaped = 0

    def spawn(self, *args, book="clients"):
        """Start `tsp ARGS` (stdout to /dev/null); returns its pid. Its CPU is booked as a
        client's, or as "control" (starting and killing the server: not per job)."""
        devnull = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
        pid = os.posix_spawn(self.tsp, [self.tsp, *args], self.env, file_actions=devnull)
        self.ours[pid] = book
        return pid

    def reap_one(self, block):
        """Reap one exited process, booking its CPU; returns its pid, or None if none had
        exited (block=False) or we have no child left."""
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            info = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:
            return None
        if info is None:
            return None
        pid = info.si_pid
        ns = on_cpu_ns(pid)
        os.waitpid(pid, 0)
        self.reaped += 1
        if pid == self.server:
            self.cpu_ns["server"] += ns
        elif pid in self.ours:
            self.cpu_ns[self.ours.pop(pid)] += ns
        else:
            self.cpu_ns["clients"] += ns
            self.clients_done += 1
        return pid

    def reap_ready(self):
        while self.reap_one(block=False) is not None:
            pass

    def reap_blocking(self):
        """Reap one process, waiting for it at most CALL_TIMEOUT seconds (then Stuck)."""
        signal.setitimer(signal.ITIMER_REAL, CALL_TIMEOUT)
        try:
            return self.reap_one(block=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def call(self, *args, book="clients"):
        """Run `tsp ARGS` to its end; returns its wall time (reaping whatever else exits)."""
        start = time.perf_counter()
        pid = self.spawn(*args, book=book)
        while pid in self.ours:
            self.reap_blocking()
        return time.perf_counter() - start

    def wait_clients(self, count, timeout=600):
        deadline = time.monotonic() + timeout
        while self.clients_done < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.clients_done} of {count} tsp jobs finished "
                                   f"within {timeout} s")
            if self.reap_blocking() is None:
                raise RuntimeError(f"no tsp process left after {self.clients_done} of "
                                   f"{count} jobs")

    def start_server(self):
        """`tsp -S 2` starts the server; it is the one child left alive afterwards."""
        self.call("-S", str(SLOTS), book="control")
        alive = [pid for pid in children() if pid not in self.ours]
        if len(alive) != 1:
            raise RuntimeError(f"expected one tsp server after `tsp -S {SLOTS}`, found {alive}")
        self.server = alive[0]
        self.clients_done = 0

    def stop_server(self):
        """`tsp -K`, then kill what is left of ours (a failed run's clients), reap it all."""
        try:
            self.call("-K", book="control")
        except Stuck:
            pass
        for pid in children():
            os.kill(pid, signal.SIGKILL)
        while self.reap_one(block=True) is not None:
            pass

    def cpu(self, jobs):
        return {"server_ms_per_job": self.cpu_ns["server"] / jobs / 1e6,
                "clients_ms_per_job": self.cpu_ns["clients"] / jobs / 1e6}


def children():
    """Live (non-zombie) children of this process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(entry))
    return found


def read_stamp(path):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None


def pickup(sp, samples):
    rng = random.Random(5)
    latencies = []
    for i in range(samples + 1):
        stamp = os.path.join(sp.workdir, f"stamp-{i}")
        done = sp.clients_done
        before = time.time()
        sp.spawn("sh", "-c", f"date +%s.%N > {shlex.quote(stamp)}")
        deadline = time.monotonic() + 30
        while (started := read_stamp(stamp)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tsp job {i} did not start within 30 s")
            sp.reap_ready()
            time.sleep(0.001)
        sp.wait_clients(done + 1)
        if i:
            latencies.append(started - before)
        time.sleep(rng.uniform(0.1, 0.3))
    return {"latencies_s": latencies, "jobs": samples + 1}


def drain(sp, total):
    total = min(total, MAX_QUEUED)
    release = os.path.join(sp.workdir, RELEASE)
    # Bounded (about 10 minutes), so that a blocker outlives no failed run for long.
    blocker = (f"i=0; while [ ! -e {shlex.quote(release)} ] && [ $i -lt 120000 ]; "
               "do sleep 0.005; i=$((i+1)); done")
    for _ in range(SLOTS):
        sp.call("sh", "-c", blocker)
    for _ in range(total):
        sp.call("true")
    open(release, "w").close()
    start = time.perf_counter()
    sp.wait_clients(total + SLOTS)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "jobs_per_s": total / elapsed, "jobs": total + SLOTS,
            "queued": total}


def e2e(sp, total):
    start = time.perf_counter()
    for i in range(total):
        if i - sp.clients_done >= MAX_QUEUED:
            sp.wait_clients(i - MAX_QUEUED + 1)
        sp.call("true")
    sp.wait_clients(total)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "jobs_per_s": total / elapsed, "jobs": total}


def submit(sp, calls):
    times = [sp.call("true") for _ in range(calls)]
    sp.wait_clients(calls)
    return {"submit_s": times, "jobs": calls}


MODES = {"pickup": pickup, "drain": drain, "e2e": e2e, "submit": submit}


def main(argv):
    tsp, workdir, mode, size = argv
    become_subreaper()
    signal.signal(signal.SIGALRM, _alarm)
    sp = Spooler(tsp, workdir)
    sp.start_server()
    try:
        result = MODES[mode](sp, int(size))
    finally:
        sp.stop_server()
    result.update(sp.cpu(result["jobs"]))
    result["cpu_ns"] = sp.cpu_ns
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
