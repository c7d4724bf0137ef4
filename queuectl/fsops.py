"""The spool's system calls, in one place, so that tests can break them.

Every file operation that moves or persists a job (open, write, fsync, link, rename, unlink,
flock) goes through here. A test-only fault hook, set from the QUEUECTL_FAULT environment
variable or `set_hook`, sees each call first and may end the process (a crash at step k) or
raise an OSError (ENOSPC, EIO) there. Without a hook the cost is one `is None` check.

QUEUECTL_FAULT syntax: `exit@K` (os._exit(137) before the K-th call), `ERRNO@OP` (raise
errno ERRNO on every OP call, e.g. ENOSPC@write), `ERRNO@OP#N` (only on the N-th OP call),
and QUEUECTL_FAULT_LOG=PATH appends "op path" per call (the power-loss model's recording).

A move that cannot use renameat2(RENAME_NOREPLACE) (an old kernel, or a filesystem that
answers EINVAL) is done as link + unlink: two operations, each seen by the hook on its own,
so a crash between them is a crash point of its own. QUEUECTL_NO_RENAMEAT2=1 (or
`use_renameat2(False)`) forces that fallback, so tests can exercise it on any kernel."""

import errno
import fcntl
import os

_hook = None
_hook_info = False
_libc = None
_use_renameat2 = not os.environ.get("QUEUECTL_NO_RENAMEAT2")
RENAME_NOREPLACE = 1
AT_FDCWD = -100


def set_hook(hook, info=False):
    """hook(op, path) is called before each operation; None removes it. With info=True it
    is called as hook(op, path, info), info a dict of the call's other arguments (flags of
    an open, data of a write, src of a link or rename): what a recorder of the operation
    sequence (the power-loss model) needs to replay it."""
    global _hook, _hook_info
    _hook, _hook_info = hook, info


def use_renameat2(enabled):
    """False forces moves to link + unlink (as on a kernel without renameat2)."""
    global _use_renameat2
    _use_renameat2 = bool(enabled)


def _hook_from_env(spec, log_path):
    counts = {"all": 0}
    rules = [rule.strip() for rule in spec.split(",") if rule.strip()]
    log = open(log_path, "a", buffering=1) if log_path else None

    def hook(op, path):
        counts["all"] += 1
        counts[op] = counts.get(op, 0) + 1
        if log:
            log.write(f"{op} {path}\n")
        for rule in rules:
            what, _, where = rule.partition("@")
            target, _, nth = where.partition("#")
            if what == "exit" and counts["all"] == int(target):
                os._exit(137)
            if what != "exit" and op == target and (not nth or counts[op] == int(nth)):
                code = getattr(errno, what)
                raise OSError(code, os.strerror(code), path)
    return hook


if os.environ.get("QUEUECTL_FAULT") or os.environ.get("QUEUECTL_FAULT_LOG"):
    _hook = _hook_from_env(os.environ.get("QUEUECTL_FAULT", ""),
                           os.environ.get("QUEUECTL_FAULT_LOG"))


def _check(op, path, **info):
    if _hook is not None:
        if _hook_info:
            _hook(op, str(path), info)
        else:
            _hook(op, str(path))


def _failed(op, path, exc):
    """Tell a recording hook that the operation it just saw did not happen (its errno), so
    a replay of the recording can tell a failed call from a skipped one."""
    if _hook is not None and _hook_info:
        _hook("failed", str(path), {"of": op, "errno": exc.errno})


def open_(path, flags, mode=0o600):
    _check("open", path, flags=flags)
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as exc:
        _failed("open", path, exc)
        raise


def write_all(fd, data, path=""):
    _check("write", path, data=data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync(fd, path=""):
    """fsync a file. An error here is never retried on the same fd: the kernel may have
    dropped the dirty pages, so a retry could report success for data that is gone."""
    _check("fsync", path)
    os.fsync(fd)


def fsync_dir(path, fd=None):
    """fsync a directory: through `fd`, an open fd of it the caller keeps, or opened here."""
    _check("fsyncdir", path)
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Filesystems whose syncfs(2) makes every file and directory on them durable and, on
# Linux >= 5.8, reports a writeback error: local disks only (an NFS or FUSE client's syncfs
# need not commit to its server).
SYNCFS_MAGICS = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs",
                 0x01021994: "tmpfs", 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs"}
_syncfs_ok = {}


def can_syncfs(path):
    """True where syncfs(path's filesystem) may stand in for fsyncing each file on it."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return False
    if dev not in _syncfs_ok:
        _syncfs_ok[dev] = _syncfs_usable(path)
    return _syncfs_ok[dev]


def _syncfs_usable(path):
    import ctypes
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
        if (major, minor) < (5, 8):      # before 5.8 syncfs hid writeback errors
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)     # struct statfs; f_type comes first
        if not hasattr(libc, "syncfs") or libc.statfs(os.fsencode(path), buf) != 0:
            return False
    except (OSError, ValueError, AttributeError):
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type in SYNCFS_MAGICS


def syncfs(path):
    """Make everything written to path's filesystem durable (one call for a whole batch of
    files instead of an fsync each). Raises OSError as fsync would."""
    _check("syncfs", path)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def link(src, dst):
    """Hard link that fails with FileExistsError instead of replacing dst."""
    _check("link", dst, src=str(src))
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        _failed("link", dst, exc)
        raise


def _renameat2():
    global _libc
    if _libc is None:
        import ctypes       # only moves need it; enqueue links and stays fast
        _libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(_libc, "renameat2", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
        _libc.queuectl_renameat2 = fn
    return _libc.queuectl_renameat2


def _get_errno():
    import ctypes
    return ctypes.get_errno()


def rename_noreplace(src, dst):
    """Atomic move that never overwrites: FileExistsError if dst exists. Uses renameat2
    where the kernel and filesystem have it, else link + unlink (same guarantee, two steps;
    see _link_unlink). A dst that already is src's inode is a move cut short between its
    link and its unlink (by a crash, or a power cut that kept both names): it is finished
    by unlinking src, not reported as a duplicate (which would copy the file again)."""
    global _use_renameat2
    fn = _renameat2() if _use_renameat2 else None
    if fn is not None:
        _check("rename", dst, src=str(src))
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        code = _get_errno()
        exc = OSError(code, os.strerror(code), str(src), None, str(dst))
        _failed("rename", dst, exc)
        if code == errno.EEXIST and _same_inode(src, dst):
            unlink(src)
            return
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise exc
        _use_renameat2 = False          # this kernel or filesystem has none: stop asking
    _link_unlink(src, dst)


def _link_unlink(src, dst):
    """The two-step move: link, fsync of dst's directory, unlink. The fsync orders the
    steps on disk: without it a power cut could keep the unlink and lose the link (two
    directory updates with nothing tying them together), and the file would be gone. The
    callers hold the file's flock or own a unique tmp name, so nobody else is halfway
    through the same move."""
    try:
        link(src, dst)
    except FileExistsError:
        if not _same_inode(src, dst):
            raise
    fsync_dir(os.path.dirname(dst))
    unlink(src)


def _same_inode(a, b):
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def replace(src, dst):
    """Atomic rename that does replace dst: only for side files (a rejection's reason),
    never for jobs."""
    _check("replace", dst, src=str(src))
    try:
        os.replace(src, dst)
    except OSError as exc:
        _failed("replace", dst, exc)
        raise


def unlink(path):
    _check("unlink", path)
    try:
        os.unlink(path)
    except OSError as exc:
        _failed("unlink", path, exc)
        raise


def flock(fd, operation, path=""):
    _check("flock", path)
    fcntl.flock(fd, operation)
