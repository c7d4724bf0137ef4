"""Worker benchmarks (issues 3 and 4): pickup latency of an idle worker (inotify against
polling), throughput of 2 workers against a plain spawn loop (on the scratch filesystem and
on tmpfs), memory of a worker and its supervisor, `metrics`/`status` with 100,000 jobs and 8
workers' heartbeats, and the CPU an idle worker costs.

Workers are real (`queuectl worker start`, detached supervisors) and are always stopped
(`queuectl worker stop`, then SIGKILL of the pids we started if anything is left). These
benchmarks use psutil (a queuectl dependency) to read the workers' CPU and memory."""

import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager

from fixtures import wait_quiet
from harness import CommandFailed, benchmark, count, percentile

STARTED_RE = re.compile(r"started supervisor (\d+) with \d+ workers? \(pids? ([\d, ]+)\)")
# Runs a command in a new user namespace whose inotify instance limit is 0: watchdog cannot
# start there, so the worker falls back to polling. The limit is per user namespace, so
# nothing outside (other tests, other workers on this machine) is affected.
NO_INOTIFY = ["unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', "sh"]
SHM = "/dev/shm"


# ---- helpers ----------------------------------------------------------------------------------

def wait_for(check, timeout, interval, what):
    """Poll check() until it returns something true; CommandFailed after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CommandFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def spool_dir(home, state):
    return os.path.join(home, "spool", state)


def job_count(home, state):
    with os.scandir(spool_dir(home, state)) as entries:
        return sum(1 for e in entries if e.name.endswith(".json") and not e.name.startswith("."))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                       # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fs_type(path):
    """The filesystem type of the mount holding `path` (from /proc/mounts); for ext3/ext4,
    with ", no journal" when the mount has none (no /proc/fs/jbd2/<device>-*). Without a
    journal, ext4 skips inodes freed in the last 1-6 minutes when it allocates one, scanning
    past each: every file created costs more the more files were deleted lately (ialloc.c,
    recently_deleted), so figures taken there depend on what ran before them."""
    path = os.path.realpath(path)
    best, kind, device = "", "unknown", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and \
                        len(mount) >= len(best):
                    best, kind, device = mount, parts[2], parts[0]
    except OSError:
        pass
    if kind in ("ext3", "ext4") and device.startswith("/dev/"):
        name = os.path.basename(os.path.realpath(device))
        try:
            journals = os.listdir("/proc/fs/jbd2")
        except OSError:
            journals = None
        if journals is not None and not any(j.startswith(name + "-") for j in journals):
            kind += ", no journal"
    return kind


class Pool:
    """A running supervisor and its workers, as started by `queuectl worker start`."""

    def __init__(self, supervisor, workers, start_s, note=None):
        self.supervisor, self.workers, self.start_s, self.note = supervisor, workers, \
            start_s, note

    @property
    def pids(self):
        return [self.supervisor, *self.workers]


def _records(home):
    """Supervisor records of a home: [(pid, [worker pids])]."""
    records = []
    directory = os.path.join(home, "data", "supervisors")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    rec = json.load(f)
                records.append((rec["pid"], rec.get("workers") or []))
            except (OSError, ValueError, KeyError):
                pass
    return records


def _heartbeats(home, supervisor_pid):
    from queuectl.index import Index
    from queuectl.runner import HOSTNAME
    index = Index(os.path.join(home, "data", "queue.db"))
    try:
        return [w["pid"] for w in index.workers()
                if w["supervisor"] == f"{HOSTNAME}-{supervisor_pid}"]
    finally:
        index.close()


def start_pool(ctx, home, workers, prefix=(), slow_ok=False, env=None):
    """`queuectl worker start --count N` (behind `prefix`, e.g. NO_INOTIFY). With slow_ok, a
    start that gives up waiting for heartbeats (20 s) is not fatal: we keep waiting for all
    N workers' first heartbeat ourselves (up to 5 minutes), and say so in Pool.note."""
    argv = [*prefix, *ctx.q(home, "worker", "start", "--count", str(workers))]
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env or ctx.env,
                          cwd=ctx.root, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    match = STARTED_RE.search(out)
    if proc.returncode == 0 and match:
        return Pool(int(match.group(1)), [int(p) for p in match.group(2).split(",")], elapsed)
    records = _records(home)
    if not (slow_ok and "did not report in" in err and records):
        for pid, pids in records:       # whatever it left behind
            _kill_pids([pid, *pids])
        raise CommandFailed(f"{' '.join(argv)!r} exited {proc.returncode}: {err.strip()[-1500:]}")
    supervisor = records[-1][0]
    pids = wait_for(lambda: (lambda p: p if len(p) >= workers else None)(
        _heartbeats(home, supervisor)), 300, 0.2, f"{workers} workers' first heartbeat")
    return Pool(supervisor, sorted(pids), time.perf_counter() - started,
                note=f"`worker start --count {workers}` exited {proc.returncode} after "
                     f"{elapsed:.1f} s ({err.strip().splitlines()[-1][:90]}...); all "
                     f"{workers} workers heartbeat after {time.perf_counter() - started:.1f} s")


def _kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_pool(ctx, home, pool):
    """`queuectl worker stop`; SIGKILL any of our pids still alive 10 s later."""
    try:
        ctx.run(ctx.q(home, "worker", "stop", "--timeout", "10"))
    except CommandFailed as exc:
        ctx.note(f"worker stop failed: {exc}")
    if pool is None:
        return
    try:
        wait_for(lambda: not any(alive(p) for p in pool.pids), 10, 0.05, "workers to exit")
    except CommandFailed:
        left = [p for p in pool.pids if alive(p)]
        _kill_pids(left)
        ctx.note(f"pids {left} were still alive after `worker stop`: killed")


@contextmanager
def workers_running(ctx, home, workers, prefix=(), slow_ok=False, env=None):
    pool = None
    try:
        pool = start_pool(ctx, home, workers, prefix, slow_ok, env)
        yield pool
    finally:
        stop_pool(ctx, home, pool)


def new_home(ctx, label, parent=None):
    """An empty home with its layout and index made (by `init`, outside any timing)."""
    home = tempfile.mkdtemp(prefix=f"{label}-", dir=parent) if parent else ctx.new_dir(label)
    ctx.run(ctx.q(home, "init"))
    os.makedirs(spool_dir(home, "tmp"), exist_ok=True)
    return home


def log_lines(home, needle):
    try:
        with open(os.path.join(home, "data", "logs", "queuectl.log"), errors="replace") as f:
            return [line.rstrip("\n") for line in f if needle in line]
    except FileNotFoundError:
        return []


def cpu_seconds(pid):
    """User + system CPU seconds of one process (not its children); None once it is gone."""
    import psutil
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


# ---- taking inotify away ---------------------------------------------------------------------

WATCHER_PROBE = """\
import sys, queuectl.watcher as w
try:
    watch = w.start([sys.argv[1]], w.Wakeup())
except Exception as exc:
    print(f"RAISED {type(exc).__name__}: {exc}")
else:
    print("POLLING" if watch is None else "INOTIFY")
"""


def no_inotify_route(ctx):
    """How to start a worker without inotify: (argv prefix, env, description).

    First choice: run the supervisor in a new user namespace whose inotify instance limit is
    0 (per namespace, so nothing else on the machine is affected), the way a host that ran
    out of inotify instances looks. A probe checks that queuectl's watcher then falls back
    to polling; if it raises instead (a worker would crash and be restarted in a loop), that
    is noted, and watchdog is made unimportable instead (a stub package first on
    PYTHONPATH), which takes the watcher's other fallback (ImportError -> polling)."""
    if shutil.which("unshare"):
        probe = subprocess.run([*NO_INOTIFY, ctx.python, "-c", WATCHER_PROBE, ctx.root],
                               capture_output=True, text=True, env=ctx.env, cwd=ctx.root)
        said = (probe.stdout.strip() or probe.stderr.strip()[-300:] or "nothing").splitlines()
        said = said[-1] if said else "nothing"
        if said == "POLLING":
            return NO_INOTIFY, None, ("worker run in a user namespace with "
                                      "user.max_inotify_instances = 0")
        if said.startswith("RAISED"):
            ctx.note("BUG: with no inotify instance left, queuectl.watcher.start raises "
                     f"instead of returning None ({said[7:]}): the worker crashes at start "
                     "and the supervisor restarts it in a loop, no polling fallback "
                     "(watchdog's InotifyObserver() opens the inotify fd in its "
                     "constructor, outside start()'s try)")
        else:
            ctx.note(f"the user-namespace route is unavailable here ({said})")
    stub = ctx.new_dir("no-watchdog")
    os.mkdir(os.path.join(stub, "watchdog"))
    with open(os.path.join(stub, "watchdog", "__init__.py"), "w") as f:
        f.write('raise ImportError("watchdog hidden by bench/ for the polling comparison")\n')
    env = dict(ctx.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (stub, env.get("PYTHONPATH")) if p)
    return (), env, "watchdog made unimportable (stub package on PYTHONPATH)"


# ---- pickup -----------------------------------------------------------------------------------

def drop(home, job_id, command):
    """Write a job into spool/tmp and rename it into pending/; returns the time of the
    rename (time.time(), the clock `date +%s.%N` reads)."""
    tmp = os.path.join(spool_dir(home, "tmp"), f"bench-{job_id}")
    with open(tmp, "w") as f:
        f.write(json.dumps({"command": command}))
    renamed = time.time()
    os.rename(tmp, os.path.join(spool_dir(home, "pending"), f"{job_id}.json"))
    return renamed


def read_stamp(path):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None


def stamp_command(path):
    return f"date +%s.%N > {shlex.quote(path)}"


def pickup_samples(ctx, home, stamps, samples, rng, label, pause=(0.1, 0.3)):
    """Pickup latencies (s): one untimed warm-up job, then `samples` drops, each waited to
    completion, with a random pause between them. For a polling worker the pause must span
    a whole poll interval: its timer restarts at the scan that found the previous job, so
    a fixed short pause would always drop at the same phase of its next scan."""
    result = []
    for i in range(samples + 1):
        job_id = f"pickup-{label}-{i}-{time.time_ns()}"
        stamp = os.path.join(stamps, job_id)
        renamed = drop(home, job_id, stamp_command(stamp))
        started = wait_for(lambda: read_stamp(stamp), 15, 0.001, f"job {job_id} to start")
        wait_for(lambda: os.path.exists(os.path.join(spool_dir(home, "completed"),
                                                     f"{job_id}.json")),
                 15, 0.002, f"job {job_id} to complete")
        if i:
            result.append(started - renamed)
        time.sleep(rng.uniform(*pause))
    return result


def spawn_floor_samples(stamps, samples):
    """The same stamp written by `/bin/sh -c 'date ...'` spawned straight from Python: the
    floor under pickup (fork/exec of sh, then of date)."""
    result = []
    for i in range(samples):
        stamp = os.path.join(stamps, f"floor-{i}")
        before = time.time()
        subprocess.run(["/bin/sh", "-c", stamp_command(stamp)], check=True)
        result.append(read_stamp(stamp) - before)
        time.sleep(0.02)
    return result


def pct_line(ctx, key, label, samples):
    """Report p50/p95 (nearest rank) in ms; returns (p50, p95) in seconds."""
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    ctx.record(key, label, {"p50": p50, "p95": p95, "min": min(samples), "max": max(samples),
                            "n": len(samples), "samples": [round(s, 6) for s in samples]}, "s")
    print(f"  {label:<58} p50 {p50 * 1e3:8.1f} ms   p95 {p95 * 1e3:8.1f} ms   "
          f"(n={len(samples)}, max {max(samples) * 1e3:.1f})", flush=True)
    return p50, p95


@benchmark("pickup", "idle worker: job file renamed into pending/ -> its command starts "
                     "(inotify vs polling at 1 s)")
def bench_pickup(ctx):
    samples = ctx.scale(30, 4)
    rng = random.Random(3)
    stamps = ctx.new_dir("pickup-stamps")
    floor = spawn_floor_samples(stamps, samples)

    home = new_home(ctx, "pickup-home")
    with workers_running(ctx, home, 1) as pool:
        mode = log_lines(home, f":{pool.workers[0]} started")
        if not any("(inotify)" in line for line in mode):
            raise CommandFailed(f"the worker did not start with inotify: {mode}")
        time.sleep(0.5)
        inotify = pickup_samples(ctx, home, stamps, samples, rng, "inotify")

    polling, how = None, None
    try:
        prefix, env, how = no_inotify_route(ctx)
        home = new_home(ctx, "pickup-poll-home")
        with workers_running(ctx, home, 1, prefix=prefix, env=env) as pool:
            mode = log_lines(home, f":{pool.workers[0]} started")
            if not any("polling, inotify unavailable" in line for line in mode):
                raise CommandFailed(f"the worker still had inotify: {mode}")
            time.sleep(0.5)
            polling = pickup_samples(ctx, home, stamps, samples, rng, "polling",
                                     pause=(0.1, 1.1))
    except CommandFailed as exc:
        ctx.note(f"polling comparison not measured: {exc}")

    p50, p95 = pct_line(ctx, "pickup_inotify", "pickup, idle worker, inotify", inotify)
    if polling:
        pct_line(ctx, "pickup_polling", "pickup, idle worker, polling at 1 s (no inotify)",
                 polling)
    f50, f95 = pct_line(ctx, "spawn_floor", "floor: python spawns sh -c 'date ...' directly",
                        floor)
    ctx.ratio("pickup_vs_floor_p50", "pickup p50 / spawn floor p50", p50, f50)
    if polling:
        ctx.ratio("polling_vs_inotify_p50", "polling p50 / inotify p50", percentile(polling, 50),
                  p50)
    ctx.value("pickup_over_floor_ms", "pickup p50 minus floor p50 (queue's own share)",
              (p50 - f50) * 1e3, "ms")
    ctx.target("pickup p50 under 10 ms", p50 < 0.010, f"{p50 * 1e3:.1f} ms")
    ctx.target("pickup p95 under 25 ms", p95 < 0.025, f"{p95 * 1e3:.1f} ms")
    if how:
        ctx.note(f"polling: {how}; queuectl has no switch to turn inotify off")


# ---- throughput -------------------------------------------------------------------------------

def spawn_loop(total, slots=2):
    """Seconds for a plain loop to run `/bin/sh -c true` `total` times, `slots` at a time;
    and the CPU seconds (this process + the shells) it took."""
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    running, started, done = {}, 0, 0
    t0 = time.perf_counter()
    while done < total:
        while started < total and len(running) < slots:
            proc = subprocess.Popen(["/bin/sh", "-c", "true"])
            running[proc.pid] = proc
            started += 1
        pid, status = os.wait()
        proc = running.pop(pid, None)
        if proc is not None:
            proc.returncode = os.waitstatus_to_exitcode(status)
            done += 1
    elapsed = time.perf_counter() - t0
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(a, f) - getattr(b, f) for a, b in ((after_self, before_self),
                                                          (after_children, before_children))
              for f in ("ru_utime", "ru_stime"))
    return elapsed, cpu


def finish_floor(directory, files):
    """Seconds per job for the fsyncs a worker's finish makes, alone, in this process: write
    the new record into tmp/ and fsync it, fsync pending/ (the claim's origin), rename into
    completed/, fsync completed/, unlink the processing/ copy (queuectl.spool.finish)."""
    dirs = {name: os.path.join(directory, name)
            for name in ("tmp", "pending", "processing", "completed")}
    for path in dirs.values():
        os.mkdir(path)
    data = json.dumps({"command": "true", "id": "x" * 32, "attempts": 1}, indent=2).encode()

    def fsync_dir(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for i in range(files):
        with open(os.path.join(dirs["processing"], f"{i}.json"), "wb") as f:
            f.write(data)
    start = time.perf_counter()
    for i in range(files):
        tmp = os.path.join(dirs["tmp"], str(i))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(dirs["pending"])
        os.rename(tmp, os.path.join(dirs["completed"], f"{i}.json"))
        fsync_dir(dirs["completed"])
        os.unlink(os.path.join(dirs["processing"], f"{i}.json"))
    return (time.perf_counter() - start) / files


def queue_run(ctx, home, total):
    """Enqueue `total` `true` jobs with no worker running, then start 2 workers and wait
    until completed/ holds them all. Returns a dict of timings and CPU figures."""
    lines = b'{"command":"true"}\n' * total
    ctx.run(ctx.q(home, "enqueue", "-"), stdin=lines)
    t_cmd = time.perf_counter()
    with workers_running(ctx, home, 2) as pool:
        t_up = time.perf_counter()
        done_up = job_count(home, "completed")
        cpu_up = {pid: cpu_seconds(pid) for pid in pool.workers}
        children_up = {pid: _children_cpu(pid) for pid in pool.workers}
        wait_for(lambda: job_count(home, "completed") >= total, 600, 0.05,
                 f"{total} completed jobs")
        t_end = time.perf_counter()
        worker_cpu = sum(cpu_seconds(pid) - cpu_up[pid] for pid in pool.workers)
        shell_cpu = sum(_children_cpu(pid) - children_up[pid] for pid in pool.workers)
    bad = {s: job_count(home, s) for s in ("failed", "dead", "pending", "processing")}
    if any(bad.values()):
        raise CommandFailed(f"after the run the spool holds {bad}")
    steady = total - done_up
    return {"jobs_per_s": total / (t_end - t_cmd),
            "steady_jobs_per_s": steady / (t_end - t_up) if steady else None,
            "start_s": pool.start_s, "done_at_start": done_up,
            "worker_cpu_per_job": worker_cpu / steady if steady else None,
            "shell_cpu_per_job": shell_cpu / steady if steady else None}


def _children_cpu(pid):
    import psutil
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.children_user + t.children_system


@benchmark("throughput", "2,000 `true` jobs, 2 workers, vs a loop spawning sh -c true 2 at "
                         "a time (scratch filesystem and tmpfs)")
def bench_throughput(ctx):
    total = ctx.scale(2_000, 300)
    runs = ctx.scale(3, 1)
    shm_root = tempfile.mkdtemp(prefix="queuectl-bench-", dir=SHM) if os.path.isdir(SHM) \
        else None
    where = {"scratch": f"{fs_type(ctx.root)} (scratch)"}
    if shm_root:
        where["shm"] = f"{fs_type(shm_root)} ({SHM})"
    ctx.note(f"scratch: {ctx.root} ({fs_type(ctx.root)})")
    results = {"loop": [], "scratch": [], "shm": []}
    loop_cpu, floors = [], []
    try:
        for _ in range(runs):
            elapsed, cpu = spawn_loop(total)
            results["loop"].append(total / elapsed)
            loop_cpu.append(cpu / total)
            floors.append(finish_floor(ctx.new_dir("finish-floor"), ctx.scale(200, 50)))
            results["scratch"].append(queue_run(ctx, new_home(ctx, "tput-home"), total))
            if shm_root:
                results["shm"].append(queue_run(ctx, new_home(ctx, "tput", shm_root), total))
    finally:
        if shm_root:
            shutil.rmtree(shm_root, ignore_errors=True)

    med = statistics.median
    loop = ctx.value("loop_jobs_per_s", f"loop: sh -c true x {count(total)}, 2 at a time",
                     med(results["loop"]), "jobs/s", digits=0)
    ctx.value("loop_cpu_us_per_job", "  loop CPU per spawn (python + sh)",
              med(loop_cpu) * 1e6, "us", digits=0)
    ctx.record("loop_runs", "loop jobs/s per run", results["loop"], "jobs/s")
    floor = statistics.median(floors)
    ctx.value("finish_floor_ms", "floor: one finish's 3 fsyncs alone, in this process",
              floor * 1e3, "ms per job", digits=2)
    ctx.value("finish_floor_jobs_per_s", "  so 2 workers finishing in parallel cannot pass",
              2 / floor, "jobs/s", digits=0)
    medians = {}
    for kind in ("scratch", "shm"):
        rows = results[kind]
        if not rows:
            continue
        label = f"queue on {where[kind]}"
        ctx.record(f"{kind}_runs", f"{label}: every run", rows)
        medians[kind] = ctx.value(f"{kind}_jobs_per_s",
                                  f"{label}: 2 workers, start included",
                                  med(r["jobs_per_s"] for r in rows), "jobs/s", digits=0)
        steady = [r["steady_jobs_per_s"] for r in rows if r["steady_jobs_per_s"]]
        if steady:
            ctx.value(f"{kind}_steady_jobs_per_s", "  after `worker start` returned",
                      med(steady), "jobs/s", digits=0)
        ctx.value(f"{kind}_start_ms", "  `worker start --count 2` took",
                  med(r["start_s"] for r in rows) * 1e3, "ms", digits=0)
        cpu = [r["worker_cpu_per_job"] for r in rows if r["worker_cpu_per_job"]]
        if cpu:
            ctx.value(f"{kind}_worker_cpu_us_per_job", "  worker CPU per job (own)",
                      med(cpu) * 1e6, "us", digits=0)
            ctx.value(f"{kind}_shell_cpu_us_per_job", "  job CPU per job (sh -c true)",
                      med(r["shell_cpu_per_job"] for r in rows if r["worker_cpu_per_job"])
                      * 1e6, "us", digits=0)
    ratio = ctx.ratio("queue_vs_loop", f"queue on {where['scratch'].split()[0]} / loop "
                      "(medians)", medians["scratch"], loop)
    if "shm" in medians:
        ctx.ratio("shm_queue_vs_loop", "queue on tmpfs / loop (medians)", medians["shm"], loop)
        ctx.ratio("shm_vs_scratch", "queue on tmpfs / queue on scratch: the fsync share",
                  medians["shm"], medians["scratch"])
    ctx.target("throughput at least 50% of the spawn loop (every transition fsynced)",
               ratio >= 0.5, f"{ratio:.0%}")


# ---- memory -----------------------------------------------------------------------------------

IMPORTS_PROBE = ("import click, sqlite3, psutil, watchdog.observers.inotify, queuectl.cli, "
                 "queuectl.pool, queuectl.worker, time; time.sleep(60)")


def memory_of(pid):
    """{rss, uss, pss} in bytes (uss/pss when the kernel gives them)."""
    import psutil
    proc = psutil.Process(pid)
    try:
        info = proc.memory_full_info()
        return {"rss": info.rss, "uss": getattr(info, "uss", None),
                "pss": getattr(info, "pss", None)}
    except psutil.AccessDenied:
        return {"rss": proc.memory_info().rss, "uss": None, "pss": None}


@benchmark("memory", "RSS (and USS/PSS) of one idle worker and of its supervisor")
def bench_memory(ctx):
    runs = ctx.scale(3, 1)
    seen = {"worker": [], "supervisor": [], "python": [], "imports": []}
    homes = [new_home(ctx, "memory-home") for _ in range(runs)]
    probes = [(name, subprocess.Popen([ctx.python, "-c", code], env=ctx.env))
              for _ in range(runs) for name, code in (("python", "import time; time.sleep(60)"),
                                                      ("imports", IMPORTS_PROBE))]
    try:
        with ExitStack() as stack:       # the pools run side by side: RSS does not mind
            pools = [stack.enter_context(workers_running(ctx, home, 1)) for home in homes]
            time.sleep(3)
            for pool in pools:
                seen["worker"].append(memory_of(pool.workers[0]))
                seen["supervisor"].append(memory_of(pool.supervisor))
            for name, proc in probes:
                if proc.poll() is not None:
                    raise CommandFailed(f"the {name} probe exited {proc.returncode}")
                seen[name].append(memory_of(proc.pid))
    finally:
        for _, proc in probes:
            proc.kill()
            proc.wait()
    labels = {"worker": "idle worker", "supervisor": "supervisor",
              "python": "reference: python -c 'sleep' (interpreter alone)",
              "imports": "reference: python importing click, sqlite3, psutil, watchdog, cli"}
    mb = 1 / 1048576
    med = {}
    for name, rows in seen.items():
        med[name] = statistics.median(r["rss"] for r in rows) * mb
        extra = ""
        if all(r["uss"] is not None for r in rows):
            extra = (f"   USS {statistics.median(r['uss'] for r in rows) * mb:5.1f} MB"
                     f"   PSS {statistics.median(r['pss'] for r in rows) * mb:5.1f} MB")
        ctx.record(f"{name}_memory", labels[name], rows, "bytes")
        print(f"  {labels[name][:50]:<50} RSS {med[name]:5.1f} MB{extra}   (median of "
              f"{len(rows)})", flush=True)
    for name in ("worker", "supervisor"):
        ctx.target(f"{name} RSS under 40 MB", med[name] < 40, f"{med[name]:.1f} MB")
    ctx.note("workers are forked from the supervisor: RSS counts the pages they share, USS "
             "what is only theirs, PSS shares the shared pages out")


# ---- metrics and status at 100,000 jobs -------------------------------------------------------

def _sleepers(n):
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(n)]


def fake_heartbeats(home, procs):
    """One heartbeat row per live process, as Index.heartbeat writes them (idle workers)."""
    import psutil
    from queuectl.index import Index
    from queuectl.runner import HOSTNAME
    index = Index(os.path.join(home, "data", "queue.db"))
    ids = []
    try:
        for proc in procs:
            created = psutil.Process(proc.pid).create_time()
            worker_id = f"{HOSTNAME}-{proc.pid}-{int(created)}"
            index.heartbeat({"worker_id": worker_id, "host": HOSTNAME, "pid": proc.pid,
                             "started_at": created, "heartbeat_at": time.time(),
                             "current_job": None, "jobs_done": 0, "jobs_failed": 0,
                             "cpu_percent": 0.0, "rss_bytes": 30 << 20,
                             "supervisor": "bench", "state": "idle"})
            ids.append(worker_id)
    finally:
        index.close()
    return ids


def drop_rows(home, ids):
    from queuectl.index import Index
    index = Index(os.path.join(home, "data", "queue.db"))
    try:
        for worker_id in ids:
            index.delete_worker(worker_id)
    finally:
        index.close()


def time_reads(ctx, home, runs, before_round=None):
    commands = {"metrics": ctx.q(home, "metrics"), "status": ctx.q(home, "status")}
    for argv in commands.values():     # untimed: the first look may rescan (racy mtimes)
        ctx.run(argv)
    times = {k: [] for k in commands}
    for _ in range(runs):
        if before_round:
            before_round()
        for label, argv in commands.items():
            elapsed, out, _ = ctx.run(argv)
            times[label].append(elapsed)
    return times


@benchmark("metrics_100k", "`metrics` and `status` with 100,000 jobs and 8 workers' "
                           "heartbeats (8 real paused workers, then 8 inserted rows)")
def bench_metrics(ctx):
    import psutil
    total = ctx.scale(100_000, 10_000)
    runs = ctx.scale(7, 3)
    home = ctx.home_with_jobs(total)
    ctx.run(ctx.q(home, "pause"))
    try:
        with workers_running(ctx, home, 8, slow_ok=True) as pool:
            ctx.value("start_8_s", f"8 paused workers on {count(total)} jobs: all heartbeat "
                      "after", pool.start_s, "s")
            if pool.note:
                ctx.note(pool.note)
            wait_quiet(home)
            procs = [psutil.Process(p) for p in pool.workers]
            cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
            t0 = time.perf_counter()
            real = time_reads(ctx, home, runs)
            wall = time.perf_counter() - t0
            busy = sum(sum(p.cpu_times()[:2]) - c for p, c in zip(procs, cpu0)) / wall
        sleepers = _sleepers(8)
        ids = []
        try:
            def refresh():
                ids[:] = fake_heartbeats(home, sleepers)
            refresh()
            fake = time_reads(ctx, home, runs, before_round=refresh)
        finally:
            if ids:
                drop_rows(home, ids)
            for proc in sleepers:
                proc.kill()
                proc.wait()
    finally:
        ctx.run(ctx.q(home, "resume"))

    results = {}
    for label, times in (("real", real), ("rows", fake)):
        desc = "8 paused workers" if label == "real" else "8 inserted heartbeat rows"
        for cmd in ("metrics", "status"):
            results[cmd, label] = ctx.timing(f"{cmd}_{label}_ms",
                                             f"{cmd:<7} {count(total)} jobs, {desc}",
                                             times[cmd])
    ctx.value("paused_workers_cpu", "CPU of the 8 paused workers meanwhile (all together)",
              busy * 100, "% of a core")
    for cmd in ("metrics", "status"):
        ctx.ratio(f"{cmd}_real_vs_rows", f"{cmd}: with real workers / with inserted rows",
                  results[cmd, "real"], results[cmd, "rows"])
    for cmd in ("metrics", "status"):
        value = results[cmd, "real"]
        ctx.target(f"{cmd} at {count(total)} jobs + 8 workers under 200 ms", value < 0.200,
                   f"{value * 1e3:.0f} ms")


# ---- heartbeat cost ---------------------------------------------------------------------------

def idle_cpu(ctx, setups, seconds):
    """Start a pool per (home, workers), let them settle, then measure every process's CPU
    over the same `seconds` of wall time. Returns [(pool, {pid: % of a core})]."""
    with ExitStack() as stack:
        pools = [stack.enter_context(workers_running(ctx, home, n)) for home, n in setups]
        time.sleep(3)                # start-up settles (imports, first scan, first beat)
        pids = [pid for pool in pools for pid in pool.pids]
        before = {pid: cpu_seconds(pid) for pid in pids}
        t0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - t0
        used = {pid: (cpu_seconds(pid) - before[pid]) / wall * 100 for pid in pids}
    return [(pool, {pid: used[pid] for pid in pool.pids}) for pool in pools]


@benchmark("heartbeat_cost", "CPU of idle workers (heartbeat every 2 s): 1 worker and 4 "
                             "workers, then 1 worker of a paused queue with ready jobs")
def bench_heartbeat(ctx):
    seconds, paused_seconds = ctx.scale(30, 5), ctx.scale(10, 3)
    ready = 100
    one, four = new_home(ctx, "idle-1-home"), new_home(ctx, "idle-4-home")
    measured = idle_cpu(ctx, [(one, 1), (four, 4)], seconds)
    paused = new_home(ctx, "paused-home")
    ctx.run(ctx.q(paused, "enqueue", "-"), stdin=b'{"command":"true"}\n' * ready)
    ctx.run(ctx.q(paused, "pause"))
    measured += idle_cpu(ctx, [(paused, 1)], paused_seconds)
    cases = (("1", "1 idle worker, empty queue"), ("4", "4 idle workers, empty queue"),
             ("paused", f"1 worker, queue paused, {ready} ready jobs"))
    figures = {}
    for (key, what), (pool, used) in zip(cases, measured):
        per_worker = [used[pid] for pid in pool.workers]
        figures[key] = statistics.mean(per_worker)
        ctx.record(f"idle_{key}_per_worker", f"CPU % per worker: {what}", per_worker, "%")
        ctx.value(f"idle_{key}_worker_cpu", f"{what}: CPU per worker"
                  f"{' (mean)' if len(per_worker) > 1 else ''}", figures[key], "% of a core",
                  digits=2)
        if len(per_worker) > 1:
            ctx.value(f"idle_{key}_worker_cpu_max", "  the busiest of them",
                      max(per_worker), "% of a core", digits=2)
        ctx.value(f"idle_{key}_supervisor_cpu", "  their supervisor",
                  used[pool.supervisor], "% of a core", digits=2)
    ctx.note(f"the 1- and 4-worker pools are measured side by side over the same {seconds} s, "
             f"the paused one alone over {paused_seconds} s; psutil cpu_times counts clock "
             f"ticks (10 ms): resolution {1 / seconds:.2f}% over {seconds} s")
    for key, what in (("1", "idle worker (1 worker)"), ("4", "idle worker (4 workers)"),
                      ("paused", "paused worker with ready jobs")):
        ctx.target(f"{what} under 1% of a core", figures[key] < 1.0, f"{figures[key]:.2f}%")
