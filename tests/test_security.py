"""Security at start-up (issue 5, test 10). Workers refuse, with one clear `Error:` line and
exit 1, to start on a spool another user could tamper with: a world-writable spool or state
directory without the sticky bit, a state directory replaced by a symbolic link, a spool (or
state directory) owned by another user (root included; those cases need root to chown and
are skipped otherwise). `rejected/`, `output/` and `data/` are created 0700. A symlink
planted as `output/<id>.log` before the job runs, or in `tmp/` before enqueue writes there,
is never followed: its target is neither changed nor created."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.unprivileged

from queuectl import spool as spoolmod
from queuectl.errors import UnsafeSpool
from queuectl.home import Home
from queuectl.security import check_spool
from queuectl.spool import ALL_DIRS, Spool

QUEUECTL = os.path.join(os.path.dirname(sys.executable), "queuectl")
_FOREIGN_ENV = ("QUEUECTL_HOME", "QUEUECTL_SPOOL", "QUEUECTL_DATA", "QUEUECTL_FAULT",
                "QUEUECTL_FAULT_LOG")
FOREIGN_UID = 12345
START_COMMANDS = {
    "start": ("worker", "start"),
    "foreground": ("worker", "start", "--foreground"),
    "run": ("worker", "run"),
}


def queuectl(home, *args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["QUEUECTL_HOME"] = str(home)
    return subprocess.run([QUEUECTL, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def spool(home):
    Spool(str(home / "spool")).ensure_layout()
    return home / "spool"


def assert_refused(home, expected, command="start"):
    """Every way of starting workers refuses with exactly this one line, and none runs."""
    ran = queuectl(home, *START_COMMANDS[command], timeout=30)
    assert (ran.returncode, ran.stdout, ran.stderr) == (1, "", f"Error: {expected}\n")
    records = home / "data" / "supervisors"
    assert not records.exists() or os.listdir(records) == []
    index = Home(str(home)).index
    assert index.workers() == []           # no worker ever reported in
    index.close()


# ---- refusing to start ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", *ALL_DIRS])
def test_world_writable_without_sticky_bit_is_refused(home, spool, name):
    path = spool / name if name else spool
    os.chmod(path, 0o777)
    assert_refused(home, f"{path} is world-writable without the sticky bit; run chmod o-w {path}")


@pytest.mark.parametrize("command", ["foreground", "run"])
def test_every_way_of_starting_refuses(home, spool, command):
    os.chmod(spool / "pending", 0o777)
    path = spool / "pending"
    assert_refused(home, f"{path} is world-writable without the sticky bit; run chmod o-w {path}",
                   command)


@pytest.mark.parametrize("name", ["", "pending", "tmp"])
def test_world_writable_with_the_sticky_bit_is_accepted(home, spool, name):
    """Like /tmp: with the sticky bit others cannot rename or delete our files."""
    os.chmod(spool / name if name else spool, 0o1777)
    check_spool(Home(str(home)))          # no UnsafeSpool


@pytest.mark.parametrize("name", ["pending", "processing", "completed", "tmp", "output",
                                  "rejected"])
def test_state_directory_replaced_by_a_symlink_is_refused(home, spool, tmp_path, name):
    elsewhere = tmp_path / f"elsewhere-{name}"
    shutil.move(str(spool / name), elsewhere)
    os.symlink(elsewhere, spool / name)
    assert_refused(home, f"{spool / name} is a symbolic link; state directories must be real "
                   "directories")
    assert os.listdir(elsewhere) == []             # nothing was created through it


@pytest.mark.root
def test_spool_owned_by_another_user_is_refused_even_for_root(home, spool):
    os.chown(spool, FOREIGN_UID, FOREIGN_UID)
    assert_refused(home, f"the spool {spool} is owned by uid {FOREIGN_UID}, not by you "
                   f"(uid {os.geteuid()}); refusing to run its jobs")


@pytest.mark.root
@pytest.mark.parametrize("name", ["pending", "processing", "tmp"])
def test_state_directory_owned_by_another_user_is_refused(home, spool, name):
    os.chown(spool / name, FOREIGN_UID, FOREIGN_UID)
    assert_refused(home, f"{spool / name} is owned by uid {FOREIGN_UID}, not by you")


def test_check_spool_raises_unsafe_spool(home, spool):
    os.chmod(spool / "failed", 0o757)
    with pytest.raises(UnsafeSpool, match="world-writable without the sticky bit"):
        check_spool(Home(str(home)))


# ---- private directories -----------------------------------------------------------------------

def test_rejected_output_and_data_are_private(home, cli, drop, tmp_path):
    old = os.umask(0o022)           # the usual umask: anything not 0700 on purpose shows
    try:
        assert cli("enqueue", '{"id": "j1", "command": "echo secret"}').exit_code == 0
        drop("bad.json", b"not json", age=60)
        assert cli("status").exit_code == 0
        worker = subprocess.Popen([QUEUECTL, "worker", "run"],
                                  env={**os.environ, "QUEUECTL_HOME": str(home)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (home / "spool" / "completed" / "j1.json").exists():
                assert time.monotonic() < deadline, "j1 did not complete"
                time.sleep(0.02)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    finally:
        os.umask(old)
    assert (home / "spool" / "rejected" / "bad.json").exists()
    assert (home / "spool" / "output" / "j1.log").exists()
    for path in (home / "spool" / "rejected", home / "spool" / "output", home / "data",
                 home / "data" / "logs"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    assert stat.S_IMODE(os.stat(home / "spool" / "output" / "j1.log").st_mode) == 0o600


# ---- planted symlinks are never followed ---------------------------------------------------------

def _run_one_job(home, job_id, wait_until):
    worker = subprocess.Popen([QUEUECTL, "worker", "run"],
                              env={**os.environ, "QUEUECTL_HOME": str(home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (home / "spool" / "completed" / f"{job_id}.json").exists(),
                   timeout=20, message=f"{job_id} to complete")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-file", "dangling"])
def test_symlink_planted_as_the_output_log_is_not_followed(home, cli, spool, tmp_path,
                                                           wait_until, target_exists):
    target = tmp_path / "victim"
    if target_exists:
        target.write_bytes(b"precious\n")
    assert cli("enqueue", '{"id": "j1", "command": "echo job output"}').exit_code == 0
    log = spool / "output" / "j1.log"
    os.symlink(target, log)
    _run_one_job(home, "j1", wait_until)
    if target_exists:
        assert target.read_bytes() == b"precious\n"
    else:
        assert not os.path.lexists(target), "the dangling symlink's target was created"
    assert not log.is_symlink() and stat.S_ISREG(os.lstat(log).st_mode)
    assert "job output" in log.read_text()
    assert json.loads((spool / "completed" / "j1.json").read_text())["exit_code"] == 0


@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-file", "dangling"])
def test_symlink_planted_in_tmp_is_not_followed_by_enqueue(home, cli, spool, tmp_path,
                                                           monkeypatch, target_exists):
    """enqueue's tmp/ name is host.pid.random.counter; with the randomness pinned (and the
    process's names started afresh) the name is known in advance, so a symlink can sit
    exactly where enqueue writes. enqueue must meet it (its open of that very path is seen
    through fsops' hook), refuse it (O_EXCL|O_NOFOLLOW: "File exists"), exit 1 and publish
    nothing."""
    from queuectl import fsops
    monkeypatch.setattr(os, "urandom", lambda n: b"\x01" * n)
    monkeypatch.setattr(spoolmod, "_tmp_names", [])
    planted = spool / "tmp" / f"{spoolmod._HOST}.{os.getpid()}.{'01' * 4}.0"
    target = tmp_path / "victim"
    if target_exists:
        target.write_bytes(b"precious\n")
    os.symlink(target, planted)
    opened = []
    fsops.set_hook(lambda op, path: opened.append(path) if op == "open" else None)
    try:
        result = cli("enqueue", '{"id": "j1", "command": "echo hi"}')
    finally:
        fsops.set_hook(None)
    assert opened == [str(planted)]                      # the symlink branch, and only it
    assert result.exit_code == 1
    assert result.stderr == f"Error: File exists: {planted}\n"
    if target_exists:
        assert target.read_bytes() == b"precious\n"
    else:
        assert not os.path.lexists(target), "the dangling symlink's target was created"
    assert os.readlink(planted) == str(target)           # the link itself is left alone
    assert os.listdir(spool / "pending") == []
