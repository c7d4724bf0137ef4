"""Crash at every step (issue 5, test 2).

For every transition (crashkit.TRANSITIONS: enqueue of one job and of a batch, ingest of a
drop-in with a bad one rejected, a worker rejecting a bad drop and a duplicate id, claim,
unclaim, complete, fail-and-retry, fail-to-dead, a worker draining three jobs, recovery of an
orphan / a leftover / an unreadable file, DLQ retry, graceful requeue, cancel, retry now,
reindex) we first count its spool operations (fsops' QUEUECTL_FAULT_LOG), then for every k
run it again in a fresh copy of the same starting home
with QUEUECTL_FAULT=exit@k, so the process dies just before its k-th operation. Then, as an
operator would, `queuectl recover`, `queuectl status` (which ingests) and `queuectl fsck`,
and the check (crashkit.check_spool): processing/ empty, every job in exactly one state,
every job that existed before still there, parseable and in a state the transition allows,
every acknowledged one in the acknowledged state, bad drops in rejected/ byte for byte, the
index equal to the spool, fsck clean (exit 0): no manual repair.

The drivers run in parallel child processes; recovery and checks run here, in order."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

import crashkit
from queuectl.cli import main

TOTALS = {"crash_points": 0, "cases": 0, "seconds": 0.0}


def recover_and_check(home_dir, transition, acked, label):
    runner = CliRunner(env={name: None for name in crashkit.FOREIGN_ENV})
    problems = []
    for args in (("recover",), ("status",)):
        result = runner.invoke(main, ["--home", home_dir, *args], catch_exceptions=True)
        if result.exit_code != 0:
            problems.append(f"queuectl {args[0]} exited {result.exit_code}: "
                            f"{result.output[-500:]} {result.exception!r}")
    problems += crashkit.check_spool(home_dir, transition, acked)
    result = runner.invoke(main, ["--home", home_dir, "fsck"], catch_exceptions=True)
    if result.exit_code != 0:
        problems.append(f"fsck exited {result.exit_code}: {result.output[-800:]}")
    return [f"{label}: {p}" for p in problems]


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_crash_at_every_step(name, tmp_path):
    started = time.monotonic()
    transition = crashkit.TRANSITIONS[name]
    template = crashkit.make_template(str(tmp_path / "template"), name)

    # The uncrashed run: how many operations, and what it acknowledges.
    baseline = crashkit.clone(template, str(tmp_path / "k0"))
    log = str(tmp_path / "ops.log")
    code, acked = crashkit.run_driver(baseline, name, QUEUECTL_FAULT_LOG=log)
    with open(log) as f:
        ops = [line.split(" ", 1)[0] for line in f]
    assert code == 0 and ops, f"{name}: baseline exited {code} after {len(ops)} operations"
    problems = recover_and_check(baseline, transition, acked, f"{name} uncrashed")

    def crash_at(k):
        home_dir = crashkit.clone(template, str(tmp_path / f"k{k}"))
        return (k, home_dir) + crashkit.run_driver(home_dir, name, QUEUECTL_FAULT=f"exit@{k}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, home_dir, code, acked in pool.map(crash_at, range(1, len(ops) + 1)):
            label = f"{name} exit@{k} (before {ops[k - 1]})"
            assert code == 137, f"{label}: the driver did not die (exit {code})"
            problems += recover_and_check(home_dir, transition, acked, label)

    elapsed = time.monotonic() - started
    TOTALS["crash_points"] += len(ops)
    TOTALS["cases"] += len(ops) + 1
    TOTALS["seconds"] += elapsed
    print(f"\n{name}: {len(ops)} crash points ({' '.join(ops)}) in {elapsed:.2f}s; "
          f"so far {TOTALS['crash_points']} crash points, {TOTALS['seconds']:.1f}s")
    assert not problems, "\n".join(problems)


def test_checker_bites(tmp_path):
    """The check above finds each kind of damage it is meant to find."""
    transition = crashkit.TRANSITIONS["complete"]
    template = crashkit.make_template(str(tmp_path / "template"), "complete")
    spool = os.path.join(template, "spool")
    job = os.path.join(spool, "pending", "j1.json")
    with open(job, "rb") as f:
        data = f.read()

    def damaged(label, damage, acked=None):
        home_dir = crashkit.clone(template, str(tmp_path / label))
        damage(os.path.join(home_dir, "spool"))
        return recover_and_check(home_dir, transition, acked or {}, label)

    def write(path, content):
        with open(path, "wb") as f:
            f.write(content)

    assert damaged("clean", lambda s: None) == []
    assert any("lost" in p for p in damaged("lost", lambda s: os.unlink(f"{s}/pending/j1.json")))
    assert any("2 states" in p or "fsck" in p for p in damaged(
        "two", lambda s: write(f"{s}/completed/j1.json", data)))
    assert any("unparseable" in p or "lost" in p for p in damaged(
        "torn", lambda s: write(f"{s}/pending/j1.json", b"")))
    assert any("acknowledged" in p for p in damaged("unacked", lambda s: None,
                                                     {"j1": "completed"}))
    assert any("stray" in p for p in damaged(
        "stray", lambda s: write(f"{s}/failed/notes.txt", b"x")))
