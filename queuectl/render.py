"""Text rendering for people: tables, ages, job details. Pure functions from data to str;
JSON output is json.dumps of the same data, so the two never drift."""

import json
import time

from . import job as jobmod


def to_json(value):
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def age(seconds):
    """A short human duration: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if seconds >= 10 * size else \
                f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def table(headers, rows):
    rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _one_line(text, width):
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _when(row, now):
    if row["state"] in ("pending", "failed") and row.get("run_at"):
        try:
            due = jobmod.parse_time(row["run_at"])
        except ValueError:
            return row["run_at"]
        return f"in {age(due - now)}" if due > now else "ready"
    if row["state"] == "pending":
        return "ready"
    try:
        return f"{age(now - jobmod.parse_time(row['updated_at']))} ago"
    except (TypeError, ValueError):
        return "-"


def _tries(row):
    """attempts made / runs allowed (max_retries + 1)."""
    allowed = "-" if row.get("max_retries") is None else row["max_retries"] + 1
    return f"{row.get('attempts') or 0}/{allowed}"


def job_table(rows, now=None):
    now = time.time() if now is None else now
    return table(["ID", "STATE", "PRI", "TRIES", "WHEN", "COMMAND / LAST ERROR"], [
        [r["id"], r["state"], r.get("priority"), _tries(r), _when(r, now),
         _one_line(r.get("command") if r["state"] != "rejected" and not
                   (r["state"] in ("failed", "dead") and r.get("last_error"))
                   else r.get("last_error"), 60)]
        for r in rows])


def status_text(report):
    counts = report["counts"]
    lines = [f"home: {report['home']}" + (f"  queue: {report['queue']}" if report.get("queue")
                                          else "")]
    if report["spool"] != f"{report['home']}/spool" or report["data"] != f"{report['home']}/data":
        lines.append(f"spool: {report['spool']}  data: {report['data']}")
    if report.get("paused"):
        lines.append("PAUSED: workers are not claiming jobs (queuectl resume)")
    if report.get("settings_note"):
        lines.append(f"settings: {report['settings_note']}")
    oldest = report["oldest_ready_age_s"]
    detail = {"pending": f"ready {report['ready']}, scheduled {report['scheduled']}"
                         + (f", oldest ready {age(oldest)}" if oldest is not None else "")}
    rows = [[state, n, detail.get(state, "")] for state, n in counts.items()]
    rows.append(["rejected", report["rejected"], ""])
    lines.append(table(["STATE", "JOBS", ""], rows))
    if _named_queues(report.get("queues")):
        lines.append("")
        lines.append(queues_text(report["queues"]))
    lines.append("")
    lines.append(workers_text(report["workers"]))
    return "\n".join(lines)


def _named_queues(queues):
    """Show the per-queue table only once there is more than the default queue."""
    return queues and [q["queue"] for q in queues] != [jobmod.DEFAULT_QUEUE]


def queues_text(queues):
    return "queues:\n" + table(
        ["QUEUE", "READY", "SCHED", "RUNNING", "FAILED", "DEAD", "OLDEST", "WORKERS"],
        [[q["queue"], q["ready"], q["scheduled"], q["processing"], q["failed"], q["dead"],
          age(q["oldest_ready_age_s"]), f"{q['busy']}/{q['workers']} busy"] for q in queues])


def workers_text(workers):
    if not workers:
        return "workers: none running (start some with: queuectl worker start)"
    now = time.time()
    return "workers:\n" + table(
        ["WORKER", "HOST", "PID", "UPTIME", "STATE", "JOB", "DONE", "FAILED"],
        [[w["worker_id"], w["host"], w["pid"], age(now - (w["started_at"] or now)),
          w.get("state") or "-", w.get("current_job"), w.get("jobs_done"),
          w.get("jobs_failed")] for w in workers])


def show_text(info):
    lines = [f"id:       {info['id']}", f"state:    {info['state']}",
             f"file:     {info['path']}"]
    if info.get("also_in"):
        lines.append(f"also in:  {', '.join(info['also_in'])} (a crash leftover; "
                     "queuectl recover cleans it)")
    if info.get("output"):
        lines.append(f"output:   {info['output']}  (queuectl logs {info['id']})")
    if info.get("last_error"):
        lines.append(f"error:    {info['last_error']}")
    for key, value in (info.get("job") or {}).items():
        if key not in ("id", "last_error", "history"):
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"{key + ':':<13} {shown}")
    return "\n".join(lines)


def history_text(doc):
    """The attempt history as a table (the output tails are in show --json and the file)."""
    rows = []
    for number, record in enumerate(doc.get("history") or []):
        if number == 3 and doc.get("history_dropped"):
            rows.append(["...", f"({doc['history_dropped']} attempts not kept)", "", "", "",
                         "", ""])
        rows.append([record.get("attempt"), record.get("started_at"),
                     _fmt(record.get("duration_s"), "s"), record.get("worker"),
                     str(record.get("outcome") or "-") +
                     (f" ({record['signal']})" if record.get("signal") else ""),
                     record.get("exit_code"), record.get("next") or ""])
    return "history:\n" + table(["#", "STARTED", "TOOK", "WORKER", "OUTCOME", "EXIT", "NEXT"],
                                 rows)


def config_text(rows):
    return table(["KEY", "VALUE", "", "MEANING"],
                 [[k, "none" if v is None else v, "(default)" if d else "(set)", h]
                  for k, v, d, h in rows])


def outcomes_text(outcomes):
    return "\n".join(f"{o.job_id}: {o.message}" if o.ok else f"{o.job_id}: error: {o.message}"
                     for o in outcomes)


def _fmt(value, unit=""):
    if value is None:
        return "-"
    return f"{value:.3f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def metrics_text(m):
    jobs, backlog, totals = m["jobs"], m["backlog"], m["totals"]
    tp, wait, run = m["throughput_per_min"], m["queue_wait_s"], m["run_time_s"]
    lines = [
        f"home: {m['home']}" + ("   PAUSED" if m["paused"] else ""),
        "jobs:        " + "  ".join(f"{k} {v}" for k, v in jobs.items())
        + f"  rejected {m['rejected']}",
        f"backlog:     ready {backlog['ready']}, scheduled {backlog['scheduled']}, "
        f"oldest ready {age(backlog['oldest_ready_age_s'])}",
        f"totals:      completed {totals['completed']}, failed attempts {totals['failed']}, "
        f"dead {totals['dead']}, cancelled {totals['cancelled']}, requeued {totals['requeued']}; "
        f"DLQ size {m['dlq_size']}",
        f"throughput:  {tp['1m']:g} / {tp['5m']:g} / {tp['15m']:g} jobs/min (1m / 5m / 15m)",
        f"queue wait:  p50 {_fmt(wait['p50'], 's')}  p95 {_fmt(wait['p95'], 's')}  "
        f"(last 15 min, {wait['count']} runs)",
        f"run time:    p50 {_fmt(run['p50'], 's')}  p95 {_fmt(run['p95'], 's')}",
        f"heartbeat:   last {age(m['last_heartbeat_age_s'])} ago" if m["workers"] else
        "heartbeat:   no workers",
        "",
    ]
    if m["workers"]:
        lines.append(table(
            ["WORKER", "HOST", "PID", "STATE", "UPTIME", "BEAT", "JOB", "DONE", "FAILED",
             "CPU%", "MEM MB"],
            [[w["id"], w["host"], w["pid"], w["state"], age(w["uptime_s"]),
              age(w["heartbeat_age_s"]), w["current_job"], w["jobs_done"], w["jobs_failed"],
              "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
              "-" if w["rss_mb"] is None else f"{w['rss_mb']:.1f}"] for w in m["workers"]]))
    else:
        lines.append("workers: none running")
    if _named_queues(m.get("queues")):
        lines += ["", queues_text(m["queues"])]
    return "\n".join(lines)


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(m):
    """The Prometheus text exposition format (version 0.0.4)."""
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {_number(value)}" if text else
                       f"{name} {_number(value)}")

    metric("queuectl_jobs", "gauge", "Jobs per state directory.",
           [({"state": s}, n) for s, n in m["jobs"].items()] + [({"state": "rejected"},
                                                                  m["rejected"])])
    metric("queuectl_ready_jobs", "gauge", "Pending jobs whose run time has come.",
           [({}, m["backlog"]["ready"])])
    metric("queuectl_scheduled_jobs", "gauge", "Pending jobs waiting for their run_at.",
           [({}, m["backlog"]["scheduled"])])
    metric("queuectl_oldest_ready_age_seconds", "gauge", "Age of the oldest ready job.",
           [({}, m["backlog"]["oldest_ready_age_s"] or 0)])
    metric("queuectl_paused", "gauge", "1 while spool/PAUSED exists.", [({}, int(m["paused"]))])
    metric("queuectl_job_outcomes_total", "counter", "Finished attempts by outcome.",
           [({"outcome": k}, v) for k, v in m["totals"].items()])
    metric("queuectl_throughput_jobs_per_minute", "gauge", "Completed jobs per minute.",
           [({"window": k}, v) for k, v in m["throughput_per_min"].items()])
    for name, key, what in (("queuectl_job_run_seconds", "run_time_s", "Job run time"),
                            ("queuectl_job_wait_seconds", "queue_wait_s", "Queue wait")):
        data = m[key]
        samples = [({"quantile": q}, data[p]) for q, p in (("0.5", "p50"), ("0.95", "p95"))
                   if data[p] is not None]
        out.append(f"# HELP {name} {what} over the last 15 minutes.")
        out.append(f"# TYPE {name} summary")
        for labels, value in samples:
            out.append(f'{name}{{quantile="{labels["quantile"]}"}} {_number(value)}')
        out.append(f"{name}_sum {_number(data['sum'])}")
        out.append(f"{name}_count {data['count']}")
    queues = m.get("queues") or []
    metric("queuectl_queue_ready_jobs", "gauge", "Ready pending jobs per queue.",
           [({"queue": q["queue"]}, q["ready"]) for q in queues])
    metric("queuectl_queue_oldest_ready_age_seconds", "gauge",
           "Age of the oldest ready job per queue.",
           [({"queue": q["queue"]}, q["oldest_ready_age_s"] or 0) for q in queues])
    metric("queuectl_queue_workers", "gauge", "Live workers serving each queue.",
           [({"queue": q["queue"]}, q["workers"]) for q in queues])
    workers = m["workers"]
    metric("queuectl_worker_up", "gauge", "1 for a live worker, 0 for a stale one.",
           [(_wlabels(w), 0 if w["stale"] else 1) for w in workers])
    metric("queuectl_worker_jobs_done_total", "counter", "Jobs completed by the worker.",
           [(_wlabels(w), w["jobs_done"]) for w in workers])
    metric("queuectl_worker_jobs_failed_total", "counter", "Failed attempts by the worker.",
           [(_wlabels(w), w["jobs_failed"]) for w in workers])
    metric("queuectl_worker_cpu_percent", "gauge", "Worker CPU use, percent of one core.",
           [(_wlabels(w), w["cpu_percent"] or 0) for w in workers])
    metric("queuectl_worker_rss_bytes", "gauge", "Worker resident memory.",
           [(_wlabels(w), int((w["rss_mb"] or 0) * 1048576)) for w in workers])
    metric("queuectl_worker_heartbeat_age_seconds", "gauge", "Seconds since the heartbeat.",
           [(_wlabels(w), w["heartbeat_age_s"]) for w in workers])
    return "\n".join(out) + "\n"


def _wlabels(worker):
    return {"worker": worker["id"], "host": worker["host"], "pid": worker["pid"]}


def _number(value):
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def ages_text(rows, home):
    return f"home: {home}\nready jobs by age (like qshape):\n" + table(
        ["AGE", "READY"], [[r["age"], r["ready"]] for r in rows])
