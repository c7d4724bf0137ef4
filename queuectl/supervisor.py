"""The supervisor: a process that keeps N workers alive (`worker start`, or `worker start
--foreground` under systemd); the commands that start, stop and list supervisors are in
pool.py.

Invariants: a supervisor is recorded in data/supervisors/<host>-<pid>-<start>.json with host,
pid and its process start time, so a reused pid (or another host's) is never mistaken for it.
Workers are forked from the supervisor (no threads exist there at fork time) and get
PR_SET_PDEATHSIG=SIGTERM, so a killed supervisor's workers stop gracefully. A worker that
dies is restarted at once; one that crashes young (an error exit or a fatal signal of its
own, not a kill from outside) is restarted with a delay that doubles while it keeps
crashing (a crash loop does not spin).

Jobs die with their worker: each worker reports its running job's process group on a pipe,
and the supervisor, which is the child subreaper of everything below it, kills that group
when the worker dies (the job's flock then frees and recovery retries it).

On a shared spool a supervisor also polls spool/workers/<host>.stop (about once a second),
so `worker stop --host H` on any host stops H's pools; a request older than the supervisor
is ignored."""

import json
import logging
import os
import select
import signal
import time

from . import runner
from .home import Home
from .worker import run_worker

log = logging.getLogger("queuectl")
YOUNG_DEATH_SECONDS = 5
MAX_RESTART_DELAY = 30


def records_dir(home):
    return home.path("supervisors")


class Supervisor:
    def __init__(self, home, count, queues=None):
        self.home = home
        self.count = count
        self.queues = list(queues) if queues else None     # None: every queue
        self.pid = os.getpid()
        self.started_at = runner.process_started(self.pid)
        self.supervisor_id = supervisor_id(self.pid, self.started_at)
        self.shared = False
        self.seen_stop = None       # the stop request present at start is an old one
        self.record_path = os.path.join(records_dir(home), self.supervisor_id + ".json")
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
            signal_pid(pid, signal.SIGUSR1 if self.stop_now else signal.SIGTERM)

    def watch_stop_requests(self):
        """On a shared spool, remember the current stop request file (an old one)."""
        try:
            self.shared = self.home.shared_spool()[0]
            if self.shared:
                request = self.home.spool.stop_request(runner.HOSTNAME)
                self.seen_stop = request[0] if request else None
        except OSError:
            self.shared = False

    def check_stop_request(self):
        """Stop like on SIGTERM when a new spool/workers/<host>.stop appears."""
        if not self.shared or self.stopping:
            return
        request = self.home.spool.stop_request(runner.HOSTNAME)
        if request is None or request[0] == self.seen_stop:
            return
        self.seen_stop = request[0]
        log.info("supervisor %s: stop requested through the spool (timeout %gs)",
                 self.supervisor_id, request[1])
        try:
            write_stop_timeout(self.record_path, request[1])
        except OSError as exc:
            log.warning("could not record the stop timeout: %s", exc)
        self._on_signal(signal.SIGTERM, None)

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
        self.watch_stop_requests()
        try:
            while not self.stopping:
                self.check_stop_request()
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
            for path in (self.record_path, stop_path(self.record_path)):
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


def supervisor_id(pid, started_at):
    """host-pid-start: unique across hosts whose pids collide and across pid reuse."""
    return f"{runner.HOSTNAME}-{pid}-{int(started_at or 0)}"


def stop_path(record_path):
    return record_path[:-len(".json")] + ".stop"


def write_stop_timeout(record_path, timeout):
    """Tell that supervisor's workers how long running jobs may take to finish."""
    tmp = f"{record_path}.{os.getpid()}.stop-tmp"
    with open(tmp, "w") as f:
        f.write(f"{timeout}\n")
    os.replace(tmp, stop_path(record_path))


def signal_pid(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


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


def run_foreground(home, count, queues=None):
    from .security import check_spool
    home.spool.ensure_layout()
    check_spool(home)
    home.configure_logging("supervisor")
    supervisor = Supervisor(home, count, queues)
    supervisor.write_record()
    return supervisor.run()
