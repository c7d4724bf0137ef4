"""The worker: `run_once()` takes and runs at most one job; `loop()` is a thin loop around it
that sleeps until inotify, the next due time, a settle deadline or the poll timer says look.

Invariants: a job is only run under its flock, claimed by rename into processing/; every
state change goes through lifecycle; signal handlers only set flags (and wake the loop
through the self-pipe). SIGTERM/SIGINT: stop claiming, let the running job finish within
shutdown_timeout, then kill its group and requeue it without counting an attempt. SIGUSR1:
the same, without waiting. Correct with no inotify events at all: the poll timer rescans."""

import logging
import os
import select
import signal
import time

from . import job as jobmod
from . import control, history, hooks, lifecycle, metrics, recovery, render, runner, watcher
from .errors import InvalidJob
from .ingest import Verdict, examine, handle_bad, settle_deadline
from .picker import Picker
from .setaside import SetAside
from .spool import NotAJobFile, is_candidate

log = logging.getLogger("queuectl")
HEARTBEAT_SECONDS = metrics.HEARTBEAT_SECONDS
RECOVERY_SECONDS = 5
HINT_THRESHOLD = 200         # new files in one scan above which the index supplies hints
RETENTION_SECONDS = 60       # how often a worker purges completed jobs past retention
INDEX_WAIT_SECONDS = 2       # a worker waits no longer than this for a locked index
TAKE_FROM = ("pending", "failed")


class Worker:
    def __init__(self, home, supervisor=None, report_job=None, queues=None):
        self.home = home
        self.aside = SetAside(home.spool, queues)    # other queues' jobs, blocked jobs
        home.index.set_busy_timeout(INDEX_WAIT_SECONDS)
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
        self.skipped = {}          # (state, name) -> signature: unclaimable and unmovable
        self.recovery_failed = set()   # names in processing/ whose recovery raised
        self.stopping = False
        self.stop_now = False
        self.current = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self.next_scan = 0.0
        self.next_recovery = 0.0
        self.next_heartbeat = 0.0
        # Retention is checked the first time the worker is idle, then every minute: a
        # worker (re)started with a backlog runs jobs before it lstat()s completed/.
        self.next_retention = self.clock() + RETENTION_SECONDS
        self.retention_checked = False

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

    # ---- finding work -----------------------------------------------------------------------
    def consider(self, state, name, now):
        """Look at one file in pending/ or failed/ and remember it if it is a job."""
        if (state, name) in self.skipped:
            if self.skipped[(state, name)] == self._signature(state, name):
                return
            del self.skipped[(state, name)]
        verdict = examine(self.home, state, name, now)
        stem = name[:-len(jobmod.JOB_SUFFIX)]
        self.unsettled.pop((state, name), None)
        if verdict.doc is not None:
            if self.aside.check(state, stem, verdict.doc):
                self.picker.forget(state, stem)
                return
            self.picker.add(state, stem, verdict.doc.get("priority", 0),
                            lifecycle._due(verdict.doc, now))
            return
        self.picker.forget(state, stem)
        if not handle_bad(self.home, state, name, verdict, now):
            self.unsettled[(state, name)] = settle_deadline(verdict, self.home)

    def _unblock(self, dep, now):
        """A dependency finished (our own move): look at the jobs waiting for it now."""
        for state, job_id in self.aside.finished(dep):
            self.consider(state, job_id + jobmod.JOB_SUFFIX, now)

    def full_scan(self, now):
        """Re-list pending/ and failed/: forget what vanished, consider what is new."""
        for state in TAKE_FROM:
            names = self.home.spool.names(state)
            present = {name[:-len(jobmod.JOB_SUFFIX)] for name in names}
            for key in [k for k in self.skipped if k[0] == state and k[1] not in names]:
                del self.skipped[key]
            for key in self.picker.keys(state):
                if key[1] not in present:
                    self.picker.forget(*key)
            for key in self.aside.rescan(state, present):
                self.consider(state, key[1] + jobmod.JOB_SUFFIX, now)
            new = [n for n in names if (state, n[:-len(jobmod.JOB_SUFFIX)]) not in self.picker
                   and (state, n[:-len(jobmod.JOB_SUFFIX)]) not in self.aside]
            # Hints carry no queue: a worker of some queues reads the files instead.
            hints = self._index_hints(state) if len(new) > HINT_THRESHOLD and \
                self.aside.queues is None else {}
            for name in new:
                stem = name[:-len(jobmod.JOB_SUFFIX)]
                if stem in hints:
                    self.picker.add(state, stem, *hints[stem])
                else:
                    self.consider(state, name, now)
        self.picker.compact()

    def _index_hints(self, state):
        """{id: (priority, due)} from the index, so a worker starting on a large backlog
        need not read every file first. Only hints: a claim re-reads and re-checks the file
        under its lock, and anything the index does not know is read as usual."""
        try:
            return self.home.index.take_hints(state)
        except Exception as exc:      # a broken index only costs reading the files
            log.warning("%s: index unavailable for hints (%s)", self.label, exc)
            return {}

    def _events(self, now):
        names, overflowed = self.wakeup.drain()
        if overflowed:
            self.next_scan = 0.0
        for state, name in names:
            if state in TAKE_FROM and is_candidate(name):
                self.consider(state, name, now)

    def _housekeeping(self, now):
        self._events(now)
        if now >= self.next_scan:
            self.home.reload_settings()
            if self.watch is not None and not self.watch.alive():
                log.warning("%s: inotify watcher stopped; polling from now on", self.label)
                self.watch = None
            if now >= self.next_recovery:
                self.recover(now)
                self.next_recovery = now + RECOVERY_SECONDS
            started = time.monotonic()
            self.full_scan(now)
            # The rescan is only a safety net: on a huge backlog (60,000 files take ~0.1 s
            # to list and compare) space it out so it costs at most ~5% of a core.
            spent = time.monotonic() - started
            self.next_scan = now + max(self.home.settings.worker_poll_interval, 20 * spent)
            if now >= self.next_retention:
                self.purge_expired()
                self.next_retention = now + RETENTION_SECONDS
        for key, deadline in list(self.unsettled.items()):
            if deadline <= now:
                self.consider(key[0], key[1], now)
        if now >= self.next_heartbeat:
            self.heartbeat()

    def purge_expired(self):
        self.retention_checked = True
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
        if self.stopping or self.home.spool.is_paused():
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

    def _unclaimable(self, state, job_id, exc, now):
        """A file the claim could not open or lock as a job. The claim is the judge: it
        opens read-write, so a file we may read but not write (a 0444 drop-in, root's file
        in a service user's spool) is rejected with the claim's reason, not re-read
        read-only and put back in the picker (which made the claim loop spin). If even the
        rejection fails, the file is left alone until it changes."""
        if exc.gone:
            return
        name = job_id + jobmod.JOB_SUFFIX
        try:
            handle_bad(self.home, state, name, Verdict(reason=exc.reason), now)
        except OSError as err:
            log.error("%s: cannot reject %s/%s (%s): %s; skipped until it changes",
                      self.label, state, name, exc.reason, err)
            self.skipped[(state, name)] = self._signature(state, name)

    def _signature(self, state, name):
        st = self.home.spool.lstat(state, name)
        return st and (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)

    def _take(self, held, now):
        try:
            doc = lifecycle.parse_claimed(self.home, held, now)
        except (InvalidJob, NotAJobFile) as exc:
            if now - held.st.st_mtime < self.home.settings.settle_seconds:
                # A writer may still be at work on it in place: put it back, look later.
                lifecycle.unclaim(self.home, held)
                name = held.job_id + jobmod.JOB_SUFFIX
                self.unsettled[(held.origin, name)] = held.st.st_mtime + \
                    self.home.settings.settle_seconds
                return False
            lifecycle.reject_claimed(self.home, held, str(exc), now)
            return True
        due = lifecycle._due(doc, now)
        if due > now:
            lifecycle.unclaim(self.home, held)     # the hint was stale: not due yet
            self.picker.add(held.origin, held.job_id, doc.get("priority", 0), due)
            return False
        elsewhere = [s for s in self.home.spool.find(held.job_id) if s != "processing"]
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
        home = self.home
        attempt = doc.get("attempts", 0) + 1
        started = time.time()
        self.current = doc["id"]
        self.current_claim = held
        lifecycle.mark_running(home, doc, self.clock())
        home.spool.ensure_output()
        running = runner.RunningJob(
            doc["command"], doc.get("cwd") or home.home,
            runner.job_environment(doc["id"], attempt, home.home), held.fd,
            home.spool.output_path(doc["id"]),
            runner.header(doc["id"], attempt, self.label, jobmod.iso(started)))
        timeout = doc.get("timeout") or home.settings.job_timeout
        if self.report_job and running.pid:
            self.report_job(running.pid)
        self._wait(running, timeout)
        result = running.finish(self.label)
        if self.report_job and running.pid:
            self.report_job(0)
        self.current = None
        history.append(doc, history.from_run(
            doc, started, time.time(), self.label, result, home.spool.output_path(doc["id"]),
            getattr(running, "log_start", None), getattr(running, "cancelled", False)))
        try:
            outcome = self._route(held, doc, running, result)
        except OSError as exc:
            # Disk full, I/O error: the job stays in processing/ unlocked; recovery (ours or
            # another worker's) retries it. An fsync error is never retried on that fd.
            home.spool.release(held, unlink=False)
            log.error("could not finish %s (%s); left in processing/ for recovery",
                      doc["id"], exc)
            self.next_recovery = 0.0
            return
        wait_s = max(0.0, started - max(_ts(doc.get("created_at")), _ts(doc.get("run_at"))))
        self._unblock(doc["id"], self.clock())
        outcome, *also = outcome.split("+")
        home.index_safely("metrics", home.index.record_outcome, outcome, self.clock(), wait_s,
                          result.duration_s, also)

    def _route(self, held, doc, running, result):
        """Move a finished job to its next state; returns the outcome's name."""
        home = self.home
        now = self.clock()
        if running.cancelled:
            lifecycle.cancel(home, held, doc, now)
            home.spool.clear_cancel(doc["id"])
            outcome = "cancelled"
        elif result.stopped:
            lifecycle.requeue(home, held, doc, now)
            outcome = "requeued"
        elif result.ok:
            lifecycle.complete(home, held, doc, result, now)
            self.jobs_done += 1
            outcome = "completed"
        else:
            state = lifecycle.fail(home, held, doc, result.error, result.exit_code,
                                   result.duration_s, now)
            self.jobs_failed += 1
            outcome = "failed+dead" if state == "dead" else "failed"
            if state == "failed":
                self.picker.add("failed", doc["id"], doc.get("priority", 0),
                                lifecycle._due(doc, now))
        return outcome

    def _wait(self, running, timeout):
        """Wait for the job, waking for signals and heartbeats; enforce its timeout and the
        shutdown deadline by killing its whole process group."""
        deadline = running.started + timeout if timeout else None
        stop_deadline = None
        while running.poll() is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                running.timed_out = timeout
                running.kill_group()
                return
            if self.stopping and stop_deadline is None:
                stop_deadline = now + self._shutdown_timeout()
            if self.stop_now or (stop_deadline is not None and now >= stop_deadline):
                running.stopped = True
                running.kill_group()
                return
            if self.home.spool.cancel_requested(self.current, self.current_claim.data):
                running.cancelled = True
                running.kill_group()
                return
            if self.clock() >= self.next_heartbeat:
                self.heartbeat(busy=True)
            limits = [1.0, self.next_heartbeat - self.clock()]
            limits += [t - now for t in (deadline, stop_deadline) if t is not None]
            fds = [self.wakeup] + ([running.pidfd] if running.pidfd is not None else [])
            select.select(fds, [], [], max(0.0, min(limits)) if running.pidfd is not None
                          else min(0.01, max(0.0, min(limits))))
            self.wakeup.clear()

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
    def heartbeat(self, state=None, busy=False):
        """Record our state in the index (best effort) and keep the metrics textfile fresh.
        While a job runs (`busy`, from _wait) the textfile is built from the index as it
        stands: an ingest (a spool rescan, index writes that may wait on a lock) must never
        delay the job's timeout or stop handling."""
        self.next_heartbeat = self.clock() + HEARTBEAT_SECONDS
        hooks.reap()
        try:
            self.home.index.reopen_if_replaced()
        except Exception as exc:
            log.warning("%s: index unavailable (%s)", self.label, exc)
        try:
            cpu, rss = runner.process_stats()
        except Exception:
            cpu, rss = None, None
        record = {"worker_id": self.worker_id, "host": runner.HOSTNAME, "pid": self.pid,
                  "started_at": self.started_at, "heartbeat_at": time.time(),
                  "current_job": self.current, "jobs_done": self.jobs_done,
                  "jobs_failed": self.jobs_failed, "cpu_percent": cpu, "rss_bytes": rss,
                  "supervisor": self.supervisor,
                  "state": state or ("stopping" if self.stopping else
                                     "busy" if self.current else "idle")}
        self.home.index_safely("heartbeat", self.home.index.heartbeat, record)
        if self.home.settings.metrics_textfile:
            self.write_textfile(self.home.settings.metrics_textfile, ingest=not busy)

    def write_textfile(self, path, ingest=True):
        """Keep the Prometheus textfile fresh. Every worker may write it, but only when it is
        older than a heartbeat interval, so the queries run about once per interval in all;
        tmp + fsync + rename, so node_exporter never reads half a file."""
        try:
            if time.time() - os.stat(path).st_mtime < HEARTBEAT_SECONDS:
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("metrics textfile %s: %s", path, exc)
            return
        try:
            text = render.prometheus_text(metrics.report(
                self.home, metrics.worker_rows(self.home), ingest_first=ingest))
            tmp = f"{path}.{self.pid}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as exc:    # metrics must never stop the worker
            log.warning("could not write metrics textfile %s: %s", path, exc)

    def _idle_timeout(self, now):
        limits = [self.next_scan - now, self.next_heartbeat - now]
        due = self.picker.next_due()
        # While paused, ready jobs stay in the picker with due times in the past: waking
        # for them would spin. Resuming is seen through inotify or the poll timer.
        if due is not None and not (due <= now and self.home.spool.is_paused()):
            limits.append(due - now)
        limits.extend(d - now for d in self.unsettled.values())
        return max(0.0, min(limits))

    def loop(self):
        """Run until asked to stop. Returns the process exit code."""
        home = self.home
        home.spool.ensure_layout()
        self.watch = watcher.start([home.spool.dir(s) for s in TAKE_FROM] + [home.spool_dir],
                                   self.wakeup)
        log.info("%s started (%s)", self.label,
                 "inotify" if self.watch else "polling, inotify unavailable")
        try:
            self.heartbeat()           # report in before a possibly long first scan
            while not self.stopping:
                try:
                    if self.run_once():
                        continue
                    if not self.retention_checked and not self.stopping:
                        self.purge_expired()
                        continue
                except Exception:
                    # Never die over one bad step: the spool is unchanged or recoverable
                    # (a claim we could not finish stays in processing/ for recovery).
                    log.exception("%s: error in the work loop; carrying on", self.label)
                    self.next_scan = 0.0
                    time.sleep(0.5)
                    continue
                if self.stopping:
                    break
                select.select([self.wakeup], [], [], self._idle_timeout(self.clock()))
        finally:
            if self.watch is not None:
                self.watch.stop()
            home.index_safely("worker exit", home.index.delete_worker, self.worker_id)
            hooks.drain()
            log.info("%s stopped (%d done, %d failed attempts)", self.label, self.jobs_done,
                     self.jobs_failed)
        return 0


def _ts(stamp):
    try:
        return jobmod.parse_time(stamp) if stamp else 0.0
    except ValueError:
        return 0.0


def run_worker(home, supervisor=None, report_job=None, queues=None):
    """Entry point for a worker process (after fork or from `worker run`); `queues` limits
    it to jobs of those queues (None: every queue)."""
    home.configure_logging("worker")
    worker = Worker(home, supervisor, report_job, queues)
    worker.install_signals()
    return worker.loop()
