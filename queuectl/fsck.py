"""fsck: check the spool's invariants the way `postsuper -s` checks Postfix's queue, and with
repair fix what is safe. Checks: unowned files in processing/ (leftovers and orphans), ids in
two state directories, stale files in tmp/, files that are not jobs where jobs should be,
stale cancel markers, unique keys left behind by a crash (spool/keys/), foreign files (hidden
or not *.json) left in a job directory, and index rows that disagree with the spool. Repairs
go through lifecycle (recover, reject) and reindex, so fsck never invents a state change of
its own."""

import os
from dataclasses import dataclass

from . import job as jobmod
from . import lifecycle
from .config import foreign_after
from .ingest import judge, reindex
from .spool import JOB_STATES, display_name

STALE_TMP_SECONDS = 86400
# For an id found in several states, the copy that is kept: the furthest along.
PRECEDENCE = ("completed", "dead", "failed", "pending")


@dataclass
class Problem:
    kind: str
    where: str
    detail: str
    fixed: str = None

    def as_dict(self):
        return {"kind": self.kind, "where": self.where, "detail": self.detail,
                "fixed": self.fixed}


def _check_processing(home, repair, now, problems):
    for name in home.spool.names("processing"):
        job_id = name[:-len(jobmod.JOB_SUFFIX)]
        held = home.spool.probe_orphan(job_id)
        if held is None:
            continue                          # a live worker holds it
        others = [s for s in home.spool.find(job_id) if s != "processing"]
        home.spool.release(held, unlink=False)
        kind = "leftover" if others else "orphan"
        detail = (f"copy of a job already in {others[0]}/" if others else
                  "no worker holds it (its worker died)")
        problem = Problem(kind, f"processing/{name}", detail)
        if repair:
            result = lifecycle.recover(home, job_id, now)
            problem.fixed = f"recovered: {result}" if result else None
        problems.append(problem)


def _check_duplicates(home, repair, now, problems):
    seen = {}
    for state in JOB_STATES:
        if state == "processing":
            continue
        for name in home.spool.names(state):
            seen.setdefault(name, []).append(state)
    for name, states in seen.items():
        if len(states) < 2:
            continue
        keep = min(states, key=lambda s: PRECEDENCE.index(s))
        problem = Problem("two-states", name,
                          f"in {', '.join(s + '/' for s in states)}; keeping {keep}/")
        if repair:
            moved = [lifecycle.reject(home, s, name, f"duplicate of {keep}/{name} (fsck)",
                                      now=now) for s in states if s != keep]
            problem.fixed = f"moved the other copies to rejected/ ({', '.join(map(str, moved))})"
        problems.append(problem)


def _check_tmp(home, repair, now, problems):
    tmp = home.spool.dir("tmp")
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if now - st.st_mtime < STALE_TMP_SECONDS:
            continue
        problem = Problem("stale-tmp", f"tmp/{display_name(name)}", "older than a day")
        if repair and not os.path.isdir(path):
            os.unlink(path)
            problem.fixed = "deleted"
        problems.append(problem)


def _check_foreign(home, repair, now, problems):
    limit = foreign_after(home.settings)
    for state in JOB_STATES:
        if state == "processing":
            continue          # its dot-files are cancel markers, checked with the claims
        for name, age_s in home.spool.foreign(state, limit, now):
            problem = Problem("foreign-file", f"{state}/{display_name(name)}",
                              f"never a job (hidden or not *.json), unchanged for "
                              f"{int(age_s)}s")
            if repair:
                lifecycle.reject(home, state, name, "not a job file name (fsck)", now=now)
                problem.fixed = "moved to rejected/"
            problems.append(problem)


def _check_files(home, repair, now, problems):
    for state in JOB_STATES:
        if state == "processing":
            continue
        for name in home.spool.names(state):
            where = f"{state}/{display_name(name)}"
            verdict = judge(home, state, name, now)
            if verdict.action == "reject":
                problem = Problem("not-a-job", where, verdict.reason)
                if repair:
                    lifecycle.reject(home, state, name, verdict.reason, now=now)
                    problem.fixed = "moved to rejected/"
                problems.append(problem)


def _check_cancel_markers(home, repair, problems):
    """Cancel markers (processing/.<id>.cancel) that target no running attempt: left by a
    `cancel --running` that was killed. They can never fire (a marker names its attempt),
    but they are litter; repair deletes them."""
    for job_id, why in sorted(home.spool.stale_cancels().items()):
        problem = Problem("stale-cancel", f"processing/.{job_id}.cancel", why)
        if repair:
            home.spool.clear_cancel(job_id)
            problem.fixed = "deleted"
        problems.append(problem)


def _check_keys(home, repair, now, problems):
    """Unique-key files in spool/keys/ whose job is no longer pending, failed or processing
    (a crash between a job's last move and freeing its key)."""
    from . import unique
    for name, holder, key in unique.stale_keys(home.spool, now):
        problem = Problem("stale-key", f"keys/{name}",
                          f"unique key {key!r} still held for job {holder!r}, which is no "
                          "longer pending, failed or processing")
        if repair and unique.remove_stale(home.spool, name, now):
            problem.fixed = "removed (the key is free again)"
        problems.append(problem)


def _check_index(home, problems):
    """Index rows with no file, and files with no (or a wrong) row. Compared without
    ingesting first, so fsck reports what the index really holds."""
    for state in JOB_STATES:
        # Names that are not ids can never be indexed: _check_files reports them as not-a-job.
        on_disk = {stem for stem in (n[:-len(jobmod.JOB_SUFFIX)] for n in home.spool.names(state))
                   if jobmod.ID_RE.match(stem)}
        indexed = home.index.ids_in(state)
        for job_id in sorted(indexed - on_disk):
            problems.append(Problem("index-row-without-file", f"{state}/{job_id}.json",
                                    "the index lists a job that is not there"))
        for job_id in sorted(on_disk - indexed):
            problems.append(Problem("file-without-index-row", f"{state}/{job_id}.json",
                                    "the index does not list it in this state"))


def fsck(home, repair=False):
    """Returns the problems found (each with what was done when repairing)."""
    now = home.clock()
    problems = []
    if not home.spool.exists():
        return problems
    _check_processing(home, repair, now, problems)
    _check_duplicates(home, repair, now, problems)
    _check_tmp(home, repair, now, problems)
    _check_foreign(home, repair, now, problems)
    _check_files(home, repair, now, problems)
    _check_cancel_markers(home, repair, problems)
    _check_keys(home, repair, now, problems)
    index_problems = []
    _check_index(home, index_problems)
    if repair and index_problems:
        reindex(home, now)
        for problem in index_problems:
            problem.fixed = "reindexed"
    return problems + index_problems
