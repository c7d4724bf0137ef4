"""On-demand recovery of processing/ (`queuectl recover`); workers do the same at start and
every few seconds. See lifecycle.recover for the rules."""

import logging

from . import job as jobmod
from . import lifecycle, runner

log = logging.getLogger("queuectl")


def recover_one(home, job_id, now):
    """lifecycle.recover (which counts a recovered attempt as a failed one), and the end line
    the dead worker could not write into the attempt's output log."""
    result = lifecycle.recover(home, job_id, now)
    if result in ("failed", "dead"):
        runner.end_interrupted_log(home.spool.output_path(job_id),
                                   f"worker died (found by recovery at {jobmod.iso(now)})")
    return result


def recover_all(home):
    """Recover every unowned file in processing/; returns [{id, result, state}] for what
    changed or failed (state 'error': logged, skipped, the others still recovered)."""
    now = home.clock()
    done = []
    for name in sorted(home.spool.names("processing")):
        job_id = name[:-len(jobmod.JOB_SUFFIX)]
        try:
            result = recover_one(home, job_id, now)
        except Exception as exc:     # one bad orphan must not stop the others
            log.error("recovery of processing/%s failed: %s", name, exc)
            done.append({"id": job_id, "result": f"recovery failed: {exc}", "state": "error"})
            continue
        if result is not None:
            label = {"leftover": "deleted a leftover copy (the job had already moved on)",
                     "failed": "worker died: attempt counted, moved to failed (will retry)",
                     "dead": "worker died: retries exhausted, moved to dead",
                     "rejected": "unreadable: moved to rejected"}.get(result, result)
            done.append({"id": job_id, "result": label, "state": result})
    done += free_stale_keys(home, now)
    return done


def free_stale_keys(home, now):
    """Unique keys whose job is no longer pending, failed or processing (a crash between
    the job's last move and freeing its key): removed, so the key can be used again."""
    from . import unique
    unique.remove_old_tmp(home.spool, now)
    freed = []
    for name, holder, key in unique.stale_keys(home.spool, now):
        if unique.remove_stale(home.spool, name, now):
            freed.append({"id": holder, "state": "key-freed",
                          "result": f"freed unique key {key!r} (its job had finished)"})
    return freed
