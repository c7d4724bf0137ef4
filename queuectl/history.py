"""Attempt history: one record per attempt, kept in the job file itself (`history`), so
`cat` and drop-in tools see every run, not only the last.

A record: attempt (its number), started_at, finished_at, duration_s, worker (host:pid),
outcome (completed, failed, timeout, killed by signal, worker died, stopped, cancelled),
exit_code, signal (when one ended it), output_tail (the attempt's last 20 lines, at most
2 KiB) and, for an attempt that did not complete, `next` (what the queue did about it:
"retry at ...", "dead: ..."). The list is bounded: the first FIRST_KEPT and the last
LAST_KEPT records are kept and `history_dropped` counts the ones dropped between them.

Pure except for reading the tail of the job's output log (best effort: an unreadable log
gives an empty tail, never an error)."""

import os
import re
import signal as signals

from . import job as jobmod

FIRST_KEPT = 3
LAST_KEPT = 10
TAIL_LINES = 20
TAIL_BYTES = 2048
TAIL_READ = TAIL_BYTES + 512      # bytes read from a log's end to find its tail
OUTCOMES = ("completed", "failed", "timeout", "killed by signal", "worker died", "stopped",
            "cancelled")
_HEADER_RE = re.compile(r"=== queuectl (\S+) attempt (\d+) at (\S+) on worker (\S+)\n")


def outcome_of(result, cancelled=False):
    """The outcome name of a finished run (runner.Result)."""
    if cancelled:
        return "cancelled"
    if result.stopped:
        return "stopped"
    if result.timed_out:
        return "timeout"
    if result.ok:
        return "completed"
    if result.signal is not None:
        return "killed by signal"
    return "failed"


def make_record(number, started_at, finished_at, worker, outcome, exit_code=None,
                signal=None, tail=""):
    duration = None if started_at is None else round(max(0.0, finished_at - started_at), 3)
    record = {"attempt": number,
              "started_at": None if started_at is None else jobmod.iso(started_at),
              "finished_at": jobmod.iso(finished_at), "duration_s": duration,
              "worker": worker, "outcome": outcome, "exit_code": exit_code}
    if signal is not None:
        record["signal"] = signal
    record["output_tail"] = tail
    return record


def from_run(doc, started_at, finished_at, worker_label, result, output, cancelled=False):
    """The record of an attempt a worker just ran (before its move is decided); `output`
    is the end of what it printed (runner.RunningJob.output_end)."""
    sig = None
    if result.signal is not None:
        sig = signals.Signals(result.signal).name if result.signal in \
            signals.valid_signals() else str(result.signal)
    worker = worker_label.split(" ", 1)[-1]
    return make_record(doc.get("attempts", 0) + 1, started_at, finished_at, worker,
                       outcome_of(result, cancelled), result.exit_code, sig,
                       tail_of(output))


def from_log(doc, log_path, now):
    """The record of an attempt whose worker died: its start and worker come from the
    attempt's header line in the output log (when the log holds that attempt's header)."""
    number = doc.get("attempts", 0) + 1
    started, worker, start = None, None, None
    text, offset = _read_end(log_path, 0, 65536)
    for match in _HEADER_RE.finditer(text):
        if match.group(1) == doc.get("id") and int(match.group(2)) == number:
            try:
                started = jobmod.parse_time(match.group(3))
            except ValueError:
                started = None
            worker = match.group(4)
            start = offset + len(text[:match.end()].encode("utf-8"))
    tail = output_tail(log_path, start) if start is not None else ""
    return make_record(number, started, now, worker, "worker died", tail=tail)


def append(doc, record):
    """Add a record to the job's history, keeping it bounded."""
    history = list(doc.get("history") or [])
    history.append(record)
    while len(history) > FIRST_KEPT + LAST_KEPT:
        del history[FIRST_KEPT]
        doc["history_dropped"] = doc.get("history_dropped", 0) + 1
    doc["history"] = history


def note(doc, text):
    """Say what the queue did about the last attempt (retry time, or why it is dead)."""
    history = doc.get("history")
    if history:
        history[-1]["next"] = text


def last(doc):
    history = doc.get("history") or []
    return history[-1] if history else None


def output_tail(log_path, start):
    """The last TAIL_LINES lines (at most TAIL_BYTES) written to the log after offset
    `start`, without queuectl's own '=== end' footer."""
    if log_path is None or start is None:
        return ""
    return tail_of(_read_end(log_path, start, TAIL_READ)[0])


def tail_of(text):
    """output_tail of the text at the end of a log (at least its last TAIL_READ bytes)."""
    if not text:
        return ""
    lines = [line for line in text.splitlines() if not line.startswith("=== end: ")]
    tail = "\n".join(lines[-TAIL_LINES:])
    encoded = tail.encode("utf-8")
    if len(encoded) > TAIL_BYTES:
        tail = encoded[-TAIL_BYTES:].decode("utf-8", "ignore")
    return tail


def _read_end(path, start, size):
    """(text, offset) of at most the last `size` bytes of the file from `start` on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "", 0
    try:
        data, offset = read_end(fd, start, size)
        return data.decode("utf-8", "replace"), offset
    except OSError:
        return "", 0
    finally:
        os.close(fd)


def read_end(fd, start, size):
    """(bytes, offset) of at most the last `size` bytes of an open file from `start` on:
    a file with nothing past `start` costs one fstat, no read."""
    end = os.fstat(fd).st_size
    offset = max(start, end - size)
    if end <= offset:
        return b"", offset
    return os.pread(fd, end - offset, offset), offset


def attach(home, rows):
    """Add each job's `history` (read from its file) to index rows, for list --json."""
    for row in rows:
        if row.get("state") in (None, "rejected"):
            continue
        try:
            data, _ = home.spool.read(row["state"], row["id"] + jobmod.JOB_SUFFIX)
            doc = jobmod.loads_object(data)
        except Exception:        # moved on or unreadable meanwhile: no history shown
            doc = {}
        row["history"] = doc.get("history") or []
        if doc.get("history_dropped"):
            row["history_dropped"] = doc["history_dropped"]
    return rows
