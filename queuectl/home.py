"""A queue home: where its spool and data live, plus the spool, index and settings objects
bound to them. Everything above the adapters takes a Home rather than loose paths.

The home is --home, else $QUEUECTL_HOME, else the current directory; spool/ and data/ sit in
it unless --spool/--data (or $QUEUECTL_SPOOL/$QUEUECTL_DATA) place them apart. Nothing is
created until the first write: commands that only read call `require()`, which raises
NoQueue where there is no spool, and commands that write call `create()`, which makes the
whole layout (so spool/pending/ exists for drop-ins from the start)."""

import os
import time

from .config import Settings
from .errors import NoQueue
from .filesystems import is_shared_filesystem
from .index import Index
from .spool import Spool
from .logs import log

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
        self._last_good = None       # the last settings read from data/config.json
        self._logged_note = None
        self._index_paused_until = 0.0
        self._deferred = None        # index updates waiting for flush_index, when grouping

    @property
    def settings(self):
        """The settings from data/config.json (settings_store). If the file cannot be read,
        the last good settings this process had are kept (defaults if it had none), so a
        broken file never silently turns a deletion policy back on; `note` says so, and
        each new note is logged once."""
        if self._settings is None:
            self._settings = self._load_settings(self._last_good)
            if self._settings.note is None:
                self._last_good = self._settings
            if self._settings.note != self._logged_note and self._settings.note:
                log.warning("settings: %s", self._settings.note)
            self._logged_note = self._settings.note
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

    def _load_settings(self, last_good):
        from .settings_store import ConfigUnreadable, load, shown_path
        try:
            return load(self)
        except ConfigUnreadable as exc:
            kept = last_good.stored if last_good is not None else None
            what = "kept the last good settings" if kept is not None else "defaults"
            return Settings(kept, note=f"{what} ({shown_path(self)} unreadable: {exc})")

    def reload_settings(self):
        self._settings = None
        return self.settings

    def where(self):
        """The directory to name in messages: the home, or the spool when placed apart."""
        inside = os.path.dirname(self.spool_dir) == self.home
        return self.home if inside else self.spool_dir

    def exists(self):
        return self.spool.exists()

    def require(self):
        """Raise NoQueue unless a queue (its spool) exists here; never creates anything."""
        if not self.exists():
            raise NoQueue(f"no queue at {self.where()} (run `queuectl init` or enqueue a "
                          "job to create one)")
        return self

    def create(self):
        """Create the whole layout: every spool directory, data/ with logs/, the index.
        Idempotent. Returns {"home", "spool", "data", "index", "pending"} paths."""
        self.spool.ensure_layout()
        self.make_data_dir("logs")
        self.index.config()          # creates data/queue.db with its schema
        return {"home": self.home, "spool": self.spool_dir, "data": self.data_dir,
                "index": self.index.path, "pending": self.spool.dir("pending")}

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
            # A connection must never outlive its file: after a reindex replaced queue.db,
            # SQLite would open the new -wal/-shm by name beside the old file and corrupt
            # the fresh index.
            self.index.reopen_if_replaced()
            return fn(*args)
        except Exception as exc:     # any sqlite error, a full disk, a locked database
            log.warning("index update failed after %s: %s (the spool is unchanged; "
                        "run 'queuectl reindex' if it persists)", what, exc)
            if self.index.is_busy(exc):
                self._index_paused_until = time.monotonic() + INDEX_PAUSE_SECONDS
                log.warning("the index is locked by another process; skipping index "
                            "updates for %ds", INDEX_PAUSE_SECONDS)
            else:
                self.index.close()   # a broken connection is not reused: reconnect next time
            return None

    def group_index_updates(self):
        """From now on index_update only queues its update; flush_index writes the queue in
        one transaction. A worker does this: one commit for several moves instead of one per
        move. The spool is already right when an update is queued, and a queue lost with its
        process is what a failed index update is too: the next ingest repairs the rows (the
        moves changed their directories' mtimes after any earlier look)."""
        if self._deferred is None:
            self._deferred = []

    def index_update(self, what, fn, *args):
        """An index update that follows a spool move (see index_safely); queued while
        updates are grouped (group_index_updates)."""
        if self._deferred is None:
            return self.index_safely(what, fn, *args)
        self._deferred.append((fn, args))
        return None

    def index_pending(self):
        return bool(self._deferred)

    def flush_index(self):
        """Write the queued index updates in one transaction (best effort, as index_safely:
        if it fails, all of them are dropped and ingest repairs the rows)."""
        queued = self._deferred
        if not queued:
            return
        self._deferred = []
        self.index_safely("index updates", self.index.apply_group, queued)

    def configure_logging(self, name="queuectl", rotate=True):
        """Send this process's log lines to data/logs/queuectl.log, at the configured level,
        with the process name and pid on every line. Never prints. Long-lived processes
        (workers, supervisor) rotate the file; short CLI calls only append (rotation needs
        logging.handlers, which costs enqueue ~5 ms to import)."""
        import logging
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
