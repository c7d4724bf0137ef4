"""The commands that start, stop and list supervisors (`worker start`, `worker stop`,
`status`'s workers). The supervisor itself, which keeps the workers alive, is in
supervisor.py; `start` launches it as a process of its own (`worker start --foreground`).

Invariants: a supervisor or worker is signalled only while its record's host, pid and start
time still name it: a reused pid is never signalled."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

from . import runner
from .errors import QueueError
from .supervisor import records_dir, signal_pid, stop_path, supervisor_id, write_stop_timeout

log = logging.getLogger("queuectl")
KILL_GRACE_SECONDS = 15     # `worker stop`: from SIGUSR1 to SIGKILL for what is left


def _signal_same(host, pid, started_at, signum):
    """Signal pid only if it is still the process the record names (host + pid + start
    time, checked just before): a pid reused by another process is never signalled."""
    if runner.is_same_process(host, pid, started_at):
        signal_pid(pid, signum)
        return True
    return False


def _targets(record, with_workers):
    """(pid, start time) of a supervisor record's process, and with_workers also of its
    workers. A worker whose start time was not recorded (a record written by an older
    version) cannot be told from a reused pid, so it is left out."""
    targets = [(record["pid"], record.get("started_at"))]
    if with_workers:
        starts = record.get("worker_started_at") or {}
        targets += [(pid, starts[str(pid)]) for pid in record.get("workers") or []
                    if starts.get(str(pid)) is not None]
    return targets


# ---- commands -----------------------------------------------------------------------------

def supervisors(home):
    """[(record, alive)] for every supervisor record of this home; alive is None for
    another host's."""
    result = []
    try:
        names = sorted(os.listdir(records_dir(home)))
    except FileNotFoundError:
        return result
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(records_dir(home), name)
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        record["path"] = path
        result.append((record, runner.is_same_process(record.get("host"), record.get("pid", -1),
                                               record.get("started_at") or 0)))
    return result


def start(home, count, wait_seconds=20, queues=None):
    """Start a detached supervisor with `count` workers (taking only jobs of `queues`, or
    every queue); returns its record once they all heartbeat. QueueError if they don't come
    up in time."""
    home.spool.ensure_layout()
    home.make_data_dir("logs")
    from .security import check_spool
    check_spool(home)
    log_path = home.path("logs", "supervisor.out")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "queuectl", "--home", home.home, "--spool", home.spool_dir,
             "--data", home.data_dir, "worker", "start", "--foreground", "--count", str(count),
             "--quiet", *(["--queue", ",".join(queues)] if queues else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + wait_seconds
    wanted = supervisor_id(proc.pid, runner.process_started(proc.pid))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QueueError(f"the supervisor exited at once (code {proc.returncode}); "
                             f"see {log_path}")
        workers = [w for w in home.index.workers() if w["supervisor"] == wanted]
        if len(workers) >= count:
            return {"supervisor_pid": proc.pid, "workers": sorted(w["pid"] for w in workers)}
        time.sleep(0.05)
    raise QueueError(f"workers did not report in within {wait_seconds}s; see {log_path} and "
                     f"{home.path('logs', 'queuectl.log')}")


def serves(record, queue):
    """Was this supervisor started for `queue` (`worker start --queue`)? Pools started
    without --queue take every queue but are not selected by name."""
    return queue in (record.get("queues") or ())


def stop(home, timeout, queue=None):
    """Ask every live supervisor of this home (only the pools started with --queue `queue`,
    when given) to stop gracefully and wait. After `timeout` seconds, running jobs are
    killed and requeued (SIGUSR1); after a further grace, anything left is SIGKILLed
    (recovery then takes over). Stale records are removed."""
    report = []
    live = []
    for record, alive in supervisors(home):
        if queue is not None and not serves(record, queue):
            continue
        if alive is None:
            report.append(f"skipped supervisor {record['pid']} on host {record['host']}")
        elif not alive:
            os.unlink(record["path"])
            report.append(f"removed stale record of supervisor {record['pid']} (not running)")
        else:
            write_stop_timeout(record["path"], timeout)
            _signal_same(record["host"], record["pid"], record.get("started_at"), signal.SIGTERM)
            live.append(record)
    if not live:
        return report + ["no workers were running" if queue is None else
                         f"no workers of queue {queue!r} were running"]
    escalations = [(timeout, signal.SIGUSR1), (timeout + KILL_GRACE_SECONDS, signal.SIGKILL)]
    started = time.monotonic()
    while True:
        running = [r for r in live if runner.is_same_process(r["host"], r["pid"], r["started_at"])]
        if not running:
            break
        elapsed = time.monotonic() - started
        while escalations and elapsed >= escalations[0][0]:
            _, signum = escalations.pop(0)
            for record in running:
                for pid, started_at in _targets(record, signum == signal.SIGKILL):
                    _signal_same(record["host"], pid, started_at, signum)
        time.sleep(0.05)
    for record in live:
        for path in (record["path"], stop_path(record["path"])):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        count = len(record.get("workers") or [])
        report.append(f"stopped supervisor {record['pid']} and its {count} "
                      f"worker{'s' if count != 1 else ''}")
    return report


def stop_host(home, host, timeout):
    """Ask the pools of `host` (sharing this spool) to stop gracefully through a stop
    request in spool/workers/, and wait until its workers' heartbeats are gone (or stale).
    This host's own name stops the local pool directly."""
    if host == runner.HOSTNAME:
        return stop(home, timeout)
    if not home.spool.exists():
        raise QueueError(f"no spool at {home.spool_dir}")
    from .metrics import STALE_AFTER

    def running():
        now = time.time()
        return [r for r in home.spool.worker_records() if r.get("host") == host and
                now - (r.get("heartbeat_at") or 0) <= STALE_AFTER]
    before = running()
    home.spool.request_host_stop(host, timeout)
    if not before:
        return [f"asked host {host} to stop (it has no live workers on this spool now; "
                f"its pools stop when they next look)"]
    deadline = time.monotonic() + timeout + 15
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = running()
    if left:
        return [f"asked host {host} to stop; {len(left)} of its workers still heartbeat "
                f"after {timeout + 15:g}s"]
    return [f"stopped host {host}'s {len(before)} worker{'s' if len(before) != 1 else ''}"]
