"""The spool: the only code that knows the directory layout, and the moves of job files
between state directories (this module: layout, reading, publishing, claiming, finishing,
rejecting). The Spool class also carries, from modules of their own, the control files
beside the jobs (spool_control: pause flag, cancel markers, heartbeats, stop requests) and
retention (spool_retention: ageing out and purging); the names they all share are in
spoolnames, re-exported here. (Other modules touch files that are not jobs: fsck deletes
stale tmp/ files, runner replaces an output log that is not a regular file, index sets a
broken database aside.)

A job's state is the directory its file sits in. Invariants kept here:
- No move overwrites (renameat2 NOREPLACE or link+unlink): an existing destination means a
  duplicate id, reported as DuplicateId, and nothing is replaced.
- A published or finished job is on disk before it is visible: tmp/ + fsync + move + fsync of
  the destination directory; only then is the old copy unlinked (a crash in between leaves a
  leftover in processing/ for recovery, never a lost job).
- Files are opened O_NOFOLLOW|O_NONBLOCK and fstat-ed before reading: symlinks, FIFOs,
  directories and oversize files are refused without reading a byte of them.
- A claim holds an exclusive flock on the job's inode for as long as the job runs;
  `check_claim` re-asserts it (a network filesystem can drop it: a client restart, a dead
  mount) and finishing moves only a claim that still holds.
- On a shared filesystem a file can vanish under an fd another host opened: ENOENT, ESTALE
  or EBADF on a fresh fd (GONE_ERRNOS) mean "lost the race", a silent skip, and never leak
  the fd.
On failure, OSErrors other than the expected races propagate to the caller; ENOTCONN/EIO
(DOWN_ERRNOS) mean the spool itself is unreachable (a dead mount)."""

import errno
import fcntl
import os

from . import fsops
from .errors import DuplicateId
from .filesystems import filesystem_type
from .job import JOB_SUFFIX
from .logs import log
from .spool_control import ControlFiles
from .spool_lookups import Lookups
from .spool_reading import SafeReads
from .spool_retention import Retention
# The shared names are re-exported: the rest of queuectl imports the spool's names from here.
from .spoolnames import (ALL_DIRS, DOWN_ERRNOS, GONE_ERRNOS, JOB_STATES,  # noqa: F401
                         PAUSE_FILE, PRIVATE_DIRS, REASON_SUFFIX, WORKERS_DIR, NotAJobFile,
                         close_quietly, display_name, is_candidate, job_name, unlink_quietly)

SYNCFS_MIN_BATCH = 32        # publish_many syncs the filesystem once from this many jobs on
_HOST = os.uname().nodename.split(".")[0] or "host"   # (socket costs 2 ms to import)
# Names of files in tmp/: host, pid and a random tag made once per process, then a counter
# (no getpid or getrandom call per file); a forked child makes its own.
_tmp_names = []


def _new_tmp_names():
    import itertools
    _tmp_names[:] = [f"{_HOST}.{os.getpid()}.{os.urandom(4).hex()}.", itertools.count()]


os.register_at_fork(after_in_child=_tmp_names.clear)


class LostClaim(OSError):
    """We no longer hold a claim: its lock could not be re-asserted (a filesystem client
    restart, a dead mount) or processing/<id> is no longer the file we locked."""


class Claim:
    """A job file held in processing/: its locked fd, its bytes, its fstat and the state
    it was claimed from. (A plain class: dataclasses would slow every enqueue's import.)"""
    __slots__ = ("job_id", "fd", "data", "st", "origin")

    def __init__(self, job_id, fd, data, st, origin):
        self.job_id, self.fd, self.data, self.st, self.origin = job_id, fd, data, st, origin


class Spool(SafeReads, Lookups, ControlFiles, Retention):
    def __init__(self, root, max_job_bytes=1048576):
        self.root = os.path.abspath(root)
        self._prefix = os.path.join(self.root, "")     # root + "/", for cheap path building
        self.max_job_bytes = max_job_bytes
        self._ready = False
        self._submitters = None
        # finish() re-checks the claim first (check_claim) unless the owner knows that its
        # flock cannot be lost: a worker on a local filesystem turns this off.
        self.fence_claims = True
        self._dir_fds = None     # state -> open fd of its directory, once keep_dir_fds() ran

    # ---- layout -------------------------------------------------------------------------
    def dir(self, state):
        return self._prefix + state

    def keep_dir_fds(self):
        """From now on keep the job directories open: a worker's finishing fsyncs and
        duplicate checks then need no open and close per job, and look names up in one
        directory instead of walking the whole path. Called again (a worker does at every
        rescan), it drops the fds kept so far, so a directory replaced since (by hand) is
        opened anew."""
        for fd in (self._dir_fds or {}).values():
            close_quietly(fd)
        self._dir_fds = {}

    def _dir_fd(self, state):
        """An open fd of a job directory when they are kept (keep_dir_fds), else None."""
        fds = self._dir_fds
        if fds is None:
            return None
        fd = fds.get(state)
        if fd is None:
            fd = fds[state] = os.open(self.dir(state), os.O_RDONLY | os.O_DIRECTORY |
                                      os.O_CLOEXEC)
        return fd

    def path(self, state, job_id):
        return f"{self._prefix}{state}/{job_id}{JOB_SUFFIX}"

    def output_path(self, job_id):
        return f"{self._prefix}output/{job_id}.log"

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

    # ---- writing ------------------------------------------------------------------------
    def _write_tmp(self, data, sync=True):
        """Write data to a fresh file in tmp/ and fsync it (unless the caller syncs the
        filesystem after a batch); returns its path."""
        self.ensure_layout()
        if not _tmp_names:
            _new_tmp_names()
        path = f"{self._prefix}tmp/{_tmp_names[0]}{next(_tmp_names[1])}"
        fd = fsops.open_(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            fsops.write_all(fd, data, path)
            if sync:
                fsops.fsync(fd, path)
        except BaseException:
            os.close(fd)
            unlink_quietly(path)
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
        a worker claimed in that instant runs; it is logged).
        A batch of SYNCFS_MIN_BATCH jobs or more on a local filesystem is made durable by
        one syncfs after writing all its files instead of an fsync per file (the same
        guarantee: every file's data is on disk before the first link; fsops.can_syncfs)."""
        tmps = {}
        linked = []
        self.ensure_layout()
        batch = len(jobs) >= SYNCFS_MIN_BATCH and fsops.can_syncfs(self.dir("tmp"))
        try:
            for job_id, data in jobs:
                tmps[job_id] = self._write_tmp(data, sync=not batch)
            if batch:
                fsops.syncfs(self.dir("tmp"))
            for job_id, _ in jobs:
                try:
                    fsops.link(tmps[job_id], self.path(state, job_id))
                except FileExistsError:
                    raise DuplicateId(f"a job with id {job_id!r} already exists") from None
                linked.append(job_id)
                unlink_quietly(tmps.pop(job_id))
            fsops.fsync_dir(self.dir(state))
        except BaseException:
            for job_id in linked:
                try:
                    fsops.unlink(self.path(state, job_id))
                except FileNotFoundError:
                    log.warning(
                        "publishing failed, but a worker had already taken %s: it runs", job_id)
                except OSError:
                    pass
            raise
        finally:
            for tmp in tmps.values():
                unlink_quietly(tmp)

    # ---- claiming and finishing -----------------------------------------------------------
    def claim(self, state, job_id):
        """Lock <state>/<id>.json and move it into processing/. Returns a Claim, or None when
        another process holds it or won the race (normal, silent: also ENOENT/ESTALE/EBADF
        from the fresh fd, another host's win on a shared spool). NotAJobFile if the path
        is not a regular file of acceptable size."""
        src = self.path(state, job_id)
        fd, st = self._open_checked(src, os.O_RDWR)
        try:
            taken = self._lock_and_move(fd, st, src, job_id)
        except OSError as exc:
            close_quietly(fd)
            if exc.errno in GONE_ERRNOS:
                return None
            raise
        except BaseException:
            close_quietly(fd)
            raise
        if taken is None:
            close_quietly(fd)
            return None
        return Claim(job_id, fd, *taken, state)

    def _lock_and_move(self, fd, st, src, job_id):
        """The claim under the fd: (data, stat) once moved, None if someone else has it."""
        try:
            fsops.flock(fd, _LOCK_EX_NB, src)
        except BlockingIOError:
            return None         # someone else is claiming or running it
        # Between our open and flock another worker may have claimed and finished the
        # file and a new one may sit under the name: only move the inode we locked.
        try:
            current = os.lstat(src)
        except FileNotFoundError:
            return None
        if current.st_ino != st.st_ino or current.st_dev != st.st_dev:
            return None
        try:
            fsops.rename_noreplace(src, self.path("processing", job_id))
        except (FileNotFoundError, FileExistsError):
            return None         # lost the race, or the same id is running: skip
        return self._read_fd(fd, st.st_size), os.fstat(fd)

    def finish(self, claim, data, dest):
        """Write the job's new record into dest/ and release processing/. Order: tmp, fsync,
        fsync of the claim's origin (settle_claim), move into dest (never replacing), fsync
        dest, unlink processing/, close (unlock).
        A crash after the move leaves a leftover in processing/ that recovery deletes.
        DuplicateId if dest already holds the id; the claim is then still held. LostClaim
        (nothing moved) if the claim no longer holds: another host may own the job now."""
        if self.fence_claims:
            self.check_claim(claim)
        tmp = self._write_tmp(data)
        try:
            self.settle_claim(claim, dest)
            fsops.rename_noreplace(tmp, self.path(dest, claim.job_id))
        except FileExistsError:
            unlink_quietly(tmp)
            raise DuplicateId(f"{dest}/ already holds a job with id {claim.job_id!r}") from None
        except BaseException:
            unlink_quietly(tmp)
            raise
        fsops.fsync_dir(self.dir(dest), self._dir_fd(dest))
        self.release(claim, unlink=True)

    def check_claim(self, claim):
        """Raise LostClaim unless the claim still holds: its flock is re-asserted (a no-op
        for a lock we hold; EBADF after a filesystem client restart, ENOTCONN on a dead
        mount) and processing/<id> is still the inode we locked (fencing before a finishing
        move). Not a move, so it bypasses fsops' fault hook: a timer calls it while jobs run,
        and counted crash points must not depend on timing."""
        path = self.path("processing", claim.job_id)
        try:
            fcntl.flock(claim.fd, _LOCK_EX_NB)
            st = os.fstat(claim.fd)
            current = os.lstat(path)
        except BlockingIOError:
            raise LostClaim(errno.EAGAIN, "another process holds its lock now", path) from None
        except OSError as exc:
            raise LostClaim(exc.errno, f"its lock is gone ({exc.strerror})", path) from None
        if st.st_nlink == 0 or (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
            raise LostClaim(errno.ESTALE, "processing/ no longer holds the file we claimed",
                            path)

    def settle_claim(self, claim, dest):
        """Make the claim's move out of its origin durable before the job appears in dest
        (or rejected/). Directory operations that were never fsynced may be lost by a power
        cut while later, fsynced ones survive: without this the claim could be lost and the
        move into dest kept, leaving the job in two states (origin and dest). Not needed
        when origin is processing/ (recovery) or dest itself (whose fsync covers it)."""
        if claim.origin not in ("processing", dest):
            fsops.fsync_dir(self.dir(claim.origin), self._dir_fd(claim.origin))

    def release(self, claim, unlink):
        """Drop a claim: optionally unlink its processing/ file, then close (unlock)."""
        try:
            if unlink:
                try:
                    fsops.unlink(self.path("processing", claim.job_id))
                except FileNotFoundError:
                    pass
        finally:
            close_quietly(claim.fd)
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
        Re-checks after locking that the path still names the locked inode. The fd is
        closed on every path that returns no Claim."""
        path = self.path("processing", job_id)
        try:
            fd = fsops.open_(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in DOWN_ERRNOS:
                raise
            return None
        try:
            fsops.flock(fd, _LOCK_EX_NB, path)
            st = os.fstat(fd)
            current = self.lstat("processing", job_name(job_id))
            if st.st_nlink == 0 or current is None or \
                    (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
                close_quietly(fd)
                return None
            try:
                data = self._read_fd(fd, st.st_size)
            except NotAJobFile:
                data = b""
        except OSError as exc:
            close_quietly(fd)
            if isinstance(exc, BlockingIOError) or exc.errno in GONE_ERRNOS:
                return None      # owned, or recovered and unlinked by another host
            raise
        except BaseException:
            close_quietly(fd)
            raise
        return Claim(job_id, fd, data, st, "processing")

    # ---- where the spool lives ---------------------------------------------------------
    def filesystem(self):
        """The type of the filesystem holding the spool (from /proc/self/mountinfo), e.g.
        'ext4', 'nfs4', 'fuse.juicefs'; None if unknown."""
        return filesystem_type(self.root)

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
