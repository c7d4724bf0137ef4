"""The Python API: docs/python-api.md's examples run as doctests against a fresh home with
real workers (the page shows real output), plus what the examples cannot show."""

import doctest
import os

import pytest

from queuectl import Queue
from queuectl.errors import DuplicateKey, Timeout
from workerkit import home_processes, kill_processes

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "python-api.md")


def test_the_documented_examples_run(home):
    try:
        result = doctest.testfile(DOC, module_relative=False, globs={"home": str(home)},
                                  optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                  report=True, verbose=False)
    finally:
        kill_processes(home_processes(home))
    assert result.attempted >= 28
    assert result.failed == 0, "see the doctest report above"


def test_duplicate_key_names_the_holder_and_wait_times_out(home):
    with Queue(str(home)) as q:
        first = q.enqueue("true", unique_key="k")
        with pytest.raises(DuplicateKey) as raised:
            q.enqueue("true", unique_key="k")
        assert raised.value.holder == first
        with pytest.raises(Timeout, match=r"timed out after 0.1s waiting for .* \(pending\)"):
            q.wait(first, timeout=0.1)
        assert q.list(queue="default")[0]["id"] == first
