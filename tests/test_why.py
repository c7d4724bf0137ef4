"""`queuectl why`: the exact paragraph for each situation (ready with jobs ahead and workers
busy, no worker, scheduled, waiting for a dependency that is running, processing, failed
with its retry, dead, paused, completed, rejected, unknown id) and --json. Only relative
durations ("in 10m") are matched loosely; they depend on when the command runs."""

import json
import re
import socket
import time

from queuectl import job as jobmod
from workerkit import pool, q, read_job, states_of  # noqa: F401

HOST = socket.gethostname()


def why(cli, job_id):
    result = cli("why", job_id)
    assert result.exit_code == 0, result.stderr
    return result.stdout.rstrip("\n")


def clock(stamp):
    return time.strftime("%H:%M:%S UTC", time.gmtime(jobmod.parse_time(stamp)))


def test_why_without_workers(cli, spool):
    cli("enqueue", "--id", "first", '{"command": "true", "priority": 1}')
    cli("enqueue", "--id", "second", '{"command": "true"}')
    cli("enqueue", "--id", "later", "--delay", "10m", '{"command": "true"}')
    assert why(cli, "first") == ("pending, ready, 0 jobs with higher priority or older "
                                 "ahead, no worker is running (queuectl worker start)")
    assert why(cli, "second") == ("pending, ready, 1 job with higher priority or older "
                                  "ahead, no worker is running (queuectl worker start)")
    run_at = read_job(spool, "later", "pending")["run_at"]
    assert re.fullmatch(rf"scheduled: runs at {clock(run_at)} \(in (10m|10\.0m|9\.\dm)\)",
                        why(cli, "later"))
    cli("pause")
    since = time.strftime("%H:%M:%S UTC", time.gmtime((spool / "PAUSED").stat().st_mtime))
    assert re.fullmatch(r"pending, ready, 1 job with higher priority or older ahead, no "
                        r"worker is running \(queuectl worker start\); paused: spool/PAUSED "
                        rf"exists since {since} \(\d\.\ds ago\)", why(cli, "second"))
    info = json.loads(cli("why", "second", "--json").stdout)
    assert sorted(info) == ["id", "parts", "queue", "state", "text"]
    assert (info["id"], info["state"], info["queue"], len(info["parts"])) == \
        ("second", "pending", "default", 2)
    missing = cli("why", "nope")
    assert (missing.exit_code, missing.stderr) == \
        (1, f"Error: no job with id 'nope' in {spool}\n")


def test_why_with_busy_workers_dependencies_failures_and_the_end(pool, spool, tmp_path,
                                                                 wait_until):
    release = tmp_path / "go"
    hold = f"while [ ! -e {q(release)} ]; do sleep 0.05; done"
    pool.config(backoff_base=600)
    pool.start(2)
    pool.enqueue({"id": "hold1", "command": hold})
    pool.enqueue({"id": "hold2", "command": hold + "; echo last words; exit 2"})
    wait_until(lambda: pool.worker_running("hold1") and pool.worker_running("hold2"),
               timeout=15)
    pool.enqueue({"id": "urgent", "command": "true", "priority": 5})
    pool.enqueue({"id": "older", "command": "true"})
    pool.enqueue({"id": "target", "command": "true"})
    pool.enqueue({"id": "after", "command": "true"}, "--after", "hold1")
    busy = ", ".join(f"{HOST}:{w['pid']}" for w in pool.workers())
    assert why(pool.cli, "target") == ("pending, ready, 2 jobs with higher priority or older "
                                       f"ahead, 2 of 2 workers busy ({busy})")
    runner = pool.worker_running("hold1")
    assert why(pool.cli, "after") == ("pending, waiting for dependency hold1 (processing on "
                                      f"host {HOST} (pid {runner}), attempt 1)")
    assert re.fullmatch(rf"processing on host {HOST} \(pid {runner}\), attempt 1, running "
                        r"for \d+(\.\d)?s", why(pool.cli, "hold1"))
    release.touch()
    wait_until(lambda: states_of(spool, "hold2") == ["failed"] and
               states_of(spool, "after") == ["completed"], timeout=20)
    run_at = read_job(spool, "hold2", "failed")["run_at"]
    assert re.fullmatch(rf"failed: retry 1 of 3 at {clock(run_at)} \(in (10m|9\.\dm|10\.0m)\), "
                        r"last error: exit code 2: last words", why(pool.cli, "hold2"))
    done = read_job(spool, "after", "completed")
    assert why(pool.cli, "after") == (f"completed at {done['finished_at']} after 1 attempt "
                                      f"(took {done['duration_s']:.3f}s)")
    pool.enqueue({"id": "boom", "command": "echo boom; exit 1", "max_retries": 0})
    wait_until(lambda: states_of(spool, "boom") == ["dead"], timeout=15)
    assert why(pool.cli, "boom") == ("dead: retries exhausted after 1 attempt, last error: "
                                     "exit code 1: boom (queuectl dlq retry boom runs it "
                                     "again)")
    pool.enqueue({"id": "slow", "command": "echo tick; sleep 30", "timeout": 0.3,
                  "max_retries": 0})
    wait_until(lambda: states_of(spool, "slow") == ["dead"], timeout=15)
    assert why(pool.cli, "slow") == ("dead: retries exhausted after 1 attempt, last error: "
                                     "timed out after 0.3s (process group killed) (output "
                                     "tail: tick) (queuectl dlq retry slow runs it again)")
