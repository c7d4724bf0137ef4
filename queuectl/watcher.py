"""Inotify wake-ups through watchdog: the only module that imports it.

Events are only a prompt to look. The worker stays correct with no events at all (it rescans
at start, on its poll timer and after any watcher error); this module only makes pickup fast.

Watchdog's low-level inotify class (`InotifyFD`) is used without its threads: the worker
selects on the inotify fd in its own loop and reads the events when it looks (`Watch.read`).
No observer, emitter or queue thread hands each event on (that hand-off cost more CPU per
job than the rest of watching). A kernel queue overflow (IN_Q_OVERFLOW) reports
`overflowed`, and the worker rescans. A watched directory that goes away (IN_IGNORED) ends
the watch: `alive()` turns False and the worker polls from then on. If inotify cannot start
(no instances left, an unsupported filesystem, watchdog missing or too old) `start` returns
None after logging once, and the worker polls."""

import logging
import os
import select

log = logging.getLogger("queuectl")

# The events that can make a file in pending/ or failed/ worth a look: a new name (create,
# link, rename in) and a file written in place (modify, close after writing). Moves out and
# deletions are our own claims and finishes: not watched, so each job costs fewer events.
FILE_EVENTS = ("IN_CREATE", "IN_MOVED_TO", "IN_CLOSE_WRITE", "IN_MODIFY", "IN_ONLYDIR")
# The spool's root holds the pause flag: resuming deletes (or moves away) spool/PAUSED.
ROOT_EVENTS = FILE_EVENTS + ("IN_DELETE", "IN_MOVED_FROM")
MAX_NAMES = 100000        # names remembered between drains; past it, a rescan instead


class Wakeup:
    """A self-pipe (signals wake the loop through it: signal.set_wakeup_fd) plus the file
    names inotify events mentioned since the last drain."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._names = set()
        self.overflowed = False

    def fileno(self):
        return self.read_fd

    def add(self, where):
        """where: (directory name, file name) an event mentioned."""
        if len(self._names) > MAX_NAMES:
            self.overflowed = True
        else:
            self._names.add(where)

    def notify(self, where=None):
        """Remember `where` (if given) and wake the loop."""
        if where is not None:
            self.add(where)
        try:
            os.write(self.write_fd, b"x")
        except BlockingIOError:
            pass    # the pipe is full: a wake-up is already pending

    def clear(self):
        """Empty the pipe but keep the names (used while a job runs)."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def pending(self):
        """Names or an overflow kept since the last drain (e.g. read while a job ran)."""
        return bool(self._names) or self.overflowed

    def drain(self, ready=True):
        """((dir, name) pairs, overflowed) since the last drain; ready=False: the caller saw
        the pipe empty just now, so it is not read."""
        if ready:
            self.clear()
        names, self._names = self._names, set()
        overflowed, self.overflowed = self.overflowed, False
        return names, overflowed

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Watch:
    """Watchdog's InotifyFD on a few directories, read from the caller's thread."""

    def __init__(self, inotify, dirs_by_wd, constants):
        self.inotify = inotify
        self.fd = inotify._inotify_fd
        self.dirs_by_wd = dirs_by_wd
        self.overflow_mask = constants.IN_Q_OVERFLOW
        self.ignored_mask = constants.IN_IGNORED
        self.isdir_mask = constants.IN_ISDIR
        self._alive = True

    def fileno(self):
        return self.fd

    def alive(self):
        return self._alive

    def read(self, wakeup, ready=False):
        """Move the events waiting on the inotify fd (if any) into `wakeup`; never blocks.
        Returns True if there were any. ready=True: the caller's select saw the fd readable."""
        if not self._alive or not (ready or select.select([self.fd], [], [], 0)[0]):
            return False
        try:
            events = self.inotify.read_events()
        except OSError as exc:
            log.warning("inotify read failed (%s): polling from now on", exc)
            self._alive = False
            wakeup.overflowed = True
            return True
        for event in events:
            mask = event.mask
            if mask & self.overflow_mask:
                wakeup.overflowed = True     # events were lost: rescan
            elif mask & self.ignored_mask:
                self._alive = False          # a watched directory went away
                wakeup.overflowed = True
            elif not mask & self.isdir_mask:
                directory = self.dirs_by_wd.get(event.wd)
                if directory is not None:
                    wakeup.add((directory, os.fsdecode(event.name)))
        return True

    def stop(self):
        self._alive = False
        inotify = self.inotify
        try:
            reading = inotify._is_reading   # True until a first read: close() then only
            inotify.close()                 # signals a reader thread, which we do not have
            if reading:
                inotify._close_resources()
        except Exception:      # a failed close must not stop the worker's shutdown
            pass


class _IntoOurLog(logging.Handler):
    """watchdog's own log lines, into ours at DEBUG. Left to Python's last-resort handler
    they reach the terminal (as "InotifyEmitter.queue_events() called when the thread is
    inactive" did on Ctrl-C while workers ran watchdog's observer threads)."""

    def emit(self, record):
        log.debug("watchdog: %s", record.getMessage())


def quiet_watchdog():
    logger = logging.getLogger("watchdog")
    if not any(isinstance(h, _IntoOurLog) for h in logger.handlers):
        logger.addHandler(_IntoOurLog())
        logger.propagate = False


def start(directories, wakeup=None):
    """Watch each directory (non-recursive; the last one with ROOT_EVENTS, the others with
    FILE_EVENTS: callers pass the spool's root last). Returns a Watch, or None if inotify is
    unavailable."""
    quiet_watchdog()
    try:
        from watchdog.observers.inotify_c import InotifyConstants, InotifyFD
    except ImportError as exc:
        log.warning("inotify unavailable (%s): polling instead", exc)
        return None
    inotify = None
    try:
        inotify = InotifyFD()     # its own instance, never started: no thread
        os.set_inheritable(inotify._inotify_fd, False)   # jobs must not inherit it
        dirs_by_wd = {}
        for n, directory in enumerate(directories):
            events = ROOT_EVENTS if n == len(directories) - 1 and n else FILE_EVENTS
            mask = 0
            for name in events:
                mask |= getattr(InotifyConstants, name)
            wd = inotify.add_callback(os.fsencode(directory), mask, _NO_CALLBACK, n)
            dirs_by_wd[wd] = os.path.basename(os.path.normpath(directory))
    except (OSError, AttributeError) as exc:
        log.warning("inotify unavailable (%s): polling every worker_poll_interval instead",
                    exc)
        if inotify is not None:
            Watch(inotify, {}, InotifyConstants).stop()
        return None
    return Watch(inotify, dirs_by_wd, InotifyConstants)


class _NoCallback:
    """InotifyFD keeps a callback per watch; we read events ourselves, so none is called."""

    def on_event(self, event):
        pass

    def on_watch_deleted(self, wd):
        pass

    def on_queue_overflow(self):
        pass


_NO_CALLBACK = _NoCallback()
