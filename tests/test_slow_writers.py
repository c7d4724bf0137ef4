"""Slow writers: a tool appending a valid job to pending/<id>.json one byte every 100 ms, in
place, while workers run. The job is claimed only once complete (it never leaves pending/
before its last byte, and it starts after that byte) and runs once. The same writer killed
halfway leaves a file that never parses: it is rejected once it has been unchanged for
settle_seconds (default 2), byte for byte, with its reason in `show` and the log, and never
runs.

Sizes: a 30-byte job file (3 s of writing) by default; a padded ~330-byte one (33 s) under
`pytest -m stress`."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from torture import (Checker, clock_ns, qctl, record, short_job_command, workers)  # noqa: F401

SETTLE_SECONDS = 2           # queuectl's default settle_seconds
BYTE_INTERVAL = 0.1
MTIME_SLACK = 0.05           # file mtimes are kernel-tick coarse

_WRITER = """
import os, sys, time
path, data, interval = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
for n, byte in enumerate(data, 1):
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    os.write(fd, bytes([byte]))
    print(n, before, time.clock_gettime_ns(time.CLOCK_BOOTTIME), flush=True)
    if n < len(data):
        time.sleep(interval)
os.close(fd)
"""


class SlowWriter:
    """A process appending `data` to `path` one byte per BYTE_INTERVAL; `progress` holds
    (bytes written, ns before the write, ns after it) per byte."""

    def __init__(self, path, data):
        self.proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), data,
                                      str(BYTE_INTERVAL)], stdout=subprocess.PIPE, text=True)
        self.progress = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.progress.append(tuple(map(int, line.split())))

    def running(self):
        return self.proc.poll() is None

    def finish(self):
        self.proc.wait(timeout=600)
        self.reader.join(timeout=10)

    def kill(self):
        self.proc.kill()
        self.finish()


def job_json(home, padding=0):
    doc = {"command": short_job_command(home)}
    if padding:
        doc["note"] = "x" * padding
    return json.dumps(doc, separators=(",", ":"))


def where(spool, name):
    return [s for s in ("pending", "processing", "failed", "completed", "dead", "rejected")
            if os.path.lexists(spool / s / name)]


def watch_while_writing(spool, name, writer):
    """Until the writer exits, note where the file is: [(ns the look began, ns it ended,
    states)]."""
    looks = []
    while writer.running():
        began = clock_ns()
        states = where(spool, name)
        looks.append((began, clock_ns(), states))
        time.sleep(0.01)             # the observer's sampling rhythm, not a wait for state
    writer.finish()
    return looks


def run_complete_writer(home, workers, wait_until, name, padding):
    spool = home / "spool"
    data = job_json(home, padding)
    workers.start(2)
    writer = SlowWriter(spool / "pending" / "slow.json", data)
    looks = watch_while_writing(spool, "slow.json", writer)
    assert writer.proc.returncode == 0 and len(writer.progress) == len(data)
    # Every look made wholly between the first byte and the last one found it in pending/.
    first_written, before_last = writer.progress[0][2], writer.progress[-1][1]
    during = [states for began, ended, states in looks
              if began > first_written and ended < before_last]
    assert len(during) > 10 and all(s == ["pending"] for s in during), \
        "the file left pending/ before its last byte was written"
    wait_until(lambda: where(spool, "slow.json") == ["completed"], timeout=30,
               message="the slowly written job completed")
    workers.stop()
    report = Checker(home).check(["slow"])
    report.assert_clean()
    [run] = report.runs["slow"]
    # /proc/uptime has 10 ms ticks: compare in ticks.
    assert run.start_ns // 10**7 >= writer.progress[-1][2] // 10**7
    assert run.end_ns is not None
    assert json.loads((spool / "completed" / "slow.json").read_bytes())["command"] == \
        json.loads(data)["command"]
    assert report.rejected == []
    record(name, bytes=len(data), writing_s=(writer.progress[-1][2] -
                                             writer.progress[0][1]) / 1e9,
           looks=len(looks),
           pickup_s_in_10ms_ticks=(run.start_ns - writer.progress[-1][2]) / 1e9)


def test_a_job_written_one_byte_at_a_time_runs_once_complete(home, workers, wait_until):
    run_complete_writer(home, workers, wait_until, "slow_writer", padding=0)


@pytest.mark.stress
def test_a_long_job_written_one_byte_at_a_time_runs_once_complete(home, workers, wait_until):
    run_complete_writer(home, workers, wait_until, "slow_writer_stress", padding=300)


def run_killed_writer(home, workers, wait_until, name, padding):
    spool = home / "spool"
    data = job_json(home, padding)
    workers.start(2)
    writer = SlowWriter(spool / "pending" / "half.json", data)
    wait_until(lambda: len(writer.progress) >= len(data) // 2, timeout=len(data),
               message="half the job written")
    writer.proc.send_signal(signal.SIGKILL)
    writer.finish()
    written, _, last_write = writer.progress[-1]
    assert written < len(data)
    rejected = spool / "rejected" / "half.json"
    wait_until(lambda: os.path.exists(rejected) and os.path.exists(f"{rejected}.reason"),
               timeout=SETTLE_SECONDS + 20, interval=0.01, message="the half job rejected")
    rejected_after = (clock_ns() - last_write) / 1e9
    assert rejected_after >= SETTLE_SECONDS - MTIME_SLACK
    assert rejected.read_bytes() == data.encode()[:written]       # byte for byte
    shown = json.loads(qctl(home, "show", "half", "--json").stdout)
    assert shown["state"] == "rejected" and shown["last_error"]
    log = (home / "data" / "logs" / "queuectl.log").read_text()
    assert "rejected pending/half.json -> rejected/half.json" in log
    workers.stop()
    report = Checker(home).check([])
    report.assert_clean()
    assert report.executions == 0                                   # never ran
    assert report.rejected == ["half.json"]
    record(name, bytes_written=written, of=len(data), rejected_after_s=rejected_after,
           reason=shown["last_error"][:60])


def test_a_writer_killed_halfway_is_rejected_after_settling_and_never_runs(
        home, workers, wait_until):
    run_killed_writer(home, workers, wait_until, "slow_writer_killed", padding=0)


@pytest.mark.stress
def test_a_long_writer_killed_halfway_is_rejected_after_settling(home, workers, wait_until):
    run_killed_writer(home, workers, wait_until, "slow_writer_killed_stress", padding=300)
