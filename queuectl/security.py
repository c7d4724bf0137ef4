"""Start-up checks that the spool cannot be tampered with by other users."""

import os
import stat

from .errors import UnsafeSpool
from .spool import ALL_DIRS, WORKERS_DIR


def check_spool(home):
    """Refuse to run workers on a spool another user could rewrite: a world-writable
    directory without the sticky bit, a state directory that is a symlink, or a spool owned
    by another user (root included: root running jobs from a spool another user owns
    would run that user's commands as root)."""
    root = home.spool_dir
    me = os.geteuid()
    st = os.lstat(root)
    if st.st_uid != me:
        raise UnsafeSpool(f"the spool {root} is owned by uid {st.st_uid}, not by you "
                          f"(uid {me}); refusing to run its jobs")
    for name in ("", *ALL_DIRS, WORKERS_DIR):
        path = os.path.join(root, name) if name else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeSpool(f"{path} is a symbolic link; state directories must be real "
                              "directories")
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise UnsafeSpool(f"{path} is world-writable without the sticky bit; run "
                              f"chmod o-w {path}")
        if name and st.st_uid != me:
            raise UnsafeSpool(f"{path} is owned by uid {st.st_uid}, not by you")
