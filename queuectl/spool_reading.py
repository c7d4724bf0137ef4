"""Reading a file of the spool safely: opened without following symlinks or blocking on
FIFOs, fstat-ed before a byte is read, and refused (NotAJobFile, with the reason a user can
act on) when it is not a regular file, is too big, or belongs to a user who may not submit
jobs: only we, root and the spool's owner may (anyone else's file could make us run their
command as us). Part of the Spool class (a mixin); claims open the same way, read-write.
A file that vanished under us (GONE_ERRNOS) is NotAJobFile(gone=True), a lost race; a dead
mount (DOWN_ERRNOS) propagates as the OSError it is."""

import errno
import os
import stat

from . import fsops
from .spoolnames import DOWN_ERRNOS, GONE_ERRNOS, NotAJobFile, close_quietly


class SafeReads:
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
            close_quietly(fd)
            if exc.errno in GONE_ERRNOS:
                raise NotAJobFile("vanished", gone=True) from None
            raise
        except BaseException:
            close_quietly(fd)
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
            close_quietly(fd)

    def lstat(self, state, name):
        try:
            return os.lstat(f"{self._prefix}{state}/{name}")
        except FileNotFoundError:
            return None


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
