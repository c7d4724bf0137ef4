"""Kill storms: 4 workers under one supervisor while a random worker is killed every 200 ms
(the supervisor restarts it), jobs enqueued by real `queuectl enqueue -` producers meanwhile.
Each job sleeps 20-200 ms (torture.STORM_BODY) holding a per-id lock for its whole life, so a
job two workers both hold would run twice at once and say so.
The storms' jobs include dependencies (a dependent never starts before its dependency's
completing run ended) and unique keys (every key freed at the end, after fsck --repair for a
kill between a job's last move and freeing its key).

Checked twice: first as the running workers left the spool (processing/ emptied by their own
recovery, polled with a deadline; no manual repair) with the workers' own index rows read
straight from SQLite, then after `worker stop` and `queuectl recover` through list/status.
Pass: no acknowledged job lost, nothing unexpected runs, never two executions of one id at
once, no id in two states, processing/ and dead/ empty (max_retries 1000), nothing rejected;
every re-run of an id follows a kill of the worker that ran the attempt before
(torture.unexplained_reruns); an index row lags the spool only where its last worker was
killed and the next ingest rescans the file's directory (torture.index_lag). Variants:
producers SIGKILLed in the middle of their batch (every printed id runs, nothing
half-written is ever visible in pending/, nothing rejected), SIGTERM instead of SIGKILL
(nothing lost, nothing run twice, no index lag), and two planted bugs the checks must catch
(tests/plants: claims without their flock; unlink before the finishing move).

Sizes. By default the SIGKILL storm runs 300 jobs x 2 rounds (about 20 s of jobs per round
on 4 workers, 100-170 kills, 40-90 s with other test runs sharing the 2 cores), the SIGTERM
storm 150 x 1, the planted storms 100 and 150 jobs, the producer test 12 batches of 200 (two
in three killed). `pytest -m stress` runs both storms at 2,000 x 3 and 10,000 x 20 and 99
producer batches of 500. Seeds are recorded (set TORTURE_SEED to replay one)."""

import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import QUEUECTL, queuectl_env
from queuectl.worker import RECOVERY_SECONDS
from torture import (STORM_BODY, Checker, KillStorm, PendingWatch, configure, enqueue,
                     finished, ids_in, index_lag, job_command, job_lines, plant_env, qctl,
                     record, results_dir, scan_spool, seed_from_env, workers)  # noqa: F401

WORKERS = 4
BATCH = 250                 # jobs per `enqueue -` call
PRODUCERS = 2               # enqueue calls running at once (enqueue waits on fsync)
CI_STORM = (300, 2)         # jobs per round, rounds (20-200 ms jobs: see the docstring)
CI_SIGTERM = (150, 1)

STORM_SETTINGS = {"max_retries": 1000,     # a job hit by many kills must not go dead
                  "backoff_max": 0}        # ... nor wait out a backoff: retry at once


# The job mix: every DEP_EVERY-th job waits for the job before it in its batch (`after`),
# every KEY_EVERY-th holds a unique key of its own (taken at enqueue, freed when it ends).
DEP_EVERY, KEY_EVERY = 4, 3


def mixed_lines(ids, command):
    jobs = []
    for n, job_id in enumerate(ids):
        job = {"id": job_id, "command": command}
        if n % DEP_EVERY == DEP_EVERY - 1:
            job["after"] = [ids[n - 1]]
        if n % KEY_EVERY == 0:
            job["unique_key"] = f"key-{job_id}"
        jobs.append(json.dumps(job) + "\n")
    return "".join(jobs)


def enqueue_mixed(home, ids, command):
    return qctl(home, "enqueue", "-", input=mixed_lines(ids, command), timeout=600).stdout.split()


def assert_mix_held(home, report, ids):
    """A dependent's first run started after its dependency's completing run ended; every
    unique key was freed (a worker killed between a job's last move and freeing its key
    leaves a stale key: fsck --repair removes it)."""
    dependents = 0
    for job_id in ids:
        job = json.loads((home / "spool" / "completed" / f"{job_id}.json").read_bytes())
        for dep in job.get("after", ()):
            dep_ends = [r.end_ns for r in report.runs.get(dep, []) if r.end_ns]
            first_start = min(r.start_ns for r in report.runs[job_id])
            # >=: the job command's clock (/proc/uptime) ticks in 10 ms steps.
            assert dep_ends and first_start >= max(dep_ends), (job_id, dep)
            dependents += 1
    assert dependents >= len(ids) // DEP_EVERY - len(ids) // BATCH - 1
    qctl(home, "fsck", "--repair", check=False)
    keys = home / "spool" / "keys"
    assert [k for k in os.listdir(keys) if not k.startswith(".")] == []


def produce(home, ids, command):
    """Enqueue `ids` in batches by PRODUCERS concurrent `enqueue -` calls; returns the ids
    printed (acknowledged), asserting that every batch was acknowledged whole."""
    batches = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    with ThreadPoolExecutor(PRODUCERS) as executor:
        printed = list(executor.map(lambda batch: enqueue_mixed(home, batch, command),
                                    batches))
    for batch, out in zip(batches, printed):
        assert out == batch
    return [i for out in printed for i in out]


def nothing_left(spool, ids):
    """None of `ids` waits or runs any more (done, or gone: for a planted bug that loses
    jobs, where waiting for all of them done would never end)."""
    return not ids_in(spool, ("pending", "processing", "failed")) & set(ids)


def run_storm(home, workers, wait_until, name, jobs, rounds, signum, body=STORM_BODY,
              interval=0.2, env=None, settle=True):
    """The storm, then two checks. First the spool and index as the running workers left
    them (no manual repair): processing/ emptied by the workers' own recovery (polled with
    a deadline), the workers' index rows read straight from SQLite. Then, after `worker
    stop` and a manual `queuectl recover`, again through list/status. Returns (report as
    the workers left it, report after recover, storm, index lag (allowed, unexplained))."""
    seed = seed_from_env()
    print(f"\n[torture] {name}: seed {seed} (TORTURE_SEED={seed} replays the kill order)")
    spool = home / "spool"
    results = results_dir(home)
    command = job_command(results, body)
    configure(home, **STORM_SETTINGS)
    workers.start(WORKERS, env=env)
    storm = KillStorm(workers, seed, interval=interval, signum=signum).start()
    acknowledged, round_times = [], []
    started = time.monotonic()
    try:
        for number in range(rounds):
            round_started = time.monotonic()
            ids = [f"r{number}-{n:06d}" for n in range(jobs)]
            acked = produce(home, ids, command)
            acknowledged += acked
            wait_until(lambda: workers.assert_supervisors_alive() or
                       (finished(spool, acked) if settle else nothing_left(spool, acked)),
                       timeout=60 + jobs / 5, interval=0.1,
                       message=f"round {number}: every acknowledged job done")
            round_times.append(time.monotonic() - round_started)
    finally:
        storm.stop()
    elapsed = time.monotonic() - started
    # The supervisor refills every slot once the storm is over, and the workers' periodic
    # recovery (every RECOVERY_SECONDS) deletes leftovers and retries orphans.
    wait_until(lambda: len(workers.live()) == WORKERS, timeout=15,
               message="the supervisor back at 4 workers")
    wait_until(lambda: not ids_in(spool, ("processing",)) and
               (finished(spool, acknowledged) if settle else nothing_left(spool, acknowledged)),
               timeout=RECOVERY_SECONDS * 4 + 10, interval=0.1,
               message="processing/ emptied by the workers themselves")
    checker = Checker(home, results)
    as_left = checker.check(acknowledged, index=False, kills=storm.kills)
    lag = index_lag(home, scan_spool(spool), as_left.runs, storm.kills)
    workers.stop()
    recovered = qctl(home, "recover").stdout.strip()
    after = checker.check(acknowledged, kills=storm.kills)
    record(name, seed=seed, jobs=jobs, rounds=rounds, kills=len(storm.kills),
           busy_kills=storm.busy_kills, duplicates=as_left.duplicates,
           max_runs_per_id=as_left.max_runs_per_id, lost=len(as_left.lost),
           overlapping=len(as_left.overlapping), index_lag_allowed=len(lag[0]),
           index_lag_unexplained=len(lag[1]), elapsed_s=elapsed,
           jobs_per_s=len(acknowledged) / elapsed,
           round_s="/".join(f"{t:.1f}" for t in round_times), recover=recovered[:60])
    print(f"[torture] {name}: as the workers left it: {as_left.summary()}")
    print(f"[torture] {name}: after queuectl recover: {after.summary()}")
    if env is None:                     # planted bugs lose jobs: the mix check is for real runs
        assert_mix_held(home, after, acknowledged)
    return as_left, after, storm, lag


def assert_storm_passed(as_left, after, storm, lag):
    for report in (as_left, after):
        report.assert_clean()
        assert report.processing == [], report.processing
        assert report.dead == [], report.dead          # max_retries 1000: dead/ is a bug
        assert report.rejected == [], report.rejected
        assert report.duplicates <= storm.busy_kills, (report.duplicates, storm.busy_kills)
    assert lag[1] == [], lag[1]
    assert len(storm.kills) > 0


def test_sigkill_storm(home, workers, wait_until):
    result = run_storm(home, workers, wait_until, "kill_storm_sigkill", *CI_STORM,
                       signal.SIGKILL)
    assert_storm_passed(*result)
    as_left, _, storm, _ = result
    assert as_left.duplicates > 0 or storm.busy_kills == 0    # the kills did hit jobs


def test_sigterm_storm_loses_nothing_and_runs_nothing_twice(home, workers, wait_until):
    as_left, after, storm, lag = run_storm(home, workers, wait_until, "kill_storm_sigterm",
                                           *CI_SIGTERM, signal.SIGTERM)
    assert_storm_passed(as_left, after, storm, lag)
    assert as_left.duplicates == 0
    assert lag[0] == []                 # no worker died between a move and its index update


def test_storm_catches_a_planted_double_claim(home, workers, wait_until):
    """Workers whose claims skip the flock (plants/plantkit): a worker restarted by the
    storm recovers jobs that others are still running. The storm's checks must fail, and
    name a double claim: a rerun no kill explains, an overlap, an id in two states, or a
    second copy of a job rejected as a duplicate id (its two holders both finished it)."""
    as_left, after, storm, lag = run_storm(home, workers, wait_until,
                                           "kill_storm_plant_no_flock", 100, 1,
                                           signal.SIGKILL, env=plant_env("no-claim-flock"))
    spool = home / "spool"
    # A kill between a rejection's move and its reason file leaves no reason (the product
    # then dates the rejection by the file): such a file names no duplicate.
    def reason(name):
        path = spool / "rejected" / f"{name}.reason"
        return path.read_text() if path.exists() else ""
    duplicate_ids = [n for n in as_left.rejected if "duplicate id" in reason(n)]
    print(f"[torture] planted double claim: unexplained reruns "
          f"{len(as_left.unexplained_reruns)}, overlapping {len(as_left.overlapping)}, "
          f"in two states {len(as_left.two_states)}, rejected as a duplicate id "
          f"{len(duplicate_ids)}, e.g. {as_left.unexplained_reruns[:1]}")
    assert as_left.unexplained_reruns or as_left.overlapping or as_left.two_states or \
        duplicate_ids, as_left.summary()
    with pytest.raises(AssertionError):
        assert_storm_passed(as_left, after, storm, lag)


def test_storm_catches_a_planted_reordering(home, workers, wait_until):
    """Workers that unlink processing/<id> before moving the finished record
    (plants/plantkit): a kill in between loses the job, and the checks must say so. Short
    jobs, a kill every 300 ms (rarer kills leave the workers time to work) and a 50 ms
    window (as on a slow disk), so that many kills land in it."""
    env = {**plant_env("unlink-before-move"), "QUEUECTL_TEST_PLANT_PAUSE": "0.05"}
    as_left, after, storm, lag = run_storm(home, workers, wait_until,
                                           "kill_storm_plant_reorder", 150, 1,
                                           signal.SIGKILL, body=":", interval=0.3, env=env,
                                           settle=False)
    print(f"[torture] planted reordering: lost {len(as_left.lost)} of {as_left.acknowledged}")
    assert as_left.lost and after.lost, as_left.summary()
    with pytest.raises(AssertionError):
        assert_storm_passed(as_left, after, storm, lag)


@pytest.mark.stress
@pytest.mark.parametrize("jobs, rounds", [(2000, 3), (10000, 20)], ids=["ci", "stress"])
def test_sigkill_storm_full_size(home, workers, wait_until, jobs, rounds):
    assert_storm_passed(*run_storm(home, workers, wait_until,
                                   f"kill_storm_sigkill_{jobs}x{rounds}", jobs, rounds,
                                   signal.SIGKILL))


@pytest.mark.stress
@pytest.mark.parametrize("jobs, rounds", [(2000, 3), (10000, 20)], ids=["ci", "stress"])
def test_sigterm_storm_full_size(home, workers, wait_until, jobs, rounds):
    as_left, after, storm, lag = run_storm(home, workers, wait_until,
                                           f"kill_storm_sigterm_{jobs}x{rounds}", jobs,
                                           rounds, signal.SIGTERM)
    assert_storm_passed(as_left, after, storm, lag)
    assert as_left.duplicates == 0


# ---- producers killed mid-batch -----------------------------------------------------------------

def producer(home, ids, command, kill_at=None, kill_when_visible=False):
    """Run `enqueue -` for `ids`. kill_at: SIGKILL it that many seconds after it started;
    kill_when_visible: SIGKILL it the moment its first job is visible in the spool (while it
    links the rest). Returns (printed ids, exit code, seconds it ran, how many of the batch
    got published)."""
    spool = home / "spool"
    first = [spool / s / f"{ids[0]}.json" for s in JOB_STATES]
    started = time.monotonic()
    proc = subprocess.Popen([QUEUECTL, "enqueue", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=queuectl_env(home))
    try:
        proc.stdin.write(job_lines(ids, command).encode())
        proc.stdin.close()
        if kill_when_visible:
            # A tight poll: linking a whole batch takes only milliseconds.
            while proc.poll() is None and not any(os.path.lexists(p) for p in first):
                time.sleep(0.0002)
            proc.kill()
        elif kill_at is not None:
            time.sleep(kill_at)                # the kill's moment: a driver rhythm
            proc.kill()
        out = proc.stdout.read().decode()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ran_for = time.monotonic() - started
    assert code == -signal.SIGKILL or (code, err) == (0, ""), (code, err)
    return out.split(), code, ran_for, published(spool, ids)


JOB_STATES = ("pending", "processing", "failed", "completed", "dead")


def published(spool, ids):
    """How many of `ids` are anywhere in the spool's state directories."""
    return len(ids_in(spool, JOB_STATES) & set(ids))


def run_producer_kills(home, workers, wait_until, name, batches, batch_size):
    """Batches in turn: one enqueued whole (its duration times the next kill), one killed at
    a random moment of that duration, one killed the moment its first job is visible."""
    seed = seed_from_env()
    rng = random.Random(seed)
    print(f"\n[torture] {name}: seed {seed}")
    spool = home / "spool"
    results = results_dir(home)
    command = job_command(results)
    workers.start(WORKERS)
    watch = PendingWatch(spool).start()
    acknowledged, submitted = [], []
    killed_unacknowledged = partly_published = 0
    whole_batch_s = 1.0
    started = time.monotonic()
    try:
        for number in range(batches):
            ids = [f"p{number}-{n:05d}" for n in range(batch_size)]
            submitted += ids
            mode = number % 3
            printed, code, ran_for, visible = producer(
                home, ids, command, kill_at=rng.uniform(0.1, 0.9) * whole_batch_s
                if mode == 1 else None, kill_when_visible=mode == 2)
            assert printed in ([], ids)          # all acknowledged or none
            if mode == 0:
                whole_batch_s = ran_for
            acknowledged += printed
            killed_unacknowledged += code == -signal.SIGKILL and not printed
            partly_published += 0 < visible < len(ids) and not printed
        # Every job that was published, acknowledged or not, runs.
        wait_until(lambda: all_published_done(spool, submitted), timeout=120, interval=0.1,
                   message="every published job done")
    finally:
        watch.stop()
    elapsed = time.monotonic() - started
    workers.stop()
    report = Checker(home, results).check(acknowledged, submitted=submitted)
    unacked_ran = len(set(report.runs) - set(acknowledged))
    record(name, seed=seed, batches=batches, batch=batch_size, whole_batch_s=whole_batch_s,
           acknowledged_batches=len(acknowledged) // batch_size,
           killed_before_ack=killed_unacknowledged, killed_partly_published=partly_published,
           unacknowledged_but_published_ran=unacked_ran, pending_looks=watch.looks,
           pending_files_read=len(watch.seen), half_written_seen=len(watch.bad),
           tmp_left=len(report.tmp), duplicates=report.duplicates, elapsed_s=elapsed)
    print(f"[torture] {name}: {report.summary()}")
    return report, watch, killed_unacknowledged


def all_published_done(spool, submitted):
    """Nothing of `submitted` is left in pending/, processing/ or failed/."""
    return not ids_in(spool, ("pending", "processing", "failed")) & set(submitted)


def assert_producer_kills_passed(report, watch, killed_before_ack):
    report.assert_clean()
    assert watch.bad == []
    assert report.rejected == []
    assert report.processing == []
    assert report.duplicates == 0
    assert killed_before_ack > 0, "no producer was killed in the middle of its batch"
    assert report.acknowledged > 0


def test_producers_killed_mid_batch(home, workers, wait_until):
    report, watch, killed = run_producer_kills(home, workers, wait_until, "kill_producers",
                                               batches=12, batch_size=200)
    assert_producer_kills_passed(report, watch, killed)


@pytest.mark.stress
def test_producers_killed_mid_batch_full_size(home, workers, wait_until):
    report, watch, killed = run_producer_kills(home, workers, wait_until,
                                               "kill_producers_stress", batches=99,
                                               batch_size=500)
    assert_producer_kills_passed(report, watch, killed)
