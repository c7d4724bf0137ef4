"""A queue home: where its spool and data live, plus the spool, index and settings objects
bound to them. Everything above the adapters takes a Home rather than loose paths.

The home is --home, else $QUEUECTL_HOME, else the current directory; spool/ and data/ sit in
it unless --spool/--data (or $QUEUECTL_SPOOL/$QUEUECTL_DATA) place them apart. Nothing is
created until the first write."""

import logging
import os
import time

from .config import Settings
from .index import Index
from .spool import Spool, is_shared_filesystem

log = logging.getLogger("queuectl")
# After an index update times out on another process's lock, skip index updates this long
# rather than queue behind the lock job after job; ingest repairs the rows afterwards.
INDEX_PAUSE_SECONDS = 10


def resolve(home=None, spool=None, data=None, environ=None):
    """(home, spool_dir, data_dir) as absolute paths, by the precedence above."""
    env = os.environ if environ is None else environ
    home = os.path.abspath(home or env.get("QUEUECTL_HOME") or os.getcwd())
    spool = os.path.abspath(spool or env.get("QUEUECTL_SPOOL") or os.path.join(home, "spool"))
    data = os.path.abspath(data or env.get("QUEUECTL_DATA") or os.path.join(home, "data"))
    return home, spool, data


class Home:
    def __init__(self, home=None, spool=None, data=None, clock=time.time):
        self.home, self.spool_dir, self.data_dir = resolve(home, spool, data)
        self.clock = clock
        self.index = Index(os.path.join(self.data_dir, "queue.db"))
        self.spool = Spool(self.spool_dir)
        self._settings = None
        self._index_paused_until = 0.0

    @property
    def settings(self):
        if self._settings is None:
            try:
                stored = self.index.config()
            except Exception as exc:     # an unreadable index must not stop the queue
                log.warning("cannot read config from the index (%s); using defaults", exc)
                stored = {}
            self._settings = Settings(stored)
            self.spool.max_job_bytes = self._settings.max_job_bytes
        return self._settings

    def shared_spool(self):
        """(shared, filesystem type): is the spool on a filesystem other hosts may use?
        The spool_shared setting decides; 'auto' goes by the filesystem type (NFS, CephFS,
        GlusterFS, any FUSE filesystem such as JuiceFS count as shared)."""
        fstype = self.spool.filesystem()
        choice = self.settings.spool_shared
        if choice == "auto":
            return is_shared_filesystem(fstype), fstype
        return choice == "yes", fstype

    def reload_settings(self):
        previous = self._settings
        self._settings = None
        try:
            return self.settings
        except Exception:
            self._settings = previous
            return previous

    def path(self, *parts):
        return os.path.join(self.data_dir, *parts)

    def make_data_dir(self, *parts):
        """Create data/ (0700: it holds every job's command) and a directory inside it."""
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        path = self.path(*parts)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def index_safely(self, what, fn, *args):
        """Run an index update after a spool move. The spool is the truth: a failing index
        must never undo or block a move, so the error is logged and the next ingest or
        reindex repairs the row. While another process holds the index locked, updates are
        skipped for INDEX_PAUSE_SECONDS after one has timed out."""
        if time.monotonic() < self._index_paused_until:
            return None
        try:
            return fn(*args)
        except Exception as exc:     # any sqlite error, a full disk, a locked database
            log.warning("index update failed after %s: %s (the spool is unchanged; "
                        "run 'queuectl reindex' if it persists)", what, exc)
            if self.index.is_busy(exc):
                self._index_paused_until = time.monotonic() + INDEX_PAUSE_SECONDS
                log.warning("the index is locked by another process; skipping index "
                            "updates for %ds", INDEX_PAUSE_SECONDS)
            return None

    def configure_logging(self, name="queuectl", rotate=True):
        """Send this process's log lines to data/logs/queuectl.log, at the configured level,
        with the process name and pid on every line. Never prints. Long-lived processes
        (workers, supervisor) rotate the file; short CLI calls only append (rotation needs
        logging.handlers, which costs enqueue ~5 ms to import)."""
        logger = logging.getLogger("queuectl")
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        try:
            self.make_data_dir("logs")
            path = self.path("logs", "queuectl.log")
            if rotate:
                from logging.handlers import RotatingFileHandler
                handler = RotatingFileHandler(path, maxBytes=10 << 20, backupCount=5, delay=True)
            else:
                handler = logging.FileHandler(path, delay=True)
        except OSError:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {name}[{os.getpid()}] %(message)s"))
        logger.addHandler(handler)
        try:
            logger.setLevel(self.settings.log_level)
        except Exception:     # an unreadable index must not stop logging
            logger.setLevel(logging.INFO)
        return logger

    def close(self):
        self.index.close()
