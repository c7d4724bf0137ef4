"""The torture harness checks itself: the job command records what the suite relies on (and
reports a twin execution of one id that is alive at the same time), and the Checker counts
each kind of violation on a spool made by hand. Without these, a checker that always said
"clean" would pass every torture test."""

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import time

import psutil

from torture import (Checker, Kill, index_lag, index_looks, index_rows, job_command, read_results,
                     results_dir, scan_spool)


def run_job(command, job_id, attempt=1, wait=True):
    env = dict(os.environ, QUEUECTL_JOB_ID=job_id, QUEUECTL_ATTEMPT=str(attempt))
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, start_new_session=True)
    if wait:
        assert proc.wait(timeout=10) == 0
    return proc


def test_the_job_command_records_start_and_end_with_the_worker_pid(home):
    results = results_dir(home)
    run_job(job_command(results), "a-1", attempt=2)
    [path] = results.glob("w*.log")
    assert path.name == f"w{os.getpid()}.log"          # the shell's parent: here, us
    lines = [line.split() for line in path.read_text().splitlines()]
    assert [line[:3] for line in lines] == [["a-1", "2", "start"], ["a-1", "2", "end"]]
    assert lines[0][4] == lines[1][4] and lines[0][5] == str(os.getpid())
    assert int(lines[0][3]) <= int(lines[1][3])
    [run] = read_results(results).executions
    assert (run.job_id, run.attempt, run.end_ns is not None) == ("a-1", 2, True)


def test_the_job_command_keeps_the_body_exit_status(home):
    results = results_dir(home)
    env = dict(os.environ, QUEUECTL_JOB_ID="x", QUEUECTL_ATTEMPT="1")
    code = subprocess.run(["/bin/sh", "-c", job_command(results, "exit 3")], env=env).returncode
    assert code == 3
    code = subprocess.run(["/bin/sh", "-c", job_command(results, "false")], env=env).returncode
    assert code == 1


def test_two_live_executions_of_one_id_are_reported_as_overlapping(home, wait_until):
    results = results_dir(home)
    first = run_job(job_command(results, "sleep 1"), "twin", wait=False)
    wait_until(lambda: list(results.glob("w*.log")), message="the first run started")
    run_job(job_command(results), "twin")
    assert first.wait(timeout=10) == 0
    report = Checker(home, results).check(["twin"], index=False)
    assert report.overlapping == ["twin"]
    assert report.duplicates == 1 and report.max_runs_per_id == 2


def test_a_killed_execution_does_not_fake_an_overlap(home, wait_until):
    results = results_dir(home)
    first = run_job(job_command(results, "sleep 30"), "k", wait=False)
    wait_until(lambda: list(results.glob("w*.log")), message="the first run started")
    os.killpg(first.pid, signal.SIGKILL)       # the whole group, as queuectl kills a job
    first.wait()
    wait_until(lambda: not group_alive(first.pid), message="the killed group gone")
    run_job(job_command(results), "k", attempt=2)
    report = Checker(home, results).check(["k"], index=False)
    assert report.overlapping == [] and report.duplicates == 1


def test_a_surviving_child_of_a_killed_execution_is_an_overlap(home, wait_until):
    """Killing only the job's shell leaves its `sleep` holding the lock: still running."""
    results = results_dir(home)
    first = run_job(job_command(results, "sleep 30"), "s", wait=False)
    # The shell forks `sleep` after writing its start line: kill it only once the child
    # that inherits the lock exists, or nothing would hold the lock.
    wait_until(lambda: any(child.name() == "sleep"
                           for child in psutil.Process(first.pid).children()),
               message="the first run's sleep")
    first.kill()
    first.wait()
    try:
        run_job(job_command(results), "s", attempt=2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
    report = Checker(home, results).check(["s"], index=False)
    assert report.overlapping == ["s"]


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def write_job(spool, state, job_id, doc=None):
    (spool / state).mkdir(parents=True, exist_ok=True)
    path = spool / state / f"{job_id}.json"
    path.write_text(json.dumps(doc or {"id": job_id, "command": "true"}))
    return path


def test_the_checker_counts_every_kind_of_violation(home):
    spool = home / "spool"
    results = results_dir(home)
    for state in ("pending", "processing", "failed", "completed", "dead", "rejected", "tmp"):
        (spool / state).mkdir(parents=True, exist_ok=True)
    write_job(spool, "completed", "ok")
    write_job(spool, "completed", "twice")
    write_job(spool, "pending", "twice")
    write_job(spool, "completed", "norun")
    orphan = write_job(spool, "processing", "orphan")
    held = write_job(spool, "processing", "held")
    (spool / "pending" / "broken.json").write_text('{"command": ')
    (spool / "failed" / "notes.txt").write_text("hello")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        (results / "w1.log").write_text(
            f"ok 1 start {now} 10 1\nok 1 end {now + 5} 10 1\n"
            f"stranger 1 start {now} 11 1\n"
            f"twice 1 start {now} 12 1\ntwice 1 end {now + 100} 12 1\n"
            "garbage line\n")
        (results / "w2.log").write_text(f"twice 2 start {now + 50} 13 2\n"
                                        f"twice 2 end {now + 60} 13 2\n")
        report = Checker(home, results).check(["ok", "twice", "norun", "lost"], index=False)
    finally:
        os.close(fd)
    assert report.lost == ["lost"]
    assert report.unexpected == ["stranger"]
    assert report.overlapping == ["twice"]                 # by time: 50 < 100
    assert report.two_states == ["twice: ['pending', 'completed']"]
    assert report.unowned_processing == ["orphan.json"]    # held.json is locked
    assert sorted(report.unparseable) == ["failed/notes.txt: not a job file name",
                                          "pending/broken.json: not strict JSON: "
                                          "Expecting value: line 1 column 13 (char 12)"]
    assert report.completed_unrun == ["norun"]
    assert report.malformed_results == ["w1.log: 'garbage line'"]
    assert (report.duplicates, report.max_runs_per_id) == (1, 2)
    assert report.processing == ["held", "orphan"]
    assert orphan.exists()


def test_the_checker_sees_the_index_disagree_with_the_spool(home, cli):
    spool = home / "spool"
    assert cli("enqueue", '{"id": "drifted", "command": "true"}').exit_code == 0
    assert cli("list").exit_code == 0
    clean = Checker(home).check(["drifted"], index=True)
    assert clean.index_disagreements == []
    # Make the index say dead/ while the file is in pending/, and its looks say both
    # directories were seen long after their last change, so no ingest rescans them.
    db = sqlite3.connect(home / "data" / "queue.db")
    with db:
        db.execute("UPDATE jobs SET state='dead' WHERE id='drifted'")
        db.execute("UPDATE looks SET look_ns = mtime_ns + 10000000000")
        for state in ("pending", "dead"):
            mtime = os.stat(spool / state).st_mtime_ns
            db.execute("INSERT OR REPLACE INTO looks VALUES (?, ?, ?)",
                       (state, mtime, mtime + 10**10))
    db.close()
    report = Checker(home).check(["drifted"], index=True)
    assert report.index_disagreements[0] == "drifted: index ['dead'], spool ['pending']"
    assert any(p.startswith("status counts") for p in report.index_disagreements)


def test_a_rerun_without_a_kill_of_the_worker_before_is_unexplained(home):
    """Per-id accounting: attempt 2 is explained only if attempt 1's worker was killed
    before it started and ran nothing after attempt 1."""
    results = results_dir(home)
    s = 1_000_000_000
    (results / "w1.log").write_text(f"a 1 start {10 * s} 50 100\n"
                                    f"b 1 start {10 * s} 51 200\nb 1 end {11 * s} 51 200\n"
                                    f"c 1 start {12 * s} 52 200\n")
    (results / "w2.log").write_text(f"a 2 start {20 * s} 60 101\na 2 end {21 * s} 60 101\n"
                                    f"b 2 start {20 * s} 61 101\nb 2 end {21 * s} 61 101\n"
                                    f"c 2 start {20 * s} 62 101\nc 2 end {21 * s} 62 101\n")
    kills = [Kill(0, 100, True, 15 * s),        # worker 100 died running a: explained
             Kill(0, 200, True, 15 * s)]        # worker 200 ran c after b: b's rerun is not
    report = Checker(home, results).check(["a", "b", "c"], index=False, kills=kills)
    assert [r.split(":")[0] for r in report.unexplained_reruns] == ["b"]
    no_kills = Checker(home, results).check(["a", "b", "c"], index=False, kills=[])
    assert [r.split(":")[0] for r in no_kills.unexplained_reruns] == ["a", "b", "c"]
    late = [Kill(0, 100, True, 25 * s), Kill(0, 200, True, 25 * s)]  # after the rerun
    report = Checker(home, results).check(["a", "b", "c"], index=False, kills=late)
    assert [r.split(":")[0] for r in report.unexplained_reruns] == ["a", "b", "c"]


def test_index_lag_reads_the_workers_rows_and_explains_only_killed_finishers(home, cli):
    """index_lag reads queue.db as it is (no resync): a row that disagrees with the spool
    is allowed only if the job's last execution's worker was killed."""
    spool = home / "spool"
    for job_id in ("k", "n"):
        assert cli("enqueue", json.dumps({"id": job_id, "command": "true"})).exit_code == 0
        os.rename(spool / "pending" / f"{job_id}.json", spool / "completed" / f"{job_id}.json")
    results = results_dir(home)
    (results / "w7.log").write_text("k 1 start 10 1 7\nn 1 start 10 2 8\n")
    runs = read_results(results).by_id()
    allowed, unexplained = index_lag(home, scan_spool(spool), runs, [Kill(0, 7, True, 20)])
    assert allowed == ["k: index pending, spool completed"]
    assert unexplained == ["n: index pending, spool completed"]
    assert index_rows(home) == {"k": "pending", "n": "pending"}     # no resync happened
    # A lag in a directory the next ingest would skip (its look is recent and not racy)
    # would last for ever: not allowed, even after a kill.
    mtime = os.stat(spool / "completed").st_mtime_ns
    db = sqlite3.connect(home / "data" / "queue.db")
    with db:
        db.execute("INSERT OR REPLACE INTO looks VALUES ('completed', ?, ?)",
                   (mtime, mtime + 10**10))
    db.close()
    allowed, unexplained = index_lag(home, scan_spool(spool), runs, [Kill(0, 7, True, 20)])
    assert allowed == [] and len(unexplained) == 2, index_looks(home)
