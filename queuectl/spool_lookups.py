"""Looking up jobs in the spool without moving them: which states hold an id, the
candidate names in a directory, the directories' mtimes (for ingest's rescans), stray files
that can never be jobs. Part of the Spool class (a mixin over its layout and its safe
lstat). Each answer is a snapshot: files move while it is taken, so callers treat it as a
hint (find() looks again before it believes "nowhere"). A directory that is missing holds
nothing; no lookup raises for it."""

import os

from .job import JOB_SUFFIX
from .spoolnames import JOB_STATES, is_candidate, job_name

_OTHER_STATES = tuple(s for s in JOB_STATES if s != "processing")


class Lookups:
    def state_mtimes(self):
        """{dir: mtime_ns} for every job-holding directory (rejected included)."""
        result = {}
        for name in (*JOB_STATES, "rejected"):
            try:
                result[name] = os.stat(self.dir(name)).st_mtime_ns
            except FileNotFoundError:
                result[name] = 0
        return result

    def names(self, state):
        """Candidate job names in one directory (unsorted)."""
        try:
            return [name for name in os.listdir(self.dir(state)) if is_candidate(name)]
        except FileNotFoundError:
            return []

    def holds_jobs(self):
        """True if any state directory holds a job file (stops at the first one found)."""
        for state in JOB_STATES:
            try:
                with os.scandir(self.dir(state)) as entries:
                    if any(is_candidate(entry.name) for entry in entries):
                        return True
            except OSError:
                continue
        return False

    def find(self, job_id):
        """The job states holding <id>.json right now (normally one; two after a crash).
        A job moving against the scan order (dead or failed -> processing -> pending) can
        slip between two lstat calls and be seen nowhere, so an empty answer is checked
        again before it is believed."""
        name = job_name(job_id)
        for _ in range(3):
            found = [s for s in JOB_STATES if os.path.lexists(os.path.join(self.root, s, name))]
            if found:
                break
        return found

    def others(self, job_id):
        """The states other than processing/ holding <id>.json, looked at once each: what a
        worker asks about a job it has just claimed into processing/ (a duplicate id). A copy
        moving while we look can only be one going through processing/, which our claim
        holds, so one look is enough here (unlike find)."""
        name = job_name(job_id)
        # access() answers without raising (lexists() raises and catches per absent state)
        if self._dir_fds is not None:
            return [s for s in _OTHER_STATES if os.access(name, os.F_OK, dir_fd=self._dir_fd(s),
                                                          follow_symlinks=False)]
        return [s for s in _OTHER_STATES
                if os.access(f"{self._prefix}{s}/{name}", os.F_OK, follow_symlinks=False)]

    def foreign(self, state, older_than, now):
        """[(name, age_s)] of files in a job directory that can never be jobs (hidden, or not
        ending in .json) and have not changed for `older_than` seconds: a tool staged them
        and never renamed them, or someone dropped them under the wrong name."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if is_candidate(name):
                continue
            st = self.lstat(state, name)
            if st is not None and now - st.st_mtime >= older_than:
                found.append((name, now - st.st_mtime))
        return sorted(found)

    def ids_with_prefix(self, prefix):
        """Sorted ids of the jobs in any state whose id starts with `prefix`."""
        found = set()
        for state in JOB_STATES:
            found.update(job_id for job_id in (n[:-len(JOB_SUFFIX)] for n in self.names(state))
                         if job_id.startswith(prefix))
        return sorted(found)
