"""Several hosts on one spool, on a real distributed filesystem: two JuiceFS mounts of one
volume are two hosts' views (juicefskit.py); each host runs its workers in its own PID and
UTS namespaces (pids collide, hostnames differ) with its own local data/.

Every job runs torture.py's recording command (its start/end lines go to a per-host results
directory; an execution that finds its id's local lock held records an overlap), so the
checker can count lost jobs, duplicate and overlapping executions across hosts."""

import os
import time
from pathlib import Path

import pytest

from juicefskit import hosts, juicefs  # noqa: F401
from torture import (Checker, job_command, job_lines, read_results, record, scan_spool,
                     finished)

JOB_STATES = ("pending", "processing", "failed", "completed", "dead")


def host_job_command(results):
    """torture's job command, recording into results/<host>/ (pids collide across hosts)."""
    for name in ("hostA", "hostB"):
        (Path(results) / name).mkdir(parents=True, exist_ok=True)
    (Path(results) / "locks").mkdir(parents=True, exist_ok=True)
    command = job_command(results)
    assert 'f="$R/w$PPID.log"' in command
    return command.replace('f="$R/w$PPID.log"', 'f="$R/$QTEST_HOST/w$PPID.log"')


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


def counts(status):
    return {s: status["counts"][s] for s in JOB_STATES}


def setup_hosts(hosts, **settings):
    for host in hosts:
        for key, value in settings.items():
            host.run("config", "set", key, value)


SMOKE_JOBS = 200         # default suite: 50 per way in (measured ~16 jobs/s on a loaded box)
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
    out_a = a.run("enqueue", "-", input=job_lines(ids["enqA"], command)).stdout.split()
    out_b = b.run("enqueue", "-", input=job_lines(ids["enqB"], command)).stdout.split()
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
    report = check_runs(results, a.spool, acknowledged)
    record("multihost_2x2", jobs=jobs, elapsed_s=elapsed, jobs_per_s=jobs / elapsed,
           duplicates=report.duplicates)
    report.assert_clean()
    assert report.duplicates == 0, report.summary()


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
