"""Turning what a user submits into validated job records: a JSON object, JSON Lines, or a
script file frozen into the job, plus the command-line overrides. Nothing is written until
every job in the submission is valid (publish is all-or-nothing on validation)."""

import os
import shlex

from . import job as jobmod
from . import lifecycle
from .errors import InvalidJob

INTERPRETERS = {".py": "python3", ".sh": "/bin/sh", ".bash": "bash", ".zsh": "zsh",
                ".pl": "perl", ".rb": "ruby", ".js": "node"}


def parse_submission(text):
    """One JSON object, or JSON Lines (one object per line); returns a list of dicts."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    try:
        return [jobmod.loads_object(data)]
    except InvalidJob as whole_error:
        lines = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise whole_error
    docs = []
    for number, line in lines:
        try:
            docs.append(jobmod.loads_object(line))
        except InvalidJob as exc:
            raise InvalidJob(f"line {number}: {exc}") from None
    return docs


def parse_stdin(data):
    """Jobs read from stdin: like parse_submission, but empty input says so."""
    if not data.strip():
        raise InvalidJob("no jobs on stdin (give one JSON object or JSON Lines)")
    return parse_submission(data)


def script_job(path):
    """A job that runs the script's current content, frozen into the command (later edits
    to the file don't change the job). Interpreter: the shebang, else the extension."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise InvalidJob(f"cannot read script {path!r}: {exc.strerror}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJob(f"script {path!r} is not UTF-8 text") from None
    if "\x00" in text:
        raise InvalidJob(f"script {path!r} contains NUL bytes (a binary file?)")
    first = text.split("\n", 1)[0]
    if first.startswith("#!") and first[2:].strip():
        interpreter = first[2:].strip()
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in INTERPRETERS:
            raise InvalidJob(f"cannot tell how to run {path!r}: add a shebang line or use "
                             f"one of the extensions {', '.join(sorted(INTERPRETERS))}")
        interpreter = INTERPRETERS[ext]
    marker = f"QUEUECTL_SCRIPT_{os.urandom(4).hex()}"
    body = text if text.endswith("\n") else text + "\n"
    # The frozen text reaches the interpreter on fd 9, not on stdin: fed on stdin, a `read`
    # or `cat` in the script would get the script's own remaining text (sh reads its input
    # in 8 KiB blocks, bash line by line) instead of the job's stdin. The trailing `exit`
    # makes the shell fork for the interpreter rather than exec it, so an inherited fd 9
    # (such as a worker's locked job fd) stays open in the job's shell.
    # Inside the frozen copy $0 (and Python's __file__) is /dev/fd/9: the original file may
    # have changed or gone since. QUEUECTL_SCRIPT names the original path and
    # QUEUECTL_SCRIPT_DIR its directory, for scripts that look for files beside themselves.
    origin = os.path.abspath(path)
    command = (f"QUEUECTL_SCRIPT={shlex.quote(origin)} "
               f"QUEUECTL_SCRIPT_DIR={shlex.quote(os.path.dirname(origin))} "
               f"{interpreter} /dev/fd/9 9<<'{marker}'\n{body}{marker}\nexit $?")
    return {"command": command, "script": origin}


def apply_overrides(docs, overrides, now):
    """Options given on the command line win over the JSON's fields."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "job_id" in given:    # the CLI's name for --id (click can't call a parameter "id")
        given["id"] = given.pop("job_id")
    if "id" in given and len(docs) != 1:
        raise InvalidJob("--id can only be used with a single job")
    delay = given.pop("delay", None)
    if delay is not None:
        try:
            seconds = jobmod.parse_duration(delay)
        except ValueError as exc:
            raise InvalidJob(f"Invalid value for '--delay': {exc}") from None
        try:
            given["run_at"] = jobmod.iso(now + seconds)
        except (ValueError, OverflowError, OSError):
            raise InvalidJob(f"Invalid value for '--delay': {delay} is out of range (the job "
                             "would run after the year 9999)") from None
    for doc in docs:
        doc.update(given)
    return docs


def build(home, docs, overrides, now):
    """Validated, completed job records ready to publish; InvalidJob names the job."""
    docs = apply_overrides(docs, overrides, now)
    prepared = []
    limit = home.settings.max_job_bytes
    for number, doc in enumerate(docs, 1):
        where = f"job {number}: " if len(docs) > 1 else ""
        if isinstance(doc, dict) and doc.get("attempts"):
            raise InvalidJob(f"{where}attempts is counted by the workers: leave it out or give "
                             f"0 at enqueue, got {doc['attempts']!r}")
        try:
            # A microsecond apart, so a batch keeps its order in created_at and in ids.
            ready = lifecycle.prepare(home, doc, now + (number - 1) * 1e-6)
        except InvalidJob as exc:
            raise InvalidJob([where + p for p in exc.problems]) from None
        size = _size_bound(ready)
        if size > limit:
            size = len(jobmod.dumps(ready))
        if size > limit:
            raise InvalidJob(f"{where}job is {size} bytes, over max_job_bytes ({limit})")
        prepared.append(ready)
    return prepared


def _size_bound(doc):
    """An upper bound of len(jobmod.dumps(doc)) that needs no encoding, for a job of str,
    number, bool and null values (the encoded file is checked when the bound is too big):
    a character takes at most 6 bytes (a \\u00XX escape; UTF-8 takes at most 4)."""
    total = 4
    for key, value in doc.items():
        if isinstance(value, str):
            total += 6 * len(value)
        elif value is None or isinstance(value, (bool, int, float)):
            total += 32 if not isinstance(value, int) or abs(value) < 10**30 else 1 << 30
        else:
            return 1 << 30        # nested values: encode to know
        total += 6 * len(key) + 8
    return total


def enqueue(home, docs, overrides, now=None, if_exists="error"):
    """Build and publish; with if_exists='skip' a job whose unique key is taken is not
    added and the id of the job holding the key is returned in its place."""
    from . import admit
    now = home.clock() if now is None else now
    return admit.publish(home, build(home, docs, overrides, now), now, if_exists)
