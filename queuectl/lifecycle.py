"""Job lifecycle: the only code that changes a job's state. One function per move; each
moves the file in the spool first and updates the index after (spool first, index after).

Legal moves (MOVES below): publish (-> pending), claim (pending|failed|dead -> processing:
workers claim from pending and failed, cancel from pending and failed, revive from dead),
complete/fail/bury/requeue (processing -> completed|failed|dead|pending), revive and cancel
and retry go through a claim too, so every rewrite of a job happens under its flock with
exactly one copy visible outside processing/. reject moves an unusable file to rejected/.
admit, under the claim just before a run, sends a job that must never run (a failed or
vanished dependency, a unique key held by another job) to dead/ or rejected/ instead.
A rewrite that finds its destination taken (a duplicate id) sends the job to rejected/
instead, so nothing is ever overwritten or lost.

Lifecycle decides and records: a worker hands the end of an attempt over as what happened
(finish_attempt with the run's result), and the move it leads to is chosen here; every
move records itself (_record: the job's index row and, for the end of an attempt, its
outcome in the metrics), so no caller counts outcomes."""

from . import job as jobmod
from .errors import DuplicateId, InvalidJob
from .index import job_row
from .spool import NotAJobFile, display_name
from .logs import DEBUG, log

_generated = set()      # ids prepare generated (new, so publish need not look for them)

# move: (the states it takes a job from, the state it leads to). Every rewriting move goes
# through processing/ under the job's flock; _finish looks its destination up here.
MOVES = {
    "publish": (None, "pending"),
    "claim": ("pending|failed|dead", "processing"),
    "complete": ("processing", "completed"),
    "fail": ("processing", "failed"),
    "bury": ("processing", "dead"),
    "cancel": ("processing", "dead"),
    "unrunnable": ("processing", "dead"),      # a dependency failed: dead without an attempt
    "requeue": ("processing", "pending"),
    "revive": ("processing", "pending"),
    "retry": ("processing", "pending"),
    "reject": ("any", "rejected"),
}
# What each move out of an attempt counts in the metrics (moves not listed count nothing).
OUTCOMES = {"complete": "completed", "fail": "failed", "bury": "failed", "cancel": "cancelled",
            "requeue": "requeued"}


def _index_job(home, what, job, state, now):
    home.index_update(what, home.index.upsert_job, dict(job), state, _due(job, now))


def _record(home, move, job, state, now, wait_s=None, run_s=None):
    """Record a finished move in the index: the job's row and, for the end of an attempt,
    its outcome (OUTCOMES; a burial counts as a failed attempt plus a dead job). This is
    the only place outcomes are counted."""
    _index_job(home, move, job, state, now)
    outcome = OUTCOMES.get(move)
    if outcome is not None:
        home.index_update("metrics", home.index.record_outcome, outcome, now, wait_s, run_s,
                          ("dead",) if move == "bury" else ())


def _due(job, now):
    try:
        return jobmod.due_time(job, now)
    except (ValueError, OverflowError):
        return 0.0


# ---- enqueue ----------------------------------------------------------------------------

def prepare(home, doc, now):
    """Validate a submitted job and fill every field, so the file says everything."""
    if not isinstance(doc, dict):
        raise InvalidJob("a job must be a JSON object")
    doc = jobmod.validate(dict(doc))
    if doc.get("id") is None:
        doc["id"] = jobmod.new_id(now)
        _generated.add(doc["id"])
    return jobmod.complete(doc, {"max_retries": home.settings.max_retries}, now)


def publish(home, docs, now):
    """Write validated jobs into pending/. All are checked before any is written: an id
    already in the spool or repeated in the batch raises DuplicateId and writes nothing."""
    seen = set()
    for doc in docs:
        # A generated id (new_id: the time to the microsecond plus 40 random bits) is new;
        # only ids a submitter chose are looked for in the spool.
        chosen = doc["id"] not in _generated
        _generated.discard(doc["id"])
        if doc["id"] in seen or chosen and home.spool.find(doc["id"]):
            raise DuplicateId(f"a job with id {doc['id']!r} already exists")
        seen.add(doc["id"])
    home.spool.ensure_layout()
    home.spool.publish_many([(doc["id"], jobmod.dumps(doc)) for doc in docs])
    written = docs
    home.index_update("enqueue", home.index.upsert,
                      [job_row(d, "pending", _due(d, now)) for d in written])
    if log.isEnabledFor(DEBUG):      # per job, so DEBUG (and enqueue imports no logging)
        for doc in written:
            log.debug("enqueued %s: %s", doc["id"], doc["command"][:200])
    return [d["id"] for d in written]


# ---- claiming ---------------------------------------------------------------------------

def parse_job(home, data, stem, st, now):
    """The job in a file's bytes (`st` its stat), validated and completed with defaults.
    Raises InvalidJob. The mtime only stands in for a missing created_at (capped at now: a
    future mtime from `cp -p` or clock skew is no creation time); it never schedules it."""
    doc = jobmod.validate(jobmod.loads_object(data), stem=stem)
    defaults = {"max_retries": home.settings.max_retries,
                "created_at": None if doc.get("created_at") else
                jobmod.iso(min(st.st_mtime, now))}
    return jobmod.complete(doc, defaults, now)


def parse_claimed(home, claim, now):
    """The job held by a claim (parse_job). Raises InvalidJob."""
    return parse_job(home, claim.data, claim.job_id, claim.st, now)


def claim(home, state, job_id):
    """Lock and move <state>/<id> into processing/. None if another worker got it."""
    taken = home.spool.claim(state, job_id)
    if taken is not None:
        log.debug("claimed %s from %s", job_id, state)
    return taken


def admit(home, claim, doc, now):
    """Under the claim, just before a run: a job whose dependency failed goes to dead/, one
    whose dependency no longer exists or whose unique key another live job holds goes to
    rejected/; it never runs. Returns None if the job may run, else the state it went to."""
    if doc.get("after"):
        from . import deps      # imported only for jobs that have dependencies
        verdict = deps.gate(home.spool, doc)
        if verdict.status == deps.FAILED:
            return bury_unrunnable(home, claim, doc, deps.failed_reason(verdict.dep),
                                   now) or "rejected"
        if verdict.status == deps.UNKNOWN:
            reject_claimed(home, claim, deps.unknown_reason(verdict.dep), now)
            return "rejected"
    key = doc.get("unique_key")
    if key is not None:
        from . import unique
        holder = unique.acquire(home.spool, key, doc["id"])
        if holder is not None:
            reject_claimed(home, claim, f"duplicate unique key {key!r}: job {holder} holds it",
                           now)
            return "rejected"
    return None


def mark_running(home, doc, now):
    """Index a job as running. Called once its command has run for a group commit's time
    (worker._wait), never between the claim and the spawn (nothing but the spawn may delay
    a job's start)."""
    _index_job(home, "claim", doc, "processing", now)


# ---- finishing (all from processing/) ---------------------------------------------------

def finish_attempt(home, claim, doc, result, now):
    """The end of an attempt: the run's result (runner.Result) decides the move. Cancelled
    -> dead; stopped with its worker -> pending, no attempt counted; ok -> completed; any
    other failure -> failed (retried with backoff) or dead. Returns the new state (None if
    the job went to rejected/ over a taken id)."""
    wait_s = max(0.0, result.started_at - max(_ts(doc.get("created_at")),
                                              _ts(doc.get("run_at")))) \
        if result.started_at else None
    if result.cancelled:
        home.spool.clear_cancel(doc["id"])
        return cancel(home, claim, doc, now, wait_s, result.duration_s)
    if result.stopped:
        return requeue(home, claim, doc, now)
    if result.ok:
        return complete(home, claim, doc, result, now, wait_s)
    return fail(home, claim, doc, result.error, result.exit_code, result.duration_s, now,
                wait_s)


def _ts(stamp):
    try:
        return jobmod.parse_time(stamp) if stamp else 0.0
    except ValueError:
        return 0.0


def _finish(home, claim, doc, move, now, wait_s=None, run_s=None):
    """Rewrite the claimed job into MOVES[move]'s state and record the move."""
    dest = MOVES[move][1]
    doc["updated_at"] = jobmod.iso(now)
    try:
        try:
            home.spool.finish(claim, jobmod.dumps(doc), dest)
        except DuplicateId:
            if dest != "pending":
                raise
            # A newcomer dropped into pending/ while ours ran (its claim could not move it
            # into processing/, so it waited there): ours was first and keeps the id.
            reject_newcomer(home, claim.job_id, "processing", now)
            home.spool.finish(claim, jobmod.dumps(doc), dest)
    except DuplicateId as exc:
        # Another job took this id while ours ran: keep ours, never overwrite theirs.
        moved = home.spool.reject("processing", claim.job_id + jobmod.JOB_SUFFIX,
                                  f"duplicate id while finishing ({exc})")
        home.spool.release(claim, unlink=False)
        log.error("job %s could not move to %s/: %s; kept as rejected/%s",
                  claim.job_id, dest, exc, moved)
        return None
    _record(home, move, doc, dest, now, wait_s, run_s)
    if dest in FINAL_STATES:
        _finished(home, doc, dest)
    return dest


FINAL_STATES = ("completed", "dead")


def _finished(home, doc, dest):
    """A job reached completed/ or dead/: free its unique key, run the hooks. Neither may
    affect the job (it has already moved): failures are logged."""
    if doc.get("unique_key") is not None:
        from . import unique
        try:
            unique.release(home.spool, doc["unique_key"], doc["id"])
        except OSError as exc:
            log.error("could not free unique key of %s: %s (queuectl fsck --repair)",
                      doc["id"], exc)
    from . import hooks      # not at import: enqueue never finishes a job
    hooks.job_finished(home, doc, dest)


def complete(home, claim, doc, result, now, wait_s=None):
    doc.update(attempts=doc.get("attempts", 0) + 1, exit_code=result.exit_code,
               duration_s=result.duration_s, finished_at=jobmod.iso(now), last_error=None)
    doc.pop("run_at", None)
    state = _finish(home, claim, doc, "complete", now, wait_s, result.duration_s)
    if log.isEnabledFor(DEBUG):
        log.debug("completed %s (attempt %d, %.3fs)", doc["id"], doc["attempts"],
                  result.duration_s)
    return state


def fail(home, claim, doc, error, exit_code, duration_s, now, wait_s=None):
    """Count the attempt; retry later with backoff, or bury once retries are exhausted."""
    from . import history, retry_policy   # not at import: `queuectl enqueue` needs neither
    doc.update(attempts=doc.get("attempts", 0) + 1, exit_code=exit_code, last_error=error,
               duration_s=duration_s, finished_at=jobmod.iso(now))
    settings = home.settings
    permanent = retry_policy.permanent_reason(doc, exit_code, settings)
    if permanent or jobmod.is_exhausted(doc):
        history.note(doc, f"dead: {permanent or 'retries exhausted'}")
        return bury(home, claim, doc, now, wait_s)
    delay = jobmod.retry_delay(doc["attempts"], settings.backoff_base, settings.backoff_max)
    doc["run_at"] = jobmod.iso(now + delay)
    history.note(doc, f"retry at {doc['run_at']}")
    state = _finish(home, claim, doc, "fail", now, wait_s, duration_s)
    log.info("failed %s (attempt %d of %d): %s; retry in %gs", doc["id"], doc["attempts"],
             doc["max_retries"] + 1, error, delay)
    return state


def bury(home, claim, doc, now, wait_s=None):
    doc.pop("run_at", None)
    state = _finish(home, claim, doc, "bury", now, wait_s, doc.get("duration_s"))
    log.warning("dead %s after %d attempts: %s", doc["id"], doc["attempts"],
                doc.get("last_error"))
    return state


def bury_unrunnable(home, claim, doc, reason, now):
    """A job that can never run (a dependency failed): to dead/ without an attempt."""
    doc.update(last_error=reason, finished_at=jobmod.iso(now))
    doc.pop("run_at", None)
    state = _finish(home, claim, doc, "unrunnable", now)
    log.warning("dead %s: %s", doc["id"], reason)
    return state


def requeue(home, claim, doc, now, reason="worker stopping"):
    """Back to pending/ without counting an attempt (graceful stop, paused or unready)."""
    state = _finish(home, claim, doc, "requeue", now)
    log.info("requeued %s: %s", doc["id"], reason)
    return state


# What the last attempt wrote: cleared when a job gets a fresh start from the DLQ, so
# `show` never mixes a pending state with an old error or finish time.
ATTEMPT_FIELDS = ("exit_code", "last_error", "finished_at", "duration_s")


def revive(home, claim, doc, now):
    """DLQ retry: attempts reset and the last attempt's fields cleared; ready from now (its
    wait is counted from the retry, not from its creation)."""
    for name in ATTEMPT_FIELDS:
        doc.pop(name, None)
    doc.update(attempts=0, run_at=jobmod.iso(now))
    state = _finish(home, claim, doc, "revive", now)
    log.info("revived %s from the dead letter queue", doc["id"])
    return state


def run_now(home, claim, doc, now):
    """A failed job waiting for its retry time becomes ready now (attempts kept)."""
    doc["run_at"] = jobmod.iso(now)
    state = _finish(home, claim, doc, "retry", now)
    log.info("retry now %s", doc["id"])
    return state


def cancel(home, claim, doc, now, wait_s=None, run_s=None):
    doc.update(last_error="cancelled", finished_at=jobmod.iso(now))
    doc.pop("run_at", None)
    state = _finish(home, claim, doc, "cancel", now, wait_s, run_s)
    log.info("cancelled %s", doc["id"])
    return state


# ---- rejecting and recovering -----------------------------------------------------------

def reject(home, state, name, reason, size=None, now=0.0):
    """Move an unusable file to rejected/ untouched and record why (index and log)."""
    stored = home.spool.reject(state, name, reason)
    if stored is None:
        return None
    shown = display_name(stored)
    home.index_update("reject", home.index.upsert_rejected,
                      [(shown, reason, jobmod.iso(now), size)])
    if state != "rejected" and name.endswith(jobmod.JOB_SUFFIX):
        job_id = display_name(name)[:-len(jobmod.JOB_SUFFIX)]
        home.index_update("reject", home.index.delete_if, job_id, state)
    log.warning("rejected %s/%s -> rejected/%s: %s", state, display_name(name), shown, reason)
    return shown


def reject_newcomer(home, job_id, first, now):
    """Duplicate ids: the copy that was there first wins. New jobs only ever arrive in
    pending/ (enqueue and drop-ins), and every other move refuses to replace, so a
    pending/<id> beside a copy in `first` is the newcomer: it goes to rejected/."""
    name = job_id + jobmod.JOB_SUFFIX
    st = home.spool.lstat("pending", name)
    return reject(home, "pending", name, f"duplicate id: {job_id!r} is already in {first}/ "
                  "(the copy that was there first keeps the id)",
                  st.st_size if st else None, now)


def reject_claimed(home, claim, reason, now):
    """A claimed file turned out not to be a job: rejected/, byte for byte."""
    name = claim.job_id + jobmod.JOB_SUFFIX
    try:
        home.spool.settle_claim(claim, "rejected")
        return reject(home, "processing", name, reason, claim.st.st_size, now)
    finally:
        home.spool.release(claim, unlink=False)


def recover(home, job_id, now):
    """Recover processing/<id> if no live process holds its lock. Returns what was done:
    None (owned or gone), 'leftover' (a copy already moved on: deleted), 'rejected' (not a
    job, or another job under a taken id) or the new state."""
    held = home.spool.probe_orphan(job_id)
    if held is None:
        return None
    others = [s for s in home.spool.find(job_id) if s != "processing"]
    if others and _is_leftover(home, held, others[0], now):
        # Crash between finishing's move and its unlink: the job lives on in others[0].
        home.spool.release(held, unlink=True)
        log.info("recovery: deleted leftover processing/%s (job is in %s/)", job_id, others[0])
        return "leftover"
    older = [s for s in others if s != "pending"]
    if older:
        # Another job under a taken id (a duplicate drop-in whose worker died before
        # rejecting it): its bytes go to rejected/, never deleted.
        return reject_claimed(home, held, f"duplicate id: {job_id!r} is already in "
                              f"{older[0]}/", now) and "rejected"
    if others:
        # A newcomer dropped into pending/ while ours ran: ours was first, it is rejected.
        reject_newcomer(home, job_id, "processing", now)
    try:
        doc = parse_claimed(home, held, now)
    except (InvalidJob, NotAJobFile) as exc:
        return reject_claimed(home, held, f"unreadable in processing/: {exc}", now) and "rejected"
    try:
        unrun = _never_ran(home, held, doc, now)
        if unrun is not None:
            return unrun
        log.warning("recovery: %s had no live worker (worker died)", job_id)
        from . import history
        history.append(doc, history.from_log(doc, home.spool.output_path(job_id), now))
        return fail(home, held, doc, "worker died", None, None, now)
    finally:
        if held.fd >= 0:     # the move failed (a full disk): unlock it for the next try
            home.spool.release(held, unlink=False)


def _never_ran(home, held, doc, now):
    """An orphan whose dependencies were not all completed cannot have run (a job runs only
    once they are, and completed is final): its worker died between the claim and putting it
    back or burying it. Finish that move instead of counting an attempt. None otherwise."""
    if not doc.get("after"):
        return None
    from . import deps
    verdict = deps.gate(home.spool, doc)
    if verdict.status == deps.FAILED:
        return bury_unrunnable(home, held, doc, deps.failed_reason(verdict.dep), now)
    if verdict.status == deps.BLOCKED:
        return requeue(home, held, doc, now, reason=f"waits for dependency {verdict.dep}")
    return None


def _is_leftover(home, held, state, now):
    """Is the orphan `held` the old copy of the job now in `state` (moved on by a worker
    that died before unlinking it)? Every move keeps a job's command and created_at; a
    file that differs in them is another job that only shares the id."""
    try:
        mine = parse_claimed(home, held, now)
        data, _ = home.spool.read(state, held.job_id + jobmod.JOB_SUFFIX)
        theirs = jobmod.validate(jobmod.loads_object(data), stem=held.job_id)
    except (InvalidJob, NotAJobFile):
        return False
    return all(mine.get(key) == theirs.get(key) for key in ("command", "created_at"))


def unclaim(home, claim):
    """Put a claimed file back untouched (not ready yet, or still being written)."""
    home.spool.unclaim(claim)
