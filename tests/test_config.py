"""queuectl.config: the defaults table and the validation of every key, plus the settings
stored in the index (real SQLite file) and read back by a new process."""

import pytest

from queuectl import config
from queuectl.config import Settings, parse_value
from queuectl.errors import InvalidConfig
from queuectl.home import Home
from queuectl.settings_store import set_value, unset_value

VALID_KEYS = ("backoff_base, backoff_max, completed_retention, hook_timeout, job_timeout, "
              "log_level, max_job_bytes, max_retries, metrics_textfile, on_dead, on_finish, "
              "permanent_exit_codes, retry_exit_codes, settle_seconds, "
              "shutdown_timeout, worker_poll_interval")


def refused(key, text):
    with pytest.raises(InvalidConfig) as info:
        parse_value(key, text)
    return str(info.value)


def test_defaults_from_the_issue():
    s = Settings()
    assert (s.max_retries, s.backoff_base, s.backoff_max, s.log_level, s.worker_poll_interval,
            s.job_timeout, s.shutdown_timeout, s.settle_seconds, s.max_job_bytes) == \
        (3, 2, 3600, "INFO", 1, None, 30, 2, 1048576)
    assert all(is_default for _, _, is_default, _ in s.rows())


@pytest.mark.parametrize("key, text, value", [
    ("max_retries", "0", 0), ("max_retries", "10", 10),
    ("backoff_base", "1", 1), ("backoff_base", "1.5", 1.5),
    ("backoff_max", "0", 0), ("log_level", "debug", "DEBUG"),
    ("worker_poll_interval", "0.1", 0.1), ("job_timeout", "none", None),
    ("job_timeout", "2.5", 2.5), ("settle_seconds", "0", 0),
    ("max_job_bytes", "4096", 4096), ("shutdown_timeout", "0", 0),
])
def test_valid_values_are_typed(key, text, value):
    assert parse_value(key, text) == value
    assert type(parse_value(key, text)) is type(value)


@pytest.mark.parametrize("key, text, message", [
    ("max_retries", "2.5", "max_retries must be an integer, got '2.5'"),
    ("max_retries", "-1", "max_retries must be at least 0, got -1"),
    ("max_retries", "three", "max_retries must be a number, got 'three'"),
    ("backoff_base", "0", "backoff_base must be at least 1, got 0"),
    ("backoff_base", "0.5", "backoff_base must be at least 1, got 0.5"),
    ("backoff_max", "-1", "backoff_max must be at least 0, got -1"),
    ("worker_poll_interval", "0", "worker_poll_interval must be greater than 0, got 0"),
    ("job_timeout", "0", "job_timeout must be greater than 0, got 0"),
    ("max_job_bytes", "1.5e3", "max_job_bytes must be an integer, got '1.5e3'"),
    ("settle_seconds", "nan", "settle_seconds must be a finite number, got 'nan'"),
    ("shutdown_timeout", "inf", "shutdown_timeout must be a finite number, got 'inf'"),
    ("log_level", "LOUD", "log_level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
])
def test_invalid_values_are_refused_with_a_clear_message(key, text, message):
    assert refused(key, text) == message


def test_unknown_key_lists_the_valid_keys():
    assert refused("retries", "3") == f"unknown config key 'retries'; valid keys: {VALID_KEYS}"
    assert sorted(config.KEYS) == VALID_KEYS.split(", ")


def test_a_hand_edited_bad_stored_value_falls_back_to_the_default():
    s = Settings({"max_retries": "lots", "backoff_base": 3, "nonsense": 1})
    assert s.max_retries == 3 and s.backoff_base == 3
    assert {k: d for k, _, d, _ in s.rows()}["backoff_base"] is False
    assert {k: d for k, _, d, _ in s.rows()}["max_retries"] is True


def test_settings_are_stored_in_the_index_and_seen_by_a_new_home(home):
    first = Home(str(home))
    assert set_value(first, "max_retries", "5") == 5
    assert set_value(first, "job_timeout", "none") is None
    first.close()
    assert (home / "data" / "queue.db").is_file()
    second = Home(str(home))
    assert second.settings.max_retries == 5
    assert unset_value(second, "max_retries") == 3
    second.close()
    assert Home(str(home)).settings.max_retries == 3


def test_store_refuses_before_writing(home):
    h = Home(str(home))
    with pytest.raises(InvalidConfig):
        set_value(h, "backoff_base", "0")
    with pytest.raises(InvalidConfig):
        unset_value(h, "nope")
    assert h.index.config() == {}
    h.close()


def test_max_job_bytes_setting_reaches_the_spool(home):
    h = Home(str(home))
    set_value(h, "max_job_bytes", "100")
    h.close()
    again = Home(str(home))
    assert again.settings.max_job_bytes == 100
    assert again.spool.max_job_bytes == 100
    again.close()
