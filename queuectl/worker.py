"""The worker: `run_once()` takes and runs at most one job; `loop()` is a thin loop around it
that sleeps until inotify, the next due time, a settle deadline or the poll timer says look.
How it finds work (scans, inotify, judging files) is worker_intake; how it rides out an
unreachable spool is worker_outage; both are mixed into the Worker class.

Invariants: a job is only run under its flock, claimed by rename into processing/; every
state change goes through lifecycle; signal handlers only set flags (and wake the loop
through the self-pipe). SIGTERM/SIGINT: stop claiming, let the running job finish within
shutdown_timeout, then kill its group and requeue it without counting an attempt. SIGUSR1:
the same, without waiting. Correct with no inotify events at all: the poll timer rescans.

On a spool shared by several hosts (spool_shared; see docs/multi-host.md): inotify only
reports this host's changes, so other hosts' jobs are found by the poll timer; heartbeats
also go to spool/workers/ for every host to see. While a job runs its claim lock is
re-asserted every LOCK_CHECK_SECONDS: a lock the filesystem dropped (client restart, dead
mount) kills the job at once and the job is not finished here (another host recovers it).
A spool that fails with ENOTCONN/EIO is retried with backoff, logged once per change, and
the worker exits (the supervisor restarts it) if it stays unreachable SPOOL_DOWN_EXIT_SECONDS."""

import logging
import os
import select
import signal
import time

from . import job as jobmod
from . import control, history, hooks, lifecycle, metrics, recovery, runner, watcher
from .filesystems import filesystem_type, is_local_filesystem
from .picker import Picker
from .setaside import SetAside
from .spool import LostClaim, NotAJobFile
from .worker_intake import TAKE_FROM, Intake
from .worker_outage import SpoolOutage

log = logging.getLogger("queuectl")
HEARTBEAT_SECONDS = metrics.HEARTBEAT_SECONDS
RECOVERY_SECONDS = 5
RETENTION_SECONDS = 60       # how often a worker purges completed jobs past retention
INDEX_WAIT_SECONDS = 2       # a worker waits no longer than this for a locked index
# Index updates are grouped: committed at most this often while jobs run back to back, and
# whenever the worker goes idle, stops, or a job runs longer than this.
INDEX_GROUP_SECONDS = 0.02
CANCEL_CHECK_AFTER = 0.05    # a job's first look for a cancel marker, after its start
LOCK_CHECK_SECONDS = 1.0     # how often a running job's claim lock is re-asserted
EXIT_SPOOL_DOWN = 75         # EX_TEMPFAIL: the supervisor restarts us later


class Worker(Intake, SpoolOutage):
    def __init__(self, home, supervisor=None, report_job=None, queues=None):
        self.home = home
        self.aside = SetAside(home.spool, queues)    # other queues' jobs, blocked jobs
        home.index.set_busy_timeout(INDEX_WAIT_SECONDS)
        home.group_index_updates()
        self.next_flush = 0.0
        self.environ = dict(os.environ)     # the jobs' environment, copied once
        # (state, id) -> (bytes, mtime_ns, job) of a file judged a job while in pending/ or
        # failed/: a claim that reads the very same bytes takes the job as judged, without
        # parsing and validating it a second time.
        self.judged = {}
        self.report_job = report_job     # tells the supervisor our job's process group
        self.clock = home.clock
        self.supervisor = supervisor
        self.pid = os.getpid()
        self.started_at = time.time()
        self.worker_id = f"{runner.HOSTNAME}-{self.pid}-{int(self.started_at)}"
        self.label = f"worker {runner.HOSTNAME}:{self.pid}"
        self.picker = Picker()
        self.wakeup = watcher.Wakeup()
        self.watch = None
        self.unsettled = {}        # (state, name) -> when to look again
        self.unjudged = {}         # (state, name) -> None: listed by a scan, not read yet
        self.skipped = {}          # (state, name) -> signature: unclaimable and unmovable
        self.paused = None         # spool/PAUSED seen (None: look again)
        self.beat_due = False      # our heartbeat changed since the last index commit
        self.recovery_failed = set()   # names in processing/ whose recovery raised
        self.stopping = False
        self.stop_now = False
        self.current = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self.next_scan = 0.0
        self.next_recovery = 0.0
        self.next_heartbeat = 0.0
        self._stats = (None, None)     # the last CPU and memory figures (quick beats reuse them)
        self.backlog_minute = None
        # Retention is checked the first time the worker is idle, then every minute: a
        # worker (re)started with a backlog runs jobs before it lstat()s completed/.
        self.next_retention = self.clock() + RETENTION_SECONDS
        self.retention_checked = False
        self.shared = False          # spool shared with other hosts (set by loop)
        self.down_since = None       # when the spool became unreachable, while it is
        self.down_delay = 0.0

    # ---- control --------------------------------------------------------------------------
    def request_stop(self, immediately=False):
        self.stopping = True
        self.stop_now = self.stop_now or immediately

    def _on_signal(self, signum, frame):
        self.request_stop(immediately=(signum == signal.SIGUSR1))

    def install_signals(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)

    def _wake_sources(self):
        """What wakes the worker: its self-pipe (signals, our own notes) and, while inotify
        works, the watch."""
        return [self.wakeup, self.watch] if self.watch is not None else [self.wakeup]

    def _housekeeping(self, now):
        self._events(now)
        if now >= self.next_scan:
            self.paused = None
            if not self.home.spool.fence_claims:     # a local filesystem: see keep_dir_fds
                self.home.spool.keep_dir_fds()
            self.home.reload_settings()
            if self.watch is not None and not self.watch.alive():
                log.warning("%s: inotify watcher stopped; polling from now on", self.label)
                self.watch = None
            if now >= self.next_recovery:
                self.recover(now)
                if self.shared:
                    metrics.prune_worker_records(self.home)
                self.next_recovery = now + RECOVERY_SECONDS
            started = time.thread_time()
            self.full_scan(now)
            # The rescan is only a safety net: on a huge backlog (60,000 files take ~0.1 s
            # to list and compare) space it out so it costs at most ~5% of a core. CPU time,
            # not wall time: on a shared spool the rescan is how other hosts' jobs are found,
            # and a slow network filesystem must not stretch it to minutes.
            spent = time.thread_time() - started
            self.next_scan = now + max(self.home.settings.worker_poll_interval, 20 * spent)
            if now >= self.next_retention:
                self.purge_expired()
                self.next_retention = now + RETENTION_SECONDS
        if self.unjudged:
            self.judge_listed(now)
        for key, deadline in list(self.unsettled.items()):
            if deadline <= now:
                self.consider(key[0], key[1], now)
        if now >= self.next_heartbeat:
            self.heartbeat()

    def purge_expired(self):
        self.retention_checked = True
        self._flush()
        retention = self.home.settings.completed_retention
        if retention:
            try:
                control.purge(self.home, "completed", retention)
            except Exception as exc:     # a full disk, a locked or corrupt index: next time
                log.error("purging completed jobs failed: %s", exc)

    def recover(self, now):
        """Recover orphans in processing/ (their worker died); see lifecycle.recover."""
        for name in self.home.spool.names("processing"):
            job_id = name[:-len(jobmod.JOB_SUFFIX)]
            if job_id == self.current:
                continue
            try:
                state = recovery.recover_one(self.home, job_id, now)
            except Exception as exc:     # one bad orphan must not stop the others or us
                if isinstance(exc, OSError) and self._unreachable(exc):
                    raise                  # the spool is unreachable: the loop backs off
                # Logged once per file (retried every RECOVERY_SECONDS, quietly).
                log.log(logging.DEBUG if name in self.recovery_failed else logging.ERROR,
                        "%s: recovery of %s failed: %s; skipped, will retry",
                        self.label, job_id, exc)
                self.recovery_failed.add(name)
                continue
            self.recovery_failed.discard(name)
            if state in TAKE_FROM:
                self.consider(state, name, now)

    # ---- one step ---------------------------------------------------------------------------
    def run_once(self):
        """Take the best ready job and run it to its next state. True if a job was taken
        (run, rejected or found a duplicate), False if there was nothing to do."""
        now = self.clock()
        self._housekeeping(now)
        if self.stopping or self.is_paused():
            return False
        while not self.stopping:
            candidate = self.picker.pop_ready(now)
            if candidate is None:
                return False
            try:
                held = lifecycle.claim(self.home, candidate.state, candidate.job_id)
            except NotAJobFile as exc:
                self._unclaimable(candidate.state, candidate.job_id, exc, now)
                continue
            if held is not None:
                try:
                    taken = self._take(held, now)
                except BaseException:
                    if held.fd >= 0:     # unlocked in processing/: recovery retries it
                        self.home.spool.release(held, unlink=False)
                    self.current = None
                    raise
                if taken is not None:
                    return taken

    def _take(self, held, now):
        verdict = self._judge_claimed(held, now)
        if verdict.action == "wait":
            # A writer may still be at work on it in place: put it back, look later.
            lifecycle.unclaim(self.home, held)
            self.unsettled[(held.origin, held.job_id + jobmod.JOB_SUFFIX)] = verdict.until
            return False
        if verdict.action != "take":
            lifecycle.reject_claimed(self.home, held, verdict.reason, now)
            return True
        doc = verdict.doc
        due = lifecycle._due(doc, now)
        if due > now:
            lifecycle.unclaim(self.home, held)     # the hint was stale: not due yet
            self.picker.add(held.origin, held.job_id, doc.get("priority", 0), due)
            return False
        elsewhere = self.home.spool.others(held.job_id)
        if "pending" in elsewhere:
            # Dropped after our copy was there (new jobs only arrive in pending/): ours,
            # with its history, keeps the id.
            lifecycle.reject_newcomer(self.home, held.job_id, held.origin if
                                      held.origin != "pending" else "processing", now)
            elsewhere.remove("pending")
        if elsewhere:
            lifecycle.reject_claimed(self.home, held, f"duplicate id: {held.job_id!r} is "
                                     f"already in {elsewhere[0]}/", now)
            return True
        if self.aside.check(held.origin, held.job_id, doc):
            lifecycle.unclaim(self.home, held)     # blocked, or another queue's: not ours
            return None
        if lifecycle.admit(self.home, held, doc, now) is not None:
            self._unblock(doc["id"], now)          # buried or rejected instead of run
            return True
        self._run(held, doc)
        return True

    def _run(self, held, doc):
        """Spawn the job, wait for it (indexing it as running if it runs longer than a
        group commit: nothing delays the start), and hand its result to lifecycle, which
        decides and records the move."""
        home = self.home
        attempt = doc.get("attempts", 0) + 1
        self.current = doc["id"]
        self.current_claim = held
        started = time.time()
        running = runner.RunningJob(
            doc["command"], doc.get("cwd") or home.home,
            runner.job_environment(doc["id"], attempt, home.home, self.environ, self.pid),
            held.fd,
            home.spool.output_path(doc["id"]),
            runner.header(doc["id"], attempt, self.label, jobmod.iso(started)))
        timeout = doc.get("timeout") or home.settings.job_timeout
        if self.report_job and running.pid:
            self.report_job(running.pid)
        lost = self._wait(running, timeout, held, doc)
        result = running.finish(self.label)
        if self.report_job and running.pid:
            self.report_job(0)
        self.current = None
        if lost is not None:
            # Another host may be recovering the job already: finishing it here could run
            # it twice or overwrite its newer state. Leave processing/ to recovery.
            home.spool.release(held, unlink=False)
            log.error("%s: lost the claim on %s (%s); killed the job and left it to "
                      "recovery", self.label, doc["id"], lost)
            self.next_recovery = 0.0
            return
        history.append(doc, history.from_run(doc, started, time.time(), self.label, result,
                                             running.output_end, running.cancelled))
        now = self.clock()
        try:
            state = lifecycle.finish_attempt(home, held, doc, result, now)
        except OSError as exc:
            # Disk full, I/O error: the job stays in processing/ unlocked; recovery (ours or
            # another worker's) retries it. An fsync error is never retried on that fd.
            home.spool.release(held, unlink=False)
            log.error("could not finish %s (%s); left in processing/ for recovery",
                      doc["id"], exc)
            self.next_recovery = 0.0
            return
        self._unblock(doc["id"], now)      # its dependents may be ready now
        if result.ok and not result.cancelled:
            self.jobs_done += 1
        elif not result.stopped and not result.cancelled:
            self.jobs_failed += 1
        if state == "failed":
            self.picker.add("failed", doc["id"], doc.get("priority", 0),
                            lifecycle._due(doc, now))
        self.beat_due = True           # idle again, with new done/failed counts: see _flush
        if now >= self.next_flush:
            self._flush()
            self.next_flush = now + INDEX_GROUP_SECONDS

    def _wait(self, running, timeout, held=None, doc=None):
        """Wait for the job (runner.RunningJob.wait enforces its time limit), waking for
        signals, inotify, heartbeats and the index's group commit; a stop (past the
        shutdown deadline, or at once for SIGUSR1) or a cancel request kills its group.
        A job still running after INDEX_GROUP_SECONDS is indexed as running then, with our
        busy heartbeat, and the group is committed (a shorter job's running row would
        only be replaced by its finish in the same commit, so it is never written).
        The claim's lock is re-asserted every LOCK_CHECK_SECONDS: if it is gone (another
        host may take the job) the group is killed at once. Returns None, or why the claim
        was lost."""
        stop_at = None
        flush_at = running.started + INDEX_GROUP_SECONDS
        # Short jobs end before anyone could cancel them: no marker lookup for them.
        cancel_at = running.started + CANCEL_CHECK_AFTER
        next_lock_check = running.started + LOCK_CHECK_SECONDS
        lost = []

        def check():
            nonlocal stop_at, flush_at, next_lock_check
            self.wakeup.clear()
            if self.watch is not None:
                self.watch.read(self.wakeup)     # keep the names for after the job
            now = time.monotonic()
            if held is not None and now >= next_lock_check:
                next_lock_check = now + LOCK_CHECK_SECONDS
                try:
                    self.home.spool.check_claim(held)
                except LostClaim as exc:
                    lost.append(exc.strerror)
                    return "lost", 0.0
            if self.stopping and stop_at is None:
                stop_at = now + self._shutdown_timeout()
            if self.stop_now or (stop_at is not None and now >= stop_at):
                return "stopped", 0.0
            if now >= cancel_at and self.home.spool.cancel_requested(
                    self.current, self.current_claim.data):
                return "cancelled", 0.0
            if self.clock() >= self.next_heartbeat:
                self.heartbeat(busy=True)
            if flush_at is not None and now >= flush_at:
                if doc is not None:         # a longer job: index it as running now
                    lifecycle.mark_running(self.home, doc, self.clock())
                self.beat_due = True
                self._flush()
                flush_at = None
            limits = [self.next_heartbeat - self.clock()]
            limits += [t - now for t in (stop_at, flush_at) if t is not None]
            if now < cancel_at:
                limits.append(cancel_at - now)
            if held is not None:
                limits.append(next_lock_check - now)
            return None, min(limits)

        first_check = min(cancel_at, flush_at) - running.started
        running.wait(timeout, self._wake_sources(), check, first_check)
        return lost[0] if lost else None

    def _shutdown_timeout(self):
        """`worker stop --timeout S` leaves S in data/supervisors/<supervisor>.stop for our
        supervisor's workers; otherwise config shutdown_timeout applies."""
        if self.supervisor:
            try:
                with open(self.home.path("supervisors", self.supervisor + ".stop")) as f:
                    return float(f.read().strip())
            except (OSError, ValueError):
                pass
        return float(self.home.settings.shutdown_timeout)

    # ---- heartbeat and loop -----------------------------------------------------------------
    def heartbeat(self, state=None, busy=False, quick=False):
        """Report our state (metrics.heartbeat: the index row and the Prometheus textfile).
        While a job runs (`busy`) the textfile is built without an ingest, so nothing can
        delay the job's timeout or stop handling. quick=True (queued by _flush with each
        group commit after a job started or ended, so status shows the state at once) queues
        the row with the grouped index updates and reuses the last CPU and memory figures: no
        /proc scan, no textfile, no extra commit, and the timer is left alone."""
        record = {"worker_id": self.worker_id, "host": runner.HOSTNAME, "pid": self.pid,
                  "started_at": self.started_at, "current_job": self.current,
                  "jobs_done": self.jobs_done, "jobs_failed": self.jobs_failed,
                  "supervisor": self.supervisor,
                  "state": state or ("stopping" if self.stopping else
                                     "busy" if self.current else "idle")}
        if quick:
            cpu, rss = self._stats
            record.update(heartbeat_at=time.time(), cpu_percent=cpu, rss_bytes=rss)
            self.home.index_update("heartbeat", self.home.index.heartbeat, record)
            return
        self.next_heartbeat = self.clock() + HEARTBEAT_SECONDS
        hooks.reap()
        self.beat_due = False          # this full beat carries the same and more
        self.home.flush_index()
        written = metrics.heartbeat(self.home, record, self.label, ingest_first=not busy)
        self._stats = (written["cpu_percent"], written["rss_bytes"])
        if self.shared:
            try:
                self.home.spool.write_worker(written)
            except OSError as exc:     # a dead mount is noticed (and logged) by the loop
                log.debug("%s: heartbeat not written to the spool: %s", self.label, exc)
        minute = int(time.time() // 60)
        if minute != self.backlog_minute:       # one backlog sample a minute for the charts
            self.backlog_minute = minute
            self.home.index_safely("backlog sample", metrics.record_backlog, self.home,
                                   self.clock())

    def _flush(self):
        """Commit the grouped index updates, with our heartbeat as of now if a job started
        or ended since the last commit (queued here, not at every start and end: of a group
        of short jobs only the last beat would be written anyway)."""
        if self.beat_due:
            self.beat_due = False
            self.heartbeat(quick=True)
        self.home.flush_index()

    def _idle_timeout(self, now):
        limits = [self.next_scan - now, self.next_heartbeat - now]
        due = self.picker.next_due()
        # While paused, ready jobs stay in the picker with due times in the past: waking
        # for them would spin. Resuming is seen through inotify or the poll timer.
        if due is not None and not (due <= now and self.is_paused()):
            limits.append(due - now)
        limits.extend(d - now for d in self.unsettled.values())
        if self.unjudged:
            limits.append(0.0)
        return max(0.0, min(limits))

    def loop(self):
        """Run until asked to stop. Returns the process exit code."""
        home = self.home
        if not self._await_spool(home.spool.ensure_layout):
            return EXIT_SPOOL_DOWN
        self.shared, fstype = home.shared_spool()
        # On a local filesystem nobody can take a claim we hold: no re-check per finish.
        home.spool.fence_claims = self.shared or not is_local_filesystem(fstype)
        self.watch = watcher.start([home.spool.dir(s) for s in TAKE_FROM] + [home.spool_dir],
                                   self.wakeup)
        log.info("%s started (%s%s)", self.label,
                 "inotify" if self.watch else "polling, inotify unavailable",
                 f"; spool shared with other hosts ({fstype}): they are seen by polling every "
                 f"{home.settings.worker_poll_interval:g}s" if self.shared else "")
        code = 0
        try:
            self.heartbeat()           # report in before a possibly long first scan
            while not self.stopping:
                try:
                    if self.run_once():
                        self._spool_reachable()
                        continue
                    self._spool_reachable()
                    if not self.retention_checked and not self.stopping:
                        self.purge_expired()
                        continue
                except OSError as exc:
                    if not self._unreachable(exc):
                        self._loop_error()
                        continue
                    if not self._spool_down(exc):
                        code = EXIT_SPOOL_DOWN
                        break
                    continue
                except Exception:
                    self._loop_error()
                    continue
                if self.stopping:
                    break
                self._flush()           # idle: the index catches up before we sleep
                select.select(self._wake_sources(), [], [], self._idle_timeout(self.clock()))
        finally:
            if self.watch is not None:
                self.watch.stop()
            self._flush()
            home.index_safely("worker exit", home.index.delete_worker, self.worker_id)
            if self.shared:
                try:
                    home.spool.remove_worker(self.worker_id)
                except OSError:
                    pass
            hooks.drain()
            log.info("%s stopped (%d done, %d failed attempts)", self.label, self.jobs_done,
                     self.jobs_failed)
        return code



def run_worker(home, supervisor=None, report_job=None, queues=None):
    """Entry point for a worker process (after fork or from `worker run`); `queues` limits
    it to jobs of those queues (None: every queue)."""
    home.configure_logging("worker")
    # A job without a cwd runs in the home: spawning it there is cheaper from inside it. Not
    # on a network filesystem, whose client may restart and leave a settled cwd dead: jobs
    # then change into the home by path each time, as into any other cwd.
    if is_local_filesystem(filesystem_type(home.home)):
        runner.settle_in(home.home)
    worker = Worker(home, supervisor, report_job, queues)
    worker.install_signals()
    return worker.loop()
