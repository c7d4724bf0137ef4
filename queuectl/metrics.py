"""Metrics: one report assembled from the index (counts, outcome counters, per-minute
buckets, the recent timings window, worker heartbeats) and the spool (pause flag). Pure
assembly; rendering to text or Prometheus lives in render.py, process checks in pool.py.

Stable JSON keys (documented in docs/operations.md): home, generated_at, paused, jobs,
rejected, backlog{ready, scheduled, oldest_ready_age_s}, totals{completed, failed (every failed
attempt, including those a recovery counted), dead (jobs that exhausted their retries),
requeued, cancelled}, dlq_size, throughput_per_min{1m,5m,15m}, queue_wait_s{p50,p95,count},
run_time_s{p50,p95,count}, workers[...], last_heartbeat_age_s, queues[...] (per queue:
backlog, oldest ready, workers serving it; see queues.summary)."""

import time

from . import runner
from .ingest import ingest
from .spool import JOB_STATES

HEARTBEAT_SECONDS = 2
STALE_AFTER = 3 * HEARTBEAT_SECONDS
WINDOW_SECONDS = 900
AGE_EDGES = (60, 300, 600, 1200, 2400, 4800, 9600)   # qshape-like, in seconds
AGE_LABELS = ("<1m", "1-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", ">=160m")


def percentile(values, q):
    """Nearest-rank percentile of a list (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return round(ordered[rank], 6)


def _throughput(home, now, timings):
    """Completed jobs per minute over the last 1, 5 and 15 minutes: exact from the timings
    window while it reaches back far enough, else from per-minute buckets."""
    oldest = home.index.oldest_timing()
    complete = home.index.timings_complete()
    current = int(now // 60)
    buckets = None
    result = {}
    for minutes in (1, 5, 15):
        start = now - minutes * 60
        if complete or oldest is not None and oldest <= start:
            done = sum(1 for ts, outcome, _, _ in timings if outcome == "completed" and ts >= start)
        else:
            if buckets is None:
                buckets = home.index.per_minute(current - 15)
            done = sum(n for minute, outcome, n in buckets
                       if outcome == "completed" and minute > current - minutes)
        result[f"{minutes}m"] = round(done / minutes, 3)
    return result


def _timings(rows):
    waits = [w for _, outcome, w, _ in rows if w is not None and outcome != "requeued"]
    runs = [r for _, outcome, _, r in rows if r is not None and outcome != "requeued"]
    return ({"p50": percentile(waits, 50), "p95": percentile(waits, 95), "count": len(waits),
             "sum": round(sum(waits), 6)},
            {"p50": percentile(runs, 50), "p95": percentile(runs, 95), "count": len(runs),
             "sum": round(sum(runs), 6)})


def report(home, workers, ingest_first=True):
    """Everything `queuectl metrics` shows, as one dict with stable keys. ingest_first=False
    reports the index as it stands (a busy worker must not rescan the spool)."""
    if ingest_first:
        ingest(home)
    now = home.clock()
    counts = {state: 0 for state in JOB_STATES}
    counts.update(home.index.counts())
    ready, scheduled, oldest = home.index.ready_summary(now)
    counters = home.index.counters()
    recent = home.index.timings(now - WINDOW_SECONDS)
    wait, run = _timings(recent)
    beats = [w["heartbeat_at"] for w in workers if w.get("heartbeat_at")]
    return {
        "home": home.home,
        "generated_at": round(time.time(), 3),
        "paused": home.spool.is_paused(),
        "jobs": counts,
        "rejected": home.index.rejected_count(),
        "backlog": {"ready": ready, "scheduled": scheduled,
                    "oldest_ready_age_s": round(now - oldest, 3) if oldest is not None else None},
        "totals": {k: counters.get(k, 0) for k in ("completed", "failed", "dead", "requeued",
                                                    "cancelled")},
        "dlq_size": counts["dead"],
        "throughput_per_min": _throughput(home, now, recent),
        "queue_wait_s": wait,
        "run_time_s": run,
        "last_heartbeat_age_s": round(time.time() - max(beats), 3) if beats else None,
        "workers": [_worker(w) for w in workers],
        "queues": _queues(home, workers, now),
    }


def _queues(home, workers, now):
    from .queues import summary
    return summary(home, workers, now)


def _worker(row):
    now = time.time()
    return {"id": row["worker_id"], "host": row["host"], "pid": row["pid"],
            "state": row.get("state"), "stale": bool(row.get("stale")),
            "uptime_s": round(now - (row["started_at"] or now), 3),
            "heartbeat_age_s": round(now - (row["heartbeat_at"] or now), 3),
            "current_job": row.get("current_job"), "jobs_done": row.get("jobs_done") or 0,
            "jobs_failed": row.get("jobs_failed") or 0, "cpu_percent": row.get("cpu_percent"),
            "rss_mb": round(row["rss_bytes"] / 1048576, 1) if row.get("rss_bytes") else None,
            "supervisor": row.get("supervisor")}


def ages(home):
    """Ready jobs per age bucket (like Postfix's qshape), oldest buckets last."""
    ingest(home)
    counts = home.index.ready_ages(home.clock(), AGE_EDGES)
    return [{"age": label, "ready": counts.get(i, 0)} for i, label in enumerate(AGE_LABELS)]


def worker_rows(home):
    """Worker heartbeats: stale ones (no beat for 3 intervals) flagged, and records of dead
    processes on this host removed."""
    rows = []
    now = time.time()
    for row in home.index.workers():
        if runner.is_same_process(row["host"], row["pid"], row["started_at"]) is False:
            home.index_safely("worker cleanup", home.index.delete_worker, row["worker_id"])
            continue
        row["stale"] = now - (row["heartbeat_at"] or 0) > STALE_AFTER
        if row["stale"]:
            row["state"] = "stale"
        rows.append(row)
    return rows
