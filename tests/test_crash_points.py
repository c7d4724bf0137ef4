"""Crash at every step (issue 5, test 2).

For every transition (crashkit.TRANSITIONS: enqueue of one job and of a batch, ingest of a
drop-in with a bad one rejected, a worker rejecting a bad drop and a duplicate id, claim,
unclaim, a recovery running beside a live claim, complete, fail-and-retry, fail-to-dead, a
worker draining three jobs, recovery of an orphan / a leftover / an unreadable file, DLQ
retry, graceful requeue, cancel, retry now, reindex) we first count its spool operations (fsops' QUEUECTL_FAULT_LOG), then for every k
run it again in a fresh copy of the same starting home
with QUEUECTL_FAULT=exit@k, so the process dies just before its k-th operation. Then, as an
operator would, `queuectl recover`, `queuectl status` (which ingests) and `queuectl fsck`,
and the check (crashkit.check_spool): processing/ empty, every job in exactly one state,
every job that existed before still there, parseable and in a state the transition allows,
every acknowledged one in the acknowledged state, bad drops in rejected/ byte for byte, an
acknowledged rejection still there with the reason the uncrashed run gave it, the index
equal to the spool, fsck clean (exit 0): no manual repair.

Every transition runs twice: with renameat2, and with moves forced to link + fsync + unlink
(QUEUECTL_NO_RENAMEAT2=1), whose steps are crash points of their own: 205 + 269 crash
points. Two planted bugs (tests/plants: a claim without its flock, an unlink before the
finishing move) must make the same checks report problems.

Each run is a child process forked by one `crashkit.py --serve` (so 500 runs do not pay
Python's start-up 500 times); recovery and checks run here, in order."""

import fcntl
import os
import pathlib
import shutil
import time

import pytest
from click.testing import CliRunner

import crashkit
from queuectl.cli import main

TOTALS = {"crash_points": 0, "cases": 0, "seconds": 0.0}


@pytest.fixture
def scratch(tmp_path):
    """Scratch space for the homes: tmpfs where there is one (crashkit.scratch_root)."""
    root = crashkit.scratch_root(str(tmp_path))
    yield pathlib.Path(root)
    shutil.rmtree(root, ignore_errors=True)


def recover_and_check(home_dir, transition, acked, label, reasons=None):
    runner = CliRunner(env={name: None for name in crashkit.FOREIGN_ENV})
    problems = []
    for args in (("recover",), ("status",)):
        result = runner.invoke(main, ["--home", home_dir, *args], catch_exceptions=True)
        if result.exit_code != 0:
            problems.append(f"queuectl {args[0]} exited {result.exit_code}: "
                            f"{result.output[-500:]} {result.exception!r}")
    problems += crashkit.check_spool(home_dir, transition, acked, reasons=reasons)
    result = runner.invoke(main, ["--home", home_dir, "fsck"], catch_exceptions=True)
    if result.exit_code != 0:
        problems.append(f"fsck exited {result.exit_code}: {result.output[-800:]}")
    return [f"{label}: {p}" for p in problems]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The transitions' child processes, forked by one crashkit.py --serve process."""
    server = crashkit.DriverServer(str(tmp_path_factory.mktemp("driver") / "stderr"))
    yield server.run
    server.close()


def crash_point_problems(name, scratch, driver, **env):
    """Run transition `name` uncrashed, then crashed before each of its spool operations
    in turn; recover and check each. Returns (operations, problems)."""
    transition = crashkit.TRANSITIONS[name]
    template = crashkit.make_template(str(scratch / "template"), name)

    # The uncrashed run: how many operations, what it acknowledges, the rejection reasons.
    baseline = crashkit.clone(template, str(scratch / "k0"))
    log = str(scratch / "ops.log")
    code, acked = driver(baseline, name, QUEUECTL_FAULT_LOG=log, **env)
    with open(log) as f:
        ops = [line.split(" ", 1)[0] for line in f]
    assert code == 0 and ops, f"{name}: baseline exited {code} after {len(ops)} operations"
    reasons = crashkit.rejection_reasons(baseline)
    problems = recover_and_check(baseline, transition, acked, f"{name} uncrashed", reasons)

    for k in range(1, len(ops) + 1):
        home_dir = crashkit.clone(template, str(scratch / f"k{k}"))
        code, acked = driver(home_dir, name, QUEUECTL_FAULT=f"exit@{k}", **env)
        label = f"{name} exit@{k} (before {ops[k - 1]})"
        assert code == 137, f"{label}: the driver did not die (exit {code})"
        problems += recover_and_check(home_dir, transition, acked, label, reasons)
    return ops, problems


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "link-unlink"])
@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_crash_at_every_step(name, fallback, scratch, driver):
    """With renameat2, and with moves forced to link + unlink (QUEUECTL_NO_RENAMEAT2=1),
    where the crash between the link and the unlink is a crash point of its own."""
    started = time.monotonic()
    env = {"QUEUECTL_NO_RENAMEAT2": 1} if fallback else {}
    ops, problems = crash_point_problems(name, scratch, driver, **env)
    if fallback:
        assert "rename" not in ops, f"{name}: the fallback was not taken: {ops}"
    elapsed = time.monotonic() - started
    TOTALS["crash_points"] += len(ops)
    TOTALS["cases"] += len(ops) + 1
    TOTALS["seconds"] += elapsed
    print(f"\n{name}{' (link+unlink)' if fallback else ''}: {len(ops)} crash points "
          f"({' '.join(ops)}) in {elapsed:.2f}s; so far {TOTALS['crash_points']} crash "
          f"points, {TOTALS['seconds']:.1f}s")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("plant, name, expected", [
    ("no-claim-flock", "recover-during-run", "j1 in 2 states"),
    ("unlink-before-move", "complete", "acknowledged job j1 lost")])
def test_crash_points_catch_a_planted_bug(plant, name, expected, scratch, driver):
    """The same runs on a driver with a bug planted (plants/plantkit): a claim without its
    flock (recovery, running beside the claim, takes the job too: a double claim), and
    finishing that unlinks processing/ before the move (a crash in between loses the job).
    The checks must find it."""
    ops, problems = crash_point_problems(name, scratch, driver, QUEUECTL_TEST_PLANT=plant)
    print(f"\nplanted {plant} in {name}: {len(problems)} problems, e.g. {problems[:2]}")
    assert any(expected in p for p in problems), "\n".join(problems)


def test_checker_bites(scratch):
    """The check above finds each kind of damage it is meant to find."""
    transition = crashkit.TRANSITIONS["complete"]
    template = crashkit.make_template(str(scratch / "template"), "complete")
    spool = os.path.join(template, "spool")
    job = os.path.join(spool, "pending", "j1.json")
    with open(job, "rb") as f:
        data = f.read()

    def damaged(label, damage, acked=None):
        home_dir = crashkit.clone(template, str(scratch / label))
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

    def held_in_processing(s):      # a claim someone still holds: recovery must leave it
        os.rename(f"{s}/pending/j1.json", f"{s}/processing/j1.json")
        fd = os.open(f"{s}/processing/j1.json", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    held = []
    try:
        assert any("processing/ not empty" in p for p in damaged("held", held_in_processing))
    finally:
        for fd in held:
            os.close(fd)
