"""The command line: parses arguments, makes one library call, renders, exits. Errors from
the library (QueueError) become "Error: ..." on stderr and their exit code in one place
(`QueuectlGroup.invoke`), and so do invalid option values (click's BadParameter): exit 2 is
only for usage errors (unknown command or option, missing argument); Ctrl-C exits 130. Heavy modules (watchdog, psutil)
are imported only by the commands that need them, so `enqueue` stays fast."""

import sys

import click

from .errors import QueueError
from .home import Home
from .logs import log

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class QueuectlGroup(click.Group):
    """The top-level group. Only init and enqueue are defined here; the other commands are
    in commands.py, imported the first time a command line needs one of them or the list
    (help, completion), so that `queuectl enqueue` starts without building them."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and _load_commands():
            command = super().get_command(ctx, name)
        return command

    def list_commands(self, ctx):
        _load_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.BadParameter as exc:
            if isinstance(exc, click.MissingParameter):
                raise            # a usage error: exit 2 with the usage line
            # An invalid value is an error in the input like any other: exit 1, one form.
            click.echo(f"Error: {exc.format_message()}", err=True)
            ctx.exit(EXIT_ERROR)
        except click.NoSuchOption as exc:
            if not _is_number(exc.option_name):
                raise
            # `--watch -1`: click takes a negative number after an option whose value is
            # optional for an option name. It is a bad value, not a usage error.
            click.echo(f"Error: Invalid value {exc.option_name!r}: a negative number is not "
                       "allowed here", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)   # Ctrl-C: 128 + SIGINT, without click's "Aborted!"
        except QueueError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"Error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(EXIT_ERROR)
        except Exception as exc:
            home = ctx.find_object(Home)
            if home is None or not home.index.is_db_error(exc):
                raise
            click.echo(f"Error: the index {home.index.path} is unusable ({exc}); the spool "
                       "is intact: run 'queuectl reindex' to rebuild it", err=True)
            ctx.exit(EXIT_ERROR)


def _load_commands():
    """Register the commands of commands.py on main; True the first time."""
    if "queuectl.commands" in sys.modules:
        return False
    from . import commands  # noqa: F401 (registers them)
    return True


def _is_number(text):
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


_LOG_SETUP = []


def _drain_hooks():
    """A command that finished jobs (cancel, recover) waits for their hooks before exit."""
    hooks = sys.modules.get("queuectl.hooks")
    if hooks is not None:
        hooks.drain()


def _quiet_logging():
    if not log.materialised:
        return
    import logging
    logger = logging.getLogger("queuectl")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def _null_handler():
    import logging
    logging.getLogger("queuectl").addHandler(logging.NullHandler())


def _home(ctx, write=False, lazy_log=False):
    """The Home of this call, with its log set up. Reading commands never create anything:
    without a queue they fail with NoQueue. Writing commands (write=True) create the whole
    layout first. lazy_log (enqueue): set up the log, and import logging, only when a line
    is logged (logs.py)."""
    home = ctx.find_object(Home)
    if write:
        if not home.exists():
            home.create()
    else:
        home.require()
    if _LOG_SETUP and _LOG_SETUP[-1] is home:
        _LOG_SETUP.pop()
        if lazy_log:
            def setup():
                home.configure_logging("cli", rotate=False)
            log.defer_setup(setup, "DEBUG")     # a warning while reading settings sets up
            try:
                home.make_data_dir("logs")      # as the setup would (a new home's settings
            except OSError:                     # file is written where data/ exists)
                pass
            level = home.settings.log_level
            if log.pending:
                log.defer_setup(setup, level)
        else:
            home.configure_logging("cli", rotate=False)
    return home


def _echo_json(value):
    from . import render     # not at import: enqueue prints no table
    click.echo(render.to_json(value))


@click.group(cls=QueuectlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home_dir", type=click.Path(file_okay=False), envvar="QUEUECTL_HOME",
              help="Queue home holding spool/ and data/ (default: $QUEUECTL_HOME, else the "
                   "current directory).")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False),
              envvar="QUEUECTL_SPOOL", help="Put the spool elsewhere (default: HOME/spool).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), envvar="QUEUECTL_DATA",
              help="Put the index and logs elsewhere (default: HOME/data).")
@click.version_option(package_name="queuectl")
@click.pass_context
def main(ctx, home_dir, spool_dir, data_dir):
    """queuectl: a background job queue that keeps jobs as files.

    Jobs are JSON files in a spool whose directories are their states
    (pending, processing, failed, completed, dead, rejected). Workers run
    them with retries and a dead letter queue.

    \b
    Example:
      queuectl enqueue '{"command": "echo hello"}'
      queuectl worker start --count 2
      queuectl status
    """
    ctx.obj = Home(home_dir, spool_dir, data_dir)
    ctx.call_on_close(ctx.obj.close)
    ctx.call_on_close(_drain_hooks)
    log.defer_setup(_null_handler, "DEBUG")
    if ctx.invoked_subcommand not in (None, "worker"):
        ctx.call_on_close(_quiet_logging)
        _LOG_SETUP.append(ctx.obj)


# ---- init -----------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the paths as a JSON object.")
@click.pass_context
def init(ctx, as_json):
    """Create a queue here (or at --home): the spool with every state
    directory, data/ and the index. Safe to run again. enqueue, config set
    and worker start create the queue too; reading commands never do.

    \b
    Example:
      queuectl --home /srv/queue init
    """
    home = ctx.find_object(Home)
    existed = home.exists()
    paths = home.create()
    _home(ctx, write=True)
    if as_json:
        _echo_json(dict(paths, created=not existed))
    else:
        from . import render
        click.echo(render.init_text(paths, existed))


# ---- enqueue --------------------------------------------------------------------------------

@main.command()
@click.argument("job_json", required=False, metavar="[JSON | -]")
@click.option("--file", "script", type=click.Path(dir_okay=False),
              help="Run this script; its content is frozen into the job.")
@click.option("--id", "job_id", help="Job id (default: generated, sortable by time).")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--run-at", help="Not before this ISO-8601 time (UTC unless it has an offset).")
@click.option("--delay", help="Not before this long from now: 30s, 5m, 2h, 1d.")
@click.option("--max-retries", type=click.IntRange(min=0),
              help="Retries before the DLQ (default: config max_retries).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Kill the job after this many seconds.")
@click.option("--after", "after", multiple=True, metavar="ID[,ID...]",
              help="Run only once these jobs have completed (a failed one sends this job "
                   "to dead/).")
@click.option("--after-any", "after_any", is_flag=True, default=None,
              help="With --after: run once they have finished, whatever the outcome.")
@click.option("--queue", "queue", metavar="NAME",
              help="The queue this job is in (default: 'default'); see worker start --queue.")
@click.option("--unique-key", "unique_key", metavar="KEY",
              help="Refuse the job while another pending, failed or processing job has "
                   "this key.")
@click.option("--if-exists", "if_exists", type=click.Choice(["error", "skip"]),
              default="error", show_default=True,
              help="With --unique-key: 'skip' prints the existing job's id and exits 0.")
@click.option("--retry-on", "retry_on", metavar="CODES",
              help="Exit codes that always retry for this job: 1,75,100-110.")
@click.option("--no-retry-on", "no_retry_on", metavar="CODES",
              help="Exit codes that send this job to dead/ at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the ids as a JSON array.")
@click.pass_context
def enqueue(ctx, job_json, script, as_json, if_exists, **overrides):
    """Add jobs to the queue and print their ids.

    JSON is one job object; '-' reads one object or JSON Lines (one job per
    line) from stdin. Only "command" is required. Options fill or override
    the JSON's fields. Nothing is written unless every job is valid.

    \b
    Examples:
      queuectl enqueue '{"command": "sleep 2; echo done"}'
      queuectl enqueue '{"id": "nightly", "command": "./backup.sh", "priority": 5}'
      queuectl enqueue --file job.py --delay 10m
      cat jobs.jsonl | queuectl enqueue -
      queuectl enqueue --after build-1 --queue gpu '{"command": "./train"}'
      queuectl enqueue --unique-key sync-db --if-exists skip '{"command": "./sync"}'
    """
    from . import submit
    from .config import parse_codes
    home = _home(ctx, write=True, lazy_log=True)
    after = [i.strip() for item in overrides.pop("after") for i in item.split(",") if i.strip()]
    overrides["after"] = after or None
    for name in ("retry_on", "no_retry_on"):
        if overrides[name] is not None:
            overrides[name] = sorted(parse_codes(overrides[name], "--" + name.replace("_", "-")))
    if script and job_json:
        raise click.UsageError("give either JSON or --file, not both")
    if script:
        docs = [submit.script_job(script)]
    elif job_json == "-":
        docs = submit.parse_stdin(sys.stdin.buffer.read())
    elif job_json is not None:
        docs = submit.parse_submission(job_json.encode("utf-8", "surrogateescape"))
    else:
        raise click.UsageError("give a job as JSON, '-' for stdin, or --file SCRIPT")
    ids = submit.enqueue(home, docs, overrides, if_exists=if_exists)
    if as_json:
        _echo_json(ids)
    else:
        click.echo("\n".join(ids))


if __name__ == "__main__":   # pragma: no cover
    import os
    main(prog_name=os.path.basename(sys.argv[0]))
