"""Inotify wake-ups through watchdog: the only module that imports it.

Events are only a prompt to look. Watchdog drops queue overflows silently, so the worker
stays correct with no events at all (it rescans on its poll timer); this module only makes
pickup fast. If inotify cannot start (no instances left, unsupported filesystem) `start`
returns None after logging once, and the worker polls."""

import logging
import os
import threading

log = logging.getLogger("queuectl")

INTERESTING = {"created", "moved", "closed", "modified"}


class Wakeup:
    """A self-pipe plus the names events mentioned since the last drain. Thread-safe: the
    watchdog thread calls `notify`, the worker's main loop selects on `fileno()`."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._names = set()
        self._lock = threading.Lock()
        self.overflowed = False

    def fileno(self):
        return self.read_fd

    def notify(self, where=None):
        """where: (directory name, file name) an event mentioned, or None for a bare wake."""
        with self._lock:
            if where is not None:
                if len(self._names) > 100000:
                    self.overflowed = True
                else:
                    self._names.add(where)
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

    def drain(self):
        """((dir, name) pairs, overflowed) since the last drain."""
        self.clear()
        with self._lock:
            names, self._names = self._names, set()
            overflowed, self.overflowed = self.overflowed, False
        return names, overflowed

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _no_move_pairing_delay():
    """Watchdog holds every IN_MOVED_FROM for 0.5 s (its `delay` class attribute) to pair it
    with an IN_MOVED_TO, and its queue is FIFO: each claim (a move out of pending/) would
    stall the next job's wake-up by half a second. We never use move pairing, so no delay."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
        InotifyMoveEventGrouper.delay = 0.0
    except ImportError:          # watchdog < 5 names it InotifyBuffer
        try:
            from watchdog.observers.inotify_buffer import InotifyBuffer
            InotifyBuffer.delay = 0.0
        except ImportError:
            pass


class Watch:
    def __init__(self, observer):
        self.observer = observer

    def alive(self):
        return self.observer.is_alive()

    def stop(self):
        try:
            self.observer.stop()
            self.observer.join(timeout=2)
        except Exception:      # a dead emitter thread must not stop the worker's shutdown
            pass


class _IntoOurLog(logging.Handler):
    """watchdog's own log lines, into ours at DEBUG. Left to Python's last-resort handler
    they reach the terminal: stopping the observer races its emitter thread, which then
    logs "InotifyEmitter.queue_events() called when the thread is inactive" on Ctrl-C."""

    def emit(self, record):
        log.debug("watchdog: %s", record.getMessage())


def quiet_watchdog():
    logger = logging.getLogger("watchdog")
    if not any(isinstance(h, _IntoOurLog) for h in logger.handlers):
        logger.addHandler(_IntoOurLog())
        logger.propagate = False


def start(directories, wakeup):
    """Watch each directory (non-recursive); returns a Watch, or None if inotify is
    unavailable."""
    quiet_watchdog()
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver
    except ImportError as exc:
        log.warning("inotify unavailable (%s): polling instead", exc)
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type not in INTERESTING or event.is_directory:
                return
            path = getattr(event, "dest_path", "") or event.src_path
            path = os.fsdecode(path)
            wakeup.notify((os.path.basename(os.path.dirname(path)), os.path.basename(path)))

    _no_move_pairing_delay()
    observer = None
    try:
        observer = InotifyObserver()      # watchdog >= 5 creates the inotify fd right here
        for directory in directories:
            observer.schedule(Handler(), directory, recursive=False)
        observer.start()
    except OSError as exc:
        log.warning("inotify unavailable (%s): polling every worker_poll_interval instead",
                    exc)
        try:
            if observer is not None:
                observer.stop()
        except Exception:
            pass
        return None
    return Watch(observer)
