"""queuectl.ingest: bringing the index in line with the spool. Drop-ins are indexed (or
rejected once settled), hand-made moves and deletions are followed, and a full rebuild
gives exactly the incrementally kept index."""

import os
import shutil

import pytest

from queuectl import job as jobmod
from queuectl.home import Home
from queuectl.index import job_row
from queuectl.ingest import ingest, reindex
from queuectl.queries import list_jobs, status
from queuectl.settings_store import set_value
from queuectl.submit import enqueue


@pytest.fixture
def h(home):
    queue = Home(str(home))
    queue.spool.ensure_layout()
    yield queue
    queue.close()


def fresh(home):
    """A new Home on the same directory, as the next command would open it."""
    return Home(str(home))


def row_states(queue):
    return {r["id"]: r["state"] for r in list_jobs(queue)}


def test_a_dropped_minimal_job_is_indexed_and_its_file_left_as_dropped(h, drop):
    path = drop("mini.json", '{"command": "echo hi"}', age=30)
    ingest(h)
    row = h.index.get("mini")
    assert row["state"] == "pending" and row["command"] == "echo hi"
    assert row["max_retries"] == 3 and row["attempts"] == 0 and row["priority"] == 0
    assert row["created_at"] == jobmod.iso(os.stat(path).st_mtime)
    assert path.read_bytes() == b'{"command": "echo hi"}'


def test_drop_in_uses_the_configured_max_retries(h, drop):
    set_value(h, "max_retries", "7")
    drop("mini.json", '{"command": "x"}')
    ingest(h)
    assert h.index.get("mini")["max_retries"] == 7


def test_an_unparsable_file_waits_to_settle_before_it_is_rejected(h, drop, spool, age_file):
    path = drop("half.json", '{"command": "still being wri')
    ingest(h)
    assert path.exists() and os.listdir(spool / "rejected") == []
    assert h.index.rejected_count() == 0
    ingest(h)                                   # asked again: still not settled
    assert path.exists()
    age_file(path, 10)                          # unchanged for longer than settle_seconds
    ingest(h)
    assert not path.exists()
    assert (spool / "rejected" / "half.json").read_bytes() == b'{"command": "still being wri'
    assert h.index.rejected("half.json")[0]["reason"] == \
        "invalid JSON: Unterminated string starting at line 1 column 13"


def test_settle_seconds_zero_rejects_at_once(h, drop, spool):
    set_value(h, "settle_seconds", "0")
    drop("bad.json", "nope")
    ingest(h)
    assert os.listdir(spool / "pending") == []
    assert h.index.rejected("bad.json")[0]["reason"] == \
        "invalid JSON: Expecting value at line 1 column 1"


def test_a_file_completed_by_its_writer_in_time_is_accepted(h, drop):
    path = drop("slow.json", '{"command": "ec')
    ingest(h)
    path.write_text('{"command": "echo done"}')
    ingest(h)
    assert h.index.get("slow")["command"] == "echo done"


def test_hand_made_moves_and_deletions_are_followed(h, spool):
    enqueue(h, [{"command": "a", "id": "a"}, {"command": "b", "id": "b"}], {})
    assert row_states(h) == {"a": "pending", "b": "pending"}
    os.rename(spool / "pending" / "a.json", spool / "dead" / "a.json")
    os.unlink(spool / "pending" / "b.json")
    queue = fresh(h.home)
    assert row_states(queue) == {"a": "dead"}
    queue.close()


def test_a_drop_right_after_a_look_is_not_missed(h, drop):
    ingest(h)
    drop("later.json", '{"command": "x"}')
    ingest(h)
    assert h.index.get("later")["state"] == "pending"


def test_a_drop_into_a_directory_last_looked_at_long_ago_is_seen(h, drop, spool):
    """The mtime shortcut skips unchanged directories; a new file changes the mtime."""
    long_ago = os.stat(spool / "pending").st_mtime - 3600
    os.utime(spool / "pending", (long_ago, long_ago))
    ingest(h)
    drop("new.json", '{"command": "x"}')
    ingest(h)
    assert h.index.get("new")["state"] == "pending"


def test_a_drop_in_with_the_id_of_an_existing_job_is_rejected_as_a_duplicate(h, drop, spool):
    drop("same.json", '{"command": "the original", "attempts": 4}', state="dead")
    ingest(h)
    newcomer = drop("same.json", '{"command": "the newcomer"}')
    ingest(h)
    assert not newcomer.exists()
    assert (spool / "dead" / "same.json").read_text() == \
        '{"command": "the original", "attempts": 4}'
    assert (spool / "rejected" / "same.json").read_text() == '{"command": "the newcomer"}'
    assert h.index.get("same")["state"] == "dead"
    assert h.index.rejected("same.json")[0]["reason"] == \
        "duplicate id: 'same' is already in dead/"


def test_a_pending_copy_beside_a_processing_leftover_is_not_a_duplicate(h, drop, spool):
    drop("r.json", '{"command": "x"}', state="processing")
    drop("r.json", '{"command": "x"}', state="pending")
    ingest(h)
    assert (spool / "pending" / "r.json").exists()
    assert os.listdir(spool / "rejected") == []


def test_status_counts_ready_scheduled_and_rejected(h, drop):
    set_value(h, "settle_seconds", "0")
    enqueue(h, [{"command": "now", "id": "now"}], {})
    enqueue(h, [{"command": "later", "id": "later"}], {"delay": "1h"})
    drop("d.json", '{"command": "x", "attempts": 4, "max_retries": 3}', state="dead")
    drop("junk.json", "junk")
    report = status(h)
    assert report["counts"] == {"pending": 2, "processing": 0, "failed": 0, "completed": 0,
                                "dead": 1}
    assert (report["ready"], report["scheduled"], report["rejected"]) == (1, 1, 1)
    assert report["home"] == str(h.home) and report["workers"] == []


def test_a_corrupt_index_is_replaced_and_rebuilt_from_the_spool(h, home):
    enqueue(h, [{"command": "keep me", "id": "keep"}], {})
    h.close()
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(str(home / "data" / "queue.db") + suffix)
        except FileNotFoundError:
            pass
    (home / "data" / "queue.db").write_bytes(b"garbage" * 1000)
    queue = fresh(home)
    assert [r["id"] for r in list_jobs(queue)] == ["keep"]
    queue.close()


def snapshot(queue):
    return list_jobs(queue), list_jobs(queue, "rejected"), status(queue)["counts"]


def test_reindex_equals_the_incrementally_kept_index(h, home, drop):
    set_value(h, "settle_seconds", "0")
    enqueue(h, [{"command": f"echo {n}", "priority": n % 3} for n in range(20)], {})
    enqueue(h, [{"command": "scheduled", "id": "sched"}], {"delay": "2h"})
    drop("mini.json", '{"command": "x", "extra": [1]}', age=100)
    drop("corpse.json", '{"command": "x", "attempts": 2, "max_retries": 1, '
                        '"last_error": "exit 1"}', state="dead")
    drop("done.json", '{"command": "x", "exit_code": 0, "attempts": 1}', state="completed")
    drop("junk.json", "junk")
    drop("arr.json", "[]")
    os.symlink("/etc/passwd", h.spool.dir("pending") + "/link.json")
    before = snapshot(h)
    assert len(before[0]) == 24 and len(before[1]) == 3
    counts = reindex(fresh(home))
    assert counts == {"pending": 22, "dead": 1, "completed": 1}
    assert snapshot(fresh(home)) == before


def test_deleting_data_loses_no_job(h, home):
    enqueue(h, [{"command": "x", "id": "a"}, {"command": "y", "id": "b"}], {})
    before = list_jobs(h)
    h.close()
    shutil.rmtree(home / "data")
    queue = fresh(home)
    reindex(queue)
    assert list_jobs(queue) == before
    queue.close()


@pytest.mark.parametrize("broken", ["shm_is_a_directory", "wal_deleted_under_a_writer"])
def test_reindex_always_rebuilds_setting_broken_index_files_aside(home, run_queuectl, broken):
    """Issue 8, bug 12: `reindex` is what every index error message recommends, so it must
    rebuild whatever state queue.db, -wal and -shm are in (a lock held by another process
    aside): the broken files are set aside with a timestamp, named in the output, and a
    fresh index is built from the spool."""
    ids = [f"j{n}" for n in range(5)]
    lines = "".join(f'{{"id": "{job_id}", "command": "true"}}\n' for job_id in ids)
    assert run_queuectl("enqueue", "-", input=lines).exit_code == 0
    data = home / "data"
    writer = None
    if broken == "shm_is_a_directory":
        # SQLite then opens the database read-only: "attempt to write a readonly database"
        # at the rebuild's first write (after the open succeeded).
        for suffix in ("-wal", "-shm"):
            if (data / f"queue.db{suffix}").exists():
                os.unlink(data / f"queue.db{suffix}")
        os.mkdir(data / "queue.db-shm")
    else:
        # A live connection with frames in the WAL, then the WAL deleted under it.
        writer = Home(str(home))
        writer.index.db.execute("PRAGMA wal_autocheckpoint=0")
        with writer.index.transaction():
            writer.index.upsert([job_row({"id": f"x{n}", "command": "y" * 200},
                                         "completed", 0) for n in range(2000)])
        os.unlink(data / "queue.db-wal")
    try:
        ran = run_queuectl("reindex")
    finally:
        if writer is not None:
            writer.close()
    assert (ran.exit_code, ran.stderr) == (0, "")
    lines = ran.stdout.splitlines()
    assert lines[-1] == f"reindexed 5 jobs from {home / 'spool'} (pending 5)"
    if broken == "shm_is_a_directory":
        aside = sorted(p.name for p in data.iterdir() if ".corrupt-" in p.name)
        assert len(aside) >= 2 and any(n.endswith("-shm") for n in aside), aside
        assert lines[0].startswith("the index was unusable (")
        assert all(name in lines[0] for name in aside), (lines[0], aside)
    assert os.path.isfile(data / "queue.db") and not os.path.isdir(data / "queue.db-shm")
    queue = fresh(home)
    assert sorted(row["id"] for row in list_jobs(queue)) == ids
    queue.close()
    assert run_queuectl("status").exit_code == 0
