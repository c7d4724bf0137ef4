"""Polling with a deadline: the one way tests wait for a state (never a bare sleep)."""

import time

import pytest


def wait_until(predicate, timeout=10, interval=0.02, message=None):
    """Poll until predicate() returns something truthy and return it; fail the test,
    naming what was awaited and the last result, on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"timed out after {timeout}s waiting for {what} "
                        f"(last result: {value!r})")
        time.sleep(interval)
