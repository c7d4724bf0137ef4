"""A worker's spool outages: an error is the spool being unreachable (a dead network
mount: ENOTCONN, EIO) only if the spool cannot even be looked at; then the worker logs once,
waits with a doubling delay (woken early by a stop), logs once when it is back, and gives
up after SPOOL_DOWN_EXIT_SECONDS (the supervisor restarts it later). Any other error of one
loop turn is logged and the loop carries on: the spool is unchanged or recoverable. Part of
the Worker class (a mixin over its wake-up pipe and label)."""

import logging
import os
import select
import time

from .spool import DOWN_ERRNOS

log = logging.getLogger("queuectl")
SPOOL_DOWN_EXIT_SECONDS = 60  # an unreachable spool for this long ends the worker
SPOOL_DOWN_MAX_DELAY = 10    # the longest wait between two looks at an unreachable spool


class SpoolOutage:
    def _loop_error(self):
        # Never die over one bad step: the spool is unchanged or recoverable (a claim we
        # could not finish stays in processing/ for recovery).
        log.exception("%s: error in the work loop; carrying on", self.label)
        self.next_scan = 0.0
        time.sleep(0.5)

    def _unreachable(self, exc):
        """Is this error the spool being unreachable (a dead mount), rather than one failed
        operation (a local disk's EIO on one write, which is handled per job)? Only if the
        spool cannot even be looked at: its pending/ fails to stat with ENOTCONN/EIO too."""
        if getattr(exc, "errno", None) not in DOWN_ERRNOS:
            return False
        try:
            os.stat(self.home.spool.dir("pending"))
        except OSError as probe:
            return probe.errno in DOWN_ERRNOS
        return False

    def _spool_down(self, exc):
        """The spool is unreachable (ENOTCONN, EIO: a dead mount). Log once, wait with a
        doubling delay; False once it has been down SPOOL_DOWN_EXIT_SECONDS (give up)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.down_delay = 0.5
            log.error("%s: spool %s unreachable (%s); retrying with backoff, exiting if it "
                      "stays so for %ds", self.label, self.home.spool_dir,
                      exc.strerror or exc, SPOOL_DOWN_EXIT_SECONDS)
        elif now - self.down_since >= SPOOL_DOWN_EXIT_SECONDS:
            log.error("%s: spool unreachable for %ds; exiting", self.label,
                      now - self.down_since)
            return False
        else:
            self.down_delay = min(self.down_delay * 2, SPOOL_DOWN_MAX_DELAY)
        self.next_scan = 0.0
        select.select([self.wakeup], [], [], self.down_delay)
        self.wakeup.clear()
        return True

    def _spool_reachable(self):
        if self.down_since is not None:
            log.warning("%s: spool reachable again after %.1fs", self.label,
                        time.monotonic() - self.down_since)
            self.down_since = None

    def _await_spool(self, action):
        """Run a start-up spool action, backing off while the spool is unreachable."""
        while not self.stopping:
            try:
                action()
            except OSError as exc:
                if not self._unreachable(exc):
                    raise
                if not self._spool_down(exc):
                    return False
                continue
            self._spool_reachable()
            return True
        return False
