"""The spool's control files, beside the jobs: the pause flag (spool/PAUSED), cancel
markers (processing/.<id>.cancel), every host's worker heartbeats (workers/<id>.json) and
host stop requests (workers/<host>.stop). Part of the Spool class (a mixin over its layout
and its tmp/ writes), kept apart because none of them is a job or moves one.
Invariants: a marker or request is written by tmp + fsync + rename, so a reader sees the old
one or the new one, never a torn file; a cancel marker names one attempt (attempt_mark), so
one left behind by a killed writer never cancels a later attempt. Readers treat a missing or
unreadable file as "none" and never raise for it."""

import json
import os

from . import fsops
from .spoolnames import (CANCEL_PREFIX, CANCEL_SUFFIX, GONE_ERRNOS, PAUSE_FILE, STOP_SUFFIX,
                         WORKERS_DIR, NotAJobFile, unlink_quietly, attempt_mark, job_name)


class ControlFiles:
    # ---- pausing ----------------------------------------------------------------------------
    def is_paused(self):
        return os.access(self._prefix + PAUSE_FILE, os.F_OK, follow_symlinks=False)

    def set_paused(self, paused):
        """The pause flag is a plain file (spool/PAUSED) so `ls` shows it and any tool can
        pause the queue with `touch`."""
        path = os.path.join(self.root, PAUSE_FILE)
        if paused:
            self.ensure_layout()
            os.close(fsops.open_(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        else:
            unlink_quietly(path)

    # ---- cancelling ------------------------------------------------------------------------
    def _cancel_marker(self, job_id):
        return os.path.join(self.dir("processing"), CANCEL_PREFIX + job_id + CANCEL_SUFFIX)

    def request_cancel(self, job_id):
        """Ask the worker running job_id's current attempt to kill it and bury it as
        cancelled: processing/.<id>.cancel (a dot-file, never taken for a job) naming that
        attempt by attempt_mark of its file. A marker left behind (its writer was killed)
        never matches a later attempt, whose claim is of a rewritten file. Returns False if
        the job is not in processing/ (any more)."""
        try:
            data, _ = self.read("processing", job_name(job_id))
        except NotAJobFile:
            return False
        self.write_private("processing", CANCEL_PREFIX + job_id + CANCEL_SUFFIX,
                           attempt_mark(data).encode() + b"\n")
        return True

    def cancel_requested(self, job_id, claimed_data):
        """True if a cancel marker targets the attempt claimed with these bytes."""
        target = self._cancel_target(job_id)
        return target is not None and target == attempt_mark(claimed_data)

    def _cancel_target(self, job_id):
        """The attempt mark a cancel marker names; None without one, "" if unreadable."""
        try:
            fd = os.open(self._cancel_marker(job_id),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            return ""
        try:
            return os.read(fd, 256).decode("ascii", "replace").strip()
        except OSError:
            return ""
        finally:
            os.close(fd)

    def stale_cancels(self):
        """{job id: why} for cancel markers that target no running attempt: the job left
        processing/, or it runs another attempt than the one the marker names."""
        try:
            names = os.listdir(self.dir("processing"))
        except FileNotFoundError:
            return {}
        stale = {}
        for name in names:
            if not (name.startswith(CANCEL_PREFIX) and name.endswith(CANCEL_SUFFIX)):
                continue
            job_id = name[len(CANCEL_PREFIX):-len(CANCEL_SUFFIX)]
            try:
                data, _ = self.read("processing", job_name(job_id))
            except NotAJobFile:
                stale[job_id] = "the job is not in processing/"
                continue
            if self._cancel_target(job_id) != attempt_mark(data):
                stale[job_id] = "it names an earlier attempt than the one running"
        return stale

    def clear_cancel(self, job_id):
        unlink_quietly(self._cancel_marker(job_id))

    # ---- what every host must see: worker heartbeats and stop requests ------------------
    def workers_dir(self):
        return os.path.join(self.root, WORKERS_DIR)

    def write_worker(self, record):
        """Publish a worker's heartbeat as workers/<worker_id>.json (tmp + fsync + rename),
        so `status` on any host sees every host's workers."""
        os.makedirs(self.workers_dir(), mode=0o755, exist_ok=True)
        tmp = self._write_tmp(json.dumps(record).encode())
        fsops.replace(tmp, os.path.join(self.workers_dir(), record["worker_id"] + ".json"))

    def remove_worker(self, worker_id):
        unlink_quietly(os.path.join(self.workers_dir(), worker_id + ".json"))

    def worker_records(self):
        """Every heartbeat record in workers/ (unreadable or half-gone ones skipped)."""
        records = []
        try:
            names = os.listdir(self.workers_dir())
        except FileNotFoundError:
            return records
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                record = self._read_record(os.path.join(self.workers_dir(), name))
                if isinstance(record, dict) and isinstance(record.get("worker_id"), str):
                    records.append(record)
        return records

    @staticmethod
    def _read_record(path):
        """A small JSON file that its writer replaces by rename every few seconds: a read
        that meets the old, just-unlinked inode (ENOENT on a network filesystem) is tried
        again on the new one. None if it is gone or unreadable."""
        for _ in range(3):
            try:
                with open(path, "rb") as f:
                    return json.loads(f.read(65536))
            except OSError as exc:
                if exc.errno not in GONE_ERRNOS or not os.path.lexists(path):
                    return None
            except ValueError:
                return None
        return None

    def stop_request_path(self, host):
        return os.path.join(self.workers_dir(), host + STOP_SUFFIX)

    def request_host_stop(self, host, timeout):
        """Ask every supervisor of `host` to stop (they poll this file): workers/<host>.stop
        holding the shutdown timeout, rewritten each time so a change is seen."""
        os.makedirs(self.workers_dir(), mode=0o755, exist_ok=True)
        tmp = self._write_tmp(json.dumps({"timeout": timeout,
                                          "nonce": os.urandom(6).hex()}).encode())
        fsops.replace(tmp, self.stop_request_path(host))

    def stop_request(self, host):
        """(identity, timeout) of the host's stop request file, or None. The identity
        (inode, mtime) changes with every new request."""
        path = self.stop_request_path(host)
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                timeout = float(json.loads(f.read(4096)).get("timeout", 30))
        except (OSError, ValueError, AttributeError, TypeError):
            return None
        return (st.st_ino, st.st_mtime_ns), timeout
