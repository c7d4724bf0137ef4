"""The queue's logger ("queuectl"), with `logging` imported on first use.

`logging` costs a short command ~5 ms to import (a third of what `queuectl enqueue` adds to
Python's own start). Modules on the enqueue path (cli, home, lifecycle, index, spool) log
through `log` here, the same logger as logging.getLogger("queuectl"). The CLI may defer
setting up its handlers (`defer_setup`) with the configured level: a call that the level
would drop (isEnabledFor) then imports nothing, and the first real one imports logging,
runs the setup and logs. Pure: no I/O of its own."""

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
LEVELS = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "ERROR": ERROR,
          "CRITICAL": CRITICAL}


class LazyLogger:
    def __init__(self):
        self._logger = None
        self._setup = None
        self._level = None

    def defer_setup(self, setup, level_name):
        """Run setup() before the first message at or above level_name is logged."""
        self._setup = setup
        self._level = LEVELS.get(str(level_name).upper(), INFO)

    @property
    def pending(self):
        return self._setup is not None

    @property
    def materialised(self):
        return self._logger is not None

    def _get(self):
        if self._logger is None:
            import logging
            self._logger = logging.getLogger("queuectl")
        if self._setup is not None:
            setup, self._setup = self._setup, None
            setup()
        return self._logger

    def isEnabledFor(self, level):
        if self._setup is not None:
            return level >= self._level
        return self._get().isEnabledFor(level)

    def _emit(self, level, name, args, kwargs):
        if self._setup is not None and level < self._level:
            return
        getattr(self._get(), name)(*args, **kwargs)

    def debug(self, *args, **kwargs):
        self._emit(DEBUG, "debug", args, kwargs)

    def info(self, *args, **kwargs):
        self._emit(INFO, "info", args, kwargs)

    def warning(self, *args, **kwargs):
        self._emit(WARNING, "warning", args, kwargs)

    def error(self, *args, **kwargs):
        self._emit(ERROR, "error", args, kwargs)

    def exception(self, *args, **kwargs):
        self._emit(ERROR, "exception", args, kwargs)

    def log(self, level, *args, **kwargs):
        self._emit(level, "log", (level, *args), kwargs)

    def __getattr__(self, name):      # anything else: the real logger
        return getattr(self._get(), name)


log = LazyLogger()
