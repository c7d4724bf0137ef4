"""Read-side reports: status, list and show. Each first ingests what changed in the spool,
so a job dropped by another tool is never missed, then answers from the index; `show` reads
the job file itself (the spool is the truth)."""

import os

from . import job as jobmod
from .errors import AmbiguousId, InvalidJob, JobNotFound
from .ingest import ingest
from .config import foreign_after
from .spool import JOB_STATES, NotAJobFile, display_name

LIST_STATES = (*JOB_STATES, "rejected")


def check_state(state):
    if state is not None and state not in LIST_STATES:
        raise InvalidJob(f"state must be one of: {', '.join(LIST_STATES)}; got {state!r}")


def list_jobs(home, state=None, limit=None):
    """Job rows (dicts); for state 'rejected' the rejected files with their reasons."""
    check_state(state)
    ingest(home)
    if state == "rejected":
        return [_rejected_row(r) for r in home.index.rejected(limit=limit)]
    rows = home.index.list(state, limit)
    for row in rows:
        script = jobmod.script_of(row.get("command"))
        if script:
            row["script"] = script
    return rows


def _rejected_row(row):
    name = row["name"]
    return {"id": name[:-5] if name.endswith(".json") else name, "state": "rejected",
            "file": name, "last_error": row["reason"], "updated_at": row["rejected_at"],
            "created_at": row["rejected_at"], "command": None, "attempts": 0,
            "max_retries": None, "size": row["size"]}


def resolve_ids(home, ids):
    """Every command that takes ids accepts any unique prefix of one, as git does: an id
    that names no job but starts exactly one job's id means that job. A prefix of several
    raises AmbiguousId listing them; one of none is passed on (the command reports it)."""
    return [_resolve(home, job_id) for job_id in ids]


def _resolve(home, job_id):
    if not jobmod.ID_RE.match(job_id) or home.spool.find(job_id):
        return job_id
    matches = home.spool.ids_with_prefix(job_id)
    if len(matches) > 1:
        shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more"
                                          if len(matches) > 10 else "")
        raise AmbiguousId(f"id prefix {job_id!r} matches {len(matches)} jobs: {shown}; "
                          "give more characters")
    return matches[0] if matches else job_id


def page_jobs(home, state=None, search=None, after=None, limit=50):
    """One page of job rows for browsing (no ingest: the caller ingests on its own
    schedule); see Index.page for the order and the `after` key."""
    check_state(state)
    if state == "rejected":
        return [_rejected_row(r) for r in home.index.rejected(limit=limit)], None
    return home.index.page((state,) if state else JOB_STATES, search or None, after, limit)


def status(home, workers=()):
    """Counts per state, ready vs scheduled, oldest ready age, paths and workers."""
    ingest(home)
    now = home.clock()
    counts = {state: 0 for state in JOB_STATES}
    counts.update(home.index.counts())
    ready, scheduled, oldest_due = home.index.ready_summary(now)
    shared, filesystem = home.shared_spool()
    from .queues import summary
    workers = list(workers)
    return {
        "home": home.home, "spool": home.spool_dir, "data": home.data_dir,
        "counts": counts, "rejected": home.index.rejected_count(),
        "ready": ready, "scheduled": scheduled,
        "oldest_ready_age_s": round(now - oldest_due, 3) if oldest_due is not None else None,
        "paused": home.spool.is_paused(),
        # Why the settings in force are not data/config.json's (None when they are).
        "settings_note": home.settings.note,
        "foreign": [{"where": f"pending/{display_name(name)}", "age_s": round(age_s, 3)}
                    for name, age_s in home.spool.foreign("pending",
                                                          foreign_after(home.settings), now)],
        "worker_summary": worker_summary(workers, now),
        "spool_shared": shared, "filesystem": filesystem,
        "workers": workers,
        "queues": summary(home, workers, now),
    }


def worker_summary(workers, now):
    """{"total", "busy", "idle", "other", "uptime_s"}: how many workers run, in which
    state, and how long the pool has been up (since its oldest live worker started)."""
    states = [w.get("state") or "idle" for w in workers]
    starts = [w["started_at"] for w in workers if w.get("started_at")]
    return {"total": len(states), "busy": states.count("busy"), "idle": states.count("idle"),
            "other": len(states) - states.count("busy") - states.count("idle"),
            "uptime_s": round(now - min(starts), 3) if starts else None}


def show(home, job_id):
    """Everything known about one job: the file's fields, its state and path, last error."""
    ingest(home)
    return describe(home, job_id)


def describe(home, job_id):
    """show() without the ingest, for a caller that ingests on its own schedule."""
    states = home.spool.find(job_id) if jobmod.ID_RE.match(job_id) else []
    # A copy in processing/ beside another state is the leftover of a finish (the job has
    # moved on): show the state it moved to, and processing/ under also_in.
    states.sort(key=lambda s: s == "processing")
    for state in states:
        path = home.spool.path(state, job_id)
        try:
            data, _ = home.spool.read(state, job_id + jobmod.JOB_SUFFIX)
            doc = jobmod.loads_object(data)
        except (NotAJobFile, InvalidJob):
            continue
        output = home.spool.output_path(job_id)
        return {"job": doc, "id": job_id, "state": state, "path": path,
                "output": output if os.path.exists(output) else None,
                "also_in": [s for s in states if s != state],
                "last_error": doc.get("last_error")}
    for name in (job_id, job_id + jobmod.JOB_SUFFIX):
        rows = home.index.rejected(name)
        if rows:
            row = _rejected_row(rows[0])
            return {"job": None, "id": row["id"], "state": "rejected",
                    "path": os.path.join(home.spool.dir("rejected"), name),
                    "output": None, "also_in": [], "last_error": row["last_error"],
                    "size": row["size"]}
    raise JobNotFound(f"no job with id {job_id!r} in {home.spool_dir}")
