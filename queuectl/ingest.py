"""Ingest: bring the index in line with the spool. `judge` is the one judge of a file (take,
wait, reject or gone), for ingest and for workers (before and under a claim); `settle`
carries a verdict out; `ingest` rescans the directories changed since the last look;
`reindex` rebuilds everything from a full scan.

Why mtimes: a directory whose mtime is unchanged since the last look holds the same names, so
`status` stays fast at 100,000 jobs. Timestamps are coarse, so a directory modified within
RACY_SECONDS before the last look is rescanned anyway (git's racy-index rule).
Races with workers: fixes from a scan are compare-and-set on the row's old state, so a
worker's newer update (always made after its move) is never undone."""

import os
import time
from dataclasses import dataclass

from . import job as jobmod
from . import lifecycle
from .errors import IndexUnusable, InvalidJob
from .index import job_row
from .spool import NotAJobFile, display_name

RACY_SECONDS = 3


@dataclass
class Verdict:
    """What judge() says about a file: `action` is "take" (a job: doc), "wait" (it may
    still be being written: look again at `until`), "reject" (not a job: reason) or "gone"
    (it vanished while we looked: someone else moved it)."""
    action: str
    doc: dict = None          # the completed job, for "take"
    reason: str = None        # why it is not a job, for "reject" and "wait"
    until: float = 0.0        # for "wait": when its settle time is over
    st: os.stat_result = None
    data: bytes = None        # the bytes judged, for "take"

    @property
    def unsettled(self):
        return self.action == "wait"

    @property
    def gone(self):
        return self.action == "gone"


def judge(home, state, name, now, data=None, st=None):
    """The one judge of a file in the spool (<state>/<name>): take, wait, reject or gone
    (Verdict). Reads the file safely (spool.read), or judges `data` and `st` already read
    (a claim's, under its lock), the same way: a file that does not parse as a job waits
    while its mtime is within settle_seconds (a writer may be at work), else is rejected."""
    stem = name[:-len(jobmod.JOB_SUFFIX)]
    try:
        jobmod.check_id(stem, "file name")
    except InvalidJob as exc:
        return Verdict("reject", reason=f"{display_name(name)}: {exc}")
    if data is None:
        try:
            data, st = home.spool.read(state, name)
        except NotAJobFile as exc:
            return Verdict("gone" if exc.gone else "reject", reason=exc.reason)
    try:
        doc = lifecycle.parse_job(home, data, stem, st, now)
    except InvalidJob as exc:
        until = st.st_mtime + home.settings.settle_seconds
        return Verdict("wait" if now < until else "reject", reason=str(exc), st=st,
                       until=until)
    return Verdict("take", doc=doc, st=st, data=data)


def settle(home, state, name, verdict, now):
    """Carry out a verdict other than take: "reject" moves the file to rejected/ (except in
    processing/, which is recovery's). Returns False while the file must be looked at
    again later ("wait"), True once it is settled."""
    if verdict.action == "wait":
        return False
    if verdict.action == "reject" and state != "processing":
        size = verdict.st.st_size if verdict.st else None
        _reject(home, state, name, verdict.reason, size, now)
    return True


def _reject(home, state, name, reason, size, now):
    """Reject, then index the rejection as a rebuild would see it on disk, so that the
    incrementally kept index and `reindex` agree."""
    shown = lifecycle.reject(home, state, name, reason, size, now)
    if shown is None:
        return
    on_disk = [n for n in home.spool.rejected_names() if display_name(n) == shown]
    if on_disk:
        home.index_safely("reject", home.index.upsert_rejected,
                          [_rejected_row(home.spool, on_disk[0])])


def _row(verdict, state, now):
    return job_row(verdict.doc, state, lifecycle._due(verdict.doc, now))


def _duplicate_of(home, job_id, state):
    """Another state holding this id, when that makes the file in `state` a duplicate drop.
    processing/ does not count for pending/: that pair is a requeue's normal crash leftover."""
    for other in home.spool.find(job_id):
        if other != state and not (other == "processing" and state == "pending"):
            return other
    return None


def _sync_state(home, state, now):
    """Diff one directory against the index. Returns False if some file must be looked at
    again later (still being written)."""
    index, spool = home.index, home.spool
    indexed = index.ids_in(state)
    names = spool.names(state)
    stems = set()
    inserts, settled = [], True
    for name in names:
        stem = name[:-len(jobmod.JOB_SUFFIX)]
        stems.add(stem)
        if stem in indexed:
            continue
        verdict = judge(home, state, name, now)
        if verdict.doc is None:
            settled &= settle(home, state, name, verdict, now)
            continue
        dup = _duplicate_of(home, stem, state) if state == "pending" else None
        if dup:
            _reject(home, state, name, f"duplicate id: {stem!r} is already in {dup}/",
                    verdict.st.st_size, now)
            continue
        old = index.get(stem)
        if old is None:
            inserts.append(_row(verdict, state, now))
        elif state not in spool.find(stem) or old["state"] in spool.find(stem):
            continue     # it moved on while we looked, or the old state holds it too
        else:
            index.move_if(stem, old["state"], _row(verdict, state, now))
    if inserts:
        with index.transaction():
            index.insert_new(inserts)
    for stem in indexed - stems:
        _resettle(home, stem, state, now)
    return settled


def _resettle(home, job_id, stale_state, now):
    """An indexed job no longer in stale_state: point its row where the file is now, or drop
    the row if the file is gone from the whole spool."""
    where = home.spool.find(job_id)
    if not where:
        home.index.delete_if(job_id, stale_state)
        return
    verdict = judge(home, where[0], job_id + jobmod.JOB_SUFFIX, now)
    if verdict.doc is not None:
        home.index.move_if(job_id, stale_state, _row(verdict, where[0], now))


def _rejected_row(spool, name):
    """The index row of rejected/<name> from the disk alone: rejected_at is when its reason
    was written (a rename keeps the file's own mtime, the drop time), size the file's."""
    st = spool.lstat("rejected", name)
    return (display_name(name), spool.reject_reason(name) or "rejected (no reason recorded)",
            jobmod.iso(spool.rejected_at(name) or 0), st.st_size if st else None)


def _sync_rejected(home):
    index, spool = home.index, home.spool
    on_disk = {display_name(n): n for n in spool.rejected_names()}
    indexed = index.rejected_names()
    rows = [_rejected_row(spool, name) for shown, name in on_disk.items()
            if shown not in indexed]
    if rows:
        index.upsert_rejected(rows)
    for shown in indexed - set(on_disk):
        index.delete_rejected(shown)
    return True


def ingest(home, now=None):
    """Index whatever changed in the spool since the last look (drop-ins, crashes, manual
    moves), rejecting bad drop-ins. Cheap when nothing changed."""
    if not home.spool.exists():
        return
    now = home.clock() if now is None else now
    looks = home.index.looks()
    look_ns = time.time_ns()
    for state, mtime in home.spool.state_mtimes().items():
        previous = looks.get(state)
        if previous and previous[0] == mtime and previous[1] - mtime > RACY_SECONDS * 1e9:
            continue
        done = _sync_rejected(home) if state == "rejected" else _sync_state(home, state, now)
        if done:
            home.index.set_look(state, mtime, look_ns)


def reindex(home, now=None):
    """Rebuild the job part of the index from a full scan of the spool; returns counts.
    reindex must always be able to rebuild: an index SQLite cannot use for any reason but
    another process's lock (corrupt, a deleted or broken -wal or -shm, "disk I/O error") is
    set aside as queue.db.corrupt-<time>[-wal|-shm] (listed in home.index.moved_aside) and
    rebuilt from scratch (its config kept where readable). IndexUnusable if even a fresh
    index cannot be written (data/ read-only or full)."""
    from filelock import FileLock
    now = home.clock() if now is None else now
    home.spool.ensure_layout()
    index = home.index
    with FileLock(home.path("reindex.lock")):
        try:
            _rebuild(home, now)
        except Exception as exc:
            if not index.is_db_error(exc) or index.is_busy(exc):
                raise
            index.replace_corrupt(exc)
            try:
                _rebuild(home, now)
            except Exception as again:
                if not index.is_db_error(again) or index.is_busy(again):
                    raise
                raise IndexUnusable(f"cannot rebuild the index {index.path}: {again} (is "
                                    f"{home.data_dir} writable and not full?)") from None
    return index.counts()


def _rebuild(home, now):
    with home.index.transaction():
        home.index.clear_jobs()
    ingest(home, now)
