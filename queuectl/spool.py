"""The spool: the only module that knows the directory layout and moves job files between
state directories. (Other modules touch files that are not jobs: fsck deletes stale tmp/
files, runner replaces an output log that is not a regular file, index sets a broken
database aside.)

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
import json
import os
import stat

from . import fsops
from .errors import DuplicateId
from .job import JOB_SUFFIX
from .logs import log

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")
PRIVATE_DIRS = ("rejected", "output")    # may hold secrets from job output or bad drops
ALL_DIRS = ("tmp", *JOB_STATES, *PRIVATE_DIRS)
SYNCFS_MIN_BATCH = 32        # publish_many syncs the filesystem once from this many jobs on
_OTHER_STATES = tuple(s for s in JOB_STATES if s != "processing")
REASON_SUFFIX = ".reason"
CANCEL_PREFIX, CANCEL_SUFFIX = ".", ".cancel"
PAUSE_FILE = "PAUSED"
WORKERS_DIR = "workers"   # heartbeats of every host's workers and stop requests (shared spools)
STOP_SUFFIX = ".stop"
# The file vanished or was replaced under an fd we had just opened: another host claimed,
# finished or unlinked it (ENOENT from flock/fstat/pread on JuiceFS, ESTALE on NFS), or our
# filesystem client restarted (EBADF). Lost the race: skip.
GONE_ERRNOS = (errno.ENOENT, errno.ESTALE, errno.EBADF)
# The spool itself is unreachable: a dead network mount (ENOTCONN), an I/O error.
DOWN_ERRNOS = (errno.ENOTCONN, errno.EIO, errno.ESHUTDOWN, errno.ENODEV, errno.EHOSTDOWN)
# Filesystem types whose directories other machines may share (from /proc/self/mountinfo).
SHARED_FILESYSTEMS = ("nfs", "nfs4", "ceph", "glusterfs", "cifs", "smb3", "lustre", "gpfs",
                      "gfs2", "ocfs2", "beegfs", "9p", "afs", "orangefs")
LOCAL_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs",
                     "bcachefs", "jfs", "reiserfs", "overlay")
_HOST = os.uname().nodename.split(".")[0] or "host"   # (socket costs 2 ms to import)
# Names of files in tmp/: host, pid and a random tag made once per process, then a counter
# (no getpid or getrandom call per file); a forked child makes its own.
_tmp_names = []


def _new_tmp_names():
    import itertools
    _tmp_names[:] = [f"{_HOST}.{os.getpid()}.{os.urandom(4).hex()}.", itertools.count()]


os.register_at_fork(after_in_child=_tmp_names.clear)


class NotAJobFile(Exception):
    """The path cannot be a job (symlink, FIFO, directory, too big, unreadable). `gone`
    is True when the file vanished (another process moved it: a lost race, not a problem)."""

    def __init__(self, reason, gone=False):
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


class LostClaim(OSError):
    """We no longer hold a claim: its lock could not be re-asserted (a filesystem client
    restart, a dead mount) or processing/<id> is no longer the file we locked."""


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
            _close_quietly(fd)
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

    def is_paused(self):
        return os.access(self._prefix + PAUSE_FILE, os.F_OK, follow_symlinks=False)

    def set_paused(self, paused):
        """The pause flag is a plain file (spool/PAUSED) so `ls` shows it and any tool can
        pause the queue with `touch`."""
        path = os.path.join(self.root, PAUSE_FILE)
        if paused:
            self.ensure_layout()
            os.close(fsops.open_(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
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
        target = self._cancel_target(job_id)
        return target is not None and target == attempt_mark(claimed_data)

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

    def others(self, job_id):
        """The states other than processing/ holding <id>.json, looked at once each: what a
        worker asks about a job it has just claimed into processing/ (a duplicate id). A copy
        moving while we look can only be one going through processing/, which our claim
        holds, so one look is enough here (unlike find)."""
        name = job_name(job_id)
        # access() answers without raising (lexists() raises and catches per absent state)
        if self._dir_fds is not None:
            return [s for s in _OTHER_STATES if os.access(name, os.F_OK, dir_fd=self._dir_fd(s),
                                                          follow_symlinks=False)]
        return [s for s in _OTHER_STATES
                if os.access(f"{self._prefix}{s}/{name}", os.F_OK, follow_symlinks=False)]

    def foreign(self, state, older_than, now):
        """[(name, age_s)] of files in a job directory that can never be jobs (hidden, or not
        ending in .json) and have not changed for `older_than` seconds: a tool staged them
        and never renamed them, or someone dropped them under the wrong name."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if is_candidate(name):
                continue
            st = self.lstat(state, name)
            if st is not None and now - st.st_mtime >= older_than:
                found.append((name, now - st.st_mtime))
        return sorted(found)

    def ids_with_prefix(self, prefix):
        """Sorted ids of the jobs in any state whose id starts with `prefix`."""
        found = set()
        for state in JOB_STATES:
            found.update(job_id for job_id in (n[:-len(JOB_SUFFIX)] for n in self.names(state))
                         if job_id.startswith(prefix))
        return sorted(found)

    # ---- reading ------------------------------------------------------------------------
    def _open_checked(self, path, flags):
        """Open without following symlinks or blocking on FIFOs; refuse non-regular files
        and oversize ones before any read. Returns (fd, stat)."""
        try:
            fd = fsops.open_(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise NotAJobFile("vanished", gone=True) from None
            if exc.errno in DOWN_ERRNOS:
                raise
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
        except OSError as exc:
            _close_quietly(fd)
            if exc.errno in GONE_ERRNOS:
                raise NotAJobFile("vanished", gone=True) from None
            raise
        except BaseException:
            _close_quietly(fd)
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

    def _read_fd(self, fd, size=0):
        """The file's bytes (at most max_job_bytes, else NotAJobFile). `size` is what a
        stat said: the first read asks for a little more than that, not for max_job_bytes
        (a 1 MiB buffer is an mmap and a munmap per job), and only a file that grew past
        it is read on."""
        limit = self.max_job_bytes + 1
        first = min(limit, size + 4096)
        data = os.pread(fd, first, 0)
        if len(data) == first and first < limit:
            data += os.pread(fd, limit - first, first)
        if len(data) > self.max_job_bytes:
            raise NotAJobFile(f"grew past max_job_bytes ({self.max_job_bytes}) while read")
        return data

    def read(self, state, name):
        """(bytes, stat) of <state>/<name>, read safely; NotAJobFile if it can't be a job."""
        fd, st = self._open_checked(f"{self._prefix}{state}/{name}", os.O_RDONLY)
        try:
            return self._read_fd(fd, st.st_size), st
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:     # unlinked by another host after our open
                raise NotAJobFile("vanished", gone=True) from None
            raise
        finally:
            _close_quietly(fd)

    def lstat(self, state, name):
        try:
            return os.lstat(f"{self._prefix}{state}/{name}")
        except FileNotFoundError:
            return None

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
                _unlink_quietly(tmps.pop(job_id))
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
                _unlink_quietly(tmp)

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
            _close_quietly(fd)
            if exc.errno in GONE_ERRNOS:
                return None
            raise
        except BaseException:
            _close_quietly(fd)
            raise
        if taken is None:
            _close_quietly(fd)
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
            _unlink_quietly(tmp)
            raise DuplicateId(f"{dest}/ already holds a job with id {claim.job_id!r}") from None
        except BaseException:
            _unlink_quietly(tmp)
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
                _close_quietly(fd)
                return None
            try:
                data = self._read_fd(fd, st.st_size)
            except NotAJobFile:
                data = b""
        except OSError as exc:
            _close_quietly(fd)
            if isinstance(exc, BlockingIOError) or exc.errno in GONE_ERRNOS:
                return None      # owned, or recovered and unlinked by another host
            raise
        except BaseException:
            _close_quietly(fd)
            raise
        return Claim(job_id, fd, data, st, "processing")

    # ---- what every host must see: worker heartbeats and stop requests ------------------
    def workers_dir(self):
        return os.path.join(self.root, WORKERS_DIR)

    def write_worker(self, record):
        """Publish a worker's heartbeat as workers/<worker_id>.json (tmp + fsync + rename),
        so `status` on any host sees every host's workers."""
        os.makedirs(self.workers_dir(), mode=0o755, exist_ok=True)
        tmp = self._write_tmp(json.dumps(record).encode())
        fsops.replace(tmp, os.path.join(self.workers_dir(), record["worker_id"] + ".json"))

    def remove_worker(self, worker_id):
        _unlink_quietly(os.path.join(self.workers_dir(), worker_id + ".json"))

    def worker_records(self):
        """Every heartbeat record in workers/ (unreadable or half-gone ones skipped)."""
        records = []
        try:
            names = os.listdir(self.workers_dir())
        except FileNotFoundError:
            return records
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                record = self._read_record(os.path.join(self.workers_dir(), name))
                if isinstance(record, dict) and isinstance(record.get("worker_id"), str):
                    records.append(record)
        return records

    @staticmethod
    def _read_record(path):
        """A small JSON file that its writer replaces by rename every few seconds: a read
        that meets the old, just-unlinked inode (ENOENT on a network filesystem) is tried
        again on the new one. None if it is gone or unreadable."""
        for _ in range(3):
            try:
                with open(path, "rb") as f:
                    return json.loads(f.read(65536))
            except OSError as exc:
                if exc.errno not in GONE_ERRNOS or not os.path.lexists(path):
                    return None
            except ValueError:
                return None
        return None

    def stop_request_path(self, host):
        return os.path.join(self.workers_dir(), host + STOP_SUFFIX)

    def request_host_stop(self, host, timeout):
        """Ask every supervisor of `host` to stop (they poll this file): workers/<host>.stop
        holding the shutdown timeout, rewritten each time so a change is seen."""
        os.makedirs(self.workers_dir(), mode=0o755, exist_ok=True)
        tmp = self._write_tmp(json.dumps({"timeout": timeout,
                                          "nonce": os.urandom(6).hex()}).encode())
        fsops.replace(tmp, self.stop_request_path(host))

    def stop_request(self, host):
        """(identity, timeout) of the host's stop request file, or None. The identity
        (inode, mtime) changes with every new request."""
        path = self.stop_request_path(host)
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                timeout = float(json.loads(f.read(4096)).get("timeout", 30))
        except (OSError, ValueError, AttributeError, TypeError):
            return None
        return (st.st_ino, st.st_mtime_ns), timeout

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
def filesystem_type(path):
    """The filesystem type of the mount holding `path` (longest mount point prefix)."""
    try:
        real = os.path.realpath(path)
        best, kind = "", None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                fstype = fields[fields.index("-") + 1]
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fstype
        return kind
    except (OSError, ValueError, IndexError):
        return None


def is_local_filesystem(fstype):
    """True for the filesystems only this machine's kernel writes (a flock on them cannot be
    lost while its holder lives); unknown types count as not local."""
    return fstype in LOCAL_FILESYSTEMS


def is_shared_filesystem(fstype):
    """True for network and cluster filesystems other machines may mount too (any FUSE
    filesystem counts: JuiceFS, GlusterFS, CephFS and s3fs clients are FUSE)."""
    if not fstype:
        return False
    return fstype in SHARED_FILESYSTEMS or fstype.startswith("fuse.")


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
