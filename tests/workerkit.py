"""Helpers shared by the worker, pool and runner tests: a `pool` fixture that starts real
workers through the installed `queuectl` and always stops them (and kills anything left) in
teardown, plus small readers for the spool and for the processes of a home.

Import the fixture into a test module with `from workerkit import pool`."""

import json
import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")


# ---- the spool -------------------------------------------------------------------------------

def ids_in(spool, state):
    """Sorted ids of the job files in spool/<state>."""
    try:
        names = os.listdir(spool / state)
    except FileNotFoundError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))


def states_of(spool, job_id):
    """Every state directory holding <id>.json (exactly one for a healthy spool)."""
    return [s for s in JOB_STATES if (spool / s / f"{job_id}.json").exists()]


def read_job(spool, job_id, state):
    return json.loads((spool / state / f"{job_id}.json").read_bytes())


def spool_files(spool, state):
    try:
        return sorted(os.listdir(spool / state))
    except FileNotFoundError:
        return []


def lines(path):
    """The file's lines split into words ([] while it does not exist)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines() if line.strip()]


def q(path):
    """A path quoted for a job's shell command."""
    return shlex.quote(str(path))


# ---- processes -------------------------------------------------------------------------------

def home_processes(home):
    """Live processes that belong to this home: a supervisor or worker (the home is on its
    command line) or a job (QUEUECTL_HOME in its environment). Zombies don't count."""
    home = str(home)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if any(home in part for part in proc.info["cmdline"] or ()) or \
                    proc.environ().get("QUEUECTL_HOME") == home:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(procs):
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def group_alive(pgid):
    """True while any live (non-zombie) process is in process group pgid."""
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) == pgid:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def pid_alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_processes(procs):
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


# ---- the pool --------------------------------------------------------------------------------

class Pool:
    """Real workers of one home. `cli` (in-process) is used for quick reads and setup,
    `run` (the installed console script) for everything that controls processes."""

    def __init__(self, home, cli, run):
        self.home = home
        self.spool = home / "spool"
        self.cli = cli
        self.run = run

    # setup
    def config(self, **settings):
        for key, value in settings.items():
            result = self.cli("config", "set", key, value)
            assert result.exit_code == 0, result.output

    def enqueue(self, job, *options):
        """Enqueue one job (a dict) and return its id."""
        result = self.cli("enqueue", json.dumps(job), *options)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout.strip()

    def enqueue_many(self, jobs):
        result = self.cli("enqueue", "-", input="\n".join(json.dumps(j) for j in jobs) + "\n")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout.split()

    # control
    def start(self, count=1):
        ran = self.run("worker", "start", "--count", count, timeout=60)
        assert ran.exit_code == 0, (ran.stdout, ran.stderr)
        return ran

    def stop(self, *options, timeout=60):
        return self.run("worker", "stop", *options, timeout=timeout)

    # reading
    def status(self):
        result = self.cli("status", "--json")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def workers(self):
        return self.status()["workers"]

    def worker_running(self, job_id):
        """The pid of the worker whose heartbeat says it runs job_id, else None."""
        for w in self.workers():
            if w["current_job"] == job_id:
                return w["pid"]
        return None

    def shutdown(self):
        """Stop every worker gracefully, then SIGKILL whatever of this home is left."""
        if not (self.home / "data").exists():
            return
        try:
            self.stop("--timeout", "2", timeout=40)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while home_processes(self.home) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_processes(home_processes(self.home))
        for name in os.listdir(self.home / "data" / "supervisors") \
                if (self.home / "data" / "supervisors").exists() else ():
            os.unlink(self.home / "data" / "supervisors" / name)


@pytest.fixture
def pool(home, cli, run_queuectl):
    """Real workers for this test's home; stopped (and any leftover killed) afterwards."""
    workers = Pool(home, cli, run_queuectl)
    yield workers
    workers.shutdown()


# ---- one worker, no supervisor -----------------------------------------------------------------

WORKER_SCRIPT = ("import sys; from queuectl.home import Home; from queuectl.worker import "
                 "run_worker; sys.exit(run_worker(Home(sys.argv[1])))")


def drop_job(spool, job_id, command, **fields):
    """A drop-in (tmp + rename), so nothing but the worker touches the index."""
    tmp = spool / "tmp" / job_id
    tmp.write_text(json.dumps({"command": command, **fields}))
    os.rename(tmp, spool / "pending" / f"{job_id}.json")


@pytest.fixture
def lone_worker(home):
    """A worker process of its own (no supervisor to restart it if it dies)."""
    procs = []

    def start():
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(home)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
