"""Admission of new jobs beyond their own validity: their dependencies must exist and their
unique keys must be free. Runs between building the records (submit) and publishing them
(lifecycle); takes the unique keys first and frees them again if publishing fails."""

from . import lifecycle
from .errors import DuplicateKey

IF_EXISTS = ("error", "skip")


def _key_holder_text(home, holder):
    where = home.spool.find(holder)
    return f"{holder} ({where[0]})" if where else holder


def publish(home, docs, now, if_exists="error"):
    """Publish validated jobs; returns one id per job: its own, or with if_exists='skip' the
    id of the job already holding its unique key. DuplicateKey (naming the holder) or
    UnknownDependency otherwise, and nothing is written."""
    if any(doc.get("after") for doc in docs):
        from . import deps          # only for jobs that have them: enqueue starts faster
        deps.check_known(home.spool, docs)
    if any(doc.get("unique_key") is not None for doc in docs):
        from . import unique
    taken, results, publishing = [], [], []
    try:
        for doc in docs:
            key = doc.get("unique_key")
            holder = unique.acquire(home.spool, key, doc["id"]) if key is not None else None
            if holder is None:
                if key is not None:
                    taken.append(doc)
                publishing.append(doc)
                results.append(doc["id"])
            elif if_exists == "skip":
                results.append(holder)
            else:
                raise DuplicateKey(f"a job with unique key {key!r} already exists: "
                                   f"{_key_holder_text(home, holder)}", holder)
        if publishing:
            lifecycle.publish(home, publishing, now)
    except BaseException:
        for doc in taken:
            unique.release(home.spool, doc["unique_key"], doc["id"])
        raise
    return results
