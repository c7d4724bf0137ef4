"""Named queues: every job is in one queue (its `queue` field, default 'default'); a worker
pool started with `worker start --queue A,B` takes only jobs of those queues, one started
without --queue takes every queue. This module answers the per-queue questions (list,
status, metrics, `why`) from the index and the pools' records in data/supervisors/.

Which queues a worker serves is read from its supervisor's record (the heartbeat names the
supervisor); a worker without a supervisor (`worker run`) serves every queue."""

import os

from . import job as jobmod
from .ingest import ingest
from .queries import check_state

STATES = ("pending", "processing", "failed", "completed", "dead")


def list_in_queue(home, queue, state=None, limit=None):
    check_state(state)
    if state == "rejected":
        return []
    ingest(home)
    return home.index.list_queue(queue, state, limit)


def pool_queues(home):
    """{supervisor id: [queues] or None (every queue)} from the live pools' records."""
    from .pool import supervisors
    result = {}
    for record, alive in supervisors(home):
        if alive is not False:
            # The record's file name is the supervisor id the workers' heartbeats carry.
            name = os.path.basename(record["path"])[:-len(".json")]
            result[name] = record.get("queues") or None
    return result


def serving(workers, pools, queue):
    """The worker rows that take jobs of `queue`."""
    return [w for w in workers if pools.get(w.get("supervisor")) is None or
            queue in pools[w.get("supervisor")]]


def summary(home, workers, now=None):
    """[{queue, pending, ready, scheduled, processing, failed, completed, dead,
    oldest_ready_age_s, workers, busy}] for every queue that has jobs or a pool."""
    now = home.clock() if now is None else now
    counts = home.index.queue_summary(now)
    pools = pool_queues(home)
    names = set(counts) | {q for queues in pools.values() if queues for q in queues}
    names.add(jobmod.DEFAULT_QUEUE) if not names else None
    rows = []
    for name in sorted(names):
        entry = counts.get(name, {"ready": 0, "oldest_due": None})
        served = [w for w in serving(workers, pools, name) if not w.get("stale")]
        row = {"queue": name, **{s: entry.get(s, 0) for s in STATES},
               "ready": entry["ready"],
               "scheduled": entry.get("pending", 0) - entry["ready"],
               "oldest_ready_age_s": None if entry["oldest_due"] is None else
               round(now - entry["oldest_due"], 3),
               "workers": len(served),
               "busy": sum(1 for w in served if w.get("current_job"))}
        rows.append(row)
    return rows


def narrow_status(home, report, queue):
    """A status report (queries.status) cut down to one queue: its counts, backlog and the
    workers serving it. Rejected files belong to no queue and are left out."""
    rows = [q for q in report["queues"] if q["queue"] == queue]
    row = rows[0] if rows else {"queue": queue, "ready": 0, "scheduled": 0,
                                "oldest_ready_age_s": None, "workers": 0, "busy": 0,
                                **{s: 0 for s in STATES}}
    return dict(report, queue=queue, counts={s: row[s] for s in STATES}, rejected=0,
                ready=row["ready"], scheduled=row["scheduled"],
                oldest_ready_age_s=row["oldest_ready_age_s"], queues=[row],
                workers=serving(report["workers"], pool_queues(home), queue))
