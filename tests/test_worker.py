"""The worker with real processes and real signals: running a job to completion, retries
with backoff into the dead letter queue and back, the order jobs are taken in, scheduled
jobs, a worker SIGKILLed mid-job, a job that kills its own worker, graceful stop, files
dropped into the spool by other tools, timeouts, and `queuectl recover`.

Every wait polls with a deadline (wait_until); the only timing assertions are wide bounds
where the contract is about time (backoff gaps, not running early)."""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time

import psutil

from queuectl import job as jobmod
from workerkit import (JOB_STATES, group_alive, home_processes, describe, drop_job,  # noqa: F401
                       ids_in, lines, lone_worker, pid_alive, pool, q, read_job, spool_files,
                       states_of)

HEADER = re.compile(r"=== queuectl (\S+) attempt (\d+) "
                    r"at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z on worker (\S+):(\d+)")


def completed(spool, *ids):
    return all(states_of(spool, i) == ["completed"] for i in ids)


# ---- one job ---------------------------------------------------------------------------------

def test_a_job_completes_and_status_and_list_agree_with_the_spool(pool, spool, home,
                                                                  wait_until):
    pool.start(1)
    pool.enqueue({"id": "hello", "command": 'echo "hello from $QUEUECTL_JOB_ID attempt '
                  '$QUEUECTL_ATTEMPT home $QUEUECTL_HOME in $(pwd)"; echo to-stderr >&2'})
    pool.enqueue({"id": "broken", "command": "echo bad news; exit 2", "max_retries": 0})
    pool.enqueue({"id": "later", "command": "true"}, "--delay", "1h")
    wait_until(lambda: completed(spool, "hello") and states_of(spool, "broken") == ["dead"],
               timeout=15, message="hello in completed/ and broken in dead/")

    logs = pool.run("logs", "hello")
    assert (logs.exit_code, logs.stderr) == (0, "")
    out = logs.stdout.splitlines()
    header = HEADER.fullmatch(out[0])
    assert header and header.group(1, 2, 3) == ("hello", "1", socket.gethostname())
    assert sorted(out[1:3]) == sorted([f"hello from hello attempt 1 home {home} in {home}",
                                       "to-stderr"])
    assert re.fullmatch(r"=== end: ok \(\d+\.\d{3}s\) worker \S+:\d+", out[3])
    assert len(out) == 4

    job = read_job(spool, "hello", "completed")
    assert (job["attempts"], job["exit_code"], job["last_error"]) == (1, 0, None)
    assert job["finished_at"] == job["updated_at"] and "run_at" not in job
    dead = read_job(spool, "broken", "dead")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"]) == \
        (1, 2, "exit code 2: bad news")

    on_disk = {state: ids_in(spool, state) for state in JOB_STATES}
    assert on_disk == {"pending": ["later"], "processing": [], "failed": [],
                       "completed": ["hello"], "dead": ["broken"]}
    status = json.loads(pool.run("status", "--json").stdout)
    assert status["counts"] == {state: len(ids) for state, ids in on_disk.items()}
    assert (status["home"], status["ready"], status["scheduled"]) == (str(home), 0, 1)
    listed = json.loads(pool.run("list", "--json").stdout)
    assert {row["id"]: row["state"] for row in listed} == \
        {i: state for state, ids in on_disk.items() for i in ids}
    assert {row["id"]: row["attempts"] for row in listed} == \
        {"hello": 1, "broken": 1, "later": 0}

    workers = wait_until(lambda: [w for w in pool.workers()
                                  if (w["jobs_done"], w["jobs_failed"]) == (1, 1)],
                         message="the worker's heartbeat to count 1 done and 1 failed")
    (worker,) = workers
    assert worker["host"] == socket.gethostname() and pid_alive(worker["pid"])
    assert worker["current_job"] is None and worker["state"] == "idle"
    assert worker["pid"] == int(header.group(4))


# ---- backoff, the DLQ and back ---------------------------------------------------------------

def pickup_slack(pool, spool, tmp_path, wait_until, samples=5):
    """How late a worker may start a job that is due, on this machine right now: 3 x the
    worst of `samples` ready jobs' times from before their `enqueue` to their start (an
    overestimate: it includes the enqueue process), plus half a second. Measured in the
    test that uses it, so a loaded machine loosens the bound instead of failing it."""
    worst = 0.0
    for n in range(samples):
        stamp = tmp_path / f"pickup-{n}"
        before = time.time()
        pool.enqueue({"id": f"pickup-{n}", "command": f"date +%s.%N > {q(stamp)}"})
        wait_until(lambda: stamp.exists() and stamp.read_text().strip(), timeout=20,
                   message=f"pickup sample {n}")
        worst = max(worst, float(stamp.read_text()) - before)
    return 3 * worst + 0.5


def test_failing_job_retries_after_2s_and_4s_then_dies_and_dlq_retry_runs_it_again(
        pool, spool, wait_until, tmp_path):
    runs = tmp_path / "runs"
    pool.config(backoff_base=2, backoff_max=3600)
    pool.start(1)
    slack = pickup_slack(pool, spool, tmp_path, wait_until)
    pool.enqueue({"id": "flaky", "max_retries": 2, "command":
                  f'echo "$QUEUECTL_ATTEMPT $(date +%s.%N)" >> {q(runs)}; echo failing; exit 3'})
    wait_until(lambda: states_of(spool, "flaky") == ["dead"], timeout=20,
               message="flaky in dead/")
    rows = lines(runs)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    starts = [float(r[1]) for r in rows]
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert 2 <= first_gap < 2 + slack, (rows, slack)       # never early; late only by
    assert 4 <= second_gap < 4 + slack, (rows, slack)      # what a ready job waits here
    dead = read_job(spool, "flaky", "dead")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"]) == \
        (3, 3, "exit code 3: failing")

    retried = pool.run("dlq", "retry", "flaky")
    assert (retried.exit_code, retried.stdout, retried.stderr) == \
        (0, "flaky: moved to pending (attempts reset)\n", "")
    wait_until(lambda: len(lines(runs)) >= 4, timeout=10, message="a fourth run")
    assert lines(runs)[3][0] == "1"                  # the attempt counter restarted
    assert len(lines(runs)) == 4


# ---- order -----------------------------------------------------------------------------------

def test_one_worker_takes_jobs_by_priority_then_run_at(pool, spool, wait_until, tmp_path):
    order = tmp_path / "order"
    now = time.time()

    def job(job_id, **fields):
        return {"id": job_id, "command": f"echo {job_id} >> {q(order)}", **fields}
    pool.enqueue_many([
        job("plain-first"),
        job("negative", priority=-1, run_at=jobmod.iso(now - 5000)),
        job("plain-second"),
        job("recent", run_at=jobmod.iso(now - 10)),
        job("high", priority=10),
        job("old", run_at=jobmod.iso(now - 100)),
        job("mid", priority=5, run_at=jobmod.iso(now - 1000)),
        job("mid-newer", priority=5, run_at=jobmod.iso(now - 999)),
    ])
    pool.start(1)
    wait_until(lambda: len(ids_in(spool, "completed")) == 8, timeout=20,
               message="all 8 jobs in completed/")
    assert [r[0] for r in lines(order)] == ["high", "mid", "mid-newer", "old", "recent",
                                            "plain-first", "plain-second", "negative"]


def test_a_scheduled_job_does_not_run_early(pool, spool, wait_until, tmp_path):
    started = tmp_path / "started"
    pool.start(1)
    slack = pickup_slack(pool, spool, tmp_path, wait_until)
    before = time.time()
    pool.enqueue({"id": "later", "command": f"date +%s.%N > {q(started)}"}, "--delay", "3s")
    run_at = jobmod.parse_time(read_job(spool, "later", "pending")["run_at"])
    assert run_at >= before + 3
    pool.enqueue({"id": "now", "command": "true"})
    wait_until(lambda: completed(spool, "now"), message="the ready job to run")
    assert states_of(spool, "later") == ["pending"] and not started.exists()
    wait_until(lambda: completed(spool, "later"), timeout=15, message="later in completed/")
    began = float(started.read_text())
    assert run_at <= began < run_at + slack, (began - run_at, slack)


# ---- crashes ---------------------------------------------------------------------------------

def _intervals(rows):
    """{attempt: [start, end or None]} from "start|end <attempt> <ns> ..." rows."""
    spans = {}
    for row in rows:
        kind, attempt, ns = row[0], int(row[1]), int(row[2])
        if kind == "start":
            assert attempt not in spans, f"attempt {attempt} started twice: {rows}"
            spans[attempt] = [ns, None]
        elif kind == "end":
            spans[attempt][1] = ns
    return spans


def test_sigkilled_worker_mid_job_is_recovered_and_never_runs_twice_at_once(
        pool, spool, wait_until, tmp_path):
    log = tmp_path / "runs"
    pool.config(backoff_base=1)
    first = pool.start(2)
    supervisor = int(re.match(r"started supervisor (\d+)", first.stdout).group(1))
    # At its start each attempt lists earlier attempts' shells that are still alive (not
    # zombies): any would be the same job running twice at once.
    command = (
        f"alive=; for p in $(awk '$1 == \"start\" {{print $4}}' {q(log)} 2>/dev/null); do "
        f"if [ -e /proc/$p ] && ! grep -q '^State:[[:space:]]*Z' /proc/$p/status 2>/dev/null;"
        f" then alive=\"$alive,$p\"; fi; done; "
        f'echo "start $QUEUECTL_ATTEMPT $(date +%s%N) $$ alive:$alive" >> {q(log)}; '
        f'if [ "$QUEUECTL_ATTEMPT" = 1 ]; then sleep 6; else sleep 1; fi; '
        f'echo "end $QUEUECTL_ATTEMPT $(date +%s%N) $$" >> {q(log)}')
    pool.enqueue({"id": "victim", "command": command})
    victim = wait_until(lambda: pool.worker_running("victim"), timeout=10,
                        message="a worker to report it runs the job")
    first_attempt = wait_until(lambda: lines(log), message="the job's start line")[0]
    assert first_attempt[:2] == ["start", "1"]
    job_group = int(first_attempt[3])
    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: completed(spool, "victim"), timeout=30, message="victim completed")
    rows = lines(log)
    spans = _intervals(rows)
    assert sorted(spans) == list(range(1, len(spans) + 1)) and len(spans) >= 2, rows
    for row in rows:
        if row[0] == "start":
            assert row[4] == "alive:", f"ran twice at once: {rows}"
    ordered = [spans[a] for a in sorted(spans)]
    for (start, end), (next_start, _) in zip(ordered, ordered[1:]):
        assert end is None or end < next_start, f"attempts overlap: {rows}"
    assert ordered[-1][1] is not None                # the last attempt ran to its end
    assert spans[1][1] is None, rows                 # the first died with its worker
    assert not group_alive(job_group)                # the killed attempt died with its worker
    job = read_job(spool, "victim", "completed")
    assert job["attempts"] == len(spans) and job["last_error"] is None
    assert states_of(spool, "victim") == ["completed"] and spool_files(spool, "processing") == []

    def replaced():
        workers = pool.workers()
        pids = [w["pid"] for w in workers]
        return len(pids) == 2 and victim not in pids and workers
    workers = wait_until(replaced, timeout=15,
                         message="status to list two workers, the killed one replaced")
    assert all(pid_alive(w["pid"]) for w in workers)
    started = int(psutil.Process(supervisor).create_time())     # host-pid-start
    assert {w["supervisor"] for w in workers} == \
        {f"{socket.gethostname()}-{supervisor}-{started}"}


def test_a_job_that_kills_its_worker_is_buried_after_max_retries_plus_one_attempts(
        pool, spool, wait_until, tmp_path):
    pool.config(backoff_base=1)
    pool.start(2)
    # The job's shell is a direct child of its worker, so $PPID is the worker.
    parent, release = tmp_path / "parent", tmp_path / "release"
    pool.enqueue({"id": "whose-child", "command":
                  f"echo $PPID > {q(parent)}; while [ ! -e {q(release)} ]; do sleep 0.02; done"})
    worker = wait_until(lambda: pool.worker_running("whose-child"), timeout=10,
                        message="a worker to report it runs whose-child")
    assert int(wait_until(lambda: parent.exists() and parent.read_text().strip())) == worker
    release.touch()
    wait_until(lambda: completed(spool, "whose-child"), message="whose-child completed")

    attempts, flow = tmp_path / "attempts", tmp_path / "flow"
    pool.enqueue({"id": "killer", "max_retries": 2, "priority": 5, "command":
                  f'echo "$QUEUECTL_ATTEMPT $PPID" >> {q(attempts)}; kill -9 $PPID'})
    wait_until(lambda: lines(attempts), timeout=10, message="the killer's first attempt")
    others = pool.enqueue_many([{"id": f"other-{n:02d}", "command":
                                 f"echo $QUEUECTL_JOB_ID >> {q(flow)}"} for n in range(30)])
    wait_until(lambda: states_of(spool, "killer") == ["dead"] and completed(spool, *others),
               timeout=60, message="killer in dead/ and the other jobs completed")

    rows = lines(attempts)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert len({r[1] for r in rows}) == 3             # each attempt killed another worker
    dead = read_job(spool, "killer", "dead")
    assert (dead["attempts"], dead["last_error"]) == (3, "worker died")
    ran = [r[0] for r in lines(flow)]
    assert sorted(ran) == sorted(others)              # each other job exactly once
    finished = [jobmod.parse_time(read_job(spool, i, "completed")["finished_at"])
                for i in others]
    assert min(finished) < jobmod.parse_time(dead["finished_at"])
    assert spool_files(spool, "processing") == []


# ---- graceful stop ---------------------------------------------------------------------------

def test_worker_stop_lets_the_running_job_finish(pool, spool, home, wait_until, tmp_path):
    marks = tmp_path / "marks"
    pool.start(1)
    pool.enqueue({"id": "busy", "command":
                  f'echo "start $$" >> {q(marks)}; sleep 1.5; echo end >> {q(marks)}'})
    wait_until(lambda: lines(marks), message="the job to start")
    job_group = int(lines(marks)[0][1])
    assert ids_in(spool, "processing") == ["busy"]     # status and list agree while it runs
    assert pool.status()["counts"]["processing"] == 1
    assert [(r["id"], r["state"]) for r in json.loads(pool.run("list", "--json").stdout)] == \
        [("busy", "processing")]
    stopped = pool.stop()
    assert (stopped.exit_code, stopped.stderr) == (0, "")
    assert re.fullmatch(r"stopped supervisor \d+ and its 1 worker\n", stopped.stdout)
    assert [m[0] for m in lines(marks)] == ["start", "end"]
    assert states_of(spool, "busy") == ["completed"]
    assert read_job(spool, "busy", "completed")["attempts"] == 1
    assert home_processes(home) == [], describe(home_processes(home))
    assert not group_alive(job_group)
    assert pool.workers() == []


def test_worker_stop_past_its_timeout_requeues_the_job_without_counting_an_attempt(
        pool, spool, home, wait_until, tmp_path):
    marks, first = tmp_path / "marks", tmp_path / "first-run"
    pool.start(1)
    # A drop-in, since enqueue refuses `attempts`: a job that already had one attempt.
    staged = spool / "tmp" / "long"
    staged.write_text(json.dumps({"id": "long", "attempts": 1, "max_retries": 3, "command":
                      f'echo "start $$ $QUEUECTL_ATTEMPT" >> {q(marks)}; '
                      f"if [ ! -e {q(first)} ]; then touch {q(first)}; sleep 30; fi; "
                      f"echo end >> {q(marks)}"}))
    os.rename(staged, spool / "pending" / "long.json")
    wait_until(lambda: lines(marks), message="the job to start")
    job_group = int(lines(marks)[0][1])
    assert os.getpgid(job_group) == job_group and os.getsid(job_group) == job_group
    began = time.monotonic()
    stopped = pool.stop("--timeout", "1")
    took = time.monotonic() - began
    assert (stopped.exit_code, stopped.stderr) == (0, "")
    assert re.fullmatch(r"stopped supervisor \d+ and its 1 worker\n", stopped.stdout)
    assert 1 <= took < 15
    assert states_of(spool, "long") == ["pending"]
    requeued = read_job(spool, "long", "pending")
    assert requeued["attempts"] == 1 and requeued["command"].startswith('echo "start')
    assert spool_files(spool, "processing") == [] and spool_files(spool, "tmp") == []
    assert [m[0] for m in lines(marks)] == ["start"]
    assert not group_alive(job_group)
    assert home_processes(home) == [], describe(home_processes(home))

    pool.start(1)                                      # nothing was lost: it runs again
    wait_until(lambda: completed(spool, "long"), timeout=15, message="long completed")
    assert [m[0] for m in lines(marks)] == ["start", "start", "end"]
    assert lines(marks)[1][2] == "2"                   # attempt 2: the stop did not count
    assert read_job(spool, "long", "completed")["attempts"] == 2


def test_worker_stop_timeout_longer_than_shutdown_timeout_lets_the_job_finish(
        pool, spool, wait_until, tmp_path):
    """`worker stop --timeout S`: "Seconds to let running jobs finish before they are
    killed and requeued (default: config shutdown_timeout)". The option, when given, wins
    over the configured default."""
    marks = tmp_path / "marks"
    pool.config(shutdown_timeout=1)
    pool.start(1)
    pool.enqueue({"id": "patient", "command":
                  f"echo start >> {q(marks)}; sleep 3; echo end >> {q(marks)}"})
    wait_until(lambda: lines(marks), message="the job to start")
    stopped = pool.stop("--timeout", "20")
    assert (stopped.exit_code, stopped.stderr) == (0, "")
    assert [m[0] for m in lines(marks)] == ["start", "end"], \
        f"the job was killed before --timeout 20 ran out; now in {states_of(spool, 'patient')}"
    assert states_of(spool, "patient") == ["completed"]


# ---- output ----------------------------------------------------------------------------------

def test_logs_follow_prints_the_output_until_the_job_finishes(pool, spool, wait_until,
                                                             spawn_queuectl, tmp_path):
    release = tmp_path / "release"
    pool.start(1)
    pool.enqueue({"id": "chatty", "command":
                  f"echo one; while [ ! -e {q(release)} ]; do sleep 0.02; done; echo two"})
    wait_until(lambda: (spool / "output" / "chatty.log").exists() and
               "one" in (spool / "output" / "chatty.log").read_text(),
               message="the job's first line")
    follower = spawn_queuectl("logs", "-f", "chatty")
    try:
        assert follower.stdout.readline().startswith(b"=== queuectl chatty attempt 1 at ")
        assert follower.stdout.readline() == b"one\n"
        assert follower.poll() is None                   # still following the running job
        release.touch()
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert (follower.returncode, err) == (0, b"")
    rest = out.decode().splitlines()
    assert rest[0] == "two" and rest[1].startswith("=== end: ok (") and len(rest) == 2
    assert states_of(spool, "chatty") == ["completed"]


# ---- files dropped into the spool ------------------------------------------------------------

def test_a_file_moved_from_tmp_into_pending_by_mv_is_run(pool, spool, wait_until, tmp_path):
    ran = tmp_path / "ran"
    pool.config(worker_poll_interval=60)               # picked up by inotify, not the rescan
    pool.start(1)
    staged = spool / "tmp" / "incoming.partial"
    staged.write_text(json.dumps({"command": f"echo $QUEUECTL_JOB_ID >> {q(ran)}"}))
    subprocess.run(f"mv {q(staged)} {q(spool / 'pending' / 'dropped.json')}", shell=True,
                   check=True)
    wait_until(lambda: completed(spool, "dropped"), timeout=10, message="dropped completed")
    assert lines(ran) == [["dropped"]]
    job = read_job(spool, "dropped", "completed")
    assert (job["id"], job["attempts"], job["exit_code"]) == ("dropped", 1, 0)
    assert spool_files(spool, "tmp") == [] and spool_files(spool, "rejected") == []


def test_a_file_written_slowly_into_pending_runs_once_complete_and_exactly_once(
        pool, spool, wait_until, tmp_path):
    ran = tmp_path / "ran"
    pool.start(1)                                       # settle_seconds stays at its 2 s
    data = json.dumps({"max_retries": 0, "command":
                       f"echo $QUEUECTL_ATTEMPT >> {q(ran)}"}).encode()
    target = spool / "pending" / "slow.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for n in range(len(data)):
            os.write(fd, data[n:n + 1])
            time.sleep(0.02)                            # the writer's pace, not a wait
            if n < len(data) - 1:
                assert not ran.exists(), f"ran after {n + 1} of {len(data)} bytes"
                assert target.exists(), f"taken away after {n + 1} of {len(data)} bytes"
    finally:
        os.close(fd)
    wait_until(lambda: completed(spool, "slow"), timeout=10, message="slow completed")
    assert lines(ran) == [["1"]]
    assert read_job(spool, "slow", "completed")["command"] == json.loads(data)["command"]
    assert spool_files(spool, "rejected") == []
    assert states_of(spool, "slow") == ["completed"]


# ---- timeouts --------------------------------------------------------------------------------

def test_a_timed_out_job_is_killed_with_its_whole_process_group(pool, spool, wait_until,
                                                                tmp_path):
    pool.config(job_timeout=1)                           # for the job without its own
    pool.start(2)
    for job_id, fields in (("slowpoke", {"timeout": 1}), ("by-config", {})):
        pids = tmp_path / job_id
        pool.enqueue({"id": job_id, "max_retries": 0, **fields, "command":
                      f'sleep 60 & echo "$$ $!" > {q(pids)}; sleep 60'})
    groups = {}
    for job_id in ("slowpoke", "by-config"):
        wait_until(lambda: lines(tmp_path / job_id), message=f"{job_id} to start its grandchild")
        groups[job_id] = job_group, grandchild = [int(x) for x in lines(tmp_path / job_id)[0]]
        assert os.getpgid(grandchild) == job_group
    for job_id, (job_group, grandchild) in groups.items():
        wait_until(lambda: states_of(spool, job_id) == ["dead"], timeout=20,
                   message=f"{job_id} in dead/")
        assert not group_alive(job_group)
        assert not pid_alive(grandchild)
        job = read_job(spool, job_id, "dead")
        assert job["last_error"] == "timed out after 1s (process group killed)"
        assert 1 <= job["duration_s"] < 10


# ---- recover ---------------------------------------------------------------------------------

def test_recover_counts_orphans_deletes_leftovers_and_leaves_locked_files_alone(
        drop, spool, run_queuectl):
    def doc(job_id, **fields):
        return json.dumps({"id": job_id, "command": "true", "max_retries": 3,
                           "created_at": "2030-01-01T00:00:00.000000Z", **fields})
    drop("orphan.json", doc("orphan", attempts=0), state="processing")
    drop("last.json", doc("last", attempts=3), state="processing")
    drop("dup.json", doc("dup", attempts=0), state="processing")
    done_copy = drop("dup.json", doc("dup", attempts=1, exit_code=0), state="completed")
    held_path = drop("held.json", doc("held", attempts=2), state="processing")
    held_bytes, held_inode = held_path.read_bytes(), held_path.stat().st_ino
    done_bytes = done_copy.read_bytes()

    lock = os.open(held_path, os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)     # a live owner: this test
        before = time.time()
        ran = run_queuectl("recover")
        assert (ran.exit_code, ran.stderr) == (0, "")
        assert sorted(ran.stdout.splitlines()) == [
            "dup: deleted a leftover copy (the job had already moved on)",
            "last: worker died: retries exhausted, moved to dead",
            "orphan: worker died: attempt counted, moved to failed (will retry)"]

        orphan = read_job(spool, "orphan", "failed")
        assert (orphan["attempts"], orphan["last_error"]) == (1, "worker died")
        assert before + 2 <= jobmod.parse_time(orphan["run_at"]) <= time.time() + 2
        assert states_of(spool, "orphan") == ["failed"]
        last = read_job(spool, "last", "dead")
        assert (last["attempts"], last["last_error"]) == (4, "worker died")
        assert states_of(spool, "dup") == ["completed"]
        assert done_copy.read_bytes() == done_bytes
        assert states_of(spool, "held") == ["processing"]
        assert held_path.read_bytes() == held_bytes
        assert held_path.stat().st_ino == held_inode

        again = run_queuectl("recover", "--json")
        assert (again.exit_code, json.loads(again.stdout)) == (0, [])
    finally:
        os.close(lock)                                   # the owner is gone now
    ran = run_queuectl("recover")
    assert (ran.exit_code, ran.stdout) == \
        (0, "held: worker died: attempt counted, moved to failed (will retry)\n")
    assert read_job(spool, "held", "failed")["attempts"] == 3
    assert run_queuectl("recover").stdout == "nothing to recover\n"


def test_a_job_runs_in_the_queue_s_home_or_in_its_cwd_taken_from_there(cli, home, spool,
                                                                        lone_worker,
                                                                        wait_until, tmp_path):
    """A worker started elsewhere (here: the tests' directory) runs a job without `cwd` in
    the queue's home, and takes a relative `cwd` from the home too, not from wherever the
    worker happened to be started."""
    assert cli("init").exit_code == 0
    (home / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    drop_job(spool, "plain", f"pwd > {q(out / 'plain')}")
    drop_job(spool, "relative", f"pwd > {q(out / 'relative')}", cwd="sub")
    drop_job(spool, "absolute", f"pwd > {q(out / 'absolute')}", cwd=str(tmp_path))
    assert os.getcwd() != str(home)
    lone_worker()
    wait_until(lambda: completed(spool, "plain", "relative", "absolute"), timeout=20,
               message="the three jobs to complete")
    assert [(out / n).read_text().strip() for n in ("plain", "relative", "absolute")] == \
        [str(home), str(home / "sub"), str(tmp_path)]
