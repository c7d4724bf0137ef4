"""Operator actions on jobs by id: DLQ retry, cancel, retry now. Each takes a list of ids and
returns one Outcome per id, so one bad id never hides what happened to the others. Every
state change goes through a claim and a lifecycle move."""

import logging
import time
from dataclasses import dataclass

from . import job as jobmod
from . import lifecycle
from .errors import InvalidJob, JobNotFound, WrongState
from .ingest import ingest
from .spool import NotAJobFile

log = logging.getLogger("queuectl")


@dataclass
class Outcome:
    job_id: str
    ok: bool
    message: str

    def as_dict(self):
        return {"id": self.job_id, "ok": self.ok, "message": self.message}


def _locate(home, job_id, allowed, verb):
    """The state of job_id if it is one of `allowed`; else a JobNotFound/WrongState error."""
    if not jobmod.ID_RE.match(job_id):
        raise JobNotFound(f"no job with id {job_id!r}")
    states = home.spool.find(job_id)
    if not states:
        raise JobNotFound(f"no job with id {job_id!r}")
    for state in states:
        if state in allowed:
            return state
    raise WrongState(f"job {job_id!r} is {states[0]}; only {' or '.join(allowed)} jobs "
                     f"can be {verb}")


def _apply(home, job_id, allowed, verb, move):
    """Claim the job from its state and apply `move` (a lifecycle function)."""
    now = home.clock()
    state = _locate(home, job_id, allowed, verb)
    busy = WrongState(f"job {job_id!r} is being moved by another process; try again")
    try:
        held = lifecycle.claim(home, state, job_id)
    except NotAJobFile as exc:
        if exc.gone:      # another process moved it between our look and our claim
            raise busy from None
        raise InvalidJob(f"job {job_id!r} cannot be read: {exc}") from None
    if held is None:
        raise busy
    try:
        doc = lifecycle.parse_claimed(home, held, now)
    except (InvalidJob, NotAJobFile) as exc:
        lifecycle.unclaim(home, held)
        raise InvalidJob(f"job {job_id!r} cannot be read: {exc}") from None
    if move(home, held, doc, now) is None:
        raise WrongState(f"job {job_id!r} could not be {verb}: its id is taken (see rejected/)")


def for_each(home, ids, action):
    results = []
    for job_id in ids:
        try:
            results.append(Outcome(job_id, True, action(home, job_id)))
        except (JobNotFound, WrongState, InvalidJob) as exc:
            results.append(Outcome(job_id, False, str(exc)))
    return results


def dlq_retry(home, ids=None):
    """Move dead jobs back to pending/ with attempts reset; all of them when ids is None."""
    ingest(home)
    if ids is None:
        ids = [row["id"] for row in home.index.list("dead")]

    brought_back = {}           # dependent id -> the job whose retry brought it back

    def action(home, job_id):
        if job_id in brought_back:
            return f"moved to pending (attempts reset) with {brought_back[job_id]}"
        _apply(home, job_id, ("dead",), "retried from the DLQ", _revive)
        revived = _revive_dependents(home, job_id)
        brought_back.update((dependent, job_id) for dependent in revived)
        return "moved to pending (attempts reset)" + \
            (f"; dependents back too: {', '.join(revived)}" if revived else "")
    return for_each(home, ids, action)


def _revive(home, held, doc, now):
    """lifecycle.revive, after taking the job's unique key back (refused while another live
    job holds it)."""
    from . import unique
    key = doc.get("unique_key")
    holder = unique.acquire(home.spool, key, doc["id"]) if key is not None else None
    if holder is not None:
        home.spool.unclaim(held)
        raise WrongState(f"job {doc['id']!r} cannot be retried: its unique key {key!r} is "
                         f"held by job {holder}")
    return lifecycle.revive(home, held, doc, now)


def _revive_dependents(home, job_id):
    """Jobs that went to dead/ only because job_id failed wait for it again (and their own
    dependents with them). Returns the ids revived."""
    from . import deps
    revived, todo = [], [job_id]
    while todo:
        dep = todo.pop()
        for dependent in deps.revived_dependents(home.index.list("dead"), dep):
            try:
                _apply(home, dependent, ("dead",), "retried from the DLQ", _revive)
            except (JobNotFound, WrongState, InvalidJob) as exc:
                log.warning("dependent %s of %s stays dead: %s", dependent, dep, exc)
                continue
            revived.append(dependent)
            todo.append(dependent)
    return revived


def retry_now(home, ids):
    """A failed job waiting for its retry time becomes ready now (attempts kept)."""
    ingest(home)

    def action(home, job_id):
        state = _locate(home, job_id, ("failed", "pending", "processing", "completed", "dead"),
                        "retried")
        if state != "failed":
            hint = " (use queuectl dlq retry for dead jobs)" if state == "dead" else ""
            raise WrongState(f"job {job_id!r} is {state}; only failed jobs waiting for their "
                             f"retry can be retried now{hint}")
        _apply(home, job_id, ("failed",), "retried", lifecycle.run_now)
        return "moved to pending (runs now)"
    return for_each(home, ids, action)


CANCEL_WAIT_SECONDS = 30


def cancel(home, ids, running=False):
    """Move pending, scheduled or failed jobs to dead/ as "cancelled" (retry them from the
    DLQ). A running job is refused unless `running`: then its worker kills its process group
    and buries it; we wait until it has left processing/."""
    ingest(home)

    def action(home, job_id):
        state = _locate(home, job_id, ("pending", "failed", "processing"), "cancelled")
        if state != "processing":
            _apply(home, job_id, ("pending", "failed"), "cancelled", lifecycle.cancel)
            return f"cancelled (was {state}; now in dead/)"
        if not running:
            raise WrongState(f"job {job_id!r} is running; use --running to kill and cancel it")
        _cancel_running(home, job_id)
        where = home.spool.find(job_id)
        return f"cancelled (was running, killed; now in {where[0] + '/' if where else '?'})"
    return for_each(home, ids, action)


def _cancel_running(home, job_id):
    """Leave a cancel marker for the running attempt and wait until it has left
    processing/. The marker is removed however this ends (done, given up, Ctrl-C): a request
    nobody waits for any more must not kill the job later."""
    if not home.spool.request_cancel(job_id):
        where = home.spool.find(job_id)
        raise WrongState(f"job {job_id!r} left processing/ before it could be cancelled "
                         f"(now {where[0] if where else 'gone'})")
    try:
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while "processing" in home.spool.find(job_id):
            if time.monotonic() > deadline:
                raise WrongState(f"job {job_id!r} is still running after "
                                 f"{CANCEL_WAIT_SECONDS}s; is its worker alive? "
                                 "(queuectl recover); the cancel request was withdrawn")
            time.sleep(0.05)
    finally:
        home.spool.clear_cancel(job_id)


FINAL_STATES = ("completed", "dead")


def wait(home, ids, timeout=None, poll=0.1):
    """Block until every job is completed or dead. Returns {id: state}. JobNotFound for an
    unknown id; Timeout (exit 124) when `timeout` seconds pass first."""
    from .errors import Timeout
    for job_id in ids:
        if not jobmod.ID_RE.match(job_id) or not home.spool.find(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        states = {}
        for job_id in ids:
            where = home.spool.find(job_id)
            if not where:
                raise JobNotFound(f"job {job_id!r} disappeared while waiting (purged?)")
            states[job_id] = next((s for s in where if s in FINAL_STATES), where[0])
        waiting = [i for i, s in states.items() if s not in FINAL_STATES]
        if not waiting:
            return states
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for "
                          f"{', '.join(f'{i} ({states[i]})' for i in waiting)}")
        time.sleep(poll)


PURGEABLE = ("completed", "dead", "rejected")


def purge(home, state, older_than_s):
    """Delete job files (and their output) in completed/, dead/ or rejected/ that have sat
    there longer than older_than_s seconds. Returns the names deleted."""
    if state not in PURGEABLE:
        raise InvalidJob(f"state must be one of: {', '.join(PURGEABLE)}; got {state!r}")
    cutoff = home.clock() - older_than_s
    names = home.spool.files_older_than(state, cutoff)
    for name in names:
        home.spool.purge(state, name)
    if names:
        ingest(home)        # drop the rows of what is gone
        log.info("purged %d %s jobs older than %gs", len(names), state, older_than_s)
    return names
