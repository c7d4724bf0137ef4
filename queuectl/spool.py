"""The spool: the only module that knows the directory layout and moves files.

A job's state is the directory its file sits in. Invariants kept here:
- No move overwrites (renameat2 NOREPLACE or link+unlink): an existing destination means a
  duplicate id, reported as DuplicateId, and nothing is replaced.
- A published or finished job is on disk before it is visible: tmp/ + fsync + move + fsync of
  the destination directory; only then is the old copy unlinked (a crash in between leaves a
  leftover in processing/ for recovery, never a lost job).
- Files are opened O_NOFOLLOW|O_NONBLOCK and fstat-ed before reading: symlinks, FIFOs,
  directories and oversize files are refused without reading a byte of them.
- A claim holds an exclusive flock on the job's inode for as long as the job runs.
On failure, OSErrors other than the expected races propagate to the caller."""

import errno
import fcntl
import logging
import os
import stat

from . import fsops
from .errors import DuplicateId
from .job import JOB_SUFFIX

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")
PRIVATE_DIRS = ("rejected", "output")    # may hold secrets from job output or bad drops
ALL_DIRS = ("tmp", *JOB_STATES, *PRIVATE_DIRS)
REASON_SUFFIX = ".reason"
CANCEL_PREFIX, CANCEL_SUFFIX = ".", ".cancel"
PAUSE_FILE = "PAUSED"
_HOST = os.uname().nodename.split(".")[0] or "host"   # (socket costs 2 ms to import)


class NotAJobFile(Exception):
    """The path cannot be a job (symlink, FIFO, directory, too big, unreadable). `settled`
    is False when the problem may be a writer still at work (e.g. vanished mid-read)."""

    def __init__(self, reason, gone=False):
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


class Claim:
    """A job file held in processing/: its locked fd, its bytes, its fstat and the state
    it was claimed from. (A plain class: dataclasses would slow every enqueue's import.)"""
    __slots__ = ("job_id", "fd", "data", "st", "origin")

    def __init__(self, job_id, fd, data, st, origin):
        self.job_id, self.fd, self.data, self.st, self.origin = job_id, fd, data, st, origin


def display_name(name):
    """A file name as text that is always printable and storable (bad UTF-8 escaped)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def job_name(job_id):
    return job_id + JOB_SUFFIX


def attempt_mark(data):
    """Names one attempt of a job: a digest of the job file as claimed for it. Every attempt
    is claimed from a file rewritten since the last one (attempts and updated_at change)."""
    import hashlib
    return hashlib.sha256(data).hexdigest()[:20]


def is_candidate(name):
    """Names that may be jobs: '<something>.json', not hidden (tools write '.x.part')."""
    return name.endswith(JOB_SUFFIX) and not name.startswith(".")


class Spool:
    def __init__(self, root, max_job_bytes=1048576):
        self.root = os.path.abspath(root)
        self.max_job_bytes = max_job_bytes
        self._ready = False
        self._submitters = None

    # ---- layout -------------------------------------------------------------------------
    def dir(self, state):
        return os.path.join(self.root, state)

    def path(self, state, job_id):
        return os.path.join(self.root, state, job_name(job_id))

    def output_path(self, job_id):
        return os.path.join(self.root, "output", job_id + ".log")

    def exists(self):
        return os.path.isdir(self.dir("pending"))

    def ensure_layout(self):
        """Create any missing directory (idempotent, safe against concurrent creators)."""
        if self._ready:
            return
        os.makedirs(self.root, exist_ok=True)
        for name in ALL_DIRS:
            path = self.dir(name)
            try:
                os.mkdir(path, 0o700 if name in PRIVATE_DIRS else 0o755)
            except FileExistsError:
                pass
        self._ready = True

    def ensure_output(self):
        """Re-create output/ if it was deleted since ensure_layout ran (which runs once per
        process). Errors are left to the log's open, which reports them for the job."""
        try:
            os.mkdir(self.dir("output"), 0o700)
        except OSError:
            pass

    def is_paused(self):
        return os.path.lexists(os.path.join(self.root, PAUSE_FILE))

    def set_paused(self, paused):
        """The pause flag is a plain file (spool/PAUSED) so `ls` shows it and any tool can
        pause the queue with `touch`."""
        path = os.path.join(self.root, PAUSE_FILE)
        if paused:
            self.ensure_layout()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            os.close(fd)
        else:
            _unlink_quietly(path)

    def _cancel_marker(self, job_id):
        return os.path.join(self.dir("processing"), CANCEL_PREFIX + job_id + CANCEL_SUFFIX)

    def request_cancel(self, job_id):
        """Ask the worker running job_id's current attempt to kill it and bury it as
        cancelled: processing/.<id>.cancel (a dot-file, never taken for a job) naming that
        attempt by attempt_mark of its file. A marker left behind (its writer was killed)
        never matches a later attempt, whose claim is of a rewritten file. Returns False if
        the job is not in processing/ (any more)."""
        try:
            data, _ = self.read("processing", job_name(job_id))
        except NotAJobFile:
            return False
        self.write_private("processing", CANCEL_PREFIX + job_id + CANCEL_SUFFIX,
                           attempt_mark(data).encode() + b"\n")
        return True

    def cancel_requested(self, job_id, claimed_data):
        """True if a cancel marker targets the attempt claimed with these bytes."""
        return self._cancel_target(job_id) == attempt_mark(claimed_data)

    def _cancel_target(self, job_id):
        """The attempt mark a cancel marker names; None without one, "" if unreadable."""
        try:
            fd = os.open(self._cancel_marker(job_id),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            return ""
        try:
            return os.read(fd, 256).decode("ascii", "replace").strip()
        except OSError:
            return ""
        finally:
            os.close(fd)

    def stale_cancels(self):
        """{job id: why} for cancel markers that target no running attempt: the job left
        processing/, or it runs another attempt than the one the marker names."""
        try:
            names = os.listdir(self.dir("processing"))
        except FileNotFoundError:
            return {}
        stale = {}
        for name in names:
            if not (name.startswith(CANCEL_PREFIX) and name.endswith(CANCEL_SUFFIX)):
                continue
            job_id = name[len(CANCEL_PREFIX):-len(CANCEL_SUFFIX)]
            try:
                data, _ = self.read("processing", job_name(job_id))
            except NotAJobFile:
                stale[job_id] = "the job is not in processing/"
                continue
            if self._cancel_target(job_id) != attempt_mark(data):
                stale[job_id] = "it names an earlier attempt than the one running"
        return stale

    def clear_cancel(self, job_id):
        _unlink_quietly(self._cancel_marker(job_id))

    def files_older_than(self, state, cutoff):
        """Names in a state directory last changed before `cutoff`; in rejected/, names
        rejected before it (see rejected_at)."""
        if state == "rejected":
            return [name for name in self.rejected_names()
                    if (self.rejected_at(name) or cutoff) < cutoff]
        old = []
        for name in self.names(state):
            st = self.lstat(state, name)
            if st is not None and st.st_mtime < cutoff:
                old.append(name)
        return old

    def rejected_at(self, name):
        """When rejected/<name> was rejected: its reason file's mtime (written at the
        rejection). The file itself keeps the bytes and the mtime it was dropped with, so
        its own mtime (the fallback when the reason is missing) is the drop time."""
        st = self.lstat("rejected", name + REASON_SUFFIX) or self.lstat("rejected", name)
        return st.st_mtime if st is not None else None

    def purge(self, state, name):
        """Delete a job file, its output log, and (for rejected/) its reason file. A
        rejected directory is removed with its contents."""
        path = os.path.join(self.dir(state), name)
        if state == "rejected":
            _unlink_quietly(path + REASON_SUFFIX)
            st = self.lstat(state, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                import shutil
                shutil.rmtree(path, ignore_errors=True)
                return
        else:
            _unlink_quietly(self.output_path(name[:-len(JOB_SUFFIX)]))
        _unlink_quietly(path)

    def state_mtimes(self):
        """{dir: mtime_ns} for every job-holding directory (rejected included)."""
        result = {}
        for name in (*JOB_STATES, "rejected"):
            try:
                result[name] = os.stat(self.dir(name)).st_mtime_ns
            except FileNotFoundError:
                result[name] = 0
        return result

    def names(self, state):
        """Candidate job names in one directory (unsorted)."""
        try:
            return [name for name in os.listdir(self.dir(state)) if is_candidate(name)]
        except FileNotFoundError:
            return []

    def holds_jobs(self):
        """True if any state directory holds a job file (stops at the first one found)."""
        for state in JOB_STATES:
            try:
                with os.scandir(self.dir(state)) as entries:
                    if any(is_candidate(entry.name) for entry in entries):
                        return True
            except OSError:
                continue
        return False

    def find(self, job_id):
        """The job states holding <id>.json right now (normally one; two after a crash).
        A job moving against the scan order (dead or failed -> processing -> pending) can
        slip between two lstat calls and be seen nowhere, so an empty answer is checked
        again before it is believed."""
        name = job_name(job_id)
        for _ in range(3):
            found = [s for s in JOB_STATES if os.path.lexists(os.path.join(self.root, s, name))]
            if found:
                break
        return found

    # ---- reading ------------------------------------------------------------------------
    def _open_checked(self, path, flags):
        """Open without following symlinks or blocking on FIFOs; refuse non-regular files
        and oversize ones before any read. Returns (fd, stat)."""
        try:
            fd = fsops.open_(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotAJobFile("vanished", gone=True) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotAJobFile("is a symbolic link (never followed)") from None
            if exc.errno == errno.EISDIR:
                raise NotAJobFile("is a directory, not a file") from None
            if exc.errno in (errno.ENXIO, errno.EWOULDBLOCK):
                raise NotAJobFile("is a special file, not a regular file") from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and flags & os.O_RDWR:
                raise NotAJobFile(_unclaimable(path, exc)) from None
            raise NotAJobFile(f"cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            self._check_stat(st)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def submitters(self):
        """Users whose files may be jobs: us, root, and the spool's owner. A file owned by
        anyone else (or a hard link to one) could make us run their commands as us."""
        if self._submitters is None:
            owners = {os.geteuid(), 0}
            try:
                owners.add(os.stat(self.root).st_uid)
            except OSError:
                pass
            self._submitters = owners
        return self._submitters

    def _check_stat(self, st):
        if st.st_uid not in self.submitters():
            raise NotAJobFile(f"is owned by uid {st.st_uid}, which may not submit jobs "
                              f"(allowed: {', '.join(map(str, sorted(self.submitters())))})")
        if stat.S_ISDIR(st.st_mode):
            raise NotAJobFile("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise NotAJobFile("is a special file (FIFO, socket or device), not a regular file")
        if st.st_size > self.max_job_bytes:
            raise NotAJobFile(f"is {st.st_size} bytes, over max_job_bytes "
                              f"({self.max_job_bytes})")

    def _read_fd(self, fd):
        data = os.pread(fd, self.max_job_bytes + 1, 0)
        if len(data) > self.max_job_bytes:
            raise NotAJobFile(f"grew past max_job_bytes ({self.max_job_bytes}) while read")
        return data

    def read(self, state, name):
        """(bytes, stat) of <state>/<name>, read safely; NotAJobFile if it can't be a job."""
        fd, st = self._open_checked(os.path.join(self.dir(state), name), os.O_RDONLY)
        try:
            return self._read_fd(fd), st
        finally:
            os.close(fd)

    def lstat(self, state, name):
        try:
            return os.lstat(os.path.join(self.dir(state), name))
        except FileNotFoundError:
            return None

    # ---- writing ------------------------------------------------------------------------
    def _write_tmp(self, data):
        """Write data to a fresh file in tmp/ and fsync it; returns its path."""
        self.ensure_layout()
        path = os.path.join(self.dir("tmp"), f"{_HOST}.{os.getpid()}.{os.urandom(6).hex()}")
        fd = fsops.open_(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            fsops.write_all(fd, data, path)
            fsops.fsync(fd, path)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)
        return path

    def publish(self, job_id, data, state="pending"):
        """Make a new job visible: tmp + fsync + link (never replaces) + fsync of the dir.
        DuplicateId if <id>.json already exists in that directory."""
        self.publish_many([(job_id, data)], state)

    def publish_many(self, jobs, state="pending"):
        """Publish [(id, data)] all or nothing: every file is written and fsynced in tmp/
        before the first is linked into `state`, and the directory is fsynced once. On any
        error (a full disk, an I/O error, a duplicate id) the files already linked are
        unlinked again before it is raised, so a failed enqueue leaves nothing behind (a job
        a worker claimed in that instant runs; it is logged)."""
        tmps = {}
        linked = []
        try:
            for job_id, data in jobs:
                tmps[job_id] = self._write_tmp(data)
            for job_id, _ in jobs:
                try:
                    fsops.link(tmps[job_id], self.path(state, job_id))
                except FileExistsError:
                    raise DuplicateId(f"a job with id {job_id!r} already exists") from None
                linked.append(job_id)
                _unlink_quietly(tmps.pop(job_id))
            fsops.fsync_dir(self.dir(state))
        except BaseException:
            for job_id in linked:
                try:
                    os.unlink(self.path(state, job_id))
                except FileNotFoundError:
                    logging.getLogger("queuectl").warning(
                        "publishing failed, but a worker had already taken %s: it runs", job_id)
                except OSError:
                    pass
            raise
        finally:
            for tmp in tmps.values():
                _unlink_quietly(tmp)

    # ---- claiming and finishing -----------------------------------------------------------
    def claim(self, state, job_id):
        """Lock <state>/<id>.json and move it into processing/. Returns a Claim, or None when
        another process holds it or won the race (normal, silent). NotAJobFile if the path
        is not a regular file of acceptable size."""
        src = self.path(state, job_id)
        fd, st = self._open_checked(src, os.O_RDWR)
        try:
            try:
                fsops.flock(fd, _LOCK_EX_NB, src)
            except BlockingIOError:
                os.close(fd)    # someone else is claiming or running it
                return None
            # Between our open and flock another worker may have claimed and finished the
            # file and a new one may sit under the name: only move the inode we locked.
            try:
                current = os.lstat(src)
            except FileNotFoundError:
                os.close(fd)
                return None
            if current.st_ino != st.st_ino or current.st_dev != st.st_dev:
                os.close(fd)
                return None
            try:
                fsops.rename_noreplace(src, self.path("processing", job_id))
            except (FileNotFoundError, FileExistsError):
                os.close(fd)    # lost the race, or the same id is running: skip
                return None
            st = os.fstat(fd)
            return Claim(job_id, fd, self._read_fd(fd), st, state)
        except BaseException:
            _close_quietly(fd)
            raise

    def finish(self, claim, data, dest):
        """Write the job's new record into dest/ and release processing/. Order: tmp, fsync,
        fsync of the claim's origin (settle_claim), move into dest (never replacing), fsync
        dest, unlink processing/, close (unlock).
        A crash after the move leaves a leftover in processing/ that recovery deletes.
        DuplicateId if dest already holds the id; the claim is then still held."""
        tmp = self._write_tmp(data)
        try:
            self.settle_claim(claim, dest)
            fsops.rename_noreplace(tmp, self.path(dest, claim.job_id))
        except FileExistsError:
            _unlink_quietly(tmp)
            raise DuplicateId(f"{dest}/ already holds a job with id {claim.job_id!r}") from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsops.fsync_dir(self.dir(dest))
        self.release(claim, unlink=True)

    def settle_claim(self, claim, dest):
        """Make the claim's move out of its origin durable before the job appears in dest
        (or rejected/). Directory operations that were never fsynced may be lost by a power
        cut while later, fsynced ones survive: without this the claim could be lost and the
        move into dest kept, leaving the job in two states (origin and dest). Not needed
        when origin is processing/ (recovery) or dest itself (whose fsync covers it)."""
        if claim.origin not in ("processing", dest):
            fsops.fsync_dir(self.dir(claim.origin))

    def release(self, claim, unlink):
        """Drop a claim: optionally unlink its processing/ file, then close (unlock)."""
        try:
            if unlink:
                try:
                    fsops.unlink(self.path("processing", claim.job_id))
                except FileNotFoundError:
                    pass
        finally:
            _close_quietly(claim.fd)
            claim.fd = -1

    def unclaim(self, claim):
        """Put a claimed file back where it came from untouched (it was not ready)."""
        try:
            fsops.rename_noreplace(self.path("processing", claim.job_id),
                                   self.path(claim.origin, claim.job_id))
        finally:
            self.release(claim, unlink=False)

    def probe_orphan(self, job_id):
        """Lock processing/<id>.json if nobody holds it: a Claim on an orphan, else None.
        Re-checks after locking that the path still names the locked inode."""
        path = self.path("processing", job_id)
        try:
            fd = fsops.open_(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, OSError):
            return None
        try:
            fsops.flock(fd, _LOCK_EX_NB, path)
        except BlockingIOError:
            os.close(fd)
            return None
        st = os.fstat(fd)
        current = self.lstat("processing", job_name(job_id))
        if st.st_nlink == 0 or current is None or current.st_ino != st.st_ino:
            os.close(fd)
            return None
        try:
            data = self._read_fd(fd)
        except NotAJobFile:
            data = b""
        return Claim(job_id, fd, data, st, "processing")

    # ---- rejecting ----------------------------------------------------------------------
    def reject(self, state, name, reason):
        """Move <state>/<name> into rejected/ byte for byte (never opened for writing) and
        write the reason beside it. Returns the name it got there, or None if it vanished."""
        self.ensure_layout()
        target = name
        for _ in range(5):
            try:
                fsops.rename_noreplace(os.path.join(self.dir(state), name),
                                       os.path.join(self.dir("rejected"), target))
                break
            except FileExistsError:
                target = f"{name}.{os.urandom(4).hex()}"
            except FileNotFoundError:
                return None
        else:
            return None
        self.write_private("rejected", target + REASON_SUFFIX, reason.encode() + b"\n")
        fsops.fsync_dir(self.dir("rejected"))
        return target

    def reject_reason(self, name):
        try:
            with open(os.path.join(self.dir("rejected"), name + REASON_SUFFIX), "rb") as f:
                return f.read(4096).decode("utf-8", "replace").strip()
        except OSError:
            return None

    def rejected_names(self):
        try:
            return [n for n in os.listdir(self.dir("rejected")) if not n.endswith(REASON_SUFFIX)]
        except FileNotFoundError:
            return []

    def write_private(self, state, name, data):
        """Atomically (re)write a small side file such as a rejection reason."""
        tmp = self._write_tmp(data)
        fsops.replace(tmp, os.path.join(self.dir(state), name))


_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB


def _unclaimable(path, exc):
    """Why a job file readable by us cannot be opened read-write (a claim needs that for its
    lock): names our uid and the file's owner and mode, which is what a user has to fix."""
    why = f"cannot be claimed: {exc.strerror.lower()}"
    try:
        st = os.lstat(path)
    except OSError:
        return why
    return (f"{why} (the worker runs as uid {os.geteuid()}; the file is owned by uid "
            f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")


def _unlink_quietly(path):
    try:
        fsops.unlink(path)
    except FileNotFoundError:
        pass


def _close_quietly(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
