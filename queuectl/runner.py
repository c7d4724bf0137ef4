"""Running one job's command: /bin/sh -c in its own session and process group, in the job's
directory, output appended to spool/output/<id>.log with a header and footer per attempt.

Invariants: the child inherits the locked job fd, so the job file stays locked until the job
itself exits, even if the worker is SIGKILLed: a job is never run twice at the same time.
Killing always targets the whole process group, and a kill waits until no member of the
group is left. Spawn failures become a Result, never an exception.

The spawn is os.posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) + exec) with setsid, stdin
/dev/null, stdout and stderr the log, and the lock fd made inheritable for just that call;
every other fd the worker holds is close-on-exec (Python's default; the inotify fd is set so
by watcher). posix_spawn has no chdir, so the worker changes into the job's directory around
the call and back (only when it is the process's only thread: the directory is process-wide);
otherwise, and where posix_spawn is missing, subprocess.Popen does the same spawn. Either
way the job is a direct child, its own session and group, holding the lock.

Why no PR_SET_PDEATHSIG here: neither posix_spawn nor a vfork-ing Popen can set it (it needs
code between fork and exec: a preexec_fn forces a full fork() of the worker and cost 30% of
throughput in bench/). The supervisor makes the job die with its worker instead: it is the
jobs' subreaper and kills a dead worker's job group (supervisor.py), which also catches the
grandchildren PDEATHSIG would miss."""

import ctypes
import errno
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from .history import TAIL_READ, read_end

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
    cancelled: bool = False    # killed because `cancel --running` asked for it
    started_at: float = None   # wall clock (epoch) when the command was started

    @property
    def ok(self):
        return self.error is None


def open_log(path):
    """Append-only output log; never follows a symlink planted in output/: such a link (or
    any non-file) is removed without being followed, and a fresh file is created. Returns
    (fd, fresh): fresh if this call created the file (so it is empty)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_EXCL, 0o600), True
    except FileNotFoundError:
        # output/ was deleted since the spool's layout was made: make it again (0700: logs
        # hold what jobs print). Any other error is left to the open, which reports it.
        try:
            os.mkdir(os.path.dirname(path), 0o700)
        except OSError:
            pass
        return os.open(path, flags | os.O_EXCL, 0o600), True
    except FileExistsError:
        pass               # an earlier attempt's log, or something planted there
    try:
        return os.open(path, flags, 0o600), False
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
    return os.open(path, flags | os.O_EXCL, 0o600), True


class RunningJob:
    def __init__(self, command, cwd, env, lock_fd, log_path, header):
        # Every attribute is set before anything can fail: the worker reads them all
        # whatever happened (a missing one once left the job in processing/ as "died").
        self.started = time.monotonic()
        self.started_at = time.time()
        self.proc = None
        self.pidfd = None
        self.spawn_error = None
        self.exit_code = 127       # reported when the command could not start
        self.log_fd = None
        self.log_start = 0
        self.output_end = ""        # the end of what the command printed (finish reads it)
        self.timed_out = None      # the time limit, once it was hit
        self.stopped = False
        self.cancelled = False
        self.lost = False           # the claim's lock was lost (killed at once, not finished)
        try:
            self.log_fd, fresh = open_log(log_path)
            written = os.write(self.log_fd, header.encode("utf-8", "replace"))
            self.log_start = written if fresh else os.lseek(self.log_fd, 0, os.SEEK_END)
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
            self.proc = spawn(command, cwd, env, self.log_fd, lock_fd)
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

    def wait(self, timeout, wake=(), check=None, first_check=1.0):
        """Wait until the job ends, waking when one of `wake` (objects with fileno(): a
        self-pipe, an inotify fd) is readable, and at least every second. The time limit
        (seconds, or None) kills the group and sets timed_out. At every wake check() (if
        given) returns (reason, seconds until it wants to be asked again): reason
        "stopped", "cancelled" or "lost" kills the group and sets that flag ("lost" at once:
        another host may already be taking the job); None carries on. The first check is
        made after at most `first_check` seconds (or at the first wake): a short job ends
        before it and needs none."""
        deadline = self.started + timeout if timeout else None
        if self.pidfd is not None:
            limit = max(0.0, min(first_check, timeout or first_check))
            select.select([*wake, self.pidfd], [], [], limit)
        while self.poll() is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.timed_out = timeout
                self.kill_group()
                return
            reason, within = check() if check is not None else (None, 1.0)
            if reason is not None:
                setattr(self, reason, True)
                self.kill_group(grace=0 if reason == "lost" else KILL_GRACE_SECONDS)
                return
            limit = max(0.0, min(1.0, within, deadline - now if deadline else 1.0))
            if self.pidfd is None:
                select.select(list(wake), [], [], min(0.01, limit))   # no pidfd: poll
            else:
                select.select([*wake, self.pidfd], [], [], limit)

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
            result = _result(self.proc.wait(), duration, self.timed_out, self.stopped)
            result.cancelled = self.cancelled
        printed = self._printed_end()
        if not (result.ok or result.timed_out or result.stopped or self.spawn_error):
            tail = _last_line(printed[-400:])
            if tail:
                result.error = f"{result.error}: {tail}"
        self.output_end = printed.decode("utf-8", "replace")
        result.started_at = self.started_at
        outcome = "ok" if result.ok else result.error
        if self.log_fd is not None:
            _write_quietly(self.log_fd, f"=== end: {outcome} ({duration:.3f}s) {worker_label}\n")
            _close_quietly(self.log_fd)   # EBADF: a network filesystem's client restarted
        if self.pidfd is not None:
            os.close(self.pidfd)
        return result

    def _printed_end(self):
        """The last history.TAIL_READ bytes the command printed, read through the log's fd."""
        if self.log_fd is None:
            return b""
        try:
            return read_end(self.log_fd, self.log_start, TAIL_READ)[0]
        except OSError:       # the log became unreadable (a dead or restarted mount)
            return b""


def _last_line(printed):
    """The last line a command printed: the shell's own message for 126/127."""
    text = printed.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def end_interrupted_log(path, note):
    """Close an attempt whose worker died mid-run: append `=== end: NOTE` to its output log
    unless the log already ends with an end line (or there is no log). Best effort."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 4096, max(0, size - 4096)).decode("utf-8", "replace")
        last = tail.rstrip("\n").rsplit("\n", 1)[-1]
        if size and not last.startswith("=== end"):
            _write_quietly(fd, ("" if tail.endswith("\n") else "\n") + f"=== end: {note}\n")
    finally:
        os.close(fd)


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


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


def job_environment(job_id, attempt, home, base=None, worker_pid=None):
    """The job's environment: `base` (a copy of os.environ a worker makes once) plus its id,
    attempt, home and the pid of the worker running it (this process, `worker_pid` if the
    caller knows it: $PPID is not that if the worker died before the shell started, when
    the orphan was already handed to the supervisor)."""
    env = dict(os.environ if base is None else base)
    env.update(QUEUECTL_JOB_ID=job_id, QUEUECTL_ATTEMPT=str(attempt), QUEUECTL_HOME=home,
               QUEUECTL_WORKER_PID=str(worker_pid or os.getpid()))
    return env


class Process:
    """A child started by posix_spawn: pid, poll() and wait() like Popen's (returncode is
    -N for a child killed by signal N)."""
    __slots__ = ("pid", "returncode")

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:     # reaped elsewhere: nothing more to learn
                self.returncode = 255
                break
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


_DEVNULL = os.devnull
_SIGDEF = tuple(s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None),
                            getattr(signal, "SIGXFZ", None)) if s is not None)


def spawn(command, cwd, env, log_fd, lock_fd):
    """Start /bin/sh -c command in its own session, stdin /dev/null, stdout and stderr to
    log_fd, inheriting lock_fd. Returns a Process (posix_spawn) or a Popen. OSError if it
    cannot start (a missing cwd names the directory)."""
    if not hasattr(os, "posix_spawn") or threading.active_count() != 1:
        return subprocess.Popen(
            ["/bin/sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=log_fd, stderr=log_fd, pass_fds=(lock_fd,) if lock_fd >= 0 else (),
            start_new_session=True)
    if not _INHERITED_FDS_CLOSED:
        close_inherited_fds_on_exec()
    actions = [(os.POSIX_SPAWN_OPEN, 0, _DEVNULL, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
    inherit = lock_fd >= 0 and not _DUP2_CLEARS_CLOEXEC
    if lock_fd >= 0 and _DUP2_CLEARS_CLOEXEC:
        actions.append((os.POSIX_SPAWN_DUP2, lock_fd, lock_fd))
    here = None
    if cwd != (_settled[0] if _settled else _cwd()):
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(cwd)
        except BaseException:
            os.close(here)
            raise
    if inherit:
        os.set_inheritable(lock_fd, True)
    try:
        # Python resets the signals it set to "ignore" (SIGPIPE, SIGXFSZ) as Popen does.
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], env,
                             file_actions=actions, setsid=True, setsigdef=_SIGDEF)
    finally:
        if inherit:
            os.set_inheritable(lock_fd, False)
        if here is not None:
            try:
                os.fchdir(here)
            finally:
                os.close(here)
    return Process(pid)


_INHERITED_FDS_CLOSED = []


def _dup2_clears_cloexec():
    """Does posix_spawn's dup2 of an fd onto itself clear its close-on-exec flag in the
    child? glibc does since 2.29 (and POSIX.1-2024 asks it), so the lock fd reaches the job
    without two fcntl calls around the spawn; elsewhere they are made."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 29)
    except (AttributeError, ValueError, OSError):
        return False


_DUP2_CLEARS_CLOEXEC = _dup2_clears_cloexec()


def close_inherited_fds_on_exec():
    """Mark every fd above 2 close-on-exec, once per process (at its first spawn).
    posix_spawn passes on whatever is inheritable, where Popen's close_fds closed it: fds a
    worker inherited from whoever started it (a shell, systemd) must not reach its jobs.
    The fds queuectl opens itself are close-on-exec already (watcher sees to inotify's)."""
    _INHERITED_FDS_CLOSED.append(True)
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(3, 1024)]
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


_settled = []     # the directory this process settled in for good (settle_in)


def settle_in(directory):
    """Make `directory` this process's working directory for good: a worker settles in its
    home, every job's default cwd, so spawning a job there needs no getcwd and no chdir.
    (A job's relative cwd is then taken from the home, too.)"""
    os.chdir(directory)
    _settled[:] = [directory]


def _cwd():
    try:
        return os.getcwd()
    except OSError:        # our own directory was deleted
        return None


def process_stats(proc_cache={}):
    """(cpu percent since the last call, rss bytes) of this process and every process
    below it (the running job's whole tree), via psutil. A process seen for the first time
    counts from that call on."""
    import psutil
    me = proc_cache.get("me")
    if me is None:
        me = proc_cache["me"] = psutil.Process()
    cpu, rss = 0.0, 0
    seen = {}
    try:
        children = me.children(recursive=True)
    except psutil.Error:
        children = []
    for proc in [me, *children]:
        try:
            known = me if proc is me else proc_cache.get(proc.pid)
            if known is None or known.create_time() != proc.create_time():
                known = proc
            with known.oneshot():
                # A Process object's first call only starts its measurement and says 0 %.
                # (Priming it with a call just before asked twice in a row: psutil then
                # divided a 10 ms clock tick by microseconds, thousands of %.)
                cpu += known.cpu_percent(None)
                rss += known.memory_info().rss
        except psutil.Error:
            continue                      # exited meanwhile
        seen[proc.pid] = known
    for pid in [p for p in proc_cache if p != "me" and p not in seen]:
        del proc_cache[pid]
    proc_cache.update({pid: p for pid, p in seen.items() if p is not me})
    return cpu, rss


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
