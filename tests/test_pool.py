"""The worker pool with real processes: many workers racing for many jobs (each job exactly
once), `worker start` adding supervisors, `worker stop` stopping them all and cleaning up
stale records without signalling strangers, the foreground mode, and the spool permission
check at start."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from queuectl.spool import Spool
from workerkit import (JOB_STATES, describe, home_processes, ids_in, lines, pool, q,  # noqa: F401
                       read_job, spool_files)

HOST = socket.gethostname()


def supervisor_records(home):
    try:
        return sorted(os.listdir(home / "data" / "supervisors"))
    except FileNotFoundError:
        return []


def write_record(home, pid, started_at, workers=(), worker_started_at=None):
    """A supervisor record as `worker start` writes it."""
    folder = home / "data" / "supervisors"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HOST}-{pid}.json").write_text(json.dumps(
        {"host": HOST, "pid": pid, "started_at": started_at, "count": len(workers) or 1,
         "workers": list(workers), "worker_started_at": worker_started_at or {},
         "home": str(home)}))


def started(ran):
    """(supervisor pid, [worker pids]) from `worker start`'s report."""
    match = re.fullmatch(r"started supervisor (\d+) with (\d+) workers? \(pids? ([\d, ]+)\)"
                         r"\nhome: (\S+)\n", ran.stdout)
    assert match, ran.stdout
    pids = [int(p) for p in match.group(3).split(", ")]
    assert int(match.group(2)) == len(pids)
    return int(match.group(1)), pids


# ---- many workers, many jobs -----------------------------------------------------------------

def test_four_workers_run_400_jobs_each_exactly_once(pool, spool, wait_until, tmp_path):
    ran = tmp_path / "ran"
    pool.start(4)
    ids = pool.enqueue_many([{"id": f"job-{n:03d}", "command":
                              f"echo $QUEUECTL_JOB_ID >> {q(ran)}"} for n in range(400)])
    assert len(ids) == 400
    # A finish moves the job into completed/, fsyncs it, then unlinks processing/: the last
    # job's copy there may outlive its arrival in completed/ by that fsync.
    wait_until(lambda: len(ids_in(spool, "completed")) == 400 and
               not ids_in(spool, "processing"), timeout=90,
               message="all 400 jobs in completed/, none left in processing/")
    runs = Counter(row[0] for row in lines(ran))
    assert [job_id for job_id, n in runs.items() if n > 1] == []       # none twice
    assert sorted(runs) == sorted(ids)                                 # none lost
    assert ids_in(spool, "completed") == sorted(ids)
    assert {s: ids_in(spool, s) for s in JOB_STATES if s != "completed"} == \
        {"pending": [], "processing": [], "failed": [], "dead": []}
    assert spool_files(spool, "rejected") == [] and spool_files(spool, "tmp") == []
    assert {read_job(spool, i, "completed")["attempts"] for i in ids} == {1}
    workers = wait_until(lambda: (lambda ws: sum(w["jobs_done"] for w in ws) == 400 and ws)(
        pool.workers()), message="the heartbeats to count 400 jobs done")
    assert len(workers) == 4
    assert len([w for w in workers if w["jobs_done"] > 0]) >= 2       # they really raced
    assert pool.status()["counts"]["completed"] == 400


# ---- start and stop --------------------------------------------------------------------------

def test_starting_twice_adds_workers_and_stop_stops_every_supervisor(pool, home, spool,
                                                                     wait_until):
    first_sup, first_workers = started(pool.start(1))
    second_sup, second_workers = started(pool.start(2))
    third_sup, third_workers = started(pool.start(1))
    workers = pool.workers()                          # 1 + 2 + 1
    assert len(workers) == 4
    pids = {w["pid"] for w in workers}
    assert pids == set(first_workers) | set(second_workers) | set(third_workers)
    def sid(pid):          # host-pid-start: unique across hosts with colliding pids
        return f"{HOST}-{pid}-{int(psutil.Process(pid).create_time())}"
    assert sorted(w["supervisor"] for w in workers) == sorted(
        sid(sup) for sup in (first_sup, second_sup, second_sup, third_sup))
    assert {w["host"] for w in workers} == {HOST}
    assert all(w["state"] == "idle" and not w["stale"] for w in workers)
    assert len(supervisor_records(home)) == 3
    assert f"{sid(first_sup)}.json" in supervisor_records(home)
    assert f"{sid(second_sup)}.json" in supervisor_records(home)

    stopped = pool.stop()
    assert (stopped.exit_code, stopped.stderr) == (0, "")
    reported = sorted(stopped.stdout.splitlines())
    assert reported == sorted([f"stopped supervisor {first_sup} and its 1 worker",
                               f"stopped supervisor {second_sup} and its 2 workers",
                               f"stopped supervisor {third_sup} and its 1 worker"])
    assert supervisor_records(home) == []
    assert home_processes(home) == [], describe(home_processes(home))
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
               for p in pids | {first_sup, second_sup, third_sup})
    assert pool.workers() == []
    again = pool.stop()
    assert (again.exit_code, again.stdout) == (0, "no workers were running\n")


def test_stop_removes_stale_records_and_signals_nobody_it_does_not_own(pool, home,
                                                                       wait_until):
    gone = subprocess.Popen(["true"])
    gone.wait()                                       # a pid that no longer exists
    stranger = subprocess.Popen(["sleep", "60"])      # a live pid that is not a supervisor
    try:
        created = psutil.Process(stranger.pid).create_time()
        write_record(home, gone.pid, time.time() - 30)
        write_record(home, stranger.pid, created - 3600, workers=[stranger.pid])
        stopped = pool.stop("--timeout", "0")
        assert (stopped.exit_code, stopped.stderr) == (0, "")
        assert sorted(stopped.stdout.splitlines()) == sorted([
            f"removed stale record of supervisor {gone.pid} (not running)",
            f"removed stale record of supervisor {stranger.pid} (not running)",
            "no workers were running"])
        assert supervisor_records(home) == []
        with pytest.raises(subprocess.TimeoutExpired):
            stranger.wait(timeout=0.3)                # it was not signalled

        # The same next to a live supervisor: it is stopped, the stale record removed.
        live_sup, live_workers = started(pool.start(1))
        [record_path] = (home / "data" / "supervisors").glob(f"{HOST}-{live_sup}-*.json")
        record = json.loads(record_path.read_text())
        assert record["worker_started_at"] == {
            str(pid): psutil.Process(pid).create_time() for pid in live_workers}
        write_record(home, stranger.pid, created + 7200, workers=[stranger.pid])
        stopped = pool.stop()
        assert sorted(stopped.stdout.splitlines()) == sorted([
            f"removed stale record of supervisor {stranger.pid} (not running)",
            f"stopped supervisor {live_sup} and its 1 worker"])
        assert supervisor_records(home) == []
        with pytest.raises(subprocess.TimeoutExpired):
            stranger.wait(timeout=0.3)
    finally:
        stranger.kill()
        stranger.wait()


STUBBORN = ("import signal, time\n"
            "for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")


def test_stop_never_sigkills_a_reused_worker_pid(home, monkeypatch):
    """Issue 8, bug 11: `worker stop` escalates to SIGKILL for a supervisor that ignores the
    graceful signals, and for its workers. A worker pid in the record that now belongs to
    another process (its start time differs) must not be signalled; the real worker (same
    pid and start time) is killed."""
    from queuectl import pool as poolmod
    from queuectl.home import Home
    supervisor = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE,
                                  text=True)
    worker = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE,
                              text=True)
    stranger = subprocess.Popen(["sleep", "120"])   # took over a dead worker's pid
    try:
        for proc in (supervisor, worker):
            assert proc.stdout.readline() == "ready\n"
        start = {p.pid: psutil.Process(p.pid).create_time() for p in (supervisor, worker,
                                                                         stranger)}
        write_record(home, supervisor.pid, start[supervisor.pid],
                     workers=[worker.pid, stranger.pid],
                     worker_started_at={str(worker.pid): start[worker.pid],
                                        str(stranger.pid): start[stranger.pid] - 3600})
        monkeypatch.setattr(poolmod, "KILL_GRACE_SECONDS", 0.5, raising=False)
        report = poolmod.stop(Home(str(home)), 0)
        assert report == [f"stopped supervisor {supervisor.pid} and its 2 workers"]
        assert supervisor.wait(timeout=10) == -signal.SIGKILL
        assert worker.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(subprocess.TimeoutExpired):
            stranger.wait(timeout=0.3)                # never signalled
    finally:
        for proc in (supervisor, worker, stranger):
            proc.kill()
            proc.wait()


def test_stop_does_not_wait_forever_for_a_supervisor_that_is_a_zombie(pool, home, wait_until):
    """A supervisor that exited but was not yet reaped (its parent, often a container's
    PID 1, does not reap) is not running: `worker stop` must not wait for it."""
    zombie = subprocess.Popen(["true"])
    try:
        wait_until(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE,
                   message="the child to exit (unreaped)")
        write_record(home, zombie.pid, psutil.Process(zombie.pid).create_time())
        began = time.monotonic()
        try:
            stopped = pool.stop("--timeout", "0", timeout=8)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker stop was still waiting for zombie pid {zombie.pid} after "
                        f"{time.monotonic() - began:.0f}s")
        assert (stopped.exit_code, stopped.stdout, stopped.stderr) == (
            0, f"removed stale record of supervisor {zombie.pid} (not running)\n"
               "no workers were running\n", "")
        assert supervisor_records(home) == []
    finally:
        zombie.wait()


def test_foreground_supervisor_stops_gracefully_on_sigterm(spawn_queuectl, pool, home, spool,
                                                           wait_until, tmp_path):
    marks = tmp_path / "marks"
    proc = spawn_queuectl("worker", "start", "--foreground", "--count", "2")
    try:
        wait_until(lambda: len(pool.workers()) == 2, timeout=20,
                   message="two workers to report in")
        pool.enqueue({"id": "fg", "command":
                      f"echo start >> {q(marks)}; sleep 1; echo end >> {q(marks)}"})
        wait_until(lambda: lines(marks), message="the job to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.decode() == (f"running 2 workers in the foreground for {home} "
                            "(Ctrl-C stops them gracefully)\n")
    assert [m[0] for m in lines(marks)] == ["start", "end"]
    assert ids_in(spool, "completed") == ["fg"]
    assert home_processes(home) == [], describe(home_processes(home))
    assert supervisor_records(home) == []


def test_worker_start_refuses_a_world_writable_spool_dir(pool, home, spool, run_queuectl):
    Spool(str(spool)).ensure_layout()
    pending = spool / "pending"
    os.chmod(pending, 0o777)
    ran = run_queuectl("worker", "start")
    assert (ran.exit_code, ran.stdout, ran.stderr) == (
        1, "", f"Error: {pending} is world-writable without the sticky bit; "
               f"run chmod o-w {pending}\n")
    assert home_processes(home) == [] and supervisor_records(home) == []

    os.chmod(pending, 0o755)
    os.chmod(spool, 0o777)
    ran = run_queuectl("worker", "start", "--count", "2")
    assert (ran.exit_code, ran.stdout, ran.stderr) == (
        1, "", f"Error: {spool} is world-writable without the sticky bit; "
               f"run chmod o-w {spool}\n")
    assert home_processes(home) == [] and supervisor_records(home) == []

    os.chmod(spool, 0o1777)                           # sticky, like /tmp: allowed
    pool.start(1)
    assert len(pool.workers()) == 1
