"""Metrics: one report assembled from the index (counts, outcome counters, per-minute
buckets, the recent timings window, worker heartbeats) and the spool (pause flag). Pure
assembly; rendering to text or Prometheus lives in render.py, process checks in runner.py.

Stable JSON keys (documented in docs/operations.md): home, generated_at, paused, jobs,
rejected, backlog{ready, scheduled, oldest_ready_age_s}, totals{completed, failed (every failed
attempt, including those a recovery counted), dead (jobs that exhausted their retries),
requeued, cancelled}, dlq_size, throughput_per_min{1m,5m,15m}, queue_wait_s{p50,p95,count},
run_time_s{p50,p95,count}, workers[...], last_heartbeat_age_s, worker_summary{total, busy,
idle, other, uptime_s, cpu_percent, rss_mb} (CPU and memory include the jobs' processes),
queues[...] (per queue: backlog, oldest ready, workers serving it; see queues.summary).

Also a worker's own reporting: its heartbeat row and the Prometheus textfile (heartbeat,
write_textfile), best effort: nothing here may stop a worker."""

import logging
import os
import time

from . import render, runner
from .ingest import ingest
from .queries import worker_summary
from .spool import JOB_STATES

log = logging.getLogger("queuectl")
HEARTBEAT_SECONDS = 2
STALE_AFTER = 3 * HEARTBEAT_SECONDS
RECORD_EXPIRY = 600        # another host's worker record is deleted this long after its beat
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
        "worker_summary": dict(worker_summary(workers, time.time()), **_usage(workers)),
        "workers": [_worker(w) for w in workers],
        "queues": _queues(home, workers, now),
    }


def _usage(workers):
    """CPU percent and memory of every live worker with its jobs' process trees."""
    live = [w for w in workers if not w.get("stale")]
    cpu = [w["cpu_percent"] for w in live if w.get("cpu_percent") is not None]
    rss = [w["rss_bytes"] for w in live if w.get("rss_bytes")]
    return {"cpu_percent": round(sum(cpu), 1) if cpu else None,
            "rss_mb": round(sum(rss) / 1048576, 1) if rss else None}


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
    return age_buckets(home)


def age_buckets(home):
    """ages() without the ingest, for a caller that has just ingested."""
    counts = home.index.ready_ages(home.clock(), AGE_EDGES)
    return [{"age": label, "ready": counts.get(i, 0)} for i, label in enumerate(AGE_LABELS)]


def record_backlog(home, now):
    """Offer this minute's backlog sample (ready, scheduled, processing, failed, dead) for
    the backlog picture; workers call it once a minute (the first offer of a minute wins)."""
    counts = home.index.counts()
    ready, scheduled, _ = home.index.ready_summary(now)
    home.index.record_backlog(int(now // 60), ready, scheduled, counts)


def history(home, now, span_s, step_s):
    """Series over the last span_s seconds in buckets of step_s (a multiple of 60): jobs
    completed and failed per minute (from the per-minute buckets, kept a day), the backlog
    (the last sample in each bucket, None where none was taken) and queue wait / run time
    p50 and p95 (from the recent timings window, None where it has nothing)."""
    per = step_s // 60
    first = int(now // 60) - span_s // 60 + 1
    count = -(-(span_s // 60) // per)
    series = {k: [0] * count for k in ("completed", "failed")}
    for minute, outcome, n in home.index.per_minute(first):
        i = (minute - first) // per
        if outcome in series and 0 <= i < count:
            series[outcome][i] += n / per
    for key in ("ready", "scheduled", "processing"):
        series[key] = [None] * count
    for row in home.index.backlog(first):
        i = (row["minute"] - first) // per
        if 0 <= i < count:
            for key in ("ready", "scheduled", "processing"):
                series[key][i] = row[key]
    waits, runs = [[] for _ in range(count)], [[] for _ in range(count)]
    for ts, outcome, wait_s, run_s in home.index.timings(first * 60):
        i = int(ts // 60 - first) // per
        if outcome != "requeued" and 0 <= i < count:
            waits[i].extend([wait_s] if wait_s is not None else [])
            runs[i].extend([run_s] if run_s is not None else [])
    for name, buckets in (("wait", waits), ("run", runs)):
        for q in (50, 95):
            series[f"{name}_p{q}"] = [percentile(b, q) for b in buckets]
    series.update(start=first * 60, step=step_s, count=count)
    return series


def worker_rows(home):
    """Worker heartbeats: this host's from the index, other hosts' from spool/workers/ (a
    shared spool); stale ones (no beat for 3 intervals) flagged, and records of dead
    processes on this host removed. Another host's liveness cannot be checked from here:
    its workers are shown stale once their heartbeats stop."""
    rows = []
    now = time.time()
    records = list(home.index.workers())
    known = {row["worker_id"] for row in records}
    try:
        shared = home.spool.worker_records()
    except OSError:                   # an unreachable spool: this host's view only
        shared = []
    for record in shared:
        if record["worker_id"] in known:
            continue
        if runner.is_same_process(record.get("host"), record.get("pid", -1),
                                  record.get("started_at")) is False:
            continue                  # this host's, exited without removing its record
        records.append({key: record.get(key) for key in home.index.WORKER_COLUMNS})
    for row in records:
        if runner.is_same_process(row["host"], row["pid"], row["started_at"]) is False:
            if row["worker_id"] in known:
                home.index_safely("worker cleanup", home.index.delete_worker,
                                  row["worker_id"])
            continue
        row["stale"] = now - (row["heartbeat_at"] or 0) > STALE_AFTER
        if row["stale"]:
            row["state"] = "stale"
        rows.append(row)
    rows.sort(key=lambda r: (r["host"] or "", r["started_at"] or 0))
    return rows


def prune_worker_records(home):
    """Delete spool/workers/ records nobody will renew: this host's dead workers (SIGKILLed
    before they could remove theirs) and any record whose beat is RECORD_EXPIRY old (a host
    that crashed or left). Run by workers on a shared spool; OSErrors are the caller's."""
    now = time.time()
    for record in home.spool.worker_records():
        dead_here = runner.is_same_process(record.get("host"), record.get("pid", -1),
                                           record.get("started_at")) is False
        beat = record.get("heartbeat_at")
        expired = not isinstance(beat, (int, float)) or now - beat > RECORD_EXPIRY
        if dead_here or expired:
            home.spool.remove_worker(record["worker_id"])


# ---- a worker's own reporting ------------------------------------------------------------------

def heartbeat(home, record, label, ingest_first=True):
    """Record a worker's heartbeat (record: the index's worker columns but the process
    figures, added here) in the index, best effort, and keep the metrics textfile fresh.
    Returns the record as written."""
    try:
        home.index.reopen_if_replaced()
    except Exception as exc:
        log.warning("%s: index unavailable (%s)", label, exc)
    try:
        cpu, rss = runner.process_stats()
    except Exception:
        cpu, rss = None, None
    record = dict(record, heartbeat_at=time.time(), cpu_percent=cpu, rss_bytes=rss)
    home.index_safely("heartbeat", home.index.heartbeat, record)
    if home.settings.metrics_textfile:
        write_textfile(home, home.settings.metrics_textfile, ingest_first)
    return record


def write_textfile(home, path, ingest_first=True):
    """Keep the Prometheus textfile fresh. Every worker may write it, but only when it is
    older than a heartbeat interval, so the queries run about once per interval in all;
    tmp + fsync + rename, so node_exporter never reads half a file. Never raises."""
    try:
        if time.time() - os.stat(path).st_mtime < HEARTBEAT_SECONDS:
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("metrics textfile %s: %s", path, exc)
        return
    try:
        text = render.prometheus_text(report(home, worker_rows(home),
                                             ingest_first=ingest_first))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:    # metrics must never stop the worker
        log.warning("could not write metrics textfile %s: %s", path, exc)
