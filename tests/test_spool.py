"""queuectl.spool: the layout, publishing without overwriting, safe reads that never follow
symlinks or block on FIFOs, claims held by flock, finishing, rejecting byte for byte."""

import fcntl
import hashlib
import os
import stat
import subprocess
import sys
import time

import pytest

from queuectl import fsops
from queuectl.errors import DuplicateId
from queuectl.spool import ALL_DIRS, NotAJobFile, Spool, is_candidate


@pytest.fixture
def sp(spool):
    s = Spool(str(spool))
    s.ensure_layout()
    return s


def files(path):
    return sorted(os.listdir(path))


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_layout_is_created_on_first_write_with_private_dirs(spool):
    s = Spool(str(spool))
    assert not s.exists() and not spool.exists()
    s.publish("a", b'{"command": "x"}\n')
    assert sorted(os.listdir(spool)) == sorted(ALL_DIRS)
    assert set(ALL_DIRS) == {"tmp", "pending", "processing", "failed", "completed", "dead",
                             "rejected", "output"}
    for private in ("rejected", "output"):
        assert stat.S_IMODE(os.stat(spool / private).st_mode) == 0o700
    assert s.exists()


def test_layout_creation_is_idempotent(spool):
    Spool(str(spool)).ensure_layout()
    (spool / "pending" / "keep.json").write_text("{}")
    Spool(str(spool)).ensure_layout()
    assert files(spool / "pending") == ["keep.json"]


def test_publish_writes_the_bytes_and_leaves_nothing_in_tmp(sp, spool):
    sp.publish("job-1", b'{"command": "echo 1"}\n')
    assert (spool / "pending" / "job-1.json").read_bytes() == b'{"command": "echo 1"}\n'
    assert files(spool / "tmp") == []


def test_publish_never_overwrites(sp, spool):
    sp.publish("job-1", b"first\n")
    before = os.stat(spool / "pending" / "job-1.json")
    with pytest.raises(DuplicateId) as info:
        sp.publish("job-1", b"second\n")
    assert str(info.value) == "a job with id 'job-1' already exists"
    assert (spool / "pending" / "job-1.json").read_bytes() == b"first\n"
    assert os.stat(spool / "pending" / "job-1.json").st_ino == before.st_ino
    assert files(spool / "tmp") == []


def test_rename_noreplace_refuses_an_existing_destination(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        fsops.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    fsops.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert files(tmp_path) == ["b", "c"]


def test_read_returns_bytes_and_stat(sp, spool):
    (spool / "pending" / "a.json").write_bytes(b'{"command": "x"}')
    data, st = sp.read("pending", "a.json")
    assert data == b'{"command": "x"}' and st.st_size == len(data)


def test_read_refuses_a_symlink_without_touching_its_target(sp, spool, tmp_path):
    target = tmp_path / "secret"
    target.write_text('{"command": "cat /etc/shadow"}')
    old = time.time() - 3600
    os.utime(target, (old - 3600, old))   # atime before mtime: any read would update it
    os.symlink(target, spool / "pending" / "link.json")
    with pytest.raises(NotAJobFile) as info:
        sp.read("pending", "link.json")
    assert info.value.reason == "is a symbolic link (never followed)"
    assert os.stat(target).st_atime == old - 3600


def test_read_refuses_a_fifo_without_blocking(sp, spool):
    os.mkfifo(spool / "pending" / "pipe.json")
    # In a child process, so that a blocking open fails the test instead of hanging it.
    code = ("import sys; from queuectl.spool import Spool, NotAJobFile\n"
            "try:\n    Spool(sys.argv[1]).read('pending', 'pipe.json')\n"
            "except NotAJobFile as exc:\n    print(exc.reason)\n")
    ran = subprocess.run([sys.executable, "-c", code, str(spool)], capture_output=True,
                         text=True, timeout=10)
    assert ran.stdout == "is a special file (FIFO, socket or device), not a regular file\n"
    assert ran.returncode == 0, ran.stderr


def test_read_refuses_a_directory(sp, spool):
    (spool / "pending" / "x.json").mkdir()
    with pytest.raises(NotAJobFile) as info:
        sp.read("pending", "x.json")
    assert info.value.reason == "is a directory, not a file"


def test_read_refuses_an_oversize_file(spool):
    s = Spool(str(spool), max_job_bytes=100)
    s.ensure_layout()
    (spool / "pending" / "big.json").write_bytes(b" " * 101)
    with pytest.raises(NotAJobFile) as info:
        s.read("pending", "big.json")
    assert info.value.reason == "is 101 bytes, over max_job_bytes (100)"
    (spool / "pending" / "fits.json").write_bytes(b" " * 100)
    assert len(s.read("pending", "fits.json")[0]) == 100


def test_read_of_a_vanished_file_says_gone(sp):
    with pytest.raises(NotAJobFile) as info:
        sp.read("pending", "nothere.json")
    assert info.value.gone


@pytest.mark.parametrize("name, candidate", [
    ("a.json", True), (".a.json", False), (".x.json.part", False), ("a.txt", False),
    ("a.json.tmp", False), ("a", False), ("a.JSON", False)])
def test_only_visible_json_names_are_candidates(name, candidate):
    assert is_candidate(name) is candidate


def test_names_and_find(sp, spool):
    for name in ("a.json", ".b.json", "c.txt"):
        (spool / "pending" / name).write_text("{}")
    (spool / "dead" / "a.json").write_text("{}")
    assert sp.names("pending") == ["a.json"]
    assert sp.find("a") == ["pending", "dead"]
    assert sp.find("b") == [] and sp.find("zzz") == []


# ---- claims -----------------------------------------------------------------------------

def test_claim_moves_into_processing_and_holds_an_exclusive_lock(sp, spool):
    sp.publish("j", b'{"command": "x"}\n')
    claim = sp.claim("pending", "j")
    assert claim is not None and claim.data == b'{"command": "x"}\n'
    assert files(spool / "pending") == [] and files(spool / "processing") == ["j.json"]
    # flock is per open file description: a second open, even in this process, conflicts.
    other = os.open(spool / "processing" / "j.json", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
    sp.release(claim, unlink=False)


def test_claim_skips_a_file_another_process_holds(sp, spool):
    sp.publish("j", b'{"command": "x"}\n')
    path = spool / "pending" / "j.json"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        assert sp.claim("pending", "j") is None
        assert files(spool / "pending") == ["j.json"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert sp.claim("pending", "j") is not None


def test_claim_of_a_vanished_file_raises_gone(sp):
    with pytest.raises(NotAJobFile) as info:
        sp.claim("pending", "nobody")
    assert info.value.gone


def test_claim_does_not_replace_a_running_job_with_the_same_id(sp, spool):
    sp.publish("j", b'{"command": "running"}\n')
    first = sp.claim("pending", "j")
    sp.publish("j", b'{"command": "newcomer"}\n')
    assert sp.claim("pending", "j") is None
    assert (spool / "processing" / "j.json").read_bytes() == b'{"command": "running"}\n'
    assert (spool / "pending" / "j.json").read_bytes() == b'{"command": "newcomer"}\n'
    sp.release(first, unlink=False)


def test_finish_writes_the_new_record_then_releases(sp, spool):
    sp.publish("j", b'{"command": "x"}\n')
    claim = sp.claim("pending", "j")
    sp.finish(claim, b'{"command": "x", "attempts": 1}\n', "completed")
    assert (spool / "completed" / "j.json").read_bytes() == b'{"command": "x", "attempts": 1}\n'
    assert files(spool / "processing") == [] and files(spool / "tmp") == []
    assert claim.fd == -1


def test_finish_into_a_taken_name_keeps_both_and_the_claim(sp, spool):
    sp.publish("j", b'{"command": "mine"}\n')
    claim = sp.claim("pending", "j")
    (spool / "completed" / "j.json").write_bytes(b"theirs\n")
    with pytest.raises(DuplicateId):
        sp.finish(claim, b'{"command": "mine", "attempts": 1}\n', "completed")
    assert (spool / "completed" / "j.json").read_bytes() == b"theirs\n"
    assert (spool / "processing" / "j.json").read_bytes() == b'{"command": "mine"}\n'
    assert files(spool / "tmp") == []
    assert claim.fd >= 0
    sp.release(claim, unlink=False)


def test_unclaim_puts_the_file_back_untouched(sp, spool):
    sp.publish("j", b'{"command": "x"}\n')
    digest = sha(spool / "pending" / "j.json")
    claim = sp.claim("pending", "j")
    sp.unclaim(claim)
    assert sha(spool / "pending" / "j.json") == digest
    assert files(spool / "processing") == []


def test_probe_orphan_takes_only_unlocked_files(sp, spool):
    sp.publish("j", b'{"command": "x"}\n')
    live = sp.claim("pending", "j")
    assert sp.probe_orphan("j") is None           # its owner still holds the lock
    sp.release(live, unlink=False)                # owner gone, file left behind
    orphan = sp.probe_orphan("j")
    assert orphan is not None and orphan.data == b'{"command": "x"}\n'
    sp.release(orphan, unlink=False)
    assert sp.probe_orphan("missing") is None


# ---- rejecting --------------------------------------------------------------------------

def test_reject_moves_bytes_unchanged_and_records_why(sp, spool):
    path = spool / "pending" / "bad.json"
    path.write_bytes(b"\x00\xffnot json")
    digest, inode = sha(path), os.stat(path).st_ino
    assert sp.reject("pending", "bad.json", "not valid UTF-8 (byte 1)") == "bad.json"
    moved = spool / "rejected" / "bad.json"
    assert sha(moved) == digest and os.stat(moved).st_ino == inode
    assert sp.reject_reason("bad.json") == "not valid UTF-8 (byte 1)"
    assert sp.rejected_names() == ["bad.json"]
    assert files(spool / "pending") == []


def test_reject_never_overwrites_an_earlier_rejection(sp, spool):
    (spool / "pending" / "bad.json").write_bytes(b"one")
    sp.reject("pending", "bad.json", "first")
    (spool / "pending" / "bad.json").write_bytes(b"two")
    second = sp.reject("pending", "bad.json", "second")
    assert second != "bad.json" and second.startswith("bad.json.")
    assert (spool / "rejected" / "bad.json").read_bytes() == b"one"
    assert (spool / "rejected" / second).read_bytes() == b"two"
    assert sp.reject_reason("bad.json") == "first" and sp.reject_reason(second) == "second"


def test_reject_moves_symlinks_fifos_and_dirs_as_they_are(sp, spool, tmp_path):
    os.symlink(tmp_path / "target", spool / "pending" / "l.json")
    os.mkfifo(spool / "pending" / "f.json")
    (spool / "pending" / "d.json").mkdir()
    for name in ("l.json", "f.json", "d.json"):
        assert sp.reject("pending", name, "why") == name
    assert os.readlink(spool / "rejected" / "l.json") == str(tmp_path / "target")
    assert stat.S_ISFIFO(os.lstat(spool / "rejected" / "f.json").st_mode)
    assert (spool / "rejected" / "d.json").is_dir()


def test_reject_of_a_vanished_file_returns_none(sp):
    assert sp.reject("pending", "gone.json", "why") is None


def test_a_file_that_grew_after_its_stat_is_read_whole_or_refused(spool):
    """The claim reads as much as the stat said plus a little: what a writer appended since
    is read on, up to max_job_bytes, and past that the file is refused."""
    s = Spool(str(spool), max_job_bytes=20_000)
    s.ensure_layout()
    path = spool / "pending" / "g.json"
    path.write_bytes(b"x" * 10)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"y" * 15_000)               # past the first read's size + 4 KiB
    fd = os.open(path, os.O_RDONLY)
    try:
        assert s._read_fd(fd, size) == b"x" * 10 + b"y" * 15_000
        with open(path, "ab") as f:
            f.write(b"z" * 6_000)            # now past max_job_bytes
        with pytest.raises(NotAJobFile, match="grew past max_job_bytes"):
            s._read_fd(fd, size)
    finally:
        os.close(fd)
