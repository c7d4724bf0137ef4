"""Shared fixtures: a fresh queue home per test, a click runner bound to it, a helper that
runs the real installed `queuectl` in a subprocess, a polling `wait_until`, and `drop` for
writing files straight into the spool the way another tool would.

Nothing here mocks the filesystem or subprocesses: every test works on real files in
tmp_path and, where processes matter, on real processes."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from polling import wait_until as wait_until_fn
from progress import FileProgress
from click.testing import CliRunner

from queuectl.cli import main
from queuectl.spool import Spool

# The console script installed beside the interpreter running the tests (.venv/bin).
QUEUECTL = os.path.join(os.path.dirname(sys.executable), "queuectl")
# Variables that would point a command at some other queue than the test's own.
_FOREIGN_ENV = ("QUEUECTL_HOME", "QUEUECTL_SPOOL", "QUEUECTL_DATA", "QUEUECTL_FAULT",
                "QUEUECTL_FAULT_LOG")


@dataclass
class Ran:
    """What a finished `queuectl` process did; the same shape as click's Result."""
    exit_code: int
    stdout: str
    stderr: str
    args: tuple


def queuectl_env(home, **extra):
    """The environment for a real queuectl process bound to `home`."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["QUEUECTL_HOME"] = str(home)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _as_bytes(data):
    if data is None or isinstance(data, bytes):
        return data
    return data.encode("utf-8")


@pytest.fixture
def home(tmp_path):
    """A fresh, empty directory used as the queue's home (spool/ and data/ go inside)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def spool(home):
    """The home's spool directory (not created: the first write creates it)."""
    return home / "spool"


@pytest.fixture
def cli(home):
    """cli(*args, input=None) runs queuectl in-process against `home` and returns click's
    Result (exit_code, stdout, stderr kept apart). Unexpected exceptions propagate."""
    runner = CliRunner(env={name: None for name in _FOREIGN_ENV})

    def invoke(*args, input=None):
        return runner.invoke(main, ["--home", str(home), *map(str, args)], input=input,
                             catch_exceptions=False)
    return invoke


@pytest.fixture
def run_queuectl(home):
    """run_queuectl(*args, input=None, home=<the test's home>, timeout=30, env=None) runs
    the real installed `queuectl` as a subprocess with QUEUECTL_HOME set; returns Ran."""
    default_home = home

    def run(*args, input=None, home=None, timeout=30, env=None, cwd=None):
        proc = subprocess.run([QUEUECTL, *map(str, args)], input=_as_bytes(input),
                              capture_output=True, timeout=timeout, cwd=cwd,
                              env=queuectl_env(home or default_home, **(env or {})))
        return Ran(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                   proc.stderr.decode("utf-8", "replace"), tuple(args))
    return run


@pytest.fixture
def spawn_queuectl(home):
    """spawn_queuectl(*args, home=...) starts a real `queuectl` with stdin/stdout/stderr
    pipes and returns the Popen, for tests that need several running at once."""
    default_home = home

    def spawn(*args, home=None):
        return subprocess.Popen([QUEUECTL, *map(str, args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=queuectl_env(home or default_home))
    return spawn


@pytest.fixture
def wait_until():
    """wait_until(predicate, timeout=10, interval=0.02, message=None): poll until the
    predicate returns something truthy and return it; fail the test, naming what was
    awaited, on timeout. Use it instead of sleeping to wait for a state."""
    return wait_until_fn


@pytest.fixture
def drop(spool):
    """drop(name, data, state="pending", age=None) writes bytes or text straight into
    spool/<state>/<name> of an existing spool, as another tool would (no tmp/, no index),
    and returns the path.
    age=N sets the file's mtime N seconds in the past, so an unparsable file counts as
    settled without waiting."""
    def write(name, data, state="pending", age=None):
        Spool(str(spool)).ensure_layout()      # the spool exists, as queuectl made it
        path = spool / state / name
        path.write_bytes(_as_bytes(data))
        if age is not None:
            backdate(path, age)
        return path
    return write


def backdate(path, seconds):
    """Set a path's atime and mtime `seconds` in the past (not following symlinks)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


@pytest.fixture
def age_file():
    """age_file(path, seconds): move a file's mtime into the past."""
    return backdate


IS_ROOT = os.geteuid() == 0


def pytest_configure(config):
    # One line per test file (name, counts, seconds) instead of bare dots, so a slow or
    # hanging file is visible in CI's log while it runs.
    if config.option.verbose <= 0 and not config.option.collectonly:
        config.pluginmanager.register(FileProgress(config), "queuectl-file-progress")


def pytest_collection_modifyitems(config, items):
    """`root` tests need root; `nonroot` tests need an ordinary user (root passes every
    permission check) and are also selected by the `unprivileged` pass of `make test`."""
    for item in items:
        if item.get_closest_marker("nonroot"):
            item.add_marker(pytest.mark.unprivileged)
            if IS_ROOT:
                item.add_marker(pytest.mark.skip(
                    reason="needs an unprivileged user: runs in make test's unprivileged pass"))
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root"))
