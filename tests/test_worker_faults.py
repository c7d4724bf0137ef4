"""A worker meets files, directories and an index it cannot use, and keeps working: a job
file it may read but not claim, an output log that cannot be opened, a locked or corrupt
index at its first idle moment, an orphan whose recovery fails. Real worker processes, real
files; every wait polls with a deadline."""

import json
import os
import signal
import sqlite3
import time

import pytest

from queuectl.spool import Spool
from workerkit import lone_worker, pool  # noqa: F401  (fixtures)
from workerkit import describe, drop_job, home_processes, ids_in, read_job, states_of


def reason_of(spool, name):
    try:
        return (spool / "rejected" / (name + ".reason")).read_text().strip()
    except FileNotFoundError:
        return None


# ---- bug 1: a file the worker can read but not open read-write --------------------------------

@pytest.mark.nonroot
def test_a_read_only_drop_in_is_rejected_not_spun_on_and_sigterm_stops_the_worker(
        spawn_queuectl, pool, home, spool, wait_until):
    Spool(str(spool)).ensure_layout()
    ro = spool / "pending" / "ro.json"
    ro.write_text(json.dumps({"command": "true", "priority": 5}))
    os.chmod(ro, 0o444)
    proc = spawn_queuectl("worker", "start", "--foreground", "--count", "1")
    try:
        wait_until(lambda: reason_of(spool, "ro.json"), timeout=20,
                   message="the read-only drop-in to be rejected")
        assert reason_of(spool, "ro.json") == (
            f"cannot be claimed: permission denied (the worker runs as uid {os.geteuid()}; "
            f"the file is owned by uid {os.geteuid()}, mode 0444)")
        assert ids_in(spool, "pending") == []
        after = pool.enqueue({"id": "after", "command": "true"})
        wait_until(lambda: states_of(spool, after) == ["completed"], timeout=20,
                   message="a later job to run")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.communicate(timeout=20)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert home_processes(home) == [], describe(home_processes(home))


# ---- bug 2: an output log that cannot be opened ---------------------------------------------

def test_deleted_output_dir_is_recreated_and_the_job_runs(pool, spool, wait_until):
    pool.start(1)
    first = pool.enqueue({"id": "first", "command": "echo one"})
    wait_until(lambda: states_of(spool, first) == ["completed"], timeout=20)
    for name in os.listdir(spool / "output"):
        os.unlink(spool / "output" / name)
    os.rmdir(spool / "output")
    # A drop-in (enqueue would re-create the layout itself): only the worker can notice.
    (spool / "tmp" / "second").write_text(json.dumps({"command": "echo two", "max_retries": 0}))
    os.rename(spool / "tmp" / "second", spool / "pending" / "second.json")
    second = "second"
    wait_until(lambda: states_of(spool, second) in (["completed"], ["dead"]), timeout=20,
               message="the job to finish")
    assert states_of(spool, second) == ["completed"], read_job(spool, second, "dead")
    assert "two" in (spool / "output" / "second.log").read_text().splitlines()
    assert oct(os.stat(spool / "output").st_mode & 0o777) == oct(0o700 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_log_that_cannot_be_opened_fails_the_attempt_with_that_reason(pool, spool,
                                                                      wait_until, tmp_path):
    Spool(str(spool)).ensure_layout()
    blocker = spool / "output" / "blocked.log"
    blocker.mkdir()
    (blocker / "keep").write_text("a directory that is not empty cannot be replaced")
    marker = tmp_path / "ran"
    pool.start(1)
    job = pool.enqueue({"id": "blocked", "command": f"touch {marker}", "max_retries": 0})
    wait_until(lambda: states_of(spool, job) not in (["pending"], ["processing"]), timeout=20,
               message="the attempt to end")
    assert states_of(spool, job) == ["dead"]
    record = read_job(spool, job, "dead")
    assert record["attempts"] == 1 and record["exit_code"] is None
    assert record["last_error"] == (f"cannot write the output log {blocker}: it is a directory "
                                    "that is not empty; "
                                    "the command was not started")
    assert not marker.exists()


def test_running_job_has_every_field_when_its_log_cannot_be_opened(tmp_path):
    from queuectl import runner
    (tmp_path / "file").write_text("a log cannot live below a file")
    job = runner.RunningJob("true", str(tmp_path), dict(os.environ), -1,
                            str(tmp_path / "file" / "j.log"), "header\n")
    assert (job.timed_out, job.stopped, job.cancelled, job.pid) == (None, False, False, None)
    result = job.finish("worker test:1")
    assert (result.ok, result.exit_code, result.timed_out, result.stopped) == \
        (False, None, False, False)
    assert result.error == (f"cannot write the output log {tmp_path}/file/j.log: "
                            "Not a directory; the command was not started")


# ---- bug 4: nothing the index does may kill or stall a worker --------------------------------

def old_completed_job(spool, job_id, days=30):
    """A completed job far past the default retention (7 days): the worker's first idle
    moment purges it, and the purge then brings the index in line."""
    path = spool / "completed" / f"{job_id}.json"
    path.write_text(json.dumps({"id": job_id, "command": "true", "attempts": 1}))
    then = time.time() - days * 86400
    os.utime(path, (then, then))
    return path


def keeps_working(proc, spool, wait_until):
    """The worker purges the old completed job at its first idle moment, then still runs
    a job dropped afterwards, and stops promptly on SIGTERM."""
    wait_until(lambda: not (spool / "completed" / "ancient.json").exists() or
               proc.poll() is not None, timeout=20, message="the first idle moment's purge")
    drop_job(spool, "later", "echo later")
    wait_until(lambda: states_of(spool, "later") == ["completed"] or proc.poll() is not None,
               timeout=30, message="the job dropped afterwards to run")
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    assert states_of(spool, "later") == ["completed"]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_a_locked_index_at_the_first_idle_moment_does_not_kill_the_worker(
        cli, home, spool, lone_worker, wait_until):
    assert cli("init").exit_code == 0
    Spool(str(spool)).ensure_layout()
    old_completed_job(spool, "ancient")
    holder = sqlite3.connect(str(home / "data" / "queue.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")          # another process holds the index's write lock
    try:
        keeps_working(lone_worker(), spool, wait_until)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_index_corrupted_under_a_running_worker_does_not_kill_it(
        cli, home, spool, lone_worker, wait_until, tmp_path):
    assert cli("init").exit_code == 0
    Spool(str(spool)).ensure_layout()
    old_completed_job(spool, "ancient")
    gate, started = tmp_path / "go", tmp_path / "started"
    drop_job(spool, "gated", f"touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done")
    proc = lone_worker()
    wait_until(started.exists, timeout=20, message="the first job to start")
    # Corrupt the open index in place (same inode: the worker's connection sees it), so the
    # first idle moment, right after this job, meets a corrupt database.
    for path in [home / "data" / "queue.db", *(home / "data").glob("queue.db-wal")]:
        with open(path, "r+b") as f:
            f.write(b"this is not an SQLite database\n" * (os.path.getsize(path) // 31 + 1))
    gate.touch()
    wait_until(lambda: states_of(spool, "gated") == ["completed"] or proc.poll() is not None,
               timeout=20, message="the gated job to finish")
    keeps_working(proc, spool, wait_until)


# ---- bug 5: one failing orphan must not stop recovery; config values the code can use ---------

def orphan(spool, job_id, attempts=0):
    """A job file in processing/ that nobody holds: its worker died."""
    Spool(str(spool)).ensure_layout()
    (spool / "processing" / f"{job_id}.json").write_text(json.dumps(
        {"id": job_id, "command": "true", "max_retries": 30, "attempts": attempts}))


@pytest.mark.parametrize("key, value, message", [
    ("backoff_max", "1e12", "backoff_max must be between 0 and 3153600000 (100 years), "
                            "got 1000000000000.0"),
    ("backoff_base", "1e6", "backoff_base must be between 1 and 1000, got 1000000.0"),
    ("job_timeout", "1e300", "job_timeout must be between 0 and 3153600000 (100 years), "
                             "got 1e+300"),
    ("max_job_bytes", str(10**12), "max_job_bytes must be between 2 and 67108864, "
                                   "got 1000000000000"),
])
def test_config_set_refuses_values_the_code_cannot_represent(cli, key, value, message):
    result = cli("config", "set", key, value)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")


def test_a_stored_backoff_max_out_of_range_does_not_stop_recovery(cli, home, spool, pool,
                                                                  wait_until):
    from queuectl.home import Home
    assert cli("init").exit_code == 0
    stored = Home(str(home))
    stored.index.set_config("backoff_base", 10)
    stored.index.set_config("backoff_max", 1e12)   # as an older version accepted it
    stored.close()
    orphan(spool, "orphan-a", attempts=20)     # 10 ** 21 s, capped at 1e12: year 33715
    orphan(spool, "orphan-b", attempts=20)
    pool.start(1)
    job = pool.enqueue({"id": "fresh", "command": "true"})
    wait_until(lambda: states_of(spool, job) == ["completed"], timeout=20,
               message="the worker to get past recovery and run a job")
    for job_id in ("orphan-a", "orphan-b"):
        assert states_of(spool, job_id) == ["failed"]
        record = read_job(spool, job_id, "failed")
        assert (record["attempts"], record["last_error"]) == (21, "worker died")


@pytest.fixture
def failing_recovery_of():
    """Make every spool call on one path raise a non-OSError (a bug, a value out of range),
    through the spool's own fault hook."""
    from queuectl import fsops

    def install(path):
        def hook(op, target):
            if target == str(path):
                raise ValueError("year 33715 is out of range")
        fsops.set_hook(hook)
    yield install
    fsops.set_hook(None)


def test_recover_skips_a_failing_orphan_and_recovers_the_others(cli, spool,
                                                                failing_recovery_of):
    orphan(spool, "bad")
    orphan(spool, "good")
    failing_recovery_of(spool / "processing" / "bad.json")
    result = cli("recover")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "bad: recovery failed: year 33715 is out of range\n"
           "good: worker died: attempt counted, moved to failed (will retry)\n", "")
    assert states_of(spool, "good") == ["failed"]
    assert states_of(spool, "bad") == ["processing"]


def test_a_worker_skips_a_failing_orphan_and_recovers_the_others(home, spool,
                                                                 failing_recovery_of):
    from queuectl.home import Home
    from queuectl.worker import Worker
    orphan(spool, "bad")
    orphan(spool, "good")
    failing_recovery_of(spool / "processing" / "bad.json")
    worker = Worker(Home(str(home)))
    worker.recover(time.time())
    assert states_of(spool, "good") == ["failed"]
    assert states_of(spool, "bad") == ["processing"]
