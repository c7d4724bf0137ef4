"""Turning what a user submits into validated job records: a JSON object, JSON Lines, or a
script file frozen into the job, plus the command-line overrides. Nothing is written until
every job in the submission is valid (publish is all-or-nothing on validation)."""

import os

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
    command = f"{interpreter} /dev/fd/9 9<<'{marker}'\n{body}{marker}\nexit $?"
    return {"command": command, "script": os.path.abspath(path)}


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
            given["run_at"] = jobmod.iso(now + jobmod.parse_duration(delay))
        except ValueError as exc:
            raise InvalidJob(f"--delay: {exc}") from None
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
        try:
            # A microsecond apart, so a batch keeps its order in created_at and in ids.
            ready = lifecycle.prepare(home, doc, now + (number - 1) * 1e-6)
        except InvalidJob as exc:
            raise InvalidJob([where + p for p in exc.problems]) from None
        size = len(jobmod.dumps(ready))
        if size > limit:
            raise InvalidJob(f"{where}job is {size} bytes, over max_job_bytes ({limit})")
        prepared.append(ready)
    return prepared


def enqueue(home, docs, overrides, now=None, if_exists="error"):
    """Build and publish; with if_exists='skip' a job whose unique key is taken is not
    added and the id of the job holding the key is returned in its place."""
    from . import admit
    now = home.clock() if now is None else now
    return admit.publish(home, build(home, docs, overrides, now), now, if_exists)
