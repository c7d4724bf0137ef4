"""Retry timing with an injected clock: the formula (job.retry_delay), the cap
(backoff_max), lifecycle.fail with a fake `now`, and a Worker and recovery whose Home reads
a fake clock, so no test waits for real time to pass."""

import json
import math

import pytest

from queuectl import job as jobmod
from queuectl import lifecycle
from queuectl.home import Home
from queuectl.recovery import recover_all
from queuectl.settings_store import set_value
from queuectl.submit import enqueue
from queuectl.worker import Worker

T0 = 1_900_000_000.0


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def qhome(home, clock):
    """A Home on the test's directory whose clock is the fake one."""
    h = Home(str(home), clock=clock)
    yield h
    h.close()


def read(spool, state, job_id):
    return json.loads((spool / state / f"{job_id}.json").read_bytes())


def states_of(spool, job_id):
    return [s for s in ("pending", "processing", "failed", "completed", "dead")
            if (spool / s / f"{job_id}.json").exists()]


# ---- the formula -----------------------------------------------------------------------------

@pytest.mark.parametrize("attempts, base, expected", [
    (1, 2, 2.0), (2, 2, 4.0), (3, 2, 8.0), (10, 2, 1024.0),
    (0, 2, 1.0), (1, 3, 3.0), (2, 3, 9.0), (4, 1, 1.0), (2, 1.5, 2.25),
])
def test_retry_delay_is_base_to_the_power_of_attempts(attempts, base, expected):
    assert jobmod.retry_delay(attempts, base, 3600) == expected


@pytest.mark.parametrize("attempts, base, cap, expected", [
    (11, 2, 3600, 2048.0), (12, 2, 3600, 3600.0), (40, 2, 3600, 3600.0),
    (3, 2, 5, 5.0), (2, 2, 4, 4.0), (5, 2, 0, 0.0), (1, 10, 9.5, 9.5),
])
def test_retry_delay_is_capped_by_backoff_max(attempts, base, cap, expected):
    assert jobmod.retry_delay(attempts, base, cap) == expected


def test_retry_delay_survives_a_power_too_large_for_a_float():
    with pytest.raises(OverflowError):
        2.0 ** 5000                                  # what the formula must not leak
    assert jobmod.retry_delay(5000, 2, 3600) == 3600.0
    assert jobmod.retry_delay(10**6, 1000, 86400) == 86400.0
    assert math.isfinite(jobmod.retry_delay(5000, 2, 3600))


@pytest.mark.parametrize("attempts, max_retries, exhausted", [
    (0, 0, False), (1, 0, True), (3, 3, False), (4, 3, True), (2, 2, False), (3, 2, True),
])
def test_exhausted_once_attempts_exceed_max_retries(attempts, max_retries, exhausted):
    assert jobmod.is_exhausted({"attempts": attempts, "max_retries": max_retries}) is exhausted


# ---- lifecycle.fail with a fake now ----------------------------------------------------------

def _claim(qhome, state, job_id, now):
    held = lifecycle.claim(qhome, state, job_id)
    assert held is not None, f"could not claim {state}/{job_id}"
    return held, lifecycle.parse_claimed(qhome, held, now)


def test_fail_schedules_retries_two_then_four_seconds_after_now_then_buries(qhome, spool):
    (job_id,) = enqueue(qhome, [{"id": "flaky", "command": "false", "max_retries": 2}], {})
    now = T0 + 100
    held, doc = _claim(qhome, "pending", job_id, now)
    assert lifecycle.fail(qhome, held, doc, "exit code 1", 1, 0.25, now) == "failed"
    first = read(spool, "failed", job_id)
    assert first["run_at"] == jobmod.iso(now + 2)
    assert (first["attempts"], first["exit_code"], first["last_error"], first["duration_s"]) \
        == (1, 1, "exit code 1", 0.25)
    assert first["finished_at"] == first["updated_at"] == jobmod.iso(now)
    assert states_of(spool, job_id) == ["failed"]

    later = T0 + 250
    held, doc = _claim(qhome, "failed", job_id, later)
    assert lifecycle.fail(qhome, held, doc, "exit code 7", 7, 0.5, later) == "failed"
    second = read(spool, "failed", job_id)
    assert second["run_at"] == jobmod.iso(later + 4)
    assert (second["attempts"], second["exit_code"]) == (2, 7)

    last = T0 + 400
    held, doc = _claim(qhome, "failed", job_id, last)
    assert lifecycle.fail(qhome, held, doc, "exit code 9", 9, 0.5, last) == "dead"
    dead = read(spool, "dead", job_id)
    assert dead["attempts"] == 3 and dead["last_error"] == "exit code 9"
    assert "run_at" not in dead
    assert states_of(spool, job_id) == ["dead"]
    assert qhome.index.get(job_id)["state"] == "dead"


def _publish_tried(qhome, doc):
    """A pending job that has had attempts already (enqueue refuses `attempts`)."""
    lifecycle.publish(qhome, [jobmod.complete(jobmod.validate(doc), {"max_retries": 3}, T0)],
                      T0)


def test_fail_caps_the_delay_at_backoff_max(qhome, spool):
    set_value(qhome, "backoff_max", "5")
    set_value(qhome, "backoff_base", "3")
    _publish_tried(qhome, {"id": "capped", "command": "false", "max_retries": 10,
                           "attempts": 1})
    held, doc = _claim(qhome, "pending", "capped", T0)
    lifecycle.fail(qhome, held, doc, "boom", 1, 0.1, T0)     # attempts 2: 3**2 = 9 > 5
    assert read(spool, "failed", "capped")["run_at"] == jobmod.iso(T0 + 5)
    assert qhome.index.get("capped")["due_ts"] == pytest.approx(T0 + 5)


def test_fail_uses_the_configured_base(qhome, spool):
    set_value(qhome, "backoff_base", "3")
    enqueue(qhome, [{"id": "b3", "command": "false", "max_retries": 5}], {})
    held, doc = _claim(qhome, "pending", "b3", T0)
    lifecycle.fail(qhome, held, doc, "boom", 1, 0.1, T0)
    assert read(spool, "failed", "b3")["run_at"] == jobmod.iso(T0 + 3)


def test_max_retries_zero_goes_straight_to_dead(qhome, spool):
    enqueue(qhome, [{"id": "once", "command": "false", "max_retries": 0}], {})
    held, doc = _claim(qhome, "pending", "once", T0)
    assert lifecycle.fail(qhome, held, doc, "boom", 1, 0.1, T0) == "dead"
    assert read(spool, "dead", "once")["attempts"] == 1


# ---- a worker on a fake clock ----------------------------------------------------------------

@pytest.fixture
def fake_worker(qhome):
    worker = Worker(qhome)
    yield worker
    worker.wakeup.close()


def test_worker_on_a_fake_clock_retries_exactly_at_the_backoff_times(qhome, spool, clock,
                                                                      fake_worker, tmp_path):
    runs = tmp_path / "runs"
    enqueue(qhome, [{"id": "fails", "max_retries": 2,
                     "command": f"echo $QUEUECTL_ATTEMPT >> '{runs}'; exit 4"}], {})
    assert fake_worker.run_once() is True
    assert read(spool, "failed", "fails")["run_at"] == jobmod.iso(T0 + 2)

    clock.advance(1.999)
    assert fake_worker.run_once() is False            # not due: the real clock is ignored
    assert states_of(spool, "fails") == ["failed"]

    clock.advance(0.001)
    assert fake_worker.run_once() is True
    assert read(spool, "failed", "fails")["run_at"] == jobmod.iso(T0 + 2 + 4)
    clock.advance(3.999)
    assert fake_worker.run_once() is False
    clock.advance(0.001)
    assert fake_worker.run_once() is True
    dead = read(spool, "dead", "fails")
    assert (dead["attempts"], dead["exit_code"], dead["last_error"]) == (3, 4, "exit code 4")
    assert dead["finished_at"] == jobmod.iso(T0 + 6)
    assert runs.read_text().split() == ["1", "2", "3"]
    clock.advance(10_000)
    assert fake_worker.run_once() is False
    assert runs.read_text().split() == ["1", "2", "3"]


def test_worker_on_a_fake_clock_does_not_run_a_scheduled_job_early(qhome, spool, clock,
                                                                    fake_worker, tmp_path):
    ran = tmp_path / "ran"
    enqueue(qhome, [{"id": "later", "command": f"touch '{ran}'"}], {"delay": "3s"})
    assert read(spool, "pending", "later")["run_at"] == jobmod.iso(T0 + 3)
    assert fake_worker.run_once() is False
    clock.advance(2.9)
    assert fake_worker.run_once() is False
    assert not ran.exists()
    clock.advance(0.1)
    assert fake_worker.run_once() is True
    assert ran.exists() and states_of(spool, "later") == ["completed"]


def test_recovery_on_a_fake_clock_counts_the_attempt_and_backs_off(qhome, spool, clock):
    _publish_tried(qhome, {"id": "orphan", "command": "true", "attempts": 1})
    held = lifecycle.claim(qhome, "pending", "orphan")
    qhome.spool.release(held, unlink=False)          # its worker died: processing/, unlocked
    clock.advance(50)
    assert recover_all(qhome) == [{"id": "orphan", "state": "failed", "result":
                                   "worker died: attempt counted, moved to failed (will retry)"}]
    doc = read(spool, "failed", "orphan")
    assert (doc["attempts"], doc["last_error"]) == (2, "worker died")
    assert doc["run_at"] == jobmod.iso(T0 + 50 + 4)
