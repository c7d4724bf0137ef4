"""Serving the dashboard: the token, the listening socket and uvicorn.

Every request needs the token. On loopback a random one is generated and printed (like a
notebook server's URL); listening on any other address needs a token the user chose
(--token or QUEUECTL_DASHBOARD_TOKEN), so exposing the dashboard is always deliberate."""

import ipaddress
import secrets
import socket

import uvicorn

from ..errors import QueueError
from .app import create_app

MIN_TOKEN_LENGTH = 8


class ServeError(QueueError):
    """The dashboard cannot be served as asked."""


def is_loopback(host):
    """True when every address the host name resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind(host, port):
    """A listening socket on host:port (port 0: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def url(sock, host, token):
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def serve(home, host, port, token=None, read_only=False, announce=print):
    """Serve until interrupted. `announce` gets the lines to show (the URL with the token)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ServeError(f"--token must be at least {MIN_TOKEN_LENGTH} characters")
    if token is None and not is_loopback(host):
        raise ServeError(f"refusing to listen on {host} (not a loopback address) without a "
                         "token you chose: give --token or set QUEUECTL_DASHBOARD_TOKEN")
    token = token or secrets.token_urlsafe(24)
    app = create_app(home, token, read_only)
    sock = bind(host, port)
    announce(f"queuectl dashboard for {home.home}{' (read-only)' if read_only else ''}")
    announce(f"open {url(sock, host, token)}")
    announce("Ctrl-C stops it")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:     # uvicorn stops gracefully, then re-raises Ctrl-C: done
        pass
