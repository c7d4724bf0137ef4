"""Queue control with real workers: pause/resume (also by touching spool/PAUSED), cancel
(pending, scheduled, failed, and running with --running, whose process group must die),
retry now, wait and its exit codes, purge by hand and by the workers' retention, and the
`status --ages` buckets. Every command's exit code and per-id message is checked."""

import json
import os
import signal
import time

from controlkit import iso_ago, metrics, pgid_members, report, stays
from queuectl import job as jobmod
from workerkit import ids_in, pool, q, read_job, states_of  # noqa: F401

POLL_INTERVAL = 1          # config worker_poll_interval's default


def lines(result):
    return result.stdout.splitlines()


def stays_pending(spool, job_id, seconds=2.0):
    held, _ = stays(lambda: states_of(spool, job_id) == ["pending"], seconds)
    return held


# ---- pause / resume ---------------------------------------------------------------------------

def test_pause_stops_claiming_running_job_finishes_resume_restarts(pool, wait_until):
    spool = pool.spool
    pool.start(2)
    pool.enqueue({"id": "long", "command": "sleep 1.5; echo finished"})
    wait_until(lambda: states_of(spool, "long") == ["processing"], timeout=10)

    paused = pool.cli("pause")
    assert paused.exit_code == 0 and paused.stderr == ""
    assert paused.stdout == ("paused: workers stop claiming within one poll interval "
                             f"({spool}/PAUSED exists)\n")
    assert (spool / "PAUSED").is_file()
    assert report(pool.cli, "status")["paused"] is True
    assert metrics(pool.cli)["paused"] is True
    assert "PAUSED: workers are not claiming jobs (queuectl resume)" in \
        lines(pool.cli("status"))
    time.sleep(POLL_INTERVAL)       # the grace the spec gives workers to notice the pause
    pool.enqueue({"id": "held", "command": "true"})
    assert stays_pending(spool, "held"), states_of(spool, "held")

    # The job that was running when the pause came went on undisturbed.
    wait_until(lambda: states_of(spool, "long") == ["completed"], timeout=10)
    job = read_job(spool, "long", "completed")
    assert (job["attempts"], job["exit_code"], job["last_error"]) == (1, 0, None)
    assert "finished" in (spool / "output" / "long.log").read_text()

    resumed = pool.cli("resume")
    assert (resumed.exit_code, resumed.stdout) == (0, "resumed\n")
    assert not (spool / "PAUSED").exists()
    wait_until(lambda: states_of(spool, "held") == ["completed"], timeout=POLL_INTERVAL + 4)
    assert report(pool.cli, "status")["paused"] is False
    again = pool.cli("resume")
    assert (again.exit_code, again.stdout) == (0, "the queue was not paused\n")


def test_pause_by_touching_the_file_and_resume_by_removing_it(pool, wait_until):
    spool = pool.spool
    pool.start(1)
    (spool / "PAUSED").touch()                 # any tool can pause the queue
    assert report(pool.cli, "status")["paused"] is True
    time.sleep(POLL_INTERVAL)       # the grace the spec gives workers to notice the pause
    pool.enqueue({"id": "held", "command": "true"})
    assert stays_pending(spool, "held"), states_of(spool, "held")
    os.unlink(spool / "PAUSED")
    wait_until(lambda: states_of(spool, "held") == ["completed"], timeout=POLL_INTERVAL + 4)


# ---- cancel -----------------------------------------------------------------------------------

def test_cancel_pending_scheduled_and_failed_jobs_reports_each_id(pool, wait_until):
    spool = pool.spool
    pool.config(backoff_base=10)
    pool.start(1)
    pool.enqueue({"id": "flaky", "command": "exit 1"}, "--max-retries", "3")
    wait_until(lambda: states_of(spool, "flaky") == ["failed"], timeout=10)
    stopped = pool.stop("--timeout", "2")
    assert stopped.exit_code == 0, stopped.stderr
    pool.enqueue({"id": "waiting", "command": "true"})
    pool.enqueue({"id": "later", "command": "true"}, "--delay", "1h")

    result = pool.cli("cancel", "waiting", "nope", "later", "flaky")
    assert result.exit_code == 1 and result.stderr == ""
    assert lines(result) == ["waiting: cancelled (was pending; now in dead/)",
                             "nope: error: no job with id 'nope'",
                             "later: cancelled (was pending; now in dead/)",
                             "flaky: cancelled (was failed; now in dead/)"]
    for job_id in ("waiting", "later", "flaky"):
        assert states_of(spool, job_id) == ["dead"]
        job = read_job(spool, job_id, "dead")
        assert job["last_error"] == "cancelled" and "run_at" not in job
    assert read_job(spool, "flaky", "dead")["attempts"] == 1
    dead = json.loads(pool.cli("dlq", "list", "--json").stdout)
    assert sorted((r["id"], r["last_error"]) for r in dead) == \
        [("flaky", "cancelled"), ("later", "cancelled"), ("waiting", "cancelled")]
    assert metrics(pool.cli)["dlq_size"] == 3

    # A cancelled job comes back from the DLQ like any dead job.
    revived = pool.cli("dlq", "retry", "later")
    assert (revived.exit_code, revived.stdout) == (0, "later: moved to pending (attempts reset)\n")
    assert states_of(spool, "later") == ["pending"]
    assert read_job(spool, "later", "pending")["attempts"] == 0
    pool.start(1)
    wait_until(lambda: states_of(spool, "later") == ["completed"], timeout=10)


def test_cancel_running_job_needs_running_and_kills_its_group(pool, wait_until, tmp_path):
    spool = pool.spool
    pgid_file = tmp_path / "pgid"
    pool.start(1)
    pool.enqueue({"id": "long", "command": f"echo $$ > {q(pgid_file)}; "
                                           "sleep 300 & sleep 300 & wait"})
    wait_until(lambda: pgid_file.exists() and pgid_file.read_text().strip(), timeout=10)
    pgid = int(pgid_file.read_text())
    wait_until(lambda: len(pgid_members(pgid)) == 3, timeout=5, message="sh and two sleeps")

    refused = pool.cli("cancel", "long")
    assert refused.exit_code == 1
    assert refused.stdout == "long: error: job 'long' is running; use --running to kill and " \
                             "cancel it\n"
    assert states_of(spool, "long") == ["processing"] and len(pgid_members(pgid)) == 3

    killed = pool.run("cancel", "--running", "long", timeout=60)
    assert (killed.exit_code, killed.stderr) == (0, "")
    assert killed.stdout == "long: killed and cancelled (now in dead state)\n"
    assert pgid_members(pgid) == []            # no process of the job survives
    assert states_of(spool, "long") == ["dead"]
    assert read_job(spool, "long", "dead")["last_error"] == "cancelled"
    assert os.listdir(spool / "processing") == []      # the cancel marker is gone too
    wait_until(lambda: metrics(pool.cli)["totals"]["cancelled"] == 1, timeout=5)

    # The worker is fine and takes the next job; a completed job cannot be cancelled.
    pool.enqueue({"id": "next", "command": "true"})
    wait_until(lambda: states_of(spool, "next") == ["completed"], timeout=10)
    done = pool.cli("cancel", "--json", "next")
    assert done.exit_code == 1
    assert json.loads(done.stdout) == [{
        "id": "next", "ok": False,
        "message": "job 'next' is completed; only pending or failed or processing jobs can "
                   "be cancelled"}]
    assert states_of(spool, "next") == ["completed"]


def _claim_as_a_stuck_worker(home, job_id):
    """Hold job_id in processing/ under our flock, as a worker that no longer reacts would
    (the cancel marker is then never acted on). Returns (Home, claim)."""
    from queuectl import lifecycle
    from queuectl.home import Home
    h = Home(str(home))
    held = lifecycle.claim(h, "pending", job_id)
    assert held is not None
    return h, held


def test_cancel_withdraws_its_marker_when_it_gives_up_or_is_interrupted(pool, spawn_queuectl,
                                                                       wait_until,
                                                                       monkeypatch):
    """Issue 8, bug 10: `cancel --running` that gives up (the worker does not react) or is
    interrupted with Ctrl-C must not leave its request behind to kill the job later."""
    from queuectl import control
    pool.enqueue({"id": "stuck", "command": "true"})
    h, held = _claim_as_a_stuck_worker(pool.home, "stuck")
    marker = pool.spool / "processing" / ".stuck.cancel"
    try:
        monkeypatch.setattr(control, "CANCEL_WAIT_SECONDS", 0.3)
        [outcome] = control.cancel(h, ["stuck"], running=True)
        assert not outcome.ok and "is still running after 0.3s" in outcome.message
        assert not marker.exists()

        interrupted = spawn_queuectl("cancel", "--running", "stuck")
        wait_until(marker.exists, timeout=10, message="the cancel marker")
        interrupted.send_signal(signal.SIGINT)
        interrupted.communicate(timeout=10)
        assert not marker.exists()
        assert states_of(pool.spool, "stuck") == ["processing"]
    finally:
        h.spool.release(held, unlink=False)
        h.close()


def test_a_marker_left_by_a_killed_cancel_never_kills_a_later_attempt(pool, spawn_queuectl,
                                                                    wait_until):
    """Issue 8, bug 10: a `cancel --running` SIGKILLed while waiting leaves its marker. The
    attempt it targeted ends otherwise (here: its worker died); the next attempt runs to
    completion, and fsck reports the marker and --repair deletes it."""
    pool.enqueue({"id": "later", "command": "sleep 0.5"})
    h, held = _claim_as_a_stuck_worker(pool.home, "later")
    marker = pool.spool / "processing" / ".later.cancel"
    try:
        killed = spawn_queuectl("cancel", "--running", "later")
        wait_until(marker.exists, timeout=10, message="the cancel marker")
        killed.kill()
        killed.communicate(timeout=10)
    finally:
        h.spool.release(held, unlink=False)      # the stuck worker is gone: an orphan
        h.close()
    assert marker.exists()
    assert pool.cli("recover").exit_code == 0            # attempt 1: worker died
    assert states_of(pool.spool, "later") == ["failed"]
    assert pool.cli("retry", "later").exit_code == 0
    pool.start(1)
    wait_until(lambda: states_of(pool.spool, "later") in (["completed"], ["dead"]), timeout=20)
    job = read_job(pool.spool, "later", states_of(pool.spool, "later")[0])
    assert (states_of(pool.spool, "later"), job["attempts"], job.get("last_error")) == \
        (["completed"], 2, None)
    found = pool.cli("fsck", "--json")
    assert found.exit_code == 1
    assert json.loads(found.stdout) == [{
        "kind": "stale-cancel", "where": "processing/.later.cancel",
        "detail": "the job is not in processing/", "fixed": None}]
    repaired = pool.cli("fsck", "--repair")
    assert repaired.exit_code == 0 and "stale-cancel" in repaired.stdout
    assert not marker.exists()
    assert pool.cli("fsck").exit_code == 0


# ---- retry ------------------------------------------------------------------------------------

def test_retry_runs_a_failed_job_now(pool, wait_until):
    spool = pool.spool
    pool.config(backoff_base=10)
    pool.start(1)
    # Fails on its first attempt, succeeds on the second.
    pool.enqueue({"id": "flaky", "command": 'test "$QUEUECTL_ATTEMPT" -ge 2'},
                 "--max-retries", "3")
    pool.enqueue({"id": "waiting", "command": "true"}, "--delay", "1h")
    wait_until(lambda: states_of(spool, "flaky") == ["failed"], timeout=10)
    assert read_job(spool, "flaky", "failed")["attempts"] == 1

    started = time.monotonic()
    result = pool.cli("retry", "flaky", "waiting")
    assert result.exit_code == 1
    assert lines(result) == [
        "flaky: moved to pending (runs now)",
        "waiting: error: job 'waiting' is pending; only failed jobs waiting for their retry "
        "can be retried now"]
    wait_until(lambda: states_of(spool, "flaky") == ["completed"], timeout=8)
    assert time.monotonic() - started < 8        # long before its 10 s backoff ran out
    assert read_job(spool, "flaky", "completed")["attempts"] == 2
    assert states_of(spool, "waiting") == ["pending"]


def test_retry_refuses_dead_and_unknown_jobs(cli, spool):
    assert cli("enqueue", '{"id": "gone", "command": "true"}').exit_code == 0
    assert cli("cancel", "gone").exit_code == 0
    result = cli("retry", "gone", "nope")
    assert result.exit_code == 1
    assert lines(result) == [
        "gone: error: job 'gone' is dead; only failed jobs waiting for their retry can be "
        "retried now (use queuectl dlq retry for dead jobs)",
        "nope: error: no job with id 'nope'"]
    assert states_of(spool, "gone") == ["dead"]
    usage = cli("retry")
    assert usage.exit_code == 2 and "Missing argument 'ID...'" in usage.stderr


# ---- wait -------------------------------------------------------------------------------------

def test_wait_exits_0_when_all_completed_and_1_when_any_is_dead(pool):
    pool.start(2)
    pool.enqueue({"id": "a", "command": "sleep 0.3"})
    pool.enqueue({"id": "b", "command": "true"})
    ok = pool.run("wait", "a", "b")
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "a: completed\nb: completed\n", "")
    assert states_of(pool.spool, "a") == ["completed"]

    pool.enqueue({"id": "bad", "command": "exit 1"}, "--max-retries", "0")
    some_dead = pool.run("wait", "a", "bad")
    assert (some_dead.exit_code, some_dead.stdout, some_dead.stderr) == \
        (1, "a: completed\nbad: dead\n", "")
    as_json = pool.run("wait", "--json", "a", "bad")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {"a": "completed", "bad": "dead"}


def test_wait_times_out_with_124_and_refuses_unknown_ids(run_queuectl, cli):
    assert cli("enqueue", '{"id": "slow", "command": "sleep 30"}').exit_code == 0
    started = time.monotonic()
    timed_out = run_queuectl("wait", "--timeout", "0.5", "slow")
    took = time.monotonic() - started
    assert (timed_out.exit_code, timed_out.stdout, timed_out.stderr) == \
        (124, "", "Error: timed out after 0.5s waiting for slow (pending)\n")
    assert 0.5 <= took < 5
    unknown = run_queuectl("wait", "x")
    assert (unknown.exit_code, unknown.stdout, unknown.stderr) == \
        (1, "", "Error: no job with id 'x'\n")
    # An unknown id among known ones is refused at once, before any waiting.
    mixed = run_queuectl("wait", "slow", "x", timeout=10)
    assert (mixed.exit_code, mixed.stderr) == (1, "Error: no job with id 'x'\n")


# ---- purge ------------------------------------------------------------------------------------

def test_purge_deletes_old_completed_and_dead_jobs_and_their_output(pool, wait_until, age_file):
    spool = pool.spool
    pool.start(2)
    for n in range(3):
        pool.enqueue({"id": f"ok-{n}", "command": f"echo out {n}"})
    pool.enqueue({"id": "bad", "command": "echo err; exit 1"}, "--max-retries", "0")
    wait_until(lambda: ids_in(spool, "completed") == ["ok-0", "ok-1", "ok-2"] and
               ids_in(spool, "dead") == ["bad"], timeout=15)
    assert pool.stop("--timeout", "2").exit_code == 0
    logs = spool / "output"
    assert sorted(os.listdir(logs)) == ["bad.log", "ok-0.log", "ok-1.log", "ok-2.log"]

    recent = pool.cli("purge", "--state", "completed", "--older-than", "1h")
    assert (recent.exit_code, recent.stdout) == (0, "purged 0 completed jobs older than 1h\n")
    assert ids_in(spool, "completed") == ["ok-0", "ok-1", "ok-2"]

    for job_id in ("ok-0", "ok-1"):
        age_file(spool / "completed" / f"{job_id}.json", 7200)
    purged = pool.cli("purge", "--state", "completed", "--older-than", "1h", "--json")
    assert purged.exit_code == 0
    assert sorted(json.loads(purged.stdout)) == ["ok-0.json", "ok-1.json"]
    assert ids_in(spool, "completed") == ["ok-2"]
    assert sorted(os.listdir(logs)) == ["bad.log", "ok-2.log"]
    listed = json.loads(pool.cli("list", "--json").stdout)
    assert sorted(r["id"] for r in listed) == ["bad", "ok-2"]

    assert pool.cli("purge", "--state", "dead", "--older-than", "1h").stdout == \
        "purged 0 dead jobs older than 1h\n"
    age_file(spool / "dead" / "bad.json", 7200)
    dead = pool.cli("purge", "--state", "dead", "--older-than", "1h")
    assert (dead.exit_code, dead.stdout) == (0, "purged 1 dead job older than 1h\n")
    assert ids_in(spool, "dead") == [] and os.listdir(logs) == ["ok-2.log"]
    assert pool.cli("dlq", "list").stdout == f"the dead letter queue of {pool.home} is empty\n"
    assert metrics(pool.cli)["jobs"]["completed"] == 1


def test_purge_rejected_removes_the_reason_file_too(cli, drop, spool, age_file):
    drop("junk.json", "not json at all", age=60)
    assert cli("list").exit_code == 0            # the look that rejects it
    assert sorted(os.listdir(spool / "rejected")) == ["junk.json", "junk.json.reason"]
    kept = cli("purge", "--state", "rejected", "--older-than", "1h")
    assert (kept.exit_code, kept.stdout) == (0, "purged 0 rejected jobs older than 1h\n")
    age_file(spool / "rejected" / "junk.json.reason", 7200)     # rejected two hours ago
    purged = cli("purge", "--state", "rejected", "--older-than", "1h")
    assert (purged.exit_code, purged.stdout) == (0, "purged 1 rejected job older than 1h\n")
    assert os.listdir(spool / "rejected") == []
    assert json.loads(cli("list", "--state", "rejected", "--json").stdout) == []
    assert report(cli, "status")["rejected"] == 0


def test_purge_rejected_ages_files_by_their_rejection_not_their_drop(cli, drop, spool,
                                                                     age_file):
    """Issue 8, bug 8: a file dropped (or copied with cp -p) long ago and rejected just now
    keeps its old mtime in rejected/; it is as old as its rejection, not as its bytes."""
    drop("old.json", "not json either", age=30 * 86400)
    assert cli("list").exit_code == 0            # rejected now
    assert (spool / "rejected" / "old.json").stat().st_mtime < time.time() - 29 * 86400
    kept = cli("purge", "--state", "rejected", "--older-than", "7d")
    assert (kept.exit_code, kept.stdout) == (0, "purged 0 rejected jobs older than 7d\n")
    assert sorted(os.listdir(spool / "rejected")) == ["old.json", "old.json.reason"]
    row = json.loads(cli("list", "--state", "rejected", "--json").stdout)[0]
    assert time.time() - jobmod.parse_time(row["updated_at"]) < 60
    age_file(spool / "rejected" / "old.json.reason", 8 * 86400)
    purged = cli("purge", "--state", "rejected", "--older-than", "7d")
    assert (purged.exit_code, purged.stdout) == (0, "purged 1 rejected job older than 7d\n")
    assert os.listdir(spool / "rejected") == []


def test_purge_usage_errors_exit_2(cli):
    bad = cli("purge", "--state", "completed", "--older-than", "soon")
    assert bad.exit_code == 2
    assert bad.stderr.splitlines()[-1] == ("Error: Invalid value for --older-than: duration "
                                           "must look like 30s, 5m, 2h or 7d, got 'soon'")
    state = cli("purge", "--state", "pending", "--older-than", "1h")
    assert state.exit_code == 2
    assert state.stderr.splitlines()[-1] == ("Error: Invalid value for '--state': 'pending' is "
                                             "not one of 'completed', 'dead', 'rejected'.")
    missing = cli("purge", "--state", "dead")
    assert missing.exit_code == 2
    assert missing.stderr.splitlines()[-1] == "Error: Missing option '--older-than'."


def test_workers_purge_completed_jobs_past_retention(pool, wait_until, age_file):
    spool = pool.spool
    pool.config(completed_retention=3600)
    pool.start(1)
    for job_id in ("old-0", "old-1", "fresh"):
        pool.enqueue({"id": job_id, "command": "echo hi"})
    wait_until(lambda: ids_in(spool, "completed") == ["fresh", "old-0", "old-1"], timeout=15)
    assert pool.stop("--timeout", "2").exit_code == 0
    for job_id in ("old-0", "old-1"):
        age_file(spool / "completed" / f"{job_id}.json", 7200)

    pool.start(1)                  # a worker checks retention when it starts
    wait_until(lambda: ids_in(spool, "completed") == ["fresh"], timeout=10,
               message="the worker's retention purge")
    assert os.listdir(spool / "output") == ["fresh.log"]
    listed = json.loads(pool.cli("list", "--state", "completed", "--json").stdout)
    assert [r["id"] for r in listed] == ["fresh"]


# ---- status --ages ----------------------------------------------------------------------------

def test_status_ages_puts_ready_jobs_in_their_buckets(cli, home):
    ages = {"a": 10, "b": 20, "c": 150, "d": 420, "e": 900, "f": 1800, "g": 3600,
            "h": 3700, "i": 7200, "j": 20000}
    for job_id, seconds in ages.items():
        assert cli("enqueue", json.dumps({"id": job_id, "command": "true"}),
                   "--run-at", iso_ago(seconds)).exit_code == 0
    assert cli("enqueue", '{"id": "now", "command": "true"}').exit_code == 0
    assert cli("enqueue", '{"id": "later", "command": "true"}', "--delay", "1h").exit_code == 0
    expected = [("<1m", 3), ("1-5m", 1), ("5-10m", 1), ("10-20m", 1), ("20-40m", 1),
                ("40-80m", 2), ("80-160m", 1), (">=160m", 1)]
    rows = report(cli, "status", "--ages")
    assert rows == [{"age": label, "ready": n} for label, n in expected]
    text = cli("status", "--ages")
    assert text.exit_code == 0
    assert lines(text)[:3] == [f"home: {home}", "ready jobs by age (like qshape):",
                               "AGE      READY"]
    assert [line.split() for line in lines(text)[3:]] == [[label, str(n)]
                                                          for label, n in expected]
