"""Unique keys: at most one pending, failed or processing job per `unique_key`, across every
process and host that shares the spool.

A key is a file spool/keys/<sha256 of the key>, created by link() from a file written
beside it (link never replaces: of several enqueuers exactly one wins, also over NFS),
holding the id of the job that owns it and the key itself. The key is taken before the job
is published and freed once the job reaches completed/ or dead/ (lifecycle).

A key whose owner is no longer pending, failed or processing is stale (a crash between the
job's last move and the unlink, or between taking the key and publishing the job): it is
taken over under spool/keys/.lock (flock), re-checking under the lock that it is still the
same stale file. A key younger than STALE_SECONDS whose owner is nowhere is an enqueue in
progress, never stale. Freeing also takes the lock, so it never removes a key that was just
taken over by another job. Key files are not fsynced: a key lost by a power cut is taken
again when its job is claimed, and an empty one (its content lost) counts as stale. fsck
reports stale keys; `queuectl recover` and `fsck --repair` remove them."""

import errno
import fcntl
import hashlib
import os
import time

from . import fsops

KEYS_DIR = "keys"
LOCK_NAME = ".lock"
STALE_SECONDS = 30
LIVE_STATES = ("pending", "failed", "processing")


def keys_dir(spool):
    return os.path.join(spool.root, KEYS_DIR)


def key_path(spool, key):
    return os.path.join(keys_dir(spool), hashlib.sha256(key.encode("utf-8")).hexdigest()[:40])


def _read(path):
    """(owner id, key, stat) of a key file, or (None, None, None) if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None, None
    try:
        st = os.fstat(fd)
        text = os.pread(fd, 8192, 0).decode("utf-8", "replace")
    finally:
        os.close(fd)
    owner, sep, key = text.partition("\n")
    if not sep or not key.endswith("\n"):
        # Torn: the content is written unsynced before the link, so a power cut can leave
        # any prefix of it. Such a key file names nobody: it is stale at once.
        return "", None, st
    return owner.strip(), key.rstrip("\n"), st


def owner(spool, key):
    """The id recorded as holding `key`, or None."""
    return _read(key_path(spool, key))[0]


def live_owner(spool, key):
    """The id of the pending, failed or processing job holding `key` (None: free or stale)."""
    holder, _, st = _read(key_path(spool, key))
    if holder is None or is_stale(spool, holder, st):
        return None
    return holder


def is_stale(spool, owner_id, st, now=None):
    if not owner_id:
        return True     # empty or torn: a power cut lost its unsynced content (see _read)
    where = spool.find(owner_id)
    if any(state in LIVE_STATES for state in where):
        return False
    if where:
        return True                  # completed or dead: its unlink was lost
    now = time.time() if now is None else now
    return now - st.st_mtime > STALE_SECONDS


class _Lock:
    def __init__(self, spool):
        self.path = os.path.join(keys_dir(spool), LOCK_NAME)

    def __enter__(self):
        self.fd = fsops.open_(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _ensure_dir(spool):
    spool.ensure_layout()
    try:
        os.mkdir(keys_dir(spool), 0o755)
    except FileExistsError:
        pass


def acquire(spool, key, job_id):
    """Take `key` for job_id. Returns None when job_id holds it now (taken, or already its
    own), else the id of the live job that holds it. No fsync: a key lost by a power cut is
    taken again when its job is claimed, and a key that outlives its job is stale."""
    path = key_path(spool, key)
    holder, _, st = _read(path)
    if holder == job_id:
        return None                 # the usual case for a claimed job: taken at enqueue
    _ensure_dir(spool)
    tmp = os.path.join(keys_dir(spool), f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
    fd = fsops.open_(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        fsops.write_all(fd, f"{job_id}\n{key}\n".encode("utf-8"), tmp)
    finally:
        os.close(fd)
    try:
        for _ in range(5):
            try:
                fsops.link(tmp, path)
                return None
            except FileExistsError:
                pass
            holder, _, st = _read(path)
            if holder is None:
                continue                          # freed meanwhile: try again
            if holder == job_id:
                return None
            if not is_stale(spool, holder, st):
                return holder
            _take_over_stale(spool, path, st)
        holder = owner(spool, key)
        return holder if holder != job_id else None
    finally:
        try:
            fsops.unlink(tmp)         # through fsops: crash and power-loss tests see it
        except FileNotFoundError:
            pass


def _take_over_stale(spool, path, seen):
    """Remove a stale key file, if under the lock it is still the one we judged stale."""
    with _Lock(spool):
        holder, _, st = _read(path)
        if st is None or st.st_ino != seen.st_ino or not is_stale(spool, holder, st):
            return
        fsops.unlink(path)


def release(spool, key, job_id):
    """Free `key` if job_id holds it (never another job's)."""
    path = key_path(spool, key)
    if not os.path.exists(keys_dir(spool)):
        return
    with _Lock(spool):
        holder, _, _ = _read(path)
        if holder == job_id:
            try:
                fsops.unlink(path)
            except FileNotFoundError:
                pass


def stale_keys(spool, now=None):
    """[(file name, owner, key)] of key files whose owner is no longer live (for fsck)."""
    found = []
    try:
        names = os.listdir(keys_dir(spool))
    except FileNotFoundError:
        return found
    for name in names:
        if name.startswith("."):
            continue
        try:
            holder, key, st = _read(os.path.join(keys_dir(spool), name))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                found.append((name, None, None))
            continue
        if st is not None and is_stale(spool, holder, st, now):
            found.append((name, holder, key))
    return found


def remove_old_tmp(spool, now=None):
    """Delete keys/.tmp-* files a crash left behind (older than STALE_SECONDS)."""
    now = time.time() if now is None else now
    try:
        names = [n for n in os.listdir(keys_dir(spool)) if n.startswith(".tmp-")]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(keys_dir(spool), name)
        try:
            if now - os.lstat(path).st_mtime > STALE_SECONDS:
                fsops.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def remove_stale(spool, name, now=None):
    """Remove one stale key file (re-checked under the lock). True if removed."""
    path = os.path.join(keys_dir(spool), name)
    with _Lock(spool):
        holder, _, st = _read(path)
        if st is None or not is_stale(spool, holder, st, now):
            return False
        fsops.unlink(path)
        return True
