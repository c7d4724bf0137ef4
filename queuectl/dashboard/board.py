"""What the dashboard shows, read through the library calls the CLI uses, and the actions
it takes through the CLI's calls too. No web code here.

Cheap for the server however many pages are open: every read is cached for one tick (a
second), so all pages polling the snapshot share one ingest and one metrics query per tick.
One lock serialises the reads (the web server calls in from several threads and they share
one sqlite connection). Actions use a second Home (their own connection) under their own
lock, so a cancel waiting for a running job to die never holds up the pages."""

import threading
import time

from .. import control, metrics, output, queries
from ..errors import JobNotFound, QueueError
from ..home import Home
from ..ingest import ingest

TICK_SECONDS = 1.0
CHART_SECONDS = 10.0
MAX_CACHED = 256
RANGES = {"hour": (3600, 60), "day": (86400, 1800)}     # span and bucket, seconds
OUTPUT_LIMIT = 65536


class Board:
    def __init__(self, home, read_only=False, tick=TICK_SECONDS):
        self.home = home
        self.read_only = read_only
        self.tick = tick
        self.lock = threading.RLock()
        self._cache = {}
        self._backlog_minute = None
        self.actor = Home(home.home, home.spool_dir, home.data_dir)
        self.act_lock = threading.Lock()

    # ---- the tick cache -------------------------------------------------------------------
    def _cached(self, key, compute, ttl=None):
        with self.lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < (ttl or self.tick):
                return hit[1]
            value = compute()
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), value)
            return value

    def refresh(self):
        """Ingest what changed in the spool, at most once per tick."""
        self._cached(("ingest",), lambda: ingest(self.home))

    def forget(self):
        with self.lock:
            self._cache.clear()

    # ---- reads ----------------------------------------------------------------------------
    def snapshot(self):
        """Everything the overview shows: `queuectl metrics --json` plus the qshape ages."""
        def compute():
            report = metrics.report(self.home, metrics.worker_rows(self.home))
            self._cache[("ingest",)] = (time.monotonic(), None)    # report() ingested
            report["ages"] = metrics.age_buckets(self.home)
            report["read_only"] = self.read_only
            minute = int(self.home.clock() // 60)
            if minute != self._backlog_minute:     # one sample a minute, as workers offer
                self._backlog_minute = minute
                self.home.index_safely("backlog sample", metrics.record_backlog, self.home,
                                       self.home.clock())
            return report
        return self._cached(("snapshot",), compute)

    def page(self, state, search, after, limit=50):
        def compute():
            self.refresh()
            return queries.page_jobs(self.home, state, search, after, limit)
        return self._cached(("page", state, search, after, limit), compute)

    def job(self, job_id):
        """queries.show's dict for a job, None when there is no such job."""
        def compute():
            self.refresh()
            try:
                return queries.describe(self.home, job_id)
            except JobNotFound:
                return None
        return self._cached(("job", job_id), compute)

    def output(self, job_id, offset=None):
        """(text, start, end) of the job's output log from offset (or its last 64 KiB)."""
        data, start, end = output.read_tail(self.home, job_id, offset, OUTPUT_LIMIT)
        return data.decode("utf-8", "replace"), start, end

    def attempts(self, job_id):
        """The attempts the job's output log records (output.attempts), once per tick."""
        return self._cached(("attempts", job_id), lambda: output.attempts(self.home, job_id))

    def history(self, span):
        seconds, step = RANGES[span]
        return self._cached(("history", span), lambda: metrics.history(
            self.home, self.home.clock(), seconds, step), ttl=CHART_SECONDS)

    # ---- actions (the CLI's calls) ----------------------------------------------------------
    def act(self, action, job_id=None):
        """Run an operator action through the CLI's call; returns (ok, message)."""
        home = self.actor
        calls = {"retry": lambda: control.retry_now(home, [job_id]),
                 "cancel": lambda: control.cancel(home, [job_id], running=True),
                 "dlq-retry": lambda: control.dlq_retry(home, [job_id])}
        with self.act_lock:
            try:
                if action in ("pause", "resume"):
                    home.spool.set_paused(action == "pause")
                    return True, "paused: workers claim nothing until resumed" \
                        if action == "pause" else "resumed"
                if action == "dlq-retry-all":
                    outcomes = control.dlq_retry(home, None)
                    moved = sum(o.ok for o in outcomes)
                    return moved == len(outcomes), \
                        f"{moved} of {len(outcomes)} dead jobs moved to pending"
                outcome = calls[action]()[0]
                return outcome.ok, f"{job_id}: {outcome.message}"
            except QueueError as exc:
                return False, str(exc)
            finally:
                self.forget()
