"""Applies the test plant named by QUEUECTL_TEST_PLANT (see plantkit) at interpreter
start-up. Only processes started with tests/plants on PYTHONPATH import this."""

import os

if os.environ.get("QUEUECTL_TEST_PLANT"):
    import plantkit
    plantkit.apply(os.environ["QUEUECTL_TEST_PLANT"])
