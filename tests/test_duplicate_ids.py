"""Two copies of one id: the copy that was there first always keeps the id, the newcomer
goes to rejected/. New jobs only arrive in pending/, so a pending/<id> beside a running,
failed or recovering copy is the newcomer, whatever move meets it: a graceful stop's
requeue, recovery of an orphan, or a worker taking a due failed/<id>. Real workers."""

import json
import os
import time

from queuectl import job as jobmod
from queuectl.spool import Spool
from workerkit import drop_job, lone_worker, pool, q, read_job, states_of  # noqa: F401


def rejected_command(spool, job_id):
    return json.loads((spool / "rejected" / f"{job_id}.json").read_bytes())["command"]


def reason_of(spool, job_id):
    return (spool / "rejected" / f"{job_id}.json.reason").read_text().strip()


def test_a_newcomer_waits_while_the_original_runs_and_loses_to_its_requeue(
        pool, spool, wait_until, tmp_path):
    started, newcomer_ran = tmp_path / "started", tmp_path / "newcomer-ran"
    pool.config(shutdown_timeout=0)
    pool.start(1)
    original = f"touch {q(started)}; sleep 60"
    pool.enqueue({"id": "x", "command": original})
    wait_until(started.exists, timeout=20, message="the original to start")
    drop_job(spool, "x", f"touch {q(newcomer_ran)}")
    assert pool.stop("--timeout", "0").exit_code == 0      # requeues the running original
    assert states_of(spool, "x") == ["pending"]
    kept = read_job(spool, "x", "pending")
    assert kept["command"] == original
    assert rejected_command(spool, "x") == f"touch {q(newcomer_ran)}"
    assert reason_of(spool, "x") == ("duplicate id: 'x' is already in processing/ (the copy "
                                     "that was there first keeps the id)")
    assert not newcomer_ran.exists()


def test_recovery_keeps_the_orphan_and_rejects_the_newcomer(cli, spool):
    Spool(str(spool)).ensure_layout()
    (spool / "processing" / "x.json").write_text(json.dumps(
        {"id": "x", "command": "echo original", "attempts": 1, "max_retries": 3,
         "created_at": "2026-01-01T00:00:00Z"}))
    drop_job(spool, "x", "echo newcomer")
    result = cli("recover")
    assert (result.exit_code, result.stderr) == (0, "")
    assert states_of(spool, "x") == ["failed"]
    record = read_job(spool, "x", "failed")
    assert (record["command"], record["attempts"], record["last_error"]) == \
        ("echo original", 2, "worker died")
    assert rejected_command(spool, "x") == "echo newcomer"
    assert reason_of(spool, "x").startswith("duplicate id: 'x' is already in processing/")


def test_a_due_failed_job_keeps_its_id_against_a_newcomer_in_pending(
        spool, lone_worker, wait_until, tmp_path):
    Spool(str(spool)).ensure_layout()
    ran = tmp_path / "ran"
    past = jobmod.iso(time.time() - 60)
    (spool / "failed" / "x.json").write_text(json.dumps(
        {"id": "x", "command": f"echo original >> {q(ran)}", "attempts": 1, "max_retries": 3,
         "priority": 5, "run_at": past, "created_at": past, "last_error": "exit code 1"}))
    drop_job(spool, "x", f"echo newcomer >> {q(ran)}")
    proc = lone_worker()
    wait_until(lambda: states_of(spool, "x") == ["completed"] or proc.poll() is not None,
               timeout=20, message="the original to run")
    assert states_of(spool, "x") == ["completed"]
    assert read_job(spool, "x", "completed")["attempts"] == 2
    assert ran.read_text() == "original\n"
    assert rejected_command(spool, "x") == f"echo newcomer >> {q(ran)}"
    assert os.listdir(spool / "pending") == []
