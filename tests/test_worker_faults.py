"""A worker meets files, directories and an index it cannot use, and keeps working: a job
file it may read but not claim, an output log that cannot be opened, a locked or corrupt
index at its first idle moment, an orphan whose recovery fails. Real worker processes, real
files; every wait polls with a deadline."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from queuectl.spool import Spool
from workerkit import describe, home_processes, ids_in, pool, read_job, states_of  # noqa: F401


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
    job = runner.RunningJob("true", str(tmp_path), dict(os.environ), -1,
                            str(tmp_path / "missing" / "j.log"), "header\n")
    assert (job.timed_out, job.stopped, job.cancelled, job.pid) == (None, False, False, None)
    result = job.finish("worker test:1")
    assert (result.ok, result.exit_code, result.timed_out, result.stopped) == \
        (False, None, False, False)
    assert result.error == (f"cannot write the output log {tmp_path}/missing/j.log: "
                            "No such file or directory; the command was not started")
