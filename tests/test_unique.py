"""Unique keys: exactly one winner among 8 concurrent enqueuers (real processes), --if-exists
skip, the key freed when the job finishes, drop-ins with a taken key rejected, a drop-in that
takes a free key, dlq retry refused while the key is held, and stale keys (a crash's
leftovers) taken over by enqueue and repaired by fsck."""

import json
import os
import time

from queuectl import unique
from queuectl.spool import Spool
from workerkit import ids_in, pool, q, states_of  # noqa: F401


def test_exactly_one_of_eight_concurrent_enqueuers_wins(spawn_queuectl, spool):
    procs = [spawn_queuectl("enqueue", "--unique-key", "nightly-sync",
                            json.dumps({"command": f"echo {n}"})) for n in range(8)]
    results = [(p.wait(timeout=60), p.stdout.read().decode(), p.stderr.read().decode())
               for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
        p.stdin.close()
    winners = [out.strip() for code, out, _ in results if code == 0]
    assert len(winners) == 1, results
    (winner,) = winners
    assert ids_in(spool, "pending") == [winner]
    losers = [err for code, _, err in results if code != 0]
    assert len(losers) == 7
    # "(pending)" unless the loser looked between the winner's key and its publish.
    message = f"Error: a job with unique key 'nightly-sync' already exists: {winner}"
    assert all(err in (message + " (pending)\n", message + "\n") for err in losers), losers
    assert unique.owner(Spool(str(spool)), "nightly-sync") == winner


def test_if_exists_skip_and_the_key_freed_when_the_job_finishes(cli, pool, spool, tmp_path,
                                                                 wait_until):
    release = tmp_path / "go"
    first = cli("enqueue", "--id", "one", "--unique-key", "k",
                json.dumps({"command": f"while [ ! -e {q(release)} ]; do sleep 0.05; done"}))
    assert first.exit_code == 0
    skipped = cli("enqueue", "--unique-key", "k", "--if-exists", "skip", '{"command": "x"}')
    assert (skipped.exit_code, skipped.stdout, skipped.stderr) == (0, "one\n", "")
    pool.start(1)
    wait_until(lambda: pool.worker_running("one"), timeout=15)
    refused = cli("enqueue", "--unique-key", "k", '{"command": "x"}')
    assert (refused.exit_code, refused.stderr) == \
        (1, "Error: a job with unique key 'k' already exists: one (processing)\n")
    release.touch()
    wait_until(lambda: states_of(spool, "one") == ["completed"], timeout=15)
    wait_until(lambda: unique.owner(Spool(str(spool)), "k") is None, timeout=5)
    again = cli("enqueue", "--id", "two", "--unique-key", "k", '{"command": "true"}')
    assert (again.exit_code, again.stdout) == (0, "two\n")
    # A set: a finished job's processing/ name is unlinked only after completed/ is
    # fsynced, so a listing of one directory after the other may see "two" in both.
    assert set(ids_in(spool, "pending")) | set(ids_in(spool, "processing")) | \
        set(ids_in(spool, "completed")) == {"one", "two"}


def test_drop_ins_with_a_taken_key_are_rejected(cli, pool, spool, drop, tmp_path,
                                                 wait_until):
    release = tmp_path / "go"
    hold = json.dumps({"command": f"while [ ! -e {q(release)} ]; do sleep 0.05; done",
                       "unique_key": "report"})
    assert cli("enqueue", "--id", "held", hold).exit_code == 0
    drop("copy.json", json.dumps({"command": "true", "unique_key": "report"}))
    drop("fresh.json", json.dumps({"command": f"while [ ! -e {q(release)} ]; do sleep 0.05; "
                                   "done", "unique_key": "weekly"}))
    assert cli("why", "copy").stdout == ("pending, will be rejected when a worker takes it: "
                                         "duplicate unique key 'report': job held holds it\n")
    pool.start(2)
    wait_until(lambda: (spool / "rejected" / "copy.json").exists(), timeout=15)
    assert (spool / "rejected" / "copy.json.reason").read_text() == \
        "duplicate unique key 'report': job held holds it\n"
    assert pool.cli("why", "copy").stdout == \
        "rejected: duplicate unique key 'report': job held holds it\n"
    # A drop-in whose key is free takes it: the CLI is refused while it runs.
    wait_until(lambda: pool.worker_running("fresh"), timeout=15)
    refused = cli("enqueue", "--unique-key", "weekly", '{"command": "x"}')
    assert refused.stderr == "Error: a job with unique key 'weekly' already exists: fresh " \
                             "(processing)\n"
    release.touch()
    wait_until(lambda: states_of(spool, "held") == ["completed"] and
               states_of(spool, "fresh") == ["completed"], timeout=15)


def test_dlq_retry_needs_the_key(cli, pool, spool, wait_until):
    pool.start(1)
    assert cli("enqueue", "--id", "old", "--unique-key", "k",
               '{"command": "exit 2", "max_retries": 0}').exit_code == 0
    wait_until(lambda: states_of(spool, "old") == ["dead"], timeout=15)
    pool.stop("--timeout", "1")
    assert cli("enqueue", "--id", "new", "--unique-key", "k", '{"command": "true"}') \
        .exit_code == 0
    result = cli("dlq", "retry", "old")
    assert (result.exit_code, result.stdout) == \
        (1, "old: error: job 'old' cannot be retried: its unique key 'k' is held by job new\n")
    assert states_of(spool, "old") == ["dead"]


def test_stale_keys_are_taken_over_and_repaired_by_fsck(cli, spool):
    assert cli("enqueue", "--id", "live", '{"command": "true"}').exit_code == 0
    store = Spool(str(spool))
    # A crash between taking a key and publishing its job leaves a key naming nobody.
    assert unique.acquire(store, "ghost-key", "never-published") is None
    path = unique.key_path(store, "ghost-key")
    fresh = cli("enqueue", "--unique-key", "ghost-key", '{"command": "true"}')
    assert fresh.stderr == "Error: a job with unique key 'ghost-key' already exists: " \
                           "never-published\n"       # could be an enqueue in progress
    old = time.time() - unique.STALE_SECONDS - 5
    os.utime(path, (old, old))
    taken = cli("enqueue", "--id", "heir", "--unique-key", "ghost-key", '{"command": "true"}')
    assert (taken.exit_code, taken.stdout) == (0, "heir\n")
    assert unique.owner(store, "ghost-key") == "heir"

    assert unique.acquire(store, "left", "gone") is None
    os.utime(unique.key_path(store, "left"), (old, old))
    name = os.path.basename(unique.key_path(store, "left"))
    report = cli("fsck", "--json")
    assert report.exit_code == 1
    assert json.loads(report.stdout) == [{
        "kind": "stale-key", "where": f"keys/{name}", "fixed": None,
        "detail": "unique key 'left' still held for job 'gone', which is no longer "
                  "pending, failed or processing"}]
    repaired = json.loads(cli("fsck", "--repair", "--json").stdout)
    assert repaired[0]["fixed"] == "removed (the key is free again)"
    assert cli("fsck").exit_code == 0
    assert unique.owner(store, "left") is None and unique.owner(store, "ghost-key") == "heir"
