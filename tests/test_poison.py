"""Poison jobs: a job that SIGKILLs its own worker every time it runs is buried after exactly
max_retries + 1 attempts (each one "worker died", each in another worker, each worker
restarted by the supervisor); a job past its timeout dies with its whole process group, a
grandchild that ignores SIGTERM included; and one poison job per 100 leaves the other 99
completing, each exactly once."""

import json
import os

import psutil
import pytest

from torture import (Checker, configure, done_ids, enqueue, finished, home_processes,
                     job_command, record, results_dir, workers)  # noqa: F401

POISON_RETRIES = 2        # so 3 attempts


def poison_body(supervisor_pid):
    """Kill the job's worker, but only after checking that $PPID is one: its parent must be
    our supervisor. Otherwise exit 99 (a plain failure the test tells apart). Then wait to be
    killed along with the dead worker's job group: if it were not, its lock would hold the
    job in processing/ for 300 s and the test would time out."""
    return ('set -- $(sed "s/^.*) //" /proc/$PPID/stat); '
            f'if [ "$2" = {supervisor_pid} ]; then kill -9 $PPID; sleep 300; else exit 99; fi')


def read_job(spool, state, job_id):
    return json.loads((spool / state / f"{job_id}.json").read_bytes())


def no_orphaned_jobs(home, workers):
    """True once only the supervisors and workers of the home are alive: every job of a dead
    worker died with it."""
    keep = set(workers.supervisors) | set(workers.live())
    return not [p for p in home_processes(home) if p.pid not in keep]


def supervisor_log_kills(home):
    text = (home / "data" / "logs" / "queuectl.log").read_text()
    return text.count("exited (killed by SIGKILL)")


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid):
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def test_job_that_kills_its_worker_is_dead_after_exactly_max_retries_plus_one(
        home, workers, wait_until):
    spool = home / "spool"
    results = results_dir(home)
    configure(home, backoff_max=0)
    supervisor = workers.start(1)
    first_worker = workers.live()
    [job_id] = enqueue(home, ["poison"], job_command(results, poison_body(supervisor)),
                       max_retries=POISON_RETRIES)
    wait_until(lambda: "poison" in done_ids(spool), timeout=60, interval=0.1,
               message="the poison job buried")
    job = read_job(spool, "dead", "poison")
    assert job["attempts"] == POISON_RETRIES + 1
    assert job["last_error"] == "worker died"
    wait_until(lambda: len(workers.live()) == 1, timeout=10, message="the worker restarted")
    wait_until(lambda: no_orphaned_jobs(home, workers), timeout=5,
               message="every poisoned attempt died with its worker")
    workers.stop()
    report = Checker(home, results).check(["poison"])
    report.assert_clean()
    runs = report.runs["poison"]
    # Each attempt ran in a different worker of our supervisor, which it killed.
    assert [r.attempt for r in runs] == list(range(1, POISON_RETRIES + 2))
    assert len({r.worker for r in runs}) == POISON_RETRIES + 1
    assert runs[0].worker == first_worker[0]
    assert all(r.end_ns is None for r in runs)          # killed, never exited 99
    assert supervisor_log_kills(home) == POISON_RETRIES + 1
    assert report.counts == {"pending": 0, "processing": 0, "failed": 0, "completed": 0,
                             "dead": 1}
    record("poison_kills_worker", attempts=job["attempts"], executions=len(runs),
           worker_kills=supervisor_log_kills(home))


def test_job_past_its_timeout_dies_with_its_whole_process_group(home, workers, wait_until):
    spool = home / "spool"
    results = results_dir(home)
    pids = results / "pids"
    # Two background children, one of which ignores SIGTERM, and a grandchild; the job's
    # shell records every pid and its own (the group's leader), then waits.
    body = (f"sleep 300 & echo $! >> {pids}; "
            f"sh -c 'trap \"\" TERM; sleep 300 & echo $! >> {pids}; wait' & echo $! >> {pids}; "
            f"echo $$ >> {pids}; wait")
    workers.start(1)
    enqueue(home, ["slow"], job_command(results, body), timeout=1, max_retries=0)
    wait_until(lambda: "slow" in done_ids(spool), timeout=30, interval=0.1,
               message="the timed-out job buried")
    job = read_job(spool, "dead", "slow")
    assert job["last_error"] == "timed out after 1s (process group killed)"
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 4
    leader = recorded[-1]
    assert [p for p in recorded if alive(p)] == []
    assert group_members(leader) == []
    workers.stop()
    report = Checker(home, results).check(["slow"])
    report.assert_clean()
    assert [r.end_ns for r in report.runs["slow"]] == [None]      # killed mid-run, once
    record("poison_timeout", duration_s=job["duration_s"], survivors=0)


def run_one_in_a_hundred(home, workers, wait_until, name, jobs):
    spool = home / "spool"
    results = results_dir(home)
    configure(home, backoff_max=0)
    supervisor = workers.start(4)
    poison = [f"poison-{n:04d}" for n in range(jobs // 100)]
    good = [f"good-{n:05d}" for n in range(jobs - len(poison))]
    acked = enqueue(home, good, job_command(results))
    acked += enqueue(home, poison, job_command(results, poison_body(supervisor)),
                     max_retries=POISON_RETRIES)
    wait_until(lambda: finished(spool, acked), timeout=60 + jobs / 20, interval=0.1,
               message="every job completed or dead")
    wait_until(lambda: no_orphaned_jobs(home, workers), timeout=5,
               message="every poisoned attempt died with its worker")
    workers.stop()
    report = Checker(home, results).check(acked)
    report.assert_clean()
    assert report.counts["completed"] == len(good)
    assert report.counts["dead"] == len(poison)
    assert sorted(n[:-5] for n in os.listdir(spool / "dead")) == poison
    for job_id in poison:
        job = read_job(spool, "dead", job_id)
        assert (job["attempts"], job["last_error"]) == (POISON_RETRIES + 1, "worker died")
        assert len(report.runs[job_id]) == POISON_RETRIES + 1
    # The good jobs each ran exactly once, to the end.
    assert all(len(report.runs[i]) == 1 and report.runs[i][0].end_ns for i in good)
    assert report.duplicates == len(poison) * POISON_RETRIES
    record(name, jobs=jobs, poison=len(poison), completed=report.counts["completed"],
           dead=report.counts["dead"], worker_kills=supervisor_log_kills(home),
           good_duplicates=sum(len(report.runs[i]) - 1 for i in good))


def test_one_poison_job_per_hundred_leaves_the_others_completing(home, workers, wait_until):
    run_one_in_a_hundred(home, workers, wait_until, "poison_one_per_100", 300)


@pytest.mark.stress
def test_one_poison_job_per_hundred_full_size(home, workers, wait_until):
    run_one_in_a_hundred(home, workers, wait_until, "poison_one_per_100_stress", 3000)
