"""The benchmark harness: the registry of named benchmarks, and the Context each one gets to
time fresh processes and report figures, ratios and targets (printed, and collected for the
JSON summary that run.py writes).

Adding a benchmark: in a module that run.py imports, write

    @benchmark("name", "one line saying what is measured")
    def bench_name(ctx):
        runs = ctx.scale(7, 3)                       # full size, --quick size
        times = ctx.time_runs({"a": argv_a, "b": argv_b}, runs)
        a = ctx.timing("a_ms", "what a is", times["a"])
        b = ctx.timing("b_ms", "what b is", times["b"])
        ctx.ratio("a_vs_b", "a / b", a, b, limit=1.3)

A benchmark that cannot run raises CommandFailed (any queuectl call that exits non-zero
does); run.py reports it and carries on with the next one."""

import math
import os
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass

from fixtures import write_jobs


@dataclass
class Benchmark:
    name: str
    summary: str
    fn: object


BENCHMARKS = {}


def benchmark(name, summary):
    """Register fn(ctx) under `name`; run.py runs them in registration order."""
    def register(fn):
        BENCHMARKS[name] = Benchmark(name, summary, fn)
        return fn
    return register


class CommandFailed(RuntimeError):
    """A command under test exited non-zero or printed something unexpected."""


# ---- statistics and formatting -----------------------------------------------------------------

def percentile(samples, pct):
    """Nearest-rank percentile (with 15 samples, p95 is the largest)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def summarize(samples):
    return {"median": statistics.median(samples), "p95": percentile(samples, 95),
            "min": min(samples), "max": max(samples), "n": len(samples),
            "samples": [round(s, 6) for s in samples]}


UNITS = {"ms": 1e3, "us": 1e6}


def shown(seconds, unit="ms"):
    return f"{seconds * UNITS[unit]:8.1f} {unit}"


def count(n):
    return f"{n:,}"


LABEL_WIDTH = 58


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- the run context -------------------------------------------------------------------------

class Context:
    """What a benchmark needs: its sizes, a scratch directory, fresh processes to time, homes
    full of jobs shared between benchmarks, and the report."""

    def __init__(self, quick, root, python, queuectl, reps=None):
        self.quick = quick
        self.reps = reps             # --reps: overrides a benchmark's own count of reps
        self.root = root
        self.python = python
        self.queuectl = queuectl
        # Timed processes see no QUEUECTL_* settings, and cache bytecode as a normal install
        # does (in the scratch directory, so nothing is written into the source tree).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("QUEUECTL_") and k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPYCACHEPREFIX"] = os.path.join(root, "pycache")
        self.results = {}
        self.targets = []
        self._name = None
        self._homes = {}
        self._seq = 0
        self.last_cpu_s = None

    def scale(self, full, quick):
        """A size or run count: `full` normally, `quick` with --quick."""
        return quick if self.quick else full

    # ---- scratch space and processes ---------------------------------------------------------
    def new_dir(self, label):
        self._seq += 1
        path = os.path.join(self.root, f"{self._seq:02d}-{label}")
        os.makedirs(path)
        return path

    def q(self, home, *args):
        """argv of a queuectl call on a home."""
        return [self.queuectl, "--home", home, *args]

    def run(self, argv, stdin=None):
        """Run a fresh process to completion: (wall seconds, stdout, stderr) as bytes; its
        CPU seconds (user + system) are left in self.last_cpu_s. A non-zero exit raises
        CommandFailed with the end of its stderr."""
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=self.env, cwd=self.root)
        elapsed = time.perf_counter() - start
        self.last_cpu_s = _children_cpu() - cpu
        if proc.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)!r} exited {proc.returncode}: "
                                f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
        return elapsed, proc.stdout, proc.stderr

    def time_runs(self, commands, runs):
        """Time each named argv `runs` times, interleaved (a, b, c, a, b, c, ...) so that
        drift and background load hit all of them alike. `commands` maps a label to an argv
        or to (argv, stdin bytes). Returns label -> list of seconds."""
        times = {label: [] for label in commands}
        for _ in range(runs):
            for label, spec in commands.items():
                argv, stdin = spec if isinstance(spec, tuple) else (spec, None)
                times[label].append(self.run(argv, stdin)[0])
        return times

    def home_with_jobs(self, total):
        """A home whose spool holds `total` jobs (see fixtures.write_jobs), indexed by one
        `queuectl reindex`. Built once per size and shared by the benchmarks of the run."""
        if total not in self._homes:
            home = self.new_dir(f"home-{total}")
            start = time.perf_counter()
            made = write_jobs(home, total)
            written = time.perf_counter() - start
            reindex_s = self.run(self.q(home, "reindex"))[0]
            self.note(f"built a home with {count(total)} jobs "
                      f"({', '.join(f'{s} {count(n)}' for s, n in made.items())}): "
                      f"files written in {written:.1f} s, first reindex {reindex_s:.1f} s")
            self._homes[total] = home
        return self._homes[total]

    # ---- reporting ---------------------------------------------------------------------------
    def start(self, bench):
        self._name = bench.name
        self.results[bench.name] = {"summary": bench.summary, "figures": {}, "ratios": {},
                                    "notes": []}
        print(f"\n== {bench.name}: {bench.summary}", flush=True)

    @property
    def _current(self):
        return self.results[self._name]

    def timing(self, key, label, samples, unit="ms"):
        """Report samples (seconds) as median and p95, shown in `unit` (ms or us); returns
        the median in seconds."""
        stats = summarize(samples)
        self._current["figures"][key] = dict(stats, unit="s", label=label)
        print(f"  {label:<{LABEL_WIDTH}} median {shown(stats['median'], unit)}   "
              f"p95 {shown(stats['p95'], unit)}   (n={stats['n']})", flush=True)
        return stats["median"]

    def value(self, key, label, value, unit, digits=1):
        self._current["figures"][key] = {"value": value, "unit": unit, "label": label}
        print(f"  {label:<{LABEL_WIDTH}} {value:,.{digits}f} {unit}", flush=True)
        return value

    def record(self, key, label, value, unit=None):
        """A figure kept in the JSON summary only (lists, samples, details)."""
        self._current["figures"][key] = {"value": value, "unit": unit, "label": label}

    def ratio(self, key, label, numerator, denominator, limit=None, what=None, at_least=None):
        """Report numerator/denominator; with `limit`, also a target (ratio <= limit), with
        `at_least` a target the other way (ratio >= at_least)."""
        value = numerator / denominator
        entry = {"value": value, "label": label}
        line = f"  {label:<{LABEL_WIDTH}} {value:8.2f}x"
        if limit is not None:
            entry["target"] = f"<= {limit}x"
            line += f"   target <= {limit}x: {self._verdict(what or label, value <= limit)}"
        if at_least is not None:
            entry["target"] = f">= {at_least}x"
            line += (f"   target >= {at_least}x: "
                     f"{self._verdict(what or label, value >= at_least)}")
        self._current["ratios"][key] = entry
        print(line, flush=True)
        return value

    def target(self, what, ok, detail):
        """A target met or missed, e.g. target("status under 150 ms", t < 0.15, "97 ms")."""
        print(f"  target {what}: {detail}: {self._verdict(what, ok)}", flush=True)

    def verdict(self, what, ok):
        """Record a target met or missed without printing it (for benchmarks that print
        their own table); returns "met" or "MISSED"."""
        return self._verdict(what, ok)

    def _verdict(self, what, ok):
        self.targets.append({"benchmark": self._name, "what": what, "met": bool(ok)})
        return "met" if ok else "MISSED"

    def note(self, text):
        if self._name is not None:
            self._current["notes"].append(text)
        print(f"  - {text}", flush=True)
