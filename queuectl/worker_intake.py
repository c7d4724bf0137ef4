"""How a worker finds its work: it lists pending/ and failed/ (a rescan), hears of new
files through inotify, reads (judges) each candidate once and keeps the jobs in its picker,
ready or due later; files a writer may still be writing are looked at again when they
settle, bad ones are rejected (ingest.settle). Part of the Worker class (a mixin over its
picker and spool), kept apart from running jobs. Invariants: a file is judged at most once
per change (its verdict is kept for its claim, which takes the job without a second parse
when it reads the very same bytes); nothing here moves a job except a rejection; a file
that cannot even be rejected is skipped until it changes, so the loop never spins on it.
The picker is only a hint: every claim re-reads the file under its lock."""

import logging
import select
import time

from . import job as jobmod
from . import lifecycle
from .ingest import Verdict, judge, settle
from .spool import PAUSE_FILE, is_candidate

log = logging.getLogger("queuectl")
TAKE_FROM = ("pending", "failed")
HINT_THRESHOLD = 200         # new files in one scan above which the index supplies hints
# New files found by a scan are read (judged) for at most this long per loop turn before
# the worker claims what it knows: a worker (re)started on a large backlog on a slow
# network filesystem (a few ms per file) starts running jobs at once instead of after
# reading every file, and reads the rest between jobs.
JUDGE_BUDGET_SECONDS = 0.05
JUDGED_KEPT = 4096           # files whose verdict is kept for their claim (_judge_claimed)


class Intake:
    def consider(self, state, name, now):
        """Look at one file in pending/ or failed/ and remember it if it is a job."""
        if (state, name) in self.skipped:
            if self.skipped[(state, name)] == self._signature(state, name):
                return
            del self.skipped[(state, name)]
        verdict = judge(self.home, state, name, now)
        stem = name[:-len(jobmod.JOB_SUFFIX)]
        self.unsettled.pop((state, name), None)
        self.unjudged.pop((state, name), None)
        if verdict.doc is not None:
            if self.aside.check(state, stem, verdict.doc):
                self.picker.forget(state, stem)
                return
            self.picker.add(state, stem, verdict.doc.get("priority", 0),
                            lifecycle._due(verdict.doc, now))
            if len(self.judged) < JUDGED_KEPT:
                self.judged[(state, stem)] = (verdict.data, verdict.st.st_mtime_ns,
                                              verdict.doc)
            return
        self.picker.forget(state, stem)
        self.judged.pop((state, stem), None)
        if not settle(self.home, state, name, verdict, now):
            self.unsettled[(state, name)] = verdict.until

    def _unblock(self, dep, now):
        """A dependency finished (our own move): look at the jobs waiting for it now."""
        for state, job_id in self.aside.finished(dep):
            self.consider(state, job_id + jobmod.JOB_SUFFIX, now)

    def full_scan(self, now):
        """Re-list pending/ and failed/: forget what vanished, consider what is new."""
        for state in TAKE_FROM:
            names = self.home.spool.names(state)
            listed = set(names)         # membership tests below: a backlog has thousands
            present = {name[:-len(jobmod.JOB_SUFFIX)] for name in names}
            for key in [k for k in self.skipped if k[0] == state and k[1] not in listed]:
                del self.skipped[key]
            for key in self.picker.keys(state):
                if key[1] not in present:
                    self.picker.forget(*key)
            for key in [k for k in self.judged if k[0] == state and k[1] not in present]:
                del self.judged[key]
            for key in self.aside.rescan(state, present):
                self.consider(state, key[1] + jobmod.JOB_SUFFIX, now)
            for key in [k for k in self.unjudged if k[0] == state and k[1] not in listed]:
                del self.unjudged[key]
            new = [n for n in names if (state, n[:-len(jobmod.JOB_SUFFIX)]) not in self.picker
                   and (state, n[:-len(jobmod.JOB_SUFFIX)]) not in self.aside
                   and (state, n) not in self.unjudged]
            # Hints carry no queue: a worker of some queues reads the files instead.
            hints = self._index_hints(state) if len(new) > HINT_THRESHOLD and \
                self.aside.queues is None else {}
            # Ids begin with their creation time: the oldest files are read first.
            for name in sorted(new):
                stem = name[:-len(jobmod.JOB_SUFFIX)]
                if stem in hints:
                    self.picker.add(state, stem, *hints[stem])
                else:
                    self.unjudged[(state, name)] = None
        self.picker.compact()

    def judge_listed(self, now, budget=JUDGE_BUDGET_SECONDS):
        """Read files a scan listed, oldest first, for at most `budget` seconds."""
        deadline = time.monotonic() + budget
        while self.unjudged:
            key = next(iter(self.unjudged))
            del self.unjudged[key]
            self.consider(key[0], key[1], now)
            if time.monotonic() >= deadline:
                break

    def _index_hints(self, state):
        """{id: (priority, due)} from the index, so a worker starting on a large backlog
        need not read every file first. Only hints: a claim re-reads and re-checks the file
        under its lock, and anything the index does not know is read as usual."""
        try:
            return self.home.index.take_hints(state)
        except Exception as exc:      # a broken index only costs reading the files
            log.warning("%s: index unavailable for hints (%s)", self.label, exc)
            return {}

    def _events(self, now):
        # One look at both fds (most turns while jobs run back to back find nothing).
        ready = select.select(self._wake_sources(), [], [], 0)[0]
        if not ready and not self.wakeup.pending():
            return
        if self.watch is not None and self.watch in ready:
            self.watch.read(self.wakeup, ready=True)
        names, overflowed = self.wakeup.drain(ready=self.wakeup in ready)
        if overflowed:
            self.next_scan = 0.0
            self.paused = None
        for state, name in names:
            if state in TAKE_FROM and is_candidate(name):
                self.consider(state, name, now)
            elif name == PAUSE_FILE:
                self.paused = None

    def is_paused(self):
        """spool/PAUSED, looked at again only when inotify reported a change of it (or on
        every turn while polling or on a shared spool, whose other hosts' changes inotify
        does not see, and at every rescan)."""
        if self.paused is None or self.watch is None or self.shared:
            self.paused = self.home.spool.is_paused()
        return self.paused

    def _unclaimable(self, state, job_id, exc, now):
        """A file the claim could not open or lock as a job. The claim is the judge: it
        opens read-write, so a file we may read but not write (a 0444 drop-in, root's file
        in a service user's spool) is rejected with the claim's reason, not re-read
        read-only and put back in the picker (which made the claim loop spin). If even the
        rejection fails, the file is left alone until it changes."""
        if exc.gone:
            return
        name = job_id + jobmod.JOB_SUFFIX
        try:
            settle(self.home, state, name, Verdict("reject", reason=exc.reason), now)
        except OSError as err:
            log.error("%s: cannot reject %s/%s (%s): %s; skipped until it changes",
                      self.label, state, name, exc.reason, err)
            self.skipped[(state, name)] = self._signature(state, name)

    def _signature(self, state, name):
        st = self.home.spool.lstat(state, name)
        return st and (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)

    def _judge_claimed(self, held, now):
        """The verdict on a claimed file: the one made before the claim when the claim read
        the very same bytes with the same mtime (no second parse), else judged now."""
        name = held.job_id + jobmod.JOB_SUFFIX
        judged = self.judged.pop((held.origin, held.job_id), None)
        if judged is not None and judged[0] == held.data and judged[1] == held.st.st_mtime_ns:
            return Verdict("take", doc=dict(judged[2]), st=held.st, data=held.data)
        return judge(self.home, held.origin, name, now, data=held.data, st=held.st)
