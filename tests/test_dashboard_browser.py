"""The dashboard in a real browser (headless Chromium via Playwright), over a real
`queuectl dashboard` process and real workers running real jobs: counts that match
`queuectl status`, a job followed live without a reload, actions that reach the spool and
are refused without the token or the CSRF token, hostile text shown as text, and the
screenshots in docs/img/."""

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from dashkit import Queue, Server, browser  # noqa: F401  (browser is a fixture)
from polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
STATES = ("pending", "processing", "failed", "completed", "dead")
LIVE_MS = 10000
FLOW = 3          # gated jobs for two workers: each step changes pending, running, done


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    home = tmp_path_factory.mktemp("dashboard") / "home"
    home.mkdir()
    q = Queue(home)
    q.run("config", "set", "backoff_base", "300")       # a failed job waits in failed/
    q.run("worker", "start", "--count", "2")
    yield q
    q.shutdown()


@pytest.fixture(scope="module")
def server(queue):
    dashboard = Server(queue.home)
    yield dashboard
    dashboard.stop()


@pytest.fixture
def page(browser, server):  # noqa: F811
    """A fresh browser context (no cookie yet) signed in through the printed URL; every
    dialog it opens is recorded in page.dialogs."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.dialogs = []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    tab.goto(server.url)
    assert tab.url == server.base + "/", "the token in the URL is exchanged for a cookie"
    yield tab
    context.close()


def gate(queue, name):
    """A shell command that waits until the test creates HOME/gates/<name> (jobs run in
    the home)."""
    path = queue.home / "gates" / name
    path.parent.mkdir(exist_ok=True)
    return f"until [ -e gates/{name} ]; do sleep 0.05; done", path


def dom_counts(page):
    return {s: int(page.inner_text(f"#count-{s}")) for s in STATES}


def test_the_printed_url_signs_in_and_the_counts_follow_status_while_jobs_flow(queue, page):
    page.evaluate("window.notReloaded = true")
    base = queue.status()["counts"]
    ids = []
    gates = []
    for i in range(FLOW):
        command, path = gate(queue, f"flow-{i}")
        ids.append(queue.enqueue({"id": f"flow-{i}", "command": command}))
        gates.append(path)
    seen = []

    def settle(done):
        running = min(2, FLOW - done)
        wait_until(lambda: [len(queue.ids(s)) for s in ("processing", "completed")] ==
                   [running, base["completed"] + done], timeout=15,
                   message=f"{done} done and {running} running")
        counts = queue.status()["counts"]
        assert counts["processing"] == running
        wait_until(lambda: dom_counts(page) == counts, timeout=5,
                   message=f"the page to show {counts} (it shows {dom_counts(page)})")
        seen.append(counts)

    settle(0)
    for done, path in enumerate(gates, 1):
        path.touch()
        settle(done)
    assert page.evaluate("window.notReloaded") is True
    assert len({tuple(c.values()) for c in seen}) == len(seen), "counts moved at each step"
    # the workers table shows both workers with their host and state
    rows = page.locator("#workers tbody tr")
    expect(rows).to_have_count(2)
    assert os.uname().nodename.split(".")[0] in rows.first.inner_text()


def test_a_job_moves_live_and_its_output_grows_while_it_runs(queue, page, server):
    queue.run("pause")
    try:
        command, path = gate(queue, "live")
        job_id = queue.enqueue({"id": "live-job", "command": f"echo first; {command}; "
                                                            "echo second; echo third"})
        page.goto(f"{server.base}/jobs/{job_id}")
        page.evaluate("window.notReloaded = true")
        expect(page.locator("#job-state")).to_have_text("pending")
    finally:
        queue.run("resume")
    expect(page.locator("#job-state")).to_have_text("processing", timeout=LIVE_MS)
    expect(page.locator("#job-output")).to_contain_text("first", timeout=LIVE_MS)
    before = page.inner_text("#job-output")
    assert "second" not in before
    path.touch()
    expect(page.locator("#job-output")).to_contain_text("third", timeout=LIVE_MS)
    expect(page.locator("#job-state")).to_have_text("completed", timeout=LIVE_MS)
    after = page.inner_text("#job-output")
    assert after.startswith(before.rstrip()) and len(after) > len(before)
    assert re.search(r"first\s+second\s+third", after)
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"


def _csrf(page):
    return page.get_attribute('meta[name="csrf"]', "content")


def test_actions_reach_the_spool(queue, page, server):
    failing = queue.enqueue({"id": "act-fail", "command": "exit 3", "max_retries": 3})
    later = queue.enqueue({"id": "act-later", "command": "echo later"}, "--delay", "1h")
    wait_until(lambda: queue.states(failing) == ["failed"], timeout=15)
    assert queue.read(failing, "failed")["attempts"] == 1

    page.goto(f"{server.base}/jobs/{failing}")
    page.click("#job-actions button[data-action=retry]")
    expect(page.locator("#flash")).to_contain_text("moved to pending")
    wait_until(lambda: queue.states(failing) == ["failed"] and
               queue.read(failing, "failed")["attempts"] == 2, timeout=15,
               message="the retried job to run again now")
    attempts = page.locator("#job-attempts tbody tr")
    expect(attempts).to_have_count(2, timeout=LIVE_MS)
    expect(attempts.nth(1)).to_contain_text("exit code 3")

    page.goto(f"{server.base}/jobs/{later}")
    page.click("#job-actions button[data-action=cancel]")
    expect(page.locator("#flash")).to_contain_text("cancelled")
    assert queue.states(later) == ["dead"]
    assert queue.read(later, "dead")["last_error"] == "cancelled"
    expect(page.locator("#job-state")).to_have_text("dead", timeout=LIVE_MS)

    command, _ = gate(queue, "never-opened")
    running = queue.enqueue({"id": "act-running", "command": command})
    wait_until(lambda: queue.states(running) == ["processing"], timeout=15)
    page.goto(f"{server.base}/jobs/{running}")
    page.click("#job-actions button[data-action=cancel]")
    expect(page.locator("#flash")).to_contain_text("cancelled (was running, killed; now in dead/)")
    assert queue.states(running) == ["dead"]

    page.goto(f"{server.base}/dlq")
    page.click(f'tr[data-id="{later}"] button[data-action=dlq-retry]')
    expect(page.locator("#flash")).to_contain_text("moved to pending")
    wait_until(lambda: "dead" not in queue.states(later), timeout=10)

    page.goto(server.base + "/")
    page.click("button[data-action=pause]")
    assert (queue.spool / "PAUSED").exists()
    expect(page.locator("header .badge.paused")).to_be_visible()
    page.click("button[data-action=resume]")
    assert not (queue.spool / "PAUSED").exists()
    expect(page.locator("header .badge.paused")).to_be_hidden(timeout=LIVE_MS)


def test_actions_are_refused_without_the_token_or_the_csrf_token(queue, page, server,
                                                                  browser):  # noqa: F811
    target = queue.enqueue({"id": "act-keep", "command": "echo kept"}, "--delay", "1h")
    page.goto(server.base + "/")
    csrf = _csrf(page)
    post = page.request.post          # the signed-in context: its cookie goes along
    refused = post(f"{server.base}/actions/pause", form={"csrf": "wrong", "next": "/"},
                   max_redirects=0)
    assert refused.status == 403 and "CSRF" in refused.text()
    refused = post(f"{server.base}/actions/cancel", form={"id": target, "next": "/"},
                   max_redirects=0)
    assert refused.status == 403
    stranger = browser.new_context()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong-token-000"}):
            refused = stranger.request.post(f"{server.base}/actions/cancel", headers=headers,
                                            form={"csrf": csrf, "id": target, "next": "/"},
                                            max_redirects=0)
            assert refused.status == 401
        assert stranger.request.get(f"{server.base}/api/snapshot").status == 401
        assert stranger.request.get(f"{server.base}/?token=wrong-token-000",
                                    max_redirects=0).status == 401
        assert stranger.request.get(f"{server.base}/actions/pause").status in (401, 405)
    finally:
        stranger.close()
    assert not (queue.spool / "PAUSED").exists()
    assert queue.states(target) == ["pending"]
    accepted = post(f"{server.base}/actions/cancel", max_redirects=0,
                    form={"csrf": csrf, "id": target, "next": "/"})
    assert accepted.status == 303 and queue.states(target) == ["dead"]


def test_hostile_text_is_shown_as_text(queue, page, server):
    script = "<script>alert(1)</script>"
    bad = queue.enqueue({"id": "xss-command", "command": script, "max_retries": 0})
    noisy = queue.enqueue({"id": "xss-output", "note": '"><img src=x onerror=alert(4)>',
                           "command": "printf '%s\\n' '<img src=x onerror=alert(2)>' "
                                      "'<script>alert(3)</script>' '<b>bold</b>'"})
    wait_until(lambda: queue.states(bad) == ["dead"] and queue.states(noisy) == ["completed"],
               timeout=15)
    for path in ("/jobs?q=xss", f"/jobs/{bad}", f"/jobs/{noisy}"):
        response = page.goto(server.base + path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        ticks = int(page.get_attribute("body", "data-ticks") or 0)
        wait_until(lambda: int(page.get_attribute("body", "data-ticks") or 0) > ticks,
                   timeout=10, message="a live update")
        assert page.locator("script").count() == 1, f"{path}: a script element was injected"
        assert page.locator("main img:not(.chart), main b").count() == 0, path
    page.goto(f"{server.base}/jobs/{bad}")
    expect(page.locator("#job-command")).to_have_text(script)
    page.goto(f"{server.base}/jobs/{noisy}")
    expect(page.locator("#job-output")).to_contain_text("<script>alert(3)</script>")
    expect(page.locator("#job-output")).to_contain_text("<img src=x onerror=alert(2)>")
    expect(page.locator('td[data-field="note"]')).to_have_text('"><img src=x onerror=alert(4)>')
    page.goto(f"{server.base}/jobs?q=xss")
    expect(page.locator(f'tr[data-id="{bad}"] td.cmd')).to_have_text(script)
    assert page.dialogs == []


def _save(page, name, tmp_path):
    """Take a screenshot; docs/img/ gets it when it has none yet, or when
    QUEUECTL_UPDATE_SCREENSHOTS is set (so a test run leaves the tree clean)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    target = ROOT / "docs" / "img" / name
    if os.environ.get("QUEUECTL_UPDATE_SCREENSHOTS") or not target.exists():
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


def test_screenshots_of_the_overview_and_a_job_page(queue, page, server, tmp_path):
    done = [queue.enqueue({"id": f"shot-{i}", "command": f"echo step {i}; sleep 0.0{i}"})
            for i in range(6)]
    command, path = gate(queue, "shot-running")
    running = queue.enqueue({"id": "report-nightly", "command":
                             "echo building report; echo 'rows: 1200'; " + command})
    wait_until(lambda: all(queue.states(i) == ["completed"] for i in done), timeout=20)
    queue.enqueue({"id": "mail-digest", "command": "echo digest"}, "--delay", "10m")
    wait_until(lambda: queue.states(running) == ["processing"], timeout=10)
    page.goto(server.base + "/")
    for chart in ("throughput", "backlog", "latency", "ages"):
        image = page.locator(f'img[data-chart="{chart}"]')
        wait_until(lambda: page.evaluate("(img) => img.complete && img.naturalWidth",
                                         image.element_handle()), timeout=5)
    wait_until(lambda: dom_counts(page)["processing"] == 1 and
               page.inner_text('[data-k="backlog.scheduled"]') == "1" and
               "busy" in page.inner_text("#workers"), timeout=10)
    _save(page, "dashboard-overview.png", tmp_path)
    page.goto(f"{server.base}/jobs/{running}")
    expect(page.locator("#job-output")).to_contain_text("rows: 1200", timeout=LIVE_MS)
    expect(page.locator("#job-attempts tbody tr")).to_contain_text("running")
    _save(page, "dashboard-job.png", tmp_path)
    path.touch()
    wait_until(lambda: queue.states(running) == ["completed"], timeout=10)
    expect(page.locator("#job-attempts tbody tr")).to_contain_text("ok", timeout=LIVE_MS)
