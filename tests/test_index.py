"""queuectl.index: the SQLite index (WAL, busy timeout), its job rows and orderings, the
rejected table, config, and recovery from a database SQLite cannot read."""

import os
import sqlite3

import pytest

from queuectl import job as jobmod
from queuectl.index import Index, job_row

T0 = 1_800_000_000.0


@pytest.fixture
def index(tmp_path):
    idx = Index(str(tmp_path / "data" / "queue.db"))
    yield idx
    idx.close()


def row(job_id, state="pending", priority=0, created=T0, updated=None, run_at=None, **more):
    doc = {"id": job_id, "command": f"echo {job_id}", "priority": priority, "attempts": 0,
           "max_retries": 3, "created_at": jobmod.iso(created),
           "updated_at": jobmod.iso(updated if updated is not None else created), **more}
    if run_at is not None:
        doc["run_at"] = jobmod.iso(run_at)
    return job_row(doc, state, jobmod.due_time(doc, now=float("inf")))


def ids(rows):
    return [r["id"] for r in rows]


def test_database_is_wal_with_a_busy_timeout(index, tmp_path):
    index.counts()
    assert os.path.isfile(tmp_path / "data" / "queue.db")
    assert index.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert index.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    other = sqlite3.connect(tmp_path / "data" / "queue.db")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_upsert_get_and_counts(index):
    index.upsert([row("a"), row("b"), row("c", "dead")])
    assert index.get("a")["state"] == "pending" and index.get("a")["command"] == "echo a"
    assert index.get("nope") is None
    assert index.counts() == {"pending": 2, "dead": 1}
    index.upsert([row("a", "completed", exit_code=0)])
    assert index.get("a")["state"] == "completed" and index.get("a")["exit_code"] == 0
    assert index.counts() == {"pending": 1, "completed": 1, "dead": 1}


def test_pending_list_is_in_take_order(index):
    index.upsert([row("low-old", priority=0, created=T0),
                  row("high-new", priority=5, created=T0 + 10),
                  row("low-new", priority=0, created=T0 + 5),
                  row("high-old", priority=5, created=T0 + 1),
                  row("low-scheduled-early", priority=0, created=T0 + 20, run_at=T0 + 2),
                  row("negative", priority=-1, created=T0 - 100)])
    assert ids(index.list("pending")) == ["high-old", "high-new", "low-old",
                                          "low-scheduled-early", "low-new", "negative"]
    assert ids(index.list("pending", limit=2)) == ["high-old", "high-new"]


def test_other_states_list_newest_first_and_all_states_put_pending_first(index):
    index.upsert([row("d-old", "dead", updated=T0), row("d-new", "dead", updated=T0 + 9),
                  row("c-mid", "completed", updated=T0 + 5),
                  row("p2", priority=0, created=T0 + 1), row("p1", priority=1, created=T0 + 2)])
    assert ids(index.list("dead")) == ["d-new", "d-old"]
    assert ids(index.list()) == ["p1", "p2", "d-new", "c-mid", "d-old"]
    assert ids(index.list(limit=3)) == ["p1", "p2", "d-new"]


def test_list_queries_use_the_indexes(index):
    """`list --state pending --limit 50` must stay fast at 100,000 jobs: the take order is
    read straight off an index, never sorted in a temporary b-tree."""
    index.counts()
    plan = " ".join(str(r) for r in index.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state='pending' "
        "ORDER BY priority DESC, due_ts, id LIMIT 50"))
    assert "USING INDEX jobs_take_order" in plan or "USING COVERING INDEX" in plan
    assert "TEMP B-TREE" not in plan
    recent = " ".join(str(r) for r in index.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state='dead' "
        "ORDER BY updated_at DESC LIMIT 50"))
    assert "jobs_recent" in recent


def test_insert_new_leaves_fresher_rows_alone(index):
    index.upsert([row("a", "processing")])
    index.insert_new([row("a", "pending"), row("b", "pending")])
    assert index.get("a")["state"] == "processing"
    assert index.get("b")["state"] == "pending"


def test_move_if_and_delete_if_are_compare_and_set(index):
    index.upsert([row("a", "pending")])
    index.move_if("a", "failed", row("a", "dead"))       # stale expectation: no change
    assert index.get("a")["state"] == "pending"
    index.move_if("a", "pending", row("a", "dead"))
    assert index.get("a")["state"] == "dead"
    index.delete_if("a", "pending")
    assert index.get("a") is not None
    index.delete_if("a", "dead")
    assert index.get("a") is None


def test_an_upsert_never_moves_a_row_backwards(index):
    index.upsert([row("a", "pending", updated=T0)])
    index.upsert([row("a", "processing", updated=T0)])     # a claim keeps updated_at
    index.upsert([row("a", "pending", updated=T0)])        # late: same version, older state
    assert index.get("a")["state"] == "processing"
    index.upsert([row("a", "completed", updated=T0 + 5)])
    for late in (row("a", "processing", updated=T0), row("a", "pending", updated=T0)):
        index.upsert([late])
    assert index.get("a")["state"] == "completed"
    index.upsert([row("a", "pending", updated=T0 + 9)])   # a newer move (dlq retry) wins
    assert index.get("a")["state"] == "pending"


def test_a_late_enqueue_write_does_not_undo_a_worker_s_completion(home, run_queuectl):
    """Issue 8, bug 9, with the order forced: we hold the index's write lock while
    `queuectl enqueue` (another process) publishes a job and then waits for the lock to
    write its "pending" row; meanwhile a worker (this process, on the connection holding
    the lock) claims, completes and indexes the job. Enqueue's row lands last: it must not
    turn the completed job back into a pending one."""
    import subprocess
    import time
    from conftest import QUEUECTL, queuectl_env
    from queuectl import lifecycle
    from queuectl.home import Home
    from queuectl.runner import Result
    h = Home(str(home))
    h.spool.ensure_layout()
    h.index.counts()                       # the schema exists before we lock
    pending = home / "spool" / "pending" / "late.json"
    with h.index.transaction():            # BEGIN IMMEDIATE: we hold the write lock
        enqueue = subprocess.Popen([QUEUECTL, "enqueue", '{"id": "late", "command": "true"}'],
                                   env=queuectl_env(home), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not pending.exists():
            assert time.monotonic() < deadline and enqueue.poll() is None, \
                enqueue.communicate()
            time.sleep(0.01)
        held = lifecycle.claim(h, "pending", "late")
        doc = lifecycle.parse_claimed(h, held, h.clock())
        lifecycle.complete(h, held, doc, Result(exit_code=0, duration_s=0.01), h.clock())
        assert h.index.get("late")["state"] == "completed"
        assert enqueue.poll() is None      # still waiting for the lock
    out, err = enqueue.communicate(timeout=60)
    assert (enqueue.returncode, out, err) == (0, "late\n", "")
    assert os.listdir(home / "spool" / "completed") == ["late.json"]
    assert h.index.get("late")["state"] == "completed"
    h.close()


def test_ready_summary_splits_ready_and_scheduled(index):
    index.upsert([row("r1", created=T0 - 30), row("r2", created=T0 - 10),
                  row("s1", created=T0 - 50, run_at=T0 + 60), row("x", "dead")])
    ready, scheduled, oldest = index.ready_summary(T0)
    assert (ready, scheduled, oldest) == (2, 1, T0 - 30)


def test_rejected_rows(index):
    index.upsert_rejected([("b.json", "why b", "2027-01-01T00:00:00.000000Z", 3),
                           ("a.json", "why a", "2027-01-02T00:00:00.000000Z", 4)])
    assert [r["name"] for r in index.rejected()] == ["a.json", "b.json"]
    assert index.rejected("b.json") == [{"name": "b.json", "reason": "why b",
                                         "rejected_at": "2027-01-01T00:00:00.000000Z",
                                         "size": 3}]
    assert index.rejected_count() == 2
    index.delete_rejected("a.json")
    assert index.rejected_names() == {"b.json"}


def test_config_values_keep_their_json_types(index):
    index.set_config("max_retries", 5)
    index.set_config("job_timeout", None)
    index.set_config("backoff_base", 1.5)
    assert index.config() == {"max_retries": 5, "job_timeout": None, "backoff_base": 1.5}
    index.unset_config("max_retries")
    assert "max_retries" not in index.config()


def test_clear_jobs_keeps_config(index):
    index.set_config("max_retries", 7)
    index.upsert([row("a")])
    index.upsert_rejected([("x.json", "why", "t", 1)])
    index.clear_jobs()
    assert index.counts() == {} and index.rejected_count() == 0
    assert index.config() == {"max_retries": 7}


def test_transaction_rolls_back_on_error(index):
    with pytest.raises(RuntimeError):
        with index.transaction():
            index.upsert([row("a")])
            raise RuntimeError("boom")
    assert index.get("a") is None


def test_a_database_sqlite_cannot_read_is_moved_aside(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "queue.db").write_bytes(b"this is not a database" * 100)
    idx = Index(str(data / "queue.db"))
    assert idx.counts() == {}
    idx.close()
    aside = [n for n in os.listdir(data) if n.startswith("queue.db.corrupt-")]
    assert len(aside) == 1
    assert (data / aside[0]).read_bytes() == b"this is not a database" * 100


def test_two_connections_see_each_others_writes(tmp_path):
    path = str(tmp_path / "data" / "queue.db")
    one, two = Index(path), Index(path)
    one.upsert([row("a")])
    assert two.get("a")["id"] == "a"
    two.upsert([row("a", "dead")])
    assert one.get("a")["state"] == "dead"
    one.close()
    two.close()


# ---- issue 9: a worker groups its index updates; ingest repairs what a dead worker lost ----

@pytest.mark.parametrize("racy_rule", [True, False], ids=["racy-rule", "negative-control"])
def test_grouped_index_updates_lost_with_their_worker_are_repaired_by_ingest(
        tmp_path, monkeypatch, racy_rule):
    """A worker commits its index updates in groups (at most every INDEX_GROUP_SECONDS and
    at idle): a worker killed in between loses the updates of jobs it already moved. ingest
    (status, list, reindex) repairs them because the moves changed their directories after
    its last look, and a directory looked at within RACY_SECONDS of its mtime is rescanned
    even when the mtime seems unchanged (coarse timestamps: the moves fell in the tick of the
    last look, simulated here by setting the mtimes back). The negative control turns the
    racy rule off: the lost update then stays lost, and the index disagrees with the spool."""
    from queuectl import ingest as ingestmod
    from queuectl.home import Home
    from queuectl.worker import Worker
    h = Home(str(tmp_path / "home"))
    h.spool.ensure_layout()
    from queuectl import lifecycle
    lifecycle.publish(h, [lifecycle.prepare(h, {"id": "j1", "command": "true"}, h.clock())],
                      h.clock())
    ingestmod.ingest(h)
    assert h.index.get("j1")["state"] == "pending"
    mtimes = {s: os.stat(h.spool.dir(s)).st_mtime_ns for s in ("pending", "completed")}
    worker = Worker(h)
    worker.next_flush = float("inf")            # no group is due before the "crash"
    assert worker.run_once()
    assert os.listdir(h.spool.dir("completed")) == ["j1.json"]
    assert h.index_pending()
    h._deferred.clear()                         # the worker dies with its queued updates
    assert h.index.get("j1")["state"] == "pending"
    for state, ns in mtimes.items():
        os.utime(h.spool.dir(state), ns=(ns, ns))
    if not racy_rule:
        monkeypatch.setattr(ingestmod, "RACY_SECONDS", -10**9)
    ingestmod.ingest(h)
    assert h.index.get("j1")["state"] == ("completed" if racy_rule else "pending")
    h.close()


def _tables(index):
    """Everything a group of worker updates can touch, in a comparable form."""
    db = index.db
    return {"jobs": db.execute("SELECT * FROM jobs ORDER BY id").fetchall(),
            "workers": db.execute("SELECT * FROM workers ORDER BY worker_id").fetchall(),
            "counters": db.execute("SELECT * FROM counters ORDER BY name").fetchall(),
            "per_minute": db.execute("SELECT * FROM per_minute ORDER BY minute, outcome")
            .fetchall(),
            "timings": db.execute("SELECT finished_ts, outcome, wait_s, run_s FROM timings "
                                  "ORDER BY seq").fetchall()}


def _worker_updates(home):
    """What a worker queues for three jobs in one group: a, finished; b, still running; c,
    failed and buried (the dead counter too); its heartbeat at every start and finish."""
    from queuectl import lifecycle
    beat = {"worker_id": "w1", "host": "h", "pid": 1, "started_at": T0, "jobs_done": 0,
            "jobs_failed": 0, "state": "idle"}
    for n, job_id in enumerate(("a", "b", "c")):
        doc = {"id": job_id, "command": "true", "priority": 0, "attempts": 0,
               "max_retries": 0, "created_at": jobmod.iso(T0), "updated_at": jobmod.iso(T0)}
        now = T0 + 10 * n
        lifecycle.mark_running(home, doc, now)
        home.index_update("heartbeat", home.index.heartbeat,
                          dict(beat, state="busy", current_job=job_id, heartbeat_at=now))
        if job_id == "b":
            continue
        doc.update(attempts=1, updated_at=jobmod.iso(now + 1))
        move, state = ("complete", "completed") if job_id == "a" else ("bury", "dead")
        lifecycle._record(home, move, doc, state, now + 1, wait_s=0.5, run_s=1.0)
        home.index_update("heartbeat", home.index.heartbeat,
                          dict(beat, jobs_done=n + 1, heartbeat_at=now + 1))


def test_a_coalesced_group_writes_what_the_updates_one_by_one_write(tmp_path):
    """A worker's group (job rows, heartbeats, outcomes) is coalesced into one row per job,
    one heartbeat per worker and summed outcomes: the tables end exactly as if every update
    had been written on its own, in order."""
    from queuectl.home import Home
    one_by_one, grouped = Home(str(tmp_path / "one")), Home(str(tmp_path / "grouped"))
    grouped.group_index_updates()
    for home in (one_by_one, grouped):
        home.spool.ensure_layout()
        _worker_updates(home)
    assert len(grouped._deferred) == 12
    grouped.flush_index()
    expected, found = _tables(one_by_one.index), _tables(grouped.index)
    assert found == expected
    assert dict(found["counters"]) == {"completed": 1, "failed": 1, "dead": 1}
    assert [(r[0], r[1]) for r in found["jobs"]] == [("a", "completed"), ("b", "processing"),
                                                     ("c", "dead")]
    for home in (one_by_one, grouped):
        home.close()


def test_a_group_with_other_updates_keeps_their_order(tmp_path):
    """Anything besides rows, heartbeats and outcomes (here a rejection's compare-and-set
    delete) makes the group write every update in order: coalescing the two rows of j would
    drop the row the delete removes, and the delete would then find nothing."""
    from queuectl import lifecycle
    from queuectl.home import Home
    home = Home(str(tmp_path / "home"))
    home.spool.ensure_layout()
    home.group_index_updates()
    doc = {"id": "j", "command": "true", "created_at": jobmod.iso(T0),
           "updated_at": jobmod.iso(T0)}
    lifecycle.mark_running(home, doc, T0)
    home.index_update("reject", home.index.delete_if, "j", "processing")
    home.index_update("reject", home.index.upsert,
                      [job_row(dict(doc, updated_at=jobmod.iso(T0 - 5)), "pending", T0)])
    home.flush_index()
    # In order: processing row, deleted, then the older pending row lands on an empty slot.
    assert home.index.get("j")["state"] == "pending"
    home.close()


def test_grouped_outcomes_prune_the_timings_window(index, monkeypatch):
    """Outcomes written in groups still prune the timings window each time the sequence
    passes a multiple of 1,000 (one row per attempt would do it at that row)."""
    from queuectl import index as indexmod
    monkeypatch.setattr(indexmod, "TIMINGS_KEPT", 50)
    for start in range(0, 1001, 7):
        index.record_outcomes([("completed", T0 + n, 0.1, 0.2, ())
                               for n in range(start, min(start + 7, 1001))])
    rows = index.db.execute("SELECT count(*), max(seq) FROM timings").fetchone()
    assert rows[1] == 1001 and rows[0] <= 50 + 7
    assert index.counters()["completed"] == 1001
