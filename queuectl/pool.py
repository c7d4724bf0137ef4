"""The worker pool: a supervisor process that keeps N workers alive, and the commands that
start it, stop it and list workers.

Invariants: a supervisor is recorded in data/supervisors/<host>-<pid>.json with host, pid and
its process start time, so a reused pid is never mistaken for it. Workers are forked from the
supervisor (no threads exist there at fork time) and get PR_SET_PDEATHSIG=SIGTERM, so a
killed supervisor's workers stop gracefully. A worker that dies is restarted at once; one
that crashes young (an error exit or a fatal signal of its own, not a kill from outside) is
restarted with a delay that doubles while it keeps crashing (a crash loop does not spin).

Jobs die with their worker: each worker reports its running job's process group on a pipe,
and the supervisor, which is the child subreaper of everything below it, kills that group
when the worker dies (the job's flock then frees and recovery retries it)."""

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time

from . import runner
from .errors import QueueError
from .home import Home
from .worker import run_worker

log = logging.getLogger("queuectl")
YOUNG_DEATH_SECONDS = 5
MAX_RESTART_DELAY = 30
KILL_GRACE_SECONDS = 15     # `worker stop`: from SIGUSR1 to SIGKILL for what is left


def _records_dir(home):
    return home.path("supervisors")


# ---- the supervisor ---------------------------------------------------------------------------

class Supervisor:
    def __init__(self, home, count, queues=None):
        self.home = home
        self.count = count
        self.queues = list(queues) if queues else None     # None: every queue
        self.pid = os.getpid()
        self.started_at = runner.process_started(self.pid)
        self.supervisor_id = f"{runner.HOSTNAME}-{self.pid}"
        self.record_path = os.path.join(_records_dir(home), self.supervisor_id + ".json")
        self.children = {}          # pid -> fork time
        self.child_starts = {}      # pid -> process start time (psutil), for `worker stop`
        self.job_groups = {}        # worker pid -> its running job's process group
        self.report_r, self.report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Signals wake the main loop through this pipe: time.sleep is resumed after a signal
        # handler (PEP 475), so a SIGCHLD alone would not end the nap.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._report_buffer = b""
        self.restart_delay = 0.5
        self.next_start = 0.0
        self.stopping = False
        self.stop_now = False

    def _on_signal(self, signum, frame):
        self.stopping = True
        if signum == signal.SIGUSR1:
            self.stop_now = True
        for pid in list(self.children):
            _signal(pid, signal.SIGUSR1 if self.stop_now else signal.SIGTERM)

    def write_record(self):
        self.home.make_data_dir("supervisors")
        record = {"host": runner.HOSTNAME, "pid": self.pid, "started_at": self.started_at,
                  "count": self.count, "workers": sorted(self.children),
                  "queues": self.queues,
                  # A pid alone may be reused by the time `worker stop` signals it.
                  "worker_started_at": {str(pid): self.child_starts.get(pid)
                                        for pid in sorted(self.children)},
                  "home": self.home.home}
        tmp = f"{self.record_path}.{self.pid}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.record_path)

    def spawn(self):
        self.home.close()                  # never share a SQLite connection across fork
        pid = os.fork()
        if pid == 0:                       # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)   # never write signal bytes into the parent's pipe
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                os.close(self.wake_r)
                os.close(self.wake_w)
                runner.prctl(runner.PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != self.pid:
                    os._exit(0)            # the supervisor died before prctl took effect
                os.close(self.report_r)
                home = Home(self.home.home, self.home.spool_dir, self.home.data_dir)
                code = run_worker(home, self.supervisor_id, self._reporter(), self.queues)
            except BaseException:
                logging.getLogger("queuectl").exception("worker crashed")
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()
        self.child_starts[pid] = runner.process_started(pid)
        log.info("supervisor %s started worker %d", self.supervisor_id, pid)
        return pid

    def _reporter(self):
        """In a worker: report(pgid) tells the supervisor which job group to kill if this
        worker dies (0: none). One write of < PIPE_BUF bytes is atomic."""
        write_fd, me = self.report_w, os.getpid()

        def report(pgid):
            try:
                os.write(write_fd, f"{me} {pgid}\n".encode())
            except OSError:
                pass
        return report

    def _read_reports(self):
        try:
            while True:
                chunk = os.read(self.report_r, 65536)
                if not chunk:
                    break
                self._report_buffer += chunk
        except BlockingIOError:
            pass
        *lines, self._report_buffer = self._report_buffer.split(b"\n")
        for line in lines:
            worker_pid, pgid = (int(x) for x in line.split())
            self.job_groups[worker_pid] = pgid

    def _kill_orphaned_job(self, worker_pid):
        pgid = self.job_groups.pop(worker_pid, 0)
        # A worker that died just after spawning a job, before its report, leaves a job we
        # were never told about: find it among the orphans we adopted.
        for group in [pgid] if pgid > 0 else self._unreported_jobs():
            try:
                os.killpg(group, signal.SIGKILL)
                log.warning("killed job process group %d of dead worker %d", group, worker_pid)
            except ProcessLookupError:
                pass

    def _unreported_jobs(self):
        """Process groups of adopted orphans that hold a job file in processing/ open (the
        locked fd a job inherits from its worker): running jobs whose worker is dead. A
        live worker's job is that worker's child, never ours."""
        import psutil
        processing = os.path.realpath(self.home.spool.dir("processing")) + os.sep
        groups = set()
        try:
            adopted = [p.pid for p in psutil.Process(self.pid).children()
                       if p.pid not in self.children]
        except psutil.Error:
            return groups
        for pid in adopted:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
                if not any(t.startswith(processing) and not t.endswith(" (deleted)")
                           for t in targets):
                    continue
                group = os.getpgid(pid)
                if group == os.getpgrp():
                    # Forked by its worker but not yet in a session of its own (between
                    # fork and setsid): killing its group would kill us and every worker.
                    os.kill(pid, signal.SIGKILL)
                    log.warning("killed process %d (a job being started) of a dead worker",
                                pid)
                else:
                    groups.add(group)
            except OSError:       # gone meanwhile, or not ours to read
                continue
        return groups

    def reap(self):
        """Collect dead workers (and adopted orphans); kill a dead worker's job; back off
        restarts while workers die young."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            born = self.children.pop(pid, None)
            self.child_starts.pop(pid, None)
            if born is None:
                continue                   # an adopted orphan, now reaped
            self._read_reports()
            self._kill_orphaned_job(pid)
            if self.stopping:
                continue
            young = time.monotonic() - born < YOUNG_DEATH_SECONDS
            crash_loop = young and _crashed(status)
            if crash_loop:
                self.restart_delay = min(self.restart_delay * 2, MAX_RESTART_DELAY)
                self.next_start = time.monotonic() + self.restart_delay
            elif not young:
                self.restart_delay = 0.5
            log.warning("worker %d exited (%s); restarting%s", pid, _describe(status),
                        f" in {self.restart_delay:.1f}s" if crash_loop else "")

    def run(self):
        """Keep `count` workers alive until SIGTERM/SIGINT; returns the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)   # a death wakes _nap (wakeup fd)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        runner.prctl(runner.PR_SET_CHILD_SUBREAPER, 1)
        log.info("supervisor %s starting %d workers", self.supervisor_id, self.count)
        try:
            while not self.stopping:
                self.reap()
                changed = False
                while len(self.children) < self.count and time.monotonic() >= self.next_start \
                        and not self.stopping:
                    self.spawn()
                    changed = True
                if changed:
                    self.write_record()
                self._read_reports()
                self._nap(0.2 if len(self.children) < self.count else 1.0)
            self._wait_children()
        finally:
            for path in (self.record_path, _stop_path(self.record_path)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            log.info("supervisor %s stopped", self.supervisor_id)
        return 0

    def _nap(self, seconds):
        """Sleep up to `seconds`, waking at once when a signal (a worker's death) arrives."""
        select.select([self.wake_r], [], [], seconds)
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _wait_children(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if self.children.pop(pid, None) is not None:
                self._read_reports()
                self._kill_orphaned_job(pid)


def _stop_path(record_path):
    return record_path[:-len(".json")] + ".stop"


def _write_stop_timeout(record_path, timeout):
    """Tell that supervisor's workers how long running jobs may take to finish."""
    tmp = f"{record_path}.{os.getpid()}.stop-tmp"
    with open(tmp, "w") as f:
        f.write(f"{timeout}\n")
    os.replace(tmp, _stop_path(record_path))


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_same(host, pid, started_at, signum):
    """Signal pid only if it is still the process the record names (host + pid + start
    time, checked just before): a pid reused by another process is never signalled."""
    if runner.is_same_process(host, pid, started_at):
        _signal(pid, signum)
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


# Signals that stop or kill a worker from outside (an operator, `worker stop`, the OOM
# killer): the worker did not fail, so it is restarted at once.
_OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _crashed(status):
    """True if a worker failed on its own: an error exit or a fatal signal of its own
    (SIGSEGV, SIGABRT), as opposed to a clean exit or a kill from outside."""
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) not in _OUTSIDE_SIGNALS
    return os.waitstatus_to_exitcode(status) != 0


def _describe(status):
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


# ---- commands -----------------------------------------------------------------------------

def supervisors(home):
    """[(record, alive)] for every supervisor record of this home; alive is None for
    another host's."""
    result = []
    try:
        names = sorted(os.listdir(_records_dir(home)))
    except FileNotFoundError:
        return result
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(_records_dir(home), name)
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
    supervisor_id = f"{runner.HOSTNAME}-{proc.pid}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QueueError(f"the supervisor exited at once (code {proc.returncode}); "
                             f"see {log_path}")
        workers = [w for w in home.index.workers() if w["supervisor"] == supervisor_id]
        if len(workers) >= count:
            return {"supervisor_pid": proc.pid, "workers": sorted(w["pid"] for w in workers)}
        time.sleep(0.05)
    raise QueueError(f"workers did not report in within {wait_seconds}s; see {log_path} and "
                     f"{home.path('logs', 'queuectl.log')}")


def run_foreground(home, count, queues=None):
    from .security import check_spool
    home.spool.ensure_layout()
    check_spool(home)
    home.configure_logging("supervisor")
    supervisor = Supervisor(home, count, queues)
    supervisor.write_record()
    return supervisor.run()


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
            _write_stop_timeout(record["path"], timeout)
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
        for path in (record["path"], _stop_path(record["path"])):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        count = len(record.get("workers") or [])
        report.append(f"stopped supervisor {record['pid']} and its {count} "
                      f"worker{'s' if count != 1 else ''}")
    return report
