"""The exit-code retry policy: the defaults (75 retries, 64-78 otherwise permanent, all else
retries), config changes, and per-job retry_on / no_retry_on, with real workers."""

import pytest

from queuectl.config import Settings, format_codes, parse_codes
from queuectl.errors import InvalidConfig
from queuectl.retry_policy import permanent_reason
from workerkit import pool, read_job, states_of  # noqa: F401


def attempts_and_note(spool, job_id):
    job = read_job(spool, job_id, "dead")
    return job["attempts"], job["history"][-1]["next"]


def test_default_policy_and_per_job_overrides_with_real_workers(pool, spool, wait_until):
    pool.config(backoff_max=0)
    pool.start(2)
    for code in (0, 1, 64, 75, 78):
        pool.enqueue({"id": f"exit{code}", "command": f"exit {code}", "max_retries": 1})
    pool.enqueue({"id": "retry64", "command": "exit 64", "max_retries": 1, "retry_on": [64]})
    pool.enqueue({"id": "stop1", "command": "exit 1", "max_retries": 1, "no_retry_on": [1]})
    ids = ["exit1", "exit64", "exit75", "exit78", "retry64", "stop1"]
    wait_until(lambda: all(states_of(spool, i) == ["dead"] for i in ids) and
               states_of(spool, "exit0") == ["completed"], timeout=30)
    assert read_job(spool, "exit0", "completed")["attempts"] == 1
    assert attempts_and_note(spool, "exit1") == (2, "dead: retries exhausted")
    assert attempts_and_note(spool, "exit64") == \
        (1, "dead: exit code 64 is permanent (retry policy)")
    assert attempts_and_note(spool, "exit75") == (2, "dead: retries exhausted")
    assert attempts_and_note(spool, "exit78") == \
        (1, "dead: exit code 78 is permanent (retry policy)")
    assert attempts_and_note(spool, "retry64") == (2, "dead: retries exhausted")
    assert attempts_and_note(spool, "stop1") == \
        (1, "dead: exit code 1 is permanent (the job's no_retry_on)")
    why = pool.cli("why", "exit64").stdout.strip()
    assert why == "dead: exit code 64 is permanent (retry policy) " \
                  "(queuectl dlq retry exit64 runs it again)"


def test_config_changes_the_policy(pool, spool, wait_until):
    pool.config(backoff_max=0, permanent_exit_codes="none", retry_exit_codes="75")
    pool.start(1)
    pool.enqueue({"id": "usage", "command": "exit 64", "max_retries": 1})
    wait_until(lambda: states_of(spool, "usage") == ["dead"], timeout=20)
    assert attempts_and_note(spool, "usage") == (2, "dead: retries exhausted")


def test_policy_precedence():
    defaults = Settings()
    assert permanent_reason({}, 64, defaults) == "exit code 64 is permanent (retry policy)"
    assert permanent_reason({}, 75, defaults) is None
    assert permanent_reason({}, 2, defaults) is None
    assert permanent_reason({}, None, defaults) is None          # timeouts, signals
    assert permanent_reason({"retry_on": [64]}, 64, defaults) is None
    assert permanent_reason({"no_retry_on": [75]}, 75, defaults) == \
        "exit code 75 is permanent (the job's no_retry_on)"
    both = Settings({"retry_exit_codes": "64", "permanent_exit_codes": "64-78"})
    assert permanent_reason({}, 64, both) is None                # retry_exit_codes win


def test_exit_code_lists():
    assert format_codes(parse_codes("78,64-70, 71")) == "64-71,78"
    assert parse_codes("none") == frozenset()
    with pytest.raises(InvalidConfig, match="must be exit codes 0-255"):
        parse_codes("300")
    with pytest.raises(InvalidConfig, match="ranges like 75 or 64-78,100"):
        parse_codes("abc")


def test_cli_options_and_config(cli, spool):
    assert cli("config", "set", "permanent_exit_codes", "70-64").exit_code == 1
    result = cli("config", "set", "permanent_exit_codes", "64,65,66")
    assert result.stdout == "permanent_exit_codes = 64-66\n"
    result = cli("enqueue", "--id", "j", "--retry-on", "64-66", "--no-retry-on", "1",
                 '{"command": "x"}')
    assert result.exit_code == 0, result.stderr
    job = read_job(spool, "j", "pending")
    assert (job["retry_on"], job["no_retry_on"]) == ([64, 65, 66], [1])
    bad = cli("enqueue", '{"command": "x", "retry_on": ["64"]}')
    assert (bad.exit_code, bad.stderr) == \
        (1, "Error: retry_on must be a list of exit codes 0-255, got ['64']\n")
