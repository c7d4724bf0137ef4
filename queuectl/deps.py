"""Dependencies between jobs: a job's `after` lists the ids it waits for. It becomes ready
once all of them are in completed/; if one lands in dead/ the job goes to dead/ with
"dependency X failed" (pueue's rule), unless `after_any` is true: then it runs once they have
all finished, whatever the outcome (task-spooler's -D).

The spool is the only record: a dependency's state is the directory its file is in, so a
worker judges a blocked job with a few lstat() calls and never needs the index. Ids named in
`after` must exist when a job is enqueued (so no cycle can be built); a dependency that no
longer exists anywhere makes the job unrunnable, and a worker rejects it with that reason."""

from .errors import UnknownDependency

READY, BLOCKED, FAILED, UNKNOWN = "ready", "blocked", "failed", "unknown"


class Gate:
    """What a job's dependencies allow: status READY, BLOCKED (dep still pending, failed or
    processing; `where` is its state), FAILED (dep is dead) or UNKNOWN (dep is nowhere)."""
    __slots__ = ("status", "dep", "where")

    def __init__(self, status, dep=None, where=None):
        self.status, self.dep, self.where = status, dep, where

    def __repr__(self):
        return f"Gate({self.status!r}, {self.dep!r}, {self.where!r})"


def gate(spool, doc):
    """Judge a job's `after` list against the spool right now."""
    waiting = None
    for dep in doc.get("after") or ():
        where = spool.find(dep)
        if not where:
            return Gate(UNKNOWN, dep)
        if "completed" in where:
            continue
        if "dead" in where:
            if doc.get("after_any"):
                continue
            return Gate(FAILED, dep, "dead")
        if waiting is None:
            waiting = Gate(BLOCKED, dep, where[0])
    return waiting or Gate(READY)


def failed_reason(dep):
    return f"dependency {dep} failed"


def unknown_reason(dep):
    return f"dependency {dep!r} does not exist"


def check_known(spool, docs):
    """Refuse a submission naming a dependency that is not in the spool (nor earlier in the
    same batch): raises UnknownDependency."""
    earlier = set()
    for number, doc in enumerate(docs, 1):
        for dep in doc.get("after") or ():
            if dep not in earlier and not spool.find(dep):
                where = f"job {number}: " if len(docs) > 1 else ""
                raise UnknownDependency(f"{where}after: no job with id {dep!r} "
                                        "(a dependency must already exist)")
        earlier.add(doc["id"])


def revived_dependents(rows, dep):
    """Ids among dead jobs' index rows that are dead only because `dep` failed."""
    reason = failed_reason(dep)
    return [row["id"] for row in rows if row.get("last_error") == reason]
