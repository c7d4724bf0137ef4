"""The index: SQLite (WAL) holding a row per job, rejected drop-ins, config, worker
heartbeats and metrics. It is derived data: the spool wins on every disagreement, and the
whole job part can be dropped and rebuilt from the spool (`reindex`).

Invariants: schema creation is serialised by a filelock beside the database; every write is
one short transaction; a database that SQLite cannot read is moved aside and recreated (the
caller then rescans the spool). Only this module imports sqlite3."""

import json
import os
import sqlite3
import time

from .job import parse_time
from .logs import log


# 3: jobs.version; 4: the backlog table or jobs.queue (two lines of work both said 4);
# 5: both. Schema creation adds whatever an older index lacks.
SCHEMA_VERSION = 5
JOB_COLUMNS = ("id", "state", "command", "priority", "run_at", "due_ts", "created_at",
               "updated_at", "finished_at", "attempts", "max_retries", "timeout",
               "exit_code", "last_error", "duration_s", "queue")
# What a row is written with: the job's columns plus its version, the epoch of the job's
# updated_at, which every move rewriting the file advances. An upsert never moves a row
# to an older version, nor at the same version from processing back to the state the claim
# took it from (a claim keeps updated_at): a late write (enqueue's "pending" landing after
# a worker's "completed") is dropped instead of undoing newer state.
ROW_COLUMNS = (*JOB_COLUMNS, "version")
NEWER = ("excluded.version > jobs.version OR (excluded.version = jobs.version AND "
         "(excluded.state = 'processing' OR jobs.state <> 'processing'))")
# Columns added after schema 2, with their definitions: ALTER TABLE adds the missing ones
# to an older index (an old row counts as oldest version, in the default queue).
ADDED_COLUMNS = (("version", "REAL NOT NULL DEFAULT 0"),
                 ("queue", "TEXT NOT NULL DEFAULT 'default'"))
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, state TEXT NOT NULL, command TEXT, priority INTEGER NOT NULL DEFAULT 0,
  run_at TEXT, due_ts REAL NOT NULL DEFAULT 0, created_at TEXT, updated_at TEXT,
  finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, max_retries INTEGER, timeout REAL,
  exit_code INTEGER, last_error TEXT, duration_s REAL,
  queue TEXT NOT NULL DEFAULT 'default', version REAL NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_take_order ON jobs(state, priority DESC, due_ts, id);
CREATE INDEX IF NOT EXISTS jobs_recent ON jobs(state, updated_at DESC);
CREATE TABLE IF NOT EXISTS rejected (
  name TEXT PRIMARY KEY, reason TEXT, rejected_at TEXT, size INTEGER);
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS looks (dir TEXT PRIMARY KEY, mtime_ns INTEGER, look_ns INTEGER);
CREATE TABLE IF NOT EXISTS workers (
  worker_id TEXT PRIMARY KEY, host TEXT, pid INTEGER, started_at REAL, heartbeat_at REAL,
  current_job TEXT, jobs_done INTEGER DEFAULT 0, jobs_failed INTEGER DEFAULT 0,
  cpu_percent REAL, rss_bytes INTEGER, supervisor TEXT, state TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS timings (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, finished_ts REAL NOT NULL, outcome TEXT NOT NULL,
  wait_s REAL, run_s REAL);
CREATE INDEX IF NOT EXISTS timings_by_time ON timings(finished_ts);
CREATE TABLE IF NOT EXISTS per_minute (
  minute INTEGER NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (minute, outcome)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS backlog (
  minute INTEGER PRIMARY KEY, ready INTEGER, scheduled INTEGER, processing INTEGER,
  failed INTEGER, dead INTEGER);
"""
TIMINGS_KEPT = 20000
MINUTES_KEPT = 1440      # per-minute buckets and backlog samples: one day
# How long creating the schema waits for other connections. A new, empty file is only ever
# open elsewhere for an instant; one that stays locked is a database emptied or replaced
# under live connections (a truncated queue.db beside a live -wal), set aside and recreated.
SCHEMA_BUSY_MS = 2000


def job_row(job, state, due_ts):
    """The index row (ROW_COLUMNS) for a job dict in a state."""
    values = dict(job, state=state, due_ts=due_ts, version=_version(job))
    values.setdefault("priority", 0)
    values.setdefault("attempts", 0)
    values["queue"] = values.get("queue") or "default"
    return tuple(map(values.get, ROW_COLUMNS))


def _version(job):
    try:
        return parse_time(job.get("updated_at"))
    except (ValueError, OverflowError):
        return 0.0


def page_key(row, state):
    """Where a page that ends with `row` stops, in the order Index.page lists `state`."""
    if state == "pending":
        return (row["priority"], row["due_ts"], row["id"])
    return (row["updated_at"] or "", row["id"])


class Index:
    def __init__(self, path):
        self.path = path
        self._db = None
        self._ino = None
        self.busy_ms = 60000       # how long a statement waits for another writer's lock
        self.moved_aside = []      # paths this object set aside (reported by reindex)
        self.aside_reason = None

    # ---- connection ---------------------------------------------------------------------
    @property
    def db(self):
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            try:
                self._move_aside(exc)
            except OSError:      # cannot be set aside (an immutable file): say what is wrong
                raise exc from None
            return self._connect()

    def is_db_error(self, exc):
        return isinstance(exc, sqlite3.Error)

    def is_busy(self, exc):
        """True when the database was locked by another connection past the busy timeout."""
        return isinstance(exc, sqlite3.OperationalError) and \
            ("locked" in str(exc) or "busy" in str(exc))

    def set_busy_timeout(self, seconds):
        """Change how long statements wait for another connection's lock (workers wait
        briefly: the index must never hold up the jobs)."""
        self.busy_ms = int(seconds * 1000)
        if self._db is not None:
            self._db.execute(f"PRAGMA busy_timeout={self.busy_ms}")

    def is_corrupt(self, exc):
        """True for 'database disk image is malformed' and 'file is not a database' (plain
        DatabaseError; locked, busy and read-only are OperationalError)."""
        return type(exc) is sqlite3.DatabaseError

    def replace_corrupt(self, exc):
        """Set a broken database (queue.db with its -wal and -shm) aside and start a new
        one, keeping whatever config rows can still be read from it. For any error but a
        lock held by another process: a -shm or -wal that SQLite cannot use (deleted under
        a live connection, a directory in its place) fails with "disk I/O error" or "attempt
        to write a readonly database", not as corruption."""
        try:
            kept = self.config()
        except sqlite3.Error:
            kept = {}
        self.close()
        self._move_aside(exc)
        for key, value in kept.items():
            self.set_config(key, value)

    def reopen_if_replaced(self):
        """Reconnect if queue.db was deleted or replaced under us (a long-lived worker would
        otherwise keep writing into the old, unlinked file)."""
        if self._db is None:
            return
        try:
            replaced = os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            replaced = True
        if replaced:
            self.close()

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=self.busy_ms / 1000, isolation_level=None,
                             check_same_thread=False)
        self._ino = os.stat(self.path).st_ino
        try:
            db.execute(f"PRAGMA busy_timeout={self.busy_ms}")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._create_schema(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("SELECT count(*) FROM config").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _create_schema(self, db):
        from filelock import FileLock    # only needed once per database
        with FileLock(self.path + ".lock"):
            if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            db.execute(f"PRAGMA busy_timeout={SCHEMA_BUSY_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, definition in ADDED_COLUMNS:
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute(f"PRAGMA busy_timeout={self.busy_ms}")

    def _move_aside(self, reason):
        """A database SQLite can't use is kept for inspection and replaced by a new one;
        the looks table starts empty, so the next ingest rescans the whole spool. Only the
        file we failed on is moved: if another process already replaced it, we reconnect."""
        try:
            if os.stat(self.path).st_ino != self._ino:
                return
        except FileNotFoundError:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if any(os.path.lexists(f"{self.path}.corrupt-{stamp}{s}") for s in ("", "-wal", "-shm")):
            stamp += f"-{os.getpid()}-{os.urandom(2).hex()}"    # never replace an older one
        log.warning("index %s is unusable (%s); moved aside to %s.corrupt-%s and recreated",
                    self.path, reason, self.path, stamp)
        self.aside_reason = str(reason)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(self.path + suffix, f"{self.path}.corrupt-{stamp}{suffix}")
                self.moved_aside.append(f"{self.path}.corrupt-{stamp}{suffix}")
            except FileNotFoundError:
                pass

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None

    def transaction(self):
        return _Transaction(self.db)

    # ---- jobs ---------------------------------------------------------------------------
    def upsert(self, rows):
        """Insert or update rows (from job_row), never replacing a newer one (NEWER)."""
        if len(rows) == 1:
            self.db.execute(UPSERT_SQL, rows[0])
            return
        with self.transaction():     # one commit for a batch, not one per row
            self.db.executemany(UPSERT_SQL, rows)

    def upsert_job(self, job, state, due_ts):
        """upsert of one job's row, built only when written: a worker queues a copy of the
        job at every move, and a grouped write keeps only each job's last (apply_group)."""
        self.upsert([job_row(job, state, due_ts)])

    def insert_new(self, rows):
        """Insert rows for ids not yet indexed; existing rows (fresher) are left alone."""
        marks = ",".join("?" * len(ROW_COLUMNS))
        self.db.executemany(f"INSERT OR IGNORE INTO jobs ({','.join(ROW_COLUMNS)}) "
                            f"VALUES ({marks})", rows)

    def move_if(self, job_id, expected_state, new_row):
        """Replace a row only if it still says expected_state: a fix from a directory scan
        must not undo a worker's newer update made after the scan looked."""
        marks = ",".join(f"{c}=?" for c in ROW_COLUMNS[1:])
        self.db.execute(f"UPDATE jobs SET {marks} WHERE id=? AND state=?",
                        (*new_row[1:], job_id, expected_state))

    def delete_if(self, job_id, expected_state):
        self.db.execute("DELETE FROM jobs WHERE id=? AND state=?", (job_id, expected_state))

    def take_hints(self, state):
        """{id: (priority, due_ts)} of the jobs indexed in a state."""
        return {r[0]: (r[1], r[2]) for r in self.db.execute(
            "SELECT id, priority, due_ts FROM jobs WHERE state=?", (state,))}

    def ids_in(self, state):
        return {r[0] for r in self.db.execute("SELECT id FROM jobs WHERE state=?", (state,))}

    def get(self, job_id):
        cur = self.db.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE id=?", (job_id,))
        row = cur.fetchone()
        return dict(zip(JOB_COLUMNS, row)) if row else None

    def counts(self):
        return dict(self.db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))

    def ready_summary(self, now):
        """(ready count, scheduled count, oldest due_ts among ready). Ready: pending jobs
        and failed jobs whose retry is due (a worker takes either now); scheduled: pending
        jobs whose run_at is still ahead."""
        ready, oldest = self.db.execute(
            "SELECT count(*), min(due_ts) FROM jobs WHERE state IN ('pending', 'failed') "
            "AND due_ts<=?", (now,)).fetchone()
        scheduled = self.db.execute(
            "SELECT count(*) FROM jobs WHERE state='pending' AND due_ts>?", (now,)).fetchone()[0]
        return ready, scheduled, oldest

    def list(self, state=None, limit=None):
        """Rows in take order for pending (priority, then due time), newest first for the
        rest; all states: pending first, then the others by recency."""
        cols = ",".join(JOB_COLUMNS)
        lim = -1 if limit is None else int(limit)
        if state == "pending":
            sql = (f"SELECT {cols} FROM jobs WHERE state='pending' "
                   "ORDER BY priority DESC, due_ts, id LIMIT ?")
            args = (lim,)
        elif state:
            sql = (f"SELECT {cols} FROM jobs WHERE state=? "
                   "ORDER BY updated_at DESC, id DESC LIMIT ?")
            args = (state, lim)
        else:
            sql = (f"SELECT {cols} FROM jobs ORDER BY state='pending' DESC, "
                   "CASE WHEN state='pending' THEN -priority END, "
                   "CASE WHEN state='pending' THEN due_ts END, "
                   "CASE WHEN state='pending' THEN id END, updated_at DESC, id DESC LIMIT ?")
            args = (lim,)
        return [dict(zip(JOB_COLUMNS, r)) for r in self.db.execute(sql, args)]

    def page(self, states, search=None, after=None, limit=50):
        """One page of rows for a browsing UI, by keyset: `after` is the previous page's
        key (page_key of its last row), so a page costs the same at any depth. One state:
        pending in take order, the others newest first, each served by its index
        (jobs_take_order, jobs_recent). Several states: each state's newest rows merged,
        so no query sorts the whole table. `search` matches a substring of the id or the
        command. Returns (rows, key of the last row, or None when there is no more)."""
        if len(states) == 1:
            rows = self._page_of(states[0], search, after, limit + 1)
        else:
            rows = sorted((r for state in states
                           for r in self._page_of(state, search, after, limit + 1,
                                                  take_order=False)),
                          key=lambda r: (r["updated_at"] or "", r["id"]), reverse=True)
        more = len(rows) > limit
        rows = rows[:limit]
        key_state = states[0] if len(states) == 1 else None
        return rows, (page_key(rows[-1], key_state) if more else None)

    def _page_of(self, state, search, after, limit, take_order=True):
        where, args = ["state=?"], [state]
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%") \
                .replace("_", "\\_") + "%"
            where.append("(id LIKE ? ESCAPE '\\' OR command LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        if state == "pending" and take_order:
            order = "priority DESC, due_ts, id"
            if after:
                where.append("(priority<? OR priority=? AND (due_ts>? OR due_ts=? AND id>?))")
                args += [after[0], after[0], after[1], after[1], after[2]]
        else:
            order = "updated_at DESC, id DESC"
            if after:
                where.append("(updated_at<? OR updated_at=? AND id<?)")
                args += [after[0], after[0], after[1]]
        sql = (f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE {' AND '.join(where)} "
               f"ORDER BY {order} LIMIT ?")
        return [dict(zip(JOB_COLUMNS, r)) for r in self.db.execute(sql, (*args, limit))]

    def list_queue(self, queue, state=None, limit=None):
        """Rows of one queue, in list()'s order."""
        cols = ",".join(JOB_COLUMNS)
        where = "queue=?" + (" AND state=?" if state else "")
        order = ("priority DESC, due_ts, id" if state == "pending" else
                 "state='pending' DESC, CASE WHEN state='pending' THEN -priority END, "
                 "CASE WHEN state='pending' THEN due_ts END, updated_at DESC, id DESC")
        args = (queue, state) if state else (queue,)
        return [dict(zip(JOB_COLUMNS, r)) for r in self.db.execute(
            f"SELECT {cols} FROM jobs WHERE {where} ORDER BY {order} LIMIT ?",
            (*args, -1 if limit is None else int(limit)))]

    def queue_summary(self, now):
        """{queue: {state: n, 'ready': n, 'oldest_due': ts}} over every queue with jobs."""
        result = {}
        for queue, state, n, ready, oldest in self.db.execute(
                "SELECT queue, state, count(*), sum(state='pending' AND due_ts<=?), "
                "min(CASE WHEN state='pending' AND due_ts<=? THEN due_ts END) FROM jobs "
                "GROUP BY queue, state", (now, now)):
            entry = result.setdefault(queue, {"ready": 0, "oldest_due": None})
            entry[state] = n
            entry["ready"] += ready or 0
            if oldest is not None:
                entry["oldest_due"] = oldest
        return result

    def ahead_of(self, queues, priority, due_ts, job_id, now):
        """Ready pending jobs a worker serving `queues` (None: all) takes before this one."""
        where = "" if queues is None else \
            f" AND queue IN ({','.join('?' * len(queues))})"
        return self.db.execute(
            "SELECT count(*) FROM jobs WHERE state='pending' AND due_ts<=? AND id<>? AND "
            "(priority>? OR (priority=? AND (due_ts<? OR (due_ts=? AND id<?))))" + where,
            (now, job_id, priority, priority, due_ts, due_ts, job_id,
             *(queues or ()))).fetchone()[0]

    def clear_jobs(self):
        self.db.execute("DELETE FROM jobs")
        self.db.execute("DELETE FROM rejected")
        self.db.execute("DELETE FROM looks")

    # ---- rejected -----------------------------------------------------------------------
    def upsert_rejected(self, rows):
        self.db.executemany("INSERT OR REPLACE INTO rejected VALUES (?,?,?,?)", rows)

    def rejected(self, name=None, limit=None):
        cols = ("name", "reason", "rejected_at", "size")
        if name is not None:
            rows = self.db.execute("SELECT * FROM rejected WHERE name=?", (name,))
        else:
            rows = self.db.execute("SELECT * FROM rejected ORDER BY rejected_at DESC, name DESC "
                                   "LIMIT ?",
                                   (-1 if limit is None else int(limit),))
        return [dict(zip(cols, r)) for r in rows]

    def rejected_names(self):
        return {r[0] for r in self.db.execute("SELECT name FROM rejected")}

    def delete_rejected(self, name):
        self.db.execute("DELETE FROM rejected WHERE name=?", (name,))

    def rejected_count(self):
        return self.db.execute("SELECT count(*) FROM rejected").fetchone()[0]

    # ---- directory looks (what ingest has already seen) -----------------------------------
    def looks(self):
        return {d: (m, t) for d, m, t in self.db.execute("SELECT * FROM looks")}

    def set_look(self, directory, mtime_ns, look_ns):
        self.db.execute("INSERT OR REPLACE INTO looks VALUES (?,?,?)",
                        (directory, mtime_ns, look_ns))

    # ---- config -------------------------------------------------------------------------
    def config(self):
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM config")}

    def set_config(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO config VALUES (?,?)", (key, json.dumps(value)))

    def unset_config(self, key):
        self.db.execute("DELETE FROM config WHERE key=?", (key,))

    # ---- workers and metrics --------------------------------------------------------------
    WORKER_COLUMNS = ("worker_id", "host", "pid", "started_at", "heartbeat_at", "current_job",
                      "jobs_done", "jobs_failed", "cpu_percent", "rss_bytes", "supervisor",
                      "state")

    def heartbeat(self, record):
        self.db.execute(HEARTBEAT_SQL, _worker_row(record))

    def workers(self):
        cols = self.WORKER_COLUMNS
        return [dict(zip(cols, r)) for r in self.db.execute(
            f"SELECT {','.join(cols)} FROM workers ORDER BY started_at")]

    def delete_worker(self, worker_id):
        self.db.execute("DELETE FROM workers WHERE worker_id=?", (worker_id,))

    def record_outcome(self, outcome, finished_ts, wait_s, run_s, also=()):
        """Count an attempt's outcome (and the extra counters in `also`, e.g. "dead" for a
        failed attempt that buried its job), keep its timings (a bounded recent window) and
        add it to its minute's bucket (for throughput over 1, 5 and 15 minutes)."""
        self.record_outcomes([(outcome, finished_ts, wait_s, run_s, also)])

    def record_outcomes(self, outcomes):
        """record_outcome for several attempts [(outcome, finished_ts, wait_s, run_s, also)]
        at once: each counter and minute bucket is written once with its sum."""
        counters, minutes = {}, {}
        for outcome, finished_ts, _, _, also in outcomes:
            for name in (outcome, *also):
                counters[name] = counters.get(name, 0) + 1
            key = (int(finished_ts // 60), outcome)
            minutes[key] = minutes.get(key, 0) + 1
        with self.transaction():
            self.db.executemany("INSERT INTO counters VALUES (?,?) ON CONFLICT(name) DO UPDATE "
                                "SET value=value+excluded.value", counters.items())
            self.db.executemany("INSERT INTO per_minute VALUES (?,?,?) ON CONFLICT(minute, "
                                "outcome) DO UPDATE SET n=n+excluded.n",
                                [(m, o, n) for (m, o), n in minutes.items()])
            self.db.executemany("INSERT INTO timings (finished_ts, outcome, wait_s, run_s) "
                                "VALUES (?,?,?,?)", [(ts, outcome, wait_s, run_s) for
                                                     outcome, ts, wait_s, run_s, _ in outcomes])
            last = self.db.execute("SELECT max(seq) FROM timings").fetchone()[0] or 0
            if last // 1000 != (last - len(outcomes)) // 1000:   # now and then, not per job
                self.db.execute("DELETE FROM timings WHERE seq <= ?", (last - TIMINGS_KEPT,))
                self.db.execute("DELETE FROM per_minute WHERE minute < ?",
                                (max(m for m, _ in minutes) - MINUTES_KEPT,))

    def apply_group(self, queued):
        """Write a worker's queued updates [(bound method of this index, args)] in one
        transaction (Home.flush_index). When they are only job rows, heartbeats and
        outcomes (a worker's hot path) they are coalesced: one row per job (the last queued:
        each of a worker's moves is newer than the one before), one heartbeat per worker
        (the last) and the outcomes summed, each kind written by one executemany. Anything
        else in the group (a rejection's delete) keeps every update in its order."""
        with self.transaction():
            if not all(fn.__name__ in _COALESCED for fn, _ in queued):
                for fn, args in queued:
                    fn(*args)
                return
            rows, beats, outcomes = {}, {}, []
            for fn, args in queued:
                name = fn.__name__
                if name == "upsert":
                    for row in args[0]:
                        rows[row[0]] = row
                elif name == "upsert_job":
                    rows[args[0]["id"]] = args      # (job, state, due_ts): built below
                elif name == "heartbeat":
                    beats[args[0]["worker_id"]] = args[0]
                else:
                    outcomes.append((*args[:4], args[4] if len(args) > 4 else ()))
            if rows:
                self.db.executemany(UPSERT_SQL, [job_row(*row) if isinstance(row[0], dict)
                                                 else row for row in rows.values()])
            if beats:
                self.db.executemany(HEARTBEAT_SQL, map(_worker_row, beats.values()))
            if outcomes:
                self.record_outcomes(outcomes)

    def record_backlog(self, minute, ready, scheduled, counts):
        """One backlog sample per minute (the first one taken in that minute wins, so any
        number of workers may offer one)."""
        self.db.execute("INSERT OR IGNORE INTO backlog VALUES (?,?,?,?,?,?)",
                        (minute, ready, scheduled, counts.get("processing", 0),
                         counts.get("failed", 0), counts.get("dead", 0)))
        if minute % 60 == 0:
            self.db.execute("DELETE FROM backlog WHERE minute < ?", (minute - MINUTES_KEPT,))

    def backlog(self, since_minute):
        cols = ("minute", "ready", "scheduled", "processing", "failed", "dead")
        return [dict(zip(cols, r)) for r in self.db.execute(
            "SELECT * FROM backlog WHERE minute >= ? ORDER BY minute", (since_minute,))]

    def per_minute(self, since_minute):
        return self.db.execute("SELECT minute, outcome, n FROM per_minute WHERE minute >= ?",
                               (since_minute,)).fetchall()

    def ready_ages(self, now, edges):
        """Ready jobs (pending, or failed with the retry due) per age bucket: counts for
        [edges[i], edges[i+1]) seconds."""
        cases = " ".join(f"WHEN ? - due_ts < {float(e)} THEN {i}" for i, e in enumerate(edges))
        rows = self.db.execute(
            f"SELECT CASE {cases} ELSE {len(edges)} END AS bucket, count(*) FROM jobs "
            "WHERE state IN ('pending', 'failed') AND due_ts<=? GROUP BY bucket",
            (*[now] * len(edges), now))
        return dict(rows.fetchall())

    def oldest_timing(self):
        return self.db.execute("SELECT min(finished_ts) FROM timings").fetchone()[0]

    def timings_complete(self):
        """True while no timing has been pruned yet (the table holds every attempt)."""
        row = self.db.execute("SELECT min(seq) FROM timings").fetchone()[0]
        return row is None or row == 1

    def counters(self):
        return dict(self.db.execute("SELECT name, value FROM counters"))

    def timings(self, since_ts):
        return self.db.execute("SELECT finished_ts, outcome, wait_s, run_s FROM timings "
                               "WHERE finished_ts>=? ORDER BY finished_ts", (since_ts,)).fetchall()


UPSERT_SQL = (f"INSERT INTO jobs ({','.join(ROW_COLUMNS)}) VALUES "
              f"({','.join('?' * len(ROW_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
              f"{','.join(f'{c}=excluded.{c}' for c in ROW_COLUMNS[1:])} WHERE {NEWER}")
HEARTBEAT_SQL = (f"INSERT OR REPLACE INTO workers ({','.join(Index.WORKER_COLUMNS)}) VALUES "
                 f"({','.join('?' * len(Index.WORKER_COLUMNS))})")
_COALESCED = ("upsert", "upsert_job", "heartbeat", "record_outcome")


def _worker_row(record):
    """A heartbeat record (dict) as the workers table's row (WORKER_COLUMNS)."""
    return tuple(map(record.get, Index.WORKER_COLUMNS))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the writer lock is taken up front
    so two writers never deadlock upgrading read locks). Inside an open transaction (a
    worker's grouped updates) it only joins it: the outer one commits or rolls back."""

    def __init__(self, db):
        self.db = db
        self.joined = False

    def __enter__(self):
        if self.db.in_transaction:
            self.joined = True
            return self.db
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.joined:
            return False
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            # SQLite rolls back by itself on some errors (corruption, I/O, a full disk): a
            # second ROLLBACK would fail and hide the error that matters.
            self.db.execute("ROLLBACK")
        return False
