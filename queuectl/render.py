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


def job_table(rows, now=None):
    now = time.time() if now is None else now
    return table(["ID", "STATE", "PRI", "TRIES", "WHEN", "COMMAND / LAST ERROR"], [
        [r["id"], r["state"], r.get("priority"),
         f"{r.get('attempts') or 0}/{'-' if r.get('max_retries') is None else r['max_retries'] + 1}",
         _when(r, now),
         _one_line(r.get("command") if r["state"] != "rejected" and not
                   (r["state"] in ("failed", "dead") and r.get("last_error"))
                   else r.get("last_error"), 60)]
        for r in rows])


def status_text(report):
    counts = report["counts"]
    lines = [f"home: {report['home']}"]
    if report["spool"] != f"{report['home']}/spool" or report["data"] != f"{report['home']}/data":
        lines.append(f"spool: {report['spool']}  data: {report['data']}")
    if report.get("paused"):
        lines.append("PAUSED: workers are not claiming jobs (queuectl resume)")
    oldest = report["oldest_ready_age_s"]
    detail = {"pending": f"ready {report['ready']}, scheduled {report['scheduled']}"
                         + (f", oldest ready {age(oldest)}" if oldest is not None else "")}
    rows = [[state, n, detail.get(state, "")] for state, n in counts.items()]
    rows.append(["rejected", report["rejected"], ""])
    lines.append(table(["STATE", "JOBS", ""], rows))
    lines.append("")
    lines.append(workers_text(report["workers"]))
    return "\n".join(lines)


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
        if key not in ("id", "last_error"):
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"{key + ':':<13} {shown}")
    return "\n".join(lines)


def config_text(rows):
    return table(["KEY", "VALUE", "", "MEANING"],
                 [[k, "none" if v is None else v, "(default)" if d else "(set)", h]
                  for k, v, d, h in rows])


def outcomes_text(outcomes):
    return "\n".join(f"{o.job_id}: {o.message}" if o.ok else f"{o.job_id}: error: {o.message}"
                     for o in outcomes)
