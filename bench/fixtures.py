"""Spool fixtures for the benchmarks: filling a spool fast, dropping a job in the way another
tool would, counting jobs, and waiting until the spool is quiet.

Job files are written in exactly the format `queuectl enqueue` and the workers write
(`queuectl.job.dumps`), but without fsync: these are fixtures, not a queue."""

import json
import os
import time

RACY_SECONDS = 3            # queuectl.ingest.RACY_SECONDS: looks this close to a change rescan
JOB_DIRS = ("pending", "processing", "failed", "completed", "dead")
LOOKED_AT_DIRS = (*JOB_DIRS, "rejected")


def job_doc(i, created, now, state):
    """The i-th job of a fixture spool as it looks in `state`."""
    from queuectl import job as jobmod
    doc = {"command": f"echo job {i}", "id": jobmod.new_id(created), "priority": 0,
           "attempts": 0, "max_retries": 3, "created_at": jobmod.iso(created),
           "updated_at": jobmod.iso(created)}
    if state == "pending":
        doc["priority"] = i % 10
        if i % 10 == 0:
            doc["run_at"] = jobmod.iso(now + 86400 + i)     # scheduled, not ready
    elif state == "completed":
        done = jobmod.iso(created + 0.5)
        doc.update(attempts=1, exit_code=0, duration_s=0.5, finished_at=done, updated_at=done,
                   last_error=None)
    elif state == "dead":
        done = jobmod.iso(created + 30)
        doc.update(attempts=4, exit_code=1, duration_s=0.1, last_error="exit code 1",
                   finished_at=done, updated_at=done)
    return doc


def write_jobs(home, total):
    """Fill home/spool with `total` jobs: 60% pending (priorities 0-9, a tenth of them
    scheduled a day ahead), 30% completed, 10% dead; created 1 ms apart, oldest first.
    Returns {state: count}."""
    from queuectl import job as jobmod
    from queuectl.spool import Spool

    spool = Spool(os.path.join(home, "spool"))
    spool.ensure_layout()
    made = {"pending": total * 6 // 10, "completed": total * 3 // 10}
    made["dead"] = total - made["pending"] - made["completed"]
    states = [s for s, n in made.items() for _ in range(n)]
    now = time.time()
    base = now - 3600 - total * 0.001
    for i, state in enumerate(states):
        doc = job_doc(i, base + i * 0.001, now, state)
        fd = os.open(spool.path(state, doc["id"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, jobmod.dumps(doc))
        finally:
            os.close(fd)
    return made


def drop_job(home, job_id):
    """Drop a minimal job into pending/ as another tool would: a dot-file, then a rename."""
    pending = os.path.join(home, "spool", "pending")
    part = os.path.join(pending, f".{job_id}.json.part")
    with open(part, "w") as f:
        f.write(json.dumps({"command": "true"}))
    os.rename(part, os.path.join(pending, f"{job_id}.json"))


def finish_job(home, i):
    """Put a completed job into completed/ as a worker's finishing step would (written
    aside, then renamed in), so completed/ has changed since the last look."""
    from queuectl import job as jobmod
    now = time.time()
    doc = job_doc(i, now - 1, now, "completed")
    completed = os.path.join(home, "spool", "completed")
    part = os.path.join(completed, f".{doc['id']}.json.part")
    with open(part, "wb") as f:
        f.write(jobmod.dumps(doc))
    os.rename(part, os.path.join(completed, f"{doc['id']}.json"))


def count_jobs(home):
    """Job files in the spool's job-state directories."""
    total = 0
    for state in JOB_DIRS:
        with os.scandir(os.path.join(home, "spool", state)) as entries:
            total += sum(1 for e in entries
                         if e.name.endswith(".json") and not e.name.startswith("."))
    return total


def wait_quiet(home, seconds=RACY_SECONDS + 1):
    """Sleep until no spool directory has changed for `seconds`, so that `status` and `list`
    may trust the directories' mtimes (the racy-mtime rule in queuectl/ingest.py)."""
    spool = os.path.join(home, "spool")
    while True:
        latest = max(os.stat(os.path.join(spool, d)).st_mtime for d in LOOKED_AT_DIRS)
        left = latest + seconds - time.time()
        if left <= 0:
            return
        time.sleep(left + 0.05)
