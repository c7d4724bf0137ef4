"""Dependencies with real workers: a chain of 3 with a failure in the middle (and the failure
cascading), --after-any, dlq retry of the failed dependency letting its dependents run,
unknown ids refused at enqueue and rejected for drop-ins, no spinning on a blocked job, and
100 jobs each depending on the previous one running in order."""

import json
import time

import psutil
import pytest

from workerkit import lines, pool, q, read_job, states_of  # noqa: F401


def finished(spool, **expected):
    return all(states_of(spool, i) == [s] for i, s in expected.items())


def test_chain_of_three_with_a_failure_in_the_middle(pool, spool, tmp_path, wait_until):
    log = tmp_path / "ran"
    pool.enqueue({"id": "a", "command": f"echo a >> {q(log)}"})
    pool.enqueue({"id": "b", "command": f"echo b >> {q(log)}; exit 1", "max_retries": 0},
                 "--after", "a")
    pool.enqueue({"id": "c", "command": f"echo c >> {q(log)}"}, "--after", "b")
    pool.enqueue({"id": "d", "command": f"echo d >> {q(log)}"}, "--after", "c")
    pool.enqueue({"id": "e", "command": f"echo e >> {q(log)}"}, "--after", "b",
                 "--after-any")
    assert pool.cli("why", "d").stdout == (
        "pending, waiting for dependency c (pending, itself waiting for b (pending, itself "
        "waiting for a (pending)))\n")
    pool.start(2)
    wait_until(lambda: finished(spool, a="completed", b="dead", c="dead", d="dead",
                                e="completed"), timeout=20)
    assert [w[0] for w in lines(log)] == ["a", "b", "e"]
    c = read_job(spool, "c", "dead")
    assert (c["last_error"], c["attempts"], c.get("history")) == ("dependency b failed", 0, None)
    assert read_job(spool, "d", "dead")["last_error"] == "dependency c failed"
    assert pool.cli("why", "c").stdout == \
        "dead: dependency b failed (queuectl dlq retry c runs it again)\n"


def test_dlq_retry_of_the_dependency_lets_its_dependents_run(pool, spool, tmp_path,
                                                             wait_until):
    gate = tmp_path / "broken"
    gate.touch()
    log = tmp_path / "ran"
    pool.start(1)
    pool.enqueue({"id": "build", "command": f"test ! -e {q(gate)} && echo build >> {q(log)}",
                  "max_retries": 0})
    pool.enqueue({"id": "test", "command": f"echo test >> {q(log)}"}, "--after", "build")
    pool.enqueue({"id": "ship", "command": f"echo ship >> {q(log)}"}, "--after", "test")
    wait_until(lambda: finished(spool, build="dead", test="dead", ship="dead"), timeout=20)
    gate.unlink()
    result = pool.cli("dlq", "retry", "build")
    assert result.stdout == \
        "build: moved to pending (attempts reset); dependents back too: test, ship\n"
    wait_until(lambda: finished(spool, build="completed", test="completed", ship="completed"),
               timeout=20)
    assert [w[0] for w in lines(log)] == ["build", "test", "ship"]

    # dlq retry --all: every dead job back, the dependents with their dependency.
    pool.enqueue({"id": "x", "command": "exit 1", "max_retries": 0})
    pool.enqueue({"id": "y", "command": "true"}, "--after", "x")
    wait_until(lambda: finished(spool, x="dead", y="dead"), timeout=20)
    pool.stop("--timeout", "1")
    result = pool.cli("dlq", "retry", "--all")
    assert result.exit_code == 0, result.stdout
    assert sorted(result.stdout.splitlines()) in (
        ["x: moved to pending (attempts reset); dependents back too: y",
         "y: moved to pending (attempts reset) with x"],
        ["x: moved to pending (attempts reset)", "y: moved to pending (attempts reset)"])
    assert finished(spool, x="pending", y="pending")


def test_unknown_dependencies_are_refused_and_drop_ins_rejected(cli, pool, spool, drop,
                                                               wait_until):
    result = cli("enqueue", "--after", "ghost", '{"command": "true"}')
    assert (result.exit_code, result.stderr) == \
        (1, "Error: after: no job with id 'ghost' (a dependency must already exist)\n")
    result = cli("enqueue", "-", input='{"id": "x", "command": "true"}\n'
                 '{"id": "y", "command": "true", "after": ["x"]}\n'
                 '{"id": "z", "command": "true", "after": ["nope"]}\n')
    assert (result.exit_code, result.stderr) == \
        (1, "Error: job 3: after: no job with id 'nope' (a dependency must already exist)\n")
    assert states_of(spool, "x") == [] and states_of(spool, "y") == []
    result = cli("enqueue", '{"id": "self", "command": "true", "after": ["self"]}')
    assert result.stderr == "Error: after: job 'self' cannot depend on itself\n"
    drop("orphan.json", json.dumps({"command": "true", "after": ["ghost"]}))
    pool.start(1)
    wait_until(lambda: (spool / "rejected" / "orphan.json").exists(), timeout=15)
    assert (spool / "rejected" / "orphan.json.reason").read_text() == \
        "dependency 'ghost' does not exist\n"


def test_a_blocked_job_is_not_claimed_again_and_again(pool, spool, tmp_path, wait_until):
    release = tmp_path / "release"
    pool.start(2)
    pool.enqueue({"id": "first", "command": f"while [ ! -e {q(release)} ]; do sleep 0.05; done"})
    pool.enqueue({"id": "second", "command": "true"}, "--after", "first")
    wait_until(lambda: pool.worker_running("first"), timeout=15)
    why = pool.cli("why", "second").stdout
    assert why.startswith("pending, waiting for dependency first (processing on host ")
    assert why.endswith(", attempt 1)\n")
    workers = [psutil.Process(w["pid"]) for w in pool.workers()]
    idle = next(p for p in workers if p.pid != pool.worker_running("first"))
    before = sum(p.cpu_times().user + p.cpu_times().system for p in [idle])
    pending_mtime = (spool / "pending").stat().st_mtime_ns
    # Watch for two poll intervals: the blocked job stays where it is, untouched.
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        assert states_of(spool, "second") == ["pending"]
        time.sleep(0.1)
    assert (spool / "pending").stat().st_mtime_ns == pending_mtime, "second was re-claimed"
    assert sum(p.cpu_times().user + p.cpu_times().system for p in [idle]) - before < 0.5
    release.touch()
    wait_until(lambda: finished(spool, first="completed", second="completed"), timeout=15)
    first = read_job(spool, "first", "completed")["history"][0]
    second = read_job(spool, "second", "completed")["history"][0]
    assert second["started_at"] >= first["finished_at"]


def chain(pool, spool, tmp_path, wait_until, count, workers, timeout):
    log = tmp_path / "order"
    pool.start(workers)
    jobs = [{"id": f"link{n:04d}", "command": f"echo {n} >> {q(log)}",
             **({"after": [f"link{n - 1:04d}"]} if n else {})} for n in range(count)]
    pool.enqueue_many(jobs)        # one batch: a job may name one earlier in the batch
    wait_until(lambda: states_of(spool, f"link{count - 1:04d}") == ["completed"],
               timeout=timeout, interval=0.1)
    assert [int(w[0]) for w in lines(log)] == list(range(count))


def test_a_hundred_chained_jobs_run_in_order(pool, spool, tmp_path, wait_until):
    chain(pool, spool, tmp_path, wait_until, 100, 2, timeout=60)


@pytest.mark.stress
def test_a_thousand_chained_jobs_run_in_order(pool, spool, tmp_path, wait_until):
    chain(pool, spool, tmp_path, wait_until, 1000, 4, timeout=600)
