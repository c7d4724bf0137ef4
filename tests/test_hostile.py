"""Hostile drops (issue 5, test 5): the foundation's bad drop-in matrix (test_dropins.py) plus
encodings, lone surrogates, NULs, hostile nesting and numbers, a sparse 1 TiB file, a file that
grows while it is read, files of other users and names that are not UTF-8.

Every case runs twice: once with a real worker running (one worker shared by the module, each
case under its own names) and once with only `queuectl status` looking at a fresh home. Each
case is built in a scratch directory, backdated past settle_seconds and renamed into
pending/ in one step, the way a careful tool publishes a file. Pass: the worker never crashes
(same pid in `status --json`, nothing in its log's error path) and never takes over 1 s on one
file; `status` never takes over 1 s; a rejected thing is unchanged in rejected/ (same inode,
bytes, link target or FIFO) and its reason is in `show` and in data/logs/queuectl.log."""

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import pytest
from workerkit import home_processes, kill_processes
from click.testing import CliRunner

from queuectl.cli import main
from queuectl.spool import Spool, display_name
from test_dropins import BAD_CONTENT, ID_RULE, IGNORED

QUEUECTL = os.path.join(os.path.dirname(sys.executable), "queuectl")
FOREIGN_UID = 12345
MAX_JOB_BYTES = 1048576
TIB = 1 << 40
# Seconds a worker or `status` may spend on one hostile file, beyond what the same step takes
# with no such file (measured just before, so a loaded machine does not fail the test).
PER_FILE_LIMIT = 1.0
POLL_INTERVAL = 1.0         # the default worker_poll_interval
SHADOW = b'{"command": "cat /etc/shadow"}'

_FOREIGN_ENV = ("QUEUECTL_HOME", "QUEUECTL_SPOOL", "QUEUECTL_DATA", "QUEUECTL_FAULT",
                "QUEUECTL_FAULT_LOG")


def queuectl_env(home):
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["QUEUECTL_HOME"] = str(home)
    return env


def invoker(home):
    """An in-process `queuectl --home HOME ...` returning click's Result."""
    runner = CliRunner(env={name: None for name in _FOREIGN_ENV})

    def invoke(*args, input=None):
        return runner.invoke(main, ["--home", str(home), *map(str, args)], input=input,
                             catch_exceptions=False)
    return invoke


def run_measured(args, home, timeout=15):
    """Run the real queuectl; returns (exit code, stdout, stderr, seconds, max RSS bytes).
    A hang past `timeout` kills it and fails the test."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([QUEUECTL, *args], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=queuectl_env(home))
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"queuectl {' '.join(args)} hung for over {timeout}s")
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), elapsed, usage.ru_maxrss * 1024)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic()


# ---- what a dropped thing is, so "unchanged" can be checked ---------------------------------

def fingerprint(path):
    """Identity and content of a path without following it: inode, type, size, owner, and
    the bytes (regular files under 16 MiB), link target or directory contents."""
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    print_ = {"ino": st.st_ino, "kind": kind, "size": st.st_size, "uid": st.st_uid,
              "blocks": st.st_blocks, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        print_["target"] = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        print_["inside"] = {name: open(os.path.join(path, name), "rb").read()
                            for name in sorted(os.listdir(path))}
    elif stat.S_ISREG(st.st_mode) and st.st_size < 16 << 20:
        with open(path, "rb") as f:
            print_["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return print_


# ---- the cases ---------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    name: bytes                     # the name it gets in pending/
    make: Callable                  # make(path: bytes, scratch: bytes) builds it at path
    outcome: str                    # "rejected", "accepted" or "ignored"
    reason: str = None              # the exact reason recorded, for "rejected"
    fields: dict = None             # for "accepted": fields the job file must keep
    needs_root: bool = False
    slow_path: bool = False         # run `status` as a real process (could hang or bloat)
    prepare: Callable = None        # prepare(spool) before the drop (e.g. the existing job)
    check: Callable = None          # check(path_in_rejected, before, scratch) afterwards


def content(data):
    def make(path, scratch):
        with open(path, "wb") as f:
            f.write(data)
    return make


def _fifo(path, scratch):
    os.mkfifo(path)


def _directory(path, scratch):
    os.mkdir(path)
    with open(os.path.join(path, b"inside"), "wb") as f:
        f.write(b"data")


def _symlink(path, scratch):
    target = os.path.join(scratch, b"secret-" + os.path.basename(path))
    with open(target, "wb") as f:
        f.write(SHADOW)
    then = time.time() - 7200
    os.utime(target, (then - 3600, then))      # atime < mtime: any read would move atime
    os.symlink(target, path)


def _symlink_target_untouched(rejected, before, scratch):
    target = os.readlink(rejected)
    st = os.stat(target)
    assert st.st_atime < st.st_mtime, "the symlink's target was read"
    with open(target, "rb") as f:
        assert f.read() == SHADOW


def _symlink_to_fifo(path, scratch):
    fifo = os.path.join(scratch, b"fifo-" + os.path.basename(path))
    os.mkfifo(fifo)
    os.symlink(fifo, path)


def _sparse_tib(path, scratch):
    with open(path, "wb") as f:
        f.truncate(TIB)


def _never_read(rejected, before, scratch):
    st = os.lstat(rejected)
    assert (st.st_size, st.st_blocks) == (TIB, 0)
    assert st.st_atime < st.st_mtime, "the 1 TiB file was read (its atime moved)"


def _foreign_file(path, data=b'{"command": "echo run as root, written by uid 12345"}'):
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, FOREIGN_UID, FOREIGN_UID)


def _owned_by_other(path, scratch):
    _foreign_file(path)


def _hard_link_to_other(path, scratch):
    original = os.path.join(scratch, b"theirs-" + os.path.basename(path))
    _foreign_file(original)
    os.link(original, path)


def _other_file_untouched(rejected, before, scratch):
    original = os.path.join(scratch, b"theirs-" + os.path.basename(rejected))
    st = os.lstat(original)
    assert (st.st_ino, st.st_uid, st.st_nlink) == (before["ino"], FOREIGN_UID, 2)
    with open(original, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before["sha256"]


def _existing_job(stem):
    def prepare(spool):
        (spool / "completed" / f"{stem}.json").write_bytes(
            json.dumps({"id": stem, "command": "echo original", "attempts": 1,
                        "exit_code": 0}).encode())
    return prepare


def _bad_name(raw):
    stem = os.fsdecode(raw)[:-len(".json")]
    return f"{display_name(raw)}: file name {ID_RULE}, got {stem!r}"


def _nested(depth):
    """A job whose unknown field `a` makes the whole object nest `depth` levels deep."""
    inner = depth - 1
    return b'{"command": "true", "a": ' + b"[" * inner + b"]" * inner + b"}"


FOREIGN_REASON = (f"is owned by uid {FOREIGN_UID}, which may not submit jobs "
                  "(allowed: {allowed})")
OUT_OF_RANGE = "invalid JSON: number {!r} is out of range"
LONE = "{} holds a lone surrogate, which is not valid Unicode"
UTF16 = "file is UTF-16; jobs must be UTF-8"
DEEP = "invalid JSON: nested too deeply"
OVERSIZE = b'{"command": "x", "pad": "' + b"a" * MAX_JOB_BYTES + b'"}'

CASES = [
    # -- the foundation's matrix (test_dropins.py), reused as it is
    *[Case("dropins-" + name, os.fsencode(name), content(data), "rejected", reason,
           slow_path=name in ("deep.json", "hugeint.json"))
      for name, data, reason in BAD_CONTENT],
    *[Case("ignored-" + name, os.fsencode(name), content(b"not even json"), "ignored")
      for name in IGNORED],
    Case("symlink", b"link.json", _symlink, "rejected", "is a symbolic link (never followed)",
         check=_symlink_target_untouched),
    Case("symlink-to-fifo", b"pipelink.json", _symlink_to_fifo, "rejected",
         "is a symbolic link (never followed)", slow_path=True),
    Case("fifo", b"pipe.json", _fifo, "rejected",
         "is a special file (FIFO, socket or device), not a regular file", slow_path=True),
    Case("directory", b"dir.json", _directory, "rejected", "is a directory, not a file"),
    Case("oversize", b"big.json", content(OVERSIZE), "rejected",
         f"is {len(OVERSIZE)} bytes, over max_job_bytes ({MAX_JOB_BYTES})"),
    Case("duplicate-id", b"taken.json", content(b'{"command": "impostor"}'), "rejected",
         "duplicate id: 'taken' is already in completed/", prepare=_existing_job("taken")),
    # -- encodings
    Case("utf16le-bom", b"u16le.json",
         content(b"\xff\xfe" + '{"command": "x"}'.encode("utf-16-le")), "rejected", UTF16),
    Case("utf16be-bom", b"u16be.json",
         content(b"\xfe\xff" + '{"command": "x"}'.encode("utf-16-be")), "rejected", UTF16),
    Case("utf16-no-bom", b"u16nobom.json",
         content('{"command": "x"}'.encode("utf-16-le")), "rejected",
         "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    # -- lone surrogates (escaped in JSON, and as raw bytes)
    Case("surrogate-command", b"lone1.json", content(b'{"command": "echo \\ud800"}'),
         "rejected", LONE.format("key 'command'")),
    Case("surrogate-unknown-nested", b"lone2.json",
         content(b'{"command": "true", "meta": {"a": ["ok", "x\\udfff"]}}'), "rejected",
         LONE.format("key 'meta'")),
    Case("surrogate-key", b"lone3.json", content(b'{"command": "true", "\\ud800": 1}'),
         "rejected", LONE.format(f"key {chr(0xd800)!r}")),
    Case("surrogate-raw-bytes", b"lone4.json", content(b'{"command": "echo \xed\xa0\x80"}'),
         "rejected", "not valid UTF-8 (byte 18)"),
    Case("surrogate-pair-is-fine", b"pair.json",
         content(b'{"command": "true", "note": "\\ud83d\\ude00"}'), "accepted",
         fields={"note": "\U0001F600"}),
    # -- NUL in strings
    Case("nul-in-command", b"nul1.json", content(b'{"command": "echo a\\u0000b"}'),
         "rejected", "command must not contain NUL characters"),
    Case("nul-raw-byte", b"nul2.json", content(b'{"command": "echo a\x00b"}'), "rejected",
         "invalid JSON: Invalid control character at line 1 column 20"),
    Case("nul-in-id", b"nul3.json", content(b'{"command": "true", "id": "a\\u0000b"}'),
         "rejected", f"id {ID_RULE}, got {'a' + chr(0) + 'b'!r}"),
    Case("nul-in-cwd", b"nul4.json", content(b'{"command": "true", "cwd": "/tmp\\u0000x"}'),
         "rejected", f"cwd must be a directory path, got {'/tmp' + chr(0) + 'x'!r}"),
    Case("nul-in-unknown-field", b"nul5.json",
         content(b'{"command": "true", "note": "a\\u0000b", "tags": ["\\u0000"]}'),
         "accepted", fields={"note": "a\x00b", "tags": ["\x00"]}),
    # -- hostile nesting
    Case("nesting-100000-arrays", b"deep1.json",
         content(b'{"command": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         "rejected", DEEP, slow_path=True),
    Case("nesting-100000-objects", b"deep2.json",
         content(b'{"command": "x", "a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"),
         "rejected", DEEP, slow_path=True),
    Case("nesting-100000-unclosed", b"deep3.json",
         content(b'{"command": "x", "a": ' + b"[" * 100_000), "rejected", DEEP),
    Case("nesting-257", b"deep4.json", content(_nested(257)), "rejected", DEEP),
    Case("nesting-256-is-fine", b"deep5.json", content(_nested(256)), "accepted"),
    # -- huge numbers
    Case("digits-5000-unknown-field", b"num1.json",
         content(b'{"command": "x", "n": ' + b"9" * 5000 + b"}"), "rejected",
         "invalid JSON: a number has 5000 digits (at most 300 are allowed)", slow_path=True),
    Case("digits-5000-negative", b"num2.json",
         content(b'{"command": "x", "n": -' + b"9" * 5000 + b"}"), "rejected",
         "invalid JSON: a number has 5000 digits (at most 300 are allowed)"),
    Case("digits-5000-timeout", b"num3.json",
         content(b'{"command": "x", "timeout": ' + b"1" * 5000 + b"}"), "rejected",
         "invalid JSON: a number has 5000 digits (at most 300 are allowed)"),
    Case("digits-5000-float", b"num4.json",
         content(b'{"command": "x", "n": ' + b"9" * 5000 + b".5}"), "rejected",
         OUT_OF_RANGE.format("9" * 20)),
    Case("exponent-5000", b"num5.json", content(b'{"command": "x", "n": 1e5000}'),
         "rejected", OUT_OF_RANGE.format("1e5000")),
    Case("digits-300-negative-is-fine", b"num6.json",
         content(b'{"command": "true", "n": -' + b"9" * 300 + b"}"), "accepted",
         fields={"n": -int("9" * 300)}),
    # -- a sparse 1 TiB file: rejected from its size, never read
    Case("sparse-1tib", b"sparse.json", _sparse_tib, "rejected",
         f"is {TIB} bytes, over max_job_bytes ({MAX_JOB_BYTES})", slow_path=True,
         check=_never_read),
    # -- other users' files
    Case("hard-link-to-another-users-file", b"hardlink.json", _hard_link_to_other, "rejected",
         FOREIGN_REASON, needs_root=True, check=_other_file_untouched),
    Case("owned-by-uid-not-allowed", b"foreign.json", _owned_by_other, "rejected",
         FOREIGN_REASON, needs_root=True),
    # -- names that are not UTF-8
    *[Case("name-" + label, raw, content(b'{"command": "true"}'), "rejected", _bad_name(raw))
      for label, raw in (("xff", b"bad\xff.json"), ("invalid-sequence", b"\xc3(.json"),
                         ("latin1", b"caf\xe9.json"), ("utf8-surrogate", b"\xed\xa0\x80.json"),
                         ("overlong-slash", b"a\xc0\xaf.json"))],
    Case("name-not-utf8-not-json", b"job\xff.txt", content(b'{"command": "x"}'), "ignored"),
    Case("name-not-utf8-hidden", b".\xff.json", content(b'{"command": "x"}'), "ignored"),
]
# Files of another uid can only be made by root (chown): those cases are marked `root`
# and run in make test's first pass, which runs as root.
CASE_PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.root] if c.needs_root else [])
               for c in CASES]
assert len({c.name for c in CASES}) == len(CASES) and len({c.id for c in CASES}) == len(CASES)


# ---- the two ways of looking: a running worker, or only `status` -------------------------------

class Target:
    """A home plus an in-process CLI bound to it."""

    def __init__(self, home):
        self.home = home
        self.spool = home / "spool"
        self.invoke = invoker(home)
        self.scratch = os.fsencode(str(home / "scratch"))
        os.makedirs(self.scratch, exist_ok=True)
        Spool(str(self.spool)).ensure_layout()

    def path(self, state, name):
        return os.path.join(os.fsencode(str(self.spool / state)), name)

    def log(self):
        try:
            return (self.home / "data" / "logs" / "queuectl.log").read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_logged(self, text):
        """The log line is written just after the reason file: give it a moment."""
        wait_for(lambda: text in self.log(), 2, f"{text!r} in data/logs/queuectl.log")

    def status(self):
        result = self.invoke("status", "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)


class WorkerTarget(Target):
    def __init__(self, home):
        super().__init__(home)
        ran = subprocess.run([QUEUECTL, "worker", "start", "--count", "1"], env=queuectl_env(home),
                             capture_output=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        workers = self.status()["workers"]
        assert len(workers) == 1
        self.pid = workers[0]["pid"]
        self.sentinels = 0

    def assert_alive(self):
        workers = self.status()["workers"]
        assert [w["pid"] for w in workers] == [self.pid], \
            f"the worker changed (crashed and was restarted?): {workers}"
        assert psutil.pid_exists(self.pid)
        log = self.log()
        assert "error in the work loop" not in log and "Traceback" not in log, log[-3000:]
        assert "exited" not in log, log[-3000:]

    def sentinel(self):
        """Drop a good job and wait for it to complete: the worker still works."""
        self.sentinels += 1
        name = f"sentinel-{self.sentinels}.json".encode()
        with open(os.path.join(self.scratch, name), "wb") as f:
            f.write(b'{"command": "true"}')
        os.rename(os.path.join(self.scratch, name), self.path("pending", name))
        started = time.monotonic()
        wait_for(lambda: os.path.lexists(self.path("completed", name)), 10, "the sentinel job")
        return time.monotonic() - started

    def stop(self):
        try:
            subprocess.run([QUEUECTL, "worker", "stop", "--timeout", "2"],
                           env=queuectl_env(self.home), capture_output=True, timeout=40)
        finally:
            kill_processes(home_processes(self.home))


@pytest.fixture(scope="module")
def worker_target(tmp_path_factory):
    target = WorkerTarget(tmp_path_factory.mktemp("hostile") / "home")
    yield target
    target.stop()


@pytest.fixture(scope="module")
def status_baseline_rss(tmp_path_factory):
    """Peak RSS of `queuectl status` on an empty spool: the flat line to compare with."""
    home = tmp_path_factory.mktemp("baseline")
    Spool(str(home / "spool")).ensure_layout()
    return max(run_measured(["status", "--json"], home)[4] for _ in range(2))


def _fresh_target(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return Target(home)


def _build(target, case):
    """Build the case in scratch/, backdate it past settle_seconds and fingerprint it."""
    if case.prepare:
        case.prepare(target.spool)
    built = os.path.join(target.scratch, case.name)
    case.make(built, target.scratch)
    then = time.time() - 3600
    os.utime(built, (then - 3600, then), follow_symlinks=False)
    return built, fingerprint(built)


def _allowed():
    return ", ".join(map(str, sorted({os.geteuid(), 0})))


def _outcome_reached(target, case):
    pending, rejected = target.path("pending", case.name), target.path("rejected", case.name)
    if case.outcome == "rejected":
        return lambda: (not os.path.lexists(pending) and os.path.lexists(rejected)
                        and os.path.lexists(rejected + b".reason"))
    return lambda: (os.path.lexists(target.path("completed", case.name))
                    and not os.path.lexists(target.path("processing", case.name)))


def _check_outcome(target, case, before, worker):
    """What every case must leave behind, whoever looked."""
    display = display_name(case.name)
    pending, rejected = target.path("pending", case.name), target.path("rejected", case.name)
    if case.outcome == "ignored":
        assert fingerprint(pending) == before
        assert not os.path.lexists(rejected)
        assert display not in {row["file"] for row in json.loads(
            target.invoke("list", "--state", "rejected", "--json").stdout)}
        assert display not in target.log()
        return
    if case.outcome == "accepted":
        stem = display[:-len(".json")]
        state = "completed" if worker else "pending"
        path = target.path(state, case.name)
        assert not os.path.lexists(rejected)
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        for key, value in (case.fields or {}).items():
            assert doc[key] == value, key
        if not worker:
            assert fingerprint(path) == before        # `status` never rewrites a drop-in
        shown = target.invoke("show", "--json", stem)
        assert shown.exit_code == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert info["state"] == state and {k: info["job"][k] for k in case.fields or {}} == \
            (case.fields or {})
        assert target.invoke("reindex").exit_code == 0     # a rebuild agrees with the worker
        assert json.loads(target.invoke("show", "--json", stem).stdout)["state"] == state
        return
    reason = case.reason.format(allowed=_allowed())
    after = fingerprint(rejected)
    assert after == before, f"the rejected thing changed: {before} -> {after}"
    with open(rejected + b".reason", "rb") as f:
        assert f.read().decode() == reason + "\n"
    shown = target.invoke("show", "--json", "--", display)
    assert shown.exit_code == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert (info["state"], info["last_error"]) == ("rejected", reason)
    target.wait_logged(f"-> rejected/{display}: {reason}")
    if case.check:
        case.check(rejected, before, target.scratch)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_hostile_drop_with_only_status(tmp_path, case, status_baseline_rss):
    target = _fresh_target(tmp_path)
    built, before = _build(target, case)

    def look():
        if case.slow_path:   # a real process: a hang is caught, its peak memory measured
            code, out, err, elapsed, rss = run_measured(["status", "--json"], target.home)
            assert code == 0 and "Traceback" not in err, err
            return json.loads(out), elapsed, rss
        started = time.monotonic()
        report = target.status()
        return report, time.monotonic() - started, None
    # The same look at a spool without the file, the slowest of three: the bound below is
    # relative to what a look costs on this machine right now, not to one lucky sample.
    baseline = max(look()[1] for _ in range(3))
    os.rename(built, target.path("pending", case.name))
    report, elapsed, rss = look()
    if rss is not None:
        assert rss < status_baseline_rss + (16 << 20), \
            f"status peaked at {rss >> 20} MiB (baseline {status_baseline_rss >> 20} MiB)"
    assert elapsed - baseline < PER_FILE_LIMIT, \
        f"status took {elapsed:.2f}s over one file ({baseline:.2f}s without it)"
    if case.outcome == "rejected":
        assert report["rejected"] == 1 and report["counts"]["pending"] == 0
    else:
        assert report["rejected"] == 0
        assert report["counts"]["pending"] == (case.outcome == "accepted")
    _check_outcome(target, case, before, worker=False)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_hostile_drop_with_a_worker_running(worker_target, case):
    target = worker_target
    built, before = _build(target, case)
    # How long a trivial job takes right now: the slowest of three, not one sample.
    baseline = max(target.sentinel() for _ in range(3))
    rss_before = psutil.Process(target.pid).memory_info().rss
    started = time.monotonic()
    os.rename(built, target.path("pending", case.name))
    if case.outcome == "ignored":
        target.sentinel()
        elapsed = 0.0
    else:
        # No inotify event names a directory moved in (the watcher skips directory events),
        # so that one case waits for the poll timer: latency, not a hang.
        limit = PER_FILE_LIMIT + baseline + (POLL_INTERVAL if case.id == "directory" else 0)
        elapsed = wait_for(_outcome_reached(target, case), limit + 5, case.id) - started
        assert elapsed < limit, f"the worker took {elapsed:.2f}s over one file"
    rss_after = psutil.Process(target.pid).memory_info().rss
    assert rss_after - rss_before < 16 << 20, \
        f"worker RSS grew {(rss_after - rss_before) >> 20} MiB"
    _check_outcome(target, case, before, worker=True)
    assert target.sentinel() < PER_FILE_LIMIT + baseline
    target.assert_alive()


# ---- a file that grows while it is read ----------------------------------------------------------

class Grower(threading.Thread):
    """Writes a job straight into pending/ (in place, no tmp/) and keeps appending to its
    string until the file is `total` bytes: it crosses max_job_bytes while readers look."""

    def __init__(self, path, total=2 * MAX_JOB_BYTES, chunk=32768, pause=0.01):
        super().__init__(daemon=True)
        self.path, self.total, self.chunk, self.pause = path, total, chunk, pause
        self.digest = hashlib.sha256()
        self.written = 0

    def run(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            data = b'{"command": "echo grown", "pad": "'
            while self.written < self.total:
                os.write(fd, data)
                self.digest.update(data)
                self.written += len(data)
                data = b"a" * self.chunk
                time.sleep(self.pause)
        finally:
            os.close(fd)


GROWN = re.compile(r"(is \d+ bytes, over|grew past) max_job_bytes \(1048576\)( while read)?\Z")


def _check_grown(target, grower):
    rejected = target.path("rejected", b"grow.json")
    assert not os.path.lexists(target.path("pending", b"grow.json"))
    with open(rejected, "rb") as f:
        data = f.read()
    # Every byte the writer wrote is there, in order: nothing truncated or rewritten.
    assert len(data) == grower.written and hashlib.sha256(data).digest() == \
        grower.digest.digest()
    info = json.loads(target.invoke("show", "--json", "--", "grow.json").stdout)
    assert info["state"] == "rejected" and GROWN.match(info["last_error"]), info
    target.wait_logged(f"-> rejected/grow.json: {info['last_error']}")


def test_a_file_that_grows_while_read_with_only_status(tmp_path):
    target = _fresh_target(tmp_path)
    baseline = run_measured(["status", "--json"], target.home)[3]
    grower = Grower(target.path("pending", b"grow.json"))
    grower.start()
    looks = 0
    while grower.is_alive() or looks == 0:
        code, out, err, elapsed, _ = run_measured(["status", "--json"], target.home)
        assert code == 0 and "Traceback" not in err, err
        assert elapsed - baseline < PER_FILE_LIMIT
        looks += 1
    grower.join()
    code, out, err, elapsed, _ = run_measured(["status", "--json"], target.home)
    assert code == 0 and json.loads(out)["rejected"] == 1
    assert elapsed - baseline < PER_FILE_LIMIT
    _check_grown(target, grower)


def test_a_file_that_grows_while_read_with_a_worker_running(worker_target):
    target = worker_target
    baseline = target.sentinel()
    grower = Grower(target.path("pending", b"grow.json"))
    grower.start()
    grower.join()
    done = time.monotonic()
    reached = wait_for(lambda: os.path.lexists(target.path("rejected", b"grow.json.reason")),
                       PER_FILE_LIMIT + baseline + 5, "the grown file's rejection")
    assert reached - done < PER_FILE_LIMIT + baseline
    _check_grown(target, grower)
    assert target.sentinel() < PER_FILE_LIMIT + baseline
    target.assert_alive()
