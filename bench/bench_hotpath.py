"""The hot path side by side (issue 9): a direct spawn loop (the floor), task-spooler
(`tsp -S 2`) and queuectl with 2 workers, on the same workloads in one run, repeated and
interleaved (the order of the systems rotates every rep), so that every ratio comes from
figures measured under the same load:

- pickup: an idle queue, one job at a time; the job's command writes its own start time
  (`date +%s.%N`). From the submit to that stamp: direct = Python spawning the same
  `sh -c 'date ...'`; tsp = spawning the `tsp` client; queuectl = renaming a job file into
  spool/pending (a drop-in), and spawning `queuectl enqueue JSON`.
- drain: 2,000 `true` jobs queued while nothing may run (tsp: 2 blocker jobs hold the slots;
  queuectl: the queue is paused by spool/PAUSED), then released: jobs/s.
- one by one: 2,000 `true` jobs submitted one after another while the workers run (tsp: one
  `tsp true` call each; queuectl: drop-ins, write + rename, no fsync, as fast as Python goes;
  direct: the spawn loop, 2 at a time), until all have finished: jobs/s.
- CPU per job outside the job itself: queuectl = the 2 workers' user + system time (all
  their threads, from /proc) over the run / jobs, the supervisor shown apart; tsp = the
  server's and every client's own on-CPU time (bench/tspkit.py explains how), submission
  included.
- submit: one `tsp true`, one `queuectl enqueue JSON` and `python -c "import click, sqlite3,
  json"` (the import floor), interleaved; 10,000 lines piped to `queuectl enqueue -`.

The install matters for start-up (an editable install adds a finder at every start):
`make bench-hotpath` builds a throw-away venv with a normal `pip install .` and runs this
there; the header says which kind of install was measured. The enqueue goal is only judged
on a normal install. The load average is recorded before and after every figure."""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

import durable_floor
from bench_submit import BASELINE, JOB
from bench_workers import (cpu_seconds, drop, job_count, new_home, pickup_samples, read_stamp,
                           spawn_floor_samples, spawn_loop, stamp_command, wait_for,
                           workers_running)
from harness import CommandFailed, benchmark, count, percentile

TSPKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tspkit.py")
WORKERS = 2
SYSTEMS = ("direct", "tsp", "queuectl")
TITLES = {"direct": "direct spawn", "tsp": "task-spooler", "queuectl": "queuectl",
          "durable": "the durable floor"}


# ---- what is measured, and with what -----------------------------------------------------------

def find_tsp():
    """task-spooler's client: `tsp` (Debian's name) or `ts` (upstream's, but moreutils has
    a `ts` too: it must say it is Task Spooler). None when it is not installed."""
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if not path:
            continue
        try:
            said = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=5,
                                  env=dict(os.environ, TS_SOCKET="/nonexistent/ts-probe"))
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "task spooler" in (said.stdout + said.stderr).lower():
            return path
    return None


INSTALL_PROBE = """\
import importlib.metadata as m, json
d = m.distribution('queuectl')
url = json.loads(d.read_text('direct_url.json') or 'null') or {}
print('editable' if url.get('dir_info', {}).get('editable') else 'normal')
"""


def install_kind(ctx):
    """'normal' or 'editable': how the queuectl under test is installed."""
    return ctx.run([ctx.python, "-c", INSTALL_PROBE])[1].decode().strip()


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Rep:
    """The figures of one rep: {workload: {system: {figure: value}}}, and the load average
    before and after each workload."""

    def __init__(self, index):
        self.index, self.figures, self.load = index, {}, {}

    def measure(self, workload, fn, *args):
        before = load_average()
        started = time.perf_counter()
        self.figures[workload] = fn(*args)
        self.load[workload] = (before, load_average())
        shown = "; ".join(f"{system} " + ", ".join(f"{k} {v:,.2f}" for k, v in found.items())
                          for system, found in self.figures[workload].items())
        print(f"  rep {self.index + 1} {workload} ({time.perf_counter() - started:.0f} s, load "
              f"{before:.2f} -> {self.load[workload][1]:.2f}): {shown}", flush=True)


def rotate(items, n):
    n %= len(items)
    return items[n:] + items[:n]


def tspkit(ctx, tsp, mode, size):
    """One task-spooler run in bench/tspkit.py; returns its JSON, or None (and a note) if
    it failed: the other systems' figures are still worth having."""
    if not tsp:
        return None
    workdir = ctx.new_dir(f"tsp-{mode}")
    try:
        out = ctx.run([sys.executable, TSPKIT, tsp, workdir, mode, str(size)])[1]
    except CommandFailed as exc:
        ctx.note(f"task-spooler {mode} FAILED, no figure: {exc}")
        return None
    return json.loads(out.decode().strip().splitlines()[-1])


def tsp_cpu(result):
    return {"cpu_ms": result["server_ms_per_job"] + result["clients_ms_per_job"],
            "server_ms": result["server_ms_per_job"], "clients_ms": result["clients_ms_per_job"]}


def pcts(samples):
    return {"p50_ms": percentile(samples, 50) * 1e3, "p95_ms": percentile(samples, 95) * 1e3}


# ---- the workloads: each returns {system: {figure: value}} ----------------------------------------

def pickup_enqueue_samples(ctx, home, stamps, samples, rng):
    """Like pickup_samples, but each job submitted by spawning `queuectl enqueue JSON`."""
    result = []
    for i in range(samples + 1):
        stamp = os.path.join(stamps, f"enqueue-{i}-{time.time_ns()}")
        before = time.time()
        out = ctx.run(ctx.q(home, "enqueue", json.dumps({"command": stamp_command(stamp)})))[1]
        started = wait_for(lambda: read_stamp(stamp), 15, 0.001, "an enqueued job to start")
        done = os.path.join(home, "spool", "completed", f"{out.decode().strip()}.json")
        wait_for(lambda: os.path.exists(done), 15, 0.002, "an enqueued job to complete")
        if i:
            result.append(started - before)
        time.sleep(rng.uniform(0.1, 0.3))
    return result


def pickup_round(ctx, tsp, sizes, rep):
    samples, rng = sizes["pickup"], random.Random(rep)
    stamps = ctx.new_dir("hot-stamps")
    found = {}
    for system in rotate(list(SYSTEMS), rep):
        if system == "direct":
            found["direct"] = pcts(spawn_floor_samples(stamps, samples))
        elif system == "tsp" and (result := tspkit(ctx, tsp, "pickup", samples)):
            found["tsp"] = pcts(result["latencies_s"])
        elif system == "queuectl":
            home = new_home(ctx, "hot-pickup")
            with workers_running(ctx, home, WORKERS):
                time.sleep(0.5)
                found["queuectl"] = pcts(pickup_samples(ctx, home, stamps, samples, rng,
                                                        "dropin"))
                found["queuectl_enqueue"] = pcts(pickup_enqueue_samples(ctx, home, stamps,
                                                                        samples, rng))
    return found


def all_completed(home, total):
    wait_for(lambda: job_count(home, "completed") >= total, 900, 0.02,
             f"{count(total)} completed jobs")


def check_spool_done(home):
    bad = {s: job_count(home, s) for s in ("failed", "dead", "pending", "processing")}
    if any(bad.values()):
        raise CommandFailed(f"after the run the spool holds {bad}")


def queuectl_run(ctx, home, total, submit, release=None):
    """With 2 workers running: measure their CPU and the supervisor's from before submit()
    (which puts `total` jobs in) to the last job completed; the clock starts at release()
    if given (the jobs were held back), else before submit()."""
    with workers_running(ctx, home, WORKERS) as pool:
        cpu0 = {pid: cpu_seconds(pid) for pid in pool.pids}
        start = time.perf_counter()
        submit()
        if release:
            start = release()
        all_completed(home, total)
        elapsed = time.perf_counter() - start
        used = {pid: cpu_seconds(pid) - cpu0[pid] for pid in pool.pids}
    check_spool_done(home)
    return {"jobs_per_s": total / elapsed,
            "cpu_ms": sum(used[p] for p in pool.workers) / total * 1e3,
            "supervisor_ms": used[pool.supervisor] / total * 1e3}


def queuectl_drain(ctx, total):
    home = new_home(ctx, "hot-drain")
    ctx.run(ctx.q(home, "pause"))
    paused = os.path.join(home, "spool", "PAUSED")
    if not os.path.exists(paused):
        raise CommandFailed(f"`queuectl pause` did not create {paused}")

    def release():
        os.unlink(paused)             # what `queuectl resume` does, without its start-up
        return time.perf_counter()
    return queuectl_run(ctx, home, total, lambda: ctx.run(ctx.q(home, "enqueue", "-"),
                                                          stdin=b'{"command":"true"}\n' * total),
                        release)


def drain_round(ctx, tsp, sizes, rep):
    total, found = sizes["jobs"], {}
    for system in rotate(["tsp", "queuectl", "durable"], rep):
        if system == "tsp" and (result := tspkit(ctx, tsp, "drain", total)):
            found["tsp"] = {"jobs_per_s": result["jobs_per_s"], **tsp_cpu(result)}
            if result["queued"] < total and rep == 0:
                ctx.note(f"task-spooler's drain queues {count(result['queued'])} jobs, not "
                         f"{count(total)}: each queued job holds a connection to its server, "
                         "which accepts about 1,000 (see bench/tspkit.py)")
        elif system == "queuectl":
            found["queuectl"] = queuectl_drain(ctx, total)
        elif system == "durable":
            found["durable"] = durable_floor.drain(ctx.new_dir("durable-floor"), total, WORKERS)
            found["durable_nofsync"] = durable_floor.drain(ctx.new_dir("durable-floor"), total,
                                                           WORKERS, fsync=False)
    return found


def queuectl_one_by_one(ctx, total):
    home = new_home(ctx, "hot-e2e")

    def submit():
        for i in range(total):
            drop(home, f"e2e-{i}", "true")
    return queuectl_run(ctx, home, total, submit)


def e2e_round(ctx, tsp, sizes, rep):
    total, found = sizes["jobs"], {}
    for system in rotate(list(SYSTEMS), rep):
        if system == "direct":
            elapsed, _ = spawn_loop(total, WORKERS)
            found["direct"] = {"jobs_per_s": total / elapsed}
        elif system == "tsp" and (result := tspkit(ctx, tsp, "e2e", total)):
            found["tsp"] = {"jobs_per_s": result["jobs_per_s"], **tsp_cpu(result)}
        elif system == "queuectl":
            found["queuectl"] = queuectl_one_by_one(ctx, total)
    return found


def submit_round(ctx, tsp, sizes, rep):
    calls, found = sizes["submit"], {}
    if result := tspkit(ctx, tsp, "submit", calls):
        found["tsp"] = {"submit_ms": statistics.median(result["submit_s"]) * 1e3}
    home = new_home(ctx, "hot-submit")
    commands = {"enqueue": ctx.q(home, "enqueue", JOB), "floor": [ctx.python, "-c", BASELINE]}
    for argv in commands.values():        # bytecode written, home layout made
        ctx.run(argv)
    times = ctx.time_runs(dict(rotate(list(commands.items()), rep)), calls)
    found["queuectl"] = {"submit_ms": statistics.median(times["enqueue"]) * 1e3}
    found["floor"] = {"submit_ms": statistics.median(times["floor"]) * 1e3}
    lines = b'{"command":"true"}\n' * sizes["batch"]
    batch_home = new_home(ctx, "hot-batch")
    elapsed, out, _ = ctx.run(ctx.q(batch_home, "enqueue", "-"), stdin=lines)
    if len(out.split()) != sizes["batch"]:
        raise CommandFailed(f"enqueue - printed {len(out.split())} ids, not {sizes['batch']}")
    found["queuectl"]["batch_jobs_per_s"] = sizes["batch"] / elapsed
    found["queuectl"]["batch_cpu_ms"] = ctx.last_cpu_s / sizes["batch"] * 1e3
    return found


WORKLOADS = (("pickup", pickup_round), ("drain", drain_round), ("e2e", e2e_round),
             ("submit", submit_round))


# ---- the report ----------------------------------------------------------------------------------

class Goal:
    """queuectl's figure over `base`'s (taken from `base_workload`, by default the row's
    own), or queuectl's figure alone when base is None: at most or at least `bound`."""

    def __init__(self, base, bound, at_least=False, judged=True, base_workload=None,
                 unjudged="not judged (editable install: make bench-hotpath)"):
        self.base, self.bound, self.at_least = base, bound, at_least
        self.judged, self.base_workload, self.unjudged = judged, base_workload, unjudged

    def text(self, unit):
        sign = ">=" if self.at_least else "<="
        if self.base is None:
            return f"{sign} {self.bound:g} {unit}"
        return f"{sign} {self.bound:g}x {TITLES.get(self.base, self.base)}"

    def met(self, value):
        return value >= self.bound if self.at_least else value <= self.bound


ALL_COLUMNS = {s: s for s in SYSTEMS}


class Row:
    """One line of the table: `figure` of `workload` for each column (column -> the system
    key whose figure it shows), and the goal judged on the queuectl column."""

    def __init__(self, label, workload, figure, unit, goal=None, columns=None, digits=1):
        self.label, self.workload, self.figure, self.unit = label, workload, figure, unit
        self.goal, self.columns, self.digits = goal, columns or ALL_COLUMNS, digits


def rows(editable):
    cpu = Goal(None, 1.5)
    loop = Goal("direct", 0.5, at_least=True, base_workload="e2e")
    # What the file layout itself allows on this disk: a reference for the drain goal.
    floor = Goal("tsp", 1.2, at_least=True, judged=False,
                 unjudged="reference: the spool contract's file operations alone")
    only = {"queuectl": "queuectl"}
    return (
        Row("pickup p50 (idle, drop-in)", "pickup", "p50_ms", "ms", Goal("direct", 1.5)),
        Row("pickup p95 (idle, drop-in)", "pickup", "p95_ms", "ms", Goal("direct", 2.5)),
        Row("pickup p50 via `queuectl enqueue`", "pickup", "p50_ms", "ms",
            columns={"queuectl": "queuectl_enqueue"}),
        Row("pickup p95 via `queuectl enqueue`", "pickup", "p95_ms", "ms",
            columns={"queuectl": "queuectl_enqueue"}),
        Row("drain of a full queue", "drain", "jobs_per_s", "jobs/s",
            Goal("tsp", 1.2, at_least=True), digits=0),
        Row("  drain against the spawn loop", "drain", "jobs_per_s", "jobs/s", loop,
            columns=only, digits=0),
        Row("  drain: the durable spool's floor (bench/durable_floor.py)", "drain",
            "jobs_per_s", "jobs/s", floor, columns={"queuectl": "durable"}, digits=0),
        Row("  the same floor without its 3 fsyncs per job", "drain", "jobs_per_s", "jobs/s",
            floor, columns={"queuectl": "durable_nofsync"}, digits=0),
        Row("  drain against the durable floor", "drain", "jobs_per_s", "jobs/s",
            Goal("durable", 1.0, at_least=True, judged=False,
                 unjudged="reference: the floor does the contract's file operations, nothing else"),
            columns=only, digits=0),
        Row("one by one while running (end-to-end)", "e2e", "jobs_per_s", "jobs/s",
            Goal("tsp", 1.2, at_least=True), digits=0),
        Row("  one by one against the spawn loop", "e2e", "jobs_per_s", "jobs/s", loop,
            columns=only, digits=0),
        Row("CPU per job outside the job, drain", "drain", "cpu_ms", "ms", cpu, digits=2),
        Row("CPU per job outside the job, one by one", "e2e", "cpu_ms", "ms", cpu, digits=2),
        Row("  tsp server, drain", "drain", "server_ms", "ms",
            columns={"tsp": "tsp"}, digits=2),
        Row("  tsp clients, drain", "drain", "clients_ms", "ms", columns={"tsp": "tsp"},
            digits=2),
        Row("  queuectl supervisor (not counted above), drain", "drain", "supervisor_ms",
            "ms", columns=only, digits=2),
        Row("submit from a shell (`tsp true`; `queuectl enqueue JSON`)", "submit",
            "submit_ms", "ms", Goal("floor", 1.3, judged=not editable)),
        Row("  import floor: python -c \"import click, sqlite3, json\"", "submit",
            "submit_ms", "ms", columns={"queuectl": "floor"}),
        Row("batch `queuectl enqueue -`", "submit", "batch_jobs_per_s", "jobs/s",
            Goal(None, 5000, at_least=True), columns=only, digits=0),
        Row("  its CPU per job", "submit", "batch_cpu_ms", "ms", columns=only, digits=3),
    )


def per_rep(reps, workload, figure, system):
    """`figure` of `system` in every rep where it was measured."""
    values = []
    for rep in reps:
        found = rep.figures.get(workload, {}).get(system, {})
        if figure in found:
            values.append(found[figure])
    return values


def cell(values, digits):
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"


def judge(ctx, row, reps):
    """(the ratio or value, each run's, the verdict) of a row's goal."""
    goal = row.goal
    ours = per_rep(reps, row.workload, row.figure, row.columns.get("queuectl"))
    if not ours:
        return "–", [], "not measured"
    if goal.base is None:
        value, runs = statistics.median(ours), ours
        shown = f"{value:,.{row.digits}f} {row.unit}"
    else:
        base = per_rep(reps, goal.base_workload or row.workload, row.figure, goal.base)
        if not base:
            return "–", [], f"not judged: no {TITLES.get(goal.base, goal.base)} figure"
        runs = [o / b for o, b in zip(ours, base)]
        value = statistics.median(runs)
        shown = f"{value:.2f}x"
    if not goal.judged:
        return shown, runs, goal.unjudged
    what = f"{row.label.strip()}: {goal.text(row.unit)}"
    return shown, runs, ctx.verdict(what, goal.met(value))


def table_line(ctx, row, reps):
    cells = [cell(per_rep(reps, row.workload, row.figure, row.columns[s]), row.digits)
             if s in row.columns else "" for s in SYSTEMS]
    shown, runs, verdict = judge(ctx, row, reps) if row.goal else ("", [], "")
    if len(runs) > 1:
        digits = 2 if row.goal.base else row.digits
        shown += " (" + " ".join(f"{r:,.{digits}f}" for r in runs) + ")"
    ctx.record(f"{row.workload}.{row.figure}.{'.'.join(row.columns.values())}",
               f"{row.label.strip()} ({row.unit}), per rep",
               {s: per_rep(reps, row.workload, row.figure, s) for s in row.columns.values()},
               row.unit)
    return (f"| {row.label} ({row.unit}) | " + " | ".join(cells) + f" | {shown} | "
            f"{row.goal.text(row.unit) if row.goal else ''} | {verdict} |")


def print_table(ctx, reps, editable):
    print(f"\n  medians of {len(reps)} rep{'s' if len(reps) != 1 else ''} [min–max]; "
          "queuectl's ratio is the median of each rep's own ratio (those in brackets): "
          "the reps ran under different loads, a ratio within a rep is the fair one",
          flush=True)
    lines = ["| | " + " | ".join(TITLES[s] for s in SYSTEMS) + " | queuectl ratio | goal | |",
             "|---" * (len(SYSTEMS) + 4) + "|"]
    lines += [table_line(ctx, row, reps) for row in rows(editable)]
    for line in lines:
        print("  " + line, flush=True)


def print_load(ctx, reps):
    for rep in reps:
        ctx.note(f"rep {rep.index + 1} load average (1 min) before -> after: "
                 + ", ".join(f"{w} {a:.2f} -> {b:.2f}" for w, (a, b) in rep.load.items()))
    ctx.record("load", "load average before/after each workload, per rep",
               [rep.load for rep in reps])
    ctx.record("reps", "every figure of every rep", [rep.figures for rep in reps])


@benchmark("hotpath", "issue 9 side by side: direct spawn, task-spooler -S 2, queuectl with "
                      "2 workers (pickup, drain, one by one, CPU per job, submit)")
def bench_hotpath(ctx):
    sizes = {"reps": ctx.scale(3, 1), "pickup": ctx.scale(30, 3),
             "jobs": ctx.scale(2_000, 100), "submit": ctx.scale(15, 2),
             "batch": ctx.scale(10_000, 500)}
    if ctx.reps:
        sizes["reps"] = ctx.reps
    tsp = find_tsp()
    if tsp:
        version = subprocess.run([tsp, "-V"], capture_output=True, text=True).stdout
        ctx.note(f"task-spooler: {tsp} ({version.splitlines()[0] if version else '?'})")
    else:
        ctx.note("task-spooler is NOT installed (apt-get install task-spooler gives `tsp`): "
                 "its column stays empty and the goals against it are not judged")
    kind = install_kind(ctx)
    editable = kind != "normal"
    ctx.note(f"queuectl under test: {ctx.queuectl} ({kind} install)"
             + ("; start-up figures include the editable finder: `make bench-hotpath` "
                "measures a normal install" if editable else ""))
    ctx.record("install", "how the queuectl under test is installed", kind)
    ctx.record("sizes", "sizes of this run", sizes)
    reps = []
    for index in range(sizes["reps"]):
        rep = Rep(index)
        for name, fn in WORKLOADS:
            rep.measure(name, fn, ctx, tsp, sizes, index)
        reps.append(rep)
    print_load(ctx, reps)
    print_table(ctx, reps, editable)
