"""The commands other than init and enqueue, registered on cli.main when a command line
names one of them (or asks for the list): `queuectl enqueue`, which shell scripts call in
loops, does not pay for building them (cli.QueuectlGroup loads this module on demand).
Like cli.py, each command parses, makes one library call and renders."""

import os
import sys

import click

from . import render
from .cli import EXIT_ERROR, _echo_json, _home, main

# ---- reading --------------------------------------------------------------------------------

STATE_CHOICE = click.Choice(["pending", "processing", "failed", "completed", "dead",
                             "rejected"])


@main.command("list")
@click.option("--state", type=STATE_CHOICE, help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many jobs.")
@click.option("--queue", metavar="NAME", help="Only jobs of this queue.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_cmd(ctx, state, limit, queue, as_json):
    """List jobs: pending first in the order workers will take them
    (priority, then run time), then the others newest first.

    \b
    Examples:
      queuectl list --state pending --limit 20
      queuectl list --state rejected      # bad drop-ins and why
      queuectl list --json | jq '.[].id'
    """
    from .queries import list_jobs
    home = _home(ctx)
    if queue is not None:
        from .queues import list_in_queue
        rows = list_in_queue(home, queue, state, limit)
    else:
        rows = list_jobs(home, state, limit)
    if as_json:
        from .history import attach
        _echo_json(attach(home, rows))
    elif rows:
        click.echo(f"home: {home.home}\n" + render.job_table(rows))
    else:
        click.echo(f"no {state + ' ' if state else ''}jobs"
                   f"{f' in queue {queue!r}' if queue else ''} in {home.home}")


def _workers(home):
    """Worker rows for status (imports psutil, so only for commands that show workers)."""
    from .metrics import worker_rows
    return worker_rows(home)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--ages", is_flag=True, help="Ready jobs per age bucket (like Postfix's qshape).")
@click.option("--queue", metavar="NAME", help="Only this queue's jobs and the workers serving it.")
@click.pass_context
def status(ctx, as_json, ages, queue):
    """Show counts per state, the ready backlog and the workers.

    \b
    Example:
      queuectl status
      queuectl status --ages
      queuectl status --queue gpu
      queuectl --home /srv/queue status --json
    """
    from .queries import status as status_report
    home = _home(ctx)
    if ages:
        from .metrics import ages as age_buckets
        rows = age_buckets(home)
        click.echo(render.to_json(rows) if as_json else render.ages_text(rows, home.home))
        return
    report = status_report(home, _workers(home))
    if queue is not None:
        from .queues import narrow_status
        report = narrow_status(home, report, queue)
    click.echo(render.to_json(report) if as_json else render.status_text(report))


@main.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def show(ctx, job_id, as_json):
    """Show one job: its fields, state, file path and last error.

    \b
    Example:
      queuectl show nightly
    """
    from .queries import resolve_ids, show as show_job
    home = _home(ctx)
    info = show_job(home, *resolve_ids(home, [job_id]))
    if as_json:
        click.echo(render.to_json(info))
        return
    click.echo(render.show_text(info))
    if (info.get("job") or {}).get("history"):
        click.echo("\n" + render.history_text(info["job"]))


@main.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def why(ctx, job_id, as_json):
    """Explain in one paragraph where a job is and what it waits for: its
    place in line, the workers, its schedule, its dependencies, its last
    error and retry, the pause flag, or why it was rejected.

    \b
    Example:
      queuectl why nightly
    """
    from .why import explain
    info = explain(_home(ctx), job_id)
    click.echo(render.to_json(info) if as_json else info["text"])


# ---- dead letter queue ------------------------------------------------------------------------

@main.group()
def dlq():
    """The dead letter queue: jobs whose retries ran out.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq retry job-42
      queuectl dlq retry --all
    """


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def dlq_list(ctx, as_json):
    """List dead jobs, newest first, with their last error.

    \b
    Example:
      queuectl dlq list --json | jq -r '.[].id'
    """
    from .queries import list_jobs
    home = _home(ctx)
    rows = list_jobs(home, "dead")
    if as_json:
        _echo_json(rows)
    else:
        click.echo(f"home: {home.home}\n" + render.job_table(rows) if rows else
                   f"the dead letter queue of {home.home} is empty")


def _report(outcomes, as_json):
    if as_json:
        _echo_json([o.as_dict() for o in outcomes])
    elif outcomes:
        click.echo(render.outcomes_text(outcomes))
    if not all(o.ok for o in outcomes):
        sys.exit(EXIT_ERROR)


@dlq.command("retry")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead job.")
@click.option("--json", "as_json", is_flag=True, help="Print per-id results as JSON.")
@click.pass_context
def dlq_retry(ctx, ids, retry_all, as_json):
    """Move dead jobs back to pending with attempts reset. Reports per id;
    exits 1 if any id was not in the DLQ.

    \b
    Examples:
      queuectl dlq retry job-42 job-43
      queuectl dlq retry --all
    """
    from .control import dlq_retry as retry
    from .queries import resolve_ids
    if bool(ids) == retry_all:
        raise click.UsageError("give job ids or --all (not both)")
    home = _home(ctx)
    outcomes = retry(home, None if retry_all else resolve_ids(home, ids))
    if retry_all and not outcomes and not as_json:
        click.echo("the dead letter queue is empty")
    _report(outcomes, as_json)


# ---- config and maintenance ------------------------------------------------------------------

@main.group()
def config():
    """Show and change settings (stored in data/config.json).

    \b
    Examples:
      queuectl config show
      queuectl config set max_retries 5
      queuectl config unset max_retries
    """


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def config_show(ctx, as_json):
    """Show every key, its value, and whether it is the default.

    \b
    Example:
      queuectl config show --json
    """
    rows = _home(ctx).settings.rows()
    if as_json:
        _echo_json({k: {"value": v, "default": d} for k, v, d, _ in rows})
    else:
        click.echo(render.config_text(rows))


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx, key):
    """Print the value of KEY (`none` when unset and without default).

    \b
    Example:
      queuectl config get max_retries
    """
    from .config import get_key
    get_key(key)
    value = getattr(_home(ctx).settings, key)
    click.echo("none" if value is None else value)


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx, key, value):
    """Set KEY to VALUE (checked for type and range; `config show` lists
    the keys).

    \b
    Examples:
      queuectl config set max_retries 5
      queuectl config set job_timeout 600
      queuectl config set job_timeout none
    """
    from .settings_store import set_value
    shown = set_value(_home(ctx, write=True), key, value)
    click.echo(f"{key} = {'none' if shown is None else shown}")


@config.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx, key):
    """Restore KEY to its default.

    \b
    Example:
      queuectl config unset backoff_base
    """
    from .settings_store import unset_value
    shown = unset_value(_home(ctx), key)
    click.echo(f"{key} = {'none' if shown is None else shown} (default)")


@main.command()
@click.pass_context
def reindex(ctx):
    """Rebuild the index (data/queue.db) from the spool. Safe at any time,
    also while workers run; the spool is never changed, except that bad
    drop-ins are moved to rejected/.

    \b
    Example:
      rm -rf data && queuectl reindex
    """
    from .ingest import reindex as rebuild
    home = _home(ctx)
    counts = rebuild(home)
    if home.index.moved_aside:
        click.echo(f"the index was unusable ({home.index.aside_reason}); set aside: "
                   f"{', '.join(os.path.basename(p) for p in home.index.moved_aside)}")
    total = sum(counts.values())
    detail = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
    click.echo(f"reindexed {total} jobs from {home.spool_dir}" + (f" ({detail})" if detail else ""))


# ---- metrics and queue control -------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (keys in "
              "docs/operations.md).")
@click.option("--prometheus", is_flag=True, help="Prometheus text exposition format.")
@click.option("--watch", "watch_seconds", type=click.FloatRange(min=0.2), is_flag=False,
              flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Refresh in place every SECONDS (default 2) until Ctrl-C.")
@click.pass_context
def metrics(ctx, as_json, prometheus, watch_seconds):
    """Show what the queue is doing: backlog, throughput (1/5/15 min), queue
    wait and run time percentiles, outcome totals, DLQ size and a table of
    workers with heartbeat, CPU and memory.

    \b
    Examples:
      queuectl metrics
      queuectl metrics --watch 1
      queuectl metrics --prometheus > /var/lib/node_exporter/queuectl.prom
    """
    from . import metrics as metricsmod
    if as_json and prometheus:
        raise click.UsageError("choose one of --json and --prometheus")
    home = _home(ctx)

    def render_once():
        report = metricsmod.report(home, metricsmod.worker_rows(home))
        if as_json:
            return render.to_json(report)
        return render.prometheus_text(report).rstrip("\n") if prometheus else \
            render.metrics_text(report)
    if watch_seconds is None:
        click.echo(render_once())
        return
    import time
    try:
        while True:
            text = render_once()
            click.echo("\x1b[H\x1b[2J" + text + f"\n\n(every {watch_seconds:g}s; Ctrl-C to stop)")
            time.sleep(watch_seconds)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--running", is_flag=True,
              help="Also cancel running jobs: kill their process group first.")
@click.option("--json", "as_json", is_flag=True, help="Print per-id results as JSON.")
@click.pass_context
def cancel(ctx, ids, running, as_json):
    """Cancel jobs: pending, scheduled or failed jobs move to the dead letter
    queue with last_error "cancelled" (queuectl dlq retry brings them back).
    Running jobs are refused unless --running. Reports per id; exits 1 if
    any id failed.

    \b
    Example:
      queuectl cancel job-1 job-2
      queuectl cancel --running long-job
    """
    from .control import cancel as cancel_jobs
    from .queries import resolve_ids
    home = _home(ctx)
    _report(cancel_jobs(home, resolve_ids(home, ids), running), as_json)


@main.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print per-id results as JSON.")
@click.pass_context
def retry(ctx, ids, as_json):
    """Run failed jobs now instead of waiting for their backoff (attempts are
    kept). For dead jobs use `queuectl dlq retry`.

    \b
    Example:
      queuectl retry job-7
    """
    from .control import retry_now
    from .queries import resolve_ids
    home = _home(ctx)
    _report(retry_now(home, resolve_ids(home, ids)), as_json)


@main.command()
@click.pass_context
def pause(ctx):
    """Stop workers from claiming new jobs (running jobs go on). Creates the
    plain file spool/PAUSED, so `touch spool/PAUSED` does the same.

    \b
    Example:
      queuectl pause && queuectl status
    """
    home = _home(ctx, write=True)
    home.spool.set_paused(True)
    click.echo(f"paused: workers stop claiming within one poll interval "
               f"({home.spool_dir}/PAUSED exists)")


@main.command()
@click.pass_context
def resume(ctx):
    """Let workers claim jobs again (removes spool/PAUSED).

    \b
    Example:
      queuectl resume
    """
    home = _home(ctx)
    was = home.spool.is_paused()
    home.spool.set_paused(False)
    click.echo("resumed" if was else "the queue was not paused")


@main.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many "
              "seconds (exit 124).")
@click.option("--json", "as_json", is_flag=True, help="Print {id: state} as JSON.")
@click.pass_context
def wait(ctx, ids, timeout, as_json):
    """Block until the jobs are completed or dead. Exit 0 if all completed,
    1 if any is dead (or an id is unknown), 124 on timeout.

    \b
    Example:
      id=$(queuectl enqueue '{"command": "make build"}') && queuectl wait "$id"
    """
    from .control import wait as wait_jobs
    from .queries import resolve_ids
    home = _home(ctx)
    states = wait_jobs(home, resolve_ids(home, ids), timeout)
    if as_json:
        _echo_json(states)
    else:
        click.echo("\n".join(f"{i}: {s}" for i, s in states.items()))
    if any(s != "completed" for s in states.values()):
        sys.exit(EXIT_ERROR)


@main.command()
@click.option("--state", type=click.Choice(["completed", "dead", "rejected"]), required=True,
              help="Which directory to clean.")
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Only files older than this: 30s, 10m, 12h, 7d.")
@click.option("--json", "as_json", is_flag=True, help="Print the deleted names as JSON.")
@click.pass_context
def purge(ctx, state, older_than, as_json):
    """Delete old job files (and their output logs) from completed/, dead/ or
    rejected/. Workers also purge completed jobs past config
    completed_retention on their own.

    \b
    Example:
      queuectl purge --state completed --older-than 7d
    """
    from .control import purge as purge_jobs
    from .job import parse_duration
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--older-than'")
    names = purge_jobs(_home(ctx), state, seconds)
    if as_json:
        _echo_json(names)
    else:
        click.echo(f"purged {len(names)} {state} job{'s' if len(names) != 1 else ''} "
                   f"older than {older_than}")


@main.command()
@click.option("--repair", is_flag=True, help="Fix what is safe to fix, and say what was done.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def fsck(ctx, repair, as_json):
    """Check the spool: unowned files in processing/, ids in two states,
    stale tmp/ files, files that are not jobs, stale cancel markers, index
    rows that disagree with the spool. Exits 1 if anything is wrong (with --repair: if anything
    could not be fixed). Safe while workers run.

    \b
    Example:
      queuectl fsck && echo clean
      queuectl fsck --repair
    """
    from .fsck import fsck as check
    problems = check(_home(ctx), repair)
    if as_json:
        _echo_json([p.as_dict() for p in problems])
    elif problems:
        click.echo(render.table(["PROBLEM", "WHERE", "DETAIL", "REPAIR"],
                                [[p.kind, p.where, p.detail, p.fixed or ("-" if not repair
                                                                         else "not fixed")]
                                 for p in problems]))
    else:
        click.echo(f"spool {_home(ctx).spool_dir} is consistent")
    if any(not p.fixed for p in problems):
        sys.exit(EXIT_ERROR)


# ---- workers --------------------------------------------------------------------------------

@main.group()
def worker():
    """Start and stop the worker pool.

    \b
    Examples:
      queuectl worker start --count 4
      queuectl worker start --foreground     # under systemd or in a container
      queuectl worker stop
    """


@worker.command("start")
@click.option("--count", "-n", type=click.IntRange(1, 256), default=1, show_default=True,
              help="How many workers to run.")
@click.option("--foreground", is_flag=True,
              help="Stay attached; stop gracefully on Ctrl-C or SIGTERM.")
@click.option("--queue", "queue", metavar="NAME[,NAME...]",
              help="Take only jobs of these queues (default: every queue).")
@click.option("--quiet", is_flag=True, hidden=True)
@click.pass_context
def worker_start(ctx, count, foreground, queue, quiet):
    """Start a supervisor that keeps COUNT workers running (restarting any
    that die). Returns once they run, unless --foreground. Starting again
    adds workers.

    \b
    Examples:
      queuectl worker start --count 4
      queuectl worker start --foreground --count 2    # for systemd
      queuectl worker start --queue gpu --count 1     # a pool of its own for 'gpu'
    """
    from . import pool
    home = _home(ctx, write=True)
    queues = _queue_names(queue)
    if foreground:
        from .security import check_spool
        home.spool.ensure_layout()
        check_spool(home)          # refuse before announcing anything
        if not quiet:
            click.echo(render.foreground_text(count, home.home, home.spool.is_paused()))
        from .supervisor import run_foreground
        sys.exit(run_foreground(home, count, queues))
    started = pool.start(home, count, queues=queues)
    click.echo(render.started_text(started, count, home.home, home.spool.is_paused(), queues))


def _queue_names(text):
    """'a,b' -> ['a', 'b'] (checked like a job's queue field); None for every queue."""
    if text is None:
        return None
    from .errors import InvalidJob
    from .job import QUEUE_RE
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not QUEUE_RE.match(n)]
    if not names or bad:
        raise InvalidJob(f"--queue must be queue names separated by commas, got {text!r}")
    return names


@worker.command("stop")
@click.option("--timeout", type=click.FloatRange(min=0),
              help="Seconds to let running jobs finish before they are killed and "
                   "requeued (default: config shutdown_timeout).")
@click.option("--host", metavar="HOST",
              help="Stop the pool of another host sharing this spool (it polls for a "
                   "stop request in spool/workers/); default: this host's pool.")
@click.option("--queue", metavar="NAME",
              help="Stop only the pools started with --queue NAME.")
@click.pass_context
def worker_stop(ctx, timeout, host, queue):
    """Stop every worker of this home gracefully: they stop claiming, running
    jobs may finish; past the timeout a job is killed and goes back to
    pending without counting an attempt. Waits and reports.

    \b
    Examples:
      queuectl worker stop
      queuectl worker stop --timeout 5
      queuectl worker stop --host web2     # another host on a shared spool
      queuectl worker stop --queue gpu
    """
    from . import pool
    home = _home(ctx)
    limit = home.settings.shutdown_timeout if timeout is None else timeout
    lines = pool.stop_host(home, host, limit) if host else pool.stop(home, limit, queue)
    for line in lines:
        click.echo(line)


@worker.command("run", hidden=True)
@click.pass_context
def worker_run(ctx):
    """Run one worker in this process (no supervisor)."""
    from .security import check_spool
    from .worker import run_worker
    home = _home(ctx, write=True)
    home.spool.ensure_layout()
    check_spool(home)
    sys.exit(run_worker(home))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; a non-loopback address needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--read-only", is_flag=True, help="Show the queue but offer no actions.")
@click.option("--token", envvar="QUEUECTL_DASHBOARD_TOKEN",
              help="Access token (default: $QUEUECTL_DASHBOARD_TOKEN, else a random one).")
@click.pass_context
def dashboard(ctx, host, port, read_only, token):
    """Serve a web dashboard of this queue: counts, workers, charts, job
    lists and pages with live output, and (unless --read-only) retry,
    cancel and pause. Prints the URL to open; it carries the access token.
    Needs the web extra: pip install 'queuectl[web]'.

    \b
    Examples:
      queuectl dashboard
      queuectl dashboard --port 9000 --read-only
      queuectl dashboard --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from .dashboard import load_server
    server = load_server()        # the web libraries load here, never on enqueue's path
    server.serve(_home(ctx), host, port, token, read_only, announce=click.echo)


@main.command()
@click.argument("job_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job finishes.")
@click.pass_context
def logs(ctx, job_id, follow):
    """Print a job's output (stdout and stderr of every attempt).

    \b
    Example:
      queuectl logs nightly -f
    """
    from .output import stream_output
    from .queries import resolve_ids
    home = _home(ctx)
    for chunk in stream_output(home, *resolve_ids(home, [job_id]), follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_context
def recover(ctx, as_json):
    """Recover jobs left in processing/ by workers that died: a job whose
    lock nobody holds counts the attempt and goes to failed/ (or dead/); a
    leftover copy of a job that already moved on is deleted. Running jobs
    are never touched.

    \b
    Example:
      queuectl recover
    """
    from .recovery import recover_all
    done = recover_all(_home(ctx))
    if as_json:
        _echo_json(done)
    elif done:
        click.echo("\n".join(f"{d['id']}: {d['result']}" for d in done))
    else:
        click.echo("nothing to recover")
    if any(d["state"] == "error" for d in done):
        sys.exit(1)
