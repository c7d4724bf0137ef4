"""queuectl.job: strict JSON, field validation with one message per problem, ids, times and
the retry formula."""

import json
import re

import pytest

from queuectl import job as jobmod
from queuectl.errors import InvalidJob

T0 = 1_800_000_000.0   # 2027-01-15T08:00:00Z


def problems(doc, stem=None):
    with pytest.raises(InvalidJob) as info:
        jobmod.validate(doc, stem=stem)
    return info.value.problems


# ---- strict JSON ------------------------------------------------------------------------

def test_loads_object_accepts_a_plain_object():
    assert jobmod.loads_object(b'{"command": "echo \xc3\xa9", "n": 1.5}') == \
        {"command": "echo \u00e9", "n": 1.5}


@pytest.mark.parametrize("data, message", [
    (b"", "empty file: expected a JSON object"),
    (b"  \n\t", "empty file: expected a JSON object"),
    (b"[1, 2]", "a job must be a JSON object, got an array"),
    (b'"command"', "a job must be a JSON object, got a string"),
    (b"null", "a job must be a JSON object, got null"),
    (b"42", "a job must be a JSON object, got a number"),
    (b'{"command": ', "invalid JSON: Expecting value at line 1 column 13"),
    (b"{'command': 'x'}", "invalid JSON: Expecting property name enclosed in double quotes "
                          "at line 1 column 2"),
    (b'{"command": "x', "invalid JSON: Unterminated string starting at line 1 column 13"),
    (b'{"command": "x", "n": NaN}', "invalid JSON: NaN is not valid JSON"),
    (b'{"command": "x", "n": Infinity}', "invalid JSON: Infinity is not valid JSON"),
    (b'{"command": "x", "n": -Infinity}', "invalid JSON: -Infinity is not valid JSON"),
    (b'{"command": "x", "command": "y"}', "invalid JSON: duplicate key 'command'"),
    (b'{"command": "x", "a": {"k": 1, "k": 2}}', "invalid JSON: duplicate key 'k'"),
    (b'{"command": "x", "n": 1e400}', "invalid JSON: number '1e400' is out of range"),
    (b'{"command": "x", "n": ' + b"9" * 400 + b"}",
     "invalid JSON: a number has 400 digits (at most 300 are allowed)"),
    (b'{"command": "caf\xe9"}', "not valid UTF-8 (byte 16)"),
    (b'\xef\xbb\xbf{"command": "x"}',
     "file starts with a UTF-8 byte order mark; write plain UTF-8"),
    ('{"command": "x"}'.encode("utf-16"), "file is UTF-16; jobs must be UTF-8"),
    (b'{"command": "\\ud800"}',
     "key 'command' holds a lone surrogate, which is not valid Unicode"),
])
def test_loads_object_rejects(data, message):
    with pytest.raises(InvalidJob) as info:
        jobmod.loads_object(data)
    assert str(info.value) == message


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"command": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"command": "x", "a": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
])
def test_hostile_nesting_is_an_invalid_job_not_a_crash(data):
    with pytest.raises(InvalidJob) as info:
        jobmod.loads_object(data)
    assert str(info.value) == "invalid JSON: nested too deeply"


def test_dumps_round_trips_unknown_keys_and_unicode():
    doc = {"command": "echo \u00e9", "extra": {"nested": [1, None, True]}, "n": 2.5}
    data = jobmod.dumps(doc)
    assert data.endswith(b"\n")
    assert "\u00e9".encode() in data           # UTF-8, not \u escapes: `cat` shows it
    assert jobmod.loads_object(data) == doc


# ---- validation -------------------------------------------------------------------------

def test_validate_minimal_job_needs_only_a_command():
    assert jobmod.validate({"command": "true"}) == {"command": "true"}


@pytest.mark.parametrize("doc, message", [
    ({}, "command is required (the shell command to run)"),
    ({"command": None}, "command is required (the shell command to run)"),
    ({"command": ["ls", "-l"]}, "command must be a string, got an array"),
    ({"command": 3}, "command must be a string, got a number"),
    ({"command": "   "}, "command must not be empty"),
    ({"command": "a\x00b"}, "command must not contain NUL characters"),
    ({"command": "x", "priority": "high"}, "priority must be an integer, got 'high'"),
    ({"command": "x", "priority": 1.5}, "priority must be an integer, got 1.5"),
    ({"command": "x", "priority": 2**40},
     f"priority must be between {-jobmod.PRIORITY_LIMIT} and {jobmod.PRIORITY_LIMIT}, "
     f"got {2**40}"),
    ({"command": "x", "max_retries": -1}, "max_retries must be between 0 and 1000, got -1"),
    ({"command": "x", "max_retries": "3"}, "max_retries must be an integer, got '3'"),
    ({"command": "x", "attempts": -2}, "attempts must be between 0 and 1000000000, got -2"),
    ({"command": "x", "timeout": 0},
     "timeout must be a number of seconds > 0 or null, got 0"),
    ({"command": "x", "timeout": "10"},
     "timeout must be a number of seconds > 0 or null, got '10'"),
    ({"command": "x", "run_at": "tomorrow"},
     "run_at must be an ISO-8601 time like 2026-01-31T12:00:00Z, got 'tomorrow'"),
    ({"command": "x", "created_at": 12},
     "created_at must be an ISO-8601 time like 2026-01-31T12:00:00Z, got 12"),
    ({"command": "x", "exit_code": "1"}, "exit_code must be an integer, got '1'"),
    ({"command": "x", "last_error": 5}, "last_error must be a string, got 5"),
    ({"command": "x", "duration_s": "fast"}, "duration_s must be a number, got 'fast'"),
    ({"command": "x", "id": "../x"},
     "id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
     "letter or digit, got '../x'"),
    ({"command": "x", "id": ".hidden"},
     "id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
     "letter or digit, got '.hidden'"),
    ({"command": "x", "id": 7},
     "id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
     "letter or digit, got 7"),
])
def test_validate_names_the_field_and_the_value(doc, message):
    assert problems(doc) == [message]


def test_validate_reports_every_problem_at_once():
    found = problems({"priority": "high", "max_retries": -1, "timeout": 0})
    assert found == ["command is required (the shell command to run)",
                     "priority must be an integer, got 'high'",
                     "max_retries must be between 0 and 1000, got -1",
                     "timeout must be a number of seconds > 0 or null, got 0"]
    with pytest.raises(InvalidJob) as info:
        jobmod.validate({"priority": "high", "max_retries": -1, "timeout": 0})
    assert str(info.value) == "; ".join(found)


def test_booleans_are_not_integers():
    assert problems({"command": "x", "priority": True}) == \
        ["priority must be an integer, got True"]
    assert problems({"command": "x", "timeout": True})[0].startswith("timeout must be")


def test_id_rule_length_and_characters():
    assert jobmod.validate({"command": "x", "id": "a" * 128})["id"] == "a" * 128
    assert jobmod.validate({"command": "x", "id": "A9._-z"})["id"] == "A9._-z"
    assert len(problems({"command": "x", "id": "a" * 129})) == 1
    assert len(problems({"command": "x", "id": "a/b"})) == 1
    assert len(problems({"command": "x", "id": "a\n"})) == 1
    assert len(problems({"command": "x", "id": ""})) == 1


def test_stem_fills_a_missing_id_and_must_match_a_given_one():
    assert jobmod.validate({"command": "x"}, stem="job-1")["id"] == "job-1"
    assert jobmod.validate({"command": "x", "id": "job-1"}, stem="job-1")["id"] == "job-1"
    assert problems({"command": "x", "id": "other"}, stem="job-1") == \
        ["id 'other' does not match the file name 'job-1.json'"]


def test_state_key_is_ignored_and_unknown_keys_are_kept():
    doc = jobmod.validate({"command": "x", "state": "dead", "owner": {"team": ["a"]},
                           "cwd": "/tmp"})
    assert doc == {"command": "x", "owner": {"team": ["a"]}, "cwd": "/tmp"}


def test_times_are_normalised_to_fixed_width_utc():
    doc = jobmod.validate({"command": "x", "run_at": "2030-01-01T02:00:00+02:00",
                           "created_at": "2030-01-01T00:00:00"})
    assert doc["run_at"] == "2030-01-01T00:00:00.000000Z"
    assert doc["created_at"] == "2030-01-01T00:00:00.000000Z"


def test_complete_fills_defaults_without_replacing_values():
    filled = jobmod.complete({"command": "x"}, {"max_retries": 5}, T0)
    assert filled == {"command": "x", "priority": 0, "attempts": 0, "max_retries": 5,
                      "created_at": jobmod.iso(T0), "updated_at": jobmod.iso(T0)}
    given = {"command": "x", "priority": 3, "attempts": 2, "max_retries": 0,
             "created_at": "2020-01-01T00:00:00.000000Z"}
    kept = jobmod.complete(dict(given), {"max_retries": 5, "created_at": "ignored"}, T0)
    assert kept == {**given, "updated_at": "2020-01-01T00:00:00.000000Z"}
    from_stat = jobmod.complete({"command": "x"}, {"max_retries": 1,
                                                   "created_at": jobmod.iso(T0 - 60)}, T0)
    assert from_stat["created_at"] == jobmod.iso(T0 - 60)


# ---- ids, times, retries ----------------------------------------------------------------

def test_generated_ids_are_valid_unique_and_sort_by_creation_time():
    ids = [jobmod.new_id(T0 + i * 0.001) for i in range(200)]
    assert all(jobmod.ID_RE.match(i) for i in ids)
    assert sorted(ids) == ids
    same_instant = {jobmod.new_id(T0) for _ in range(100)}
    assert len(same_instant) == 100
    assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{11}-[0-9a-hjkmnp-tv-z]{7}", jobmod.new_id(T0))
    # The first 11 characters are the time: equal times share them, later ones sort after.
    assert jobmod.new_id(T0)[:11] == jobmod.new_id(T0)[:11] < jobmod.new_id(T0 + 1e-6)[:11]
    assert jobmod.new_id(T0)[12:14] == jobmod.host_tag()


def test_iso_and_parse_time_round_trip():
    assert jobmod.iso(T0) == "2027-01-15T08:00:00.000000Z"
    assert jobmod.parse_time(jobmod.iso(T0 + 0.25)) == T0 + 0.25
    assert jobmod.parse_time("2027-01-15T09:00:00+01:00") == T0
    with pytest.raises(ValueError):
        jobmod.parse_time("soon")


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1w", 604800),
    ("250ms", 0.25), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert jobmod.parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_rejects_with_a_hint():
    with pytest.raises(ValueError) as info:
        jobmod.parse_duration("soon")
    assert str(info.value) == "duration must look like 30s, 5m, 2h or 7d, got 'soon'"
    with pytest.raises(ValueError):
        jobmod.parse_duration("-5s")


def test_retry_delay_is_exponential_and_capped():
    assert [jobmod.retry_delay(n, 2, 3600) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert jobmod.retry_delay(20, 2, 3600) == 3600
    assert jobmod.retry_delay(100_000, 10, 60) == 60        # overflow is capped, not raised
    assert jobmod.retry_delay(3, 1, 3600) == 1


def test_exhausted_after_max_retries_plus_one_attempts():
    assert not jobmod.is_exhausted({"attempts": 3, "max_retries": 3})
    assert jobmod.is_exhausted({"attempts": 4, "max_retries": 3})
    assert jobmod.is_exhausted({"attempts": 1, "max_retries": 0})


def test_due_time_prefers_run_at_over_created_at():
    assert jobmod.due_time({"created_at": jobmod.iso(T0)}, T0 + 5) == T0
    assert jobmod.due_time({"created_at": jobmod.iso(T0),
                            "run_at": jobmod.iso(T0 + 60)}, T0) == T0 + 60


def test_only_run_at_schedules_a_job_a_future_created_at_is_ready_now():
    assert jobmod.due_time({"created_at": jobmod.iso(T0 + 3600)}, T0) == T0
    assert jobmod.due_time({"created_at": jobmod.iso(T0 + 0.5)}, T0) == T0 + 0.5   # order
    assert jobmod.due_time({}, T0) == 0.0


def test_dumps_refuses_nan():
    with pytest.raises(ValueError):
        jobmod.dumps({"command": "x", "n": float("nan")})
    assert json.loads(jobmod.dumps({"command": "x"})) == {"command": "x"}


# ---- issue 9: the fast paths write exactly what json and datetime would ----------------------

def test_dumps_is_byte_for_byte_json_dumps_with_indent_2():
    """Flat jobs (every value a scalar) are exactly json.dumps(indent=2); nested values
    (the attempt history, a submitter's metadata) are one field per line, compact inside,
    and read back equal."""
    docs = [{"id": "a", "command": "echo 'hi' \"q\" \\ \n\t é \u2028 \x01", "priority": -3,
             "run_at": None, "x": True, "y": False, "f": 0.1, "g": 1e300, "h": -0.0,
             "i": 10**30}, {}]
    for doc in docs:
        assert jobmod.dumps(doc) == (json.dumps(doc, indent=2, ensure_ascii=False,
                                              allow_nan=False) + "\n").encode()
    nested = {"nested": {"a": [1, 2]}, "id": "b", "l": [], "history": [{"n": 1}, {"n": 2}]}
    assert jobmod.dumps(nested) == (b'{\n  "nested": {"a": [1, 2]},\n  "id": "b",\n  "l": [],\n'
                                    b'  "history": [\n    {"n": 1},\n    {"n": 2}\n  ]\n}\n')
    assert json.loads(jobmod.dumps(nested)) == nested
    with pytest.raises(ValueError):
        jobmod.dumps({"f": float("nan")})


def test_iso_matches_datetime_to_the_microsecond_including_rounding():
    import random
    from datetime import datetime, timezone
    stamps = [0.0, 1.9999995, 1.0000005, 1700000000.9999996, 1e9 + 0.5e-6, -1.5]
    rng = random.Random(9)
    stamps += [rng.uniform(0, 4e9) for _ in range(20000)]
    for ts in stamps:
        assert jobmod.iso(ts) == datetime.fromtimestamp(ts, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), ts
