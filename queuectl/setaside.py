"""What a worker sets aside instead of putting it in its picker: jobs of queues it does not
serve (`worker start --queue`), and jobs whose dependencies (`after`) have not finished.

Per worker and in memory only; the spool stays the truth. A blocked job is remembered with
the dependency it waits for, so the worker that finishes that dependency looks at it again
at once (`finished`), and every worker re-judges its blocked jobs on the poll rescan
(`rescan`: a few lstat() each), so one blocked job is never claimed in a loop. A claim
re-checks everything under the lock (lifecycle.admit), so a stale judgement here costs at
most one claim and unclaim, never a wrong run."""

from . import deps
from . import job as jobmod


class SetAside:
    def __init__(self, spool, queues=None):
        self.spool = spool
        self.queues = frozenset(queues) if queues else None    # None: every queue
        self.blocked = {}          # (state, id) -> its after / after_any
        self.waiting_on = {}       # dependency id -> {(state, id) blocked on it}
        self.foreign = set()       # (state, id) of jobs of queues not served here

    def __contains__(self, key):
        return key in self.blocked or key in self.foreign

    def check(self, state, job_id, doc):
        """True if the job must not go into the picker now (it is remembered here)."""
        key = (state, job_id)
        self.foreign.discard(key)
        self.blocked.pop(key, None)
        if self.queues is not None and jobmod.queue_of(doc) not in self.queues:
            self.foreign.add(key)
            return True
        if doc.get("after"):
            verdict = deps.gate(self.spool, doc)
            if verdict.status == deps.BLOCKED:
                self.blocked[key] = {"after": doc["after"], "after_any": doc.get("after_any")}
                self.waiting_on.setdefault(verdict.dep, set()).add(key)
                return True
        return False

    def finished(self, dep):
        """The blocked jobs that waited for `dep` (which just finished): forgotten here and
        returned, to be looked at again now."""
        keys = [key for key in self.waiting_on.pop(dep, ()) if key in self.blocked]
        for key in keys:
            del self.blocked[key]
        return keys

    def rescan(self, state, present):
        """After listing `state` (its ids in `present`): forget what vanished; return the
        blocked jobs whose dependencies have moved on, forgotten here."""
        moved_on = []
        for key in [k for k in self.blocked if k[0] == state]:
            if key[1] not in present:
                del self.blocked[key]
            elif deps.gate(self.spool, self.blocked[key]).status != deps.BLOCKED:
                del self.blocked[key]
                moved_on.append(key)
        self.foreign = {k for k in self.foreign if k[0] != state or k[1] in present}
        return moved_on
