"""The command line, command by command: the happy path and the error paths, with exact
messages and exit codes (0 ok, 1 operation or user error, 2 usage). Most run in-process
through click's runner; a few run the real installed `queuectl` to cover stdin, the
environment and the console script itself."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from queuectl import job as jobmod

ID_PATTERN = r"[0-9a-hjkmnp-tv-z]{11}-[0-9a-hjkmnp-tv-z]{7}"
JOB_DIRS = ("tmp", "pending", "processing", "failed", "completed", "dead", "rejected")
VALID_KEYS = ("backoff_base, backoff_max, completed_retention, hook_timeout, job_timeout, "
              "log_level, max_job_bytes, max_retries, metrics_textfile, on_dead, on_finish, "
              "permanent_exit_codes, retry_exit_codes, settle_seconds, "
              "shutdown_timeout, spool_shared, worker_poll_interval")


def read_job(spool, job_id, state="pending"):
    return json.loads((spool / state / f"{job_id}.json").read_bytes())


def spool_contents(spool):
    """Every file in the spool's job directories (an absent spool holds nothing)."""
    found = {}
    for name in JOB_DIRS:
        try:
            entries = sorted(os.listdir(spool / name))
        except FileNotFoundError:
            entries = []
        if entries:
            found[name] = entries
    return found


def ok(result, stdout=None):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    if stdout is not None:
        assert result.stdout == stdout
    return result


def failed(result, stderr, code=1):
    assert (result.exit_code, result.stderr) == (code, stderr), result.stdout
    assert result.stdout == ""
    return result


def usage_error(result, message):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.endswith(f"Error: {message}\n"), result.stderr
    assert result.stderr.startswith("Usage: ")


def dead_job(drop, job_id, error="exit code 1", attempts=4, **more):
    """A job whose retries ran out, placed into dead/ as a worker would leave it."""
    doc = {"id": job_id, "command": f"echo {job_id}", "attempts": attempts, "max_retries": 3,
           "priority": 0, "created_at": "2025-01-01T00:00:00.000000Z",
           "updated_at": "2025-01-01T00:05:00.000000Z", "last_error": error, "exit_code": 1,
           **more}
    return drop(f"{job_id}.json", json.dumps(doc, indent=2), state="dead")


# ---- enqueue ------------------------------------------------------------------------------

def test_enqueue_json_prints_the_id_and_writes_the_whole_record(cli, spool):
    ok(cli("enqueue", '{"id": "hello", "command": "echo hi"}'), "hello\n")
    job = read_job(spool, "hello")
    assert job["command"] == "echo hi" and job["id"] == "hello"
    assert (job["priority"], job["attempts"], job["max_retries"]) == (0, 0, 3)
    assert job["created_at"] == job["updated_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", job["created_at"])
    assert spool_contents(spool) == {"pending": ["hello.json"]}


def test_enqueue_generates_a_sortable_id(cli, spool):
    first = ok(cli("enqueue", '{"command": "a"}')).stdout.strip()
    second = ok(cli("enqueue", '{"command": "b"}')).stdout.strip()
    assert re.fullmatch(ID_PATTERN, first) and re.fullmatch(ID_PATTERN, second)
    assert first < second
    assert read_job(spool, first)["command"] == "a"


def test_enqueue_stdin_one_object(cli, spool):
    result = ok(cli("enqueue", "-", input='{\n  "id": "one",\n  "command": "x"\n}\n'))
    assert result.stdout == "one\n"
    assert read_job(spool, "one")["command"] == "x"


def test_enqueue_stdin_json_lines(cli, spool):
    lines = "".join(json.dumps({"id": f"j{n}", "command": f"echo {n}"}) + "\n"
                    for n in range(3))
    ok(cli("enqueue", "-", input=lines), "j0\nj1\nj2\n")
    assert [read_job(spool, f"j{n}")["command"] for n in range(3)] == \
        ["echo 0", "echo 1", "echo 2"]


def test_enqueue_json_flag_prints_an_array(cli):
    result = ok(cli("enqueue", "--json", "-", input='{"id": "a", "command": "x"}\n'
                                                     '{"id": "b", "command": "y"}\n'))
    assert json.loads(result.stdout) == ["a", "b"]


@pytest.mark.parametrize("name, content, expected", [
    ("job.py", 'print("v1")\n', "v1\n"),
    ("job.sh", "echo v1\n", "v1\n"),
    ("runme", "#!/usr/bin/env python3\nprint('v' + '1')\n", "v1\n"),
])
def test_enqueue_file_freezes_the_script(cli, spool, tmp_path, name, content, expected):
    script = tmp_path / name
    script.write_text(content)
    ok(cli("enqueue", "--file", script, "--id", "scripted"), "scripted\n")
    command = read_job(spool, "scripted")["command"]
    script.write_text("echo edited\n")
    assert read_job(spool, "scripted")["command"] == command
    assert json.loads(ok(cli("show", "scripted", "--json")).stdout)["job"]["command"] == \
        command
    ran = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                         timeout=30)
    assert (ran.returncode, ran.stdout) == (0, expected)


def test_enqueue_file_with_unknown_extension(cli, spool, tmp_path):
    script = tmp_path / "notes.txt"
    script.write_text("echo x\n")
    failed(cli("enqueue", "--file", script),
           f"Error: cannot tell how to run {str(script)!r}: add a shebang line or use one of "
           "the extensions .bash, .js, .pl, .py, .rb, .sh, .zsh\n")
    assert spool_contents(spool) == {}


def test_enqueue_file_missing(cli, spool, tmp_path):
    failed(cli("enqueue", "--file", tmp_path / "gone.sh"),
           f"Error: cannot read script {str(tmp_path / 'gone.sh')!r}: "
           "No such file or directory\n")
    assert spool_contents(spool) == {}


def test_enqueue_options_fill_the_job(cli, spool):
    ok(cli("enqueue", '{"command": "x"}', "--id", "opts", "--priority", "-3",
           "--run-at", "2030-01-01T02:00:00+02:00", "--max-retries", "0",
           "--timeout", "2.5"), "opts\n")
    job = read_job(spool, "opts")
    assert (job["id"], job["priority"], job["run_at"], job["max_retries"], job["timeout"]) == \
        ("opts", -3, "2030-01-01T00:00:00.000000Z", 0, 2.5)
    assert "job_id" not in job


def test_enqueue_options_override_the_json(cli, spool):
    ok(cli("enqueue", '{"id": "a", "command": "x", "priority": 1, "max_retries": 9}',
           "--priority", "7", "--max-retries", "2", "--id", "b"), "b\n")
    job = read_job(spool, "b")
    assert (job["priority"], job["max_retries"]) == (7, 2)
    assert spool_contents(spool) == {"pending": ["b.json"]}


def test_enqueue_delay_schedules_from_now(cli, spool):
    ok(cli("enqueue", '{"command": "x"}', "--id", "later", "--delay", "1h"), "later\n")
    job = read_job(spool, "later")
    assert jobmod.parse_time(job["run_at"]) - jobmod.parse_time(job["created_at"]) == \
        pytest.approx(3600, abs=1e-5)
    report = json.loads(ok(cli("status", "--json")).stdout)
    assert (report["ready"], report["scheduled"]) == (0, 1)


@pytest.mark.parametrize("args, stderr", [
    (['{"command": "x"'],
     "Error: invalid JSON: Expecting ',' delimiter at line 1 column 16\n"),
    (["{}"], "Error: command is required (the shell command to run)\n"),
    (['{"command": "x", "priority": "high"}'],
     "Error: priority must be an integer, got 'high'\n"),
    (['{"command": "x", "priority": NaN}'], "Error: invalid JSON: NaN is not valid JSON\n"),
    (['{"command": "x", "command": "y"}'],
     "Error: invalid JSON: duplicate key 'command'\n"),
    (["[]"], "Error: a job must be a JSON object, got an array\n"),
    (['{"command": "x", "id": "../etc/x"}'],
     "Error: id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with "
     "a letter or digit, got '../etc/x'\n"),
    (['{"command": "x"}', "--id", "a b"],
     "Error: id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with "
     "a letter or digit, got 'a b'\n"),
    (['{"command": "x"}', "--run-at", "tomorrow"],
     "Error: run_at must be an ISO-8601 time like 2026-01-31T12:00:00Z, got 'tomorrow'\n"),
    (['{"command": "x"}', "--delay", "soon"],
     "Error: Invalid value for '--delay': duration must look like 30s, 5m, 2h or 7d, got 'soon'\n"),
    (['{"command": "x", "timeout": -1}'],
     "Error: timeout must be a number of seconds > 0 or null, got -1\n"),
])
def test_enqueue_invalid_input_exits_1_and_writes_nothing(cli, spool, args, stderr):
    failed(cli("enqueue", *args), stderr)
    assert spool_contents(spool) == {}


def test_enqueue_one_bad_line_in_a_batch_writes_nothing(cli, spool):
    failed(cli("enqueue", "-", input='{"command": "a"}\n{"command": 2}\n'),
           "Error: job 2: command must be a string, got a number\n")
    failed(cli("enqueue", "-", input='{"command": "a"}\nnot json\n'),
           "Error: line 2: invalid JSON: Expecting value at line 1 column 1\n")
    failed(cli("enqueue", "-", input=""),
           "Error: no jobs on stdin (give one JSON object or JSON Lines)\n")
    failed(cli("enqueue", "-", "--id", "x", input='{"command": "a"}\n{"command": "b"}\n'),
           "Error: --id can only be used with a single job\n")
    assert spool_contents(spool) == {}


def test_enqueue_duplicate_id_exits_1_and_keeps_the_original(cli, spool):
    ok(cli("enqueue", '{"id": "once", "command": "original"}'))
    failed(cli("enqueue", '{"id": "once", "command": "impostor"}'),
           "Error: a job with id 'once' already exists\n")
    failed(cli("enqueue", '{"command": "impostor"}', "--id", "once"),
           "Error: a job with id 'once' already exists\n")
    assert read_job(spool, "once")["command"] == "original"
    assert spool_contents(spool) == {"pending": ["once.json"]}


def test_enqueue_duplicate_of_a_job_in_another_state(cli, spool, drop):
    dead_job(drop, "gone")
    failed(cli("enqueue", '{"id": "gone", "command": "again"}'),
           "Error: a job with id 'gone' already exists\n")
    assert spool_contents(spool) == {"dead": ["gone.json"]}


@pytest.mark.parametrize("args, message", [
    ([], "give a job as JSON, '-' for stdin, or --file SCRIPT"),
    (['{"command": "x"}', "--file", "x.sh"], "give either JSON or --file, not both"),
])
def test_enqueue_usage_errors_exit_2(cli, spool, args, message):
    usage_error(cli("enqueue", *args), message)
    assert spool_contents(spool) == {}


@pytest.mark.parametrize("args, message", [
    (['{"command": "x"}', "--priority", "high"],
     "Invalid value for '--priority': 'high' is not a valid integer."),
    (['{"command": "x"}', "--max-retries", "-1"],
     "Invalid value for '--max-retries': -1 is not in the range x>=0."),
    (['{"command": "x"}', "--timeout", "0"],
     "Invalid value for '--timeout': 0.0 is not in the range x>0."),
])
def test_enqueue_invalid_values_exit_1(cli, spool, args, message):
    failed(cli("enqueue", *args), f"Error: {message}\n")
    assert spool_contents(spool) == {}


# ---- list ---------------------------------------------------------------------------------

LIST_FIELDS = {"id", "command", "state", "attempts", "max_retries", "created_at",
               "updated_at"}


def test_list_empty(cli, home):
    ok(cli("init"))
    ok(cli("list"), f"no jobs in {home}\n")
    ok(cli("list", "--state", "dead"), f"no dead jobs in {home}\n")
    ok(cli("list", "--json"), "[]\n")


def test_list_table(cli, home):
    ok(cli("enqueue", '{"id": "a", "command": "echo  a\\nb"}'))
    lines = ok(cli("list")).stdout.splitlines()
    assert lines[0] == f"home: {home}"
    assert lines[1] == "ID  STATE    PRI  TRIES  WHEN   COMMAND / LAST ERROR"
    assert lines[2] == "a   pending  0    0/4    ready  echo a b"
    assert len(lines) == 3


def test_list_json_fields(cli, drop):
    ok(cli("enqueue", '{"id": "p", "command": "echo p", "extra": 1}'))
    dead_job(drop, "d")
    rows = json.loads(ok(cli("list", "--json")).stdout)
    assert [r["id"] for r in rows] == ["p", "d"]
    for r in rows:
        assert LIST_FIELDS <= set(r), set(r)
    p, d = rows
    assert (p["state"], p["command"], p["attempts"], p["max_retries"]) == \
        ("pending", "echo p", 0, 3)
    assert (d["state"], d["attempts"], d["last_error"]) == ("dead", 4, "exit code 1")
    assert d["created_at"] == "2025-01-01T00:00:00.000000Z"
    assert d["updated_at"] == "2025-01-01T00:05:00.000000Z"


def test_list_pending_is_in_priority_then_time_order(cli):
    for job_id, priority in (("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 1)):
        ok(cli("enqueue", json.dumps({"id": job_id, "command": "x", "priority": priority})))
    ok(cli("enqueue", '{"id": "early", "command": "x", "run_at": "2000-01-01T00:00:00Z"}'))
    rows = json.loads(ok(cli("list", "--state", "pending", "--json")).stdout)
    assert [r["id"] for r in rows] == ["b", "d", "f", "early", "a", "c", "e"]
    limited = json.loads(ok(cli("list", "--limit", "2", "--json")).stdout)
    assert [r["id"] for r in limited] == ["b", "d"]


def test_list_other_states_newest_first(cli, drop):
    dead_job(drop, "old", updated_at="2025-01-01T00:00:00.000000Z")
    dead_job(drop, "new", updated_at="2025-02-01T00:00:00.000000Z")
    ok(cli("enqueue", '{"id": "p", "command": "x"}'))
    rows = json.loads(ok(cli("list", "--state", "dead", "--json")).stdout)
    assert [r["id"] for r in rows] == ["new", "old"]
    assert [r["id"] for r in json.loads(ok(cli("list", "--json")).stdout)] == \
        ["p", "new", "old"]


def test_list_usage_errors(cli):
    ok(cli("init"))
    result = cli("list", "--state", "running")
    assert result.exit_code == 1
    assert "Invalid value for '--state': 'running' is not one of 'pending', 'processing', " \
           "'failed', 'completed', 'dead', 'rejected'." in result.stderr
    result = cli("list", "--limit", "0")
    assert result.exit_code == 1 and "Invalid value for '--limit'" in result.stderr


# ---- status -------------------------------------------------------------------------------

def test_status_on_an_empty_home(cli, home):
    ok(cli("init"))
    out = ok(cli("status")).stdout.splitlines()
    assert out[0] == f"home: {home}"
    assert out[1].split() == ["STATE", "JOBS"]
    rows = {line.split()[0]: line.split()[1:] for line in out[2:8]}
    assert rows == {"pending": ["0", "ready", "0,", "scheduled", "0"], "processing": ["0"],
                    "failed": ["0"], "completed": ["0"], "dead": ["0"], "rejected": ["0"]}
    assert any(line.startswith("workers:") for line in out[8:])


def test_status_json(cli, home, drop):
    ok(cli("enqueue", '{"id": "r", "command": "x"}'))
    ok(cli("enqueue", '{"id": "s", "command": "x"}', "--delay", "1d"))
    dead_job(drop, "d")
    drop("junk.json", "junk", age=60)
    report = json.loads(ok(cli("status", "--json")).stdout)
    assert report["home"] == str(home)
    assert report["spool"] == str(home / "spool") and report["data"] == str(home / "data")
    assert report["counts"] == {"pending": 2, "processing": 0, "failed": 0, "completed": 0,
                                "dead": 1}
    assert (report["ready"], report["scheduled"], report["rejected"]) == (1, 1, 1)
    assert 0 <= report["oldest_ready_age_s"] < 60
    assert report["workers"] == []
    text = ok(cli("status")).stdout
    assert re.search(r"^pending\s+2\s+ready 1, scheduled 1, oldest ready \S+$", text, re.M)
    assert re.search(r"^dead\s+1$", text, re.M) and re.search(r"^rejected\s+1$", text, re.M)


# ---- show ---------------------------------------------------------------------------------

def test_show_text(cli, spool):
    ok(cli("enqueue", '{"id": "s1", "command": "echo hi", "note": "kept"}'))
    job = read_job(spool, "s1")
    lines = ok(cli("show", "s1")).stdout.splitlines()
    assert lines[:3] == ["id:       s1", "state:    pending",
                         f"file:     {spool / 'pending' / 's1.json'}"]
    assert "command:      echo hi" in lines and "note:         kept" in lines
    assert f"created_at:   {job['created_at']}" in lines and "max_retries:  3" in lines


def test_show_json(cli, spool):
    ok(cli("enqueue", '{"id": "s1", "command": "echo hi", "note": {"k": [1]}}'))
    info = json.loads(ok(cli("show", "s1", "--json")).stdout)
    assert info["job"] == read_job(spool, "s1")
    assert info["job"]["note"] == {"k": [1]}
    assert (info["id"], info["state"], info["path"], info["last_error"]) == \
        ("s1", "pending", str(spool / "pending" / "s1.json"), None)


def test_show_a_dead_job_gives_its_last_error(cli, drop, spool):
    dead_job(drop, "bad", error="exit code 3")
    lines = ok(cli("show", "bad")).stdout.splitlines()
    assert lines[:4] == ["id:       bad", "state:    dead",
                         f"file:     {spool / 'dead' / 'bad.json'}", "error:    exit code 3"]
    info = json.loads(ok(cli("show", "bad", "--json")).stdout)
    assert (info["state"], info["last_error"]) == ("dead", "exit code 3")


@pytest.mark.parametrize("job_id", ["x", "../x", "no such job"])
def test_show_unknown_id(cli, spool, job_id):
    ok(cli("init"))
    failed(cli("show", job_id), f"Error: no job with id {job_id!r} in {spool}\n")
    failed(cli("show", job_id, "--json"), f"Error: no job with id {job_id!r} in {spool}\n")


# ---- dlq ----------------------------------------------------------------------------------

def test_dlq_list_empty(cli, home):
    ok(cli("init"))
    ok(cli("dlq", "list"), f"the dead letter queue of {home} is empty\n")
    ok(cli("dlq", "list", "--json"), "[]\n")


def test_dlq_list(cli, drop, home):
    dead_job(drop, "d1", error="exit code 2")
    ok(cli("enqueue", '{"id": "p", "command": "x"}'))
    lines = ok(cli("dlq", "list")).stdout.splitlines()
    assert lines.pop(0) == f"home: {home}"
    assert lines[0].split() == ["ID", "STATE", "PRI", "TRIES", "WHEN", "COMMAND", "/", "LAST",
                                "ERROR"]
    assert re.fullmatch(r"d1  dead   0    4/4    \S+ ago +exit code 2", lines[1]), lines[1]
    assert len(lines) == 2
    rows = json.loads(ok(cli("dlq", "list", "--json")).stdout)
    assert [(r["id"], r["state"], r["last_error"]) for r in rows] == \
        [("d1", "dead", "exit code 2")]


def test_dlq_retry_resets_attempts_and_moves_to_pending(cli, drop, spool, home):
    dead_job(drop, "d1", owner="kept")
    ok(cli("dlq", "retry", "d1"), "d1: moved to pending (attempts reset)\n")
    assert spool_contents(spool) == {"pending": ["d1.json"]}
    job = read_job(spool, "d1")
    # Ready since the retry: run_at is the moment of the retry, not a time ahead.
    assert job["attempts"] == 0 and job["run_at"] <= jobmod.iso(time.time())
    assert job["owner"] == "kept" and job["command"] == "echo d1"
    rows = json.loads(ok(cli("list", "--json")).stdout)
    assert [(r["id"], r["state"], r["attempts"]) for r in rows] == [("d1", "pending", 0)]
    ok(cli("dlq", "list"), f"the dead letter queue of {home} is empty\n")


def test_dlq_retry_reports_each_id_and_exits_1_for_a_missing_one(cli, drop, spool):
    dead_job(drop, "d1")
    ok(cli("enqueue", '{"id": "p", "command": "x"}'))
    result = cli("dlq", "retry", "nosuch", "d1", "p")
    assert result.exit_code == 1
    assert result.stdout == ("nosuch: error: no job with id 'nosuch'\n"
                             "d1: moved to pending (attempts reset)\n"
                             "p: error: job 'p' is pending; only dead jobs can be retried "
                             "from the DLQ\n")
    assert spool_contents(spool) == {"pending": ["d1.json", "p.json"]}


def test_dlq_retry_json(cli, drop):
    dead_job(drop, "d1")
    result = cli("dlq", "retry", "--json", "d1", "zz")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [
        {"id": "d1", "ok": True, "message": "moved to pending (attempts reset)"},
        {"id": "zz", "ok": False, "message": "no job with id 'zz'"}]


def test_dlq_retry_all(cli, drop, spool):
    for job_id in ("d1", "d2", "d3"):
        dead_job(drop, job_id)
    result = ok(cli("dlq", "retry", "--all"))
    assert sorted(result.stdout.splitlines()) == [
        f"{j}: moved to pending (attempts reset)" for j in ("d1", "d2", "d3")]
    assert spool_contents(spool) == {"pending": ["d1.json", "d2.json", "d3.json"]}
    ok(cli("dlq", "retry", "--all"), "the dead letter queue is empty\n")


def test_dlq_retry_of_a_job_another_process_just_moved(cli, drop, run_queuectl, spool):
    """The job vanishes between the look and the claim (ENOENT on the claim's open, injected
    through fsops' fault hook): reported per id as a race, not a traceback."""
    dead_job(drop, "d1")
    dead_job(drop, "d2")
    ok(cli("status"))
    ran = run_queuectl("dlq", "retry", "d1", "d2", env={"QUEUECTL_FAULT": "ENOENT@open#1"})
    assert (ran.exit_code, ran.stderr) == (1, "")
    assert ran.stdout == ("d1: error: job 'd1' is being moved by another process; try again\n"
                          "d2: moved to pending (attempts reset)\n")
    assert spool_contents(spool) == {"dead": ["d1.json"], "pending": ["d2.json"]}


def test_dlq_retry_of_an_unreadable_dead_file(cli, drop, spool, tmp_path):
    """A symlink in dead/ that no ingest has seen yet (the directory's mtime is unchanged
    since the last look) is refused per id, never followed, never a traceback."""
    dead_job(drop, "d2")
    long_ago = os.stat(spool / "dead").st_mtime - 3600
    os.utime(spool / "dead", (long_ago, long_ago))
    ok(cli("status"))
    os.symlink(tmp_path / "elsewhere.json", spool / "dead" / "d1.json")
    os.utime(spool / "dead", (long_ago, long_ago))
    result = cli("dlq", "retry", "d1", "d2")
    assert (result.exit_code, result.stderr) == (1, "")
    assert result.stdout == ("d1: error: job 'd1' cannot be read: is a symbolic link (never "
                             "followed)\n"
                             "d2: moved to pending (attempts reset)\n")
    assert os.path.islink(spool / "dead" / "d1.json")


def test_dlq_retry_usage(cli):
    usage_error(cli("dlq", "retry"), "give job ids or --all (not both)")
    usage_error(cli("dlq", "retry", "--all", "x"), "give job ids or --all (not both)")


# ---- config -------------------------------------------------------------------------------

def test_config_show_every_key_as_default(cli):
    ok(cli("init"))
    lines = ok(cli("config", "show")).stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "MEANING"]
    keys = [line.split()[0] for line in lines[1:]]
    assert keys == VALID_KEYS.split(", ")
    assert all(line.split()[2] == "(default)" for line in lines[1:])
    assert re.search(r"^max_retries\s+3\s+\(default\)", "\n".join(lines), re.M)
    shown = json.loads(ok(cli("config", "show", "--json")).stdout)
    assert shown["max_retries"] == {"value": 3, "default": True}
    assert shown["job_timeout"] == {"value": None, "default": True}
    assert sorted(shown) == VALID_KEYS.split(", ")


def test_config_set_show_unset(cli, spool):
    ok(cli("config", "set", "max_retries", "5"), "max_retries = 5\n")
    ok(cli("config", "set", "backoff_base", "1.5"), "backoff_base = 1.5\n")
    ok(cli("config", "set", "job_timeout", "none"), "job_timeout = none\n")
    ok(cli("config", "set", "log_level", "debug"), "log_level = DEBUG\n")
    shown = json.loads(ok(cli("config", "show", "--json")).stdout)
    assert shown["max_retries"] == {"value": 5, "default": False}
    assert shown["backoff_base"] == {"value": 1.5, "default": False}
    assert re.search(r"^max_retries\s+5\s+\(set\)", ok(cli("config", "show")).stdout, re.M)
    ok(cli("enqueue", '{"id": "a", "command": "x"}'))
    assert read_job(spool, "a")["max_retries"] == 5
    ok(cli("config", "unset", "max_retries"), "max_retries = 3 (default)\n")
    assert json.loads(ok(cli("config", "show", "--json")).stdout)["max_retries"] == \
        {"value": 3, "default": True}


@pytest.mark.parametrize("args, stderr", [
    (("max_retries", "2.5"), "Error: max_retries must be an integer, got '2.5'\n"),
    (("backoff_base", "0"), "Error: backoff_base must be at least 1, got 0\n"),
    (("max_retries", "--", "-1"), "Error: max_retries must be at least 0, got -1\n"),
    (("log_level", "LOUD"),
     "Error: log_level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'\n"),
    (("retries", "3"), f"Error: unknown config key 'retries'; valid keys: {VALID_KEYS}\n"),
])
def test_config_set_refuses(cli, args, stderr):
    failed(cli("config", "set", *args), stderr)
    shown = json.loads(ok(cli("config", "show", "--json")).stdout)
    assert all(entry["default"] for entry in shown.values())


def test_config_set_negative_value_is_refused_as_a_value_not_as_an_option(cli):
    """`config set max_retries -1` must be the config error (exit 1), not click's
    "No such option: -1" usage error."""
    failed(cli("config", "set", "max_retries", "-1"),
           "Error: max_retries must be at least 0, got -1\n")


def test_config_unset_unknown_key(cli):
    ok(cli("init"))
    failed(cli("config", "unset", "retries"),
           f"Error: unknown config key 'retries'; valid keys: {VALID_KEYS}\n")


def test_config_usage(cli):
    assert cli("config", "set", "max_retries").exit_code == 2
    assert cli("config", "bogus").exit_code == 2


# ---- reindex ------------------------------------------------------------------------------

def test_reindex_empty_home(cli, spool):
    ok(cli("init"))
    ok(cli("reindex"), f"reindexed 0 jobs from {spool}\n")


def test_reindex_counts(cli, spool, drop):
    ok(cli("enqueue", "-", input='{"command": "a"}\n{"command": "b"}\n'))
    dead_job(drop, "d")
    ok(cli("reindex"), f"reindexed 3 jobs from {spool} (dead 1, pending 2)\n")


def test_delete_data_and_reindex_gives_the_same_lists(cli, home, drop, spool):
    ok(cli("config", "set", "settle_seconds", "0"))
    ok(cli("enqueue", "-", input="".join(
        json.dumps({"command": f"echo {n}", "priority": n % 3}) + "\n" for n in range(10))))
    ok(cli("enqueue", '{"id": "sched", "command": "x"}', "--delay", "3h"))
    ok(cli("enqueue", '{"id": "future", "command": "x", "run_at": "2031-05-05T05:05:05Z"}'))
    drop("minimal.json", '{"command": "echo dropped", "extra": {"kept": true}}', age=30)
    dead_job(drop, "dead1")
    dead_job(drop, "dead2", updated_at="2025-03-01T00:00:00.000000Z")
    drop("junk.json", b"\x00junk", age=30)
    drop("arr.json", "[1]", age=30)
    (spool / "pending" / "dir.json").mkdir()
    before = {args: ok(cli(*args)).stdout for args in (
        ("list", "--json"), ("list", "--state", "rejected", "--json"),
        ("list", "--state", "pending", "--json"), ("dlq", "list", "--json"))}
    assert len(json.loads(before[("list", "--json")])) == 15
    assert len(json.loads(before[("list", "--state", "rejected", "--json")])) == 3
    shutil.rmtree(home / "data")
    ok(cli("reindex"), f"reindexed 15 jobs from {spool} (dead 2, pending 13)\n")
    after = {args: ok(cli(*args)).stdout for args in before}
    assert after == before


def test_reindex_and_enqueue_fail_when_the_spool_is_not_a_directory(cli, spool):
    spool.write_text("not a directory")
    failed(cli("reindex"), f"Error: no queue at {spool.parent} (run `queuectl init` or "
                           "enqueue a job to create one)\n")
    failed(cli("enqueue", '{"command": "x"}'), f"Error: File exists: {spool}\n")
    assert spool.read_text() == "not a directory"


def test_a_home_that_is_a_file_is_a_usage_error(tmp_path, run_queuectl):
    (tmp_path / "afile").write_text("")
    ran = run_queuectl("--home", tmp_path / "afile", "status")
    assert ran.exit_code == 2
    assert ran.stderr.endswith(f"Error: Invalid value for '--home': Directory "
                               f"'{tmp_path / 'afile'}' is a file.\n")


# ---- the real command, its environment and the home --------------------------------------

def test_real_command_enqueue_from_stdin_and_errors_on_stderr(run_queuectl, spool):
    ran = run_queuectl("enqueue", "-", input='{"id": "r1", "command": "x"}\n'
                                             '{"id": "r2", "command": "y"}\n')
    assert (ran.exit_code, ran.stdout, ran.stderr) == (0, "r1\nr2\n", "")
    ran = run_queuectl("enqueue", '{"id": "r1", "command": "x"}')
    assert (ran.exit_code, ran.stdout, ran.stderr) == \
        (1, "", "Error: a job with id 'r1' already exists\n")
    ran = run_queuectl("show", "nope")
    assert (ran.exit_code, ran.stderr) == (1, f"Error: no job with id 'nope' in {spool}\n")
    ran = run_queuectl("list", "--bogus")
    assert ran.exit_code == 2 and "No such option '--bogus'" in ran.stderr


def test_home_option_wins_over_the_environment_which_wins_over_cwd(run_queuectl, tmp_path):
    env_home, opt_home, cwd_home = (tmp_path / n for n in ("env", "opt", "cwd"))
    for d in (env_home, opt_home, cwd_home):
        d.mkdir()
    assert run_queuectl("--home", opt_home, "enqueue", '{"id": "o", "command": "x"}',
                        home=env_home).exit_code == 0
    assert run_queuectl("enqueue", '{"id": "e", "command": "x"}', home=env_home).exit_code == 0
    assert os.listdir(opt_home / "spool" / "pending") == ["o.json"]
    assert os.listdir(env_home / "spool" / "pending") == ["e.json"]
    ran = subprocess.run([os.path.join(os.path.dirname(sys.executable), "queuectl"),
                          "enqueue", '{"id": "c", "command": "x"}'], cwd=cwd_home,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith("QUEUECTL_")},
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0
    assert os.listdir(cwd_home / "spool" / "pending") == ["c.json"]


def test_python_dash_m_and_version(home):
    (home / "spool" / "pending").mkdir(parents=True)
    ran = subprocess.run([sys.executable, "-m", "queuectl", "--home", str(home),
                          "status", "--json"], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0 and json.loads(ran.stdout)["home"] == str(home)
    ran = subprocess.run([sys.executable, "-m", "queuectl", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0 and "0.1.0" in ran.stdout


# ---- the shared fixtures themselves -------------------------------------------------------

def test_wait_until_sees_a_background_enqueue(spawn_queuectl, cli, wait_until):
    proc = spawn_queuectl("enqueue", "-")
    proc.stdin.write(b'{"id": "bg", "command": "x"}\n')
    proc.stdin.close()

    def listed():
        result = cli("list", "--json")
        return result.exit_code == 0 and [r["id"] for r in json.loads(result.stdout)] == ["bg"]
    assert wait_until(listed, timeout=30, message="job bg in `list --json`")
    with proc.stdout, proc.stderr:
        assert (proc.stdout.read(), proc.stderr.read()) == (b"bg\n", b"")
    assert proc.wait(timeout=30) == 0


def test_wait_until_fails_naming_what_it_waited_for(wait_until):
    with pytest.raises(pytest.fail.Exception) as info:
        wait_until(lambda: [], timeout=0.05, message="the impossible")
    assert str(info.value) == \
        "timed out after 0.05s waiting for the impossible (last result: [])"
    assert wait_until(lambda: 42, timeout=0.05) == 42
