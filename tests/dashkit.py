"""Helpers for the dashboard tests: the system Chromium (driven by Playwright, never a
downloaded browser), a real `queuectl dashboard` server process, and a queue home with
real workers, each shared by a test module (module-scoped fixtures keep the suite fast)."""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import QUEUECTL, queuectl_env
from workerkit import home_processes, kill_processes

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "test-token-0123456789"


def chromium_path():
    """The system Chromium, or skip (fail where QUEUECTL_REQUIRE_BROWSER is set, as in CI)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if os.path.exists(path):
        return path
    reason = ("headless Chromium is not installed (apt-get install -y chromium); "
              "the browser tests need it")
    if os.environ.get("QUEUECTL_REQUIRE_BROWSER"):
        pytest.fail(reason + " and QUEUECTL_REQUIRE_BROWSER is set")
    pytest.skip(reason)


class Queue:
    """A home driven through the installed `queuectl`, as a user would."""

    def __init__(self, home):
        self.home = home
        self.spool = home / "spool"

    def run(self, *args, input=None, check=True):
        proc = subprocess.run([QUEUECTL, *map(str, args)], capture_output=True, timeout=60,
                              input=input.encode() if input else None,
                              env=queuectl_env(self.home))
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def enqueue(self, job, *options):
        return self.run("enqueue", json.dumps(job), *options).stdout.decode().strip()

    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    def states(self, job_id):
        return [s for s in ("pending", "processing", "failed", "completed", "dead")
                if (self.spool / s / f"{job_id}.json").exists()]

    def ids(self, state):
        try:
            return [n[:-5] for n in os.listdir(self.spool / state) if n.endswith(".json")]
        except FileNotFoundError:
            return []

    def read(self, job_id, state):
        return json.loads((self.spool / state / f"{job_id}.json").read_bytes())

    def shutdown(self):
        if (self.home / "data").exists():
            self.run("worker", "stop", "--timeout", "2", check=False)
        deadline = time.monotonic() + 5
        while home_processes(self.home) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_processes(home_processes(self.home))


class Server:
    """`queuectl dashboard --port 0` in a subprocess; `url` is what it printed."""

    def __init__(self, home, *options, token=TOKEN):
        self.proc = subprocess.Popen([QUEUECTL, "dashboard", "--port", "0", "--token", token,
                                      *options], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=queuectl_env(home))
        self.lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("open "):
                self.url = line.split()[1]
                self.base = self.url.split("/?")[0]
                return
        self.stop()
        raise AssertionError(f"the dashboard did not start: {self.lines} "
                             f"{self.proc.stderr.read().decode()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
