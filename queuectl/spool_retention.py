"""Ageing out and deleting jobs (retention, `purge`): which files of a state directory are
older than a cutoff, when a rejected file was rejected, and deleting a job file with its
output log (or a rejected file with its reason). Part of the Spool class (a mixin over its
layout), kept apart from the moves: nothing here moves a job, it only ever deletes, and only
what its caller chose. A file already gone is not an error."""

import os
import stat

from .job import JOB_SUFFIX
from .spoolnames import REASON_SUFFIX, unlink_quietly


class Retention:
    def files_older_than(self, state, cutoff):
        """Names in a state directory last changed before `cutoff`; in rejected/, names
        rejected before it (see rejected_at)."""
        if state == "rejected":
            return [name for name in self.rejected_names()
                    if (self.rejected_at(name) or cutoff) < cutoff]
        old = []
        for name in self.names(state):
            st = self.lstat(state, name)
            if st is not None and st.st_mtime < cutoff:
                old.append(name)
        return old

    def rejected_at(self, name):
        """When rejected/<name> was rejected: its reason file's mtime (written at the
        rejection). The file itself keeps the bytes and the mtime it was dropped with, so
        its own mtime (the fallback when the reason is missing) is the drop time."""
        st = self.lstat("rejected", name + REASON_SUFFIX) or self.lstat("rejected", name)
        return st.st_mtime if st is not None else None

    def purge(self, state, name):
        """Delete a job file, its output log, and (for rejected/) its reason file. A
        rejected directory is removed with its contents."""
        path = os.path.join(self.dir(state), name)
        if state == "rejected":
            unlink_quietly(path + REASON_SUFFIX)
            st = self.lstat(state, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                import shutil
                shutil.rmtree(path, ignore_errors=True)
                return
        else:
            unlink_quietly(self.output_path(name[:-len(JOB_SUFFIX)]))
        unlink_quietly(path)
