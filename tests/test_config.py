"""queuectl.config: the defaults table and the validation of every key, plus the settings
stored in data/config.json and read back by a new process, whatever happens to the index."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from queuectl import config
from queuectl.config import Settings, parse_value
from queuectl.errors import InvalidConfig
from queuectl.home import Home
from queuectl.settings_store import set_value, unset_value

VALID_KEYS = ("backoff_base, backoff_max, completed_retention, hook_timeout, job_timeout, "
              "log_level, max_job_bytes, max_retries, metrics_textfile, on_dead, on_finish, "
              "permanent_exit_codes, retry_exit_codes, settle_seconds, "
              "shutdown_timeout, spool_shared, worker_poll_interval")


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
    ("max_retries", "three", "max_retries must be an integer, got 'three'"),
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


def test_settings_are_stored_in_data_config_json_and_seen_by_a_new_home(home):
    first = Home(str(home))
    assert set_value(first, "max_retries", "5") == 5
    assert set_value(first, "job_timeout", "none") is None
    first.close()
    assert json.loads((home / "data" / "config.json").read_text()) == \
        {"max_retries": 5, "job_timeout": None}
    assert not (home / "data" / "queue.db").exists()     # config never needs the index
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
    assert not (home / "data" / "config.json").exists()
    h.close()


def test_max_job_bytes_setting_reaches_the_spool(home):
    h = Home(str(home))
    set_value(h, "max_job_bytes", "100")
    h.close()
    again = Home(str(home))
    assert again.settings.max_job_bytes == 100
    assert again.spool.max_job_bytes == 100
    again.close()


# ---- issue 8, bug 3: settings never silently fall back to defaults ----------------------------

LOCK_HOLDER = ("import sqlite3, sys, time\n"
               "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
               "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"      # readers locked out too
               "db.execute('BEGIN EXCLUSIVE')\n"
               "db.execute('DELETE FROM looks')\n"
               "print('locked', flush=True)\n"
               "sys.stdin.read()\n")


def _old_completed_job(home, job_id="old"):
    """A job completed 30 days ago (past the default 7-day retention)."""
    h = Home(str(home))
    h.spool.ensure_layout()
    path = home / "spool" / "completed" / f"{job_id}.json"
    path.write_text(json.dumps({"id": job_id, "command": "true", "attempts": 1,
                                "exit_code": 0}))
    then = os.path.getmtime(path) - 30 * 86400
    os.utime(path, (then, then))
    h.close()
    return path


def _purge_as_a_worker(home):
    from queuectl.worker import Worker
    worker = Worker(Home(str(home)))
    try:
        worker.home.reload_settings()       # as on every rescan
        worker.purge_expired()
    except Exception:                       # only the files matter here
        pass
    finally:
        worker.home.close()


@pytest.mark.parametrize("fault", ["locked", "garbage"])
def test_an_unusable_index_never_turns_retention_back_on(home, fault):
    """With completed_retention none, a locked or corrupt index must not make a worker
    purge completed jobs (it used to read config from the index and fall back to the
    7-day default on any error)."""
    h = Home(str(home))
    set_value(h, "completed_retention", "none")
    h.index.counts()                        # the index exists, as in any used home
    h.close()                               # (the last close checkpoints and drops -wal)
    job = _old_completed_job(home)
    db = home / "data" / "queue.db"
    holder = None
    if fault == "locked":
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "locked\n"
    else:
        db.write_bytes(os.urandom(8192))
    try:
        _purge_as_a_worker(home)
    finally:
        if holder is not None:
            holder.communicate("", timeout=30)
    assert job.exists()
    assert Home(str(home)).settings.completed_retention is None


def test_deleting_the_index_keeps_the_settings(home):
    set_value(Home(str(home)), "max_retries", "7")
    Home(str(home)).index.counts()
    for name in os.listdir(home / "data"):
        if name.startswith("queue.db"):
            os.unlink(home / "data" / name)
    h = Home(str(home))
    assert (h.settings.max_retries, h.settings.note) == (7, None)
    h.close()


def test_an_unreadable_config_file_keeps_the_last_good_settings(home, caplog):
    h = Home(str(home))
    set_value(h, "completed_retention", "none")
    set_value(h, "max_retries", "9")
    (home / "data" / "config.json").write_text('{"max_retries": 9, "completed_rete')
    for _ in range(3):
        settings = h.reload_settings()
    assert (settings.completed_retention, settings.max_retries) == (None, 9)
    assert settings.note.startswith("kept the last good settings (data/config.json "
                                    "unreadable: not valid JSON")
    assert [r.getMessage() for r in caplog.records].count(f"settings: {settings.note}") == 1
    fresh = Home(str(home))                 # a process with no last good settings
    assert fresh.settings.max_retries == 3 and fresh.settings.note.startswith("defaults (")
    with pytest.raises(InvalidConfig, match="cannot read data/config.json"):
        set_value(h, "max_retries", "1")    # never overwrites what it could not read
    h.close()


def test_deleting_data_makes_status_and_the_log_say_settings_are_defaults(home, cli):
    assert cli("config", "set", "completed_retention", "none").exit_code == 0
    assert cli("enqueue", '{"id": "a", "command": "true"}').exit_code == 0
    assert json.loads(cli("status", "--json").stdout)["settings_note"] is None
    assert "settings:" not in cli("status").stdout
    shutil.rmtree(home / "data")
    report = json.loads(cli("status", "--json").stdout)
    assert report["settings_note"] == "defaults (data/config.json missing)"
    assert "\nsettings: defaults (data/config.json missing)\n" in cli("status").stdout
    assert not (home / "data" / "config.json").exists()    # the loss stays visible
    h = Home(str(home))
    assert h.settings.completed_retention == 604800
    h.close()
    log = (home / "data" / "logs" / "queuectl.log").read_text()
    assert "WARNING cli[" in log and "settings: defaults (data/config.json missing)" in log


def test_a_new_home_gets_its_config_file_and_no_note(home, cli):
    assert cli("enqueue", '{"id": "a", "command": "true"}').exit_code == 0
    assert json.loads(cli("status", "--json").stdout)["settings_note"] is None
    assert json.loads((home / "data" / "config.json").read_text()) == {}


def test_config_kept_in_the_index_by_an_older_version_moves_to_the_file(home):
    h = Home(str(home))
    h.index.set_config("max_retries", 6)           # as versions before config.json did
    h.index.set_config("completed_retention", None)
    h.close()
    assert not (home / "data" / "config.json").exists()
    h = Home(str(home))
    assert (h.settings.max_retries, h.settings.completed_retention, h.settings.note) == \
        (6, None, None)
    assert json.loads((home / "data" / "config.json").read_text()) == \
        {"max_retries": 6, "completed_retention": None}
    assert h.index.config() == {}
    h.close()
