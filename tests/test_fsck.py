"""`queuectl fsck [--repair]` (issue 5): a clean spool exits 0; each kind of problem
(a leftover copy in processing/, an orphan in processing/, an id in two states, a stale
tmp/ file, a file that is not a job, an unparseable .json in a state directory, an index row
with no file, a file with no row) is reported and exits 1 without changing anything;
`--repair` fixes them, says how, exits 0, and a second `fsck` finds nothing. `--json` gives
[{kind, where, detail, fixed}]. A file in processing/ whose lock is held (a running job) is
neither reported nor touched."""

import fcntl
import hashlib
import json
import os
import shutil
import time

import pytest

DAY = 86400
KEYS = {"kind", "where", "detail", "fixed"}


def snapshot(root):
    """Every path under root with its bytes (or link target): what a plain fsck must keep."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[path] = ("file", hashlib.sha256(f.read()).hexdigest())
            else:
                found[path] = ("dir",)
    return found


def backdate(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def fsck(cli, *args):
    result = cli("fsck", "--json", *args)
    assert "Traceback" not in result.stderr
    found = json.loads(result.stdout)
    assert isinstance(found, list) and all(set(p) == KEYS for p in found), found
    return result.exit_code, found


def indexed(cli):
    rows = json.loads(cli("list", "--json").stdout)
    return {r["id"]: r["state"] for r in rows}


@pytest.fixture
def queue(cli, spool):
    """A clean spool of five pending jobs that fsck passes."""
    for i in range(1, 6):
        assert cli("enqueue", json.dumps({"id": f"j{i}", "command": f"echo {i}"})).exit_code == 0
    assert fsck(cli) == (0, [])
    return spool


def test_a_clean_spool_passes(cli, queue):
    result = cli("fsck")
    assert result.exit_code == 0
    assert result.stdout == f"spool {queue} is consistent\n"
    assert cli("fsck", "--repair").exit_code == 0
    assert fsck(cli, "--repair") == (0, [])


def test_a_spool_that_does_not_exist_yet_is_no_queue(cli, home):
    result = cli("fsck")
    assert (result.exit_code, result.stderr) == (1, f"Error: no queue at {home} (run "
                                                    "`queuectl init` or enqueue a job to "
                                                    "create one)\n")
    assert not (home / "spool").exists() and not (home / "data").exists()


# ---- one problem of each kind --------------------------------------------------------------------

def make_leftover(spool):
    """A finish that crashed after its move and before its unlink."""
    shutil.copy(spool / "pending" / "j1.json", spool / "processing" / "j1.json")
    os.rename(spool / "pending" / "j1.json", spool / "completed" / "j1.json")


def check_leftover(spool, cli):
    assert not (spool / "processing" / "j1.json").exists()
    assert (spool / "completed" / "j1.json").exists()


def make_orphan(spool):
    """A job whose worker died mid-run: in processing/ and nobody holds its lock."""
    os.rename(spool / "pending" / "j2.json", spool / "processing" / "j2.json")


def check_orphan(spool, cli):
    job = json.loads((spool / "failed" / "j2.json").read_text())
    assert (job["attempts"], job["last_error"]) == (1, "worker died")
    assert not (spool / "processing" / "j2.json").exists()


def make_two_states(spool):
    shutil.copy(spool / "pending" / "j3.json", spool / "dead" / "j3.json")


def check_two_states(spool, cli):
    assert not (spool / "pending" / "j3.json").exists() and (spool / "dead" / "j3.json").exists()
    # The other copy is kept, byte for byte, in rejected/ with the reason.
    assert (spool / "rejected" / "j3.json").read_bytes() == \
        (spool / "dead" / "j3.json").read_bytes()
    assert (spool / "rejected" / "j3.json.reason").read_text() == \
        "duplicate of dead/j3.json (fsck)\n"


def make_stale_tmp(spool):
    (spool / "tmp" / "host.123.abcdef").write_bytes(b"half a job")
    backdate(spool / "tmp" / "host.123.abcdef", 2 * DAY)
    (spool / "tmp" / "host.456.fresh").write_bytes(b"an enqueue at work")   # not stale


def check_stale_tmp(spool, cli):
    assert os.listdir(spool / "tmp") == ["host.456.fresh"]


def make_not_a_job(spool):
    (spool / "failed" / "notes.txt").write_text("left here by hand")
    backdate(spool / "failed" / "notes.txt", 2 * DAY)
    (spool / "pending" / "job.json.part").write_text("{")     # a tool mid-write: fresh


def check_not_a_job(spool, cli):
    assert (spool / "rejected" / "notes.txt").read_text() == "left here by hand"
    assert (spool / "pending" / "job.json.part").exists()


def make_unparseable(spool):
    (spool / "completed" / "broken.json").write_bytes(b'{"command": ')
    backdate(spool / "completed" / "broken.json", 3600)


def check_unparseable(spool, cli):
    assert (spool / "rejected" / "broken.json").read_bytes() == b'{"command": '
    info = json.loads(cli("show", "--json", "broken.json").stdout)
    assert info["state"] == "rejected" and info["last_error"].startswith("invalid JSON")


def make_row_without_file(spool):
    os.unlink(spool / "pending" / "j4.json")


def check_row_without_file(spool, cli):
    assert "j4" not in indexed(cli)


def make_file_without_row(spool):
    (spool / "pending" / "dropped.json").write_text('{"command": "echo dropped"}')


def check_file_without_row(spool, cli):
    assert indexed(cli)["dropped"] == "pending"


PROBLEMS = {
    # name: (make, expected (kind, where) pairs, check after --repair)
    "leftover": (make_leftover, {("leftover", "processing/j1.json")}, check_leftover),
    "orphan": (make_orphan, {("orphan", "processing/j2.json")}, check_orphan),
    "two-states": (make_two_states, {("two-states", "j3.json")}, check_two_states),
    "stale-tmp": (make_stale_tmp, {("stale-tmp", "tmp/host.123.abcdef")}, check_stale_tmp),
    "not-a-job": (make_not_a_job, {("foreign-file", "failed/notes.txt")}, check_not_a_job),
    "unparseable": (make_unparseable, {("not-a-job", "completed/broken.json")},
                    check_unparseable),
    "row-without-file": (make_row_without_file,
                         {("index-row-without-file", "pending/j4.json")},
                         check_row_without_file),
    "file-without-row": (make_file_without_row,
                         {("file-without-index-row", "pending/dropped.json")},
                         check_file_without_row),
}
INDEX_KINDS = {"index-row-without-file", "file-without-index-row"}


@pytest.mark.parametrize("name", PROBLEMS)
def test_each_problem_is_reported_then_repaired(cli, queue, name):
    make, expected, check = PROBLEMS[name]
    make(queue)
    before = snapshot(queue)
    code, found = fsck(cli)
    assert code == 1
    kinds = {(p["kind"], p["where"]) for p in found}
    assert expected <= kinds, found
    # Only the problem itself, plus the index drift that moving files by hand implies.
    assert {k for k in kinds - expected if k[0] not in INDEX_KINDS} == set(), found
    assert all(p["fixed"] is None and p["detail"] for p in found)
    assert snapshot(queue) == before, "fsck without --repair changed the spool"
    text = cli("fsck")
    assert text.exit_code == 1 and text.stdout.startswith("PROBLEM")

    code, repaired = fsck(cli, "--repair")
    assert code == 0, repaired
    assert {(p["kind"], p["where"]) for p in repaired} >= expected
    assert all(p["fixed"] for p in repaired), repaired
    check(queue, cli)
    assert fsck(cli) == (0, [])
    assert cli("fsck").stdout == f"spool {queue} is consistent\n"


def test_every_problem_at_once(cli, queue):
    for make, _, _ in PROBLEMS.values():
        make(queue)
    code, found = fsck(cli)
    assert code == 1
    expected = set().union(*(e for _, e, _ in PROBLEMS.values()))
    assert expected <= {(p["kind"], p["where"]) for p in found}
    code, repaired = fsck(cli, "--repair")
    assert code == 0 and all(p["fixed"] for p in repaired), repaired
    for _, _, check in PROBLEMS.values():
        check(queue, cli)
    assert fsck(cli) == (0, [])
    # Nothing was lost on the way: every job is in exactly one state.
    states = {}
    for state in ("pending", "processing", "failed", "completed", "dead"):
        for name in os.listdir(queue / state):
            if name.endswith(".json"):
                assert name not in states, name
                states[name] = state
    assert states == {"j1.json": "completed", "j2.json": "failed", "j3.json": "dead",
                      "j5.json": "pending", "dropped.json": "pending"}
    assert indexed(cli) == {name[:-5]: state for name, state in states.items()}


def test_show_names_the_state_a_leftover_moved_to(cli, queue):
    make_leftover(queue)
    info = json.loads(cli("show", "--json", "j1").stdout)
    assert (info["state"], info["also_in"]) == ("completed", ["processing"])
    text = cli("show", "j1").stdout.splitlines()
    assert text[1] == "state:    completed"
    assert text[3] == "also in:  processing (a crash leftover; queuectl recover cleans it)"


def test_json_shape(cli, queue):
    make_orphan(queue)
    make_stale_tmp(queue)
    code, found = fsck(cli)
    assert code == 1
    for problem in found:
        assert set(problem) == KEYS
        assert all(isinstance(problem[k], str) for k in ("kind", "where", "detail"))
        assert problem["fixed"] is None
    code, repaired = fsck(cli, "--repair")
    assert code == 0 and all(isinstance(p["fixed"], str) for p in repaired)
    assert json.loads(cli("fsck", "--json").stdout) == []


def test_a_locked_file_in_processing_is_not_touched(cli, run_queuectl, queue):
    """A file in processing/ whose lock someone holds belongs to a running job: fsck
    (another process) neither reports nor repairs it, while it repairs the orphan beside it."""
    os.rename(queue / "pending" / "j1.json", queue / "processing" / "j1.json")
    make_orphan(queue)
    assert cli("reindex").exit_code == 0
    fd = os.open(queue / "processing" / "j1.json", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = os.fstat(fd)
        data = (queue / "processing" / "j1.json").read_bytes()
        ran = run_queuectl("fsck", "--json")
        assert ran.exit_code == 1
        assert [(p["kind"], p["where"]) for p in json.loads(ran.stdout)] == \
            [("orphan", "processing/j2.json")]
        ran = run_queuectl("fsck", "--repair")
        assert ran.exit_code == 0, ran.stdout + ran.stderr
        assert "processing/j1.json" not in ran.stdout
        after = os.lstat(queue / "processing" / "j1.json")
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert (queue / "processing" / "j1.json").read_bytes() == data
        assert os.listdir(queue / "rejected") == [] and \
            not (queue / "failed" / "j1.json").exists()
        assert run_queuectl("fsck").exit_code == 0
    finally:
        os.close(fd)
    # Lock released with no job behind it: now it is an orphan like any other.
    code, found = fsck(cli)
    assert code == 1 and [(p["kind"], p["where"]) for p in found] == \
        [("orphan", "processing/j1.json")]


def test_a_name_that_is_not_an_id_is_reported_once_and_escaped(cli, queue):
    raw = os.fsencode(str(queue / "completed")) + b"/bad\xff.json"
    with open(raw, "wb") as f:
        f.write(b'{"command": "x"}')
    code, found = fsck(cli)
    assert code == 1
    assert [(p["kind"], p["where"]) for p in found] == [("not-a-job", "completed/bad\\xff.json")]
    assert found[0]["detail"].startswith("bad\\xff.json: file name must be")
    code, repaired = fsck(cli, "--repair")
    assert code == 0 and repaired[0]["fixed"] == "moved to rejected/"
    assert b"bad\xff.json" in os.listdir(os.fsencode(str(queue / "rejected")))
    assert fsck(cli) == (0, [])


def test_a_stale_directory_in_tmp_is_reported_but_not_removed(cli, queue):
    """queuectl never makes directories in tmp/: fsck will not guess what one holds."""
    (queue / "tmp" / "olddir").mkdir()
    (queue / "tmp" / "olddir" / "keep").write_text("someone's")
    backdate(queue / "tmp" / "olddir", 2 * DAY)
    code, repaired = fsck(cli, "--repair")
    assert code == 1 and [(p["kind"], p["fixed"]) for p in repaired] == [("stale-tmp", None)]
    assert (queue / "tmp" / "olddir" / "keep").read_text() == "someone's"
