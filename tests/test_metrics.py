"""Metrics against real workers: `metrics --json` numbers match what the workers did, the
human view and `--watch`, stale heartbeats (a SIGSTOPped worker) and their cleanup once the
process is gone, Prometheus output parsed by prometheus_client's parser, and the
`metrics_textfile` that workers replace atomically."""

import os
import re
import select
import signal
import time

from controlkit import (families, frozen, metrics, report, samples, spawn_on_pty,  # noqa: F401
                        worker_entry)
from workerkit import ids_in, pool  # noqa: F401

CLEAR = b"\x1b[H\x1b[2J"
STALE_AFTER = 6          # 3 heartbeat intervals of 2 s
DOCUMENTED_KEYS = {"home", "generated_at", "paused", "jobs", "rejected", "backlog", "totals",
                   "dlq_size", "throughput_per_min", "queue_wait_s", "run_time_s", "workers",
                   "last_heartbeat_age_s"}
WORKER_KEYS = {"id", "host", "pid", "state", "stale", "uptime_s", "heartbeat_age_s",
               "current_job", "jobs_done", "jobs_failed", "cpu_percent", "rss_mb"}

OK_JOBS, BAD_JOBS = 4, 2          # each bad job has max_retries 1: two failed attempts


def run_mixed_batch(pool):
    """OK_JOBS jobs that succeed and BAD_JOBS that fail twice into the DLQ, run by two real
    workers; returns once every outcome is counted."""
    pool.config(backoff_base=1)
    for n in range(OK_JOBS):
        pool.enqueue({"id": f"ok-{n}", "command": "sleep 0.05; echo ok"})
    for n in range(BAD_JOBS):
        pool.enqueue({"id": f"bad-{n}", "command": "echo boom >&2; exit 3"},
                     "--max-retries", "1")
    pool.start(2)

    def all_counted():
        m = metrics(pool.cli)
        return m if (m["totals"]["completed"], m["totals"]["dead"]) == (OK_JOBS, BAD_JOBS) \
            else None
    return all_counted


def test_metrics_json_counts_what_the_workers_did(pool, wait_until):
    all_counted = run_mixed_batch(pool)
    m = wait_until(all_counted, timeout=20, message="every outcome counted")
    assert ids_in(pool.spool, "completed") == [f"ok-{n}" for n in range(OK_JOBS)]
    assert ids_in(pool.spool, "dead") == [f"bad-{n}" for n in range(BAD_JOBS)]

    assert DOCUMENTED_KEYS <= set(m)
    assert m["home"] == str(pool.home) and m["paused"] is False
    assert m["jobs"] == {"pending": 0, "processing": 0, "failed": 0,
                         "completed": OK_JOBS, "dead": BAD_JOBS}
    assert m["rejected"] == 0
    assert m["dlq_size"] == BAD_JOBS
    # Every attempt that failed counts: the first (retried) and the last (buried) one.
    assert m["totals"] == {"completed": OK_JOBS, "failed": 2 * BAD_JOBS, "dead": BAD_JOBS,
                           "requeued": 0, "cancelled": 0}
    assert m["backlog"] == {"ready": 0, "scheduled": 0, "oldest_ready_age_s": None}
    # All completions happened within the last minute: exact per-minute rates.
    assert m["throughput_per_min"] == {"1m": float(OK_JOBS), "5m": round(OK_JOBS / 5, 3),
                                       "15m": round(OK_JOBS / 15, 3)}
    attempts = OK_JOBS + 2 * BAD_JOBS
    run, wait = m["run_time_s"], m["queue_wait_s"]
    assert run["count"] == wait["count"] == attempts
    assert run["p50"] is not None and 0 < run["p50"] <= run["p95"]
    assert run["p95"] >= 0.05                      # the ok jobs sleep 0.05 s
    assert wait["p50"] is not None and 0 <= wait["p50"] <= wait["p95"]
    assert m["last_heartbeat_age_s"] is not None and m["last_heartbeat_age_s"] < STALE_AFTER

    assert len(m["workers"]) == 2
    for w in m["workers"]:
        assert WORKER_KEYS <= set(w)
        assert w["stale"] is False and w["state"] in ("idle", "busy")
        assert w["rss_mb"] > 0 and w["cpu_percent"] is not None
    # Heartbeats lag by up to an interval; the per-worker counters catch up with the totals.
    wait_until(lambda: (sum(w["jobs_done"] for w in metrics(pool.cli)["workers"]),
                        sum(w["jobs_failed"] for w in metrics(pool.cli)["workers"]))
               == (OK_JOBS, 2 * BAD_JOBS), timeout=10, message="worker counters")


def test_metrics_text_shows_every_line(pool, wait_until):
    wait_until(run_mixed_batch(pool), timeout=20, message="every outcome counted")
    pids = sorted(w["pid"] for w in pool.workers())
    result = pool.cli("metrics")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"home: {pool.home}"
    assert re.fullmatch(r"workers: 2 \([012] busy, [012] idle\), up \S+, last heartbeat \S+ ago",
                        lines[1]), lines[1]
    assert re.fullmatch(r"usage:       CPU \d+\.\d%, memory \d+\.\d MB \(workers and their "
                        r"jobs\)", lines[2]), lines[2]
    assert lines[3] == (f"completed:   {OK_JOBS}   failed attempts: {2 * BAD_JOBS}   "
                        f"DLQ size: {BAD_JOBS}")
    assert lines[4] == (f"jobs:        pending 0, processing 0, failed 0, completed {OK_JOBS}, "
                        f"dead {BAD_JOBS}, rejected 0")
    assert lines[5] == "backlog:     ready 0, scheduled 0, oldest ready -"
    assert lines[6] == f"totals:      dead {BAD_JOBS}, cancelled 0, requeued 0"
    assert lines[7] == (f"throughput:  {OK_JOBS} / {OK_JOBS / 5:g} / {round(OK_JOBS / 15, 3):g}"
                        " jobs/min (1m / 5m / 15m)")
    assert lines[8].startswith("queue wait:  p50 ") and \
        lines[8].endswith(f"(last 15 min, {OK_JOBS + 2 * BAD_JOBS} runs)")
    assert lines[9].startswith("run time:    p50 ") and " p95 " in lines[9] and "-" not in lines[9]
    assert lines[10] == ""
    assert lines[11].split() == ["PID", "STATE", "UPTIME", "BEAT", "JOB", "DONE", "FAIL",
                                 "CPU%", "MEM", "MB"]
    assert sorted(int(line.split()[0]) for line in lines[12:]) == pids
    assert max(len(line) for line in lines[1:]) <= 80


def test_metrics_backlog_without_workers(cli, home):
    for n in range(3):
        assert cli("enqueue", f'{{"id": "ready-{n}", "command": "true"}}').exit_code == 0
    for n in range(2):
        assert cli("enqueue", f'{{"id": "later-{n}", "command": "true"}}',
                   "--delay", "1h").exit_code == 0
    m = metrics(cli)
    assert m["backlog"]["ready"] == 3 and m["backlog"]["scheduled"] == 2
    assert 0 <= m["backlog"]["oldest_ready_age_s"] < 60
    assert m["jobs"]["pending"] == 5
    assert m["workers"] == [] and m["last_heartbeat_age_s"] is None
    assert m["totals"] == {"completed": 0, "failed": 0, "dead": 0, "requeued": 0,
                           "cancelled": 0}
    assert m["throughput_per_min"] == {"1m": 0.0, "5m": 0.0, "15m": 0.0}
    assert m["run_time_s"] == m["queue_wait_s"] == {"p50": None, "p95": None, "count": 0,
                                                    "sum": 0}
    text = cli("metrics").stdout.splitlines()
    assert text[1] == "workers: none running (start some with: queuectl worker start)"
    assert text[4].startswith("backlog:     ready 3, scheduled 2, oldest ready ")
    assert len(text) == 9


def test_metrics_json_and_prometheus_together_is_a_usage_error(cli):
    result = cli("metrics", "--json", "--prometheus")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: choose one of --json and --prometheus"


def _read_some(fd, out, until, timeout=10):
    """Read from fd into `out` (bytearray) until until(out) or timeout; until(out)."""
    deadline = time.monotonic() + timeout
    while not until(out) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:          # EIO: the pty's other side is closed
                break
            if not chunk:
                break
            out += chunk
    return until(out)


def test_metrics_watch_refreshes_in_place_until_ctrl_c(cli, home):
    assert cli("init").exit_code == 0
    # On a terminal (a pty here) each frame clears the screen and redraws from the top.
    proc, master = spawn_on_pty(home, "metrics", "--watch", "0.2")
    try:
        out = bytearray()
        assert _read_some(master, out, lambda o: o.count(CLEAR) >= 2), bytes(out)
        assert b"jobs:        pending 0, " in out
        # The view is live: a job enqueued now shows up in a later frame.
        assert cli("enqueue", '{"id": "seen", "command": "true"}').exit_code == 0
        assert _read_some(master, out, lambda o: b"jobs:        pending 1, " in o), bytes(out)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        _read_some(master, out, lambda o: False, timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert code == 0, bytes(out)
    text = bytes(out).replace(b"\r\n", b"\n")
    assert b"Traceback" not in text and b"Aborted" not in text, text
    frames = text.split(CLEAR)
    assert frames[0] == b"" and len(frames) >= 3
    for frame in frames[1:]:
        assert frame.startswith(f"home: {home}\n".encode()), frame
    for frame in frames[1:-1]:
        assert frame.endswith(b"\n\n(every 0.2s; Ctrl-C to stop)\n"), frame


def test_metrics_watch_on_a_pipe_prints_plain_frames(spawn_queuectl, home, cli):
    assert cli("init").exit_code == 0
    proc = spawn_queuectl("metrics", "--watch", "0.2")
    try:
        out = bytearray()
        footer = b"(every 0.2s; Ctrl-C to stop)\n"
        assert _read_some(proc.stdout.fileno(), out, lambda o: o.count(footer) >= 2), bytes(out)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, b"")
    text = bytes(out) + rest
    assert CLEAR not in text            # no escape codes in a file or pipe
    assert text.startswith(f"home: {home}\n".encode())
    assert text.count(f"home: {home}\n".encode()) >= 2


def test_stopped_worker_is_stale_then_gone_with_its_process(pool, frozen, wait_until):
    pool.start(2)
    victim, other = sorted(w["pid"] for w in pool.workers())
    frozen(victim)
    seen = []

    def victim_stale():
        m = metrics(pool.cli)
        entry = worker_entry(m["workers"], victim)
        seen.append((entry["stale"], entry["heartbeat_age_s"]))
        return entry if entry["stale"] else None
    entry = wait_until(victim_stale, timeout=15, interval=0.2, message="the worker is stale")
    assert entry["state"] == "stale" and entry["heartbeat_age_s"] > STALE_AFTER
    # Not stale before 3 intervals without a heartbeat.
    assert all(not stale for stale, age in seen if age < STALE_AFTER - 0.1), seen
    status = report(pool.cli, "status")
    assert worker_entry(status["workers"], victim)["stale"] is True
    assert worker_entry(status["workers"], victim)["state"] == "stale"
    assert worker_entry(status["workers"], other)["stale"] is False
    text = pool.cli("status").stdout
    row = next(line.split() for line in text.splitlines() if line.split()[:1] == [str(victim)])
    assert "stale" in row
    up = families(pool.cli("metrics", "--prometheus").stdout)["queuectl_worker_up"]
    assert {s.labels["pid"]: s.value for s in up.samples} == {str(victim): 0, str(other): 1}

    os.kill(victim, signal.SIGKILL)       # the process is gone: its record goes too
    wait_until(lambda: worker_entry(pool.workers(), victim) is None, timeout=10,
               message="the killed worker's record removed")
    assert worker_entry(metrics(pool.cli)["workers"], victim) is None
    # Its supervisor replaced it with a fresh, live worker.
    replaced = wait_until(lambda: [w for w in pool.workers() if w["pid"] not in (victim, other)],
                          timeout=10, message="a replacement worker")
    assert replaced[0]["stale"] is False
    assert victim not in [w["pid"] for w in pool.workers()]


def test_prometheus_output_parses(pool, wait_until):
    pool.config(backoff_base=1)
    for n in range(3):
        pool.enqueue({"id": f"ok-{n}", "command": "true"})
    pool.enqueue({"id": "bad", "command": "exit 1"}, "--max-retries", "0")
    pool.start(2)
    wait_until(lambda: metrics(pool.cli)["totals"]["dead"] == 1 and
               metrics(pool.cli)["totals"]["completed"] == 3, timeout=20)
    pids = sorted(str(w["pid"]) for w in pool.workers())
    result = pool.cli("metrics", "--prometheus")
    assert result.exit_code == 0 and result.stderr == ""
    fams = families(result.stdout)
    assert fams["queuectl_jobs"].type == "gauge"
    assert samples(fams["queuectl_jobs"]) == [
        ("queuectl_jobs", {"state": s}, n) for s, n in
        (("pending", 0), ("processing", 0), ("failed", 0), ("completed", 3), ("dead", 1),
         ("rejected", 0))]
    run = fams["queuectl_job_run_seconds"]
    assert run.type == "summary"
    quantiles = {s.labels["quantile"]: s.value for s in run.samples
                 if s.name == "queuectl_job_run_seconds"}
    assert set(quantiles) == {"0.5", "0.95"} and 0 < quantiles["0.5"] <= quantiles["0.95"]
    assert [s.value for s in run.samples if s.name == "queuectl_job_run_seconds_count"] == [4]
    up = fams["queuectl_worker_up"]
    assert up.type == "gauge"
    assert sorted((s.labels["pid"], s.value) for s in up.samples) == [(p, 1) for p in pids]
    assert {s.labels["host"] for s in up.samples} == {w["host"] for w in pool.workers()}
    assert samples(fams["queuectl_paused"]) == [("queuectl_paused", {}, 0)]
    outcomes = {s.labels["outcome"]: s.value for s in fams["queuectl_job_outcomes"].samples}
    assert outcomes["completed"] == 3 and outcomes["dead"] == 1


def _complete_textfile(text):
    """Parse one read of the textfile; it must be a whole exposition, first to last family."""
    fams = families(text)
    assert text.startswith("# HELP queuectl_jobs ") and text.endswith("\n"), text
    assert "queuectl_jobs" in fams and "queuectl_worker_heartbeat_age_seconds" in fams, text
    return fams


def test_metrics_textfile_is_written_atomically(pool, tmp_path, wait_until):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    path = textdir / "queuectl.prom"
    pool.config(metrics_textfile=str(path))
    for n in range(3):
        pool.enqueue({"id": f"ok-{n}", "command": "true"})
    pool.start(2)
    wait_until(path.exists, timeout=10, message="the textfile")

    def shows_completed():
        fams = _complete_textfile(path.read_text())
        return dict((s.labels["state"], s.value) for s in fams["queuectl_jobs"].samples) \
            .get("completed") == 3
    wait_until(shows_completed, timeout=15, interval=0.1, message="the textfile's counts")

    # Read while the workers keep replacing it (about every 2 s): every read is whole, and
    # a new inode shows it is replaced by a rename, never rewritten in place.
    versions, reads = set(), 0
    deadline = time.monotonic() + 15
    while (reads < 200 or len(versions) < 2) and time.monotonic() < deadline:
        with open(path) as f:
            versions.add(os.fstat(f.fileno()).st_ino)
            text = f.read()
        _complete_textfile(text)
        reads += 1
    assert reads >= 200 and len(versions) >= 2, (reads, versions)
    up = families(path.read_text())["queuectl_worker_up"]
    assert len(up.samples) == 2

    stopped = pool.stop("--timeout", "2")
    assert stopped.exit_code == 0, stopped.stderr
    assert os.listdir(textdir) == ["queuectl.prom"]
    _complete_textfile(path.read_text())
