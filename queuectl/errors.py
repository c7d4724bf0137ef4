"""Error types: every failure a user can act on is a QueueError with a message that says
what went wrong and what to do. The CLI turns them into "Error: ..." and exit 1 in one place;
nothing below the CLI prints or exits."""


class QueueError(Exception):
    """Base class: an operation or user error with an actionable message."""

    exit_code = 1


class InvalidJob(QueueError):
    """A job (argument, stdin or dropped file) failed validation; one message per problem."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class DuplicateId(QueueError):
    """An id that already names a job somewhere in the spool."""


class JobNotFound(QueueError):
    """No job with that id in any state directory."""


class NoQueue(QueueError):
    """A read-only command found no queue where it looked (it never creates one)."""


class AmbiguousId(QueueError):
    """An id prefix that names more than one job."""


class InvalidConfig(QueueError):
    """An unknown config key or a value of the wrong type or range."""


class WrongState(QueueError):
    """The job exists but is not in a state that allows the operation."""


class UnsafeSpool(QueueError):
    """The spool's permissions or ownership would let others tamper with jobs."""


class Timeout(QueueError):
    """A wait ran out of time (the CLI exits 124 for it)."""

    exit_code = 124


class IndexUnusable(QueueError):
    """The index cannot be opened or written even after setting the broken files aside."""


class DuplicateKey(QueueError):
    """A unique_key already held by a pending, failed or processing job."""

    def __init__(self, message, holder):
        super().__init__(message)
        self.holder = holder


class UnknownDependency(QueueError):
    """An `after` id that names no job in the spool."""
