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


def terminal_width():
    """Columns of the terminal ($COLUMNS first, then the tty; 80 when piped)."""
    import shutil
    return shutil.get_terminal_size((80, 24)).columns


def table(headers, rows, width=None, flex=None, ellipsis=True):
    """Columns padded to their widest cell. With `width`, the column `flex` (an index)
    is cut so every line fits: its cells end in "..." (or, with ellipsis=False, are simply
    cut, which keeps an id column a prefix that every command accepts)."""
    rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    if width is not None and flex is not None:
        others = sum(w for i, w in enumerate(widths) if i != flex) + 2 * (len(widths) - 1)
        room = max(len(headers[flex]), 6, width - others)
        if widths[flex] > room:
            widths[flex] = room
            for r in rows:
                r[flex] = _cut(r[flex], room, ellipsis)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cut(text, width, ellipsis=True):
    if len(text) <= width:
        return text
    return text[:width - 3] + "..." if ellipsis else text[:width]


def _one_line(text, width=None):
    text = " ".join(str(text or "").split())
    return text if width is None else _cut(text, width)


def command_label(job):
    """What a listing shows for a job's command: a script frozen with `enqueue --file` is
    named by its file (`task.py (frozen copy)`), anything else is the command itself."""
    script = job.get("script") or jobmod.script_of(job.get("command"))
    if script:
        return f"{script.rsplit('/', 1)[-1]} (frozen copy)"
    return job.get("command")


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


def job_table(rows, now=None, width=None):
    now = time.time() if now is None else now
    width = terminal_width() if width is None else width
    return table(["ID", "STATE", "PRI", "TRIES", "WHEN", "COMMAND / LAST ERROR"], [
        [r["id"], r["state"], r.get("priority"), _tries(r), _when(r, now),
         _one_line(command_label(r) if r["state"] != "rejected" and not
                   (r["state"] in ("failed", "dead") and r.get("last_error"))
                   else r.get("last_error"))]
        for r in rows], width=width, flex=5)


def status_text(report):
    counts = report["counts"]
    lines = [f"home: {report['home']}" + (f"  queue: {report['queue']}" if report.get("queue")
                                          else "")]
    if report["spool"] != f"{report['home']}/spool" or report["data"] != f"{report['home']}/data":
        lines.append(f"spool: {report['spool']}  data: {report['data']}")
    if report.get("spool_shared"):
        lines.append(f"spool shared with other hosts ({report.get('filesystem')}): "
                     "workers of every host are listed")
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
    foreign = report.get("foreign") or []
    if foreign:
        shown = ", ".join(f["where"] for f in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        lines.append(f"{len(foreign)} file{'s' if len(foreign) != 1 else ''} in pending/ "
                     f"will never run (hidden or not *.json): {shown}; see queuectl fsck")
    if _named_queues(report.get("queues")):
        lines.append("")
        lines.append(queues_text(report["queues"]))
    lines.append("")
    lines.append(workers_text(report["workers"], report["worker_summary"]))
    return "\n".join(lines)


def _named_queues(queues):
    """Show the per-queue table only once there is more than the default queue."""
    return queues and [q["queue"] for q in queues] != [jobmod.DEFAULT_QUEUE]


def queues_text(queues):
    return "queues:\n" + table(
        ["QUEUE", "READY", "SCHED", "RUNNING", "FAILED", "DEAD", "OLDEST", "WORKERS"],
        [[q["queue"], q["ready"], q["scheduled"], q["processing"], q["failed"], q["dead"],
          age(q["oldest_ready_age_s"]), f"{q['busy']}/{q['workers']} busy"] for q in queues])


def workers_line(summary):
    """`workers: 3 (2 busy, 1 idle), up 5.2m` (or none running)."""
    if not summary["total"]:
        return "workers: none running (start some with: queuectl worker start)"
    other = f", {summary['other']} other" if summary["other"] else ""
    return (f"workers: {summary['total']} ({summary['busy']} busy, {summary['idle']} idle"
            f"{other}), up {age(summary['uptime_s'])}")


def workers_text(workers, summary, width=None):
    """The summary line, then a row per worker (HOST only when they run on several)."""
    if not workers:
        return workers_line(summary)
    now = time.time()
    hosts = len({w["host"] for w in workers}) > 1
    headers = ["HOST"] * hosts + ["PID", "UPTIME", "STATE", "JOB", "DONE", "FAILED"]
    rows = [[w["host"]] * hosts + [w["pid"], age(now - (w["started_at"] or now)),
                                   w.get("state") or "-", w.get("current_job"),
                                   w.get("jobs_done"), w.get("jobs_failed")]
            for w in workers]
    return workers_line(summary) + "\n" + table(
        headers, rows, width=terminal_width() if width is None else width,
        flex=headers.index("JOB"), ellipsis=False)


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
    doc = info.get("job") or {}
    frozen = jobmod.frozen_text(doc.get("command"))
    for key, value in doc.items():
        if key in ("id", "last_error", "history"):
            continue
        if key == "command" and frozen:
            value = command_label(doc)
        elif key == "duration_s" and isinstance(value, (int, float)):
            value = f"{value:.3f}"
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"{key + ':':<13} {shown}")
    if frozen:
        lines.append(f"--- frozen copy of {command_label(doc).split(' (')[0]}, run by "
                     f"{frozen[0]} ---")
        lines.append(frozen[1].rstrip("\n"))
        lines.append("--- end of script text ---")
    return "\n".join(lines)


PAUSED_NOTE = "\nthe queue is paused: workers claim nothing until `queuectl resume`"


def started_text(started, count, home, paused, queues=None):
    pids = started["workers"]
    which = f"pid {pids[0]}" if len(pids) == 1 else f"pids {', '.join(map(str, pids))}"
    serving = (f"\nqueue{'s' if len(queues) > 1 else ''}: {', '.join(queues)}"
               if queues else "")
    return (f"started supervisor {started['supervisor_pid']} with {count} worker"
            f"{'s' if count != 1 else ''} ({which})\nhome: {home}" + serving +
            (PAUSED_NOTE if paused else ""))


def foreground_text(count, home, paused):
    return (f"running {count} worker{'s' if count != 1 else ''} in the foreground for {home} "
            "(Ctrl-C stops them gracefully)" + (PAUSED_NOTE if paused else ""))


def init_text(paths, existed):
    first = f"queue {'already exists' if existed else 'created'} at {paths['home']}"
    return "\n".join([first, f"spool:   {paths['spool']}",
                      f"pending: {paths['pending']}  (drop job files here)",
                      f"data:    {paths['data']}", f"index:   {paths['index']}"])


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


def config_text(rows, width=None):
    return table(["KEY", "VALUE", "", "MEANING"],
                 [[k, "none" if v is None else v, "(default)" if d else "(set)", h]
                  for k, v, d, h in rows],
                 width=terminal_width() if width is None else width, flex=3)


def outcomes_text(outcomes):
    return "\n".join(f"{o.job_id}: {o.message}" if o.ok else f"{o.job_id}: error: {o.message}"
                     for o in outcomes)


def _fmt(value, unit=""):
    if value is None:
        return "-"
    return f"{value:.3f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _usage_text(summary):
    if summary.get("cpu_percent") is None and summary.get("rss_mb") is None:
        return "-"
    cpu = "-" if summary["cpu_percent"] is None else f"{summary['cpu_percent']:.1f}%"
    mem = "-" if summary["rss_mb"] is None else f"{summary['rss_mb']:.1f} MB"
    return f"CPU {cpu}, memory {mem} (workers and their jobs)"


def metrics_text(m, width=None):
    jobs, backlog, totals = m["jobs"], m["backlog"], m["totals"]
    tp, wait, run = m["throughput_per_min"], m["queue_wait_s"], m["run_time_s"]
    summary = m["worker_summary"]
    lines = [f"home: {m['home']}" + ("   PAUSED" if m["paused"] else "")]
    if m["workers"]:
        lines += [f"{workers_line(summary)}, last heartbeat "
                  f"{age(m['last_heartbeat_age_s'])} ago",
                  f"usage:       {_usage_text(summary)}"]
    else:
        lines.append(workers_line(summary))
    lines += [
        f"completed:   {totals['completed']}   failed attempts: {totals['failed']}   "
        f"DLQ size: {m['dlq_size']}",
        "jobs:        " + " ".join(f"{k} {v}," for k, v in jobs.items())
        + f" rejected {m['rejected']}",
        f"backlog:     ready {backlog['ready']}, scheduled {backlog['scheduled']}, "
        f"oldest ready {age(backlog['oldest_ready_age_s'])}",
        f"totals:      dead {totals['dead']}, cancelled {totals['cancelled']}, "
        f"requeued {totals['requeued']}",
        f"throughput:  {tp['1m']:g} / {tp['5m']:g} / {tp['15m']:g} jobs/min (1m / 5m / 15m)",
        f"queue wait:  p50 {_fmt(wait['p50'], 's')}  p95 {_fmt(wait['p95'], 's')}  "
        f"(last 15 min, {wait['count']} runs)",
        f"run time:    p50 {_fmt(run['p50'], 's')}  p95 {_fmt(run['p95'], 's')}",
    ]
    if m["workers"]:
        hosts = len({w["host"] for w in m["workers"]}) > 1
        headers = ["HOST"] * hosts + ["PID", "STATE", "UPTIME", "BEAT", "JOB", "DONE",
                                      "FAIL", "CPU%", "MEM MB"]
        lines += ["", table(headers, [
            [w["host"]] * hosts + [
                w["pid"], w["state"], age(w["uptime_s"]), age(w["heartbeat_age_s"]),
                w["current_job"], w["jobs_done"], w["jobs_failed"],
                "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
                "-" if w["rss_mb"] is None else f"{w['rss_mb']:.1f}"] for w in m["workers"]],
            width=terminal_width() if width is None else width, flex=headers.index("JOB"),
            ellipsis=False)]
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
    metric("queuectl_worker_cpu_percent", "gauge",
           "CPU use of the worker and its job, percent of one core.",
           [(_wlabels(w), w["cpu_percent"] or 0) for w in workers])
    metric("queuectl_worker_rss_bytes", "gauge", "Resident memory of the worker and its job.",
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
