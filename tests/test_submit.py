"""queuectl.submit: JSON objects and JSON Lines, scripts frozen into jobs, command-line
overrides, and all-or-nothing enqueueing."""

import fcntl
import json
import os
import subprocess

import pytest

from queuectl import job as jobmod
from queuectl.errors import DuplicateId, InvalidJob
from queuectl.home import Home
from queuectl.settings_store import set_value
from queuectl.submit import apply_overrides, enqueue, parse_submission, script_job

T0 = 1_800_000_000.0


@pytest.fixture
def h(home):
    queue = Home(str(home), clock=lambda: T0)
    yield queue
    queue.close()


def run_command(command, cwd, input=None):
    """Run a job's command the way a worker does: /bin/sh -c, stdin /dev/null unless given."""
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          cwd=cwd, timeout=30, input=input,
                          stdin=subprocess.DEVNULL if input is None else None)


def pending_files(spool):
    try:
        return sorted(os.listdir(spool / "pending"))
    except FileNotFoundError:
        return []


# ---- parsing ------------------------------------------------------------------------------

def test_one_object():
    assert parse_submission(b'{"command": "x", "priority": 2}') == \
        [{"command": "x", "priority": 2}]


def test_a_pretty_printed_object_is_one_job():
    text = json.dumps({"command": "x", "priority": 2}, indent=2).encode()
    assert parse_submission(text) == [{"command": "x", "priority": 2}]


def test_json_lines_skip_blank_lines():
    assert parse_submission(b'{"command": "a"}\n\n{"command": "b"}\r\n') == \
        [{"command": "a"}, {"command": "b"}]


def test_json_lines_error_names_the_line():
    with pytest.raises(InvalidJob) as info:
        parse_submission(b'{"command": "a"}\n{"command": "b",}\n')
    assert str(info.value) == ("line 2: invalid JSON: Expecting property name enclosed in "
                               "double quotes at line 1 column 17")
    with pytest.raises(InvalidJob) as info:
        parse_submission(b'{"command": "a"}\n[1]\n')
    assert str(info.value) == "line 2: a job must be a JSON object, got an array"


def test_a_single_bad_document_reports_itself():
    with pytest.raises(InvalidJob) as info:
        parse_submission(b'{"command": NaN}')
    assert str(info.value) == "invalid JSON: NaN is not valid JSON"


# ---- scripts ------------------------------------------------------------------------------

def test_python_script_by_extension_is_frozen(tmp_path):
    script = tmp_path / "job.py"
    script.write_text('import sys\nprint("frozen", sys.version_info[0])\n')
    doc = script_job(str(script))
    assert doc["script"] == str(script)
    assert f" python3 /dev/fd/9 9<<" in doc["command"].split("\n")[0]
    script.write_text('print("edited")\n')
    ran = run_command(doc["command"], tmp_path)
    assert (ran.returncode, ran.stdout) == (0, "frozen 3\n")


def test_shell_script_by_extension_is_frozen(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("echo 'quotes $HOME `x`' \"$0\" | tr a-z A-Z\nexit 3")
    doc = script_job(str(script))
    assert f" /bin/sh /dev/fd/9 9<<" in doc["command"].split("\n")[0]
    os.unlink(script)
    ran = run_command(doc["command"], tmp_path)
    assert ran.returncode == 3
    assert ran.stdout == "QUOTES $HOME `X` /DEV/FD/9\n"


def test_shebang_wins_over_the_extension(tmp_path):
    script = tmp_path / "job.sh"      # says .sh, but the shebang says python
    script.write_text("#!/usr/bin/env python3\nprint(6 * 7)\n")
    doc = script_job(str(script))
    assert f" /usr/bin/env python3 /dev/fd/9 9<<" in doc["command"].split("\n")[0]
    ran = run_command(doc["command"], tmp_path)
    assert (ran.returncode, ran.stdout) == (0, "42\n")


def test_shebang_without_extension(tmp_path):
    script = tmp_path / "nightly"
    script.write_text("#!/bin/sh\necho from-shebang\n")
    ran = run_command(script_job(str(script))["command"], tmp_path)
    assert ran.stdout == "from-shebang\n"


def test_a_script_cannot_end_its_own_heredoc(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("echo one\nQUEUECTL_SCRIPT\nEOF\necho two\n")
    ran = run_command(script_job(str(script))["command"], tmp_path)
    assert ran.stdout == "one\ntwo\n"


def test_a_long_script_that_reads_stdin_does_not_eat_itself(tmp_path):
    """Past sh's 8 KiB read buffer, a `cat` in a script fed on stdin would swallow the rest
    of the script: the job would end early, silently, with status 0."""
    script = tmp_path / "long.sh"
    padding = "".join(f": padding line {n} {'x' * 40}\n" for n in range(600))
    script.write_text("cat > /dev/null\n" + padding + "echo reached the end\nexit 4\n")
    ran = run_command(script_job(str(script))["command"], tmp_path)
    assert (ran.returncode, ran.stdout) == (4, "reached the end\n")


@pytest.mark.parametrize("shebang", ["#!/bin/sh", "#!/usr/bin/env bash"])
def test_a_script_reads_the_jobs_stdin_not_its_own_text(tmp_path, shebang):
    script = tmp_path / "job"
    script.write_text(f"{shebang}\nread first\necho \"got:$first\"\necho last line\n")
    command = script_job(str(script))["command"]
    assert run_command(command, tmp_path).stdout == "got:\nlast line\n"
    assert run_command(command, tmp_path, input="hello\n").stdout == \
        "got:hello\nlast line\n"


def test_an_inherited_fd_9_stays_open_in_the_jobs_shell(tmp_path):
    """A worker passes its locked job fd to the job, so the lock outlives a killed worker.
    Even if that fd is number 9, the one the script arrives on, the job keeps the lock."""
    script = tmp_path / "job.sh"
    script.write_text("echo started\nread go\necho \"got:$go\"\n")
    command = script_job(str(script))["command"]
    lock_path = tmp_path / "job.json"
    lock_path.write_text("{}")
    fd = os.open(lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    saved = os.dup(9) if _is_open(9) else None
    os.dup2(fd, 9)
    os.close(fd)
    try:
        job = subprocess.Popen(["/bin/sh", "-c", command], pass_fds=(9,), text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    finally:
        os.close(9)                        # the worker is gone; only the job holds it now
        if saved is not None:
            os.dup2(saved, 9)
            os.close(saved)
    try:
        assert job.stdout.readline() == "started\n"
        probe = os.open(lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            job.stdin.write("go\n")
            job.stdin.close()
            assert job.stdout.read() == "got:go\n"
            assert job.wait(timeout=30) == 0
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)   # released with the job
        finally:
            os.close(probe)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_unknown_extension_without_shebang(tmp_path):
    script = tmp_path / "job.txt"
    script.write_text("echo x\n")
    with pytest.raises(InvalidJob) as info:
        script_job(str(script))
    assert str(info.value) == (f"cannot tell how to run {str(script)!r}: add a shebang line or "
                               "use one of the extensions .bash, .js, .pl, .py, .rb, .sh, .zsh")


@pytest.mark.parametrize("content, problem", [
    (b"echo caf\xe9\n", "is not UTF-8 text"),
    (b"echo a\x00b\n", "contains NUL bytes (a binary file?)"),
])
def test_unusable_script_content(tmp_path, content, problem):
    script = tmp_path / "job.sh"
    script.write_bytes(content)
    with pytest.raises(InvalidJob) as info:
        script_job(str(script))
    assert str(info.value) == f"script {str(script)!r} {problem}"


def test_missing_script(tmp_path):
    with pytest.raises(InvalidJob) as info:
        script_job(str(tmp_path / "nope.sh"))
    assert str(info.value) == \
        f"cannot read script {str(tmp_path / 'nope.sh')!r}: No such file or directory"


# ---- overrides and enqueue ----------------------------------------------------------------

def test_overrides_win_and_none_means_not_given():
    docs = apply_overrides([{"command": "x", "priority": 1, "max_retries": 2}],
                           {"priority": 9, "max_retries": None, "timeout": 2.5,
                            "run_at": None, "delay": None}, T0)
    assert docs == [{"command": "x", "priority": 9, "max_retries": 2, "timeout": 2.5}]


def test_delay_becomes_run_at():
    docs = apply_overrides([{"command": "x"}], {"delay": "90s"}, T0)
    assert docs == [{"command": "x", "run_at": jobmod.iso(T0 + 90)}]
    with pytest.raises(InvalidJob) as info:
        apply_overrides([{"command": "x"}], {"delay": "soon"}, T0)
    assert str(info.value) == "Invalid value for '--delay': duration must look like 30s, 5m, 2h or 7d, got 'soon'"


@pytest.mark.parametrize("key", ["id", "job_id"])
def test_id_override_for_one_job_only(key):
    assert apply_overrides([{"command": "x"}], {key: "mine"}, T0) == \
        [{"command": "x", "id": "mine"}]
    with pytest.raises(InvalidJob) as info:
        apply_overrides([{"command": "a"}, {"command": "b"}], {key: "mine"}, T0)
    assert str(info.value) == "--id can only be used with a single job"


def test_enqueue_writes_the_complete_record(h, spool):
    [job_id] = enqueue(h, [{"command": "echo hi", "owner": {"team": "ops"}}], {})
    on_disk = json.loads((spool / "pending" / f"{job_id}.json").read_bytes())
    assert on_disk == {"command": "echo hi", "owner": {"team": "ops"}, "id": job_id,
                       "priority": 0, "attempts": 0, "max_retries": 3,
                       "created_at": jobmod.iso(T0), "updated_at": jobmod.iso(T0)}
    assert os.listdir(spool / "tmp") == []


def test_max_retries_is_taken_from_config_at_enqueue(h, spool):
    set_value(h, "max_retries", "6")
    enqueue(h, [{"command": "x", "id": "a"}], {})
    set_value(h, "max_retries", "1")
    assert json.loads((spool / "pending" / "a.json").read_bytes())["max_retries"] == 6


def test_a_batch_keeps_its_order_in_ids_and_created_at(h):
    ids = enqueue(h, [{"command": f"echo {n}"} for n in range(50)], {})
    assert ids == sorted(ids) and len(set(ids)) == 50
    rows = {r["id"]: r for r in h.index.list("pending")}
    stamps = [rows[i]["created_at"] for i in ids]
    assert stamps == sorted(stamps) and len(set(stamps)) == 50


def test_one_invalid_job_in_a_batch_writes_nothing(h, spool):
    with pytest.raises(InvalidJob) as info:
        enqueue(h, [{"command": "ok"}, {"command": "ok"}, {"command": "x", "priority": "hi"}],
                {})
    assert str(info.value) == "job 3: priority must be an integer, got 'hi'"
    assert pending_files(spool) == []
    assert h.index.counts() == {}


def test_a_duplicate_in_the_batch_or_the_spool_writes_nothing(h, spool):
    with pytest.raises(DuplicateId) as info:
        enqueue(h, [{"command": "a", "id": "twice"}, {"command": "b", "id": "twice"}], {})
    assert str(info.value) == "a job with id 'twice' already exists"
    assert pending_files(spool) == []
    enqueue(h, [{"command": "a", "id": "taken"}], {})
    os.rename(spool / "pending" / "taken.json", spool / "dead" / "taken.json")
    with pytest.raises(DuplicateId):
        enqueue(h, [{"command": "new", "id": "fresh"}, {"command": "b", "id": "taken"}], {})
    assert pending_files(spool) == []
    assert json.loads((spool / "dead" / "taken.json").read_bytes())["command"] == "a"


def test_an_oversize_job_is_refused_before_writing(h, spool):
    set_value(h, "max_job_bytes", "200")
    with pytest.raises(InvalidJob) as info:
        enqueue(h, [{"command": "x" * 300}], {})
    assert str(info.value).startswith("job is ") and \
        str(info.value).endswith(" bytes, over max_job_bytes (200)")
    assert pending_files(spool) == []
