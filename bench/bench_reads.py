"""Read-path and index benchmarks on big spools: `status` and `list` at 100,000 jobs (and
10,000, to show they do not grow with the number of jobs), and a full `reindex`."""

import statistics
import time

from fixtures import RACY_SECONDS, count_jobs, drop_job, finish_job, wait_quiet
from harness import CommandFailed, benchmark, count, summarize

READS = {    # key -> (label, queuectl arguments)
    "status": ("status", ("status",)),
    "list": ("list --limit 50", ("list", "--limit", "50")),
    "list_pending": ("list --state pending --limit 50",
                     ("list", "--state", "pending", "--limit", "50")),
}
READ_TARGET_S = 0.150
GROWTH_LIMIT = 1.5     # 10x the jobs may cost at most this much more: "does not grow"


def sized(label, n):
    return f"{label:<42} {count(n):>7} jobs"


@benchmark("status_list_100k", "`status` and `list --limit 50` on a home with 100,000 jobs "
                               "(and 10,000, to show they do not grow)")
def bench_status_list(ctx):
    big = ctx.scale(100_000, 2_000)
    sizes = (big // 10, big)
    homes = {n: ctx.home_with_jobs(n) for n in sizes}
    medians = steady_reads(ctx, homes, ctx.scale(7, 3))
    for n in sizes:
        first_look(ctx, homes[n], n, ctx.scale(3, 2))
    for key, (label, _) in READS.items():
        value = medians[key, big]
        ctx.target(f"{label} at {count(big)} jobs under {READ_TARGET_S * 1000:.0f} ms",
                   value < READ_TARGET_S, f"{value * 1000:.1f} ms")
    for key, (label, _) in READS.items():
        ctx.ratio(f"{key}_growth", f"{label}: {count(big)} / {count(sizes[0])} jobs",
                  medians[key, big], medians[key, sizes[0]], limit=GROWTH_LIMIT,
                  what=f"{label} does not grow with the number of jobs")


def steady_reads(ctx, homes, runs):
    """Median seconds per (read command, size) once each spool has been quiet for longer
    than the racy window, all commands on all homes interleaved. The first look after the
    quiet period may still rescan (the look before it was racy) and records a trusted look,
    so it is run untimed."""
    for home in homes.values():
        wait_quiet(home)
        ctx.run(ctx.q(home, "status"))
    commands = {(key, n): ctx.q(home, *args)
                for n, home in homes.items() for key, (_, args) in READS.items()}
    times = ctx.time_runs(commands, runs)
    return {(key, n): ctx.timing(f"{key}_{n}_ms", sized(READS[key][0], n), times[key, n])
            for key, n in sorted(commands, key=lambda c: (c[1], list(READS).index(c[0])))}


def first_look(ctx, home, n, runs):
    """`status` right after the spool changed, so the changed directories are rescanned:
    after a job was dropped into pending/, again within the racy window of that change
    (rescanned again by design), and after changes to pending/ and completed/ both (a busy
    queue: jobs arriving while workers finish others)."""
    first, again, busy = [], [], []
    for i in range(runs):
        drop_job(home, f"bench-drop-{n}-{i}-{time.time_ns()}")
        first.append(ctx.run(ctx.q(home, "status"))[0])
        again.append(ctx.run(ctx.q(home, "status"))[0])
        drop_job(home, f"bench-busy-{n}-{i}-{time.time_ns()}")
        finish_job(home, i)
        busy.append(ctx.run(ctx.q(home, "status"))[0])
    ctx.timing(f"status_first_look_{n}_ms", sized("status, first look after a drop-in", n),
               first)
    ctx.timing(f"status_racy_window_{n}_ms",
               sized(f"status, again <{RACY_SECONDS} s after that", n), again)
    ctx.timing(f"status_busy_{n}_ms", sized("status after pending/+completed/ changed", n),
               busy)


@benchmark("reindex_100k", "`queuectl reindex` of 100,000 jobs")
def bench_reindex(ctx):
    home = ctx.home_with_jobs(ctx.scale(100_000, 2_000))
    total = count_jobs(home)      # other benchmarks may have dropped a few more in
    samples = []
    for _ in range(ctx.scale(3, 3)):
        elapsed, out, _ = ctx.run(ctx.q(home, "reindex"))
        if f"reindexed {total} jobs" not in out.decode():
            raise CommandFailed(f"unexpected reindex output: {out.decode().strip()}")
        samples.append(elapsed)
    seconds = statistics.median(samples)
    ctx.value("reindex_s", f"reindex of {count(total)} jobs (median of {len(samples)})",
              seconds, "s", digits=2)
    ctx.record("reindex_samples", "reindex wall times", summarize(samples), "s")
    ctx.value("reindex_jobs_per_s", "jobs indexed per second", total / seconds, "jobs/s",
              digits=0)
    ctx.note("page cache warm (the files were just written); a cold cache adds disk reads")
