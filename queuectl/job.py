"""The job record: strict JSON parsing, field validation, ids, timestamps and the retry
formula. Pure: no I/O, no clock reads except through the `now` arguments callers pass.

Invariants: a validated job is a dict whose known fields have the types in FIELDS, whose
`id` matches ID_RE, and which carries every unknown key exactly as it was given. Failures
raise InvalidJob listing every problem found, each naming the field and the bad value."""

import json
import json.encoder
import math
import os
import re
from datetime import datetime, timezone

from .errors import InvalidJob

_encode_basestring = json.encoder.encode_basestring     # ensure_ascii=False's, in C
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
JOB_SUFFIX = ".json"

# Fields the queue understands; anything else is kept verbatim and ignored.
INT_FIELDS = ("priority", "max_retries", "attempts")
TIME_FIELDS = ("run_at", "created_at", "updated_at", "finished_at")
KNOWN_FIELDS = ("id", "command", "cwd", "timeout", "exit_code", "last_error", "duration_s",
                *INT_FIELDS, *TIME_FIELDS)
# Job semantics (issue 11): attempt history, dependencies, retry policy, queue, unique key.
SEMANTIC_FIELDS = ("history", "history_dropped", "after", "after_any", "retry_on",
                   "no_retry_on", "queue", "unique_key")
KNOWN_FIELDS = KNOWN_FIELDS + SEMANTIC_FIELDS
DEFAULT_QUEUE = "default"
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
MAX_AFTER = 1000
MAX_UNIQUE_KEY = 1024
# A `state` key in a dropped file is ignored: the directory is the state.
IGNORED_FIELDS = ("state",)
PRIORITY_LIMIT = 2**31 - 1
MAX_RETRIES_LIMIT = 1000
MAX_DELAY_SECONDS = 100 * 365 * 86400    # a retry is never scheduled further ahead
CREATED_SLACK = 1.0    # how far a created_at may lie ahead of now and still order jobs
# Deepest nesting of arrays and objects accepted. Fixed and far below the interpreter's
# recursion limit, so whether a file parses never depends on how deep the caller's stack is
# (a worker accepting a job that `reindex` or `show` then finds "nested too deeply").
MAX_NESTING = 256


# ---- time -------------------------------------------------------------------------------

_iso_seconds = {}     # whole second -> its text: a worker formats the same few seconds


def iso(ts):
    """Epoch seconds -> ISO-8601 UTC with microseconds, fixed width so strings sort. The
    same text as datetime's strftime("%Y-%m-%dT%H:%M:%S.%fZ") (the fraction rounded half to
    even as datetime.fromtimestamp does), with the whole second's text reused: a worker
    formats several times per job, the job's created_at and now."""
    frac, whole = math.modf(ts)
    micro = round(frac * 1e6)
    if micro >= 1000000:
        whole, micro = whole + 1, micro - 1000000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1000000
    whole = int(whole)
    text = _iso_seconds.get(whole)
    if text is None:
        if len(_iso_seconds) > 4096:
            _iso_seconds.clear()
        text = _iso_seconds[whole] = datetime.fromtimestamp(whole, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micro:06d}Z"


_parsed = {}     # text -> epoch seconds, for the few times a worker reads again and again


def parse_time(text):
    """ISO-8601 -> epoch seconds; a time without an offset is taken as UTC."""
    try:
        return _parsed[text]
    except (KeyError, TypeError):
        pass
    value = _parse_time(text)
    if len(_parsed) > 2048:
        _parsed.clear()
    _parsed[text] = value
    return value


def _parse_time(text):
    if not isinstance(text, str):
        raise ValueError("not a string")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text):
    """'90', '90s', '5m', '2h', '7d' -> seconds (float). Raises ValueError with a hint."""
    match = _DURATION_RE.match(str(text).strip())
    if not match:
        raise ValueError(f"duration must look like 30s, 5m, 2h or 7d, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


# Crockford's base32 in lowercase: digits sort before letters, so ids sort as their times.
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
_HOST_TAG = None


def _base32(number, width):
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_B32[digit])
    return "".join(reversed(chars))


def host_tag():
    """Two base32 characters derived from the host name, so ids made on different hosts
    at the same microsecond differ even before their random part."""
    global _HOST_TAG
    if _HOST_TAG is None:
        import zlib
        _HOST_TAG = _base32(zlib.crc32(os.uname().nodename.encode()) & 0x3FF, 2)
    return _HOST_TAG


def new_id(now):
    """A generated id of 19 characters, like `0kqw3v8d2f1-m7x9cq4`: the time in
    microseconds since 1970 as 11 base32 characters (so ids sort by creation time until
    the year 3058), a dash, 2 characters from the host name and 25 random bits. Unique
    across hosts and processes without coordination, short enough for an 80-column list."""
    micros = int(round(now * 1_000_000))
    random = int.from_bytes(os.urandom(4), "big") & 0x1FFFFFF
    return f"{_base32(micros, 11)}-{host_tag()}{_base32(random, 5)}"


def retry_delay(attempts, backoff_base, backoff_max):
    """Seconds to wait before the next attempt after `attempts` attempts have failed; never
    more than MAX_DELAY_SECONDS, so now + delay is always a valid time."""
    try:
        delay = float(backoff_base) ** attempts
    except OverflowError:
        delay = math.inf
    return min(delay, float(backoff_max), MAX_DELAY_SECONDS)


def is_exhausted(job):
    """True once the attempts made exceed max_retries: max_retries 3 means 4 runs."""
    return job["attempts"] > job["max_retries"]


# ---- strict JSON --------------------------------------------------------------------------

def _no_duplicate_keys(pairs):
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return value


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _bounded_int(text):
    digits = len(text) - text.startswith("-")
    if digits > 300:
        raise ValueError(f"a number has {digits} digits (at most 300 are allowed)")
    return int(text)


def _nesting_exceeds(value, limit):
    """True if arrays/objects nest more than `limit` levels deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _find_surrogate(value, depth=0):
    """Path of the first string holding a lone surrogate (not encodable as UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _find_surrogate(key) or _find_surrogate(item, depth + 1):
            return f"key {key!r}" if isinstance(key, str) else f"item {key}"
    return None


def loads_object(data):
    """Bytes -> dict, stricter than json.loads: UTF-8 only (no BOM), no NaN/Infinity, no
    duplicate keys, an object at top level, no lone surrogates. Hostile nesting and huge
    numbers surface as RecursionError/ValueError inside json; both become InvalidJob."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise InvalidJob("file starts with a UTF-8 byte order mark; write plain UTF-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidJob("file is UTF-16; jobs must be UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise InvalidJob("empty file: expected a JSON object")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                           parse_constant=_no_constants, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        # Some of json's messages already end in "at" ("Unterminated string starting at").
        message = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
        raise InvalidJob(f"invalid JSON: {message} at line {exc.lineno} column {exc.colno}") \
            from None
    except RecursionError:
        raise InvalidJob("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise InvalidJob(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJob(f"a job must be a JSON object, got {_json_type(value)}")
    # Both walks below are skipped when the bytes rule the problem out (most jobs): nesting
    # is never deeper than the brackets in the text, and a lone surrogate can only come from
    # a \u escape (strict UTF-8 decoding refuses encoded surrogates).
    if data.count(b"[") + data.count(b"{") > MAX_NESTING and \
            _nesting_exceeds(value, MAX_NESTING):
        raise InvalidJob("invalid JSON: nested too deeply")
    try:
        where = _find_surrogate(value) if b"\\u" in data else None
    except RecursionError:
        raise InvalidJob("invalid JSON: nested too deeply") from None
    if where:
        raise InvalidJob(f"{where} holds a lone surrogate, which is not valid Unicode")
    return value


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def dumps(job):
    """The on-disk form: pretty enough to `cat`, UTF-8, stable key order, one field per
    line. A job whose values are all scalars (most jobs) is exactly json.dumps(job,
    indent=2); lists of objects (the attempt history) get one record per line, and other
    nested values are written compactly by json's C encoder (indent=2 would use its slow
    Python one, which made writing a job with a history several times slower). Keys and
    scalars are written without the encoder's per-call overhead."""
    if not job:
        return b"{}\n"
    quote = _encode_basestring
    parts = []
    for key, value in job.items():
        name = quote(key) if type(key) is str else _ENCODE(key)
        text = _scalar_text(value)
        if text is None:
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                records = ",\n".join("    " + _ENCODE(v) for v in value)
                text = f"[\n{records}\n  ]"
            else:
                text = _ENCODE(value)      # raises for what JSON cannot hold (NaN)
        parts.append(f"  {name}: {text}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def _scalar_text(value):
    """json.dumps' text of a str, None, bool, int or finite float; None for anything else."""
    kind = type(value)
    if kind is str:
        return _encode_basestring(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return None


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


# ---- validation ---------------------------------------------------------------------------

def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_int(job, name, low, high, problems):
    value = job.get(name)
    if value is None:
        return
    if not _is_int(value):
        problems.append(f"{name} must be an integer, got {value!r}")
    elif not low <= value <= high:
        problems.append(f"{name} must be between {low} and {high}, got {value}")


def _check_time(job, name, problems):
    value = job.get(name)
    if value is None:
        return
    try:
        job[name] = iso(parse_time(value))
    except (ValueError, TypeError, OverflowError, OSError):
        problems.append(f"{name} must be an ISO-8601 time like 2026-01-31T12:00:00Z, "
                        f"got {value!r}")


def _check_command(job, problems):
    command = job.get("command")
    if command is None:
        problems.append("command is required (the shell command to run)")
    elif not isinstance(command, str):
        problems.append(f"command must be a string, got {_json_type(command)}")
    elif not command.strip():
        problems.append("command must not be empty")
    elif "\x00" in command:
        problems.append("command must not contain NUL characters")


def _check_optional(job, problems):
    timeout = job.get("timeout")
    if timeout is not None and not (_is_number(timeout) and timeout > 0):
        problems.append(f"timeout must be a number of seconds > 0 or null, got {timeout!r}")
    cwd = job.get("cwd")
    if cwd is not None and not (isinstance(cwd, str) and cwd and "\x00" not in cwd):
        problems.append(f"cwd must be a directory path, got {cwd!r}")
    for name in ("last_error",):
        if job.get(name) is not None and not isinstance(job[name], str):
            problems.append(f"{name} must be a string, got {job[name]!r}")
    if job.get("exit_code") is not None and not _is_int(job["exit_code"]):
        problems.append(f"exit_code must be an integer, got {job['exit_code']!r}")
    if job.get("duration_s") is not None and not _is_number(job["duration_s"]):
        problems.append(f"duration_s must be a number, got {job['duration_s']!r}")


def check_id(job_id, what="id"):
    """Raise InvalidJob unless job_id follows the id rule."""
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise InvalidJob(f"{what} must be 1-128 characters of letters, digits, '.', '_' or "
                         f"'-', starting with a letter or digit, got {job_id!r}")


# Unknown keys that are common metadata words, never taken for a misspelled field.
NOT_TYPOS = ("script", "comment", "comments", "commit")
# Keys people write for a field that has another name here: refused like a misspelling.
FIELD_HINTS = {"delay": "'delay' is not a job field: use run_at (an ISO-8601 time) or "
                        "`enqueue --delay`"}


def _distance(a, b):
    """Edit distance counting a swap of two neighbours as one edit (Damerau)."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


_NEVER_TYPOS = frozenset((*KNOWN_FIELDS, *IGNORED_FIELDS, *NOT_TYPOS))   # keys taken as they are


def misspelled(key):
    """The known field an unknown key is most likely a typo of, or None. Unknown keys stay
    allowed (other tools' metadata); only keys of 4 or more characters within 1 edit of a
    field (2 from 6 characters, 3 from 8) or listed in FIELD_HINTS are taken for mistakes."""
    if key in _NEVER_TYPOS:
        return None
    if key in FIELD_HINTS:
        return FIELD_HINTS[key]
    folded = key.lower().replace("-", "_")
    allowed = 1 if len(key) < 6 else 2 if len(key) < 8 else 3
    best = min(KNOWN_FIELDS, key=lambda f: _distance(folded, f))
    if len(key) >= 4 and _distance(folded, best) <= allowed:
        return f"unknown field {key!r}: did you mean {best!r}?"
    return None


def validate(job, stem=None):
    """Check a job dict in place (normalising times); returns it. `stem` is the file name's
    stem for a job read from the spool: the id must equal it, and fills it when absent."""
    problems = []
    for name in IGNORED_FIELDS:
        job.pop(name, None)
    if stem is not None and job.get("id") is None:
        job["id"] = stem
    job_id = job.get("id")
    if job_id is not None:
        try:
            check_id(job_id)
        except InvalidJob as exc:
            problems.extend(exc.problems)
        else:
            if stem is not None and job_id != stem:
                problems.append(f"id {job_id!r} does not match the file name {stem + JOB_SUFFIX!r}")
    # Known keys (most keys of most jobs) skip the call: misspelled() returns None for them.
    problems.extend(filter(None, (misspelled(key) for key in job
                                  if key not in _NEVER_TYPOS and isinstance(key, str))))
    _check_command(job, problems)
    _check_int(job, "priority", -PRIORITY_LIMIT, PRIORITY_LIMIT, problems)
    _check_int(job, "max_retries", 0, MAX_RETRIES_LIMIT, problems)
    _check_int(job, "attempts", 0, 10**9, problems)
    for name in TIME_FIELDS:
        _check_time(job, name, problems)
    _check_optional(job, problems)
    check_semantics(job, problems)
    if problems:
        raise InvalidJob(problems)
    return job


def _exit_codes(job, name, problems):
    value = job.get(name)
    if value is None:
        return
    if not isinstance(value, list) or not all(_is_int(c) and 0 <= c <= 255 for c in value):
        problems.append(f"{name} must be a list of exit codes 0-255, got {value!r}")


def check_semantics(job, problems):
    """after/after_any, retry_on/no_retry_on, queue, unique_key, history: their types only
    (whether the ids in `after` exist is checked where the spool can be read)."""
    after = job.get("after")
    if after is not None:
        if not isinstance(after, list) or not all(isinstance(a, str) and ID_RE.match(a)
                                                  for a in after):
            problems.append(f"after must be a list of job ids, got {after!r}")
        elif len(after) > MAX_AFTER:
            problems.append(f"after lists {len(after)} jobs (at most {MAX_AFTER})")
        elif job.get("id") is not None and job["id"] in after:
            problems.append(f"after: job {job['id']!r} cannot depend on itself")
    if job.get("after_any") is not None and not isinstance(job["after_any"], bool):
        problems.append(f"after_any must be true or false, got {job['after_any']!r}")
    _exit_codes(job, "retry_on", problems)
    _exit_codes(job, "no_retry_on", problems)
    queue = job.get("queue")
    if queue is not None and not (isinstance(queue, str) and QUEUE_RE.match(queue)):
        problems.append("queue must be 1-64 characters of letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit, got {queue!r}")
    key = job.get("unique_key")
    if key is not None and not (isinstance(key, str) and key and "\x00" not in key and
                                len(key) <= MAX_UNIQUE_KEY):
        problems.append(f"unique_key must be a non-empty string of at most {MAX_UNIQUE_KEY} "
                        f"characters, got {key!r}")
    history = job.get("history")
    if history is not None and not (isinstance(history, list) and
                                    all(isinstance(r, dict) for r in history)):
        problems.append("history must be a list of objects (written by workers)")
    dropped = job.get("history_dropped")
    if dropped is not None and not (_is_int(dropped) and dropped >= 0):
        problems.append(f"history_dropped must be an integer >= 0, got {dropped!r}")


def queue_of(job):
    return job.get("queue") or DEFAULT_QUEUE


def complete(job, defaults, now):
    """Fill the fields a minimal (dropped) job leaves out, so the file says everything.
    `defaults` maps max_retries and created_at; existing values are never replaced."""
    for name in ("priority", "attempts"):
        if job.get(name) is None:
            job[name] = 0
    if job.get("max_retries") is None:
        job["max_retries"] = defaults["max_retries"]
    if job.get("created_at") is None:
        job["created_at"] = defaults.get("created_at") or iso(now)
    if job.get("updated_at") is None:
        job["updated_at"] = job["created_at"]
    return job


SCRIPT_MARKER = "9<<'QUEUECTL_SCRIPT_"


def script_of(command):
    """The original path of a script frozen into `command` by `enqueue --file`, or None.
    The command's first line reads `QUEUECTL_SCRIPT=PATH ... INTERPRETER /dev/fd/9
    9<<'MARK'`; a job frozen before the variable existed gives "script"."""
    if not isinstance(command, str):
        return None
    first = command.split("\n", 1)[0]
    if SCRIPT_MARKER not in first:
        return None
    import shlex
    try:
        words = shlex.split(first)
    except ValueError:
        return None
    for word in words:
        if word.startswith("QUEUECTL_SCRIPT="):
            return word[len("QUEUECTL_SCRIPT="):]
    return "script"


def frozen_text(command):
    """(interpreter, script text) of a command made by `enqueue --file`, else None."""
    if script_of(command) is None:
        return None
    first, _, rest = command.partition("\n")
    marker = first[first.index(SCRIPT_MARKER) + 4:].rstrip("'")
    body, found, _ = rest.rpartition(f"\n{marker}\n")
    if not found:
        body, found, _ = rest.partition(f"{marker}\n")
        if not found:
            return None
    import shlex
    words = shlex.split(first[:first.index(SCRIPT_MARKER)])
    interpreter = " ".join(w for w in words[:-1] if not w.startswith("QUEUECTL_SCRIPT"))
    return interpreter, body + "\n"


def due_time(job, now):
    """Epoch seconds from which the job may run. Only run_at schedules a job: without it the
    job is ready now, and created_at (capped at now) only orders it among the ready ones. A
    created_at in the future (a drop-in's mtime after `cp -p`, tar or clock skew) must never
    delay it."""
    if job.get("run_at"):
        return parse_time(job["run_at"])
    created = job.get("created_at")
    if not created:
        return 0.0
    created = parse_time(created)
    # Up to CREATED_SLACK ahead is rounding and batch order, not the future: a batch's jobs
    # get created_at 1 us apart after the `now` they are published with, stored times are
    # rounded to the microsecond, and a reindex must compute the same due times.
    return created if created <= now + CREATED_SLACK else now
