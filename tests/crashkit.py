"""Shared by the crash-point and power-loss tests: the transitions (how to set up the spool
before each, and a driver that performs it in a child process), and a checker that recovers
a spool the way an operator would and lists every way it breaks the spool's invariants.

The driver is this file run as a script (`python crashkit.py HOME TRANSITION`), or a child
forked by `python crashkit.py --serve` (DriverServer: the same, without paying Python's
start-up per case): it performs the transition and prints `ACK <id> <state>`
once the library call that promises something (publish, a finish) has returned. With
QUEUECTL_FAULT=exit@K it dies at the K-th spool operation (fsops' own hook); with
CRASHKIT_RECORD=PATH it appends every spool operation (op, path, flags, data, src) and each
ACK to PATH as JSON lines, for the power-loss model."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
JOB_STATES = ("pending", "processing", "failed", "completed", "dead")
SPOOL_DIRS = ("tmp", *JOB_STATES, "rejected", "output", "keys")
BAD_DROP = b'{"command": "echo half'          # a drop-in cut off mid-write
DUPLICATE_DROP = b'{"command": "echo again"}\n'  # a drop-in reusing a finished job's id
FOREIGN_ENV = ("QUEUECTL_HOME", "QUEUECTL_SPOOL", "QUEUECTL_DATA", "QUEUECTL_FAULT",
               "QUEUECTL_FAULT_LOG", "CRASHKIT_RECORD", "QUEUECTL_NO_RENAMEAT2",
               "QUEUECTL_TEST_PLANT")


def scratch_root(fallback):
    """A fresh directory on tmpfs (/dev/shm) when there is one: fsync there costs nothing,
    and these tests model durability themselves, so hundreds of homes do not queue behind
    other tests' fsyncs on a busy disk. Else a directory under `fallback`."""
    import tempfile
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        try:
            if os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 512 << 20:
                return tempfile.mkdtemp(prefix="queuectl-crash-", dir=shm)
        except OSError:
            pass
    return tempfile.mkdtemp(prefix="crash-", dir=fallback)


# ---- the transitions --------------------------------------------------------------------------

@dataclass
class Transition:
    name: str
    setup: object                      # setup(home): build the starting spool (in-process)
    allowed: dict                      # id -> states it may be in after a crash + recovery
    maybe: tuple = ()                  # ids that may exist or not (enqueue before its ACK)
    bad: dict = field(default_factory=dict)   # name -> bytes: must end in rejected/, intact
    attempts: dict = field(default_factory=dict)  # id -> attempts once the driver ACKed


def _job(home, job_id, state, now, **fields):
    from queuectl import job as jobmod
    from queuectl import lifecycle
    doc = lifecycle.prepare(home, {"id": job_id, "command": "true", **fields}, now)
    home.spool.publish(job_id, jobmod.dumps(doc), state=state)


def _index(home):
    from queuectl.ingest import reindex
    reindex(home)


def _drop(home, state, name, data, age=0):
    path = os.path.join(home.spool.dir(state), name)
    with open(path, "wb") as f:
        f.write(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))


def setup_empty(home):
    home.spool.ensure_layout()
    _index(home)


def setup_pending(command="true", **fields):
    def setup(home):
        _job(home, "j1", "pending", time.time(), command=command, **fields)
        _index(home)
    return setup


DRAIN = {"w1": dict(command="true", priority=3),
         "w2": dict(command="false", max_retries=0, priority=2),
         "w3": dict(command="false", max_retries=2, priority=1)}


def setup_drain(home):
    now = time.time()
    for job_id, fields in DRAIN.items():
        _job(home, job_id, "pending", now, **fields)
    _index(home)


def setup_ingest(home):
    _job(home, "a1", "pending", time.time())
    _index(home)
    _drop(home, "pending", "drop1.json", b'{"command": "true", "priority": 3}\n')
    _drop(home, "pending", "bad1.json", BAD_DROP, age=60)


def setup_worker_reject(home):
    home.spool.ensure_layout()
    _index(home)
    _drop(home, "pending", "bad1.json", BAD_DROP, age=60)


def setup_duplicate(home):
    now = time.time()
    _job(home, "j1", "completed", now, attempts=1, exit_code=0)
    _index(home)
    _drop(home, "pending", "j1.json", DUPLICATE_DROP)


def setup_orphan(max_retries):
    def setup(home):
        _job(home, "j1", "processing", time.time(), max_retries=max_retries)
        _index(home)
    return setup


def setup_leftover(home):
    now = time.time()
    _job(home, "j1", "completed", now, attempts=1, exit_code=0)
    _job(home, "j1", "processing", now)
    _index(home)


def setup_unreadable_orphan(home):
    home.spool.ensure_layout()
    _index(home)
    _drop(home, "processing", "bad2.json", BAD_DROP, age=60)


def setup_dead(home):
    _job(home, "j1", "dead", time.time(), max_retries=0, attempts=1, exit_code=1,
         last_error="exit code 1")
    _index(home)


def setup_failed_waiting(home):
    now = time.time()
    _job(home, "j1", "failed", now, attempts=1, exit_code=1, last_error="exit code 1",
         run_at=_iso(now + 3600))
    _index(home)


def setup_many(home):
    now = time.time()
    for job_id, state in (("p1", "pending"), ("f1", "failed"), ("c1", "completed"),
                          ("d1", "dead")):
        _job(home, job_id, state, now)
    _drop(home, "rejected", "old.json", b"not json")
    _index(home)
    home.index.clear_jobs()      # a lost index: reindex rebuilds it from the spool


def setup_unique(home):
    from queuectl import unique
    _job(home, "j1", "pending", time.time(), unique_key="k1")
    assert unique.acquire(home.spool, "k1", "j1") is None
    _index(home)


def setup_dependent(home):
    now = time.time()
    _job(home, "d0", "dead", now, max_retries=0, attempts=1, exit_code=1,
         last_error="exit code 1")
    _job(home, "j1", "pending", now, after=["d0"])
    _index(home)


def _iso(ts):
    from queuectl import job as jobmod
    return jobmod.iso(ts)


REQUEUE_COMMAND = "kill -USR1 $PPID; exec sleep 5"   # the job asks its own worker to stop

TRANSITIONS = {t.name: t for t in (
    Transition("enqueue", setup_empty, {}, maybe=("j1",), attempts={"j1": 0}),
    Transition("enqueue-batch", setup_empty, {}, maybe=("b1", "b2", "b3"),
               attempts={"b1": 0, "b2": 0, "b3": 0}),
    # A batch made durable by one syncfs instead of an fsync per file (issue 9).
    Transition("enqueue-batch-syncfs", setup_empty, {}, maybe=("s1", "s2", "s3"),
               attempts={"s1": 0, "s2": 0, "s3": 0}),
    Transition("worker-drain", setup_drain, {"w1": {"pending", "failed", "completed"},
                                             "w2": {"pending", "dead"},
                                             "w3": {"pending", "failed"}},
               attempts={"w1": 1, "w2": 1, "w3": 1}),
    Transition("ingest-dropin", setup_ingest, {"a1": {"pending"}, "drop1": {"pending"}},
               bad={"bad1.json": BAD_DROP}),
    Transition("worker-reject", setup_worker_reject, {}, bad={"bad1.json": BAD_DROP}),
    Transition("worker-duplicate", setup_duplicate, {"j1": {"completed"}},
               bad={"j1.json": DUPLICATE_DROP}),
    Transition("claim", setup_pending(), {"j1": {"pending", "failed"}}),
    Transition("unclaim", setup_pending(), {"j1": {"pending", "failed"}}),
    Transition("recover-during-run", setup_pending(),
               {"j1": {"pending", "failed", "completed"}}, attempts={"j1": 1}),
    Transition("complete", setup_pending("true"), {"j1": {"pending", "failed", "completed"}},
               attempts={"j1": 1}),
    Transition("fail-retry", setup_pending("false", max_retries=2),
               {"j1": {"pending", "failed"}}, attempts={"j1": 1}),
    Transition("fail-dead", setup_pending("false", max_retries=0),
               {"j1": {"pending", "dead"}}, attempts={"j1": 1}),
    Transition("recover-orphan", setup_orphan(3), {"j1": {"failed"}}, attempts={"j1": 1}),
    Transition("recover-orphan-dead", setup_orphan(0), {"j1": {"dead"}}, attempts={"j1": 1}),
    Transition("recover-leftover", setup_leftover, {"j1": {"completed"}}, attempts={"j1": 1}),
    Transition("recover-unreadable", setup_unreadable_orphan, {},
               bad={"bad2.json": BAD_DROP}),
    Transition("dlq-retry", setup_dead, {"j1": {"dead", "pending"}}, attempts={"j1": 0}),
    Transition("requeue", setup_pending(REQUEUE_COMMAND), {"j1": {"pending", "failed"}},
               attempts={"j1": 0}),
    Transition("cancel", setup_pending(), {"j1": {"pending", "failed", "dead"}},
               attempts={"j1": 0}),
    Transition("retry-now", setup_failed_waiting, {"j1": {"failed", "pending"}},
               attempts={"j1": 1}),
    Transition("enqueue-unique", setup_empty, {}, maybe=("j1",), attempts={"j1": 0}),
    Transition("complete-unique", setup_unique, {"j1": {"pending", "failed", "completed"}},
               attempts={"j1": 1}),
    Transition("bury-dependent", setup_dependent, {"d0": {"dead"}, "j1": {"pending", "dead"}},
               attempts={"j1": 0}),
    Transition("reindex", setup_many, {"p1": {"pending"}, "f1": {"failed"},
                                       "c1": {"completed"}, "d1": {"dead"}}),
)}


def make_template(root, name):
    """Build transition `name`'s starting home under root/<name>; returns its path."""
    from queuectl.home import Home
    path = os.path.join(root, name)
    os.makedirs(path)
    home = Home(path)
    TRANSITIONS[name].setup(home)
    home.close()
    return path


def clone(template, dest):
    shutil.copytree(template, dest, symlinks=True)
    return dest


# ---- the driver (child process) ----------------------------------------------------------------

_RECORD = None
_ACKED = set()


def _ack(job_id, state):
    _ACKED.add(job_id)
    if _RECORD is not None:
        _RECORD.write(json.dumps({"op": "ack", "id": job_id, "state": state}) + "\n")
        _RECORD.flush()
    os.write(1, f"ACK {job_id} {state}\n".encode())


def _recorder(spool_root, out):
    prefix = spool_root.rstrip("/") + "/"

    def rel(path):
        return path[len(prefix):] if path.startswith(prefix) else path

    def hook(op, path, info):
        event = {"op": op, "path": rel(path)}
        if op == "failed":             # the operation just recorded did not happen
            event.update(of=info["of"], errno=info["errno"])
        if "src" in info:
            event["src"] = rel(info["src"])
        if "flags" in info:
            event["flags"] = info["flags"]
        if "data" in info:
            event["data"] = base64.b64encode(bytes(info["data"])).decode()
        out.write(json.dumps(event) + "\n")
        out.flush()
    return hook


def _worker_once(home, stop_signals=False):
    from queuectl.worker import Worker
    worker = Worker(home)
    if stop_signals:
        worker.install_signals()
    return worker.run_once()


def _ack_rejections(home):
    """ACK every file in rejected/ as `ACK <name> rejected`: once the call that rejected it
    returned, it must stay there with the reason it got (reason() reads it back)."""
    for name in sorted(home.spool.rejected_names()):
        _ack(name, "rejected")


def rejection_reasons(home_dir):
    """{name: reason text} of every rejected/ file of a home, as the check compares them."""
    rejected = os.path.join(home_dir, "spool", "rejected")
    reasons = {}
    for name in os.listdir(rejected):
        if not name.endswith(".reason"):
            try:
                with open(os.path.join(rejected, name + ".reason"), "rb") as f:
                    reasons[name] = f.read()
            except FileNotFoundError:
                reasons[name] = None
    return reasons


def _where(home, job_id):
    states = home.spool.find(job_id)
    return states[0] if len(states) == 1 else "+".join(states) or "nowhere"


def _apply_plant():
    """A bug planted on purpose (QUEUECTL_TEST_PLANT, see plants/plantkit.py), to show
    that the checks catch it."""
    plant = os.environ.get("QUEUECTL_TEST_PLANT")
    if plant:
        sys.path.insert(0, os.path.join(HERE, "plants"))
        import plantkit
        plantkit.apply(plant)


def drive(home_dir, name):
    global _RECORD
    from queuectl.home import Home
    _apply_plant()
    home = Home(home_dir)
    record = os.environ.get("CRASHKIT_RECORD")
    if record:
        from queuectl import fsops
        _RECORD = open(record, "a")
        fsops.set_hook(_recorder(home.spool_dir, _RECORD), info=True)
    now = time.time()
    if name == "enqueue":
        from queuectl import lifecycle
        lifecycle.publish(home, [lifecycle.prepare(home, {"id": "j1", "command": "true"}, now)],
                          now)
        _ack("j1", "pending")
    elif name == "enqueue-unique":
        from queuectl import admit, lifecycle
        doc = lifecycle.prepare(home, {"id": "j1", "command": "true", "unique_key": "k1"}, now)
        admit.publish(home, [doc], now)
        _ack("j1", "pending")
    elif name in ("complete-unique", "bury-dependent"):
        assert _worker_once(home)
        _ack("j1", _where(home, "j1"))
    elif name in ("enqueue-batch", "enqueue-batch-syncfs"):
        from queuectl import lifecycle, spool
        ids = ("b1", "b2", "b3") if name == "enqueue-batch" else ("s1", "s2", "s3")
        if name == "enqueue-batch-syncfs":
            spool.SYNCFS_MIN_BATCH = len(ids)
        docs = [lifecycle.prepare(home, {"id": job_id, "command": "true"}, now)
                for job_id in ids]
        lifecycle.publish(home, docs, now)
        for doc in docs:
            _ack(doc["id"], "pending")
    elif name == "worker-drain":
        from queuectl.worker import Worker
        worker = Worker(home)
        for _ in DRAIN:
            assert worker.run_once()
            for job_id in DRAIN:
                if job_id not in _ACKED and _where(home, job_id) not in ("pending",
                                                                         "processing"):
                    _ack(job_id, _where(home, job_id))
    elif name == "ingest-dropin":
        from queuectl.ingest import ingest
        ingest(home)
        _ack("drop1", "pending")
        _ack_rejections(home)
    elif name in ("worker-reject", "worker-duplicate"):
        assert _worker_once(home) == (name == "worker-duplicate")
        _ack_rejections(home)
    elif name in ("claim", "unclaim"):
        from queuectl import lifecycle
        held = lifecycle.claim(home, "pending", "j1")
        assert held is not None
        doc = lifecycle.parse_claimed(home, held, now)
        if name == "claim":
            lifecycle.mark_running(home, doc, now)
            os._exit(0)                # exits holding the claim: an orphan for recovery
        lifecycle.unclaim(home, held)   # promises nothing: a lost unclaim leaves an orphan
    elif name == "recover-during-run":
        # Another worker's recovery runs while j1 is claimed: it must leave j1 alone (its
        # flock is held), and j1 then completes once.
        from queuectl import lifecycle
        from queuectl.recovery import recover_all
        from queuectl.runner import Result
        held = lifecycle.claim(home, "pending", "j1")
        doc = lifecycle.parse_claimed(home, held, now)
        lifecycle.mark_running(home, doc, now)
        recover_all(home)
        lifecycle.complete(home, held, doc, Result(exit_code=0, duration_s=0.0), now)
        _ack("j1", _where(home, "j1"))
    elif name in ("complete", "fail-retry", "fail-dead", "requeue"):
        assert _worker_once(home, stop_signals=(name == "requeue"))
        _ack("j1", _where(home, "j1"))
    elif name.startswith("recover-"):
        from queuectl.recovery import recover_all
        done = recover_all(home)
        assert done, "nothing recovered"
        if name != "recover-unreadable":
            _ack("j1", _where(home, "j1"))
        _ack_rejections(home)
    elif name in ("dlq-retry", "cancel", "retry-now"):
        from queuectl import control
        action = {"dlq-retry": lambda: control.dlq_retry(home, ["j1"]),
                  "cancel": lambda: control.cancel(home, ["j1"]),
                  "retry-now": lambda: control.retry_now(home, ["j1"])}[name]
        outcome, = action()
        assert outcome.ok, outcome.message
        _ack("j1", _where(home, "j1"))
    elif name == "reindex":
        from queuectl.ingest import reindex
        reindex(home)
    else:
        raise SystemExit(f"unknown transition {name}")
    home.close()


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- the checker ---------------------------------------------------------------------------------

def scan(spool_dir):
    """{state: {name: bytes}} for every job state and rejected/ (reason files left out)."""
    found = {}
    for state in (*JOB_STATES, "rejected"):
        files = {}
        try:
            names = os.listdir(os.path.join(spool_dir, state))
        except FileNotFoundError:
            names = []
        for name in names:
            if state == "rejected" and name.endswith(".reason"):
                continue
            path = os.path.join(spool_dir, state, name)
            with open(path, "rb") as f:
                files[name] = f.read()
        found[state] = files
    return found


def parse_job(data, stem):
    from queuectl import job as jobmod
    try:
        return jobmod.validate(jobmod.loads_object(data), stem=stem)
    except Exception:
        return None


def check_spool(home_dir, transition, acked, known_before=(), index=True, reasons=None):
    """Every way the recovered spool at home_dir breaks the invariants, as strings.
    `acked`: {id: state} the driver promised, and {name: "rejected"} for each rejection it
    acknowledged (that file must be in rejected/ under that name with the reason
    `reasons[name]` the uncrashed run gave it); `known_before`: ids that existed before the
    transition (they must survive whatever happened)."""
    from queuectl.home import Home
    t = transition
    problems = []
    rejections = {n for n, s in acked.items() if s == "rejected"}
    acked = {i: s for i, s in acked.items() if s != "rejected"}
    spool_dir = os.path.join(home_dir, "spool")
    files = scan(spool_dir)
    where = {}
    for state in JOB_STATES:
        for name, data in files[state].items():
            if name.startswith("."):
                continue
            if not name.endswith(".json"):
                problems.append(f"stray file {state}/{name}")
                continue
            stem = name[:-5]
            if t.bad.get(name) == data:
                problems.append(f"bad drop {state}/{name} not rejected")
                continue
            doc = parse_job(data, stem)
            if doc is None:
                problems.append(f"unparseable {state}/{name} ({data[:40]!r})")
            where.setdefault(stem, []).append((state, doc))
    if files["processing"]:
        problems.append(f"processing/ not empty: {sorted(files['processing'])}")
    for job_id, copies in where.items():
        states = [s for s, _ in copies]
        if len(copies) > 1:
            problems.append(f"{job_id} in {len(copies)} states: {states}")
        if job_id not in t.allowed and job_id not in t.maybe and job_id not in acked:
            problems.append(f"unexpected job {job_id} in {states}")
    must_survive = set(t.allowed) | set(known_before) | set(acked)
    for job_id in sorted(must_survive):
        copies = where.get(job_id, [])
        if not copies:
            problems.append(f"acknowledged job {job_id} lost")
            continue
        state, doc = copies[0]
        if job_id in acked:
            if state != acked[job_id]:
                problems.append(f"{job_id} is {state}, but {acked[job_id]} was acknowledged")
            elif doc is not None and job_id in t.attempts and \
                    doc.get("attempts", 0) != t.attempts[job_id]:
                problems.append(f"{job_id} has attempts={doc.get('attempts')}, expected "
                                f"{t.attempts[job_id]}")
        elif job_id in t.allowed and state not in t.allowed[job_id]:
            problems.append(f"{job_id} is {state}, expected one of {sorted(t.allowed[job_id])}")
    for name, data in t.bad.items():
        copies = [n for n, d in files["rejected"].items()
                  if (n == name or n.startswith(name + ".")) and d == data]
        if len(copies) != 1:
            problems.append(f"bad drop {name}: {len(copies)} intact copies in rejected/")
    for name in sorted(rejections):
        if name not in files["rejected"]:
            problems.append(f"acknowledged rejection {name} not in rejected/")
        elif reasons is not None and rejection_reasons(home_dir).get(name) != reasons.get(name):
            problems.append(f"acknowledged rejection {name} has reason "
                            f"{rejection_reasons(home_dir).get(name)!r}, acknowledged with "
                            f"{reasons.get(name)!r}")
    problems += _check_keys(home_dir, where)
    if index:
        home = Home(home_dir)
        try:
            for state in JOB_STATES:
                on_disk = {n[:-5] for n in files[state] if n.endswith(".json")
                           and not n.startswith(".")}
                indexed = home.index.ids_in(state)
                if on_disk != indexed:
                    problems.append(f"index disagrees in {state}/: disk {sorted(on_disk)}, "
                                    f"index {sorted(indexed)}")
            if set(files["rejected"]) != home.index.rejected_names():
                problems.append(f"index disagrees in rejected/: disk "
                                f"{sorted(files['rejected'])}, index "
                                f"{sorted(home.index.rejected_names())}")
        finally:
            home.close()
    return problems


def _check_keys(home_dir, where):
    """Unique keys after recovery: none held for a job that has finished, and a pending or
    failed job's key held by that job or free (it is taken again when the job is claimed)."""
    from queuectl import unique
    from queuectl.home import Home
    home = Home(home_dir)
    problems = []
    try:
        for job_id, copies in where.items():
            state, doc = copies[0]
            key = (doc or {}).get("unique_key")
            if key is None:
                continue
            owner = unique.owner(home.spool, key)
            if state in ("completed", "dead") and owner == job_id:
                problems.append(f"unique key {key!r} still held by finished job {job_id}")
            if state in ("pending", "failed") and owner not in (None, job_id):
                problems.append(f"unique key {key!r} of {job_id} held by {owner}")
    finally:
        home.close()
    return problems


# ---- a fork server: the same child processes, without paying Python's start-up each time ----

def serve():
    """Read {"home", "name", "env"} lines on stdin; for each, fork a child that sets `env`,
    reloads fsops (so QUEUECTL_FAULT / QUEUECTL_FAULT_LOG are read exactly as at start-up),
    performs the transition with its stdout in <home>.acks, and exits; answer {"rc": ...}.
    Nothing of queuectl is opened before the fork, only imported."""
    import importlib
    import traceback
    from queuectl import control, fsops, home, ingest, lifecycle, recovery, worker  # noqa: F401
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.environ.update(request["env"])
                importlib.reload(fsops)
                fd = os.open(request["home"] + ".acks", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                drive(request["home"], request["name"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        sys.stdout.write(json.dumps({"rc": rc}) + "\n")
        sys.stdout.flush()


class DriverServer:
    """run(home_dir, name, **env) -> (exit code, {id: ACKed state}) of the transition run
    in a child forked by one long-lived `crashkit.py --serve` process; AssertionError if
    it failed, or lived through an exit@K fault."""

    def __init__(self, stderr_path):
        self.stderr = open(stderr_path, "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "crashkit.py"),
                                      "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=child_env())

    def run(self, home_dir, name, **env):
        request = {"home": home_dir, "name": name, "env": {k: str(v) for k, v in env.items()}}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the driver server died: {self._stderr_tail()}")
        rc = json.loads(line)["rc"]
        acked = {}
        with open(home_dir + ".acks") as f:
            for ack in f:
                if ack.startswith("ACK "):
                    _, job_id, state = ack.split()
                    acked[job_id] = state
        if rc not in (0, 137) or rc == 0 and "QUEUECTL_FAULT" in env:
            raise AssertionError(f"driver {name} {env} exited {rc}: {self._stderr_tail()}")
        return rc, acked

    def _stderr_tail(self):
        self.stderr.flush()
        with open(self.stderr.name, "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        drive(sys.argv[1], sys.argv[2])
