"""The dashboard's pages on a big spool: each list page (all states, one state, the next
page, the DLQ, a text search) and the JSON the live pages poll, on a home with 100,000 jobs,
each computed afresh (not from the one-second cache), timed as the server's own time (its Server-Timing header) and as the client's wall time,
against a real `queuectl dashboard` process. Needs the web extra; skipped without it."""

import re
import subprocess
import time
import urllib.request

from harness import CommandFailed, benchmark, count

PAGES = {    # key -> path
    "all": "/jobs",
    "completed": "/jobs?state=completed",
    "pending": "/jobs?state=pending",
    "dlq": "/dlq",
    "search": "/jobs?q=nothing-matches-this",
    "api_list": "/api/jobs?state=pending",
    "api_snapshot": "/api/snapshot",
}
TARGET_S = 0.300
CACHE_S = 1.2       # longer than the dashboard's tick (board.TICK_SECONDS)
TOKEN = "bench-dashboard-token"


def start_server(ctx, home):
    proc = subprocess.Popen(ctx.q(home, "dashboard", "--port", "0", "--token", TOKEN),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctx.env)
    for line in proc.stdout:
        if line.startswith(b"open "):
            return proc, line.split()[1].decode().split("/?")[0]
    proc.wait()
    raise CommandFailed(f"queuectl dashboard did not start: "
                        f"{proc.stderr.read().decode(errors='replace')[-2000:]}")


def fetch(base, path):
    """(server seconds, wall seconds, body) of one GET."""
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        server = float(re.match(r"app;dur=([\d.]+)", response.headers["server-timing"])[1])
    return server / 1000, time.perf_counter() - start, body


@benchmark("dashboard_100k", "the dashboard's list pages and live JSON on a home with "
                             "100,000 jobs (server time and wall time)")
def bench_dashboard(ctx):
    try:
        import starlette  # noqa: F401  (the web extra)
    except ImportError:
        ctx.note("skipped: the web extra is not installed (pip install 'queuectl[web]')")
        return
    total = ctx.scale(100_000, 2_000)
    home = ctx.home_with_jobs(total)
    proc, base = start_server(ctx, home)
    try:
        fetch(base, "/")                       # the first look ingests; not a list page
        body = fetch(base, PAGES["completed"])[2].decode()
        link = re.search(r'href="(\?[^"]*after=[^"]*)" id="next-page"', body)
        pages = dict(PAGES, next_page="/jobs" + link[1].replace("&amp;", "&")) if link \
            else PAGES
        server = {key: [] for key in pages}
        wall = {key: [] for key in pages}
        for _ in range(ctx.scale(7, 3)):
            # The server answers a repeated request from its one-second cache: wait that
            # out, so every timed request computes its page.
            time.sleep(CACHE_S)
            for key, path in pages.items():
                s, w, _ = fetch(base, path)
                server[key].append(s)
                wall[key].append(w)
        for key, path in pages.items():
            median = ctx.timing(f"{key}_server_ms", f"{path[:34]} server", server[key])
            ctx.timing(f"{key}_wall_ms", f"{path[:34]} wall", wall[key])
            if key != "search":
                ctx.target(f"{key} under {TARGET_S * 1000:.0f} ms of server time at "
                           f"{count(total)} jobs", median < TARGET_S, f"{median * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(10)
