"""Which job a worker takes next. Keeps, per worker, what it knows of pending/ and failed/:
every candidate's priority and due time, in two heaps (ready and scheduled), so taking the
next job costs O(log n) even with 100,000 files waiting.

The spool stays the truth: an entry is only a hint. A claim re-reads the file under its
lock, so a stale entry costs a lost race or an unclaim, never a wrong run. Entries are
versioned; popping skips versions that were replaced or forgotten."""

import heapq
import itertools


class Candidate:
    __slots__ = ("state", "job_id", "priority", "due", "version")

    def __init__(self, state, job_id, priority, due, version):
        self.state, self.job_id, self.priority, self.due = state, job_id, priority, due
        self.version = version


class Picker:
    def __init__(self):
        self._known = {}        # (state, id) -> Candidate
        self._ready = []        # (-priority, due, id, version, key)
        self._scheduled = []    # (due, version, key)
        self._versions = itertools.count()

    def __len__(self):
        return len(self._known)

    def __contains__(self, key):
        return key in self._known

    def keys(self, state):
        return [k for k in self._known if k[0] == state]

    def add(self, state, job_id, priority, due):
        version = next(self._versions)
        key = (state, job_id)
        candidate = Candidate(state, job_id, priority, due, version)
        self._known[key] = candidate
        heapq.heappush(self._scheduled, (due, version, key))

    def forget(self, state, job_id):
        self._known.pop((state, job_id), None)

    def _current(self, key, version):
        candidate = self._known.get(key)
        return candidate if candidate is not None and candidate.version == version else None

    def _promote(self, now):
        while self._scheduled and self._scheduled[0][0] <= now:
            due, version, key = heapq.heappop(self._scheduled)
            candidate = self._current(key, version)
            if candidate is not None:
                heapq.heappush(self._ready, (-candidate.priority, due, candidate.job_id,
                                             version, key))

    def pop_ready(self, now):
        """The best ready candidate (highest priority, then earliest due, then id), removed
        from the picker; None if nothing is due."""
        self._promote(now)
        while self._ready:
            _, _, _, version, key = heapq.heappop(self._ready)
            candidate = self._current(key, version)
            if candidate is not None:
                del self._known[key]
                return candidate
        return None

    def next_due(self):
        """The earliest due time among scheduled candidates (for the wake-up timer)."""
        while self._scheduled and self._current(self._scheduled[0][2],
                                                self._scheduled[0][1]) is None:
            heapq.heappop(self._scheduled)
        return self._scheduled[0][0] if self._scheduled else None

    def compact(self):
        """Drop dead heap entries when they outnumber live ones (bounded memory)."""
        if len(self._ready) + len(self._scheduled) > 2 * len(self._known) + 1000:
            live = set((k, c.version) for k, c in self._known.items())
            self._ready = [e for e in self._ready if (e[4], e[3]) in live]
            self._scheduled = [e for e in self._scheduled if (e[2], e[1]) in live]
            heapq.heapify(self._ready)
            heapq.heapify(self._scheduled)
