"""The dashboard's web application (Starlette): pages, the JSON the pages poll, the SVG
charts and the operator actions. Reads and actions go through `Board`, which calls the
same library functions as the CLI.

Security (the checks here, the middleware in guard.py):
- Every route but /static needs the token: `?token=` once (exchanged for an HttpOnly,
  SameSite=Strict cookie and a redirect that drops it from the URL), or the cookie, or an
  `Authorization: Bearer` header. Wrong or missing: 401 and nothing is done.
- Actions are POST only, refused under --read-only, and need the CSRF token (an HMAC of the
  access token under a per-process key) in the form; a foreign Origin is refused.
- Jinja autoescapes every value; pages carry a Content-Security-Policy without
  'unsafe-inline' (the one script is a static file; live updates set textContent only)."""

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import job as jobmod
from ..queries import LIST_STATES
from ..render import age
from . import charts
from .board import RANGES, Board
from .guard import Guard, cookie_name

HERE = os.path.dirname(os.path.abspath(__file__))
ACTIONS = ("retry", "cancel", "dlq-retry", "dlq-retry-all", "pause", "resume")
WITHOUT_ID = ("dlq-retry-all", "pause", "resume")
PAGE_SIZE = 50
STATE_TITLES = {"pending": "Pending", "processing": "Running", "failed": "Failed",
                "completed": "Completed", "dead": "Dead letter queue", "rejected": "Rejected"}


def _fmt_time(value):
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (UTC), anything else as given."""
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return value[:10] + " " + value[11:19]
    return "-" if value is None else value


def _fmt_secs(value):
    """A duration in seconds for people: 12 ms, 4.48 s, 3.2m."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 60 else age(value)


def make_env():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _fmt_time
    env.filters["age"] = age
    env.filters["secs"] = _fmt_secs
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def encode_key(key):
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=") \
        if key else ""


def decode_key(text):
    """A page key from the URL, or None when it is missing or not one of ours."""
    if not text:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    ok = isinstance(key, list) and len(key) in (2, 3) and \
        all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in key)
    return key if ok else None


class Dashboard:
    """The app's state: the board, the access token and the CSRF key."""

    def __init__(self, home, token, read_only=False, board=None):
        self.board = board or Board(home, read_only)
        self.home = home
        self.token = token
        self.read_only = read_only
        self.csrf = hmac.new(secrets.token_bytes(32), token.encode(),
                             hashlib.sha256).hexdigest()
        self.env = make_env()
        self.cookie = cookie_name(token)

    # ---- authentication -------------------------------------------------------------------
    def authorised(self, request):
        given = request.cookies.get(self.cookie, "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def check_post(self, request, form):
        """None if a POST may act, else the refusal (status, message)."""
        if not self.authorised(request):
            return 401, "not signed in: open the URL that queuectl dashboard printed"
        # Our own forms arrive with "Origin: null" (the pages' Referrer-Policy is
        # no-referrer); the CSRF token and the SameSite cookie are what guard those.
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return 403, "refused: the request came from another site"
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), self.csrf.encode()):
            return 403, "refused: missing or wrong CSRF token (reload the page)"
        if self.read_only:
            return 403, "refused: the dashboard is read-only"
        return None

    # ---- rendering ------------------------------------------------------------------------
    def render(self, request, name, status_code=200, **context):
        context.setdefault("page", "error")
        context.update(csrf=self.csrf, read_only=self.read_only, home=self.home.home,
                       msg=request.query_params.get("msg"),
                       msg_ok=request.query_params.get("ok") == "1",
                       states=LIST_STATES, titles=STATE_TITLES,
                       request_path=_here(request))
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code)

    def refuse(self, request, status_code, message):
        if request.url.path.startswith("/api/") or request.method == "POST" and \
                "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status_code)
        html = self.env.get_template("refused.html").render(message=message)
        return HTMLResponse(html, status_code=status_code)

    # ---- pages ----------------------------------------------------------------------------
    def overview(self, request):
        span = request.query_params.get("range", "hour")
        span = span if span in RANGES else "hour"
        return self.render(request, "overview.html", snap=self.board.snapshot(), span=span,
                           spans=list(RANGES), page="overview")

    def jobs(self, request, state=None, page="jobs"):
        params = request.query_params
        state = state or params.get("state") or None
        if state not in (None, *LIST_STATES):
            return self.render(request, "error.html", 404, message=f"no state {state!r}")
        search = (params.get("q") or "").strip()[:200]
        after = decode_key(params.get("after"))
        rows, next_key = self.board.page(state, search, tuple(after) if after else None,
                                         PAGE_SIZE)
        number = max(1, int(params.get("n", "1")) if params.get("n", "1").isdigit() else 1)
        query = {k: v for k, v in (("state", state), ("q", search)) if v}
        next_url = None
        if next_key:
            next_url = "?" + urlencode({**query, "after": encode_key(next_key),
                                        "n": number + 1})
        return self.render(request, "jobs.html", rows=rows, state=state, search=search,
                           next_url=next_url, first_url="?" + urlencode(query),
                           number=number, snap=self.board.snapshot(), page=page,
                           live=after is None, now=self.home.clock())

    def dlq(self, request):
        return self.jobs(request, "dead", page="dlq")

    def job(self, request):
        job_id = request.path_params["job_id"]
        info = self.board.job(job_id)
        if info is None:
            return self.render(request, "error.html", 404, message=f"no job with id {job_id!r}")
        text, start, end = self.board.output(job_id) if info["job"] else ("", 0, 0)
        return self.render(request, "job.html", info=info, job_id=job_id, output=text,
                           output_start=start, output_end=end, page="job",
                           history=_history(info), attempts=self.board.attempts(job_id))

    # ---- JSON for the live updates -----------------------------------------------------------
    def api_snapshot(self, request):
        return JSONResponse(self.board.snapshot())

    def api_list(self, request):
        state = request.query_params.get("state") or None
        if state not in (None, *LIST_STATES):
            return JSONResponse({"error": f"no state {state!r}"}, status_code=404)
        search = (request.query_params.get("q") or "").strip()[:200]
        rows, next_key = self.board.page(state, search, None, PAGE_SIZE)
        return JSONResponse({"rows": rows, "more": next_key is not None})

    def api_job(self, request):
        job_id = request.path_params["job_id"]
        info = self.board.job(job_id)
        if info is None:
            return JSONResponse({"error": f"no job with id {job_id!r}"}, status_code=404)
        offset = request.query_params.get("offset", "")
        text, start, end = self.board.output(job_id, int(offset) if offset.isdigit() else None)
        return JSONResponse({"id": job_id, "state": info["state"], "job": info["job"],
                             "last_error": info["last_error"], "output": text,
                             "attempts": self.board.attempts(job_id),
                             "output_start": start, "output_end": end})

    def chart(self, request):
        name = request.path_params["name"]
        span = request.query_params.get("range", "hour")
        if span not in RANGES or name not in ("throughput", "backlog", "latency", "ages"):
            return Response("no such chart", status_code=404, media_type="text/plain")
        ages = self.board.snapshot()["ages"] if name == "ages" else ()
        svg = charts.chart(name, self.board.history(span), RANGES[span][0], ages)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    # ---- actions --------------------------------------------------------------------------
    async def action(self, request):
        form = await request.form()
        refusal = self.check_post(request, form)
        if refusal:
            return self.refuse(request, *refusal)
        name = request.path_params["name"]
        job_id = str(form.get("id", ""))
        if name not in ACTIONS or (name not in WITHOUT_ID and not jobmod.ID_RE.match(job_id)):
            return self.refuse(request, 400, f"bad action {name!r} or job id")
        from starlette.concurrency import run_in_threadpool
        ok, message = await run_in_threadpool(self.board.act, name, job_id or None)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": ok, "message": message}, status_code=200 if ok else 409)
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        path, _, query = target.partition("?")
        kept = [(k, v) for k, v in parse_qsl(query) if k not in ("msg", "ok", "after", "n")]
        target = path + "?" + urlencode([*kept, ("msg", message), ("ok", int(ok))])
        return RedirectResponse(target, status_code=303)


def _here(request):
    """This page's path and query without the flash message (where an action returns to)."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("msg", "ok")]
    return request.url.path + ("?" + urlencode(query) if query else "")


def _history(info):
    """The job's attempt history, when its file keeps one (a list of objects)."""
    history = (info.get("job") or {}).get("history")
    if not isinstance(history, list):
        return []
    return [h for h in history if isinstance(h, dict)]


def create_app(home, token, read_only=False):
    dash = Dashboard(home, token, read_only)
    routes = [
        Route("/", dash.overview),
        Route("/jobs", dash.jobs),
        Route("/dlq", dash.dlq),
        Route("/jobs/{job_id}", dash.job),
        Route("/api/snapshot", dash.api_snapshot),
        Route("/api/jobs", dash.api_list),
        Route("/api/jobs/{job_id}", dash.api_job),
        Route("/chart/{name}.svg", dash.chart),
        Route("/actions/{name}", dash.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = dash
    return Guard(app, dash)
