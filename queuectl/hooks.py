"""Hooks: config `on_finish` (run once a job is completed or dead) and `on_dead` (only when
it lands in dead/), like pueue's callback and task-spooler's TS_ONFINISH.

A hook is `/bin/sh -c COMMAND` in its own process group, started by the process that made
the job's final move (so once per finish), with QUEUECTL_JOB_ID, QUEUECTL_STATE,
QUEUECTL_EXIT_CODE (empty when there is none), QUEUECTL_LAST_ERROR and QUEUECTL_HOME in its
environment and its output appended to data/logs/hooks.log. It never affects the job (which
has already moved): a hook that cannot start or exits non-zero is logged; one still running
after `hook_timeout` seconds has its group SIGKILLed and is logged. Workers check their hooks
at every heartbeat and wait for them when they stop; a short-lived process (cancel, recover)
waits for its hooks before it exits (`drain`). At most once: a crash between the job's move
and the hook's start skips the hook (nothing records that it is owed)."""

import logging
import os
import signal
import time

log = logging.getLogger("queuectl")
_RUNNING = []        # [(Popen, deadline, hook name, job id)]


def job_finished(home, doc, state):
    """Start the configured hooks for a job that just reached `state` (completed or dead)."""
    try:
        settings = home.settings
        commands = [("on_finish", settings.on_finish)]
        if state == "dead":
            commands.append(("on_dead", settings.on_dead))
        commands = [(name, command) for name, command in commands if command]
        if not commands:
            return
        exit_code = doc.get("exit_code")
        env = dict(os.environ, QUEUECTL_JOB_ID=doc["id"], QUEUECTL_STATE=state,
                   QUEUECTL_EXIT_CODE="" if exit_code is None else str(exit_code),
                   QUEUECTL_LAST_ERROR=doc.get("last_error") or "", QUEUECTL_HOME=home.home)
        for name, command in commands:
            _start(home, name, command, env, doc["id"], float(settings.hook_timeout))
        reap()
    except Exception as exc:      # a hook must never affect the job or the worker
        log.error("hooks for %s: %s", doc.get("id"), exc)


def _start(home, name, command, env, job_id, timeout):
    import subprocess
    try:
        home.make_data_dir("logs")
        with open(home.path("logs", "hooks.log"), "ab") as out:
            proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, cwd=home.home,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
    except OSError as exc:
        log.error("hook %s for %s could not start: %s", name, job_id, exc)
        return
    _RUNNING.append((proc, time.monotonic() + timeout, name, job_id))


def reap():
    """Collect finished hooks (logging failures) and kill those past their time limit."""
    now = time.monotonic()
    for entry in list(_RUNNING):
        proc, deadline, name, job_id = entry
        code = proc.poll()
        if code is None and now < deadline:
            continue
        if code is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            log.warning("hook %s for %s killed after its time limit", name, job_id)
        elif code != 0:
            log.warning("hook %s for %s failed (exit code %d); the job is unaffected",
                        name, job_id, code)
        _RUNNING.remove(entry)


def running():
    return len(_RUNNING)


def drain():
    """Wait for every running hook (each at most until its time limit)."""
    while _RUNNING:
        reap()
        if _RUNNING:
            time.sleep(0.02)
