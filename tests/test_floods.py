"""Floods and a blind watcher: N job files renamed into pending/ at once while 4 workers run
are all run, once each, and the time to empty is reported; the same with the kernel's
inotify queue made tiny (it overflows: the poll timer must find what the events lost); and
with inotify unavailable (no instance can be created), workers fall back to polling, say so
in one log line per worker start, and keep going.

Sizes: 2,000 files by default (4 workers drain ~200 simple jobs/s on 2 cores, so 5,000
would take ~25 s per test), 50,000 under `pytest -m stress`.

inotify is made unavailable inside a user namespace whose own instance limit
(/proc/sys/user/max_inotify_instances) is 0, so nothing else on the machine loses inotify;
where user namespaces are not allowed, a helper process holds every instance the user may
create (inotify_init1 until EMFILE) while the workers start, then lets them go."""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from torture import (Checker, InotifyProbe, configure, enqueue, finished, job_command,
                     read_sysctl, record, results_dir, workers, write_sysctl)  # noqa: F401

WORKERS = 4
CI_FLOOD = 2000
STRESS_FLOOD = 50000
QUEUE_SYSCTL = "/proc/sys/fs/inotify/max_queued_events"
TINY_QUEUE = 16
NO_INOTIFY_NS = ["unshare", "--user", "--map-root-user", "sh", "-c",
                 'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', "sh"]


def stage(home, ids, command):
    """Write the job files into home/staging (same filesystem as the spool, so the flood is
    made of renames)."""
    staging = home / "staging"
    staging.mkdir(exist_ok=True)
    for job_id in ids:
        (staging / f"{job_id}.json").write_text(json.dumps({"command": command}))
    return staging


def flood(home, ids, wait_until, name, **extra):
    """Rename every staged file into pending/ at once; wait until all are done; record the
    time to empty."""
    spool = home / "spool"
    staging = home / "staging"
    started = time.monotonic()
    for job_id in ids:
        os.rename(staging / f"{job_id}.json", spool / "pending" / f"{job_id}.json")
    renamed = time.monotonic() - started
    wait_until(lambda: finished(spool, ids), timeout=60 + len(ids) / 20, interval=0.1,
               message=f"all {len(ids)} flooded jobs done")
    to_empty = time.monotonic() - started
    record(name, files=len(ids), renamed_in_s=renamed, time_to_empty_s=to_empty,
           jobs_per_s=len(ids) / to_empty, **extra)
    return to_empty


def check_flood(home, workers, ids):
    workers.stop()
    report = Checker(home).check(ids)
    report.assert_clean()
    assert report.duplicates == 0
    assert report.rejected == [] and report.processing == []
    assert report.counts["completed"] == len(ids)
    return report


def run_flood(home, workers, wait_until, name, count, start=None):
    """Stage `count` jobs, start the workers (by `start`, default: plainly), flood."""
    results = results_dir(home)
    ids = [f"f{n:06d}" for n in range(count)]
    stage(home, ids, job_command(results))
    probe = (start or (lambda: workers.start(WORKERS)))()
    flood(home, ids, wait_until, name)
    check_flood(home, workers, ids)
    return probe


def test_flood_of_renames_into_pending(home, workers, wait_until):
    run_flood(home, workers, wait_until, "flood", CI_FLOOD)


@pytest.mark.stress
def test_flood_of_renames_into_pending_full_size(home, workers, wait_until):
    run_flood(home, workers, wait_until, "flood_stress", STRESS_FLOOD)


# ---- a tiny inotify queue -----------------------------------------------------------------------

@pytest.fixture
def tiny_inotify_queue():
    """start(fn, probe_dir): run fn (which starts workers) with the kernel's inotify queue
    limit at TINY_QUEUE, restoring it at once: the limit is read when an inotify instance is
    created, so only our workers get the tiny queue, and a probe of ours on probe_dir
    (returned) that shows it overflowed. Root only (the tests are marked `root`; as root
    a read-only sysctl is a failure, not a skip)."""
    if not os.access(QUEUE_SYSCTL, os.W_OK):
        pytest.fail(f"{QUEUE_SYSCTL} is read-only here even for root (a container with a "
                    f"read-only /proc/sys?): the only test of the inotify overflow path "
                    f"cannot run")
    old = read_sysctl(QUEUE_SYSCTL)

    def start(fn, probe_dir):
        write_sysctl(QUEUE_SYSCTL, TINY_QUEUE)
        try:
            fn()
            return InotifyProbe(probe_dir)
        finally:
            write_sysctl(QUEUE_SYSCTL, old)
    yield start
    write_sysctl(QUEUE_SYSCTL, old)
    assert read_sysctl(QUEUE_SYSCTL) == old


def run_tiny_queue_flood(home, workers, wait_until, tiny_inotify_queue, name, count):
    probe = run_flood(home, workers, wait_until, name, count,
                      start=lambda: tiny_inotify_queue(lambda: workers.start(WORKERS),
                                                       home / "spool" / "pending"))
    try:
        assert probe.overflowed(), "the flood did not overflow a tiny inotify queue"
    finally:
        probe.close()


@pytest.mark.root
def test_flood_with_a_tiny_inotify_queue(home, workers, wait_until, tiny_inotify_queue):
    run_tiny_queue_flood(home, workers, wait_until, tiny_inotify_queue,
                         "flood_tiny_inotify_queue", CI_FLOOD)


@pytest.mark.root
@pytest.mark.stress
def test_flood_with_a_tiny_inotify_queue_full_size(home, workers, wait_until,
                                                    tiny_inotify_queue):
    run_tiny_queue_flood(home, workers, wait_until, tiny_inotify_queue,
                         "flood_tiny_inotify_queue_stress", STRESS_FLOOD)


# ---- no inotify at all ------------------------------------------------------------------------

_HOLD_INSTANCES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
held = []
while True:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        break
    held.append(fd)
print(len(held), ctypes.get_errno(), flush=True)
sys.stdin.read()
"""


def userns_works():
    try:
        return subprocess.run([*NO_INOTIFY_NS, "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def blind():
    """Within the block, workers started (or restarted) by the supervisor cannot create an
    inotify instance: yields the prefix to start them with (see the module docstring)."""
    if userns_works():
        yield NO_INOTIFY_NS
        return
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_INSTANCES], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        held, error = map(int, holder.stdout.readline().split())
        assert error == errno.EMFILE, f"inotify_init1 stopped with errno {error}, not EMFILE"
        yield ()
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def log_lines(home, *needles):
    try:
        text = (home / "data" / "logs" / "queuectl.log").read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def fallback_lines(home):
    """The warnings that say a worker has no inotify and polls (with the reason)."""
    return log_lines(home, "WARNING", "inotify unavailable", "polling")


def test_without_inotify_workers_poll_say_so_once_and_keep_going(home, workers, wait_until):
    results = results_dir(home)
    command = job_command(results)
    configure(home, worker_poll_interval=0.5)
    with blind() as prefix:
        workers.start(2, prefix=prefix)
    # One warning per worker start says it polls because inotify is unavailable (and its
    # start line names the mode); nothing says it again later, poll after poll.
    assert len(log_lines(home, "started worker")) == 2
    assert len(fallback_lines(home)) == 2, fallback_lines(home)
    assert len(log_lines(home, "started (polling")) == 2

    ids = [f"b{n:04d}" for n in range(300)]
    stage(home, ids, command)
    flood(home, ids, wait_until, "flood_without_inotify")
    # A worker killed and restarted: still blind, says so once more, and jobs keep flowing.
    with blind():
        os.kill(workers.live()[0], signal.SIGKILL)
        wait_until(lambda: len(fallback_lines(home)) == 3, timeout=10,
                   message="the restarted worker's warning")
    more = enqueue(home, [f"c{n:04d}" for n in range(100)], command)
    wait_until(lambda: finished(home / "spool", more), timeout=60, interval=0.1,
               message="jobs enqueued after the restart done")
    starts = len(log_lines(home, "started worker"))
    assert starts == 3
    assert len(fallback_lines(home)) == starts
    assert len(log_lines(home, "started (polling")) == starts
    assert log_lines(home, "(inotify)") == [] and log_lines(home, "watcher stopped") == []
    check_flood(home, workers, ids + more)
