"""Reading a job's output log (spool/output/<id>.log), optionally following it until the job
reaches a final or waiting state; its tail from an offset for pollers; and the attempts its
header and end lines record (written by runner.py)."""

import os
import re
import time

from .errors import JobNotFound
from .job import ID_RE

FOLLOW_POLL_SECONDS = 0.2
RUNNING_STATES = ("pending", "processing")


def stream_output(home, job_id, follow=False):
    """Yield the log's bytes; with follow, keep yielding until the job is no longer pending
    or running (then the rest of the log)."""
    if not ID_RE.match(job_id) or (not home.spool.find(job_id) and
                                   not os.path.exists(home.spool.output_path(job_id))):
        raise JobNotFound(f"no job with id {job_id!r} in {home.spool_dir}")
    path = home.spool.output_path(job_id)
    offset = 0
    while True:
        states = home.spool.find(job_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                while True:
                    chunk = os.pread(fd, 65536, offset)
                    if not chunk:
                        break
                    offset += len(chunk)
                    yield chunk
            finally:
                os.close(fd)
        if not follow or not any(s in RUNNING_STATES for s in states):
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def read_tail(home, job_id, offset=None, limit=65536):
    """(bytes, start, end) of a job's output log: from `offset` (at most `limit` bytes), or
    the last `limit` bytes when offset is None; (b"", 0, 0) while there is no log. For
    pollers that follow a log (the dashboard) without holding it open."""
    if not ID_RE.match(job_id):
        raise JobNotFound(f"no job with id {job_id!r} in {home.spool_dir}")
    try:
        fd = os.open(home.spool.output_path(job_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", 0, 0
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit) if offset is None or offset > size else offset
        data = os.pread(fd, min(limit, size - start), start)
    finally:
        os.close(fd)
    return data, start, start + len(data)


_HEADER = re.compile(r"=== queuectl \S+ attempt (\d+) at (\S+) on (?:worker )?(.*)")
_END = re.compile(r"=== end: (.*) \((\d+(?:\.\d+)?)s\) (.*)")
ATTEMPT_SCAN_BYTES = 16 << 20


def attempts(home, job_id):
    """One dict per attempt the log records: attempt, started_at, worker, and once its end
    line is written, outcome ("ok" or the error) and duration_s. The log holds what the job
    printed too, so this is a best-effort reading (only the first 16 MiB are scanned)."""
    data, _, _ = read_tail(home, job_id, 0, ATTEMPT_SCAN_BYTES)
    found = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.startswith("=== "):
            continue
        head = _HEADER.fullmatch(line)
        end = _END.fullmatch(line)
        if head:
            found.append({"attempt": int(head[1]), "started_at": head[2], "worker": head[3],
                          "outcome": None, "duration_s": None})
        elif end and found and found[-1]["outcome"] is None:
            found[-1].update(outcome=end[1], duration_s=float(end[2]))
    return found
