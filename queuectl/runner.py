"""Running one job's command: /bin/sh -c in its own session and process group, in the job's
directory, output appended to spool/output/<id>.log with a header and footer per attempt.

Invariants: the child inherits the locked job fd, so the job file stays locked until the job
itself exits, even if the worker is SIGKILLed: a job is never run twice at the same time.
Killing always targets the whole process group, and a kill waits until no member of the
group is left. Spawn failures become a Result, never an exception.

Why no PR_SET_PDEATHSIG here: setting it needs a preexec_fn, which forces a full fork() of the
worker instead of vfork and cost 30% of throughput in bench/. The supervisor makes the job
die with its worker instead: it is the jobs' subreaper and kills a dead worker's job group
(pool.py), which also catches the grandchildren PDEATHSIG would miss."""

import ctypes
import errno
import os
import signal
import subprocess
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_GRACE_SECONDS = 5


def prctl(option, value):
    """prctl(2) through libc; False where it is not available (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Result:
    exit_code: int = None      # the shell's exit status, when it exited
    signal: int = None         # the signal that ended it, when one did
    duration_s: float = 0.0
    error: str = None          # None on success; else a one-line reason
    timed_out: bool = False
    stopped: bool = False      # killed because the worker was stopping

    @property
    def ok(self):
        return self.error is None


def open_log(path):
    """Append-only output log; never follows a symlink planted in output/: such a link (or
    any non-file) is removed without being followed, and a fresh file is created."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            os.rmdir(path)
        except OSError:
            raise OSError(errno.EISDIR, "it is a directory that is not empty") from None
    else:
        os.unlink(path)
    return os.open(path, flags | os.O_EXCL, 0o600)


class RunningJob:
    def __init__(self, command, cwd, env, lock_fd, log_path, header):
        # Every attribute is set before anything can fail: the worker reads them all
        # whatever happened (a missing one once left the job in processing/ as "died").
        self.started = time.monotonic()
        self.proc = None
        self.pidfd = None
        self.spawn_error = None
        self.exit_code = 127       # reported when the command could not start
        self.log_fd = None
        self.log_start = 0
        self.timed_out = None      # the time limit, once it was hit
        self.stopped = False
        self.cancelled = False
        try:
            self.log_fd = open_log(log_path)
            os.write(self.log_fd, header.encode("utf-8", "replace"))
            self.log_start = os.lseek(self.log_fd, 0, os.SEEK_END)
        except OSError as exc:
            if self.log_fd is not None:
                os.close(self.log_fd)
                self.log_fd = None
            # Not started: the attempt fails with this reason (and is retried), so a broken
            # log never runs a job blind nor loses it.
            self.spawn_error = (f"cannot write the output log {log_path}: "
                                f"{exc.strerror or exc}; the command was not started")
            self.exit_code = None
            return
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=self.log_fd, stderr=self.log_fd, pass_fds=(lock_fd,),
                start_new_session=True, preexec_fn=None)
        except OSError as exc:
            self.spawn_error = f"cannot start: {exc.strerror}: {exc.filename or cwd}"
            _write_quietly(self.log_fd, f"{self.spawn_error}\n")
            return
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None    # fall back to short waits

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def poll(self):
        return self.proc.poll() if self.proc else -1

    def signal_group(self, signum):
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self, grace=KILL_GRACE_SECONDS):
        """SIGTERM the whole group, SIGKILL whatever is left after `grace` seconds, and
        wait until the group is empty (no grandchild survives)."""
        if not self.proc:
            return
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            self.proc.poll()
            time.sleep(0.02)
        self.signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.01)
        self.proc.wait()

    def finish(self, worker_label):
        """Reap the child, append the footer, close the log; returns the Result."""
        duration = time.monotonic() - self.started
        if self.spawn_error:
            result = Result(exit_code=self.exit_code, duration_s=duration,
                            error=self.spawn_error)
        else:
            code = self.proc.wait()
            result = _result(code, duration, self.timed_out, self.stopped)
            if not result.ok and not result.timed_out and not result.stopped:
                tail = self._last_line()
                if tail:
                    result.error = f"{result.error}: {tail}"
        outcome = "ok" if result.ok else result.error
        if self.log_fd is not None:
            _write_quietly(self.log_fd, f"=== end: {outcome} ({duration:.3f}s) {worker_label}\n")
            os.close(self.log_fd)
        if self.pidfd is not None:
            os.close(self.pidfd)
        return result

    def _last_line(self):
        if self.log_fd is None:
            return ""
        return self._tail()

    def _tail(self):
        """The last line this attempt printed: the shell's own message for 126/127."""
        end = os.lseek(self.log_fd, 0, os.SEEK_END)
        start = max(self.log_start, end - 400)
        if end <= start:
            return ""
        text = os.pread(self.log_fd, end - start, start).decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


def _write_quietly(fd, text):
    """Log lines are best effort: a full disk must not turn a finished job into a crash."""
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _result(code, duration, timed_out, stopped):
    if timed_out:
        return Result(exit_code=code, duration_s=duration, timed_out=True,
                      signal=-code if code < 0 else None,
                      error=f"timed out after {timed_out:g}s (process group killed)")
    if stopped:
        return Result(exit_code=code, duration_s=duration, stopped=True,
                      error="stopped with its worker")
    if code == 0:
        return Result(exit_code=0, duration_s=duration)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return Result(signal=-code, duration_s=duration, error=f"killed by {name}")
    return Result(exit_code=code, duration_s=duration, error=f"exit code {code}")


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def header(job_id, attempt, worker_label, now_text):
    return f"=== queuectl {job_id} attempt {attempt} at {now_text} on {worker_label}\n"


def job_environment(job_id, attempt, home):
    env = dict(os.environ)
    env.update(QUEUECTL_JOB_ID=job_id, QUEUECTL_ATTEMPT=str(attempt), QUEUECTL_HOME=home)
    return env


def process_stats(proc_cache={}):
    """(cpu percent since the last call, rss bytes) of this process, via psutil."""
    import psutil
    me = proc_cache.get("me")
    if me is None:
        me = proc_cache["me"] = psutil.Process()
        me.cpu_percent(None)
    with me.oneshot():
        return me.cpu_percent(None), me.memory_info().rss


HOSTNAME = os.uname().nodename


def process_started(pid):
    """The start time (epoch seconds) of process pid, or None if there is none."""
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_same_process(host, pid, started_at):
    """True if (host, pid, start time) names a live process on this host, False if not,
    None for another host's process (we cannot tell). A reused pid has another start time."""
    if host != HOSTNAME:
        return None
    import psutil
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False       # exited, waiting to be reaped by a PID 1 that may never do it
        created = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return abs(created - (started_at or 0)) < 1.0
