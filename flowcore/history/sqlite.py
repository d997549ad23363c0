"""The built-in history store: one SQLite file, ``$FLOWCORE_HOME/history.db``.

WAL mode (readers never wait for the writer), ``synchronous=NORMAL``, a busy timeout,
and every write in ``BEGIN IMMEDIATE`` retried with backoff while another process
holds the write lock, so several processes share one file without losing a row or
surfacing "database is locked". The schema is versioned with ``PRAGMA user_version``
and upgraded in place by :data:`MIGRATIONS` (the README documents it for users who
query the file with plain ``sqlite3``). The history writer's store checkpoints the WAL
in :meth:`SQLiteStore.upkeep`, outside the commits a flow run waits for
(:meth:`SQLiteStore.defer_upkeep`); other connections let SQLite do it in their commits.

Only this module imports :mod:`sqlite3`; the plugin imports it when the first run
event arrives, never at ``import flowcore``.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flowcore.deployments.schema import DEPLOYMENTS_SQL
from flowcore.errors import HistoryError, RunNotFoundError
from flowcore.history import liveness
from flowcore.history.formatting import json_or, local_time
from flowcore.history.records import (
    FlowRunRecord,
    FlowRunWrite,
    HistoryBatch,
    LogRecord,
    StateRecord,
    TaskRunBlockWrite,
    TaskRunRecord,
    TaskRunWrite,
    WorkerRecord,
)
from flowcore.history.store import HistoryStore, RunDetail
from flowcore.limits.schema import LIMITS_SQL

FILE_NAME = "history.db"
#: seconds SQLite itself waits for a lock before a statement reports busy
BUSY_TIMEOUT_S = 5.0
#: seconds a write keeps retrying a busy database before it gives up
LOCK_TIMEOUT_S = 60.0
#: a writer that defers its WAL checkpoints (SQLiteStore.defer_upkeep) makes one after
#: about this much was written: SQLite's own default (1,000 pages of 4 KiB)
CHECKPOINT_AFTER_BYTES = 4_000_000
#: what a transaction and a row add to the WAL, roughly (pages of the tables and indexes)
_TRANSACTION_BYTES = 16_384
_ROW_BYTES = 512

_V1 = """
CREATE TABLE flow_runs (
    id              TEXT PRIMARY KEY,
    flow            TEXT NOT NULL,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_type      TEXT NOT NULL,
    message         TEXT NOT NULL DEFAULT '',
    parameters      TEXT NOT NULL DEFAULT '{}',
    backend         TEXT,
    backend_options TEXT NOT NULL DEFAULT '{}',
    tags            TEXT NOT NULL DEFAULT '[]',
    parent_id       TEXT,
    start_time      REAL,
    end_time        REAL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    host            TEXT,
    pid             INTEGER,
    process_start   INTEGER NOT NULL DEFAULT 0,
    heartbeat       REAL,
    error_type      TEXT,
    error_message   TEXT,
    traceback       TEXT
);
CREATE INDEX flow_runs_by_start ON flow_runs (start_time);
CREATE INDEX flow_runs_by_flow ON flow_runs (flow, start_time);
CREATE INDEX flow_runs_by_state ON flow_runs (state, start_time);
CREATE INDEX flow_runs_by_parent ON flow_runs (parent_id);

CREATE TABLE flow_run_states (
    flow_run_id TEXT NOT NULL,
    timestamp   REAL NOT NULL,
    type        TEXT NOT NULL,
    name        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    attempt     INTEGER
);
CREATE INDEX flow_run_states_by_run ON flow_run_states (flow_run_id, timestamp);

CREATE TABLE task_runs (
    id             TEXT PRIMARY KEY,
    flow_run_id    TEXT,
    task           TEXT NOT NULL,
    name           TEXT NOT NULL,
    state          TEXT NOT NULL,
    state_type     TEXT NOT NULL,
    message        TEXT NOT NULL DEFAULT '',
    attempts       INTEGER NOT NULL DEFAULT 0,
    submitted_time REAL,
    start_time     REAL,
    end_time       REAL,
    backend        TEXT,
    worker_host    TEXT,
    worker_pid     INTEGER,
    worker_thread  TEXT,
    worker_address TEXT,
    cache_hit      INTEGER,
    cache_key      TEXT,
    tags           TEXT NOT NULL DEFAULT '[]',
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT
) WITHOUT ROWID;
CREATE INDEX task_runs_by_flow_run ON task_runs (flow_run_id, state);

CREATE TABLE task_run_blocks (
    id             INTEGER PRIMARY KEY,
    flow_run_id    TEXT,
    task           TEXT NOT NULL,
    id_prefix      TEXT NOT NULL,
    backend        TEXT,
    worker_host    TEXT,
    worker_pid     INTEGER,
    worker_thread  TEXT,
    worker_address TEXT,
    tags           TEXT NOT NULL DEFAULT '[]',
    count          INTEGER NOT NULL,
    first_number   INTEGER NOT NULL,
    numbers        TEXT,
    name_first     INTEGER NOT NULL,
    names          TEXT,
    time0          REAL NOT NULL,
    end_time       REAL NOT NULL,
    submitted_time REAL,
    submitted      TEXT,
    starts         TEXT,
    ends           TEXT NOT NULL
);
CREATE INDEX task_run_blocks_by_flow_run ON task_run_blocks (flow_run_id);

CREATE TABLE pending_maps (
    id             TEXT PRIMARY KEY,
    flow_run_id    TEXT,
    task           TEXT NOT NULL,
    id_prefix      TEXT NOT NULL,
    first_number   INTEGER NOT NULL,
    name_first     INTEGER NOT NULL,
    count          INTEGER NOT NULL,
    done           INTEGER NOT NULL DEFAULT 0,
    submitted_time REAL,
    backend        TEXT,
    tags           TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX pending_maps_by_flow_run ON pending_maps (flow_run_id);

CREATE VIEW task_runs_all AS
SELECT id, flow_run_id, task, name, state, state_type, message, attempts, submitted_time,
       start_time, end_time, backend, worker_host, worker_pid, worker_thread, worker_address,
       cache_hit, cache_key, tags, error_type, error_message, traceback
FROM task_runs
UNION ALL
SELECT b.id_prefix || '-' || printf('%x', b.first_number + coalesce(json_extract(b.numbers, '$[' || e.key || ']'), e.key)),
       b.flow_run_id, b.task,
       b.task || '-' || (b.name_first + coalesce(json_extract(b.names, '$[' || e.key || ']'), e.key)),
       'Completed', 'COMPLETED', '', 1,
       coalesce(b.time0 + json_extract(b.submitted, '$[' || e.key || ']') / 1e6, b.submitted_time),
       b.time0 + coalesce(json_extract(b.starts, '$[' || e.key || ']'),
                          lag(e.value, 1, 0) OVER (PARTITION BY b.id ORDER BY e.key)) / 1e6,
       b.time0 + e.value / 1e6,
       b.backend, b.worker_host, b.worker_pid, b.worker_thread, b.worker_address, 0, NULL, b.tags,
       NULL, NULL, NULL
FROM task_run_blocks AS b, json_each(b.ends) AS e;

CREATE TABLE logs (
    id            INTEGER PRIMARY KEY,
    flow_run_id   TEXT,
    task_run_id   TEXT,
    timestamp     REAL NOT NULL,
    level         INTEGER NOT NULL,
    level_name    TEXT NOT NULL,
    logger        TEXT NOT NULL,
    message       TEXT NOT NULL,
    task_name     TEXT,
    task_run_name TEXT
);
CREATE INDEX logs_by_flow_run ON logs (flow_run_id, id);
CREATE INDEX logs_by_timestamp ON logs (timestamp);
"""

Migration = Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Migration:
    statements = [s.strip() for s in sql.split(";") if s.strip()]

    def apply(connection: sqlite3.Connection) -> None:
        for statement in statements:
            connection.execute(statement)

    return apply


#: ``MIGRATIONS[i]`` upgrades a database at ``user_version`` i to i + 1. Append only:
#: a released step never changes.
#: step 4: where task runs kept their results (``persist_result``; flowcore.results)
RESULTS_SQL = """
CREATE TABLE task_run_results (
    task_run_id TEXT PRIMARY KEY,
    flow_run_id TEXT,
    task        TEXT NOT NULL,
    name        TEXT NOT NULL,
    storage     TEXT NOT NULL,
    key         TEXT NOT NULL,
    written_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX task_run_results_by_flow_run ON task_run_results (flow_run_id)
"""

#: step 5: which runs of a running map execute now (they read Running, not Pending)
RUNNING_MAPS_SQL = "ALTER TABLE pending_maps ADD COLUMN running TEXT"

MIGRATIONS: tuple[Migration, ...] = (
    _script(_V1), _script(DEPLOYMENTS_SQL), _script(LIMITS_SQL), _script(RESULTS_SQL), _script(RUNNING_MAPS_SQL),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS, *, location: str = "") -> int:
    """Bring the database up to ``len(migrations)`` in one write transaction (another
    process doing the same waits, then finds nothing to do). Returns the version it
    found. Raises HistoryError for a database newer than this flowcore knows."""
    target = len(migrations)

    def work(conn: sqlite3.Connection) -> int:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > target:
            raise HistoryError(
                f"the run history database {location} has schema version {found}, newer than "
                f"this flowcore knows ({target}); upgrade flowcore, or set FLOWCORE_HOME to "
                "another directory"
            )
        for step in migrations[found:]:
            step(conn)
        if found != target:
            conn.execute(f"PRAGMA user_version = {target:d}")
        return found

    if int(connection.execute("PRAGMA user_version").fetchone()[0]) == target:
        return target
    found: int = _with_retry(connection, work, location)
    return found


# -- connections and retries ------------------------------------------------------------


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _with_retry(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any], location: str,
                lock_timeout: float = LOCK_TIMEOUT_S) -> Any:
    """Run ``work`` in ``BEGIN IMMEDIATE`` ... ``COMMIT``, retrying the whole
    transaction with backoff while the database is busy, up to ``lock_timeout``."""
    deadline = time.monotonic() + lock_timeout
    delay = 0.005
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise _unusable(location, exc) from None
            if time.monotonic() >= deadline:
                raise HistoryError(
                    f"the run history database {location} stayed locked by another process for "
                    f"{lock_timeout:.0f} s; close the program holding it (a sqlite3 shell with an "
                    "open transaction?), or set FLOWCORE_HISTORY=0"
                ) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        except sqlite3.DatabaseError as exc:
            raise _unusable(location, exc) from None


def _unusable(location: str, exc: BaseException) -> HistoryError:
    text = str(exc)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered or isinstance(exc, PermissionError):
        fix = (
            f"make {Path(location).parent} writable, or set FLOWCORE_HOME to a writable "
            "directory, or FLOWCORE_HISTORY=0"
        )
        what = "cannot be written"
    elif "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        fix = (  # its WAL too: SQLite would replay an old WAL into the new file
            f"move it aside with its WAL (mv {location} {location}.broken; mv -f {location}-wal "
            f"{location}-wal.broken; rm -f {location}-shm) and flowcore starts a new one, or set FLOWCORE_HISTORY=0"
        )
        what = "is not a usable SQLite database"
    else:
        fix = "check the file and its directory, or set FLOWCORE_HOME elsewhere, or FLOWCORE_HISTORY=0"
        what = "cannot be used"
    return HistoryError(f"the run history database {location} {what} ({text}); {fix}")


# -- the store -------------------------------------------------------------------------

_FLOW_COLUMNS = (
    "id, flow, name, state, state_type, message, parameters, backend, backend_options, tags, "
    "parent_id, start_time, end_time, attempts, host, pid, process_start, heartbeat, "
    "error_type, error_message, traceback"
)
_TASK_COLUMNS = (
    "id, flow_run_id, task, name, state, state_type, message, attempts, submitted_time, "
    "start_time, end_time, backend, worker_host, worker_pid, worker_thread, worker_address, "
    "cache_hit, cache_key, tags, error_type, error_message, traceback"
)
_LOG_COLUMNS = "id, flow_run_id, task_run_id, timestamp, level, level_name, logger, message, task_name, task_run_name"

_UPSERT_FLOW = f"""
INSERT INTO flow_runs ({_FLOW_COLUMNS}) VALUES (
    ?, ?, ?, ?, ?, coalesce(?, ''), coalesce(?, '{{}}'), ?, coalesce(?, '{{}}'), coalesce(?, '[]'),
    ?, ?, ?, coalesce(?, 0), ?, ?, coalesce(?, 0), ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, state_type = excluded.state_type, message = excluded.message,
    parameters = coalesce(?7, parameters), backend = coalesce(?8, backend),
    backend_options = coalesce(?9, backend_options), tags = coalesce(?10, tags),
    parent_id = coalesce(?11, parent_id), start_time = coalesce(?12, start_time),
    end_time = coalesce(?13, end_time), attempts = coalesce(?14, attempts),
    host = coalesce(?15, host), pid = coalesce(?16, pid),
    process_start = coalesce(?17, process_start), heartbeat = coalesce(?18, heartbeat),
    error_type = coalesce(?19, error_type), error_message = coalesce(?20, error_message),
    traceback = coalesce(?21, traceback)
"""

_INSERT_TASK = f"""
INSERT INTO task_runs ({_TASK_COLUMNS}) VALUES (
    ?, ?, ?, ?, ?, ?, coalesce(?, ''), coalesce(?, 0), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
    coalesce(?, '[]'), ?, ?, ?)
"""
_UPSERT_TASK = _INSERT_TASK + """ON CONFLICT (id) DO UPDATE SET
    flow_run_id = coalesce(?2, flow_run_id), state = excluded.state,
    state_type = excluded.state_type, message = coalesce(?7, message),
    attempts = coalesce(?8, attempts), submitted_time = coalesce(?9, submitted_time),
    start_time = coalesce(?10, start_time), end_time = coalesce(?11, end_time),
    backend = coalesce(?12, backend), worker_host = coalesce(?13, worker_host),
    worker_pid = coalesce(?14, worker_pid), worker_thread = coalesce(?15, worker_thread),
    worker_address = coalesce(?16, worker_address), cache_hit = coalesce(?17, cache_hit),
    cache_key = coalesce(?18, cache_key), tags = coalesce(?19, tags),
    error_type = coalesce(?20, error_type), error_message = coalesce(?21, error_message),
    traceback = coalesce(?22, traceback)
"""

_INSERT_STATE = "INSERT INTO flow_run_states (flow_run_id, timestamp, type, name, message, attempt) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_LOG = (
    "INSERT INTO logs (flow_run_id, task_run_id, timestamp, level, level_name, logger, message, "
    "task_name, task_run_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HEARTBEAT = "UPDATE flow_runs SET heartbeat = ? WHERE id = ? AND state_type = 'RUNNING'"


def _flow_row(w: FlowRunWrite) -> tuple[Any, ...]:
    return (
        w.id, w.flow, w.name, w.state, w.state_type, w.message, w.parameters, w.backend,
        w.backend_options, w.tags, w.parent_id, w.start, w.end, w.attempts, w.host, w.pid,
        w.process_start, w.heartbeat, w.error_type, w.error_message, w.traceback,
    )


_BLOCK_COLUMNS = (
    "flow_run_id, task, id_prefix, backend, worker_host, worker_pid, worker_thread, worker_address, "
    "tags, count, first_number, numbers, name_first, names, time0, end_time, submitted_time, "
    "submitted, starts, ends"
)
#: the columns of ``task_run_blocks`` in the order of TaskRunBlockWrite's fields
BLOCK_COLUMNS = _BLOCK_COLUMNS
_INSERT_BLOCK = (
    f"INSERT INTO task_run_blocks ({_BLOCK_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, '[]'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PENDING_MAP_COLUMNS = (
    "id, flow_run_id, task, id_prefix, first_number, name_first, count, done, submitted_time, backend, tags, "
    "running"
)
_UPSERT_PENDING_MAP = (
    f"INSERT INTO pending_maps ({_PENDING_MAP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, '[]'), ?) "
    "ON CONFLICT (id) DO UPDATE SET done = excluded.done, running = excluded.running"
)
#: how many runs of a pending map execute now, in SQL
RUNNING_IN_MAP = "json_array_length(coalesce(running, '[]'))"


def _block_row(w: TaskRunBlockWrite) -> tuple[Any, ...]:
    return (
        w.flow_run_id, w.task, w.id_prefix, w.backend, w.worker_host, w.worker_pid, w.worker_thread,
        w.worker_address, w.tags, w.count, w.first_number, w.numbers, w.name_first, w.names, w.time0,
        w.end_time, w.submitted_time, w.submitted, w.starts, w.ends,
    )


def _block_record(row: tuple[Any, ...]) -> TaskRunBlockWrite:
    return TaskRunBlockWrite(*row)


def _task_row(w: TaskRunWrite) -> tuple[Any, ...]:
    return (
        w.id, w.flow_run_id, w.task, w.name, w.state, w.state_type, w.message, w.attempts,
        w.submitted, w.start, w.end, w.backend, w.worker_host, w.worker_pid, w.worker_thread,
        w.worker_address, None if w.cache_hit is None else int(w.cache_hit), w.cache_key,
        w.tags, w.error_type, w.error_message, w.traceback,
    )


class SQLiteStore(HistoryStore):
    """The run history in one SQLite file (see the module docstring).

    Opening creates the file and its directory if needed and migrates the schema;
    raises :class:`~flowcore.errors.HistoryError` (naming the file and the fix) when
    the file is corrupt, not writable, or from a newer flowcore. With ``readonly``,
    opens an existing file for reading only and never migrates it.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.readonly = readonly
        self.lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._connection = self._connect()
        #: set by defer_upkeep: write_events no longer checkpoints the WAL itself
        self._checkpoints_deferred = False
        #: about how many bytes went into the WAL since the last checkpoint
        self._wal_bytes = 0

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            try:
                return self._connect_readonly("mode=ro")
            except sqlite3.Error as exc:
                # A WAL file with no -shm beside it can be read only by a process that
                # can create one. With no -wal either (the last connection to it closed),
                # every committed row is in the file itself: read it as immutable.
                if "unable to open" not in str(exc) or Path(f"{self.path}-wal").exists():
                    raise _unusable(self.location, exc) from None
            try:
                return self._connect_readonly("mode=ro&immutable=1")
            except sqlite3.Error as exc:
                raise _unusable(self.location, exc) from None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unusable(self.location, PermissionError(str(exc))) from None
        try:
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _unusable(self.location, exc) from None
        try:
            self._set_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            migrate(connection, location=self.location)
        except HistoryError:
            connection.close()
            raise
        except sqlite3.Error as exc:
            connection.close()
            raise _unusable(self.location, exc) from None
        return connection

    def _connect_readonly(self, query: str) -> sqlite3.Connection:
        connection = sqlite3.connect(
            f"{self.path.as_uri()}?{query}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._check_version(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _set_wal(self, connection: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment alone with the file: retried like a write.
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01 + random.random() * 0.05)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")

    def _check_version(self, connection: sqlite3.Connection) -> None:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if found != SCHEMA_VERSION:
            raise HistoryError(
                f"the run history database {self.location} has schema version {found}, this "
                f"flowcore reads version {SCHEMA_VERSION}; run any flow (or flowcore runs ls) "
                "with write access to upgrade it, or upgrade flowcore"
            )

    def defer_upkeep(self) -> None:
        """Leave WAL checkpoints out of the commits (SQLite makes one inside the commit
        that finds :data:`CHECKPOINT_AFTER_BYTES` or so in the WAL, and copying them with
        an fsync can take longer than a short flow run whose end waits for that commit):
        :meth:`upkeep` makes them, as often."""
        if self.readonly:
            return
        with self._lock:
            self._connection.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpoints_deferred = True

    def upkeep(self) -> None:
        """A passive WAL checkpoint once about :data:`CHECKPOINT_AFTER_BYTES` were
        written since the last one (after :meth:`defer_upkeep`); it waits for no reader
        or writer, and what a reader still uses is copied at a later one."""
        if not self._checkpoints_deferred or self._wal_bytes < CHECKPOINT_AFTER_BYTES:
            return
        with self._lock:
            self._wal_bytes = 0
            try:
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:  # busy or locked: the next call tries again
                self._wal_bytes = CHECKPOINT_AFTER_BYTES

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"

    # -- writing ------------------------------------------------------------------------
    def write_events(self, batch: HistoryBatch) -> None:
        if not batch:
            return
        flow_rows = [_flow_row(w) for w in batch.flow_runs]
        states = [
            (w.id, e.timestamp, e.type, e.name, e.message, e.attempt)
            for w in batch.flow_runs
            if (e := w.state_entry) is not None
        ]
        task_rows = [_task_row(w) for w in batch.task_runs]
        update_rows = [_task_row(w) for w in batch.task_run_updates]
        result_rows = [
            (w.id, w.flow_run_id, w.task, w.name, w.result_storage, w.result_key, w.end or time.time())
            for w in (*batch.task_runs, *batch.task_run_updates)
            if w.result_key is not None and w.result_storage is not None
        ]
        log_rows = [
            (r.flow_run_id, r.task_run_id, r.timestamp, r.level, r.level_name, r.logger,
             r.message, r.task_name, r.task_run_name)
            for r in batch.logs
        ]
        beats = [(batch.heartbeat, run_id) for run_id in batch.heartbeat_ids]
        block_rows = [_block_row(w) for w in batch.task_run_blocks]
        map_rows = [
            (m.key, m.flow_run_id, m.task, m.id_prefix, m.first_number, m.name_first, m.count, m.done,
             m.submitted_time, m.backend, m.tags, m.running)
            for m in batch.pending_maps if m.done < m.count
        ]
        finished_maps = [(m.key,) for m in batch.pending_maps if m.done >= m.count]

        def work(conn: sqlite3.Connection) -> None:
            if flow_rows:
                conn.executemany(_UPSERT_FLOW, flow_rows)
            if states:
                conn.executemany(_INSERT_STATE, states)
            if task_rows:
                # New rows: a plain insert costs about 2/3 of an upsert. A row that
                # exists after all (never expected) sends the whole batch the slow way.
                conn.execute("SAVEPOINT new_task_runs")
                try:
                    conn.executemany(_INSERT_TASK, task_rows)
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK TO new_task_runs")
                    conn.executemany(_UPSERT_TASK, task_rows)
                conn.execute("RELEASE new_task_runs")
            if update_rows:
                conn.executemany(_UPSERT_TASK, update_rows)
            if block_rows:
                conn.executemany(_INSERT_BLOCK, block_rows)
            if result_rows:
                conn.executemany(
                    "INSERT OR REPLACE INTO task_run_results (task_run_id, flow_run_id, task, name, "
                    "storage, key, written_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    result_rows,
                )
            if map_rows:
                conn.executemany(_UPSERT_PENDING_MAP, map_rows)
            if finished_maps:
                conn.executemany("DELETE FROM pending_maps WHERE id = ?", finished_maps)
            if log_rows:
                conn.executemany(_INSERT_LOG, log_rows)
            if beats:
                conn.executemany(_HEARTBEAT, beats)

        self._write(work)
        if self._checkpoints_deferred:  # a rough count of what went into the WAL
            rows = len(flow_rows) + len(states) + len(task_rows) + len(update_rows) + len(log_rows) + len(map_rows)
            self._wal_bytes += _TRANSACTION_BYTES + _ROW_BYTES * rows + sum(
                len(w.ends) + len(w.starts or "") + len(w.submitted or "") + len(w.numbers or "") + len(w.names or "")
                for w in batch.task_run_blocks
            )

    def transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(connection)`` in one write transaction (``BEGIN IMMEDIATE``,
        retried while other processes hold the file) and return what it returns: for
        tables that live beside the history in this file (deployments)."""
        return self._write(work)

    def query(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read statement (HistoryError if the file is unusable)."""
        return self._read(sql, parameters)

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        if self.readonly:
            raise HistoryError(f"the run history database {self.location} was opened read-only")
        with self._lock:
            return _with_retry(self._connection, work, self.location, self.lock_timeout)

    def _read(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection.execute(sql, tuple(parameters)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise _unusable(self.location, exc) from None

    # -- reading ------------------------------------------------------------------------
    def list_runs(
        self,
        *,
        flow: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = 20,
    ) -> list[FlowRunRecord]:
        self.reap_crashed()
        where: list[str] = []
        parameters: list[Any] = []
        if flow is not None:
            where.append("flow = ?")
            parameters.append(flow)
        # A run a read-only reader finds dead is still 'Running' on disk: asked for
        # crashed runs, such a reader reads the running ones too and keeps the dead.
        dead_too = self.readonly and state is not None and state.lower() == "crashed"
        if state is not None:
            where.append(
                "(state = ? COLLATE NOCASE OR state_type = upper(?)" + (" OR state = 'Running')" if dead_too else ")")
            )
            parameters += [state, state]
        if since is not None:
            where.append("start_time >= ?")
            parameters.append(since)
        sql = f"SELECT {_FLOW_COLUMNS} FROM flow_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time DESC"
        if limit is not None:
            extra = self._read("SELECT count(*) FROM flow_runs WHERE state = 'Running'")[0][0] if dead_too else 0
            sql += " LIMIT ?"
            parameters.append(int(limit) + int(extra))  # the live ones among them are dropped below
        runs = [self._flow_record(row) for row in self._read(sql, parameters)]
        if state is not None:
            wanted = state.lower()
            runs = [r for r in runs if wanted in (r.state.lower(), r.state_type.lower())]
        if limit is not None:
            runs = runs[: int(limit)]
        self._count_tasks(runs)
        return runs

    def _count_tasks(self, runs: list[FlowRunRecord]) -> None:
        fill_task_counts(self._read, runs)

    def _flow_record(self, row: tuple[Any, ...]) -> FlowRunRecord:
        (run_id, flow, name, state, state_type, message, parameters, backend, backend_options, tags,
         parent_id, start, end, attempts, host, pid, process_start, heartbeat, error_type,
         error_message, traceback) = row
        record = FlowRunRecord(
            run_id, flow, name, state, state_type, message or "", json_or(parameters, {}), backend,
            json_or(backend_options, {}), json_or(tags, []), parent_id, start, end, attempts or 0,
            host, pid, process_start or 0, heartbeat, error_type, error_message, traceback,
        )
        reason = liveness.crash_reason(record)
        if reason is not None:
            liveness.mark_crashed(record, reason)
        return record

    def reap_crashed(self) -> int:
        """Record as ``Crashed`` the runs recorded as running whose process is gone
        (see :mod:`flowcore.history.liveness`), with their unfinished task runs. A
        read-only store only shows them so. Returns how many runs were found dead."""
        rows = self._read(f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE state = 'Running'")
        dead = [record for record in map(self._flow_record, rows) if record.state_type == "CRASHED"]
        if not dead or self.readonly:
            return len(dead)

        def work(conn: sqlite3.Connection) -> None:
            for run in dead:
                run.end = _last_sign_of_life(conn, run)
                updated = conn.execute(
                    "UPDATE flow_runs SET state = 'Crashed', state_type = 'CRASHED', message = ?, "
                    "end_time = ? WHERE id = ? AND state = 'Running'",
                    (run.message, run.end, run.id),
                ).rowcount
                if not updated:
                    continue  # it finished meanwhile
                conn.execute(_INSERT_STATE, (run.id, run.end or time.time(), "CRASHED", "Crashed", run.message, None))
                conn.execute(
                    "UPDATE task_runs SET state = 'Crashed', state_type = 'CRASHED', message = ? "
                    "WHERE flow_run_id = ? AND state_type IN ('PENDING', 'RUNNING')",
                    ("its flow run crashed", run.id),
                )

        with contextlib.suppress(HistoryError):  # shown Crashed anyway; recorded by a reader that can write
            self._write(work)
        return len(dead)

    def resolve_run_id(self, run_id: str) -> str:
        """The full id of the flow run whose id starts with ``run_id`` (or whose name is
        ``run_id``). RunNotFoundError lists the candidates when several match."""
        text = run_id.strip()
        if not text:
            raise RunNotFoundError("no run id given; copy one from flowcore runs ls")
        rows: list[tuple[Any, ...]] = []
        if all(c in "0123456789abcdefABCDEF-" for c in text):
            rows = self._read(
                "SELECT id, flow, name, start_time FROM flow_runs WHERE id >= ? AND id < ? ORDER BY start_time DESC LIMIT 11",
                (text.lower(), text.lower() + "\uffff"),
            )
        by_name = not rows
        if by_name:
            rows = self._read(
                "SELECT id, flow, name, start_time FROM flow_runs WHERE name = ? ORDER BY start_time DESC LIMIT 11",
                (text,),
            )
        if not rows:
            raise RunNotFoundError(
                f"no flow run with an id starting with {text!r} (or named so) in {self.location}; "
                "list runs with: flowcore runs ls"
            )
        if len(rows) > 1:
            more = " and more" if len(rows) > 10 else ""
            if by_name:  # names repeat (flow_run_name templates): only an id tells them apart
                listed = "; ".join(f"{r[0]} ({r[1]}, started {local_time(r[3])})" for r in rows[:10])
                raise RunNotFoundError(
                    f"the name {text!r} names several flow runs: {listed}{more}; give a run id "
                    "(or a unique prefix of one)"
                )
            listed = "; ".join(f"{r[0]} ({r[1]}, {r[2]})" for r in rows[:10])
            raise RunNotFoundError(
                f"run id prefix {text!r} is ambiguous: it matches {listed}{more}; give more characters"
            )
        return str(rows[0][0])

    def get_flow_run(self, run_id: str) -> FlowRunRecord:
        self.reap_crashed()
        full = self.resolve_run_id(run_id)
        return self._flow_record(self._read(f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE id = ?", (full,))[0])

    def get_run(self, run_id: str) -> RunDetail:
        self.reap_crashed()
        full = self.resolve_run_id(run_id)
        run = self._flow_record(self._read(f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE id = ?", (full,))[0])
        run.states = [
            StateRecord(ts, type_, name, message or "", attempt)
            for ts, type_, name, message, attempt in self._read(
                "SELECT timestamp, type, name, message, attempt FROM flow_run_states WHERE flow_run_id = ? "
                "ORDER BY timestamp, rowid",
                (full,),
            )
        ]
        if run.state_type == "CRASHED" and (not run.states or run.states[-1].type != "CRASHED"):
            run.states.append(StateRecord(run.end or run.start or 0.0, "CRASHED", "Crashed", run.message))
        tasks = [
            _task_record(row)
            for row in self._read(
                f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE flow_run_id = ? "
                "ORDER BY coalesce(start_time, submitted_time), id",
                (full,),
            )
        ]
        tasks += self._block_runs(full)
        tasks.sort(key=_task_order)
        kept = {
            task_run_id: {"storage": storage, "key": key}
            for task_run_id, storage, key in self._read(
                "SELECT task_run_id, storage, key FROM task_run_results WHERE flow_run_id = ?", (full,)
            )
        }
        if kept:
            for task in tasks:
                task.result = kept.get(task.id)
        for task in tasks:
            run.task_counts[task.state] = run.task_counts.get(task.state, 0) + 1
        if run.state_type == "CRASHED":
            for task in tasks:
                if task.state_type in ("PENDING", "RUNNING"):
                    task.state, task.state_type, task.message = "Crashed", "CRASHED", "its flow run crashed"
            _crash_open_counts(run.task_counts)
        return RunDetail(run, tasks)

    def _block_runs(self, flow_run_id: str) -> list[TaskRunRecord]:
        """The runs of ``flow_run_id`` stored in blocks, and its maps' runs that have
        not finished (``Pending``)."""
        runs: list[TaskRunRecord] = []
        for row in self._read(f"SELECT {_BLOCK_COLUMNS} FROM task_run_blocks WHERE flow_run_id = ?", (flow_run_id,)):
            runs.extend(_block_record(row).expand())
        maps = self._read(f"SELECT {_PENDING_MAP_COLUMNS} FROM pending_maps WHERE flow_run_id = ?", (flow_run_id,))
        if maps:
            known = {r.id for r in runs}
            known.update(
                row[0] for row in self._read("SELECT id FROM task_runs WHERE flow_run_id = ?", (flow_run_id,))
            )
            for (_, flow_run, task, prefix, first, name_first, count, _done, submitted, backend, tags,
                 running) in maps:
                executing = running_in_map(running)
                for i in range(count):
                    run_id = f"{prefix}-{first + i:x}"
                    if run_id in known:
                        continue
                    record = TaskRunRecord(
                        run_id, flow_run, task, f"{task}-{name_first + i}", "Pending", "PENDING",
                        submitted=submitted, backend=backend, tags=json_or(tags, []),
                    )
                    where = executing.get(i)
                    if where is not None:
                        record.state, record.state_type, record.attempts = "Running", "RUNNING", 1
                        record.start, record.worker = where
                    runs.append(record)
        return runs

    def logs(
        self,
        flow_run_id: str,
        *,
        after_id: int = 0,
        level: int = 0,
        task: str | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        sql = f"SELECT {_LOG_COLUMNS} FROM logs WHERE flow_run_id = ? AND id > ?"
        parameters: list[Any] = [flow_run_id, after_id]
        if level:
            sql += " AND level >= ?"
            parameters.append(level)
        if task is not None:
            sql += " AND (task_name = ? OR task_run_name = ?)"
            parameters += [task, task]
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        return [LogRecord(*row) for row in self._read(sql, parameters)]

    def result_location(self, task_run_id: str) -> tuple[str, str] | None:
        rows = self._read("SELECT storage, key FROM task_run_results WHERE task_run_id = ?", (task_run_id,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def kept_results(self, flow_run_id: str) -> dict[tuple[str, str], tuple[str, str]]:
        rows = self._read(
            "SELECT r.task, r.name, r.storage, r.key FROM task_run_results r "
            "JOIN task_runs t ON t.id = r.task_run_id "
            "WHERE r.flow_run_id = ? AND t.state_type = 'COMPLETED'",
            (flow_run_id,),
        )
        return {(task, name): (storage, key) for task, name, storage, key in rows}

    def delete_older_than(self, cutoff: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM doomed")
            conn.execute(
                "INSERT INTO doomed SELECT id FROM flow_runs WHERE start_time < ?1 "
                "AND coalesce(end_time, heartbeat, start_time) < ?1 "
                "AND (state_type != 'RUNNING' OR coalesce(heartbeat, start_time) < ?2)",
                (cutoff, time.time() - liveness.STALE_AFTER_SECONDS),
            )
            count = int(conn.execute("SELECT count(*) FROM doomed").fetchone()[0])
            if count:
                conn.execute("DELETE FROM task_runs WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM task_run_blocks WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM task_run_results WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM pending_maps WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM logs WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM flow_run_states WHERE flow_run_id IN (SELECT id FROM doomed)")
                conn.execute("DELETE FROM flow_runs WHERE id IN (SELECT id FROM doomed)")
            conn.execute(
                "DELETE FROM task_runs WHERE flow_run_id IS NULL AND submitted_time < ? "
                "AND state_type NOT IN ('PENDING', 'RUNNING')",
                (cutoff,),
            )
            conn.execute("DELETE FROM task_run_blocks WHERE flow_run_id IS NULL AND end_time < ?", (cutoff,))
            conn.execute("DELETE FROM logs WHERE flow_run_id IS NULL AND timestamp < ?", (cutoff,))
            conn.execute("DELETE FROM doomed")
            return count

        count: int = self._write(work)
        return count


    def compact(self) -> tuple[int, int]:
        """``VACUUM`` (the file is rewritten without the free pages deleted rows left),
        then the WAL truncated; returns the size of the file plus its WAL before and
        after. Needs the database to itself for a moment: a writer in another process
        waits for it (busy timeout), and if one holds it past that, a HistoryError says
        to try again when it is idle."""
        if self.readonly:
            raise HistoryError(f"the run history database {self.location} was opened read-only")
        before = self._file_bytes()
        with self._lock:
            try:
                self._connection.execute("VACUUM")
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise HistoryError(
                        f"the run history database {self.location} is in use by another program "
                        "(a flow writing its history?): compact it again when it is idle"
                    ) from None
                raise _unusable(self.location, exc) from None
        return before, self._file_bytes()

    def _file_bytes(self) -> int:
        total = 0
        for path in (self.path, Path(f"{self.path}-wal")):
            try:
                total += path.stat().st_size
            except OSError:
                continue
        return total


def fill_task_counts(
    read: Callable[[str, Sequence[Any]], Iterable[tuple[Any, ...]]], runs: list[FlowRunRecord]
) -> None:
    """Fill ``task_counts`` (state name -> count) of ``runs`` with ``read(sql, args)``:
    rows of ``task_runs``, runs in ``task_run_blocks`` (Completed) and maps' runs not
    finished (Running or Pending); a crashed run's unfinished runs count as Crashed."""
    by_id = {run.id: run for run in runs}
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for table, state_column, counted in (
            ("task_runs", "state", "count(*)"),
            ("task_run_blocks", "'Completed'", "sum(count)"),
            ("pending_maps", "'Pending'", f"sum(count - done - {RUNNING_IN_MAP})"),
            ("pending_maps", "'Running'", f"sum({RUNNING_IN_MAP})"),
        ):
            for run_id, state_name, count in read(
                f"SELECT flow_run_id, {state_column}, {counted} FROM {table} WHERE flow_run_id IN ({marks}) "
                "GROUP BY 1, 2",
                chunk,
            ):
                if count:
                    counts = by_id[run_id].task_counts
                    counts[state_name] = counts.get(state_name, 0) + int(count)
    for run in runs:
        if run.state_type == "CRASHED":
            _crash_open_counts(run.task_counts)


def running_in_map(running: str | None) -> dict[int, tuple[float | None, WorkerRecord | None]]:
    """A pending map's ``running`` column: ``{position: (start, worker)}`` of its runs
    executing (when it was last written)."""
    found: dict[int, tuple[float | None, WorkerRecord | None]] = {}
    for position, start, host, pid, thread, address in json_or(running, []):
        worker = WorkerRecord(host, pid, thread, address) if host is not None or pid is not None else None
        found[int(position)] = (start, worker)
    return found


def _crash_open_counts(counts: dict[str, int]) -> None:
    """Task counts of a crashed run: its runs left pending or running crashed with it."""
    moved = counts.pop("Pending", 0) + counts.pop("Running", 0)
    if moved:
        counts["Crashed"] = counts.get("Crashed", 0) + moved


def _task_record(row: tuple[Any, ...]) -> TaskRunRecord:
    (run_id, flow_run_id, task, name, state, state_type, message, attempts, submitted, start, end,
     backend, worker_host, worker_pid, worker_thread, worker_address, cache_hit, cache_key, tags,
     error_type, error_message, traceback) = row
    worker = None
    if worker_host is not None or worker_pid is not None:
        worker = WorkerRecord(worker_host, worker_pid, worker_thread, worker_address)
    return TaskRunRecord(
        run_id, flow_run_id, task, name, state, state_type, message or "", attempts or 0, submitted,
        start, end, backend, worker, None if cache_hit is None else bool(cache_hit), cache_key,
        json_or(tags, []), error_type, error_message, traceback,
    )


def _last_sign_of_life(conn: sqlite3.Connection, run: FlowRunRecord) -> float | None:
    """When crashed ``run`` was last seen alive: the latest of its last heartbeat (what
    :func:`liveness.mark_crashed` gave it), its task runs' ends and its log records."""
    (last,) = conn.execute(
        "SELECT max(coalesce((SELECT max(end_time) FROM task_runs WHERE flow_run_id = ?1), 0), "
        "coalesce((SELECT max(end_time) FROM task_run_blocks WHERE flow_run_id = ?1), 0), "
        "coalesce((SELECT max(timestamp) FROM logs WHERE flow_run_id = ?1), 0))",
        (run.id,),
    ).fetchone()
    if run.end is None or (last and last > run.end):
        return float(last) if last else run.end
    return run.end


def _task_order(run: TaskRunRecord) -> tuple[float, str]:
    when = run.start if run.start is not None else run.submitted
    return (when if when is not None else float("inf"), run.id)



def history_file(settings: Any, feature: str, error: type[Exception]) -> Path:
    """The SQLite file of the history ``settings`` name, for a ``feature`` whose tables
    live in it (deployments, concurrency limits). ``error`` (naming the feature and the
    fix) when the configured history store is not the built-in SQLite one."""
    if settings.store != "sqlite":
        raise error(
            f"{feature} are kept in the built-in sqlite history store; the configured store is "
            f"{settings.store!r} (unset FLOWCORE_HISTORY_STORE or set it to sqlite)"
        )
    path = settings.store_options().get("path")
    return Path(path).expanduser() if path else Path(settings.home) / FILE_NAME


def open_sqlite_store(settings: Any) -> SQLiteStore:
    """The factory of the ``sqlite`` store: ``history.db`` in the home directory, or the
    file named by the store option ``path``."""
    options = settings.store_options()
    path = options.pop("path", None)
    lock_timeout = options.pop("lock_timeout", LOCK_TIMEOUT_S)
    if options:
        raise TypeError(f"unknown option(s) {', '.join(sorted(options))}; the sqlite store takes path, lock_timeout")
    return SQLiteStore(Path(path).expanduser() if path else Path(settings.home) / FILE_NAME, lock_timeout=float(lock_timeout))


__all__ = ["BLOCK_COLUMNS", "FILE_NAME", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "fill_task_counts", "history_file", "migrate", "open_sqlite_store"]
