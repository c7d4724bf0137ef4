"""Power loss model (issue 5, test 3), ALICE-style.

Each transition of crashkit.TRANSITIONS runs once in a child process with a recorder on
fsops (set_hook(..., info=True)) that writes every spool operation (open with its flags,
write with its data, fsync, fsyncdir, link, rename and replace with src and dst, unlink) and
the ACKs (publish or a finish returned) as JSON lines. From that trace and the starting
spool we build an abstract file system (directory entries -> inodes, inode -> bytes) and
enumerate the states a power cut could leave:
- every prefix of the operation sequence (the cut comes before operation n);
- within a prefix, any subset of the directory operations (create, link, rename, unlink) not
  yet made durable by a later fsync of a directory they touch may be lost, while later ones
  survive (a rename is one atomic operation, durable once either of its directories is
  fsynced). By default every subset when at most 6 are pending, else every single one and
  pair and every "all from the j-th on"; the stress run takes every subset;
- file data written but not yet fsynced may be lost (the file is empty, or in the stress
  run, also torn at several lengths).
Each distinct state is materialised as a real home twice, with the index from before the
transition (stale) and with the one the run left (ahead of a spool that lost operations),
recovered as `queuectl recover` then `status` would (recover_all, ingest), and checked with
crashkit.check_spool plus fsck: a job that existed before or whose publish/finish was
acknowledged before the cut is there exactly once, parseable, in the acknowledged state; no
job in two states; processing/ empty; nothing unparseable outside rejected/; index equal to
the spool; fsck clean. 0 violations.

Negative controls show the model bites: the same enumeration on traces with (a) the fsync
of the tmp file before publishing removed, (b) the directory fsync before the unlink in
finishing removed, must find violations."""

import base64
import itertools
import json
import os
import pathlib
import shutil
import time

import pytest

import crashkit


TRACED_DIRS = ("tmp", *crashkit.JOB_STATES, "rejected")
ALL_DIRS = "*"        # what a syncfs makes durable: every directory
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


def record(template, scratch, name, driver):
    """Run transition `name` once on a copy of template; returns (ops, acks) where acks
    are (position, id, state): the ACK came after ops[:position]."""
    home_dir = crashkit.clone(template, scratch)
    path = scratch + ".trace"
    code, acked = driver(home_dir, name, CRASHKIT_RECORD=path)
    assert code == 0, f"{name}: recording run exited {code}"
    ops, acks = [], []
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            if event["op"] == "ack":
                acks.append((len(ops), event["id"], event["state"]))
            else:
                if "data" in event:
                    event["data"] = base64.b64decode(event["data"])
                ops.append(event)
    assert [(i, s) for _, i, s in acks] == list(acked.items())
    return ops, acks


def snapshot(spool_dir):
    """The starting spool as the model sees it: {path: ino}, {ino: bytes}, {ino: mtime}."""
    entries, data, mtimes = {}, {}, {}
    for state in TRACED_DIRS:
        for name in sorted(os.listdir(os.path.join(spool_dir, state))):
            path = f"{state}/{name}"
            full = os.path.join(spool_dir, path)
            ino = len(data)
            entries[path] = ino
            with open(full, "rb") as f:
                data[ino] = f.read()
            mtimes[ino] = os.lstat(full).st_mtime
    return entries, data, mtimes


# ---- the model ---------------------------------------------------------------------------------

def _dir(path):
    return path.rsplit("/", 1)[0]


def replay(initial, ops):
    """Run ops on the model as the process saw them. Returns (dirops, fsyncdirs, content,
    synced): dirops are (index, kind, src, dst, ino, dirs); content and synced map each inode
    to its bytes as written and as last fsynced."""
    entries, data, _ = initial
    run = dict(entries)
    content, synced = dict(data), dict(data)
    dirops, fsyncdirs = [], []
    next_ino = len(data)
    for i, op in enumerate(ops):
        kind, path = op["op"], op["path"]
        if kind == "open" and op["flags"] & os.O_CREAT and path not in run:
            ino, next_ino = next_ino, next_ino + 1
            run[path] = ino
            content[ino] = synced[ino] = b""
            dirops.append((i, "create", None, path, ino, frozenset([_dir(path)])))
        elif kind == "write" and path in run:
            content[run[path]] += op["data"]
        elif kind == "fsync" and path in run:
            synced[run[path]] = content[run[path]]
        elif kind == "fsyncdir":
            fsyncdirs.append((i, path))
        elif kind == "syncfs":
            # syncfs(2): every file's data and every directory of the filesystem durable.
            for ino in content:
                synced[ino] = content[ino]
            fsyncdirs.append((i, ALL_DIRS))
        elif kind == "link" and op["src"] in run and path not in run:
            run[path] = run[op["src"]]
            dirops.append((i, "link", op["src"], path, run[path], frozenset([_dir(path)])))
        elif kind in ("rename", "replace") and op["src"] in run and \
                (kind == "replace" or path not in run):
            run[path] = run.pop(op["src"])
            dirops.append((i, "rename", op["src"], path, run[path],
                           frozenset([_dir(op["src"]), _dir(path)])))
        elif kind == "unlink" and path in run:
            dirops.append((i, "unlink", None, path, run.pop(path), frozenset([_dir(path)])))
    return dirops, fsyncdirs, content, synced


def drop_sets(volatile, full):
    """Which un-durable directory operations a power cut loses. Full: every subset. Else
    every subset of up to 2 operations, and every "all from the j-th on" suffix."""
    n = len(volatile)
    if full or n <= 6:
        for size in range(n + 1):
            yield from itertools.combinations(volatile, size)
        return
    seen = set()
    for size in (0, 1, 2):
        for combo in itertools.combinations(volatile, size):
            seen.add(combo)
            yield combo
    for j in range(n):
        if tuple(volatile[j:]) not in seen:
            yield tuple(volatile[j:])


def data_choices(content, synced, full):
    """For each inode with unsynced data, what survives: what was fsynced (empty for a
    fresh file), or all of it; in the full run also every prefix in between."""
    options = {}
    for ino, now in content.items():
        if now == synced[ino]:
            continue
        if full:
            cuts = sorted({len(synced[ino]), len(now)} | set(range(len(synced[ino]), len(now),
                                                                 max(1, len(now) // 8))))
            options[ino] = [now[:cut] for cut in cuts]
        else:
            options[ino] = [synced[ino], now]
    inos = sorted(options)
    for combo in itertools.product(*(options[i] for i in inos)):
        yield dict(zip(inos, combo))


def crash_states(initial, ops, full=False):
    """Yield (prefix length, entries, contents) for every state a power cut may leave."""
    entries0 = initial[0]
    for n in range(len(ops) + 1):
        dirops, fsyncdirs, content, synced = replay(initial, ops[:n])
        durable = lambda d: any(j > d[0] and (where in d[5] or where == ALL_DIRS)  # noqa: E731
                                for j, where in fsyncdirs)
        volatile = [d for d in dirops if not durable(d)]
        for dropped in drop_sets(volatile, full):
            lost = {d[0] for d in dropped}
            entries = dict(entries0)
            for index, kind, src, dst, ino, _ in dirops:
                if index in lost:
                    continue
                if kind in ("create", "link"):
                    entries[dst] = ino
                elif kind == "rename":
                    if entries.get(src) == ino:
                        del entries[src]
                    entries[dst] = ino
                elif entries.get(dst) == ino:
                    del entries[dst]
            live = {ino for ino in entries.values()}
            for surviving in data_choices({i: content[i] for i in live},
                                          {i: synced[i] for i in live}, full):
                yield n, entries, {i: surviving.get(i, content[i]) for i in live}


def canonical(entries, contents):
    """A hashable form of a state; inodes renumbered by first path, so equal states match."""
    order = {}
    for path in sorted(entries):
        order.setdefault(entries[path], len(order))
    return tuple(sorted((path, order[ino], contents[ino]) for path, ino in entries.items()))


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


def recover_and_check(home_dir, transition, acked, known_before):
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
    problems = crashkit.check_spool(home_dir, transition, acked, known_before)
    home = Home(home_dir)
    try:
        problems += [f"fsck: {p.kind} {p.where}: {p.detail}" for p in fsck(home)]
    finally:
        home.close()
    return problems


def check_trace(name, homes, ops, acks, work, full=False):
    """Enumerate the states, materialise each with each index (the one from before the
    transition, stale, and the one the run left, ahead of a spool that lost operations),
    recover and check. Returns (distinct spool states, checks, violations)."""
    transition = crashkit.TRANSITIONS[name]
    template, recording = homes
    initial = snapshot(os.path.join(template, "spool"))
    known_before = {p.split("/")[1][:-5] for p in initial[0]
                    if p.split("/")[0] in crashkit.JOB_STATES and p.endswith(".json")
                    and p.split("/")[1] not in transition.bad}
    indexes = {"index from before": os.path.join(template, "data"),
               "index the run left": os.path.join(recording, "data")}
    seen, violations, enumerated, checks = set(), [], 0, 0
    for n, entries, contents in crash_states(initial, ops, full):
        enumerated += 1
        acked = {job_id: state for pos, job_id, state in acks if pos <= n}
        key = (canonical(entries, contents), tuple(sorted(acked.items())))
        if key in seen:
            continue
        seen.add(key)
        for label, data_dir in indexes.items():
            checks += 1
            home_dir = materialise(os.path.join(work, f"s{checks}"), data_dir, entries,
                                   contents, initial[2])
            problems = recover_and_check(home_dir, transition, acked, known_before)
            if problems:
                ops_text = " ".join(o["op"] for o in ops[:n])
                files = ", ".join(f"{p}={contents[i][:24]!r}"
                                  for p, i in sorted(entries.items()))
                violations.append(f"{name} cut before op {n} [{ops_text}], {label}, state "
                                  f"{{{files}}}: {'; '.join(problems)}")
            shutil.rmtree(home_dir)
    TOTALS["enumerated"] += enumerated
    return len(seen), checks, violations


def traced(scratch, name, driver):
    """(template home, recording home), ops, acks and a scratch directory."""
    template = crashkit.make_template(str(scratch / "template"), name)
    recording = str(scratch / "recording")
    ops, acks = record(template, recording, name, driver)
    work = scratch / "states"
    work.mkdir()
    return (template, recording), ops, acks, str(work)


@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states(name, scratch, driver):
    started = time.monotonic()
    homes, ops, acks, work = traced(scratch, name, driver)
    states, checks, violations = check_trace(name, homes, ops, acks, work)
    elapsed = time.monotonic() - started
    TOTALS["states"] += states
    TOTALS["checks"] += checks
    TOTALS["seconds"] += elapsed
    print(f"\n{name}: {len(ops)} operations, {states} distinct power-loss states, {checks} "
          f"checked (x2 indexes), {len(violations)} violations, {elapsed:.2f}s; so far "
          f"{TOTALS['states']} states, {TOTALS['checks']} checks, {TOTALS['seconds']:.1f}s")
    assert not violations, "\n".join(violations[:20])


def without(ops, acks, predicate, what):
    """The trace minus the single operation that matches predicate(index, op), with the
    ACK positions after it moved down by one."""
    hits = [i for i, op in enumerate(ops) if predicate(i, op)]
    assert len(hits) == 1, f"expected one {what} in {[o['op'] for o in ops]}, found {hits}"
    gone = hits[0]
    return (ops[:gone] + ops[gone + 1:],
            [(pos - (pos > gone), job_id, state) for pos, job_id, state in acks])


def test_negative_control_no_fsync_before_publish(scratch, driver):
    """(a) Publishing a tmp file that was never fsynced: the link into pending/ can survive
    a power cut while the data does not, so the job is visible but empty."""
    homes, ops, acks, work = traced(scratch, "enqueue", driver)
    link = next(i for i, op in enumerate(ops) if op["op"] == "link")
    broken, shifted = without(ops, acks, lambda i, op: op["op"] == "fsync" and
                              op["path"].startswith("tmp/") and i < link,
                              "fsync of the tmp file before the link")
    states, checks, violations = check_trace("enqueue", homes, broken, shifted, work)
    print(f"\nnegative control (a), no fsync before publish: {states} states, {checks} "
          f"checks, {len(violations)} violations, e.g.\n  {violations[:1]}")
    assert len(violations) > 0
    assert all("unparseable pending/j1.json" in v for v in violations)


def test_negative_control_no_dir_fsync_before_unlink(scratch, driver):
    """(b) Finishing without fsyncing the destination directory before unlinking
    processing/<id>: the unlink can survive while the move into completed/ is lost."""
    homes, ops, acks, work = traced(scratch, "complete", driver)
    unlink = max(i for i, op in enumerate(ops) if op["op"] == "unlink")
    broken, shifted = without(ops, acks, lambda i, op: op["op"] == "fsyncdir" and
                              i == unlink - 1, "fsyncdir just before the unlink of processing/")
    states, checks, violations = check_trace("complete", homes, broken, shifted, work)
    print(f"\nnegative control (b), no directory fsync before the unlink: {states} states, "
          f"{checks} checks, {len(violations)} violations, e.g.\n  {violations[:1]}")
    assert len(violations) > 0
    lost = [v for v in violations if "acknowledged job j1 lost" in v]
    print(f"  of which the job is lost: {len(lost)}; the completion undone (it would run "
          f"again): {len(violations) - len(lost)}")
    assert len(lost) > 0, "\n".join(violations)


def test_negative_control_no_syncfs_before_publishing_a_batch(scratch, driver):
    """(c) A batch published without its syncfs (issue 9: one syncfs stands in for an fsync
    per file): the links into pending/ can survive a power cut while the data does not."""
    homes, ops, acks, work = traced(scratch, "enqueue-batch-syncfs", driver)
    assert not [op for op in ops if op["op"] == "fsync"], "the batch fsynced its files"
    broken, shifted = without(ops, acks, lambda i, op: op["op"] == "syncfs", "syncfs")
    states, checks, violations = check_trace("enqueue-batch-syncfs", homes, broken, shifted,
                                             work)
    print(f"\nnegative control (c), no syncfs before publishing a batch: {states} states, "
          f"{checks} checks, {len(violations)} violations, e.g.\n  {violations[:1]}")
    assert len(violations) > 0
    assert any("unparseable pending/s" in v for v in violations)


@pytest.mark.stress
@pytest.mark.parametrize("name", list(crashkit.TRANSITIONS))
def test_power_loss_states_full(name, scratch, driver):
    """Every subset of lost directory operations (the default run takes every subset of up
    to 6 and, beyond, pairs and suffixes) and torn lengths of unsynced data."""
    homes, ops, acks, work = traced(scratch, name, driver)
    states, checks, violations = check_trace(name, homes, ops, acks, work, full=True)
    print(f"\n{name} (full): {len(ops)} operations, {states} distinct power-loss states, "
          f"{checks} checks, {len(violations)} violations")
    assert not violations, "\n".join(violations[:20])
