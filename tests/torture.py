"""The torture suite's shared harness: a job command that records every execution, a
`Checker` that compares those records with a final scan of the spool and the index, real
worker pools that are always torn down, a kill storm, and a report file for the figures.

The job command (`job_command`) is one POSIX sh line; each execution appends
    <id> <attempt> start|end|overlap <monotonic ns> <sh pid> <worker pid>
to results/w<worker pid>.log: the worker is $QUEUECTL_WORKER_PID, which the worker sets (not
$PPID: a worker SIGKILLed between forking the shell and the shell's start leaves an orphan
whose parent is already the supervisor), or $PPID when run by hand. Why it looks so:
- No interpreter: /bin/sh (dash) starts in 0.8 ms; a Python helper costs 15 ms a job.
- The clock is /proc/uptime read with the shell's `read` builtin: monotonic (CLOCK_BOOTTIME),
  one clock for every process, no fork, but 10 ms resolution. `date +%s%N` has ns but costs a
  fork and exec per line (0.9 ms each, measured) and is wall-clock time. Times are only
  reported, never asserted, so the cheap clock is enough.
- Overlap is therefore not inferred from times: each execution holds flock(1) on
  results/locks/<id> for its whole run (a block redirect, so an inherited job-lock fd is never
  closed), and one that finds it held (a twin of the same id still alive) appends an
  `overlap` line. A killed execution's lock dies with it, so a SIGKILL never fakes an
  overlap. Complete start/end pairs are compared by time as well.
- `>>` opens the file O_APPEND: each line is one write(2) placed whole at the end. No fsync
  by default: these tests kill processes, not the kernel, and the page cache is shared, so a
  line is in the file for the checker as soon as write returns. `fsync=True` adds
  `sync FILE` (an fsync through coreutils, +1.3 ms a job on ext4) for tests that need it.

The checker's counts (lost, unexpected, overlapping, ids in two states, unowned files in
processing/, unparseable files outside rejected/, index rows that disagree with the spool,
...) are for hard asserts; times go to stdout and to bench/results/torture.txt."""

import ctypes
import fcntl
import json
import os
import random
import re
import shlex
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conftest import QUEUECTL, queuectl_env
from workerkit import home_processes, kill_processes, pid_alive

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")
REPORT_FILE = Path(__file__).resolve().parent.parent / "bench" / "results" / "torture.txt"
_RECORD = ('{ read t x </proc/uptime; echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT %s '
           '${t%%.*}${t#*.}0000000 $$ $W" >>"$f"; }')


# ---- the job command ------------------------------------------------------------------------

def results_dir(home):
    """home/results with its locks/ subdirectory, created if missing."""
    path = Path(home) / "results"
    (path / "locks").mkdir(parents=True, exist_ok=True)
    return path


def job_command(results, body="", fsync=False):
    """The shell line a test job runs: record start, run `body`, record end, exit with the
    body's status. See the module docstring for the format and the choices."""
    sync = ' sync "$f";' if fsync else ""
    inner = (f'flock -n 8 || {_RECORD % "overlap"}; {_RECORD % "start"};{sync} '
             f'{body or ":"}\nrc=$?; {_RECORD % "end"};{sync}')
    return (f'R={shlex.quote(str(results))}; W=${{QUEUECTL_WORKER_PID:-$PPID}}; '
            f'f="$R/w$W.log"; '
            f'{{ {inner}\n}} 8>>"$R/locks/$QUEUECTL_JOB_ID"; exit $rc')


# Storm jobs sleep 20-200 ms (from the shell's pid: dash has no $RANDOM), long enough that
# two workers holding one job at once would run it at the same time, where the per-id lock
# below reports it, rather than back to back.
STORM_BODY = 'ms=$((20 + $$ % 181)); if [ $ms -lt 100 ]; then sleep 0.0$ms; else sleep 0.$ms; fi'


def short_job_command(home, body="", fsync=False):
    """The same job as a short command, for tests where the job file's length matters (a
    writer appending one byte at a time): the line goes to home/results/job.sh and the
    command, run in the home (a job's default directory), sources it."""
    script = results_dir(home) / "job.sh"
    script.write_text(job_command(script.parent, body, fsync) + "\n")
    return ". results/job.sh"


PLANTS_DIR = Path(__file__).resolve().parent / "plants"


def plant_env(plant):
    """Environment that makes a queuectl process start with a planted bug (plants/plantkit)."""
    return {"PYTHONPATH": str(PLANTS_DIR), "QUEUECTL_TEST_PLANT": plant}


def job_lines(ids, command, **fields):
    """JSON Lines for `queuectl enqueue -`: one job per id, all running `command`."""
    return "".join(json.dumps({"id": i, "command": command, **fields}) + "\n" for i in ids)


def clock_ns():
    """The clock the job command records (CLOCK_BOOTTIME, as in /proc/uptime)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass
class Execution:
    job_id: str
    attempt: int
    pid: int           # the job's shell
    worker: int        # its parent, the worker
    start_ns: int
    end_ns: int = None


@dataclass
class Results:
    executions: list
    overlaps: list           # (id, attempt, sh pid, worker pid) that found a twin alive
    malformed: list          # lines that do not parse, or an end with no start

    def by_id(self):
        """{id: [Execution]}, each list in the order the executions started."""
        runs = {}
        for run in sorted(self.executions, key=lambda r: (r.start_ns, r.attempt)):
            runs.setdefault(run.job_id, []).append(run)
        return runs


def read_results(results):
    """Every execution recorded in results/w*.log, start and end paired by (id, attempt,
    shell pid)."""
    executions, overlaps, malformed, open_runs = [], [], [], {}
    for path in sorted(Path(results).glob("w*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) != 6 or parts[2] not in ("start", "end", "overlap") or \
                    not all(p.isdigit() for p in (parts[1], *parts[3:])):
                malformed.append(f"{path.name}: {line!r}")
                continue
            job_id, what = parts[0], parts[2]
            attempt, ns, pid, worker = int(parts[1]), *map(int, parts[3:])
            key = (job_id, attempt, pid)
            if what == "overlap":
                overlaps.append((job_id, attempt, pid, worker))
            elif what == "start":
                run = Execution(job_id, attempt, pid, worker, ns)
                open_runs[key] = run
                executions.append(run)
            elif key in open_runs:
                open_runs.pop(key).end_ns = ns
            else:
                malformed.append(f"{path.name}: end without a start: {line!r}")
    return Results(executions, overlaps, malformed)


# ---- the spool and the index -------------------------------------------------------------------

@dataclass
class SpoolScan:
    states: dict                 # state -> set of ids
    unparseable: list            # "state/name: why" for files outside rejected/ and tmp/
    unowned: list                # processing/ names whose lock nobody holds
    rejected: list
    tmp: list

    def where(self):
        found = {}
        for state, ids in self.states.items():
            for job_id in ids:
                found.setdefault(job_id, []).append(state)
        return found


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _strict_pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def parse_job(data, stem):
    """Why these bytes are not a valid job file named <stem>.json, or None if they are."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constants,
                         object_pairs_hook=_strict_pairs)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not strict JSON: {exc}"
    if not isinstance(doc, dict):
        return "not an object"
    if not isinstance(doc.get("command"), str):
        return "no command"
    if doc.get("id", stem) != stem:
        return f"id {doc.get('id')!r} is not the file's stem"
    return None


def read_job_file(path):
    """The bytes of a job file, without following symlinks or blocking on FIFOs; None if it
    vanished."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, 16 << 20)
    finally:
        os.close(fd)


def is_unowned(path):
    """True if nobody holds the flock of processing/<name> (its worker is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)     # blocked by a worker's LOCK_EX
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def scan_spool(spool):
    spool = Path(spool)
    states, unparseable, unowned = {}, [], []
    for state in JOB_STATES:
        ids = states[state] = set()
        for name in _listdir(spool / state):
            if name.startswith("."):
                continue             # tools' .x.json.part files and cancel markers
            path = spool / state / name
            if not name.endswith(".json"):
                unparseable.append(f"{state}/{name}: not a job file name")
                continue
            ids.add(name[:-5])
            data = read_job_file(path)
            why = None if data is None else parse_job(data, name[:-5])
            if why:
                unparseable.append(f"{state}/{name}: {why}")
            if state == "processing" and is_unowned(path):
                unowned.append(name)
    rejected = [n for n in _listdir(spool / "rejected") if not n.endswith(".reason")]
    return SpoolScan(states, unparseable, unowned, rejected, _listdir(spool / "tmp"))


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def index_disagreements(home, scan):
    """Where `queuectl list --json` and `status --json` disagree with a spool scan."""
    rows = json.loads(qctl(home, "list", "--json").stdout)
    status = json.loads(qctl(home, "status", "--json").stdout)
    indexed = {}
    for row in rows:
        indexed.setdefault(row["id"], []).append(row["state"])
    where = scan.where()
    problems = []
    for job_id in sorted(set(indexed) | set(where)):
        if sorted(indexed.get(job_id, [])) != sorted(where.get(job_id, [])):
            problems.append(f"{job_id}: index {indexed.get(job_id, [])}, "
                            f"spool {where.get(job_id, [])}")
    spool_counts = {s: len(ids) for s, ids in scan.states.items()}
    if status["counts"] != spool_counts:
        problems.append(f"status counts {status['counts']} != spool {spool_counts}")
    if status["rejected"] != len(scan.rejected):
        problems.append(f"status rejected {status['rejected']} != spool {len(scan.rejected)}")
    return problems


# ---- the checker ------------------------------------------------------------------------------

HARD_COUNTS = ("lost", "unexpected", "overlapping", "two_states", "unowned_processing",
               "unparseable", "index_disagreements", "completed_unrun", "malformed_results",
               "unexplained_reruns")


@dataclass
class Report:
    acknowledged: int
    executions: int
    duplicates: int               # executions beyond the first, over all ids
    max_runs_per_id: int
    lost: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    overlapping: list = field(default_factory=list)
    two_states: list = field(default_factory=list)
    unowned_processing: list = field(default_factory=list)
    unparseable: list = field(default_factory=list)
    index_disagreements: list = field(default_factory=list)
    completed_unrun: list = field(default_factory=list)
    malformed_results: list = field(default_factory=list)
    unexplained_reruns: list = field(default_factory=list)
    dead: list = field(default_factory=list)
    processing: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    tmp: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)       # id -> [Execution]

    def hard(self):
        return {name: len(getattr(self, name)) for name in HARD_COUNTS}

    def problems(self, allow=()):
        """{count name: first examples} for every non-zero hard count not in `allow`."""
        return {name: getattr(self, name)[:10] for name, n in self.hard().items()
                if n and name not in allow}

    def assert_clean(self, allow=()):
        assert not self.problems(allow), f"{self.summary()}\n{self.problems(allow)}"

    def summary(self):
        hard = " ".join(f"{k}={v}" for k, v in self.hard().items())
        return (f"acknowledged={self.acknowledged} executions={self.executions} "
                f"duplicates={self.duplicates} max_runs_per_id={self.max_runs_per_id} {hard} "
                f"processing_left={len(self.processing)} rejected={len(self.rejected)} "
                f"tmp_left={len(self.tmp)} states={self.counts}")


class Checker:
    """Compares what ran (the results files) with what was acknowledged and with the final
    spool and index. Run it once the workers are stopped."""

    def __init__(self, home, results=None):
        self.home = Path(home)
        self.spool = self.home / "spool"
        self.results = Path(results) if results else results_dir(home)

    def check(self, acknowledged, submitted=None, index=True, kills=None):
        """acknowledged: ids whose enqueue was acknowledged (printed); submitted: every id a
        producer tried to enqueue (a superset: a killed producer may have published some
        without printing them). Ran-but-never-submitted is `unexpected`. kills: the storm's
        Kill list; given, every re-run of an id must follow a kill of the worker that ran
        the attempt before it (`unexplained_reruns`)."""
        acknowledged = set(acknowledged)
        allowed = acknowledged | set(submitted or ())
        results = read_results(self.results)
        runs = results.by_id()
        scan = scan_spool(self.spool)
        where = scan.where()
        finished = scan.states["completed"] | scan.states["dead"]
        ended = {r.job_id for r in results.executions if r.end_ns is not None}
        report = Report(
            acknowledged=len(acknowledged), executions=len(results.executions),
            duplicates=sum(len(r) - 1 for r in runs.values()),
            max_runs_per_id=max((len(r) for r in runs.values()), default=0),
            lost=sorted(acknowledged - finished),     # dead/ is reported apart (`dead`)
            unexpected=sorted(set(runs) - allowed),
            overlapping=sorted({o[0] for o in results.overlaps} | _time_overlaps(runs)),
            two_states=sorted(f"{i}: {s}" for i, s in where.items() if len(s) > 1),
            unowned_processing=scan.unowned, unparseable=scan.unparseable,
            completed_unrun=sorted(scan.states["completed"] - ended),
            malformed_results=results.malformed,
            unexplained_reruns=[] if kills is None else unexplained_reruns(runs, kills),
            dead=sorted(scan.states["dead"]),
            processing=sorted(scan.states["processing"]), rejected=scan.rejected,
            tmp=scan.tmp, counts={s: len(i) for s, i in scan.states.items()}, runs=runs)
        if index:
            report.index_disagreements = index_disagreements(self.home, scan)
        return report


CLOCK_STEP_NS = 10_000_000       # /proc/uptime's resolution: a start is floored to 10 ms


CLAIM_TO_START_NS = 2_000_000_000  # a worker may die this long before its job's shell writes


def unexplained_reruns(runs, kills):
    """Executions of an id after the first that no kill explains. The attempt before must
    have died with its worker: it is the last execution that worker ever started, and the
    worker (QUEUECTL_WORKER_PID) was killed before this attempt started. The kill may come a little
    before the attempt before recorded its start (a worker killed right after it forked
    the job's shell is dead before that shell writes its first line), at most
    CLAIM_TO_START_NS. Pids are not reused within one test (pid_max is 32768 or more). A
    rerun without that is a double claim, or a worker that died by itself: a bug."""
    killed, last_start = {}, {}
    for kill in kills:
        killed.setdefault(kill.pid, []).append(kill.ns)
    for executions in runs.values():
        for run in executions:
            last_start[run.worker] = max(last_start.get(run.worker, 0), run.start_ns)
    found = []
    for job_id, executions in runs.items():
        for before, after in zip(executions, executions[1:]):
            died_with_it = last_start[before.worker] == before.start_ns and any(
                before.start_ns - CLAIM_TO_START_NS <= t <= after.start_ns + CLOCK_STEP_NS
                for t in killed.get(before.worker, ()))
            if not died_with_it:
                found.append(f"{job_id}: attempt {after.attempt} (worker {after.worker}) "
                             f"after attempt {before.attempt} (worker {before.worker}, "
                             f"which was not killed while running it)")
    return found


def index_rows(home):
    """{id: state} of the index exactly as the workers left it: read straight from
    data/queue.db, read-only, without the resync that `list` and `status` do first."""
    import sqlite3
    db = sqlite3.connect(f"file:{Path(home) / 'data' / 'queue.db'}?mode=ro", uri=True,
                         timeout=30)
    try:
        return dict(db.execute("SELECT id, state FROM jobs"))
    finally:
        db.close()


def index_lag(home, scan, runs, kills):
    """Compare the workers' own index rows with a spool scan. A row may lag the spool only
    where (1) a worker moved the file and was SIGKILLed before its index update: the id's
    last execution ran in a worker that was killed (its pid is among the kills), and (2) the
    next `status` or `list` will catch up: the directory now holding the file is one that
    ingest rescans, because its mtime is not the one recorded at the last look, or was
    within ingest.RACY_SECONDS of that look (git's racy-index rule). Returns (allowed,
    unexplained) lists of "id: index X, spool Y"."""
    rows, looks = index_rows(home), index_looks(home)
    where = {i: s[0] for i, s in scan.where().items() if len(s) == 1}
    killed = {kill.pid for kill in kills}
    allowed, unexplained = [], []
    for job_id in sorted(set(rows) | set(where)):
        if rows.get(job_id) == where.get(job_id):
            continue
        text = f"{job_id}: index {rows.get(job_id)}, spool {where.get(job_id)}"
        last = runs.get(job_id, [None])[-1]
        state = where.get(job_id)
        if last is not None and last.worker in killed and state and \
                rescanned(Path(home) / "spool" / state, looks.get(state)):
            allowed.append(text)
        else:
            unexplained.append(text)
    return allowed, unexplained


def index_looks(home):
    """{dir: (mtime_ns, look_ns)}: what the index's last ingest saw of each directory."""
    import sqlite3
    db = sqlite3.connect(f"file:{Path(home) / 'data' / 'queue.db'}?mode=ro", uri=True,
                         timeout=30)
    try:
        return {d: (m, t) for d, m, t in db.execute("SELECT dir, mtime_ns, look_ns FROM looks")}
    finally:
        db.close()


def rescanned(directory, look):
    """Will the next ingest rescan this directory? (queuectl.ingest's rule.)"""
    from queuectl.ingest import RACY_SECONDS
    mtime = os.stat(directory).st_mtime_ns
    return not (look and look[0] == mtime and look[1] - mtime > RACY_SECONDS * 1e9)


def _time_overlaps(runs):
    """Ids two of whose complete executions overlap in time (start before the other's end)."""
    found = set()
    for job_id, executions in runs.items():
        done = sorted((r for r in executions if r.end_ns is not None), key=lambda r: r.start_ns)
        for before, after in zip(done, done[1:]):
            if after.start_ns < before.end_ns:
                found.add(job_id)
    return found


# ---- reporting ----------------------------------------------------------------------------------

def record(test, **figures):
    """Print a test's figures (pytest -s shows them) and append them to the report file."""
    text = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {test} {text}"
    print(f"\n[torture] {line}")
    try:
        REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(REPORT_FILE, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass                   # the figures are still on stdout
    return line


def _fmt(value):
    return f"{value:.3f}" if isinstance(value, float) else str(value).replace(" ", "")


def seed_from_env(name="TORTURE_SEED"):
    """A random seed, or the one in $TORTURE_SEED to replay a run; always recorded."""
    value = os.environ.get(name)
    return int(value) if value else random.randrange(1 << 32)


# ---- queuectl processes --------------------------------------------------------------------------

def qctl(home, *args, input=None, timeout=120, check=True, prefix=(), env=None):
    """Run the installed `queuectl` for `home`; assert exit 0 unless check=False."""
    proc = subprocess.run([*prefix, QUEUECTL, *map(str, args)], capture_output=True,
                          input=input.encode() if isinstance(input, str) else input,
                          timeout=timeout, env=queuectl_env(home, **(env or {})))
    if check:
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout[-2000:],
                                      proc.stderr[-2000:])
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def configure(home, **settings):
    for key, value in settings.items():
        qctl(home, "config", "set", key, value)


def enqueue(home, ids, command, **fields):
    """One `queuectl enqueue -` of these ids; returns the ids it printed (acknowledged)."""
    out = qctl(home, "enqueue", "-", input=job_lines(ids, command, **fields), timeout=600)
    return out.stdout.split()


def done_ids(spool):
    """Ids that reached completed/ or dead/."""
    spool = Path(spool)
    return {n[:-5] for s in ("completed", "dead") for n in _listdir(spool / s)
            if n.endswith(".json")}


def ids_in(spool, states):
    """Ids of the job files in these state directories of a spool."""
    spool = Path(spool)
    return {n[:-5] for s in states for n in _listdir(spool / s)
            if n.endswith(".json") and not n.startswith(".")}


def finished(spool, ids):
    """True once every id is in completed/ or dead/. Cheap while work is left: the small
    directories are listed first, the big ones only when none of `ids` is left in them."""
    ids = set(ids)
    if ids & ids_in(spool, ("pending", "processing", "failed")):
        return False
    return ids <= done_ids(spool)


class Workers:
    """Worker pools of one home, started through the real CLI and always torn down."""

    def __init__(self, home):
        self.home = Path(home)
        self.supervisors = []

    def start(self, count, prefix=(), env=None):
        """`queuectl worker start --count N` (optionally behind a wrapper such as unshare,
        with extra environment such as a test plant); returns the supervisor's pid."""
        out = qctl(self.home, "worker", "start", "--count", count, prefix=prefix, timeout=60,
                   env=env)
        pid = int(re.search(r"started supervisor (\d+)", out.stdout).group(1))
        self.supervisors.append(pid)
        return pid

    def live(self):
        """The live worker processes (forks of our supervisors; adopted job orphans and
        zombies excluded)."""
        found = []
        for pid in self.supervisors:
            try:
                sup = psutil.Process(pid)
                cmdline = sup.cmdline()
                children = sup.children()
            except psutil.Error:
                continue
            for child in children:
                try:
                    if child.status() != psutil.STATUS_ZOMBIE and child.cmdline() == cmdline:
                        found.append(child.pid)
                except psutil.Error:
                    continue
        return found

    def assert_supervisors_alive(self):
        """Fail at once (also from inside a wait_until predicate) if a supervisor died."""
        dead = [pid for pid in self.supervisors if not pid_alive(pid)]
        assert not dead, f"supervisor {dead} died"

    def stop(self, timeout=2):
        """`queuectl worker stop --timeout 2`, then SIGKILL whatever of the home is left."""
        try:
            qctl(self.home, "worker", "stop", "--timeout", timeout, check=False, timeout=60)
        finally:
            self.kill_leftovers()

    def kill_leftovers(self):
        procs = home_processes(self.home)
        kill_processes(procs)
        return procs


@pytest.fixture
def workers(home):
    """A `Workers` for the test's home; every pool is stopped (and leftovers killed) after
    the test, pass or fail."""
    pool = Workers(home)
    yield pool
    pool.stop()


# ---- drivers -----------------------------------------------------------------------------------

def flock_owners():
    """Pids holding an flock (per /proc/locks: the process that took it; a job that
    inherited its worker's locked fd keeps the worker's pid there after the worker died)."""
    owners = set()
    try:
        text = open("/proc/locks").read()
    except OSError:
        return owners
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[1] == "FLOCK":
            owners.add(int(parts[4]))
    return owners


class Background:
    """A daemon thread calling self._tick() every `interval` seconds until stop()."""

    def _start_thread(self, interval):
        self.interval = interval
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._halt.set()
        self._thread.join(timeout=30)

    def _run(self):
        while not self._halt.wait(self.interval):
            self._tick()


@dataclass
class Kill:
    at: float
    pid: int
    busy: bool     # the victim held a job's flock (a claim) just before or after the signal
    ns: int = 0    # clock_ns() just before the signal: the job records' clock


class KillStorm(Background):
    """Every `interval` seconds, send `signum` to one random live worker. A kill is `busy`
    when the victim held a job's flock: claimed, running or finishing a job; only such a kill
    can make a job run again."""

    def __init__(self, pool, seed, interval=0.2, signum=signal.SIGKILL):
        self.pool, self.signum = pool, signum
        self.rng = random.Random(seed)
        self.kills = []
        self.idle_ticks = 0
        self._start_thread(interval)

    @property
    def busy_kills(self):
        return sum(k.busy for k in self.kills)

    def _tick(self):
        victims = sorted(self.pool.live())
        if not victims:
            self.idle_ticks += 1
            return
        pid = self.rng.choice(victims)
        before = flock_owners()
        at_ns = clock_ns()
        try:
            os.kill(pid, self.signum)
        except ProcessLookupError:
            return
        busy = pid in before or pid in flock_owners()
        self.kills.append(Kill(time.monotonic(), pid, busy, at_ns))


class PendingWatch(Background):
    """Keeps reading every new file in pending/ while a test runs: anything that is not a
    complete, valid job when it becomes visible there is recorded in `bad`."""

    def __init__(self, spool, interval=0.01):
        self.dir = Path(spool) / "pending"
        self.seen = set()            # (name, inode): a requeue brings a new inode
        self.bad = []
        self.looks = 0
        self._start_thread(interval)

    def stop(self):
        super().stop()
        self._look()                  # one last look after the producers are done

    def _tick(self):
        self._look()

    def _look(self):
        self.looks += 1
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                key = (entry.name, entry.inode())
            except OSError:
                continue
            if key in self.seen:
                continue
            self.seen.add(key)
            data = read_job_file(entry.path)
            if data is None:
                continue                # claimed meanwhile
            why = parse_job(data, entry.name[:-5]) if entry.name.endswith(".json") \
                else "not a job file name"
            if why:
                self.bad.append(f"{entry.name}: {why}: {data[:80]!r}")


# ---- inotify ----------------------------------------------------------------------------------

def inotify_init_errno():
    """0 if this process can create an inotify instance now, else the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


IN_CREATE, IN_MOVED_TO, IN_Q_OVERFLOW = 0x100, 0x80, 0x4000


class InotifyProbe:
    """An inotify instance of our own on one directory, to show what the workers' instances
    went through: created at the same moment, it has the same queue limit."""

    def __init__(self, directory):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(str(directory)),
                                  IN_CREATE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def overflowed(self):
        """Drain the queue; True if the kernel dropped events (IN_Q_OVERFLOW)."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + 16 <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                seen |= bool(mask & IN_Q_OVERFLOW)
                offset += 16 + length
        return seen

    def close(self):
        os.close(self.fd)


def read_sysctl(path):
    with open(path) as f:
        return f.read().strip()


def write_sysctl(path, value):
    with open(path, "w") as f:
        f.write(f"{value}\n")
