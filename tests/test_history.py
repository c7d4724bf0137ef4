"""Attempt history in the job file, with real workers: retries, a timeout, a job killed by a
signal, a worker SIGKILLed mid-job (worker died, recovered from the output log's header),
a graceful stop (stopped, not counted), and the bounds on count and output size."""

import json
import os
import re
import signal
import socket

from queuectl import history
from workerkit import pool, q, read_job, states_of  # noqa: F401

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
HOST = socket.gethostname()


def worker_of(record):
    host, pid = record["worker"].split(":")
    assert host == HOST
    return int(pid)


def test_history_after_retries_into_dead(pool, spool, wait_until):
    pool.config(backoff_max=0)
    pool.start(1)
    pool.enqueue({"id": "flaky", "command": 'echo "try $QUEUECTL_ATTEMPT"; exit 3',
                  "max_retries": 2})
    wait_until(lambda: states_of(spool, "flaky") == ["dead"], timeout=20)
    job = read_job(spool, "flaky", "dead")
    records = job["history"]
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["outcome"] for r in records] == ["failed"] * 3
    assert [r["exit_code"] for r in records] == [3, 3, 3]
    assert [r["output_tail"] for r in records] == ["try 1", "try 2", "try 3"]
    assert records[0]["next"].startswith("retry at ") and records[1]["next"].startswith("retry")
    assert records[2]["next"] == "dead: retries exhausted"
    for r in records:
        assert STAMP.match(r["started_at"]) and STAMP.match(r["finished_at"])
        assert r["started_at"] <= r["finished_at"] and 0 <= r["duration_s"] < 5
        worker_of(r)
    assert "history_dropped" not in job
    # The current-attempt fields stay as they were.
    assert (job["attempts"], job["exit_code"], job["last_error"]) == (3, 3, "exit code 3: try 3")
    shown = pool.cli("show", "flaky").stdout
    assert re.search(r"^history:\n#\s+STARTED\s+TOOK\s+WORKER\s+OUTCOME\s+EXIT\s+NEXT$", shown,
                     re.M)
    assert re.search(r"^3\s+\S+Z\s+\S+s\s+\S+:\d+\s+failed\s+3\s+dead: retries exhausted$",
                     shown, re.M)
    as_json = json.loads(pool.cli("show", "flaky", "--json").stdout)
    assert as_json["job"]["history"] == records
    listed = json.loads(pool.cli("list", "--json").stdout)
    assert listed[0]["history"] == records


def test_history_of_a_timeout_and_a_signal(pool, spool, wait_until):
    pool.start(1)
    pool.enqueue({"id": "slow", "command": "echo started; sleep 30", "timeout": 0.5,
                  "max_retries": 0})
    pool.enqueue({"id": "shot", "command": "echo bye; kill -9 $$", "max_retries": 0})
    wait_until(lambda: states_of(spool, "slow") == ["dead"] and
               states_of(spool, "shot") == ["dead"], timeout=20)
    (slow,) = read_job(spool, "slow", "dead")["history"]
    assert (slow["outcome"], slow["output_tail"]) == ("timeout", "started")
    assert slow["duration_s"] >= 0.5
    (shot,) = read_job(spool, "shot", "dead")["history"]
    assert (shot["outcome"], shot["signal"], shot["exit_code"], shot["output_tail"]) == \
        ("killed by signal", "SIGKILL", None, "bye")


def test_history_when_the_worker_is_killed_and_when_it_is_stopped(pool, spool, tmp_path,
                                                                  wait_until):
    marker = tmp_path / "first-run"
    pool.config(backoff_max=0)
    pool.start(1)
    pool.enqueue({"id": "victim", "command": f"if [ -e {q(marker)} ]; then echo again; "
                  f"exit 0; fi; touch {q(marker)}; echo going; sleep 60"})
    pid = wait_until(lambda: marker.exists() and pool.worker_running("victim"), timeout=15)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: states_of(spool, "victim") == ["completed"], timeout=30)
    died, done = read_job(spool, "victim", "completed")["history"]
    assert (died["attempt"], died["outcome"], died["output_tail"]) == (1, "worker died", "going")
    assert worker_of(died) == pid and STAMP.match(died["started_at"])
    assert died["next"].startswith("retry at ")
    assert (done["attempt"], done["outcome"], done["exit_code"], done["output_tail"]) == \
        (2, "completed", 0, "again")
    assert worker_of(done) != pid

    pool.enqueue({"id": "long", "command": "echo working; sleep 60"})
    wait_until(lambda: pool.worker_running("long"), timeout=15)
    assert pool.stop("--timeout", "0.2").exit_code == 0
    job = read_job(spool, "long", "pending")
    (stopped,) = job["history"]
    assert (stopped["attempt"], stopped["outcome"], stopped["output_tail"]) == \
        (1, "stopped", "working")
    assert job["attempts"] == 0


def test_history_is_bounded_in_count_and_output():
    doc = {"id": "x", "attempts": 0}
    for number in range(1, 21):
        history.append(doc, {"attempt": number})
    kept = [r["attempt"] for r in doc["history"]]
    assert kept == [1, 2, 3] + list(range(11, 21))
    assert doc["history_dropped"] == 7
    assert len(json.dumps(doc)) < 1000


def test_output_tail_keeps_20_lines_and_2_kib(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("=== queuectl x attempt 1 at T on worker h:1\n" +
                   "".join(f"line {n}\n" for n in range(100)) + "=== end: ok (0.1s) w\n")
    tail = history.output_tail(str(log), 0)
    assert tail.splitlines() == [f"line {n}" for n in range(80, 100)]
    log.write_text("y" * 10000 + "\n")
    assert len(history.output_tail(str(log), 0).encode()) == 2048
    assert history.output_tail(str(tmp_path / "missing.log"), 0) == ""
