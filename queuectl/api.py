"""The Python API: `from queuectl import Queue`. The same library calls the CLI makes, with
Python values in and out instead of text; documented (with doctest-checked examples) in
docs/python-api.md. Stable: names and keyword arguments only grow.

Errors are the library's QueueError subclasses (queuectl.errors): InvalidJob, DuplicateId,
DuplicateKey (.holder names the job holding the key), UnknownDependency, JobNotFound,
WrongState, Timeout."""

from . import control, queries, submit
from .errors import JobNotFound, WrongState
from .home import Home


class Queue:
    """A queue home: Queue(home), or Queue(home, spool=..., data=...) like --spool/--data."""

    def __init__(self, home=None, spool=None, data=None):
        self.home = Home(home, spool, data)

    def __repr__(self):
        return f"Queue({self.home.home!r})"

    def close(self):
        self.home.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- adding jobs --------------------------------------------------------------------
    def enqueue(self, command, *, id=None, after=None, after_any=None, queue=None,
                priority=None, unique_key=None, if_exists="error", max_retries=None,
                timeout=None, delay=None, run_at=None, retry_on=None, no_retry_on=None,
                cwd=None, **fields):
        """Add one job; returns its id (with if_exists='skip' and a taken unique key: the
        id of the job holding the key). Extra keyword arguments become fields of the job."""
        doc = dict(fields, command=command)
        overrides = {"job_id": id, "after": list(after) if after else None,
                     "after_any": after_any, "queue": queue, "priority": priority,
                     "unique_key": unique_key, "max_retries": max_retries,
                     "timeout": timeout, "delay": delay, "run_at": run_at,
                     "retry_on": list(retry_on) if retry_on is not None else None,
                     "no_retry_on": list(no_retry_on) if no_retry_on is not None else None,
                     "cwd": cwd}
        return submit.enqueue(self.home, [doc], overrides, if_exists=if_exists)[0]

    # ---- reading ------------------------------------------------------------------------
    def get(self, job_id):
        """The job's fields as in its file, plus 'state'. JobNotFound if unknown."""
        info = queries.show(self.home, job_id)
        job = dict(info.get("job") or {"id": info["id"], "last_error": info["last_error"]})
        job["state"] = info["state"]
        return job

    def state(self, job_id):
        return queries.show(self.home, job_id)["state"]

    def list(self, state=None, queue=None, limit=None):
        """Index rows (dicts with id, state, command, priority, attempts, queue, ...):
        pending first in take order, then the rest newest first."""
        if queue is not None:
            from .queues import list_in_queue
            return list_in_queue(self.home, queue, state, limit)
        return queries.list_jobs(self.home, state, limit)

    def why(self, job_id):
        """The `queuectl why` paragraph."""
        from .why import explain
        return explain(self.home, job_id)["text"]

    def status(self):
        from .metrics import worker_rows
        return queries.status(self.home, worker_rows(self.home))

    def wait(self, job_id, timeout=None):
        """Block until the job is completed or dead; returns that state. Timeout (a
        QueueError) if `timeout` seconds pass first."""
        return control.wait(self.home, [job_id], timeout)[job_id]

    # ---- changing jobs ------------------------------------------------------------------
    def retry(self, job_id):
        """A dead job goes back to pending with attempts reset (dlq retry); a failed one
        runs now. Returns the message the CLI prints."""
        state = queries.show(self.home, job_id)["state"]
        outcome = (control.dlq_retry(self.home, [job_id]) if state == "dead" else
                   control.retry_now(self.home, [job_id]))[0]
        return self._result(outcome)

    def cancel(self, job_id, running=False):
        from . import hooks
        try:
            return self._result(control.cancel(self.home, [job_id], running)[0])
        finally:
            hooks.drain()

    @staticmethod
    def _result(outcome):
        if outcome.ok:
            return outcome.message
        if outcome.message.startswith("no job"):
            raise JobNotFound(outcome.message)
        raise WrongState(outcome.message)

    # ---- workers ------------------------------------------------------------------------
    def start_workers(self, count=1, queues=None):
        """Start a background worker pool (like `worker start`); returns its pids."""
        from . import pool
        return pool.start(self.home, count, queues=list(queues) if queues else None)

    def stop_workers(self, queue=None, timeout=None):
        """Stop the pools (only those started for `queue`, when given); returns the report
        lines `worker stop` prints."""
        from . import pool
        limit = self.home.settings.shutdown_timeout if timeout is None else timeout
        return pool.stop(self.home, limit, queue)
