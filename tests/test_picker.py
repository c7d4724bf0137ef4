"""The picker's heap order: highest priority first, then the earliest due time, then the id;
nothing scheduled comes out before it is due; a re-added or forgotten entry never comes out
in its old form. Pure unit tests: the picker reads no clock, `now` is passed in."""

import random

from queuectl.picker import Picker

NOW = 1_800_000_000.0


def drain(picker, now=NOW):
    """Every ready candidate, in the order the picker hands them out."""
    taken = []
    while True:
        candidate = picker.pop_ready(now)
        if candidate is None:
            return taken
        taken.append(candidate.job_id)


def test_higher_priority_first_then_earliest_due_then_id():
    picker = Picker()
    picker.add("pending", "low", 0, NOW - 50)
    picker.add("pending", "high", 10, NOW - 1)
    picker.add("pending", "negative", -3, NOW - 500)
    picker.add("pending", "mid", 5, NOW - 2)
    picker.add("pending", "zero-early", 0, NOW - 100)
    picker.add("failed", "zero-b", 0, NOW - 10)
    picker.add("pending", "zero-a", 0, NOW - 10)
    assert drain(picker) == ["high", "mid", "zero-early", "low", "zero-a", "zero-b",
                             "negative"]
    assert len(picker) == 0


def test_pop_returns_the_state_priority_and_due_it_was_given():
    picker = Picker()
    picker.add("failed", "j1", 7, NOW - 3)
    candidate = picker.pop_ready(NOW)
    assert (candidate.state, candidate.job_id, candidate.priority, candidate.due) == \
        ("failed", "j1", 7, NOW - 3)
    assert picker.pop_ready(NOW) is None


def test_a_scheduled_candidate_is_not_ready_before_its_due_time():
    picker = Picker()
    picker.add("pending", "later", 100, NOW + 3)
    picker.add("pending", "now", 0, NOW)
    assert drain(picker, NOW) == ["now"]
    assert picker.pop_ready(NOW + 2.999) is None
    assert picker.next_due() == NOW + 3
    candidate = picker.pop_ready(NOW + 3)
    assert candidate.job_id == "later"
    assert picker.next_due() is None


def test_once_due_a_scheduled_high_priority_job_overtakes_older_low_priority_ones():
    picker = Picker()
    picker.add("pending", "old-low", 0, NOW - 1000)
    picker.add("failed", "retry-high", 9, NOW + 5)
    assert picker.pop_ready(NOW + 10).job_id == "retry-high"
    assert picker.pop_ready(NOW + 10).job_id == "old-low"


def test_next_due_is_the_earliest_scheduled_time_and_skips_stale_entries():
    picker = Picker()
    picker.add("failed", "a", 0, NOW + 30)
    picker.add("failed", "b", 0, NOW + 10)
    assert picker.next_due() == NOW + 10
    picker.forget("failed", "b")
    assert picker.next_due() == NOW + 30
    picker.add("failed", "a", 0, NOW + 60)          # re-added: the old time no longer counts
    assert picker.next_due() == NOW + 60


def test_re_adding_a_job_replaces_its_entry():
    picker = Picker()
    picker.add("pending", "x", 0, NOW - 10)
    picker.add("pending", "y", 5, NOW - 10)
    picker.add("pending", "x", 9, NOW - 10)          # its priority was raised
    assert len(picker) == 2
    assert drain(picker) == ["x", "y"]


def test_re_adding_with_a_later_due_time_hides_the_earlier_ready_entry():
    picker = Picker()
    picker.add("failed", "x", 0, NOW - 1)
    picker._promote(NOW)                              # already in the ready heap
    picker.add("failed", "x", 0, NOW + 100)           # it failed again: due later
    assert picker.pop_ready(NOW) is None
    assert picker.pop_ready(NOW + 100).job_id == "x"


def test_a_forgotten_job_never_comes_out():
    picker = Picker()
    picker.add("pending", "gone", 10, NOW - 1)
    picker.add("pending", "kept", 0, NOW - 1)
    picker.forget("pending", "gone")
    picker.forget("pending", "never-added")
    assert ("pending", "gone") not in picker
    assert drain(picker) == ["kept"]


def test_the_same_id_in_two_states_is_two_entries():
    picker = Picker()
    picker.add("pending", "dup", 0, NOW - 2)
    picker.add("failed", "dup", 0, NOW - 1)
    assert len(picker) == 2
    assert picker.keys("failed") == [("failed", "dup")]
    taken = [picker.pop_ready(NOW), picker.pop_ready(NOW)]
    assert [(c.state, c.job_id) for c in taken] == [("pending", "dup"), ("failed", "dup")]


def test_membership_and_keys_follow_adds_pops_and_forgets():
    picker = Picker()
    picker.add("pending", "a", 0, NOW)
    picker.add("pending", "b", 0, NOW + 50)
    picker.add("failed", "c", 0, NOW)
    assert sorted(picker.keys("pending")) == [("pending", "a"), ("pending", "b")]
    assert ("failed", "c") in picker and ("pending", "c") not in picker
    picker.pop_ready(NOW)
    picker.pop_ready(NOW)
    assert sorted(picker.keys("pending")) + picker.keys("failed") == [("pending", "b")]


def test_random_workload_comes_out_in_sorted_order():
    rng = random.Random(1234)
    picker = Picker()
    expected = {}
    for n in range(5000):
        job_id = f"job-{n:05d}"
        priority = rng.randint(-3, 3)
        due = NOW - rng.randint(0, 100)
        picker.add("pending", job_id, priority, due)
        expected[job_id] = (-priority, due, job_id)
    for job_id in rng.sample(sorted(expected), 1000):      # forget a fifth
        picker.forget("pending", job_id)
        del expected[job_id]
    for job_id in rng.sample(sorted(expected), 1000):      # re-prioritise another fifth
        priority = rng.randint(-3, 3)
        picker.add("pending", job_id, priority, expected[job_id][1])
        expected[job_id] = (-priority, expected[job_id][1], job_id)
    assert drain(picker) == sorted(expected, key=expected.get)


def test_compact_drops_dead_entries_and_keeps_the_order():
    picker = Picker()
    expected = {}
    for n in range(3000):
        picker.add("pending", f"j{n:04d}", n % 7, NOW - n)
        expected[f"j{n:04d}"] = (-(n % 7), NOW - n, f"j{n:04d}")
    for n in range(3000):
        if n % 6 != 1:
            picker.forget("pending", f"j{n:04d}")
            del expected[f"j{n:04d}"]
    for n in range(1, 3000, 12):                          # stale versions left behind
        picker.add("pending", f"j{n:04d}", 100, NOW - n)
        expected[f"j{n:04d}"] = (-100, NOW - n, f"j{n:04d}")
    assert len(picker) == 500
    assert len(picker._ready) + len(picker._scheduled) == 3250
    picker.compact()
    assert len(picker._ready) + len(picker._scheduled) == 500
    assert drain(picker) == sorted(expected, key=expected.get)
