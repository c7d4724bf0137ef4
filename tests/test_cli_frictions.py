"""The newcomer's frictions of issue 8, each pinned with exact output: reading commands that
never create a queue, `init`, script jobs, 80-column output (COLUMNS=80 and a real pty),
messages and exit codes, stale fields after a retry, foreign files."""

import json
import os
import re

import pytest

NO_QUEUE = "Error: no queue at {} (run `queuectl init` or enqueue a job to create one)\n"


def ok(result, stdout=None):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    if stdout is not None:
        assert result.stdout == stdout
    return result


def failed(result, stderr, code=1):
    assert (result.exit_code, result.stderr) == (code, stderr), result.stdout
    assert result.stdout == ""
    return result


def tree(path):
    """Every path under `path` (empty when it does not exist)."""
    found = []
    for root, dirs, files in os.walk(path):
        found += [os.path.join(root, n) for n in dirs + files]
    return sorted(found)


# ---- reading commands never create a queue ---------------------------------------------

READERS = [("status",), ("status", "--json"), ("list",), ("list", "--json"), ("show", "x"),
           ("metrics",), ("metrics", "--json"), ("logs", "x"), ("dlq", "list"),
           ("config", "show"), ("config", "get", "max_retries"), ("wait", "x"),
           ("fsck",), ("recover",), ("reindex",), ("cancel", "x"), ("retry", "x"),
           ("dlq", "retry", "x"), ("purge", "--state", "dead", "--older-than", "1d"),
           ("worker", "stop"), ("config", "unset", "max_retries"), ("resume",)]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_reading_commands_create_nothing_and_say_there_is_no_queue(cli, home, args):
    failed(cli(*args), NO_QUEUE.format(home))
    assert tree(home) == []


def test_a_home_that_does_not_exist_is_not_created(run_queuectl, tmp_path):
    missing = tmp_path / "nonexistent"
    ran = run_queuectl("--home", missing, "status")
    assert (ran.exit_code, ran.stdout, ran.stderr) == (1, "", NO_QUEUE.format(missing))
    assert not missing.exists()


def test_init_creates_the_whole_layout_and_prints_the_paths(cli, home):
    ok(cli("init"), f"queue created at {home}\n"
                    f"spool:   {home}/spool\n"
                    f"pending: {home}/spool/pending  (drop job files here)\n"
                    f"data:    {home}/data\n"
                    f"index:   {home}/data/queue.db\n")
    for name in ("tmp", "pending", "processing", "failed", "completed", "dead", "rejected",
                 "output"):
        assert (home / "spool" / name).is_dir()
    assert (home / "data" / "queue.db").is_file()
    assert json.loads(ok(cli("init", "--json")).stdout) == {
        "home": str(home), "spool": f"{home}/spool", "data": f"{home}/data",
        "index": f"{home}/data/queue.db", "pending": f"{home}/spool/pending", "created": False}


@pytest.mark.parametrize("args", [("enqueue", '{"command": "x"}'),
                                  ("config", "set", "max_retries", "2")], ids=" ".join)
def test_writing_commands_create_the_whole_layout(cli, home, args):
    ok(cli(*args))
    assert (home / "spool" / "pending").is_dir() and (home / "spool" / "output").is_dir()
    assert (home / "data" / "queue.db").is_file()
    ok(cli("status"))


def test_config_get(cli):
    ok(cli("config", "set", "max_retries", "5"), "max_retries = 5\n")
    ok(cli("config", "get", "max_retries"), "5\n")
    ok(cli("config", "get", "job_timeout"), "none\n")
    assert cli("config", "get", "nope").stderr.startswith("Error: unknown config key 'nope'")


# ---- exit codes and messages -------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("config", "set", "max_retries", "abc"), "max_retries must be an integer, got 'abc'"),
    (("enqueue", "-"), "no jobs on stdin (give one JSON object or JSON Lines)"),
    (("enqueue", "--delay", "99999999w", '{"command": "x"}'),
     "Invalid value for '--delay': 99999999w is out of range (the job would run after the "
     "year 9999)"),
    (("metrics", "--watch", "-1"), "Invalid value '-1': a negative number is not allowed here"),
    (("metrics", "--watch", "0"), "Invalid value for '--watch': 0.0 is not in the range "
                                  "x>=0.2."),
    (("enqueue", "--timeout", "-1", '{"command": "x"}'),
     "Invalid value for '--timeout': -1.0 is not in the range x>0."),
    (("wait", "x", "--timeout", "-1"),
     "Invalid value for '--timeout': -1.0 is not in the range x>=0."),
    (("worker", "stop", "--timeout", "-5"),
     "Invalid value for '--timeout': -5.0 is not in the range x>=0."),
    (("purge", "--state", "dead", "--older-than", "-1d"),
     "Invalid value for '--older-than': duration must look like 30s, 5m, 2h or 7d, got '-1d'"),
])
def test_invalid_values_exit_1_with_one_kind_of_message(cli, args, message):
    ok(cli("init"))
    failed(cli(*args, input=""), f"Error: {message}\n")


def test_a_directory_for_file_is_an_invalid_value(cli, tmp_path):
    failed(cli("enqueue", "--file", tmp_path),
           f"Error: Invalid value for '--file': File '{tmp_path}' is a directory.\n")


def test_usage_errors_still_exit_2(cli):
    result = cli("enqueue", "--bogus")
    assert result.exit_code == 2 and result.stderr.startswith("Usage: ")


def test_ctrl_c_exits_130_without_aborted(spawn_queuectl, cli, wait_until):
    import signal
    ok(cli("enqueue", '{"id": "w", "command": "x"}'))
    proc = spawn_queuectl("wait", "w")
    try:
        # wait polls the spool: once it has read its arguments it is inside the command.
        assert wait_until(lambda: _in_wait(proc.pid), timeout=20, message="wait running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (130, b"", b"")


def _in_wait(pid):
    """True once the process has opened the index (the command body is running)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith("queue.db")
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
