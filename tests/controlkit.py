"""Helpers for the metrics and queue-control tests: reading `metrics`/`status` JSON, parsing
Prometheus text with prometheus_client's real parser, times in the past for --run-at, a
bounded "stays so" check, the live members of a process group, `spawn_on_pty` for commands
that behave differently on a terminal, and a `frozen` fixture that SIGSTOPs workers and
always SIGCONTs them in teardown (before the workerkit `pool` stops the workers: a stopped
worker would ignore the SIGTERM and make `worker stop` wait for its SIGKILL escalation).

Import the fixture into a test module with `from controlkit import frozen` next to
`from workerkit import pool` (frozen needs pool, so it is torn down first)."""

import json
import os
import pty
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families


def report(cli, *args):
    """`queuectl <args> --json` run in-process, exit code checked, parsed."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def metrics(cli):
    return report(cli, "metrics")


def worker_entry(entries, pid, key="pid"):
    """The entry of `entries` (status or metrics workers) for pid, else None."""
    return next((w for w in entries if w[key] == pid), None)


def families(text):
    """{name: family} from Prometheus text, parsed by prometheus_client's text parser."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family):
    """[(sample name, labels, value)] of a family, for exact comparisons."""
    return [(s.name, s.labels, s.value) for s in family.samples]


def iso_ago(seconds):
    """An ISO-8601 UTC time `seconds` in the past (for enqueue --run-at)."""
    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def stays(predicate, seconds, interval=0.05):
    """A bounded negative check: the predicate holds at every look for `seconds`. Returns
    (True, None), or (False, the failing value) as soon as it does not hold."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if not value:
            return False, value
        if time.monotonic() >= deadline:
            return True, None
        time.sleep(interval)


def pgid_members(pgid):
    """Pids of live (non-zombie) processes in process group pgid, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


@pytest.fixture
def frozen(pool):
    """frozen(pid) SIGSTOPs a process; every frozen pid still alive gets SIGCONT in teardown."""
    pids = []

    def freeze(pid):
        pids.append(pid)
        os.kill(pid, signal.SIGSTOP)
    yield freeze
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


QUEUECTL = os.path.join(os.path.dirname(sys.executable), "queuectl")


def spawn_on_pty(home, *args):
    """Start the real `queuectl` with a pseudo-terminal as stdout and stderr (as in a
    terminal, where click keeps escape codes). Returns (Popen, the pty's master fd)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["QUEUECTL_HOME"] = str(home)
    try:
        proc = subprocess.Popen([QUEUECTL, *map(str, args)], stdin=subprocess.DEVNULL,
                                stdout=slave, stderr=slave, env=env, start_new_session=True)
    finally:
        os.close(slave)
    return proc, master
