"""Submit-path benchmarks: one `queuectl enqueue` against importing its libraries (and which
modules that path loads), and a batch of JSON Lines on stdin."""

import json
import os
import time

from harness import CommandFailed, benchmark, count

JOB = '{"command":"true"}'
BASELINE = "import click, sqlite3, json"
HEAVY = ("watchdog", "psutil")

# Run in a fresh interpreter: how long importing the CLI takes, how long the enqueue call
# itself takes (its lazy imports included), and which modules were loaded in the end.
IMPORT_PROBE = """\
import time
t0 = time.perf_counter()
import json, sys
from queuectl.cli import main
t1 = time.perf_counter()
main(['--home', sys.argv[1], 'enqueue', sys.argv[2]], standalone_mode=False)
t2 = time.perf_counter()
print('PROBE=' + json.dumps({'import_s': t1 - t0, 'call_s': t2 - t1,
                             'modules': sorted(sys.modules)}))
"""
BASELINE_PROBE = f"""\
import time
t0 = time.perf_counter()
{BASELINE}
t1 = time.perf_counter()
print('PROBE=' + json.dumps({{'import_s': t1 - t0}}))
"""


@benchmark("enqueue_cli", "one `queuectl enqueue` as a fresh process vs importing its libraries")
def bench_enqueue_cli(ctx):
    runs = ctx.scale(15, 5)
    home = ctx.new_dir("enqueue-home")
    ctx.run(ctx.q(home, "enqueue", JOB))     # layout, schema and bytecode exist from here on
    ctx.run([ctx.python, "-c", BASELINE])
    fresh = [ctx.run(ctx.q(ctx.new_dir("fresh-home"), "enqueue", JOB))[0]
             for _ in range(ctx.scale(3, 2))]
    times = ctx.time_runs({"enqueue": ctx.q(home, "enqueue", JOB),
                           "baseline": [ctx.python, "-c", BASELINE],
                           "pass": [ctx.python, "-c", "pass"]}, runs)
    enqueue = ctx.timing("enqueue_ms", f"queuectl enqueue '{JOB}'", times["enqueue"])
    baseline = ctx.timing("baseline_ms", f'python -c "{BASELINE}"', times["baseline"])
    floor = ctx.timing("python_pass_ms", 'python -c "pass" (interpreter start-up)',
                       times["pass"])
    ctx.timing("fresh_home_ms", "queuectl enqueue into an empty home (creates the schema)",
               fresh)
    ctx.ratio("enqueue_vs_baseline", "enqueue / import baseline (medians)", enqueue, baseline,
              limit=1.3, what=f"enqueue within 1.3x of `{BASELINE}`")
    ctx.value("enqueue_over_baseline_ms", "enqueue minus baseline (medians)",
              (enqueue - baseline) * 1000, "ms")
    ctx.value("baseline_over_pass_ms", "baseline minus interpreter start-up (medians)",
              (baseline - floor) * 1000, "ms")
    probes = in_process_split(ctx, home, runs)
    check_heavy_imports(ctx, home, probes[-1]["modules"])


def run_probe(ctx, code, *args):
    out = ctx.run([ctx.python, "-c", code, *args])[1].decode()
    line = [ln for ln in out.splitlines() if ln.startswith("PROBE=")][-1]
    return json.loads(line[len("PROBE="):])


def in_process_split(ctx, home, runs):
    """Inside the interpreter: importing queuectl.cli vs the baseline imports, and the
    enqueue call itself. Returns the CLI probes (each with its sys.modules)."""
    probes, base = [], []
    for _ in range(runs):
        probes.append(run_probe(ctx, IMPORT_PROBE, home, JOB))
        base.append(run_probe(ctx, BASELINE_PROBE)["import_s"])
    ctx.timing("inproc_import_cli_ms", "in-process: import queuectl.cli (click included)",
               [p["import_s"] for p in probes])
    ctx.timing("inproc_import_baseline_ms", f"in-process: {BASELINE}", base)
    ctx.timing("inproc_enqueue_call_ms", "in-process: main(enqueue): lazy imports + work",
               [p["call_s"] for p in probes])
    return probes


def parse_importtime(stderr):
    """`python -X importtime` output -> [(module, self_us, cumulative_us)]."""
    rows = []
    for line in stderr.decode(errors="replace").splitlines():
        parts = line.partition("import time:")[2].split("|")
        if len(parts) != 3:
            continue
        try:
            rows.append((parts[2].strip(), int(parts[0]), int(parts[1])))
        except ValueError:
            continue     # the header line
    return rows


def heavy(names):
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def check_heavy_imports(ctx, home, loaded):
    """watchdog and psutil must stay off the enqueue path: look at the real console script
    under -X importtime and at sys.modules after the in-process call. Also list what the
    enqueue path imports beyond the baseline, heaviest first."""
    err = ctx.run([ctx.python, "-X", "importtime", ctx.queuectl, "--home", home,
                   "enqueue", JOB])[2]
    cli_rows = parse_importtime(err)
    base_err = ctx.run([ctx.python, "-X", "importtime", "-c", BASELINE])[2]
    base_names = {name for name, _, _ in parse_importtime(base_err)}

    found_traced, found_loaded = heavy(n for n, _, _ in cli_rows), heavy(loaded)
    for how, found in (("-X importtime of the console script", found_traced),
                       ("sys.modules after enqueue in-process", found_loaded)):
        ctx.note(f"watchdog/psutil on the enqueue path ({how}): "
                 + ("imported: " + ", ".join(found[:10]) if found else "not imported"))
    ctx.record("heavy_modules_imported", "watchdog/psutil modules on the enqueue path",
               sorted(set(found_traced) | set(found_loaded)))
    ctx.target("no watchdog/psutil on the enqueue path", not found_traced and not found_loaded,
               "none imported" if not (found_traced or found_loaded) else "imported")

    extra = sorted(((us, name) for name, us, _ in cli_rows if name not in base_names),
                   reverse=True)
    ctx.value("extra_import_self_ms", f"-X importtime: {len(extra)} modules beyond the baseline",
              sum(us for us, _ in extra) / 1000, "ms of self time (tracing inflates it)")
    ctx.note("the largest of them by self time (ms): "
             + ", ".join(f"{name} {us / 1000:.1f}" for us, name in extra[:12]))
    ctx.record("extra_imports", "self import time of modules beyond the baseline (ms)",
               [{"module": name, "self_ms": us / 1000} for us, name in extra])


@benchmark("batch_enqueue_10k", "10,000 JSON Lines piped to `queuectl enqueue -`")
def bench_batch_enqueue(ctx):
    total = ctx.scale(10_000, 2_000)
    lines = "".join(json.dumps({"command": f"echo {i}", "priority": i % 10}) + "\n"
                    for i in range(total)).encode()
    samples, cpu, floors = [], [], []
    floor_files = ctx.scale(500, 100)
    for _ in range(ctx.scale(3, 2)):
        home = ctx.new_dir("batch-home")
        ctx.run(ctx.q(home, "init"))     # the layout and index exist before the timed call
        before = publish_floor(ctx.new_dir("floor"), floor_files)
        elapsed, out, _ = ctx.run(ctx.q(home, "enqueue", "-"), stdin=lines)
        if len(out.split()) != total:
            raise CommandFailed(f"batch enqueue printed {len(out.split())} ids, not {total}")
        samples.append(elapsed / total)
        cpu.append(ctx.last_cpu_s / total)
        # The floor brackets the batch (before and after), so background disk load that
        # varies during the run hits both alike.
        floors.append((before + publish_floor(ctx.new_dir("floor"), floor_files)) / 2)
    per_job = ctx.timing("batch_s_per_job", f"enqueue - with {count(total)} jobs, per job",
                         samples, unit="us")
    ctx.timing("batch_cpu_s_per_job", "  of which CPU (user + system), per job", cpu,
               unit="us")
    floor = ctx.timing("floor_s_per_file", "floor: tmp + fsync + link + fsync dir, per file",
                       floors, unit="us")
    ctx.value("jobs_per_s", "jobs/s (median run)", 1 / per_job, "jobs/s", digits=0)
    ctx.value("batch_s", f"wall time for {count(total)} jobs (median run)", per_job * total,
              "s", digits=2)
    ctx.ratio("batch_vs_floor", "per job / raw durable publish (about 1: fsync-bound)",
              per_job, floor)


def publish_floor(directory, files):
    """Seconds per file for what a durable publish cannot avoid, in this process: write a
    small file, fsync it, link it into place, unlink the temporary name, fsync the directory
    (DESIGN.md's enqueue)."""
    tmp, dest = os.path.join(directory, "tmp"), os.path.join(directory, "pending")
    os.mkdir(tmp)
    os.mkdir(dest)
    data = json.dumps({"command": "true", "id": "x" * 32, "priority": 0}, indent=2).encode()
    start = time.perf_counter()
    for i in range(files):
        path = os.path.join(tmp, str(i))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(path, os.path.join(dest, f"{i}.json"))
        os.unlink(path)
        dir_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return (time.perf_counter() - start) / files
