"""Power loss model (issue 5, test 3; issue 13), ALICE-style.

Each transition of crashkit.TRANSITIONS runs once in a child process with a recorder on
fsops that writes every spool operation (and `failed` after one that returned an error)
and the ACKs (publish, a finish, a rejection returned) as JSON lines. powermodel replays the
trace on an abstract file system and enumerates every state a power cut could leave: every
cut, every subset of the directory operations not yet made durable by a directory fsync,
every surviving length of unsynced file data (the exact rules, and why tmp/ is left out, are
in powermodel's docstring). Before any of that, the replay must reproduce the real run: no
operation skipped, and the model's final spool equal to the real one byte for byte.

Each distinct state is materialised as a real home twice, with the index from before the
transition (stale) and with the one the run left (ahead of a spool that lost operations),
recovered as `queuectl recover` then `status` would (recover_all, ingest), and checked with
crashkit.check_spool plus fsck: a job that existed before or whose publish/finish was
acknowledged before the cut is there exactly once, parseable, in the acknowledged state; an
acknowledged rejection is in rejected/ with its reason; no job in two states; processing/
empty; nothing unparseable outside rejected/; index equal to the spool; fsck clean.

Modes, all exhaustive: journal (a rename is atomic and durable once either directory is
fsynced: ext4, XFS), strict (each half of a rename durable only once its own directory is
fsynced, the halves lost independently), and the link + unlink fallback for moves (forced by
QUEUECTL_NO_RENAMEAT2=1), journal mode.

Negative controls show the model bites: traces with one operation removed or moved (the
fsync of the tmp file before publishing; the directory fsync before the unlink in
finishing; settle_claim's fsync of the claim's origin; the fsync of rejected/; the unlink
of processing/ moved before the finishing move) must give violations."""

import base64
import errno
import json
import os
import pathlib
import shutil
import time

import pytest

import crashkit
import powermodel

TRACED_DIRS = ("tmp", *crashkit.JOB_STATES, "rejected", "keys")
TOTALS = {"states": 0, "checks": 0, "enumerated": 0, "seconds": 0.0}


@pytest.fixture
def scratch(tmp_path):
    """Scratch space for the homes: tmpfs where there is one (crashkit.scratch_root)."""
    root = crashkit.scratch_root(str(tmp_path))
    yield pathlib.Path(root)
    shutil.rmtree(root, ignore_errors=True)


# ---- the trace -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The transitions' child processes, forked by one crashkit.py --serve process."""
    server = crashkit.DriverServer(str(tmp_path_factory.mktemp("driver") / "stderr"))
    yield server.run
    server.close()


def record(template, scratch, name, driver, **env):
    """Run transition `name` once on a copy of template; returns (ops, acks) where acks
    are (position, id, state): the ACK came after ops[:position]. An operation that
    failed carries its errno in op["failed"]."""
    home_dir = crashkit.clone(template, scratch)
    path = scratch + ".trace"
    code, acked = driver(home_dir, name, CRASHKIT_RECORD=path, **env)
    assert code == 0, f"{name}: recording run exited {code}"
    ops, acks = [], []
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            if event["op"] == "ack":
                acks.append((len(ops), event["id"], event["state"]))
            elif event["op"] == "failed":
                assert ops and ops[-1]["op"] == event["of"], (event, ops[-1:])
                ops[-1]["failed"] = event["errno"]
            else:
                if "data" in event:
                    event["data"] = base64.b64decode(event["data"])
                ops.append(event)
    return ops, acks


def snapshot(spool_dir):
    """The starting spool as the model sees it: {path: ino}, {ino: bytes}, {ino: mtime}."""
    entries, data, mtimes = {}, {}, {}
    for state in TRACED_DIRS:
        if not os.path.isdir(os.path.join(spool_dir, state)):
            continue          # keys/ exists once a unique key was taken
        for name in sorted(os.listdir(os.path.join(spool_dir, state))):
            path = f"{state}/{name}"
            full = os.path.join(spool_dir, path)
            ino = len(data)
            entries[path] = ino
            with open(full, "rb") as f:
                data[ino] = f.read()
            mtimes[ino] = os.lstat(full).st_mtime
    return entries, data, mtimes


def ack_problems(initial, ops, acks):
    """Each ACK must come after the operations that made it true: replayed up to the ACK's
    position, the model has the job in exactly the acknowledged state (a rejection: the
    file in rejected/)."""
    problems = []
    for pos, job_id, state in acks:
        entries = powermodel.replay(initial, ops[:pos]).entries
        if state == "rejected":
            if f"rejected/{job_id}" not in entries:
                problems.append(f"ACK {job_id} rejected after op {pos}, not in rejected/ yet")
            continue
        where = [s for s in crashkit.JOB_STATES if f"{s}/{job_id}.json" in entries]
        if where != [state]:
            problems.append(f"ACK {job_id} {state} after op {pos}, but the model has it in "
                            f"{where}")
    return problems


def replay_problems(initial, ops, recording):
    """How replaying the whole trace differs from the real run: skipped or disagreeing
    operations, and any difference between the model's final spool and the real one."""
    done = powermodel.replay(initial, ops)
    model = powermodel.canonical(done.entries, done.content)
    entries, contents = powermodel.disk_state(os.path.join(recording, "spool"), TRACED_DIRS)
    real = powermodel.canonical(entries, contents)
    problems = list(done.disagreements)
    if model != real:
        only_model = sorted(set(model) - set(real))
        only_real = sorted(set(real) - set(model))
        problems.append(f"final spool differs: model only {only_model[:5]}, "
                        f"real only {only_real[:5]}")
    return problems


# ---- materialise, recover, check -----------------------------------------------------------------

def materialise(home_dir, data_dir, entries, contents, mtimes):
    shutil.copytree(data_dir, os.path.join(home_dir, "data"))
    spool_dir = os.path.join(home_dir, "spool")
    for name in crashkit.SPOOL_DIRS:
        os.makedirs(os.path.join(spool_dir, name), mode=0o700 if name in ("rejected", "output")
                    else 0o755)
    first = {}
    for path in sorted(entries):
        ino, full = entries[path], os.path.join(spool_dir, path)
        if ino in first:
            os.link(first[ino], full)
            continue
        with open(full, "wb") as f:
            f.write(contents[ino])
        os.chmod(full, 0o644)
        if ino in mtimes:
            os.utime(full, (mtimes[ino], mtimes[ino]))
        first[ino] = full
    return home_dir


def recover_and_check(home_dir, transition, acked, known_before, reasons):
    from queuectl.fsck import fsck
    from queuectl.home import Home
    from queuectl.ingest import ingest
    from queuectl.recovery import recover_all
    home = Home(home_dir)
    try:
        recover_all(home)       # queuectl recover
        ingest(home)            # what queuectl status does first
    finally:
        home.close()
    problems = crashkit.check_spool(home_dir, transition, acked, known_before,
                                    reasons=reasons)
    home = Home(home_dir)
    try:
        problems += [f"fsck: {p.kind} {p.where}: {p.detail}" for p in fsck(home)]
    finally:
        home.close()
    return problems


class Outcome:
    """What check_trace found: distinct states, checks, violations (and, in strict mode,
    which of them need a torn rename)."""

    def __init__(self):
        self.states = self.checks = self.enumerated = 0
        self.violations, self.torn = [], []

    def __repr__(self):
        return (f"{self.enumerated} enumerated, {self.states} distinct states, "
                f"{self.checks} checks, {len(self.violations)} violations "
                f"({len(self.torn)} of them after a torn rename)")


def check_trace(name, homes, ops, acks, work, strict=False, every_prefix=True):
    """Enumerate the states, materialise each with each index (the one from before the
    transition, stale, and the one the run left, ahead of a spool that lost operations),
    recover and check."""
    transition = crashkit.TRANSITIONS[name]
    template, recording = homes
    initial = snapshot(os.path.join(template, "spool"))
    known_before = {p.split("/")[1][:-5] for p in initial[0]
                    if p.split("/")[0] in crashkit.JOB_STATES and p.endswith(".json")
                    and p.split("/")[1] not in transition.bad}
    reasons = crashkit.rejection_reasons(recording)
    indexes = {"index from before": os.path.join(template, "data"),
               "index the run left": os.path.join(recording, "data")}
    outcome, verdicts, untorn = Outcome(), {}, set()
    for n, entries, contents, lost, units in powermodel.crash_states(
            initial, ops, strict, acks_at={pos for pos, _, _ in acks},
            every_prefix=every_prefix):
        outcome.enumerated += 1
        acked = {job_id: state for pos, job_id, state in acks if pos <= n}
        key = (powermodel.canonical(entries, contents), tuple(sorted(acked.items())))
        if not (strict and powermodel.torn(lost, units)):
            untorn.add(key)                 # reachable without tearing a rename
        if key in verdicts:
            continue
        outcome.states += 1
        verdicts[key] = None
        for label, data_dir in indexes.items():
            outcome.checks += 1
            home_dir = materialise(os.path.join(work, f"s{outcome.checks}"), data_dir,
                                   entries, contents, initial[2])
            problems = recover_and_check(home_dir, transition, acked, known_before, reasons)
            shutil.rmtree(home_dir)
            if problems and verdicts[key] is None:
                ops_text = " ".join(o["op"] for o in ops[:n])
                files = ", ".join(f"{p}={contents[i][:24]!r}"
                                  for p, i in sorted(entries.items()))
                lost_text = ", ".join(f"{u.op}@{u.index}" for u in lost)
                verdicts[key] = (f"{name} cut before op {n} [{ops_text}], lost "
                                 f"[{lost_text}], {label}, state {{{files}}}: "
                                 f"{'; '.join(problems)}")
    for key, verdict in verdicts.items():
        if verdict:
            (outcome.violations if key in untorn else outcome.torn).append(verdict)
    TOTALS["enumerated"] += outcome.enumerated
    return outcome


def traced(scratch, name, driver, **env):
    scratch = pathlib.Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    """(template home, recording home), ops, acks and a scratch directory; asserts that
    replaying the trace reproduces the recording run exactly (no operation skipped)."""
    template = crashkit.make_template(str(scratch / "template"), name)
    recording = str(scratch / "recording")
    ops, acks = record(template, recording, name, driver, **env)
    initial = snapshot(os.path.join(template, "spool"))
    problems = replay_problems(initial, ops, recording)
    assert not problems, f"{name}: the model does not reproduce the real run: {problems}"
    if "QUEUECTL_TEST_PLANT" not in env:
        problems = ack_problems(initial, ops, acks)
        assert not problems, f"{name}: an ACK came before what it promises: {problems}"
    work = scratch / "states"
    work.mkdir()
    return (template, recording), ops, acks, str(work)


def report(name, mode, ops, outcome, started):
    elapsed = time.monotonic() - started
    TOTALS["states"] += outcome.states
    TOTALS["checks"] += outcome.checks
    TOTALS["seconds"] += elapsed
    print(f"\n{name} ({mode}): {len(ops)} operations, {outcome!r}, {elapsed:.2f}s; so far "
          f"{TOTALS['states']} states, {TOTALS['checks']} checks, {TOTALS['seconds']:.1f}s")


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states(name, scratch, driver):
    """Journal mode, renameat2: every state, 0 violations."""
    started = time.monotonic()
    homes, ops, acks, work = traced(scratch, name, driver)
    outcome = check_trace(name, homes, ops, acks, work)
    report(name, "journal", ops, outcome, started)
    assert not outcome.violations, "\n".join(outcome.violations[:20])


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states_link_fallback(name, scratch, driver):
    """The same with every move done as link + unlink (QUEUECTL_NO_RENAMEAT2=1): two
    operations in the trace, the state between them enumerated like any other."""
    started = time.monotonic()
    homes, ops, acks, work = traced(scratch, name, driver, QUEUECTL_NO_RENAMEAT2=1)
    assert not any(op["op"] == "rename" for op in ops), "the fallback was not taken"
    outcome = check_trace(name, homes, ops, acks, work)
    report(name, "journal, link+unlink", ops, outcome, started)
    assert not outcome.violations, "\n".join(outcome.violations[:20])


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states_strict(name, scratch, driver):
    """Strict mode: each half of a rename durable only once its own directory is fsynced.
    0 violations except after a torn rename (a rename whose add half was lost while its
    remove half was kept), which loses the file on any protocol that moves by rename
    without an fsync before the move's source directory reaches the disk; guarantees.md
    says which filesystems never tear a rename."""
    started = time.monotonic()
    homes, ops, acks, work = traced(scratch, name, driver)
    outcome = check_trace(name, homes, ops, acks, work, strict=True)
    report(name, "strict", ops, outcome, started)
    assert not outcome.violations, "\n".join(outcome.violations[:20])


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states_strict_link_fallback(name, scratch, driver):
    """Strict mode with moves as link + fsync + unlink: no rename to tear, so 0 violations
    of any kind. This is the protocol for a filesystem that may tear a rename."""
    started = time.monotonic()
    homes, ops, acks, work = traced(scratch, name, driver, QUEUECTL_NO_RENAMEAT2=1)
    outcome = check_trace(name, homes, ops, acks, work, strict=True)
    report(name, "strict, link+unlink", ops, outcome, started)
    assert not outcome.violations and not outcome.torn, \
        "\n".join((outcome.violations + outcome.torn)[:20])


# ---- the model checks itself -------------------------------------------------------------------

def test_replay_reports_a_skipped_operation_and_a_different_final_spool(scratch, driver):
    """replay_problems bites: a trace with the claim's rename removed makes the later
    moves of processing/j1 impossible in the model (skipped), and the final spools differ."""
    template = crashkit.make_template(str(scratch / "template"), "complete")
    recording = str(scratch / "recording")
    ops, _ = record(template, recording, "complete", driver)
    initial = snapshot(os.path.join(template, "spool"))
    assert replay_problems(initial, ops, recording) == []
    claim = next(i for i, op in enumerate(ops) if op["op"] == "rename")
    problems = replay_problems(initial, ops[:claim] + ops[claim + 1:], recording)
    assert any("impossible in the model: skipped" in p for p in problems), problems
    assert any(p.startswith("final spool differs") for p in problems), problems
    _, acks = record(template, str(scratch / "again"), "complete", driver)
    assert ack_problems(initial, ops, acks) == []
    early = [(pos - 3, job_id, state) for pos, job_id, state in acks]   # before the move
    assert ack_problems(initial, ops, early), "an early ACK was not noticed"
    failed = [dict(op) for op in ops]
    failed[claim]["failed"] = errno.EEXIST          # the claim "failed" yet it happened
    assert any("possible in the model" in p for p in replay_problems(initial, failed,
                                                                    recording))


def test_tmp_files_do_not_change_what_recovery_leaves(scratch, driver):
    """Why tmp/ halves are left out of the enumeration: at every cut of a batch enqueue and
    of a worker draining three jobs, the state with tmp/ files exactly as the run left
    them recovers to the same spool (the same names in each state), with the same verdict,
    as the state with tmp/ empty."""
    for name in ("enqueue-batch", "worker-drain"):
        homes, ops, acks, work = traced(scratch / name, name, driver)
        template, recording = homes
        initial = snapshot(os.path.join(template, "spool"))
        transition = crashkit.TRANSITIONS[name]
        compared = 0
        for n in range(len(ops) + 1):
            done = powermodel.replay(initial, ops[:n])
            acked = {job_id: state for pos, job_id, state in acks if pos <= n}
            outcomes = []
            for hidden in (False, True):
                entries = {p: i for p, i in done.entries.items()
                           if hidden or powermodel.parent(p) != "tmp"}
                home_dir = materialise(os.path.join(work, f"n{n}-{hidden}"),
                                       os.path.join(recording, "data"), entries,
                                       done.content, initial[2])
                problems = recover_and_check(home_dir, transition, acked, set(), None)
                files = crashkit.scan(os.path.join(home_dir, "spool"))
                # names per state (what recovery rewrites differs only in its timestamps)
                outcomes.append(({s: sorted(f) for s, f in files.items()}, problems))
                shutil.rmtree(home_dir)
            assert outcomes[0] == outcomes[1], f"{name} cut before op {n}"
            compared += 1
        print(f"\n{name}: {compared} cuts recovered alike with and without tmp/ files")


# ---- negative controls: the model bites -------------------------------------------------------

def without(ops, acks, predicate, what):
    """The trace minus the single operation that matches predicate(index, op), with the
    ACK positions after it moved down by one."""
    hits = [i for i, op in enumerate(ops) if predicate(i, op)]
    assert len(hits) == 1, f"expected one {what} in {[o['op'] for o in ops]}, found {hits}"
    gone = hits[0]
    return (ops[:gone] + ops[gone + 1:],
            [(pos - (pos > gone), job_id, state) for pos, job_id, state in acks])


def broken_run(scratch, driver, name, predicate, what, strict=False):
    homes, ops, acks, work = traced(scratch, name, driver)
    broken, shifted = without(ops, acks, predicate, what)
    outcome = check_trace(name, homes, broken, shifted, work, strict=strict)
    print(f"\nnegative control, {name} without {what}: {outcome!r}, e.g.\n  "
          f"{outcome.violations[:1]}")
    return outcome.violations


def test_negative_control_no_fsync_before_publish(scratch, driver):
    """(a) Publishing a tmp file that was never fsynced: the link into pending/ can survive
    a power cut while the data does not, so the job is visible but empty or torn."""
    violations = broken_run(scratch, driver, "enqueue", lambda i, op: op["op"] == "fsync" and
                            op["path"].startswith("tmp/"), "the fsync of the tmp file")
    assert violations
    assert all("unparseable pending/j1.json" in v for v in violations)


def test_negative_control_no_dir_fsync_before_unlink(scratch, driver):
    """(b) Finishing without fsyncing the destination directory before unlinking
    processing/<id>: the unlink can survive while the move into completed/ is lost."""
    violations = broken_run(scratch, driver, "complete", lambda i, op: op["op"] == "fsyncdir"
                            and op["path"] == "completed", "the fsync of completed/")
    assert any("acknowledged job j1 lost" in v for v in violations), violations


def test_negative_control_no_settle_claim_fsync(scratch, driver):
    """(c) Finishing without settle_claim's fsync of the claim's origin (pending/): the
    claim's rename can be lost while the move into completed/ survives, and the job is in
    pending/ and completed/ at once (it would run again)."""
    violations = broken_run(scratch, driver, "complete", lambda i, op: op["op"] == "fsyncdir"
                            and op["path"] == "pending", "settle_claim's fsync of pending/")
    assert any("2 states" in v or "is pending, but completed was acknowledged" in v
               for v in violations), violations


def test_negative_control_no_fsync_of_rejected(scratch, driver):
    """(d) Rejecting without the fsync of rejected/: the reason file (or the move itself)
    can be lost after the rejection was acknowledged, so the file is back in processing/
    and rejected again for another reason, or sits in rejected/ with no reason."""
    violations = broken_run(scratch, driver, "worker-duplicate",
                            lambda i, op: op["op"] == "fsyncdir" and op["path"] == "rejected",
                            "the fsync of rejected/")
    assert any("acknowledged rejection j1.json" in v for v in violations), violations


def test_negative_control_unlink_moved_before_the_finishing_move(scratch, driver):
    """(e) A planted reordering in the trace: the unlink of processing/j1 moved before the
    move into completed/. A cut between them loses the job."""
    homes, ops, acks, work = traced(scratch, "complete", driver)
    unlink = max(i for i, op in enumerate(ops) if op["op"] == "unlink")
    move = max(i for i, op in enumerate(ops) if op["op"] == "rename")
    reordered = ops[:move] + [ops[unlink]] + ops[move:unlink] + ops[unlink + 1:]
    outcome = check_trace("complete", homes, reordered, acks, work)
    print(f"\nplanted reordering (trace): {outcome!r}")
    assert any("j1 lost" in v for v in outcome.violations), outcome.violations


@pytest.mark.parametrize("plant, name, expected", [
    ("unlink-before-move", "complete", "j1 lost"),
    ("no-claim-flock", "recover-during-run", "j1 in 2 states")])
def test_the_model_catches_a_planted_bug(plant, name, expected, scratch, driver):
    """(f) A driver with a bug planted in the code (plants/plantkit), recorded and
    enumerated like the real thing: finishing that unlinks before its move (a cut in
    between loses the job), and a claim without its flock (a recovery beside the run takes
    the job too: a double claim, in two states even without a power cut)."""
    homes, ops, acks, work = traced(scratch, name, driver, QUEUECTL_TEST_PLANT=plant)
    outcome = check_trace(name, homes, ops, acks, work)
    print(f"\nplanted {plant} in {name}: {outcome!r}")
    assert any(expected in v for v in outcome.violations), outcome.violations


def test_negative_control_no_syncfs_before_publishing_a_batch(scratch, driver):
    """(f) A batch published without its syncfs (issue 9: one syncfs stands in for an fsync
    per file): the links into pending/ can survive a power cut while the data does not."""
    homes, ops, acks, work = traced(scratch, "enqueue-batch-syncfs", driver)
    assert not [op for op in ops if op["op"] == "fsync"], "the batch fsynced its files"
    broken, shifted = without(ops, acks, lambda i, op: op["op"] == "syncfs", "syncfs")
    # Three unsynced files: each one's data is lost whole or kept whole (every prefix of
    # each would multiply into millions of states; losing it whole is what bites).
    outcome = check_trace("enqueue-batch-syncfs", homes, broken, shifted, work,
                          every_prefix=False)
    print(f"\nnegative control (f), no syncfs before publishing a batch: {outcome!r}, e.g."
          f"\n  {outcome.violations[:1]}")
    assert any("unparseable pending/s" in v for v in outcome.violations), outcome.violations


@pytest.mark.stress
@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states_strict_many_runs(name, scratch, driver):
    """The strict enumeration over 5 recordings of each transition (tmp names, timestamps
    and the order of directory listings differ from run to run)."""
    for run in range(5):
        homes, ops, acks, work = traced(scratch / f"r{run}", name, driver)
        outcome = check_trace(name, homes, ops, acks, work, strict=True)
        assert not outcome.violations, "\n".join(outcome.violations[:20])
