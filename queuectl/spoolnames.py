"""What every part of the spool shares: the state directories' names, the names of the
files in them, and the error for a file that cannot be a job. Pure names and small helpers:
no directory is read or written here except by the quiet unlink and close, which ignore
what a lost race leaves (a file already gone, an fd already closed)."""

import errno
import os

from . import fsops
from .job import JOB_SUFFIX

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")
PRIVATE_DIRS = ("rejected", "output")    # may hold secrets from job output or bad drops
ALL_DIRS = ("tmp", *JOB_STATES, *PRIVATE_DIRS)
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


class NotAJobFile(Exception):
    """The path cannot be a job (symlink, FIFO, directory, too big, unreadable). `gone`
    is True when the file vanished (another process moved it: a lost race, not a problem)."""

    def __init__(self, reason, gone=False):
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


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


def unlink_quietly(path):
    try:
        fsops.unlink(path)
    except FileNotFoundError:
        pass


def close_quietly(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
