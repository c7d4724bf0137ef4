"""Several hosts on one spool, on a real distributed filesystem: two JuiceFS mounts of one
volume are two hosts' views (juicefskit.py); each host runs its workers in its own PID and
UTS namespaces (pids collide, hostnames differ) with its own local data/.

Every job runs torture.py's recording command (its start/end lines go to a per-host results
directory; an execution that finds its id's local lock held records an overlap), so the
checker can count lost jobs, duplicate and overlapping executions across hosts."""

import json
import os
import random
import time
from pathlib import Path

import psutil
import pytest

from juicefskit import _alive, _has_env, hosts, juicefs, ns_pid  # noqa: F401
from torture import (Background, Checker, clock_ns, finished, job_command, job_lines,
                     read_results, record, scan_spool, seed_from_env)

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")


def host_job_command(results, body=""):
    """torture's job command, recording into results/<host>/ (pids collide across hosts)."""
    for name in ("hostA", "hostB"):
        (Path(results) / name).mkdir(parents=True, exist_ok=True)
    (Path(results) / "locks").mkdir(parents=True, exist_ok=True)
    command = job_command(results, body)
    assert 'f="$R/w$W.log"' in command
    return command.replace('f="$R/w$W.log"', 'f="$R/$QTEST_HOST/w$W.log"')


def check_runs(results, spool, acknowledged):
    """The torture checker over both hosts' records and the shared spool (no index)."""
    checker = Checker(results.parent, results / "hostA")
    checker.spool = Path(spool)
    report = checker.check(acknowledged, index=False)
    both = [read_results(results / h) for h in ("hostA", "hostB")]
    report.executions = sum(len(r.executions) for r in both)
    runs = {}
    for r in both:
        for run in r.executions:
            runs.setdefault(run.job_id, []).append(run)
    report.runs = runs
    report.duplicates = sum(len(r) - 1 for r in runs.values())
    report.max_runs_per_id = max((len(r) for r in runs.values()), default=0)
    report.overlapping = sorted({o[0] for r in both for o in r.overlaps})
    ended = {run.job_id for r in both for run in r.executions if run.end_ns is not None}
    scan = scan_spool(spool)
    report.completed_unrun = sorted(scan.states["completed"] - ended)
    report.unexpected = sorted(set(runs) - set(acknowledged))
    report.malformed_results = [m for r in both for m in r.malformed]
    return report


def drop_in(spool, ids, command):
    """Drop jobs the way another tool does: write a hidden .part file, rename it in."""
    pending = Path(spool) / "pending"
    for job_id in ids:
        part = pending / f".{job_id}.json.part"
        part.write_text(job_lines([job_id], command))
        os.rename(part, pending / f"{job_id}.json")


def ids_of(spool, state):
    try:
        return {n[:-5] for n in os.listdir(Path(spool) / state) if n.endswith(".json")}
    except FileNotFoundError:
        return set()


def counts(status):
    return {s: status["counts"][s] for s in JOB_STATES}


def setup_hosts(hosts, **settings):
    for host in hosts:
        for key, value in settings.items():
            host.run("config", "set", key, value)


SMOKE_JOBS = 80          # default suite: 20 per way in (~10-15 jobs/s on JuiceFS here)
FULL_JOBS = 2000         # the size, under -m stress


def test_two_hosts_run_every_job_exactly_once(hosts, tmp_path, wait_until):
    run_two_hosts(hosts, tmp_path, wait_until, SMOKE_JOBS)


@pytest.mark.stress
def test_two_hosts_run_2000_jobs_exactly_once(hosts, tmp_path, wait_until):
    run_two_hosts(hosts, tmp_path, wait_until, FULL_JOBS)


def run_two_hosts(hosts, tmp_path, wait_until, jobs):
    """2 hosts x 2 workers; a quarter of the jobs enqueued on each host, a quarter dropped
    in through each host's mount; every job completes exactly once and `status` agrees on
    both hosts, listing all 4 workers."""
    a, b = hosts
    results = tmp_path / "results"
    command = host_job_command(results)
    setup_hosts(hosts, worker_poll_interval=0.5)
    a.start_workers(2)
    b.start_workers(2)
    started = time.monotonic()
    ids = {name: [f"{name}-{n:04d}" for n in range(jobs // 4)]
           for name in ("enqA", "enqB", "dropA", "dropB")}
    out_a = a.run("enqueue", "-", input=job_lines(ids["enqA"], command), timeout=600)
    out_b = b.run("enqueue", "-", input=job_lines(ids["enqB"], command), timeout=600)
    out_a, out_b = out_a.stdout.split(), out_b.stdout.split()
    assert out_a == ids["enqA"] and out_b == ids["enqB"]
    drop_in(a.spool, ids["dropA"], command)
    drop_in(b.spool, ids["dropB"], command)
    acknowledged = [i for group in ids.values() for i in group]
    wait_until(lambda: finished(a.spool, acknowledged), timeout=300, interval=0.5,
               message=f"all {jobs} jobs completed")
    elapsed = time.monotonic() - started
    print(f"\n[multihost] {jobs} jobs on 2+2 workers in {elapsed:.1f}s")

    def agreeing_status():
        seen = [a.status(), b.status()]
        if any(counts(s) != counts(seen[0]) for s in seen):
            return None
        if any(len(s["workers"]) != 4 for s in seen):
            return None
        return seen
    statuses = wait_until(agreeing_status, timeout=20, interval=0.5,
                          message="status on both hosts: same counts, all 4 workers")
    assert counts(statuses[0])["completed"] == jobs
    for status in statuses:
        assert sorted({w["host"] for w in status["workers"]}) == ["hostA", "hostB"], status
    metrics = json.loads(b.run("metrics", "--json").stdout)
    assert sorted(w["host"] for w in metrics["workers"]) == ["hostA"] * 2 + ["hostB"] * 2
    report = check_runs(results, a.spool, acknowledged)
    record("multihost_2x2", jobs=jobs, elapsed_s=elapsed, jobs_per_s=jobs / elapsed,
           duplicates=report.duplicates)
    report.assert_clean()
    assert report.duplicates == 0, report.summary()
    stop_b_from_a_then_pickup_by_polling(a, b, results, command, wait_until)


def stop_b_from_a_then_pickup_by_polling(a, b, results, command, wait_until):
    """`worker stop --host hostB` on A stops B's pool through the spool; then jobs enqueued
    on B (no inotify event reaches A) are picked up by A's poll; the latency is recorded.
    A pool started on B afterwards is not stopped by the old request."""
    status = a.status()
    assert status["spool_shared"] is True and status["filesystem"] == "fuse.juicefs"
    assert len({w["worker_id"] for w in status["workers"]}) == 4     # pids may collide
    out = a.run("worker", "stop", "--host", "hostB", "--timeout", "2", timeout=60)
    assert out.stdout.strip() == "stopped host hostB's 2 workers", out.stdout
    assert b.workers() == []
    assert [w["host"] for w in a.status()["workers"]] == ["hostA", "hostA"]
    latencies = []
    for n in range(5):
        job_id = f"poll{n}"
        b.run("enqueue", "-", input=job_lines([job_id], command))
        queued = clock_ns()           # enqueue has returned: the job is in pending/
        runs = wait_until(lambda: started_runs(results, "hostA", job_id), timeout=15,
                          interval=0.02, message=f"A picking up {job_id} enqueued on B")
        latencies.append((runs[0].start_ns - queued) / 1e9)
    record("multihost_pickup_by_poll", poll_interval_s=0.5,
           enqueued_to_started_s="/".join(f"{x:.2f}" for x in latencies))
    b.start_workers(1)
    wait_until(lambda: len(a.status()["workers"]) == 3, timeout=15,
               message="B's new worker seen from A")
    assert len(b.workers()) == 1


# ---- the claim race, forced with the fault hook -------------------------------------------------

def open_fds():
    return len(os.listdir("/proc/self/fd"))


def wait_until_deleted(path, timeout=10):
    """Until the fd this process has open on `path` reports ENOENT: JuiceFS deletes an
    inode unlinked while its holder still had it open a moment later, and the race is
    only the one the issue names once it is gone (flock/fstat/pread then fail)."""
    fds = [int(fd) for fd in os.listdir("/proc/self/fd")
           if _link(f"/proc/self/fd/{fd}").startswith(path)]
    assert fds, f"no fd open on {path}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.fstat(fds[0])
        except FileNotFoundError:
            return
        time.sleep(0.05)
    pytest.fail(f"{path} still readable through our fd after {timeout}s")


def _link(path):
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_a_claim_lost_to_another_host_is_skipped_silently(juicefs):
    """B opens pending/X; before B's flock, A claims, completes and unlinks X (through the
    other mount, another client); B's flock on its now-unlinked fd fails (ENOENT on
    JuiceFS): B's claim is a silent None, no fd leaks. The same for a recovery probe."""
    from queuectl import fsops
    from queuectl.spool import Spool
    spool_a, spool_b = Spool(str(juicefs.mounts["A"] / "q")), Spool(str(juicefs.mounts["B"] / "q"))
    spool_a.ensure_layout()
    spool_a.publish("x", b'{"id": "x", "command": "true"}')
    spool_a.publish("y", b'{"id": "y", "command": "true"}', state="processing")
    raced = []

    def hook(op, path):
        if op != "flock" or raced or not path.startswith(spool_b.root):
            return
        raced.append(path)                     # B has opened the file: A wins meanwhile
        if path.endswith("/pending/x.json"):
            held = spool_a.claim("pending", "x")
            spool_a.finish(held, b'{"id": "x", "command": "true", "attempts": 1}',
                           "completed")
        else:
            held = spool_a.probe_orphan("y")
            spool_a.finish(held, b'{"id": "y", "command": "true", "attempts": 1}', "failed")
        wait_until_deleted(path)

    before = open_fds()
    fsops.set_hook(hook)
    try:
        assert spool_b.claim("pending", "x") is None
        assert raced == [spool_b.path("pending", "x")]
        raced.clear()
        assert spool_b.probe_orphan("y") is None
        assert raced == [spool_b.path("processing", "y")]
    finally:
        fsops.set_hook(None)
    assert open_fds() == before
    assert spool_b.find("x") == ["completed"] and spool_b.find("y") == ["failed"]


# ---- kills and crashes ---------------------------------------------------------------------------

STORM_SETTINGS = {"worker_poll_interval": 0.5, "max_retries": 1000, "backoff_max": 0}


def host_executions(results):
    """[(host, Execution)] from both hosts' records."""
    return [(host, run) for host in ("hostA", "hostB")
            for run in read_results(results / host).executions]


def unexplained_duplicates(results, kills, supervisors):
    """Executions of an id that were followed by another execution although their worker
    (host, pid inside the host) was never killed: duplicates no kill explains. A job's shell
    whose worker was killed between forking it and its start reads its supervisor (the
    subreaper that adopted it) as $PPID: such a run is explained by a kill too."""
    runs = {}
    for host, run in host_executions(results):
        runs.setdefault(run.job_id, []).append((host, run))
    bad = []
    for job_id, found in runs.items():
        found.sort(key=lambda hr: hr[1].start_ns)
        for host, run in found[:-1]:
            if (host, run.worker) not in kills | supervisors:
                bad.append(f"{job_id}: run on {host} by worker {run.worker} was repeated")
    return bad


class HostKillStorm(Background):
    """Every `interval` seconds SIGKILL one random worker of either host."""

    def __init__(self, hosts, seed, interval=0.2):
        self.hosts = hosts
        self.rng = random.Random(seed)
        self.kills = set()           # (host name, pid inside the host)
        self.count = 0
        self._start_thread(interval)

    def _tick(self):
        victims = [(host, proc) for host in self.hosts for proc in host.workers()]
        if not victims:
            return
        host, proc = self.rng.choice(victims)
        try:
            inner = ns_pid(proc.pid)
            proc.kill()
        except (psutil.Error, OSError):
            return
        self.kills.add((host.name, inner))
        self.count += 1


def run_storm(hosts, tmp_path, wait_until, jobs):
    a, b = hosts
    results = tmp_path / "results"
    command = host_job_command(results)
    setup_hosts(hosts, **STORM_SETTINGS)
    a.start_workers(2)
    b.start_workers(2)
    supervisors = {(host.name, ns_pid(proc.pid)) for host in hosts
                   for proc in host.supervisors()}
    assert len(supervisors) == 2
    seed = seed_from_env()
    storm = HostKillStorm(hosts, seed).start()
    started = time.monotonic()
    try:
        half = jobs // 2
        ids_a = [f"a{n:05d}" for n in range(half)]
        ids_b = [f"b{n:05d}" for n in range(jobs - half)]
        for host, ids in ((a, ids_a), (b, ids_b)):
            out = host.run("enqueue", "-", input=job_lines(ids, command), timeout=600)
            assert out.stdout.split() == ids
        acknowledged = ids_a + ids_b
        wait_until(lambda: finished(a.spool, acknowledged), timeout=120 + jobs / 5,
                   interval=0.5, message=f"all {jobs} jobs done under the storm")
    finally:
        storm.stop()
    elapsed = time.monotonic() - started
    for host in hosts:
        host.run("worker", "stop", "--timeout", "2", timeout=90)
    a.run("recover")
    report = check_runs(results, a.spool, acknowledged)
    unexplained = unexplained_duplicates(results, storm.kills, supervisors)
    record(f"multihost_kill_storm_{jobs}", seed=seed, jobs=jobs, kills=storm.count,
           duplicates=report.duplicates, unexplained=len(unexplained),
           overlapping=len(report.overlapping), lost=len(report.lost), elapsed_s=elapsed)
    report.assert_clean()
    assert report.processing == [] and report.rejected == [], report.summary()
    assert unexplained == [], unexplained[:10]
    assert storm.count > 0


def test_kill_storm_across_hosts(hosts, tmp_path, wait_until):
    """SIGKILL a random worker of either host every 200 ms: nothing lost, never two runs of
    one id at once, every repeated run explained by a kill of the worker that ran it."""
    run_storm(hosts, tmp_path, wait_until, 80)


@pytest.mark.stress
def test_kill_storm_across_hosts_2000(hosts, tmp_path, wait_until):
    run_storm(hosts, tmp_path, wait_until, 2000)


def log_lines(host, needle):
    try:
        text = (host.data / "logs" / "queuectl.log").read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if needle in line]


def job_processes(host, job_id):
    """Live processes of the host running job_id (the job's shell and its children)."""
    found = []
    for proc in host.processes():
        if _has_env(proc, "QUEUECTL_JOB_ID", job_id):
            found.append(proc)
    return found


def started_runs(results, host, job_id):
    return [r for r in read_results(results / host).executions if r.job_id == job_id]


FIRST_ATTEMPT_HANGS = 'if [ "$QUEUECTL_ATTEMPT" = 1 ]; then sleep 600; fi'


def test_host_crash_b_recovers_after_the_session_expires(juicefs, hosts, tmp_path,
                                                         wait_until):
    """A's filesystem client (supervisor and daemon) and A's workers are SIGKILLed while A
    runs two jobs: B recovers both once A's session expires (locks freed), runs them, and
    nothing is lost. A's restarted workers back off on ENOTCONN instead of spinning."""
    a, b = hosts
    results = tmp_path / "results"
    command = host_job_command(results, FIRST_ATTEMPT_HANGS)
    setup_hosts(hosts, worker_poll_interval=0.5, backoff_max=0)
    a.start_workers(2)
    ids = ["crash1", "crash2"]
    a.run("enqueue", "-", input=job_lines(ids, command))
    wait_until(lambda: all(started_runs(results, "hostA", i) for i in ids), timeout=30,
               message="both jobs running on A")
    b.start_workers(2)
    crashed = time.monotonic()
    for proc in juicefs.client_processes("A"):
        proc.kill()
    for proc in a.workers():
        proc.kill()
    wait_until(lambda: all(started_runs(results, "hostB", i) for i in ids), timeout=60,
               interval=0.1, message="B running both jobs after A's session expired")
    recovered_s = time.monotonic() - crashed
    docs = wait_until(lambda: (lambda d: all(x["state"] == "completed" for x in d) and d)(
        [json.loads(b.run("show", i, "--json").stdout) for i in ids]), timeout=30,
        interval=0.5, message="both jobs completed on B")
    assert [d["job"]["attempts"] for d in docs] == [2, 2]     # A's died, B's completed
    seen = wait_until(lambda: (lambda ws: ws and all(w["stale"] for w in ws) and ws)(
        [w for w in b.status()["workers"] if w["host"] == "hostA"]), timeout=20,
        message="A's workers shown stale on B")
    assert all(w["state"] == "stale" for w in seen)
    # A's restarted workers meet a dead mount: one line each, no error loop.
    wait_until(lambda: log_lines(a, "unreachable"), timeout=20,
               message="A's workers noticing the dead mount")
    unreachable = log_lines(a, "unreachable")
    loop_errors = log_lines(a, "error in the work loop")
    record("multihost_host_crash", recovered_s=recovered_s,
           a_unreachable_lines=len(unreachable), a_loop_errors=len(loop_errors))
    assert loop_errors == []
    assert len(unreachable) <= 4, unreachable        # one per worker process, not per try
    assert read_results(results / "hostA").overlaps == []
    assert read_results(results / "hostB").overlaps == []


def test_client_restart_kills_the_job_before_another_host_recovers_it(juicefs, hosts,
                                                                      tmp_path, wait_until):
    """Only A's FUSE daemon is killed (juicefs restarts it): the locks A's worker holds die
    with the old session and B may take them once it expires. A's worker notices within a
    lock check and kills its job first, so the two attempts never overlap; the margin (A's
    job gone -> B's attempt starts) is recorded."""
    a, b = hosts
    results = tmp_path / "results"
    command = host_job_command(results, FIRST_ATTEMPT_HANGS)
    setup_hosts(hosts, worker_poll_interval=0.5, backoff_max=0)
    a.start_workers(1)
    a.run("enqueue", "-", input=job_lines(["long"], command))
    wait_until(lambda: started_runs(results, "hostA", "long"), timeout=30,
               message="the job running on A")
    b.start_workers(1)
    job = wait_until(lambda: job_processes(a, "long"), message="A's job process")
    juicefs.fuse_daemon("A").kill()
    killed_at = clock_ns()
    wait_until(lambda: not any(_alive(p) for p in job), timeout=20, interval=0.01,
               message="A's worker killing its job after losing the lock")
    job_gone = clock_ns()

    def second_attempt():       # whichever host recovers it first runs it again
        return [r for h in ("hostA", "hostB") for r in started_runs(results, h, "long")
                if r.attempt == 2]
    again = wait_until(second_attempt, timeout=60, interval=0.05,
                       message="attempt 2 after the old session expired")
    margin_s = (again[0].start_ns - job_gone) / 1e9
    noticed_s = (job_gone - killed_at) / 1e9
    record("multihost_client_restart", a_killed_job_after_s=noticed_s, margin_s=margin_s)
    assert log_lines(a, "lost the claim on long")
    assert again[0].start_ns > job_gone, "attempt 2 started while attempt 1 still ran"
    assert read_results(results / "hostA").overlaps == []
    assert read_results(results / "hostB").overlaps == []
    doc = wait_until(lambda: (lambda d: d["state"] == "completed" and d)(
        json.loads(b.run("show", "long", "--json").stdout)), timeout=30, interval=0.5,
        message="the job completed")
    assert doc["job"]["attempts"] == 2


@pytest.mark.stress
def test_workers_exit_when_the_spool_stays_unreachable(juicefs, hosts, wait_until):
    """A's mount dies for good: its worker logs the dead spool once, backs off, and exits
    (code 75) after SPOOL_DOWN_EXIT_SECONDS; the supervisor starts a new one. (Over a
    minute: stress only.)"""
    from queuectl.worker import EXIT_SPOOL_DOWN
    from queuectl.worker_outage import SPOOL_DOWN_EXIT_SECONDS
    a, _ = hosts
    setup_hosts([a], worker_poll_interval=0.5)
    a.start_workers(1)
    for proc in juicefs.client_processes("A"):
        proc.kill()
    wait_until(lambda: log_lines(a, f"exit code {EXIT_SPOOL_DOWN}"),
               timeout=SPOOL_DOWN_EXIT_SECONDS + 30, interval=0.5,
               message="A's worker exiting on a spool that stays unreachable")
    assert len(log_lines(a, "retrying with backoff")) <= 2      # once per worker process
    assert log_lines(a, "error in the work loop") == []
