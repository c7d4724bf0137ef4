"""The newcomer's frictions of issue 8, each pinned with exact output: reading commands that
never create a queue, `init`, script jobs, 80-column output (COLUMNS=80 and a real pty),
messages and exit codes, stale fields after a retry, foreign files."""

import json
import os
import re

import pytest

from test_cli import failed, ok

NO_QUEUE = "Error: no queue at {} (run `queuectl init` or enqueue a job to create one)\n"


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
    """True once the process sleeps between two looks at the spool (the command body is
    running: start-up and imports never sleep)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "nanosleep" in f.read()
    except OSError:
        return False


# ---- ids: short generated ids, unique prefixes ----------------------------------------

def test_generated_ids_are_19_characters(cli):
    job_id = ok(cli("enqueue", '{"command": "x"}')).stdout.strip()
    assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{11}-[0-9a-hjkmnp-tv-z]{7}", job_id)


def test_every_command_taking_an_id_accepts_a_unique_prefix(cli, spool):
    ok(cli("enqueue", '{"id": "report-2026", "command": "x"}'))
    ok(cli("enqueue", '{"id": "backup-a", "command": "x"}'))
    ok(cli("enqueue", '{"id": "backup-b", "command": "x"}'))
    assert ok(cli("show", "rep")).stdout.startswith("id:       report-2026\n")
    ok(cli("cancel", "rep"), "report-2026: cancelled (was pending; now in dead/)\n")
    ok(cli("dlq", "retry", "report"), "report-2026: moved to pending (attempts reset)\n")
    failed(cli("show", "backup"), "Error: id prefix 'backup' matches 2 jobs: backup-a, "
                                  "backup-b; give more characters\n")
    failed(cli("cancel", "back"), "Error: id prefix 'back' matches 2 jobs: backup-a, "
                                  "backup-b; give more characters\n")
    failed(cli("show", "nothing"), f"Error: no job with id 'nothing' in {spool}\n")


# ---- scripts added with --file -----------------------------------------------------------

def test_a_script_job_is_named_by_its_file(cli, tmp_path, spool):
    script = tmp_path / "task.py"
    script.write_text("import os\nprint(__file__, os.environ['QUEUECTL_SCRIPT'])\n")
    ok(cli("enqueue", "--id", "s", "--file", script))
    lines = ok(cli("list")).stdout.splitlines()
    assert lines[1:] == ["ID  STATE    PRI  TRIES  WHEN   COMMAND / LAST ERROR",
                         "s   pending  0    0/4    ready  task.py (frozen copy)"]
    rows = json.loads(ok(cli("list", "--json")).stdout)
    assert rows[0]["script"] == str(script)
    shown = ok(cli("show", "s")).stdout
    assert "\ncommand:      task.py (frozen copy)\n" in shown
    assert f"\nscript:       {script}\n" in shown
    assert shown.endswith("--- frozen copy of task.py, run by python3 ---\n"
                          "import os\n"
                          "print(__file__, os.environ['QUEUECTL_SCRIPT'])\n"
                          "--- end of script text ---\n")
    assert json.loads(ok(cli("show", "s", "--json")).stdout)["job"]["script"] == str(script)


def test_inside_a_frozen_script_dollar_0_is_dev_fd_9_and_the_origin_is_in_the_env(
        cli, run_queuectl, tmp_path, home):
    script = tmp_path / "dir with space" / "task.sh"
    script.parent.mkdir()
    script.write_text('echo "0=$0"\necho "script=$QUEUECTL_SCRIPT"\n'
                      'echo "dir=$QUEUECTL_SCRIPT_DIR"\ncat "$QUEUECTL_SCRIPT_DIR/data.txt"\n')
    (script.parent / "data.txt").write_text("beside\n")
    ok(cli("enqueue", "--id", "s", "--file", script))
    ran = run_queuectl("worker", "start", "--count", "1")
    assert ran.exit_code == 0, ran.stderr
    try:
        assert run_queuectl("wait", "s", "--timeout", "30").exit_code == 0
    finally:
        run_queuectl("worker", "stop")
    out = ok(cli("logs", "s")).stdout.splitlines()
    assert out[1:5] == ["0=/dev/fd/9", f"script={script}", f"dir={script.parent}", "beside"]


# ---- misspelled fields ---------------------------------------------------------------

def test_a_misspelled_field_is_refused_with_a_suggestion(cli, spool):
    failed(cli("enqueue", '{"command": "x", "prioirty": 9, "max_retry": 0, "delay": "5m"}'),
           "Error: unknown field 'prioirty': did you mean 'priority'?; unknown field "
           "'max_retry': did you mean 'max_retries'?; 'delay' is not a job field: use run_at "
           "(an ISO-8601 time) or `enqueue --delay`\n")
    ok(cli("enqueue", '{"id": "meta", "command": "x", "owner": "me", "tags": ["a"], '
                      '"comment": "c"}'), "meta\n")


def test_attempts_at_enqueue_is_refused(cli):
    failed(cli("enqueue", '{"command": "x", "attempts": 7}'),
           "Error: attempts is counted by the workers: leave it out or give 0 at enqueue, "
           "got 7\n")
    ok(cli("enqueue", '{"id": "zero", "command": "x", "attempts": 0}'), "zero\n")


def test_a_drop_in_with_a_misspelled_field_is_rejected_with_the_same_reason(cli, drop):
    ok(cli("init"))
    drop("typo.json", b'{"command": "x", "prioirty": 9}', age=60)
    ok(cli("status"))
    rows = json.loads(ok(cli("list", "--state", "rejected", "--json")).stdout)
    assert [(r["id"], r["last_error"]) for r in rows] == [
        ("typo", "unknown field 'prioirty': did you mean 'priority'?")]


# ---- stale fields after a retry; backlog counting -------------------------------------

def test_dlq_retry_clears_the_last_attempts_fields_and_is_ready_since_the_retry(cli, spool):
    ok(cli("enqueue", '{"id": "c", "command": "x"}'))
    doc = json.loads((spool / "pending" / "c.json").read_text())
    ok(cli("cancel", "c"), "c: cancelled (was pending; now in dead/)\n")
    dead = json.loads((spool / "dead" / "c.json").read_text())
    assert dead["last_error"] == "cancelled" and "finished_at" in dead
    ok(cli("dlq", "retry", "c"))
    back = json.loads((spool / "pending" / "c.json").read_text())
    for name in ("exit_code", "last_error", "finished_at", "duration_s"):
        assert name not in back
    assert back["attempts"] == 0 and back["run_at"] > doc["created_at"]
    shown = ok(cli("show", "c")).stdout
    assert "error:" not in shown and "finished_at" not in shown
    status = json.loads(ok(cli("status", "--json")).stdout)
    assert status["ready"] == 1 and status["oldest_ready_age_s"] < 5


def test_failed_jobs_whose_retry_is_due_count_as_ready(cli, drop):
    ok(cli("init"))
    job = {"command": "x", "attempts": 1, "max_retries": 3, "last_error": "exit code 1",
           "created_at": "2026-01-01T00:00:00Z", "run_at": "2026-01-01T00:00:02Z"}
    drop("due.json", json.dumps(job).encode(), state="failed")
    drop("later.json", json.dumps(dict(job, run_at="2999-01-01T00:00:00Z")).encode(),
         state="failed")
    status = json.loads(ok(cli("status", "--json")).stdout)
    assert (status["ready"], status["scheduled"], status["counts"]["failed"]) == (1, 0, 2)


def test_recovery_closes_the_output_log_of_an_attempt_whose_worker_died(cli, spool):
    ok(cli("enqueue", '{"id": "k", "command": "x"}'))
    os.rename(spool / "pending" / "k.json", spool / "processing" / "k.json")
    (spool / "output" / "k.log").write_text(
        "=== queuectl k attempt 1 at 2026-01-01T00:00:00.000000Z on w\npartial")
    assert ok(cli("recover")).stdout == "k: worker died: attempt counted, moved to failed " \
                                        "(will retry)\n"
    lines = (spool / "output" / "k.log").read_text().splitlines()
    assert lines[1] == "partial"
    assert re.fullmatch(r"=== end: worker died \(found by recovery at \S+Z\)", lines[2])
    assert len(lines) == 3


def test_duration_is_shown_to_the_millisecond(cli, drop):
    ok(cli("init"))
    drop("d.json", json.dumps({"command": "x", "duration_s": 0.123456789,
                               "exit_code": 0}).encode(), state="completed")
    assert "\nduration_s:   0.123\n" in ok(cli("show", "d")).stdout


# ---- foreign files ---------------------------------------------------------------------

def test_foreign_files_are_reported_by_fsck_and_status(cli, drop, home):
    ok(cli("init"))
    drop("noext", b'{"command": "x"}', age=120)
    drop(".hidden.json", b'{"command": "x"}', age=120)
    drop(".fresh.json.part", b'{"comm', age=0)          # a tool still writing: not yet
    lines = cli("fsck").stdout.splitlines()
    assert lines[0].split() == ["PROBLEM", "WHERE", "DETAIL", "REPAIR"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["foreign-file", "pending/.hidden.json"], ["foreign-file", "pending/noext"]]
    assert cli("fsck").exit_code == 1
    status = ok(cli("status")).stdout.splitlines()
    assert ("2 files in pending/ will never run (hidden or not *.json): pending/.hidden.json, "
            "pending/noext; see queuectl fsck") in status
    assert [f["where"] for f in json.loads(ok(cli("status", "--json")).stdout)["foreign"]] \
        == ["pending/.hidden.json", "pending/noext"]
    ok(cli("fsck", "--repair"))
    assert ok(cli("fsck")).stdout == f"spool {home}/spool is consistent\n"


# ---- small ones --------------------------------------------------------------------------

def test_watchdogs_own_log_lines_never_reach_the_terminal(tmp_path, capfd, caplog):
    import logging

    from queuectl import watcher
    watch = watcher.start([str(tmp_path)], watcher.Wakeup())
    with caplog.at_level(logging.DEBUG, logger="queuectl"):
        logging.getLogger("watchdog.observers.inotify").error(
            "InotifyEmitter.queue_events() called when the thread is inactive")
    if watch is not None:
        watch.stop()
    assert capfd.readouterr().err == ""
    assert "watchdog: InotifyEmitter.queue_events() called when the thread is inactive" in \
        caplog.text


def test_worker_start_says_when_the_queue_is_paused(cli, run_queuectl, home):
    ok(cli("pause"))
    ran = run_queuectl("worker", "start")
    try:
        lines = ran.stdout.splitlines()
        assert re.fullmatch(r"started supervisor \d+ with 1 worker \(pid \d+\)", lines[0])
        assert lines[1:] == [f"home: {home}","the queue is paused: workers claim nothing until "
                             "`queuectl resume`"]
    finally:
        run_queuectl("worker", "stop")


def test_demo_prints_pasteable_commands():
    import subprocess
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = (f"eval \"$(sed -n '/^quoted()/,/^}}/p' {here}/scripts/demo.sh)\"; "
              "quoted queuectl enqueue '{\"a\": \"it'\\''s $HOME\"}' --delay 2s")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    assert out == "queuectl enqueue '{\"a\": \"it'\\''s $HOME\"}' --delay 2s"
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {out}"], capture_output=True,
                           text=True).stdout.splitlines()
    assert words == ["queuectl", "enqueue", "{\"a\": \"it's $HOME\"}", "--delay", "2s"]


# ---- 80 columns: COLUMNS=80 and a real terminal ------------------------------------------

LONG = "python3 -m http.server --bind 127.0.0.1 --directory /srv/www/static 8080"


def run_on_pty(home, *args, columns=80):
    """Run the installed queuectl with its stdout on a pty `columns` wide (no $COLUMNS);
    returns what it printed, with the terminal's \\r\\n turned back into \\n."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    from conftest import QUEUECTL, queuectl_env
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = queuectl_env(home)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen([QUEUECTL, *map(str, args)], stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:          # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, bytes(out)
    return bytes(out).decode().replace("\r\n", "\n")


@pytest.fixture
def wide_queue(cli, tmp_path):
    """A generated-id job with a long command, a script job and a short one."""
    job_id = ok(cli("enqueue", json.dumps({"command": LONG}))).stdout.strip()
    script = tmp_path / "nightly-report.py"
    script.write_text("print('report')\n" * 40)
    ok(cli("enqueue", "--id", "report", "--priority", "5", "--file", script))
    ok(cli("enqueue", '{"id": "short", "command": "echo hi"}'))
    return job_id


def expected_list(home, job_id):
    return (f"home: {home}\n"
            "ID                   STATE    PRI  TRIES  WHEN   COMMAND / LAST ERROR\n"
            "report               pending  5    0/4    ready  nightly-report.py (frozen copy)\n"
            f"{job_id}  pending  0    0/4    ready  python3 -m http.server --bin...\n"
            "short                pending  0    0/4    ready  echo hi\n")


EXPECTED_CONFIG = """\
KEY                   VALUE               MEANING
backoff_base          2        (default)  retry delay = base ** attempts, s
backoff_max           3600     (default)  cap on the retry delay, seconds
completed_retention   604800   (default)  keep completed jobs this long, s/none
hook_timeout          30       (default)  seconds a hook may run
job_timeout           none     (default)  default job time limit, s, or none
log_level             INFO     (default)  one of DEBUG, INFO, WARNING, ERROR
max_job_bytes         1048576  (default)  largest job file accepted, bytes
max_retries           3        (default)  retries before a job goes to dead/
metrics_textfile      none     (default)  Prometheus text file (none: off)
on_dead               none     (default)  command run when a job lands in dead/
on_finish             none     (default)  command run when a job ends
permanent_exit_codes  64-78    (default)  exit codes that go to dead/ at once
retry_exit_codes      75       (default)  exit codes that always retry
settle_seconds        2        (default)  wait before rejecting a bad drop-in, s
shutdown_timeout      30       (default)  grace for a running job at stop, s
spool_shared          auto     (default)  shared by hosts: auto, yes, no
worker_poll_interval  1        (default)  safety-net rescan of the spool, s
"""


def test_list_and_config_fit_80_columns_with_COLUMNS(run_queuectl, home, wide_queue):
    ran = run_queuectl("list", env={"COLUMNS": 80})
    assert ran.stdout == expected_list(home, wide_queue)
    assert run_queuectl("config", "show", env={"COLUMNS": 80}).stdout == EXPECTED_CONFIG
    # The full command stays in --json and show.
    rows = json.loads(run_queuectl("list", "--json", env={"COLUMNS": 80}).stdout)
    assert [r["command"] for r in rows if r["id"] == wide_queue] == [LONG]
    assert f"\ncommand:      {LONG}\n" in run_queuectl("show", wide_queue).stdout


def test_list_and_config_fit_an_80_column_terminal(home, wide_queue):
    assert run_on_pty(home, "list") == expected_list(home, wide_queue)
    assert run_on_pty(home, "config", "show") == EXPECTED_CONFIG


def test_a_wider_terminal_shows_more_of_the_command(home, wide_queue):
    lines = run_on_pty(home, "list", columns=130).splitlines()
    assert lines[3] == f"{wide_queue}  pending  0    0/4    ready  {LONG}"


def test_metrics_and_status_fit_80_columns(run_queuectl, home, wide_queue):
    for args in (("metrics",), ("status",), ("show", "report")):
        text = run_on_pty(home, *args)
        too_wide = [line for line in text.splitlines()
                    if len(line) > 80 and not line.startswith(("home: ", "file: ", "script: "))]
        assert too_wide == [], args


# ---- workers in status and metrics -----------------------------------------------------

def test_a_worker_shows_busy_the_moment_its_job_starts_and_counts_the_jobs_cpu(
        cli, run_queuectl, home, tmp_path, wait_until):
    marker = tmp_path / "started"
    ok(cli("enqueue", json.dumps({"id": "burn", "command": f"touch {marker}; "
                                  "end=$(($(date +%s) + 30)); "
                                  "while [ $(date +%s) -lt $end ]; do :; done"})))
    assert run_queuectl("worker", "start").exit_code == 0
    try:
        wait_until(marker.exists, timeout=30, message="the job to start")
        # The worker wrote its row before it started the job: no heartbeat interval to wait.
        status = json.loads(ok(cli("status", "--json")).stdout)
        assert status["worker_summary"]["busy"] == 1
        assert [w["current_job"] for w in status["workers"]] == ["burn"]
        text = ok(cli("status")).stdout
        assert re.search(r"^workers: 1 \(1 busy, 0 idle\), up \S+$", text, re.M), text

        def job_cpu_counted():
            m = json.loads(ok(cli("metrics", "--json")).stdout)
            return m if (m["worker_summary"]["cpu_percent"] or 0) > 5 else None
        m = wait_until(job_cpu_counted, timeout=20, message="the job's CPU in the metrics")
        assert m["workers"][0]["cpu_percent"] > 5
        assert ok(cli("cancel", "--running", "burn")).stdout == \
            "burn: cancelled (was running, killed; now in dead/)\n"
    finally:
        run_queuectl("worker", "stop", "--timeout", "1")


# ---- the README's tour, verbatim, in 80 columns ----------------------------------------

def test_the_readme_tour_runs_verbatim_in_80_columns(tmp_path):
    import subprocess

    from conftest import QUEUECTL
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(here, "README.md"), encoding="utf-8").read()
    tour = readme[readme.index("## A one-minute tour"):readme.index("## The spool and its")]
    script = "\n".join(re.findall(r"```sh\n(.*?)```", tour, re.S))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env.update(COLUMNS="80", TMPDIR=str(tmp_path),
               PATH=os.path.dirname(QUEUECTL) + os.pathsep + env.get("PATH", ""))
    ran = subprocess.run(["bash", "-e", "-c", script + "\nqueuectl worker stop >/dev/null"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    try:
        assert (ran.returncode, ran.stderr) == (0, ""), ran.stdout
        assert "nightly: completed\n" in ran.stdout
        assert "\nbackup\n" in ran.stdout
        # Measured as in a plain `mktemp -d` home (/tmp/tmp.XXXXXXXXXX), not pytest's long one.
        home = re.search(r"^queue created at (\S+)$", ran.stdout, re.M).group(1)
        text = ran.stdout.replace(home, "/tmp/tmp.XXXXXXXXXX")
        wide = [line for line in text.splitlines() if len(line) > 80]
        assert wide == []
    finally:
        for home in tmp_path.glob("tmp.*"):
            subprocess.run([QUEUECTL, "--home", str(home), "worker", "stop", "--timeout", "1"],
                           capture_output=True, timeout=60)
