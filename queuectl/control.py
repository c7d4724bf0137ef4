"""Operator actions on jobs by id: DLQ retry, cancel, retry now. Each takes a list of ids and
returns one Outcome per id, so one bad id never hides what happened to the others. Every
state change goes through a claim and a lifecycle move."""

from dataclasses import dataclass

from . import job as jobmod
from . import lifecycle
from .errors import InvalidJob, JobNotFound, WrongState
from .ingest import ingest
from .spool import NotAJobFile


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
    held = lifecycle.claim(home, state, job_id)
    if held is None:
        raise WrongState(f"job {job_id!r} is being moved by another process; try again")
    try:
        doc = lifecycle.parse_claimed(home, held, now)
    except (InvalidJob, NotAJobFile) as exc:
        home.spool.unclaim(held)
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

    def action(home, job_id):
        _apply(home, job_id, ("dead",), "retried from the DLQ", lifecycle.revive)
        return "moved to pending (attempts reset)"
    return for_each(home, ids, action)
