"""Hooks with real workers: on_finish runs once per job with the job's id, state and exit
code; on_dead only for jobs landing in dead/ (also by cancel); a failing or hanging hook is
logged, killed at its time limit, and never hurts the job or the queue."""

import psutil

from workerkit import lines, pool, q, states_of  # noqa: F401

RECORD = 'echo "$QUEUECTL_JOB_ID $QUEUECTL_STATE ${QUEUECTL_EXIT_CODE:-none}" >> '


def test_hooks_run_once_per_job(pool, spool, tmp_path, wait_until):
    finished, dead = tmp_path / "finished", tmp_path / "dead"
    pool.config(backoff_max=0, on_finish=RECORD + q(finished), on_dead=RECORD + q(dead))
    pool.start(2)
    for n in range(3):
        pool.enqueue({"id": f"ok{n}", "command": "true"})
    pool.enqueue({"id": "bad", "command": "exit 3", "max_retries": 2})
    pool.enqueue({"id": "usage", "command": "exit 64", "max_retries": 2})
    pool.enqueue({"id": "later", "command": "true"}, "--delay", "1h")
    # Hooks run beside the queue: wait for both files to have every line.
    wait_until(lambda: len(lines(finished)) == 5 and len(lines(dead)) == 2, timeout=20)
    assert sorted(lines(finished)) == [["bad", "dead", "3"], ["ok0", "completed", "0"],
                                       ["ok1", "completed", "0"], ["ok2", "completed", "0"],
                                       ["usage", "dead", "64"]]
    assert sorted(lines(dead)) == [["bad", "dead", "3"], ["usage", "dead", "64"]]
    assert pool.cli("cancel", "later").exit_code == 0        # cancel lands in dead/ too
    assert lines(dead)[-1] == ["later", "dead", "none"]
    assert len(lines(finished)) == 6


def test_a_failing_or_hanging_hook_does_not_hurt_the_queue(pool, spool, home, tmp_path,
                                                          wait_until):
    pool.config(on_finish="echo hook ran; exit 5", on_dead="sleep 61.37", hook_timeout=0.5)
    pool.start(1)
    pool.enqueue({"id": "dies", "command": "exit 1", "max_retries": 0})
    ids = [pool.enqueue({"command": "true"}) for _ in range(5)]
    wait_until(lambda: states_of(spool, "dies") == ["dead"] and
               all(states_of(spool, i) == ["completed"] for i in ids), timeout=20)
    log = home / "data" / "logs" / "queuectl.log"
    wait_until(lambda: "hook on_dead for dies killed after its time limit" in log.read_text(),
               timeout=10)
    assert "hook on_finish for dies failed (exit code 5); the job is unaffected" in \
        log.read_text()
    assert (home / "data" / "logs" / "hooks.log").read_text().count("hook ran\n") == 6
    # The hook's group was SIGKILLed; on a loaded machine its members may take a moment
    # to be scheduled and die.
    wait_until(lambda: not hung_hooks(), timeout=10, message="the hung hook's processes gone")


def hung_hooks():
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] in (["/bin/sh", "-c", "sleep 61.37"], ["sleep", "61.37"]) and \
                proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
