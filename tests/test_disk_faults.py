"""Full disk and I/O errors (issue 5, test 9), injected through fsops' fault hook: the real
`queuectl` runs in a subprocess with QUEUECTL_FAULT set (`ENOSPC@write`, `EIO@fsync`,
`EIO@rename#2`: the errno on every call of that operation, or on its N-th call) and
QUEUECTL_FAULT_LOG recording every spool operation it makes.

Pass: `enqueue` exits 1 with one `Error:` line (no traceback) and leaves nothing in pending/
and nothing in tmp/, for a single job and for a batch failing part-way; a worker that
cannot finish a job leaves it recoverable (in processing/ and unlocked, or already moved on;
never lost), keeps running, and once the fault is gone a normal worker completes it; and an
fsync that failed is never retried on the same file: after a failed fsync of a path the log
shows no second fsync of that path before it is opened anew."""

import fcntl
import json
import os
import signal
import subprocess
import sys

import pytest

from polling import wait_until

QUEUECTL = os.path.join(os.path.dirname(sys.executable), "queuectl")
_FOREIGN_ENV = ("QUEUECTL_HOME", "QUEUECTL_SPOOL", "QUEUECTL_DATA", "QUEUECTL_FAULT",
                "QUEUECTL_FAULT_LOG")
STRERROR = {"ENOSPC": "No space left on device", "EIO": "Input/output error"}
JOB_STATES = ("pending", "processing", "failed", "completed", "dead")


def env_for(home, fault=None, log=None):
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["QUEUECTL_HOME"] = str(home)
    if fault:
        env["QUEUECTL_FAULT"] = fault
    if log:
        env["QUEUECTL_FAULT_LOG"] = str(log)
    return env


def queuectl(home, *args, fault=None, log=None, input=None):
    return subprocess.run([QUEUECTL, *map(str, args)], env=env_for(home, fault, log),
                          input=input, capture_output=True, text=True, timeout=60)


def listing(spool, state):
    try:
        return sorted(os.listdir(spool / state))
    except FileNotFoundError:
        return []


def states_of(spool, job_id):
    return [s for s in JOB_STATES if (spool / s / f"{job_id}.json").exists()]


def ops(log):
    """[(op, path)] in call order, as the fault hook logged them (a failing call included)."""
    try:
        text = log.read_text()
    except FileNotFoundError:
        return []
    return [tuple(line.split(" ", 1)) for line in text.splitlines() if line]


def assert_no_fsync_retried(log, errno_name, failing_op):
    """After each failed fsync of a path, that path is not fsynced again until reopened (a
    retry on the same fd could report success for pages the kernel already dropped)."""
    calls = ops(log)
    failed = set()
    if failing_op == "fsync":
        assert any(op == "fsync" for op, _ in calls), "no fsync was made at all"
    for i, (op, path) in enumerate(calls):
        if op == "open":
            failed.discard(path)
        elif op == "fsync":
            assert path not in failed, f"fsync of {path} retried after it failed: {calls}"
            if failing_op == "fsync":
                failed.add(path)


# ---- enqueue -------------------------------------------------------------------------------

ENQUEUE_FAULTS = [f"{e}@{op}" for op in ("write", "fsync", "link", "fsyncdir")
                  for e in ("ENOSPC", "EIO")]
BATCH_FAULTS = ["EIO@write#3", "ENOSPC@fsync#2", "EIO@link#3", "ENOSPC@link#2"]


def _check_refused(cli, spool, ran, fault, log):
    errno_name, op = fault.split("#")[0].split("@")
    assert ran.returncode == 1, (ran.stdout, ran.stderr)
    assert "Traceback" not in ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {STRERROR[errno_name]}: "), lines
    assert ran.stdout == "", "ids were printed for jobs that were not enqueued"
    assert listing(spool, "pending") == [], "a failed enqueue left a job in pending/"
    assert listing(spool, "tmp") == [], "a failed enqueue left a file in tmp/"
    assert any(o == op for o, _ in ops(log)), f"the fault never fired: {ops(log)}"
    assert_no_fsync_retried(log, errno_name, op)
    # The index does not list them either, and the next enqueue goes through.
    status = json.loads(cli("status", "--json").stdout)
    assert status["counts"]["pending"] == 0
    again = cli("enqueue", '{"id": "after", "command": "true"}')
    assert again.exit_code == 0 and again.stdout.split() == ["after"], again.stderr
    assert listing(spool, "pending") == ["after.json"] and listing(spool, "tmp") == []


@pytest.mark.parametrize("fault", ENQUEUE_FAULTS)
def test_enqueue_fails_cleanly(tmp_path, cli, spool, fault):
    home, log = spool.parent, tmp_path / "ops.log"
    ran = queuectl(home, "enqueue", '{"id": "j1", "command": "echo never"}', fault=fault,
                   log=log)
    _check_refused(cli, spool, ran, fault, log)


@pytest.mark.parametrize("fault", BATCH_FAULTS)
def test_a_batch_failing_part_way_enqueues_none(tmp_path, cli, spool, fault):
    home, log = spool.parent, tmp_path / "ops.log"
    batch = "".join(json.dumps({"id": f"b{i}", "command": "true"}) + "\n" for i in range(4))
    ran = queuectl(home, "enqueue", "-", input=batch, fault=fault, log=log)
    _check_refused(cli, spool, ran, fault, log)


@pytest.mark.parametrize("fault", ["EIO@syncfs", "ENOSPC@write#20", "EIO@link#35"])
def test_a_large_batch_synced_once_failing_enqueues_none(tmp_path, cli, spool, fault):
    """A batch of SYNCFS_MIN_BATCH or more is made durable by one syncfs (issue 9): a
    failing syncfs (or a write or link around it) refuses the whole batch, leaving nothing."""
    from queuectl import fsops
    from queuectl.spool import SYNCFS_MIN_BATCH
    home, log = spool.parent, tmp_path / "ops.log"
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    if not fsops.can_syncfs(str(spool / "tmp")):
        pytest.skip("syncfs is not used on this filesystem")
    batch = "".join(json.dumps({"id": f"b{i}", "command": "true"}) + "\n"
                    for i in range(SYNCFS_MIN_BATCH + 8))
    ran = queuectl(home, "enqueue", "-", input=batch, fault=fault, log=log)
    _check_refused(cli, spool, ran, fault, log)
    assert "syncfs" in [op for op, _ in ops(log)] or fault == "ENOSPC@write#20"


def test_a_failed_enqueue_races_no_worker(tmp_path, spool):
    """With a worker running, a batch whose pending/ fsync fails is withdrawn: whatever the
    worker did not take in that instant never runs, and nothing is left half-published."""
    home, log = spool.parent, tmp_path / "ops.log"
    worker = subprocess.Popen([QUEUECTL, "worker", "run"], env=env_for(home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (spool / "pending").exists(), 10,
                   message="the worker to create the spool")
        batch = "".join(json.dumps({"id": f"r{i}", "command": f"echo r{i} >> {tmp_path}/ran"})
                        + "\n" for i in range(20))
        ran = queuectl(home, "enqueue", "-", input=batch, fault="EIO@fsyncdir", log=log)
        assert ran.returncode == 1 and "Traceback" not in ran.stderr
        # A job taken in the instant between link and withdrawal is in processing/ (or
        # already done) once enqueue has exited: wait for it to finish, not for a while.
        wait_until(lambda: listing(spool, "processing") == [], 15,
                   message="any job the worker took to finish")
        taken = [line.split()[0] for line in (tmp_path / "ran").read_text().splitlines()] \
            if (tmp_path / "ran").exists() else []
        assert sorted(taken) == sorted(n[:-5] for n in listing(spool, "completed"))
        # Only jobs a worker took in the instant between link and withdrawal may have run,
        # and each of those is logged as such.
        logged = (home / "data" / "logs" / "queuectl.log").read_text()
        for job_id in taken:
            assert f"a worker had already taken {job_id}" in logged
        assert listing(spool, "pending") == [] and listing(spool, "tmp") == []
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


# ---- a worker that cannot finish ---------------------------------------------------------------

FINISH_FAULTS = [
    "ENOSPC@write", "EIO@write",            # writing the finished record into tmp/
    "ENOSPC@fsync", "EIO@fsync",            # fsyncing it
    "ENOSPC@rename#2", "EIO@rename#2",      # moving it into completed/ (rename 1 is the claim)
    "EIO@fsyncdir",                         # fsyncing the directories it moves between
]


def _unlocked(path):
    """True if nobody holds a lock on the file (we can take it, and give it back)."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("fault", FINISH_FAULTS)
def test_a_worker_that_cannot_finish_leaves_the_job_recoverable(tmp_path, cli, spool, fault):
    home, log, ran_file = spool.parent, tmp_path / "ops.log", tmp_path / "ran"
    errno_name, op = fault.split("#")[0].split("@")
    assert cli("config", "set", "backoff_max", "0").exit_code == 0      # retry at once
    assert cli("config", "set", "worker_poll_interval", "0.2").exit_code == 0
    job = {"id": "j1", "command": f"echo ran >> {ran_file}"}
    assert cli("enqueue", json.dumps(job)).exit_code == 0
    app_log = home / "data" / "logs" / "queuectl.log"

    faulty = subprocess.Popen([QUEUECTL, "worker", "run"], env=env_for(home, fault, log),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ran_file.exists(), 15, message="the job to run under the faulty worker")
        wait_until(lambda: "could not finish j1" in app_log.read_text(), 15,
                 message="the worker to give up finishing j1")
        if "#" in fault:
            # One failing call: the worker's own recovery (at its next scan) moves the job
            # on, counting the lost attempt, and the job runs again and completes.
            wait_until(lambda: states_of(spool, "j1") == ["completed"], 15,
                     message="the faulty worker's recovery to move j1 on and complete it")
        else:
            # Every such call fails: the worker's recovery fails the same way, and the job
            # waits in processing/, unlocked, for a worker that can write.
            wait_until(lambda: "recovery of j1 failed" in app_log.read_text(), 15,
                     message="the worker's recovery of j1 to fail too")
            where = states_of(spool, "j1")
            # With directory fsyncs failing, recovery's move itself happens and only its
            # fsync fails: the copy left in processing/ is then a leftover beside it.
            assert where == ["processing"] or (op == "fsyncdir" and where[0] == "processing"
                                               and len(where) == 2), where
            assert _unlocked(spool / "processing" / "j1.json"), \
                "the job is held locked by a worker that is not running it"
        assert faulty.poll() is None, "the worker died: " + faulty.stderr.read()
        assert "Traceback" not in app_log.read_text()
    finally:
        faulty.send_signal(signal.SIGTERM)
        out, err = faulty.communicate(timeout=30)
    assert faulty.returncode == 0 and "Traceback" not in err, err
    assert_no_fsync_retried(log, errno_name, op)

    # The fault is gone: a normal worker recovers the job and completes it.
    normal = subprocess.Popen([QUEUECTL, "worker", "run"], env=env_for(home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: f":{normal.pid} started" in app_log.read_text(), 15,
                 message="the normal worker to start")
        wait_until(lambda: states_of(spool, "j1") == ["completed"], 20,
                 message="a normal worker to complete j1")
    finally:
        normal.send_signal(signal.SIGTERM)
        out, err = normal.communicate(timeout=30)
    assert normal.returncode == 0, err
    done = json.loads((spool / "completed" / "j1.json").read_text())
    runs = len(ran_file.read_text().split())
    assert done["exit_code"] == 0 and done["attempts"] == runs, (done, runs)
    assert listing(spool, "processing") == [] and listing(spool, "tmp") == []
    assert cli("fsck").exit_code == 0
