"""queuectl: a local background job queue whose jobs are JSON files in a Maildir-style
spool; see README.md and docs/."""

__version__ = "0.1.0"


def __getattr__(name):
    """`from queuectl import Queue` (the Python API, docs/python-api.md), imported lazily so
    the CLI does not pay for it."""
    if name == "Queue":
        from .api import Queue
        return Queue
    raise AttributeError(f"module 'queuectl' has no attribute {name!r}")
