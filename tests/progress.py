"""A pytest plugin that reports one line per test file (passed/failed/skipped counts and
seconds) instead of a row of dots; failures are still listed in pytest's own summary."""

import time
from collections import Counter

import pytest


class FileProgress:
    def __init__(self, config):
        self.config = config
        self.reporter = None
        self.remaining = Counter()       # file -> tests not yet finished
        self.outcomes = {}               # file -> Counter of outcomes
        self.started = {}                # file -> monotonic start
        self.done = 0
        self.total = 0

    def pytest_collection_finish(self, session):
        self.reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        self._count(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        """Under pytest-xdist the controller collects nothing itself: every worker reports
        the same ids, so count the first report only."""
        self.reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if not self.total:
            self._count(ids)

    def _count(self, nodeids):
        for nodeid in nodeids:
            self.remaining[nodeid.split("::", 1)[0]] += 1
            self.total += 1

    def pytest_report_teststatus(self, report, config):
        # An empty short letter: the terminal reporter prints no dot for it.
        if hasattr(report, "wasxfail"):
            return None                  # pytest's own xfail/xpass categories
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            return report.outcome, "", report.outcome.upper()
        return None

    def pytest_runtest_logreport(self, report):
        path = report.location[0]
        self.started.setdefault(path, time.monotonic())
        counts = self.outcomes.setdefault(path, Counter())
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            counts[report.outcome] += 1
        elif report.when == "teardown" and report.outcome == "failed":
            counts["error"] += 1

    def pytest_runtest_logfinish(self, nodeid, location):
        path = location[0]
        self.remaining[path] -= 1
        self.done += 1
        if self.remaining[path] == 0 and self.reporter is not None:
            counts = self.outcomes.get(path, Counter())
            seconds = time.monotonic() - self.started.get(path, time.monotonic())
            summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
            self.reporter.ensure_newline()
            self.reporter.write_line(f"[{self.done:4d}/{self.total}] {path}: {summary} "
                                     f"({seconds:.1f} s)")
