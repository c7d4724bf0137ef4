"""Running one job's command (queuectl.runner): /bin/sh -c in its own session and process
group, the queue's environment, the inherited job lock, the output log with a header and a
footer per attempt, results for exit codes, signals and spawn failures, and killing the
whole process group. Real processes throughout; the last tests go through real workers."""

import fcntl
import os
import signal
import time

import pytest

from queuectl import runner
from workerkit import group_alive, pid_alive, pool, q, read_job  # noqa: F401

WORKER = "worker test:1"


@pytest.fixture
def logdir(tmp_path):
    path = tmp_path / "output"
    path.mkdir()
    return path


@pytest.fixture
def lockfile(tmp_path):
    """An fd holding an exclusive flock, standing in for a claimed job file."""
    path = tmp_path / "job.json"
    path.write_text('{"command": "true"}')
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield fd
    try:
        os.close(fd)
    except OSError:
        pass


def start(command, logdir, lockfile, cwd=None, job_id="j1", attempt=1, home="/q/home"):
    return runner.RunningJob(command, str(cwd or logdir), runner.job_environment(
        job_id, attempt, home), lockfile, str(logdir / f"{job_id}.log"),
        runner.header(job_id, attempt, WORKER, "2030-01-01T00:00:00.000000Z"))


def test_job_runs_in_its_own_session_and_group_with_the_queue_environment(
        logdir, lockfile, tmp_path):
    cwd = tmp_path / "work dir"
    cwd.mkdir()
    job = start('echo "ids $$ $PPID"; read -r stat < /proc/$$/stat; echo "stat $stat"; '
                'echo "env $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $QUEUECTL_HOME"; pwd',
                logdir, lockfile, cwd=cwd, job_id="env-job", attempt=3, home="/q/home")
    result = job.finish(WORKER)
    assert (result.ok, result.exit_code, result.error) == (True, 0, None)
    text = (logdir / "env-job.log").read_text()
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.split() and line.split()[0] in ("ids", "stat", "env")}
    pid, ppid = int(rows["ids"][0]), int(rows["ids"][1])
    assert pid == job.pid
    assert ppid == os.getpid()                    # /bin/sh is a direct child of its worker
    after_comm = " ".join(rows["stat"]).rsplit(")", 1)[1].split()
    pgrp, session = int(after_comm[2]), int(after_comm[3])
    assert (pgrp, session) == (pid, pid)          # its own process group and session
    assert rows["env"] == ["env-job", "3", "/q/home"]
    assert text.splitlines()[-2] == str(cwd)


def test_output_log_has_a_header_and_a_footer_per_attempt(logdir, lockfile):
    first = start("echo first out; echo first err >&2", logdir, lockfile, attempt=1)
    first.finish(WORKER)
    second = start("echo second; exit 5", logdir, lockfile, attempt=2)
    result = second.finish(WORKER)
    text = (logdir / "j1.log").read_text().splitlines()
    assert text[0] == f"=== queuectl j1 attempt 1 at 2030-01-01T00:00:00.000000Z on {WORKER}"
    assert sorted(text[1:3]) == ["first err", "first out"]
    assert text[3].startswith("=== end: ok (") and text[3].endswith(f"s) {WORKER}")
    assert text[4] == f"=== queuectl j1 attempt 2 at 2030-01-01T00:00:00.000000Z on {WORKER}"
    assert text[5] == "second"
    assert text[6].startswith("=== end: exit code 5: second (")
    assert len(text) == 7
    assert (result.exit_code, result.error) == (5, "exit code 5: second")


def test_the_job_keeps_its_lock_after_the_worker_lets_go(logdir, lockfile, tmp_path,
                                                         wait_until):
    """The job inherits the locked fd: with the worker's copy closed (as if it were
    SIGKILLed) nobody else can lock the job file until the job itself exits."""
    release = tmp_path / "release"
    job = start(f"while [ ! -e {q(release)} ]; do sleep 0.02; done", logdir, lockfile)
    os.close(lockfile)
    probe = os.open(tmp_path / "job.json", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        release.touch()
        wait_until(lambda: job.poll() is not None, message="the job to exit")
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    assert job.finish(WORKER).ok


def test_a_signal_is_reported_by_name(logdir, lockfile):
    result = start("kill -9 $$", logdir, lockfile).finish(WORKER)
    assert (result.signal, result.exit_code, result.error) == (9, None, "killed by SIGKILL")


def test_command_not_found_gives_127_and_the_shells_message(logdir, lockfile):
    result = start("no-such-command-qx42 --flag", logdir, lockfile).finish(WORKER)
    assert result.exit_code == 127
    assert result.error.startswith("exit code 127: ")
    assert "no-such-command-qx42" in result.error and "not found" in result.error


def test_a_file_that_is_not_executable_gives_126_and_the_shells_message(logdir, lockfile,
                                                                        tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    result = start(q(script), logdir, lockfile).finish(WORKER)
    assert result.exit_code == 126
    assert result.error.startswith("exit code 126: ")
    assert "Permission denied" in result.error and str(script) in result.error


def test_a_missing_working_directory_is_a_spawn_failure_not_an_exception(logdir, lockfile,
                                                                         tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    job = start("echo never", logdir, lockfile, cwd=missing)
    assert job.pid is None and job.poll() == -1
    result = job.finish(WORKER)
    assert result.exit_code == 127
    assert result.error == f"cannot start: No such file or directory: {missing}"
    text = (logdir / "j1.log").read_text()
    assert f"cannot start: No such file or directory: {missing}\n" in text
    assert "never" not in text.replace("echo never", "")


def test_kill_group_leaves_no_grandchild(logdir, lockfile, tmp_path, wait_until):
    grandchild = tmp_path / "grandchild.pid"
    job = start(f"sleep 60 & echo $! > {q(grandchild)}; sleep 60", logdir, lockfile)
    pgid = job.pid
    assert os.getpgid(pgid) == pgid

    def spawned():
        return grandchild.exists() and grandchild.read_text().strip()
    gpid = int(wait_until(spawned, message="the grandchild to start"))
    assert os.getpgid(gpid) == pgid
    job.kill_group(grace=5)
    assert not group_alive(pgid)
    assert not pid_alive(gpid)
    result = job.finish(WORKER)
    assert result.signal == signal.SIGTERM and result.error == "killed by SIGTERM"
    assert result.duration_s < 5                  # SIGTERM was enough, no grace wasted


def test_kill_group_sigkills_members_that_ignore_sigterm(logdir, lockfile, tmp_path,
                                                         wait_until):
    grandchild = tmp_path / "grandchild.pid"
    job = start(f"trap '' TERM; sleep 60 & echo $! > {q(grandchild)}; sleep 60; sleep 60",
                logdir, lockfile)
    gpid = int(wait_until(lambda: grandchild.exists() and grandchild.read_text().strip(),
                           message="the grandchild to start"))
    job.kill_group(grace=0.3)
    assert not group_alive(job.pid)
    assert not pid_alive(gpid)
    assert job.finish(WORKER).error == "killed by SIGKILL"


# ---- through real workers --------------------------------------------------------------------

def test_spawn_failures_through_a_worker_record_why(pool, spool, wait_until, tmp_path):
    missing = tmp_path / "nowhere"
    pool.start(1)
    pool.enqueue({"id": "notfound", "command": "no-such-command-qx42 arg", "max_retries": 0})
    pool.enqueue({"id": "nocwd", "command": "echo hi", "cwd": str(missing),
                  "max_retries": 0})
    wait_until(lambda: (spool / "dead" / "notfound.json").exists() and
               (spool / "dead" / "nocwd.json").exists(), timeout=20,
               message="both jobs in dead/")
    notfound = read_job(spool, "notfound", "dead")
    assert notfound["exit_code"] == 127 and notfound["attempts"] == 1
    assert notfound["last_error"].startswith("exit code 127: ")
    assert "no-such-command-qx42" in notfound["last_error"]
    assert "not found" in notfound["last_error"]
    nocwd = read_job(spool, "nocwd", "dead")
    assert nocwd["attempts"] == 1
    assert nocwd["last_error"] == f"cannot start: No such file or directory: {missing}"
    logged = pool.run("logs", "nocwd")
    assert logged.exit_code == 0
    assert f"cannot start: No such file or directory: {missing}" in logged.stdout


def test_the_job_inherits_only_its_standard_fds_and_its_lock(logdir, lockfile, tmp_path):
    """Issue 9: jobs are spawned with posix_spawn, which closes only close-on-exec fds (not
    every other fd, as Popen's close_fds did). The worker's own fds (inotify's included,
    which watchdog creates inheritable, and fds the worker inherited from whoever started
    it) must not leak into jobs."""
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)          # as a shell or systemd might pass one on
    runner._INHERITED_FDS_CLOSED.clear()      # as in a fresh worker: before its first job
    from queuectl import watcher
    watch = watcher.start([str(tmp_path)])
    assert watch is not None
    try:
        job = start("ls /proc/$$/fd", logdir, lockfile)
        assert job.finish(WORKER).ok
    finally:
        watch.stop()
        os.close(leak_r)
        os.close(leak_w)
    lines = (logdir / "j1.log").read_text().splitlines()[1:-1]
    assert sorted(int(n) for n in lines) == sorted({0, 1, 2, lockfile}), lines


def test_process_stats_counts_a_process_from_its_first_sight_never_a_spike():
    """The first look at a process only starts its CPU measurement. Measured at once (the
    old code asked psutil twice in a row), a 10 ms clock tick landing between the two reads
    was divided by microseconds: a worker's first heartbeat showed 292 % on 2 cores. With
    this process busy, about 1 in 100 first looks straddles a tick."""
    firsts = []
    for _ in range(500):
        sum(range(2000))                       # stay on the CPU between looks
        firsts.append(runner.process_stats({})[0])
    assert firsts == [0.0] * 500, max(firsts)
    cache = {}
    runner.process_stats(cache)
    spin_until = time.monotonic() + 0.2        # from the second look on, it measures
    while time.monotonic() < spin_until:
        pass
    cpu, rss = runner.process_stats(cache)
    assert cpu > 0.0 and rss > 0
