"""Files dropped straight into spool/pending by other tools. Each bad one reaches its outcome
after `status` or `list`: rejected into rejected/ byte for byte with its reason shown by
`show NAME` and `list --state rejected`, or ignored and left where it is. Special files are
never opened for reading: symlinks are not followed, FIFOs never block."""

import hashlib
import json
import os
import stat
import time

import pytest

from workerkit import lone_worker  # noqa: F401

ID_RULE = ("must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
           "letter or digit")

# (file name, bytes dropped, the reason recorded)
BAD_CONTENT = [
    ("invalid.json", b"this is not json\n", "invalid JSON: Expecting value at line 1 column 1"),
    ("truncated.json", b'{"command": "echo hi", "prio',
     "invalid JSON: Unterminated string starting at line 1 column 24"),
    ("truncated2.json", b'{"command": "echo hi", "priority": 1',
     "invalid JSON: Expecting ',' delimiter at line 1 column 37"),
    ("empty.json", b"", "empty file: expected a JSON object"),
    ("blank.json", b" \n\n", "empty file: expected a JSON object"),
    ("array.json", b'[{"command": "echo hi"}]', "a job must be a JSON object, got an array"),
    ("scalar.json", b'"echo hi"', "a job must be a JSON object, got a string"),
    ("latin1.json", b'{"command": "caf\xe9"}', "not valid UTF-8 (byte 16)"),
    ("bom.json", b'\xef\xbb\xbf{"command": "x"}',
     "file starts with a UTF-8 byte order mark; write plain UTF-8"),
    ("nan.json", b'{"command": "x", "timeout": NaN}', "invalid JSON: NaN is not valid JSON"),
    ("infinity.json", b'{"command": "x", "timeout": Infinity}',
     "invalid JSON: Infinity is not valid JSON"),
    ("dupkeys.json", b'{"command": "echo safe", "command": "rm -rf ~"}',
     "invalid JSON: duplicate key 'command'"),
    ("deep.json", b'{"command": "x", "a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
     "invalid JSON: nested too deeply"),
    ("hugeint.json", b'{"command": "x", "priority": ' + b"7" * 5000 + b"}",
     "invalid JSON: a number has 5000 digits (at most 300 are allowed)"),
    ("dotdot.json", b'{"command": "x", "id": "../x"}', f"id {ID_RULE}, got '../x'"),
    ("slash.json", b'{"command": "x", "id": "a/b"}', f"id {ID_RULE}, got 'a/b'"),
    ("mismatch.json", b'{"command": "x", "id": "other"}',
     "id 'other' does not match the file name 'mismatch.json'"),
    ("nocommand.json", b'{"cmd": "echo hi"}', "command is required (the shell command to run)"),
    ("cmdlist.json", b'{"command": ["ls", "-l"]}', "command must be a string, got an array"),
    ("types.json", b'{"command": "x", "priority": "high", "max_retries": -1, "timeout": "5"}',
     "priority must be an integer, got 'high'; max_retries must be between 0 and 1000, got -1; "
     "timeout must be a number of seconds > 0 or null, got '5'"),
    ("badtime.json", b'{"command": "x", "run_at": "next tuesday"}',
     "run_at must be an ISO-8601 time like 2026-01-31T12:00:00Z, got 'next tuesday'"),
    ("x y.json", b'{"command": "x"}', f"x y.json: file name {ID_RULE}, got 'x y'"),
    ("-dash.json", b'{"command": "x"}', f"-dash.json: file name {ID_RULE}, got '-dash'"),
]

IGNORED = [".hidden.json", ".tool.json.part", "notes.txt", "job.json.tmp", "README",
           "job.JSON"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def rejected_rows(cli):
    result = cli("list", "--state", "rejected", "--json")
    assert result.exit_code == 0, result.stderr
    return {row["file"]: row for row in json.loads(result.stdout)}


def assert_rejected(cli, spool, name, reason, by_id=True):
    """The outcome every rejection must have: gone from pending/, in rejected/, the reason in
    `show` (by id, unless a real job has that id, and by file name) and in
    `list --state rejected`."""
    stem = name[:-len(".json")]
    assert not os.path.lexists(spool / "pending" / name)
    assert os.path.lexists(spool / "rejected" / name)
    row = rejected_rows(cli)[name]
    assert (row["id"], row["state"], row["last_error"]) == (stem, "rejected", reason)
    for query in (stem, name) if by_id else (name,):
        shown = cli("show", "--", query)
        assert shown.exit_code == 0, shown.stderr
        assert shown.stdout.splitlines()[:4] == [
            f"id:       {stem}", "state:    rejected",
            f"file:     {spool / 'rejected' / name}", f"error:    {reason}"]
    info = json.loads(cli("show", "--json", "--", name).stdout)
    assert (info["state"], info["last_error"]) == ("rejected", reason)


@pytest.mark.parametrize("name, data, reason", BAD_CONTENT,
                         ids=[case[0] for case in BAD_CONTENT])
def test_bad_content_is_rejected_byte_for_byte(cli, drop, spool, name, data, reason):
    path = drop(name, data, age=60)       # older than settle_seconds: the writer is done
    digest = sha(path)
    result = cli("status", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rejected"] == 1 and report["counts"]["pending"] == 0
    assert sha(spool / "rejected" / name) == digest
    assert_rejected(cli, spool, name, reason)
    assert os.listdir(spool / "pending") == []


def test_unparsable_drop_waits_for_settle_seconds(cli, drop, spool, age_file):
    path = drop("slow.json", b'{"command": "half writ')
    for command in ("status", "list"):
        assert cli(command).exit_code == 0
        assert path.exists() and os.listdir(spool / "rejected") == []
    assert rejected_rows(cli) == {}
    age_file(path, 3)                      # unchanged for longer than settle_seconds (2)
    assert cli("list").exit_code == 0
    assert_rejected(cli, spool, "slow.json",
                    "invalid JSON: Unterminated string starting at line 1 column 13")
    assert (spool / "rejected" / "slow.json").read_bytes() == b'{"command": "half writ'


def test_settle_seconds_zero_rejects_a_fresh_drop(cli, drop, spool):
    assert cli("config", "set", "settle_seconds", "0").exit_code == 0
    drop("fresh.json", b"{")
    assert cli("list").exit_code == 0
    assert_rejected(cli, spool, "fresh.json",
                    "invalid JSON: Expecting property name enclosed in double quotes at "
                    "line 1 column 2")


def test_oversize_over_the_default_limit(cli, drop, spool):
    data = b'{"command": "x", "pad": "' + b"a" * (1 << 20) + b'"}'
    path = drop("big.json", data)
    digest = sha(path)
    assert cli("status").exit_code == 0
    assert sha(spool / "rejected" / "big.json") == digest
    assert_rejected(cli, spool, "big.json", f"is {len(data)} bytes, over max_job_bytes (1048576)")


def test_oversize_over_a_configured_limit(cli, drop, spool):
    assert cli("config", "set", "max_job_bytes", "64").exit_code == 0
    small = drop("small.json", b'{"command": "echo fits"}')
    big = b'{"command": "echo this one is longer than sixty-four bytes, padded"}'
    drop("big.json", big)
    assert cli("list").exit_code == 0
    assert_rejected(cli, spool, "big.json", f"is {len(big)} bytes, over max_job_bytes (64)")
    assert small.exists()
    assert [r["id"] for r in json.loads(cli("list", "--json").stdout)] == ["small"]


def test_directory_named_like_a_job(cli, spool, drop):
    drop("keep.json", b'{"command": "x"}')
    (spool / "pending" / "x.json").mkdir()
    (spool / "pending" / "x.json" / "inside").write_text("data")
    assert cli("status").exit_code == 0
    assert (spool / "rejected" / "x.json" / "inside").read_text() == "data"
    assert_rejected(cli, spool, "x.json", "is a directory, not a file")


def test_symlink_is_rejected_without_reading_its_target(cli, drop, spool, tmp_path):
    drop("keep.json", b'{"command": "x"}')
    target = tmp_path / "secret.json"
    target.write_bytes(b'{"command": "cat /etc/shadow"}')
    control = tmp_path / "control.json"
    control.write_bytes(b"{}")
    then = time.time() - 3600
    for path in (target, control):
        os.utime(path, (then - 3600, then))  # atime older than mtime: a read updates it
    os.symlink(target, spool / "pending" / "link.json")
    assert cli("list").exit_code == 0
    assert os.readlink(spool / "rejected" / "link.json") == str(target)
    assert_rejected(cli, spool, "link.json", "is a symbolic link (never followed)")
    assert os.stat(target).st_atime == then - 3600, "the symlink's target was read"
    assert target.read_bytes() == b'{"command": "cat /etc/shadow"}'
    control.read_bytes()                    # shows that this filesystem records reads
    assert os.stat(control).st_atime != then - 3600


def test_fifo_does_not_hang(run_queuectl, cli, drop, spool):
    drop("keep.json", b'{"command": "x"}')
    os.mkfifo(spool / "pending" / "pipe.json")
    ran = run_queuectl("status", "--json", timeout=15)   # a hang raises TimeoutExpired
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["rejected"] == 1
    assert stat.S_ISFIFO(os.lstat(spool / "rejected" / "pipe.json").st_mode)
    assert_rejected(cli, spool, "pipe.json",
                    "is a special file (FIFO, socket or device), not a regular file")


def test_symlink_to_a_fifo_does_not_hang(run_queuectl, cli, spool, drop, tmp_path):
    drop("keep.json", b'{"command": "x"}')
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", spool / "pending" / "pipelink.json")
    ran = run_queuectl("list", "--state", "rejected", "--json", timeout=15)
    assert ran.exit_code == 0, ran.stderr
    assert [row["id"] for row in json.loads(ran.stdout)] == ["pipelink"]
    assert_rejected(cli, spool, "pipelink.json", "is a symbolic link (never followed)")


def test_non_utf8_file_name(cli, drop, spool):
    drop("keep.json", b'{"command": "x"}')
    raw = os.fsencode(str(spool / "pending")) + b"/bad\xff.json"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b'{"command": "x"}')
    os.close(fd)
    assert cli("status").exit_code == 0
    assert os.listdir(os.fsencode(str(spool / "pending"))) == [b"keep.json"]
    assert b"bad\xff.json" in os.listdir(os.fsencode(str(spool / "rejected")))
    row = rejected_rows(cli)["bad\\xff.json"]
    assert row["id"] == "bad\\xff"
    assert row["last_error"].startswith(f"bad\\xff.json: file name {ID_RULE}, got ")


@pytest.mark.parametrize("name", IGNORED)
def test_hidden_and_non_json_names_are_ignored(cli, drop, spool, name):
    path = drop(name, b"not even json", age=60)
    digest = sha(path)
    for command in ("status", "list", "reindex"):
        assert cli(command).exit_code == 0
    assert sha(path) == digest
    assert sorted(os.listdir(spool / "pending")) == [name]
    assert os.listdir(spool / "rejected") == []
    assert json.loads(cli("list", "--json").stdout) == []
    assert rejected_rows(cli) == {}


def test_a_minimal_drop_is_a_job_and_stays_as_dropped(cli, drop, spool):
    path = drop("mini.json", b'{"command": "echo dropped"}')
    rows = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["state"], r["command"], r["attempts"], r["max_retries"])
            for r in rows] == [("mini", "pending", "echo dropped", 0, 3)]
    assert path.read_bytes() == b'{"command": "echo dropped"}'


def test_unknown_fields_are_kept_and_round_trip(cli, drop, spool):
    extra = {"owner": "ops", "meta": {"tags": ["a", "b"], "n": 1.5, "none": None}}
    drop("keep.json", json.dumps({"command": "echo kept", **extra}), age=60)
    info = json.loads(cli("show", "keep", "--json").stdout)
    assert info["state"] == "pending"
    assert {k: info["job"][k] for k in extra} == extra
    # A rewrite of the file (here a DLQ retry) keeps them too.
    drop("dead1.json", json.dumps({"command": "x", "attempts": 4, "max_retries": 3, **extra}),
         state="dead")
    assert cli("dlq", "retry", "dead1").exit_code == 0
    rewritten = json.loads((spool / "pending" / "dead1.json").read_bytes())
    assert {k: rewritten[k] for k in extra} == extra and rewritten["attempts"] == 0
    # ...and the minimal dropped record is completed at its first move.
    assert (rewritten["id"], rewritten["priority"], rewritten["max_retries"]) == ("dead1", 0, 3)
    assert rewritten["created_at"] <= rewritten["updated_at"]
    assert {k: json.loads(cli("show", "dead1", "--json").stdout)["job"][k] for k in extra} == \
        extra


def test_a_state_key_does_not_choose_the_state(cli, drop):
    drop("sneaky.json", b'{"command": "x", "state": "completed"}')
    rows = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["state"]) for r in rows] == [("sneaky", "pending")]


def test_a_drop_with_the_id_of_an_existing_job_is_a_duplicate(cli, drop, spool):
    assert cli("enqueue", '{"id": "taken", "command": "original"}').exit_code == 0
    os.rename(spool / "pending" / "taken.json", spool / "completed" / "taken.json")
    assert cli("reindex").exit_code == 0
    original = sha(spool / "completed" / "taken.json")
    path = drop("taken.json", b'{"command": "impostor"}')
    digest = sha(path)
    assert cli("status").exit_code == 0
    assert sha(spool / "completed" / "taken.json") == original
    assert sha(spool / "rejected" / "taken.json") == digest
    assert_rejected(cli, spool, "taken.json", "duplicate id: 'taken' is already in completed/",
                    by_id=False)
    assert json.loads(cli("show", "taken", "--json").stdout)["state"] == "completed"
    rows = json.loads(cli("list", "--json").stdout)
    assert [(r["id"], r["state"], r["command"]) for r in rows] == \
        [("taken", "completed", "original")]


def test_the_whole_matrix_at_once(cli, run_queuectl, drop, spool, tmp_path):
    """One look handles every kind of file together; one bad file blocks no other."""
    digests = {}
    for name, data, _ in BAD_CONTENT:
        digests[name] = sha(drop(name, data, age=60))
    for name in IGNORED:
        drop(name, b"ignored", age=60)
    os.symlink(tmp_path / "nowhere", spool / "pending" / "link.json")
    os.mkfifo(spool / "pending" / "pipe.json")
    (spool / "pending" / "dir.json").mkdir()
    drop("good1.json", b'{"command": "echo 1", "priority": 2}')
    drop("good2.json", b'{"command": "echo 2", "owner": "kept"}')
    ran = run_queuectl("status", "--json", timeout=15)   # the FIFO must not hang it
    assert ran.exit_code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["counts"]["pending"] == 2
    assert report["rejected"] == len(BAD_CONTENT) + 3
    assert sorted(os.listdir(spool / "pending")) == sorted(IGNORED + ["good1.json", "good2.json"])
    rows = rejected_rows(cli)
    assert {name: rows[name]["last_error"] for name, _, _ in BAD_CONTENT} == \
        {name: reason for name, _, reason in BAD_CONTENT}
    assert {name: sha(spool / "rejected" / name) for name in digests} == digests
    assert [r["id"] for r in json.loads(cli("list", "--json").stdout)] == ["good1", "good2"]


# ---- a future mtime never schedules a drop-in -------------------------------------------------

def test_a_drop_in_with_a_future_mtime_and_no_run_at_is_ready_now(cli, drop, spool, wait_until,
                                                                   lone_worker):
    from queuectl import job as jobmod
    from workerkit import states_of
    path = drop("skewed.json", json.dumps({"command": "true"}))
    future = time.time() + 3600           # cp -p, tar or clock skew
    os.utime(path, (future, future))
    status = json.loads(cli("status", "--json").stdout)
    assert (status["ready"], status["scheduled"]) == (1, 0)
    proc = lone_worker()
    wait_until(lambda: states_of(spool, "skewed") == ["completed"] or proc.poll() is not None,
               timeout=20, message="the drop-in to run now")
    record = json.loads((spool / "completed" / "skewed.json").read_bytes())
    assert jobmod.parse_time(record["created_at"]) <= time.time()
