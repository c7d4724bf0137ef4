"""Where a spool lives: the type of the filesystem holding a path, and what that type
promises. Local filesystems are written only by this machine's kernel, so a flock held on
them cannot be lost while its holder lives; shared ones (network and cluster filesystems,
any FUSE client) may be mounted by other machines too, so locks must be re-checked and
inotify does not see other hosts' changes. Unknown types count as neither. Reads
/proc/self/mountinfo; on any error the type is None (unknown)."""

import os

# Filesystem types whose directories other machines may share (from /proc/self/mountinfo).
SHARED_FILESYSTEMS = ("nfs", "nfs4", "ceph", "glusterfs", "cifs", "smb3", "lustre", "gpfs",
                      "gfs2", "ocfs2", "beegfs", "9p", "afs", "orangefs")
LOCAL_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs",
                     "bcachefs", "jfs", "reiserfs", "overlay")


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
