"""The multi-host mechanisms on a local disk (they run everywhere, FUSE or not): lost races
reported by a fresh fd are silent skips without fd leaks, a lost claim lock is detected
(and a finishing move refused), the spool_shared setting and filesystem detection, worker
heartbeats and stop requests in spool/workers/. The same on a real distributed filesystem
is in test_multihost.py."""

import errno
import json
import os
import time

import pytest

from queuectl import fsops
from queuectl.home import Home
from queuectl.filesystems import filesystem_type, is_shared_filesystem
from queuectl.spool import LostClaim, Spool
from workerkit import pool  # noqa: F401



@pytest.fixture
def sp(spool):
    s = Spool(str(spool))
    s.ensure_layout()
    return s


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def fail_on(op, code):
    def hook(name, path):
        if name == op:
            raise OSError(code, os.strerror(code), path)
    return hook


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ESTALE, errno.EBADF])
def test_a_fresh_fd_that_reports_the_file_gone_is_a_lost_race(sp, code):
    """What a network filesystem says when another host unlinked the file after our open
    (ENOENT on JuiceFS, ESTALE on NFS, EBADF after a client restart): claim and the
    recovery probe return None, and close the fd."""
    sp.publish("j", b'{"command": "x"}\n')
    sp.publish("k", b'{"command": "x"}\n', state="processing")
    before = open_fds()
    fsops.set_hook(fail_on("flock", code))
    try:
        assert sp.claim("pending", "j") is None
        assert sp.probe_orphan("k") is None
    finally:
        fsops.set_hook(None)
    assert open_fds() == before
    assert sp.find("j") == ["pending"] and sp.find("k") == ["processing"]


def test_a_dead_mount_is_not_a_lost_race(sp):
    """ENOTCONN is the spool being unreachable: raised (the worker backs off), fd closed."""
    sp.publish("k", b'{"command": "x"}\n', state="processing")
    before = open_fds()
    fsops.set_hook(fail_on("flock", errno.ENOTCONN))
    try:
        with pytest.raises(OSError) as caught:
            sp.probe_orphan("k")
    finally:
        fsops.set_hook(None)
    assert caught.value.errno == errno.ENOTCONN
    assert open_fds() == before


def test_a_claim_whose_file_was_taken_over_cannot_finish(sp):
    """Fencing: processing/<id> no longer the inode we locked (another host recovered it
    and a new copy sits there) -> check_claim and finish raise LostClaim, nothing moves."""
    sp.publish("j", b'{"command": "x"}\n')
    held = sp.claim("pending", "j")
    sp.check_claim(held)                                    # still ours
    os.unlink(sp.path("processing", "j"))                    # recovered elsewhere ...
    sp.publish("j", b'{"command": "other"}\n', state="processing")   # ... and claimed again
    with pytest.raises(LostClaim):
        sp.check_claim(held)
    with pytest.raises(LostClaim):
        sp.finish(held, b'{"command": "x", "attempts": 1}\n', "completed")
    assert sp.find("j") == ["processing"] and os.listdir(sp.dir("tmp")) == []
    sp.release(held, unlink=False)


def test_a_claim_whose_fd_went_bad_is_lost(sp):
    sp.publish("j", b'{"command": "x"}\n')
    held = sp.claim("pending", "j")
    os.close(held.fd)                            # what a restarted FUSE client leaves us
    with pytest.raises(LostClaim) as caught:
        sp.check_claim(held)
    assert caught.value.errno == errno.EBADF
    held.fd = -1


def test_filesystem_detection():
    assert filesystem_type("/proc") == "proc"
    assert [is_shared_filesystem(t) for t in ("nfs4", "ceph", "fuse.juicefs",
                                              "fuse.glusterfs", "ext4", "tmpfs", "fuseblk",
                                              None)] == [True] * 4 + [False] * 4


def test_spool_shared_setting(home, cli):
    assert Home(str(home)).shared_spool()[0] is False        # a local disk: auto says no
    assert cli("config", "set", "spool_shared", "YES").exit_code == 0
    assert Home(str(home)).shared_spool()[0] is True
    refused = cli("config", "set", "spool_shared", "maybe")
    assert refused.exit_code == 1
    assert "spool_shared must be one of auto, yes, no, got 'maybe'" in refused.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert status["spool_shared"] is True
    assert "spool shared with other hosts" in cli("status").stdout


def test_shared_spool_heartbeats_and_stop_requests(pool, home, spool, wait_until):
    """With spool_shared yes, workers publish heartbeats in spool/workers/ (removed at
    exit); `worker stop --host` names a host and leaves a stop request its pools poll."""
    pool.config(spool_shared="yes")
    pool.start(1)
    records = wait_until(lambda: os.listdir(spool / "workers"),
                         message="a heartbeat in spool/workers/")
    record = json.loads((spool / "workers" / records[0]).read_text())
    assert record["host"] == os.uname().nodename and records[0] == record["worker_id"] + ".json"
    assert [w["worker_id"] for w in pool.workers()] == [record["worker_id"]]
    out = pool.run("worker", "stop", "--host", "elsewhere", "--timeout", "1")
    assert out.exit_code == 0
    assert out.stdout.startswith("asked host elsewhere to stop (it has no live workers")
    assert (spool / "workers" / "elsewhere.stop").exists()
    assert len(pool.workers()) == 1                          # not this host's request
    out = pool.run("worker", "stop", "--host", os.uname().nodename, "--timeout", "1")
    assert out.stdout.startswith("stopped supervisor")
    assert [n for n in os.listdir(spool / "workers") if n.endswith(".json")] == []


def test_a_worker_on_a_slow_filesystem_runs_jobs_before_reading_the_whole_backlog(
        home, drop):
    """A (re)started worker reads the files a scan listed for at most JUDGE_BUDGET_SECONDS
    before it claims: with every open taking 5 ms (a network filesystem), its first claim
    comes after a few dozen reads, not after all 300 (on JuiceFS, under a kill storm, a
    worker restarted on a 2,000-file backlog was killed again before its first claim)."""
    from queuectl.worker import Worker
    for n in range(300):
        drop(f"j{n:04d}.json", '{"command": "true"}', age=5)
    worker = Worker(Home(str(home)))
    ops = []

    def slow_open(op, path):
        ops.append((op, path))
        if op == "open" and "/pending/" in path:
            time.sleep(0.005)
    fsops.set_hook(slow_open)
    try:
        assert worker.run_once() is True
    finally:
        fsops.set_hook(None)
    first_claim = next(i for i, (op, path) in enumerate(ops)
                       if op == "rename" and "/processing/" in path)
    reads = sum(1 for op, path in ops[:first_claim] if op == "open" and "/pending/" in path)
    assert 1 <= reads <= 60, reads
    assert worker.unjudged, "the rest is read between jobs"
    # The oldest name (ids begin with their time) was read first and ran first.
    assert ops[first_claim][1].endswith("/processing/j0000.json")
    # Between jobs the worker reads on; every job runs in the end.
    while worker.run_once():
        pass
    assert not worker.unjudged
    assert len(os.listdir(home / "spool" / "completed")) == 300
