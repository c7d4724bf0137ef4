"""The web dashboard (`queuectl dashboard`): pages over the same library calls the CLI
makes (queries, metrics, control, output), live updates by polling one shared snapshot, and
the operator actions behind a token and a CSRF check.

The web libraries (starlette, uvicorn, jinja2) are the optional `web` extra. This module
imports none of them, so the CLI can tell a missing extra from a bug; `board` and `charts`
don't either (they are plain library code); only `app` and `server` do."""

from ..errors import QueueError

WEB_MODULES = ("starlette", "uvicorn", "jinja2")


class MissingExtra(QueueError):
    """The web extra is not installed."""


def load_server():
    """The server module, or MissingExtra naming the pip command when a web library is
    missing (any other ImportError is a bug and propagates)."""
    try:
        from . import server
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in WEB_MODULES:
            raise
        raise MissingExtra("the dashboard needs the web extra: "
                           "pip install 'queuectl[web]'") from None
    return server
