"""The dashboard's front door (ASGI middleware): every route but /static needs the access
token; `?token=` is exchanged once for an HttpOnly, SameSite=Strict cookie and a redirect
that drops it from the URL; every response carries the security headers (a
Content-Security-Policy without inline script) and a Server-Timing header with the time
the server spent. POSTs pass through to the action handler, which checks the token and the
CSRF token together (Dashboard.check_post)."""

import hashlib
import hmac
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse

COOKIE_PREFIX = "queuectl_dashboard_"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = (("content-security-policy", CSP), ("x-content-type-options", "nosniff"),
           ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY"))


def cookie_name(token):
    """The cookie's name, one per token: cookies ignore ports, so two dashboards on one host
    must not overwrite each other's sign-in."""
    return COOKIE_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:12]


class Guard:
    """ASGI middleware: the token check for every route but /static, the token-for-cookie
    exchange, the security headers and a Server-Timing header with the server's time."""

    def __init__(self, app, dashboard):
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request = Request(scope)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                elapsed = (time.perf_counter() - started) * 1000
                for name, value in (*HEADERS, ("server-timing", f"app;dur={elapsed:.1f}")):
                    headers.append((name.encode(), value.encode()))
            await send(message)

        path = scope["path"]
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            response = self._exchange(request, given)
        elif path.startswith("/static/") or self.dashboard.authorised(request) or \
                request.method == "POST":      # POSTs are checked with their form
            return await self.app(scope, receive, send_with_headers)
        else:
            response = self.dashboard.refuse(
                request, 401, "not signed in: open the URL that queuectl dashboard printed "
                "(it carries the token)")
        await response(scope, receive, send_with_headers)

    def _exchange(self, request, given):
        if not hmac.compare_digest(given.encode(), self.dashboard.token.encode()):
            return self.dashboard.refuse(request, 401, "wrong token")
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + ("?" + urlencode(query) if query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self.dashboard.cookie, self.dashboard.token, httponly=True, samesite="strict",
                            path="/")
        return response
