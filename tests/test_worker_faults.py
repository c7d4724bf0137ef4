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
