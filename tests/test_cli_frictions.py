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
