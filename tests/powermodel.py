"""The power-loss model: from a transition's recorded spool operations, every state of the
spool's directories and files that a power cut could leave on disk.

The trace (crashkit's recorder) lists each spool operation as the process made it: open
with its flags, write with its data, fsync, fsyncdir, syncfs (every file and directory
durable), link, rename and replace with their source, unlink, and `failed` after an operation that returned an error. `replay` runs it on
an abstract file system (path -> inode, inode -> bytes) and turns each directory operation
into halves: an *add* (a name now points at an inode) and a *remove* (a name is gone).
create, link: one add; unlink: one remove; rename and replace: a remove of the source and an
add of the destination.

What a power cut may lose, in the two modes:
- journal (default, what ext4, XFS and btrfs's log give): a rename is one unit, both halves
  or neither, durable once either of its directories is fsynced after it;
- strict (`strict=True`): every half on its own, durable only once *its* directory is
  fsynced after it. A rename may then lose its add and keep its remove (the file is gone:
  a "torn rename"), or the reverse (the file is in both places).
A unit not yet durable may be lost or kept, independently of the others. File data written
but not fsynced may survive as any prefix from what was fsynced to what was written.

What is enumerated (`crash_states`): for every cut (before operation n, for every n), every
subset of the units not yet durable, and for every file reachable from a state directory
whose data is not yet fsynced, every length from its fsynced to its written size. Nothing
is sampled. Halves in tmp/ are left out of the subsets, and tmp/ is materialised empty: a
half only ever changes its own name, so which tmp/ names survive cannot change any name
outside tmp/, and nothing that recovers or checks a spool reads tmp/ (fsck only reports
tmp/ files older than a day; test_power_loss checks that recovery ignores tmp/ files).

`replay` also checks itself against the real run: every operation that succeeded must be
possible in the model, and every one that failed impossible (or failed for a reason the
model does not track, such as EINVAL of renameat2 on a filesystem without it); and the
model's final file system must equal the real spool afterwards, byte for byte."""

import itertools
import os
from dataclasses import dataclass, field

HIDDEN_DIRS = ("tmp",)              # never materialised: see the module docstring
TRACKED_FAILURES = {"link", "rename", "unlink", "open"}


ALL_DIRS = "*"        # what a syncfs makes durable: every directory


def parent(path):
    return path.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Half:
    kind: str            # "add" | "remove"
    path: str
    ino: int


@dataclass
class Unit:
    """Halves lost or kept together, made durable by an fsync of any of `dirs` after op
    number `index`."""
    index: int
    op: str
    halves: tuple
    dirs: frozenset
    durable_at: int = None      # the index of the fsyncdir that makes it durable, if any


@dataclass
class Replay:
    units: list
    content: dict               # ino -> bytes as written
    synced: dict                # ino -> bytes as last fsynced
    entries: dict               # path -> ino at the end of the replayed ops
    disagreements: list = field(default_factory=list)


def replay(initial, ops, strict=False):
    """Run ops on the model as the process saw them (see the module docstring)."""
    entries, data, _ = initial
    run = dict(entries)
    content, synced = dict(data), dict(data)
    units, fsyncdirs, disagreements = [], [], []
    next_ino = max(data, default=-1) + 1

    def unit(i, kind, *halves):
        if strict:
            for half in halves:
                units.append(Unit(i, kind, (half,), frozenset([parent(half.path)])))
        else:
            units.append(Unit(i, kind, halves, frozenset(parent(h.path) for h in halves)))

    for i, op in enumerate(ops):
        kind, path, src = op["op"], op["path"], op.get("src")
        failed = op.get("failed")
        possible = _possible(kind, op, run)
        if failed is not None:
            if possible and kind in TRACKED_FAILURES and not _untracked_failure(kind, failed):
                disagreements.append(f"op {i} {kind} {path} failed (errno {failed}) in the "
                                     f"real run but is possible in the model")
            continue
        if not possible:
            disagreements.append(f"op {i} {kind} {src or ''} {path} succeeded in the real "
                                 f"run but is impossible in the model: skipped")
            continue
        if kind == "open" and op["flags"] & os.O_CREAT and path not in run:
            run[path], next_ino = next_ino, next_ino + 1
            content[run[path]] = synced[run[path]] = b""
            unit(i, "create", Half("add", path, run[path]))
        elif kind == "write":
            content[run[path]] += op["data"]
        elif kind == "fsync":
            synced[run[path]] = content[run[path]]
        elif kind == "fsyncdir":
            fsyncdirs.append((i, path))
        elif kind == "syncfs":
            # syncfs(2): every file's data and every directory of the filesystem durable.
            for ino in content:
                synced[ino] = content[ino]
            fsyncdirs.append((i, ALL_DIRS))
        elif kind == "link":
            run[path] = run[src]
            unit(i, "link", Half("add", path, run[path]))
        elif kind in ("rename", "replace"):
            ino = run.pop(src)
            old = run.get(path)
            run[path] = ino
            halves = [Half("remove", src, ino), Half("add", path, ino)]
            if old is not None:             # replace: the old file's name now names ino
                halves.insert(0, Half("remove", path, old))
            unit(i, kind, *halves)
        elif kind == "unlink":
            unit(i, "unlink", Half("remove", path, run.pop(path)))
    for u in units:
        u.durable_at = next((j for j, where in fsyncdirs
                             if j > u.index and (where in u.dirs or where == ALL_DIRS)), None)
    return Replay(units, content, synced, run, disagreements)


def _possible(kind, op, run):
    path, src = op["path"], op.get("src")
    if kind == "open":
        if op["flags"] & os.O_CREAT:
            return not (op["flags"] & os.O_EXCL and path in run)
        return path in run
    if kind in ("write", "fsync", "unlink", "flock"):
        return path in run
    if kind in ("link", "rename"):
        return src in run and path not in run
    if kind == "replace":
        return src in run
    return True


def _untracked_failure(kind, code):
    """Failures the model has no state for: renameat2 unsupported (EINVAL, ENOSYS), an open
    refused for what the file is (ELOOP, EISDIR, ENXIO, EACCES, EWOULDBLOCK)."""
    import errno
    return code in (errno.EINVAL, errno.ENOSYS, errno.ELOOP, errno.EISDIR, errno.ENXIO,
                    errno.EACCES, errno.EWOULDBLOCK)


def visible(half):
    return parent(half.path) not in HIDDEN_DIRS


def crash_states(initial, ops, strict=False, acks_at=(), with_hidden=False,
                 every_prefix=True):
    """Yield (n, entries, contents, lost units, units) for every state a power cut before op n may
    leave (see the module docstring). n runs over every cut after which something can
    differ: a directory operation, a write, an fsync, or an ACK. with_hidden=True keeps the
    tmp/ halves (always as the run made them), to show they change nothing."""
    entries0 = initial[0]
    full = replay(initial, ops, strict)
    changes = {u.index for u in full.units} | set(acks_at) | {
        i for i, op in enumerate(ops) if op["op"] in ("write", "fsync", "fsyncdir", "syncfs")}
    for n in range(len(ops) + 1):
        if n and (n - 1) not in changes and n not in acks_at:
            continue
        done = replay(initial, ops[:n], strict)
        units = [Unit(u.index, u.op, tuple(h for h in u.halves if with_hidden or visible(h)),
                      u.dirs, u.durable_at) for u in done.units]
        units = [u for u in units if u.halves]
        volatile = [u for u in units if u.durable_at is None]
        for size in range(len(volatile) + 1):
            for lost in itertools.combinations(volatile, size):
                lost_ids = {id(u) for u in lost}
                entries = apply(entries0, units, lost_ids, with_hidden)
                live = set(entries.values())
                for contents in data_choices(done.content, done.synced, live, every_prefix):
                    yield n, entries, contents, lost, units


def apply(entries0, units, lost_ids, with_hidden=False):
    entries = {p: i for p, i in entries0.items()
               if with_hidden or parent(p) not in HIDDEN_DIRS}
    for u in units:
        if id(u) in lost_ids:
            continue
        for half in u.halves:
            if half.kind == "add":
                entries[half.path] = half.ino
            elif entries.get(half.path) == half.ino:
                del entries[half.path]
    return entries


def data_choices(content, synced, live, every_prefix=True):
    """Every combination of surviving data for the live inodes: a file whose data was not
    all fsynced keeps any prefix from its fsynced length to its written length (with
    every_prefix=False only those two lengths: for a negative control over several unsynced
    files, where every prefix of each would multiply into millions of states)."""
    options = {}
    for ino in live:
        now, kept = content[ino], synced[ino]
        if now == kept:
            continue
        if now.startswith(kept):
            options[ino] = ([now[:cut] for cut in range(len(kept), len(now) + 1)]
                            if every_prefix else [kept, now])
        else:
            options[ino] = [kept, now]
    inos = sorted(options)
    base = {ino: content[ino] for ino in live}
    for combo in itertools.product(*(options[i] for i in inos)):
        yield {**base, **dict(zip(inos, combo))}


def canonical(entries, contents):
    """A hashable form of a state; inodes renumbered by first path, so equal states match."""
    order = {}
    for path in sorted(entries):
        order.setdefault(entries[path], len(order))
    return tuple(sorted((path, order[ino], contents[ino]) for path, ino in entries.items()))


def torn(lost, units):
    """True if a lost unit is the add half of a rename whose visible remove half was kept
    (strict mode only): the renamed file is gone from both directories."""
    lost_ids = {id(u) for u in lost}
    kept_removes = {u.index for u in units if id(u) not in lost_ids and u.op in
                    ("rename", "replace") and any(h.kind == "remove" for h in u.halves)}
    return any(u.op in ("rename", "replace") and u.index in kept_removes and
               all(h.kind == "add" for h in u.halves) for u in lost)


def disk_state(spool_dir, dirs):
    """The real spool as the model sees it: ({path: (st_dev, st_ino)}, {(dev, ino): bytes})."""
    entries, contents = {}, {}
    for state in dirs:
        if not os.path.isdir(os.path.join(spool_dir, state)):
            continue
        for name in sorted(os.listdir(os.path.join(spool_dir, state))):
            full = os.path.join(spool_dir, state, name)
            st = os.lstat(full)
            key = (st.st_dev, st.st_ino)
            entries[f"{state}/{name}"] = key
            if key not in contents:
                with open(full, "rb") as f:
                    contents[key] = f.read()
    return entries, contents
