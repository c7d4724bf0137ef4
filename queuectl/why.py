"""`queuectl why ID`: one paragraph saying where a job is and what it waits for, built from
the spool (the job file, its dependencies' states, spool/PAUSED, rejected/ reasons), the
index (its place in line) and the workers' heartbeats (who is busy, who runs what).

Read-only. Each situation has one sentence; the paragraph joins them with '; '. Times are
shown in UTC as HH:MM:SS with the distance from now ('in 4m', '12m ago')."""

import os
import time

from . import deps, unique
from . import job as jobmod
from .queries import show
from .render import age

_ANY_QUEUE = None


def _clock(ts):
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts))


def _when(ts, now):
    return f"{_clock(ts)} (in {age(ts - now)})" if ts > now else f"{_clock(ts)} (now)"


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _label(worker):
    return f"{worker['host']}:{worker['pid']}"


def _workers(home):
    from .metrics import worker_rows
    from .queues import pool_queues
    return [w for w in worker_rows(home) if not w.get("stale")], pool_queues(home)


def _line_tail(record):
    tail = (record or {}).get("output_tail") or ""
    if not isinstance(tail, str):      # a dropped file may carry any history
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _last_error(doc):
    text = doc.get("last_error") or "none recorded"
    tail = _line_tail((doc.get("history") or [None])[-1])
    if tail and tail not in text:
        text += f" (output tail: {tail})"
    return text


def _ready_text(home, doc, now):
    from .queues import serving
    queue = jobmod.queue_of(doc)
    workers, pools = _workers(home)
    served = serving(workers, pools, queue)
    queues = None if not pools or any(pools.get(w.get("supervisor")) is None for w in served) \
        else sorted({q for w in served for q in pools[w.get("supervisor")]})
    ahead = home.index.ahead_of(queues, doc.get("priority", 0), jobmod.due_time(doc, now),
                                doc["id"], now)
    where = "" if queue == jobmod.DEFAULT_QUEUE else f" in queue {queue!r}"
    text = (f"pending{where}, ready, {_plural(ahead, 'job')} with higher priority or "
            "older ahead")
    if not workers:
        return text + ", no worker is running (queuectl worker start)"
    if not served:
        return text + f", no worker serves queue {queue!r}"
    busy = [w for w in served if w.get("current_job")]
    names = f" ({', '.join(_label(w) for w in busy)})" if busy else ""
    return text + f", {len(busy)} of {_plural(len(served), 'worker')} busy{names}"


CHAIN_SHOWN = 5      # dependencies of dependencies described, at most


def _dependency_text(home, doc, gate, now):
    return f"pending, waiting for dependency {gate.dep} ({_dep_detail(home, gate, now, 1)})"


def _dep_detail(home, gate, now, depth):
    """Where the awaited dependency is; for one itself blocked, the chain behind it."""
    dep = gate.dep
    if gate.where == "processing":
        runner = [w for w in _workers(home)[0] if w.get("current_job") == dep]
        attempts = _dep_attempts(home, dep, "processing") + 1
        on = f" on host {runner[0]['host']} (pid {runner[0]['pid']})" if runner else ""
        return f"processing{on}, attempt {attempts}"
    if gate.where == "failed":
        retry = (_read(home, "failed", dep) or {}).get("run_at")
        return "failed" + (f", retry at {_when(jobmod.parse_time(retry), now)}"
                           if retry else "")
    dep_doc = _read(home, "pending", dep) or {}
    inner = deps.gate(home.spool, dep_doc) if dep_doc.get("after") else None
    if inner is None or inner.status != deps.BLOCKED:
        return "pending"
    if depth >= CHAIN_SHOWN:
        return f"pending, itself waiting for {inner.dep} ..."
    return f"pending, itself waiting for {inner.dep} ({_dep_detail(home, inner, now, depth + 1)})"


def _dep_attempts(home, dep, state):
    return (_read(home, state, dep) or {}).get("attempts", 0)


def _read(home, state, job_id):
    try:
        data, _ = home.spool.read(state, job_id + jobmod.JOB_SUFFIX)
        return jobmod.loads_object(data)
    except Exception:
        return None


def _pending_text(home, doc, now):
    if doc.get("after"):
        gate = deps.gate(home.spool, doc)
        if gate.status == deps.BLOCKED:
            return _dependency_text(home, doc, gate, now)
        if gate.status == deps.FAILED:
            return (f"pending, goes to dead/ when a worker takes it: "
                    f"{deps.failed_reason(gate.dep)}")
        if gate.status == deps.UNKNOWN:
            return f"pending, will be rejected: {deps.unknown_reason(gate.dep)}"
    key = doc.get("unique_key")
    holder = unique.live_owner(home.spool, key) if key is not None else None
    if holder not in (None, doc["id"]):
        return (f"pending, will be rejected when a worker takes it: duplicate unique key "
                f"{key!r}: job {holder} holds it")
    due = jobmod.due_time(doc, now)
    if due > now:
        return f"scheduled: runs at {_when(due, now)}"
    return _ready_text(home, doc, now)


def _failed_text(doc, now):
    attempts = doc.get("attempts", 0)
    retry = doc.get("run_at")
    when = f" at {_when(jobmod.parse_time(retry), now)}" if retry else ""
    return (f"failed: retry {attempts} of {doc.get('max_retries')}{when}, "
            f"last error: {_last_error(doc)}")


def _dead_text(doc):
    last = (doc.get("history") or [{}])[-1]
    error = doc.get("last_error") or ""
    note = last.get("next") if isinstance(last.get("next"), str) else ""
    if error == "cancelled" or error.startswith("dependency "):
        reason = error
    elif note.startswith("dead: ") and note != "dead: retries exhausted":
        reason = note[len("dead: "):]
    else:
        reason = (f"retries exhausted after {_plural(doc.get('attempts', 0), 'attempt')}, "
                  f"last error: {_last_error(doc)}")
    return f"dead: {reason} (queuectl dlq retry {doc['id']} runs it again)"


def _processing_text(home, doc, now):
    runner = [w for w in _workers(home)[0] if w.get("current_job") == doc["id"]]
    attempt = doc.get("attempts", 0) + 1
    if not runner:
        return (f"processing, attempt {attempt}, but no live worker reports it (if its "
                "worker died, recovery retries it within seconds)")
    w = runner[0]
    from .history import from_log
    started = from_log(doc, home.spool.output_path(doc["id"]), now).get("started_at")
    running = f", running for {age(now - jobmod.parse_time(started))}" if started else ""
    return f"processing on host {w['host']} (pid {w['pid']}), attempt {attempt}{running}"


def _completed_text(doc):
    took = doc.get("duration_s")
    return (f"completed at {doc.get('finished_at')} after "
            f"{_plural(doc.get('attempts', 0), 'attempt')}"
            + (f" (took {took:.3f}s)" if isinstance(took, (int, float)) else ""))


def _paused_text(home, now):
    path = os.path.join(home.spool_dir, "PAUSED")
    try:
        since = os.lstat(path).st_mtime
    except FileNotFoundError:
        return None
    return f"paused: spool/PAUSED exists since {_clock(since)} ({age(now - since)} ago)"


def explain(home, job_id):
    """{id, state, text, parts}: why the job is where it is. JobNotFound if unknown."""
    info = show(home, job_id)
    now = home.clock()
    doc, state = dict(info.get("job") or {}), info["state"]
    doc["id"] = info["id"]           # a dropped file may leave its id to the file name
    if state == "rejected":
        parts = [f"rejected: {info.get('last_error')}"]
    elif state == "pending":
        parts = [_pending_text(home, doc, now)]
    elif state == "failed":
        parts = [_failed_text(doc, now)]
    elif state == "dead":
        parts = [_dead_text(doc)]
    elif state == "processing":
        parts = [_processing_text(home, doc, now)]
    else:
        parts = [_completed_text(doc)]
    if state in ("pending", "failed"):
        paused = _paused_text(home, now)
        if paused:
            parts.append(paused)
    return {"id": info["id"], "state": state, "queue": jobmod.queue_of(doc),
            "text": "; ".join(parts), "parts": parts}
