"""Deployments, schedule state, the run queue and the trigger feed, in ``history.db``.

The tables are described in :mod:`flowcore.deployments.schema` (migration step 2 of
the history database). This module holds their SQL; it opens the file through
:class:`~flowcore.history.sqlite.SQLiteStore` (WAL, migrations, every write one
``BEGIN IMMEDIATE`` transaction retried while another process holds the lock), so
runs, deployments and their links commit together.

The guarantees workers rely on:

* **created once**: every run request carries an idempotency key, UNIQUE in
  ``deployment_runs`` (``INSERT OR IGNORE``): a scheduled run is
  ``schedule:<deployment>:<schedule>:<fire time UTC>``, so two workers ticking at the
  same moment, or a worker restarted after a crash, never create it twice; and the
  schedule's ``last_fire`` advances in the same transaction, so none is lost.
* **claimed once**: :meth:`DeploymentStore.claim` selects due runs and moves them to
  ``Running`` with ``UPDATE ... WHERE state IN ('Scheduled', 'Late')`` inside one
  write transaction: SQLite serialises writers, so a run goes to one worker.
* **never left Running**: a run's worker records its end; a worker found dead
  (:meth:`DeploymentStore.crash_orphans`) has its runs ended ``Crashed``, and their
  flow runs in the history with them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcore.deployments import scheduler
from flowcore.errors import DeploymentError, DeploymentNotFoundError
from flowcore.history.formatting import json_or

if TYPE_CHECKING:
    import sqlite3

    from flowcore.deployments.deployment import Deployment
    from flowcore.history.settings import HistorySettings
    from flowcore.schedules import Schedule

#: states of a run still to be started
QUEUED = ("Scheduled", "Late")
#: states a run ends in
FINAL = ("Completed", "Failed", "Crashed", "Cancelled", "Skipped")
#: a worker on another host whose heartbeat is older than this is dead
WORKER_STALE_S = 30.0

_STATE_TYPES = {"Crashed": "CRASHED", "Cancelled": "CANCELLED", "Failed": "FAILED", "Completed": "COMPLETED"}


def schedule_key(schedule: Mapping[str, Any]) -> str:
    """A stable key for a schedule: the hash of its canonical description."""
    text = json.dumps(schedule, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class ScheduleState:
    """One schedule of a deployment and the last fire time dealt with (epoch seconds)."""

    key: str
    position: int
    schedule: dict[str, Any]
    last_fire: float

    def load(self) -> Schedule:
        from flowcore.schedules import schedule_from_dict

        return schedule_from_dict(self.schedule)


@dataclass
class DeploymentRecord:
    """A stored deployment (see :class:`~flowcore.deployments.Deployment`)."""

    id: str
    flow: str
    name: str
    entrypoint: str
    import_path: str
    working_dir: str
    parameters: dict[str, Any]
    signature: dict[str, Any]
    work_pool: str
    tags: list[str]
    description: str
    paused: bool
    paused_since: float | None
    concurrency_limit: int | None
    catchup: str
    overlap: str
    triggers: list[dict[str, Any]]
    backend: str | None
    backend_options: dict[str, Any]
    created: float
    updated: float
    schedules: list[ScheduleState] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["full_name"] = self.full_name
        return data


@dataclass
class DeploymentRun:
    """One requested run of a deployment (a row of the run queue)."""

    id: str
    deployment_id: str
    idempotency_key: str
    kind: str
    work_pool: str
    state: str
    message: str
    parameters: dict[str, Any]
    scheduled_time: float
    created: float
    late: bool
    worker_id: str | None
    claimed_time: float | None
    start_time: float | None
    end_time: float | None
    pid: int | None
    cancel_requested: str | None
    flow_run_id: str | None

    def is_final(self) -> bool:
        return self.state in FINAL

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeedEntry:
    """One line of the trigger feed: what fired, which run it created, or what was
    skipped and why."""

    id: int
    timestamp: float
    deployment_id: str | None
    kind: str
    source: str
    outcome: str
    run_id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerRecord:
    id: str
    work_pool: str
    host: str
    pid: int
    process_start: int
    started: float
    heartbeat: float
    stopped: float | None


_DEPLOYMENT_COLUMNS = (
    "id, flow, name, entrypoint, import_path, working_dir, parameters, signature, work_pool, tags, "
    "description, paused, paused_since, concurrency_limit, catchup, overlap, triggers, backend, "
    "backend_options, created, updated"
)
_RUN_COLUMNS = (
    "id, deployment_id, idempotency_key, kind, work_pool, state, message, parameters, scheduled_time, "
    "created, late, worker_id, claimed_time, start_time, end_time, pid, cancel_requested, flow_run_id"
)
_INSERT_RUN = (
    f"INSERT OR IGNORE INTO deployment_runs ({_RUN_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
)
_INSERT_FEED = (
    "INSERT INTO trigger_feed (timestamp, deployment_id, kind, source, outcome, run_id, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)



def _deployment(row: tuple[Any, ...]) -> DeploymentRecord:
    (id_, flow, name, entrypoint, import_path, working_dir, parameters, signature, pool, tags, description,
     paused, paused_since, limit, catchup, overlap, triggers, backend, backend_options, created, updated) = row
    return DeploymentRecord(
        id_, flow, name, entrypoint, import_path, working_dir, json_or(parameters, {}), json_or(signature, {}),
        pool, json_or(tags, []), description, bool(paused), paused_since, limit, catchup, overlap,
        json_or(triggers, []), backend, json_or(backend_options, {}), created, updated,
    )


def _run(row: tuple[Any, ...]) -> DeploymentRun:
    (id_, deployment_id, key, kind, pool, state, message, parameters, scheduled, created, late, worker_id,
     claimed, start, end, pid, cancel, flow_run_id) = row
    return DeploymentRun(
        id_, deployment_id, key, kind, pool, state, message, json_or(parameters, {}), scheduled, created,
        bool(late), worker_id, claimed, start, end, pid, cancel, flow_run_id,
    )


def _when(timestamp: float) -> str:
    return scheduler.to_datetime(timestamp).strftime("%Y-%m-%d %H:%M:%S UTC")


def store_path(settings: HistorySettings | None = None) -> Path:
    """The history file deployments live in. DeploymentError when the configured
    history store is not the built-in SQLite one."""
    from flowcore.history.settings import history_settings
    from flowcore.history.sqlite import history_file

    return history_file(settings if settings is not None else history_settings(), "deployments", DeploymentError)


def open_deployment_store(settings: HistorySettings | None = None) -> DeploymentStore:
    """The deployment store of the configured home (the caller closes it)."""
    return DeploymentStore(store_path(settings))


class DeploymentStore:
    """Deployments and their runs in one SQLite file (see the module docstring).

    Thread-safe (one connection behind a lock); open one per process or thread
    group. Raises :class:`~flowcore.errors.HistoryError` when the file cannot be used.
    """

    def __init__(self, path: str | Path) -> None:
        from flowcore.history.sqlite import SQLiteStore

        self.history = SQLiteStore(path)
        self.path = self.history.path
        self.location = self.history.location

    def close(self) -> None:
        self.history.close()

    def __enter__(self) -> DeploymentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return self.history.transaction(work)

    def _read(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self.history.query(sql, parameters)

    # -- deployments ----------------------------------------------------------------------
    def upsert(self, deployment: Deployment, now: float | None = None) -> str:
        """Insert or update ``deployment`` (keyed by flow name and deployment name) and
        return its id. Schedules that did not change keep their ``last_fire``; new ones
        start at ``now`` (no backfill from before they existed). Applying with
        ``paused=False`` a deployment that is paused resumes it (see :meth:`set_paused`)."""
        when = time.time() if now is None else now
        schedules = [s.to_dict() for s in deployment.schedules]
        values = (
            deployment.entrypoint.target, deployment.entrypoint.import_path, deployment.entrypoint.working_dir,
            json.dumps(dict(deployment.parameters)), json.dumps(deployment.signature.to_dict()),
            deployment.work_pool_name, json.dumps(list(deployment.tags)), deployment.description,
            deployment.concurrency_limit, deployment.catchup, deployment.overlap,
            json.dumps([t.to_dict() for t in deployment.triggers]), deployment.backend,
            json.dumps(dict(deployment.backend_options)),
        )

        def work(conn: sqlite3.Connection) -> str:
            _refuse_trigger_loop(conn, deployment)
            row = conn.execute(
                "SELECT id, paused FROM deployments WHERE flow = ? AND name = ?",
                (deployment.flow_name, deployment.name),
            ).fetchone()
            if row is None:
                dep_id = uuid.uuid4().hex
                conn.execute(
                    f"INSERT INTO deployments ({_DEPLOYMENT_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (dep_id, deployment.flow_name, deployment.name, *values[:8], int(deployment.paused),
                     when if deployment.paused else None, *values[8:], when, when),
                )
                was_paused = False
            else:
                dep_id, was_paused = str(row[0]), bool(row[1])
                conn.execute(
                    "UPDATE deployments SET entrypoint = ?, import_path = ?, working_dir = ?, parameters = ?, "
                    "signature = ?, work_pool = ?, tags = ?, description = ?, concurrency_limit = ?, "
                    "catchup = ?, overlap = ?, triggers = ?, backend = ?, backend_options = ?, updated = ? "
                    "WHERE id = ?",
                    (*values, when, dep_id),
                )
            keys = [schedule_key(s) for s in schedules]
            existing = {k for (k,) in conn.execute(
                "SELECT key FROM deployment_schedules WHERE deployment_id = ?", (dep_id,))}
            for key in existing - set(keys):
                conn.execute("DELETE FROM deployment_schedules WHERE deployment_id = ? AND key = ?", (dep_id, key))
            for position, (key, data) in enumerate(zip(keys, schedules, strict=True)):
                if key in existing:
                    conn.execute(
                        "UPDATE deployment_schedules SET position = ? WHERE deployment_id = ? AND key = ?",
                        (position, dep_id, key),
                    )
                else:
                    conn.execute(
                        "INSERT INTO deployment_schedules (deployment_id, key, position, schedule, last_fire) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (dep_id, key, position, json.dumps(data, sort_keys=True), when),
                    )
            if deployment.paused and not was_paused:
                self._pause_in(conn, dep_id, when)
            elif was_paused and not deployment.paused:
                self._resume_in(conn, dep_id, when)
            return dep_id

        result: str = self._write(work)
        return result

    def list_deployments(self, *, pool: str | None = None, ids: Iterable[str] | None = None) -> list[DeploymentRecord]:
        """Stored deployments (of ``pool``, or with these ``ids``), by flow and name, with their schedules."""
        sql = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments"
        parameters: list[Any] = []
        if pool is not None:
            sql += " WHERE work_pool = ?"
            parameters.append(pool)
        sql += " ORDER BY flow, name"
        records = [_deployment(r) for r in self._read(sql, parameters)]
        if ids is not None:
            wanted = set(ids)
            records = [r for r in records if r.id in wanted]
        by_id = {r.id: r for r in records}
        if by_id:
            for dep_id, key, position, schedule, last_fire in self._read(
                "SELECT deployment_id, key, position, schedule, last_fire FROM deployment_schedules ORDER BY position"
            ):
                record = by_id.get(dep_id)
                if record is not None:
                    record.schedules.append(ScheduleState(key, position, json_or(schedule, {}), last_fire))
        return records

    def deployment(self, dep_id: str) -> DeploymentRecord:
        found = self.list_deployments(ids=[dep_id])
        if not found:
            raise DeploymentNotFoundError(f"no deployment with id {dep_id!r} in {self.location}; it was removed?")
        return found[0]

    def find(self, ref: str) -> DeploymentRecord:
        """The deployment addressed as ``flow-name/deployment-name``, by its own name
        where unique, or by id. DeploymentNotFoundError lists candidates otherwise."""
        text = ref.strip()
        every = self.list_deployments()
        exact = [d for d in every if d.full_name == text or d.id == text]
        if len(exact) == 1:
            return exact[0]
        by_name = [d for d in every if d.name == text]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            listed = ", ".join(d.full_name for d in by_name)
            raise DeploymentNotFoundError(
                f"deployment name {text!r} is ambiguous: {listed}; address it as 'flow-name/deployment-name'"
            )
        import difflib

        close = difflib.get_close_matches(text, [d.full_name for d in every] + [d.name for d in every], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DeploymentNotFoundError(
            f"no deployment {text!r} in {self.location}{hint} (list them with: flowcore deployment ls)"
        )

    def delete(self, dep_id: str, now: float | None = None) -> int:
        """Remove a deployment and its schedules; its queued runs end ``Cancelled``.
        Returns how many queued runs were cancelled. Running runs finish normally."""
        when = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> int:
            cancelled = conn.execute(
                "UPDATE deployment_runs SET state = 'Cancelled', message = 'its deployment was removed', "
                "end_time = ? WHERE deployment_id = ? AND state IN ('Scheduled', 'Late')",
                (when, dep_id),
            ).rowcount
            conn.execute("DELETE FROM deployment_schedules WHERE deployment_id = ?", (dep_id,))
            conn.execute("DELETE FROM deployments WHERE id = ?", (dep_id,))
            return int(cancelled)

        result: int = self._write(work)
        return result

    def set_paused(self, dep_id: str, paused: bool, now: float | None = None, *,
                   late_after: float = scheduler.LATE_AFTER_S) -> None:
        """Pause: no new scheduled or triggered runs (queued and running ones go on;
        ``flowcore deployment run`` still works). Resume: the fire times missed before
        the pause follow the catch-up policy; those during the pause are skipped
        (counted in the trigger feed), never backfilled."""
        when = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> None:
            if paused:
                self._pause_in(conn, dep_id, when)
            else:
                self._resume_in(conn, dep_id, when, late_after)

        self._write(work)

    def _pause_in(self, conn: sqlite3.Connection, dep_id: str, now: float) -> None:
        updated = conn.execute(
            "UPDATE deployments SET paused = 1, paused_since = ? WHERE id = ? AND paused = 0", (now, dep_id)
        ).rowcount
        if updated:
            conn.execute(_INSERT_FEED, (now, dep_id, "pause", "", "paused", None, "schedules and triggers stopped"))

    def _resume_in(self, conn: sqlite3.Connection, dep_id: str, now: float,
                   late_after: float = scheduler.LATE_AFTER_S) -> None:
        row = conn.execute(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?", (dep_id,)).fetchone()
        if row is None:
            return
        record = _deployment(row)
        if not record.paused:
            return
        since = record.paused_since if record.paused_since is not None else now
        conn.execute("UPDATE deployments SET paused = 0, paused_since = NULL WHERE id = ?", (dep_id,))
        conn.execute(_INSERT_FEED, (now, dep_id, "pause", "", "resumed", None, ""))
        for state in self._schedules_in(conn, dep_id):
            schedule = state.load()
            if since > state.last_fire:  # missed before the pause: the catch-up policy
                self._fire(conn, record, state, schedule, until=since, now=now, late_after=late_after)
            start = max(since, state.last_fire)
            during = sum(1 for _ in zip(range(10_000), schedule.fire_times(scheduler.to_datetime(start),
                                                                            scheduler.to_datetime(now)), strict=False))
            if during:
                more = "+" if during >= 10_000 else ""
                conn.execute(_INSERT_FEED, (
                    now, dep_id, "schedule", state.key, "skipped", None,
                    f"{during}{more} fire time(s) while paused ({_when(start)} to {_when(now)}) not run",
                ))
            conn.execute(
                "UPDATE deployment_schedules SET last_fire = max(last_fire, ?) WHERE deployment_id = ? AND key = ?",
                (now, dep_id, state.key),
            )

    def _schedules_in(self, conn: sqlite3.Connection, dep_id: str) -> list[ScheduleState]:
        return [
            ScheduleState(key, position, json_or(schedule, {}), last_fire)
            for key, position, schedule, last_fire in conn.execute(
                "SELECT key, position, schedule, last_fire FROM deployment_schedules WHERE deployment_id = ? "
                "ORDER BY position", (dep_id,))
        ]

    # -- scheduling -----------------------------------------------------------------------
    def schedule_due(
        self,
        now: float,
        *,
        pool: str | None = None,
        ids: Iterable[str] | None = None,
        late_after: float = scheduler.LATE_AFTER_S,
        cap: int = scheduler.CATCHUP_CAP,
    ) -> int:
        """Create the scheduled runs due at ``now`` for the unpaused deployments of
        ``pool`` (or with ``ids``), following each one's catch-up policy, and mark
        queued runs older than ``late_after`` seconds ``Late``. Idempotent and safe to
        call from several workers at once. Returns how many runs were created."""
        records = [d for d in self.list_deployments(pool=pool, ids=ids) if not d.paused]
        moment = scheduler.to_datetime(now)
        due: list[tuple[DeploymentRecord, ScheduleState, Schedule]] = []
        unreadable: list[tuple[DeploymentRecord, ScheduleState, str]] = []
        for record in records:
            for state in record.schedules:
                schedule, problem = readable_schedule(state)
                if schedule is None:
                    if (record.id, state.key) not in _told_unreadable:
                        unreadable.append((record, state, problem))
                    continue
                first = scheduler.next_fire(schedule, scheduler.to_datetime(state.last_fire))
                if first is not None and first <= moment:
                    due.append((record, state, schedule))
        stale = self._read(
            "SELECT 1 FROM deployment_runs WHERE state = 'Scheduled' AND scheduled_time < ? "
            + ("AND work_pool = ? " if pool is not None else "") + "LIMIT 1",
            (now - late_after, pool) if pool is not None else (now - late_after,),
        )
        if not due and not stale and not unreadable:
            return 0

        def work(conn: sqlite3.Connection) -> int:
            created = 0
            for record, state, problem in unreadable:
                conn.execute(_INSERT_FEED, (now, record.id, "schedule", state.key, "skipped", None,
                                            f"this worker cannot read the schedule ({problem}); it creates no "
                                            "runs of it: apply the deployment again with this flowcore version"))
            for record, state, schedule in due:
                current = conn.execute(
                    "SELECT last_fire FROM deployment_schedules WHERE deployment_id = ? AND key = ?",
                    (record.id, state.key),
                ).fetchone()
                paused = conn.execute("SELECT paused FROM deployments WHERE id = ?", (record.id,)).fetchone()
                if current is None or paused is None or paused[0]:
                    continue  # removed or paused meanwhile
                state.last_fire = float(current[0])
                created += self._fire(conn, record, state, schedule, until=now, now=now,
                                      late_after=late_after, cap=cap)
                conn.execute(
                    "UPDATE deployment_schedules SET last_fire = max(last_fire, ?) WHERE deployment_id = ? AND key = ?",
                    (now, record.id, state.key),
                )
            if stale:
                conn.execute(
                    "UPDATE deployment_runs SET state = 'Late', late = 1, message = ? "
                    "WHERE state = 'Scheduled' AND scheduled_time < ?"
                    + (" AND work_pool = ?" if pool is not None else ""),
                    (f"not started within {late_after:g} s of its scheduled time (no free worker slot, "
                     "a concurrency limit, or no worker on its pool)", now - late_after,
                     *((pool,) if pool is not None else ())),
                )
            return created

        result: int = self._write(work)
        _told_unreadable.update((record.id, state.key) for record, state, _ in unreadable)
        return result

    def _fire(self, conn: sqlite3.Connection, record: DeploymentRecord, state: ScheduleState, schedule: Schedule,
              *, until: float, now: float, late_after: float, cap: int = scheduler.CATCHUP_CAP) -> int:
        decided = scheduler.plan(
            schedule, scheduler.to_datetime(state.last_fire), scheduler.to_datetime(until),
            scheduler.to_datetime(now), record.catchup, late_after=late_after, cap=cap,
        )
        created = 0
        for at, late in decided.create:
            message = ""
            if late:
                message = (f"late: scheduled for {_when(at.timestamp())}, missed while no worker was running "
                           f"(catchup={record.catchup!r})")
            run_id, new = self._insert_run(
                conn, record, kind="schedule", key=f"schedule:{record.id}:{state.key}:{at.isoformat()}",
                parameters=record.parameters, scheduled_time=at.timestamp(), now=now, late=late, message=message,
            )
            if new:
                created += 1
                if late:
                    conn.execute(_INSERT_FEED, (now, record.id, "schedule", state.key, "fired", run_id,
                                                f"catch-up of the run scheduled for {_when(at.timestamp())}"))
        if decided.skipped:
            assert decided.first_skipped is not None and decided.last_skipped is not None
            more = " or more" if decided.more_skipped else ""
            conn.execute(_INSERT_FEED, (
                now, record.id, "schedule", state.key, "skipped", None,
                f"{decided.skipped}{more} missed fire time(s) from {_when(decided.first_skipped.timestamp())} "
                f"to {_when(decided.last_skipped.timestamp())} not run (catchup={record.catchup!r})",
            ))
        return created

    def next_wake(self, now: float, *, pool: str | None = None, ids: Iterable[str] | None = None) -> float | None:
        """The earliest next fire time of the unpaused deployments (epoch seconds), or None."""
        best: float | None = None
        for record in self.list_deployments(pool=pool, ids=ids):
            if record.paused:
                continue
            for state in record.schedules:
                schedule, _ = readable_schedule(state)
                if schedule is None:
                    continue
                first = scheduler.next_fire(schedule, scheduler.to_datetime(state.last_fire))
                if first is not None and (best is None or first.timestamp() < best):
                    best = first.timestamp()
        return best

    # -- run requests ---------------------------------------------------------------------
    def request_run(
        self,
        dep_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        kind: str = "manual",
        key: str | None = None,
        source: str = "",
        now: float | None = None,
        scheduled_time: float | None = None,
    ) -> tuple[str, bool]:
        """Queue a run of deployment ``dep_id`` with its parameters updated by
        ``parameters``; ``key`` deduplicates (a second request with the same key
        returns the first run). Returns (run id, created). DeploymentError when the
        parameters do not fit the flow; DeploymentNotFoundError for an unknown id."""
        from flowcore.deployments.deployment import FlowSignature, json_ready

        when = time.time() if now is None else now
        record = self.deployment(dep_id)
        merged = json_ready({**record.parameters, **dict(parameters or {})},
                            f"deployment {record.full_name}: the run's parameters")
        FlowSignature.from_dict(record.signature).check(merged, f"deployment {record.full_name}")
        chosen = key if key is not None else f"{kind}:{uuid.uuid4().hex}"

        def work(conn: sqlite3.Connection) -> tuple[str, bool]:
            run_id, new = self._insert_run(conn, record, kind=kind, key=chosen, parameters=merged,
                                           scheduled_time=when if scheduled_time is None else scheduled_time,
                                           now=when, late=False, message="")
            if kind != "manual":
                conn.execute(_INSERT_FEED, (when, record.id, kind, source, "fired" if new else "deduplicated",
                                            run_id, "" if new else f"a run was already requested under {chosen}"))
            return run_id, new

        result: tuple[str, bool] = self._write(work)
        return result

    def _insert_run(self, conn: sqlite3.Connection, record: DeploymentRecord, *, kind: str, key: str,
                    parameters: Mapping[str, Any], scheduled_time: float, now: float, late: bool,
                    message: str) -> tuple[str, bool]:
        run_id = uuid.uuid4().hex
        inserted = conn.execute(_INSERT_RUN, (
            run_id, record.id, key, kind, record.work_pool, "Scheduled", message, json.dumps(dict(parameters)),
            scheduled_time, now, int(late),
        )).rowcount
        if inserted:
            return run_id, True
        existing = conn.execute("SELECT id FROM deployment_runs WHERE idempotency_key = ?", (key,)).fetchone()
        return str(existing[0]), False

    def has_key(self, key: str) -> bool:
        """True when a run was already requested under idempotency ``key``."""
        return bool(self._read("SELECT 1 FROM deployment_runs WHERE idempotency_key = ?", (key,)))

    def feed_event(self, dep_id: str | None, kind: str, source: str, outcome: str, reason: str,
                   run_id: str | None = None, now: float | None = None) -> None:
        """Add a line to the trigger feed."""
        when = time.time() if now is None else now
        self._write(lambda conn: conn.execute(_INSERT_FEED, (when, dep_id, kind, source, outcome, run_id, reason)))

    # -- claiming and ending ----------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        pool: str | None,
        now: float,
        *,
        limit: int | None = None,
        ids: Iterable[str] | None = None,
    ) -> list[DeploymentRun]:
        """Move up to ``limit`` due queued runs of ``pool`` (or of deployments ``ids``)
        to ``Running`` for ``worker_id``, oldest first, in one write transaction (a run
        goes to exactly one worker). Applies each deployment's overlap policy and
        concurrency limit: a run that must wait stays queued; overlap="skip" ends it
        ``Skipped``; overlap="cancel_running" asks the running ones' workers to cancel."""
        if limit is not None and limit <= 0:
            return []
        wanted = set(ids) if ids is not None else None
        if not self._read(
            "SELECT 1 FROM deployment_runs WHERE state IN ('Scheduled', 'Late') AND scheduled_time <= ? "
            "AND (?2 IS NULL OR work_pool = ?2) LIMIT 1", (now, pool),
        ):
            return []  # the common case: a read, no write lock

        def work(conn: sqlite3.Connection) -> list[DeploymentRun]:
            candidates = [_run(r) for r in conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM deployment_runs WHERE state IN ('Scheduled', 'Late') "
                "AND (?1 IS NULL OR work_pool = ?1) AND scheduled_time <= ?2 ORDER BY scheduled_time, created "
                "LIMIT 500", (pool, now),
            )]
            running: dict[str, list[tuple[str, str | None]]] = {}
            policies: dict[str, tuple[int | None, str] | None] = {}
            claimed: list[DeploymentRun] = []
            for run in candidates:
                if wanted is not None and run.deployment_id not in wanted:
                    continue
                if run.deployment_id not in policies:
                    row = conn.execute("SELECT concurrency_limit, overlap FROM deployments WHERE id = ?",
                                       (run.deployment_id,)).fetchone()
                    policies[run.deployment_id] = None if row is None else (row[0], row[1])
                    running[run.deployment_id] = [(str(i), c) for i, c in conn.execute(
                        "SELECT id, cancel_requested FROM deployment_runs WHERE deployment_id = ? AND state = 'Running'",
                        (run.deployment_id,))]
                policy = policies[run.deployment_id]
                if policy is None:
                    conn.execute("UPDATE deployment_runs SET state = 'Cancelled', message = ?, end_time = ? "
                                 "WHERE id = ?", ("its deployment was removed", now, run.id))
                    continue
                concurrency, overlap = policy
                active = running[run.deployment_id]
                live = [i for i, cancel in active if cancel is None]
                if live and overlap == "skip":
                    reason = f"run {live[0][:8]} of this deployment was still running (overlap='skip')"
                    conn.execute("UPDATE deployment_runs SET state = 'Skipped', message = ?, end_time = ? "
                                 "WHERE id = ?", (reason, now, run.id))
                    conn.execute(_INSERT_FEED, (now, run.deployment_id, run.kind, "", "skipped", run.id, reason))
                    continue
                if live and overlap == "queue":
                    continue
                if live and overlap == "cancel_running":
                    reason = f"superseded by run {run.id[:8]} (overlap='cancel_running')"
                    for other in live:
                        conn.execute("UPDATE deployment_runs SET cancel_requested = ? WHERE id = ? AND "
                                     "cancel_requested IS NULL", (reason, other))
                    active[:] = [(i, c if c is not None else reason) for i, c in active]
                    live = []
                if concurrency is not None and len(live if overlap == "cancel_running" else active) >= concurrency:
                    continue
                if limit is not None and len(claimed) >= limit:
                    break
                updated = conn.execute(
                    "UPDATE deployment_runs SET state = 'Running', worker_id = ?, claimed_time = ?, start_time = ? "
                    "WHERE id = ? AND state IN ('Scheduled', 'Late')", (worker_id, now, now, run.id),
                ).rowcount
                if updated:
                    run.state, run.worker_id, run.claimed_time, run.start_time = "Running", worker_id, now, now
                    active.append((run.id, None))
                    claimed.append(run)
            return claimed

        result: list[DeploymentRun] = self._write(work)
        return result

    def set_pid(self, run_id: str, pid: int) -> None:
        self._write(lambda conn: conn.execute("UPDATE deployment_runs SET pid = ? WHERE id = ?", (pid, run_id)))

    def link_flow_run(self, run_id: str, flow_run_id: str) -> None:
        """Record which flow run (``flow_runs.id`` in the history) a deployment run started."""
        self._write(lambda conn: conn.execute(
            "UPDATE deployment_runs SET flow_run_id = ? WHERE id = ? AND flow_run_id IS NULL", (flow_run_id, run_id)))

    def cancel_requests(self, worker_id: str) -> list[tuple[str, str]]:
        """(run id, reason) of this worker's running runs asked to cancel."""
        return [(str(i), str(r)) for i, r in self._read(
            "SELECT id, cancel_requested FROM deployment_runs WHERE worker_id = ? AND state = 'Running' "
            "AND cancel_requested IS NOT NULL", (worker_id,))]

    def request_cancel(self, run_id: str, reason: str, now: float | None = None) -> bool:
        """Cancel a run: a queued one ends ``Cancelled`` now; a running one is stopped
        by its worker. False when the run is already final."""
        when = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("UPDATE deployment_runs SET state = 'Cancelled', message = ?, end_time = ? "
                            "WHERE id = ? AND state IN ('Scheduled', 'Late')", (reason, when, run_id)).rowcount:
                return True
            return bool(conn.execute("UPDATE deployment_runs SET cancel_requested = ? WHERE id = ? "
                                     "AND state = 'Running' AND cancel_requested IS NULL", (reason, run_id)).rowcount)

        result: bool = self._write(work)
        return result

    def finish_run(self, run_id: str, state: str, message: str = "", now: float | None = None) -> bool:
        """End a running (or queued) run in ``state``. For ``Crashed`` and ``Cancelled``,
        its flow run in the history ends so too (it could not record it: it was
        killed), with its unfinished task runs. Starts the runs chained to this one
        (DeploymentTrigger). False when the run was already final (nothing changes)."""
        when = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT deployment_id, state, flow_run_id FROM deployment_runs WHERE id = ?",
                               (run_id,)).fetchone()
            if row is None or row[1] in FINAL:
                return False
            dep_id, _, flow_run_id = row
            conn.execute("UPDATE deployment_runs SET state = ?, message = ?, end_time = ?, cancel_requested = NULL "
                         "WHERE id = ?", (state, message, when, run_id))
            if flow_run_id and state in ("Crashed", "Cancelled"):
                state_type = _STATE_TYPES[state]
                if conn.execute(
                    "UPDATE flow_runs SET state = ?, state_type = ?, message = ?, end_time = ? "
                    "WHERE id = ? AND state_type IN ('RUNNING', 'PENDING')",
                    (state, state_type, message, when, flow_run_id),
                ).rowcount:
                    conn.execute("INSERT INTO flow_run_states (flow_run_id, timestamp, type, name, message, attempt) "
                                 "VALUES (?, ?, ?, ?, ?, NULL)", (flow_run_id, when, state_type, state, message))
                    conn.execute("UPDATE task_runs SET state = ?, state_type = ?, message = ? "
                                 "WHERE flow_run_id = ? AND state_type IN ('PENDING', 'RUNNING')",
                                 (state, state_type, f"its flow run ended {state}", flow_run_id))
            self._chain(conn, dep_id, run_id, state, when)
            return True

        result: bool = self._write(work)
        return result

    def _chain(self, conn: sqlite3.Connection, dep_id: str, run_id: str, state: str, now: float) -> None:
        upstream = conn.execute("SELECT flow, name FROM deployments WHERE id = ?", (dep_id,)).fetchone()
        if upstream is None:
            return
        name = f"{upstream[0]}/{upstream[1]}"
        for row in conn.execute(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE triggers LIKE '%\"deployment\"%'").fetchall():
            target = _deployment(row)
            for trigger in target.triggers:
                if trigger.get("type") != "deployment" or trigger.get("after") != name:
                    continue
                if state not in trigger.get("states", ()):
                    continue
                source = f"{name} run {run_id[:8]} {state}"
                if target.paused:
                    conn.execute(_INSERT_FEED, (now, target.id, "after", source, "skipped", None,
                                                "the deployment is paused"))
                    continue
                parameters = {**target.parameters, **trigger.get("parameters", {})}
                new_id, new = self._insert_run(conn, target, kind="after", key=f"after:{target.id}:{run_id}",
                                               parameters=parameters, scheduled_time=now, now=now, late=False,
                                               message=f"started by {source}")
                if new:
                    conn.execute(_INSERT_FEED, (now, target.id, "after", source, "fired", new_id, ""))

    # -- workers ----------------------------------------------------------------------------
    def register_worker(self, worker_id: str, pool: str, host: str, pid: int, process_start: int, now: float) -> None:
        self._write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO deployment_workers (id, work_pool, host, pid, process_start, started, heartbeat, "
            "stopped) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)", (worker_id, pool, host, pid, process_start, now, now)))

    def heartbeat(self, worker_id: str, now: float) -> None:
        self._write(lambda conn: conn.execute(
            "UPDATE deployment_workers SET heartbeat = ? WHERE id = ?", (now, worker_id)))

    def stop_worker(self, worker_id: str, now: float) -> None:
        self._write(lambda conn: conn.execute(
            "UPDATE deployment_workers SET stopped = ?, heartbeat = ? WHERE id = ?", (now, now, worker_id)))

    def workers(self, *, live_only: bool = False) -> list[WorkerRecord]:
        sql = "SELECT id, work_pool, host, pid, process_start, started, heartbeat, stopped FROM deployment_workers"
        if live_only:
            sql += " WHERE stopped IS NULL"
        return [WorkerRecord(*row) for row in self._read(sql + " ORDER BY started")]

    def pool_is_served(self, pool: str, now: float | None = None) -> bool:
        """True when a live worker may take runs of ``pool``: a worker of that pool, or
        any ``serve()`` process (it runs its own deployments whatever their pool; which
        ones is not stored, so it counts for every pool)."""
        when = time.time() if now is None else now
        return any(w.work_pool in (pool, "*") and _worker_dead(w, when, WORKER_STALE_S) is None
                   for w in self.workers(live_only=True))

    def crash_orphans(self, now: float | None = None, *, stale_after: float = WORKER_STALE_S) -> int:
        """End ``Crashed`` the running runs whose worker is dead (its process is gone,
        on this host; its heartbeat stale, on another), and record those workers
        stopped. Returns how many runs were ended."""
        when = time.time() if now is None else now
        dead: dict[str, str] = {}
        known: set[str] = set()
        for worker in self.workers(live_only=True):
            known.add(worker.id)
            reason = _worker_dead(worker, when, stale_after)
            if reason is not None:
                dead[worker.id] = reason
        rows = self._read("SELECT id, worker_id FROM deployment_runs WHERE state = 'Running'")
        # A run whose worker is dead, or no longer registered as running (never expected).
        orphans = [(str(i), w) for i, w in rows if w in dead or w not in known]
        ended = 0
        for run_id, worker_id in orphans:
            reason = dead.get(worker_id or "", f"its worker {worker_id} is gone")
            if self.finish_run(run_id, "Crashed", reason, when):
                ended += 1
        for worker_id in dead:
            self.stop_worker(worker_id, when)
        return ended

    # -- reading runs and the feed ------------------------------------------------------------
    def runs(self, dep_id: str | None = None, *, states: Iterable[str] | None = None,
             limit: int | None = 20) -> list[DeploymentRun]:
        """Runs, newest scheduled first (of one deployment, in some states)."""
        where: list[str] = []
        parameters: list[Any] = []
        if dep_id is not None:
            where.append("deployment_id = ?")
            parameters.append(dep_id)
        if states is not None:
            chosen = list(states)
            where.append(f"state IN ({', '.join('?' * len(chosen))})")
            parameters += chosen
        sql = f"SELECT {_RUN_COLUMNS} FROM deployment_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY scheduled_time DESC, created DESC"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        return [_run(r) for r in self._read(sql, parameters)]

    def run(self, run_id: str) -> DeploymentRun:
        """The run with this id (or unique id prefix); DeploymentNotFoundError otherwise."""
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM deployment_runs WHERE id >= ? AND id < ? LIMIT 2",
                          (run_id, run_id + "\uffff"))
        if len(rows) != 1:
            what = "no" if not rows else "more than one"
            raise DeploymentNotFoundError(f"{what} deployment run with an id starting with {run_id!r}")
        return _run(rows[0])

    def feed(self, dep_id: str | None = None, *, limit: int = 50) -> list[FeedEntry]:
        """The trigger feed, newest first."""
        sql = "SELECT id, timestamp, deployment_id, kind, source, outcome, run_id, reason FROM trigger_feed"
        parameters: list[Any] = []
        if dep_id is not None:
            sql += " WHERE deployment_id = ?"
            parameters.append(dep_id)
        sql += " ORDER BY id DESC LIMIT ?"
        parameters.append(limit)
        return [FeedEntry(*row) for row in self._read(sql, parameters)]


_schedules: dict[str, Schedule] = {}


def _cached_schedule(state: ScheduleState) -> Schedule:
    """Parsing a schedule costs more than evaluating it: one parse per key per process."""
    schedule = _schedules.get(state.key)
    if schedule is None:
        if len(_schedules) > 1000:
            _schedules.clear()
        schedule = _schedules[state.key] = state.load()
    return schedule


#: (deployment id, schedule key) of unreadable schedules already written to the feed
_told_unreadable: set[tuple[str, str]] = set()


def readable_schedule(state: ScheduleState) -> tuple[Schedule | None, str]:
    """(the schedule, "") or, when this version cannot read it (a type or field from a
    newer flowcore, a hand edit), (None, why): one bad row must not stop a worker."""
    from flowcore.errors import FlowcoreError

    try:
        return _cached_schedule(state), ""
    except (FlowcoreError, KeyError, TypeError, ValueError) as exc:
        return None, str(exc)


def _refuse_trigger_loop(conn: sqlite3.Connection, deployment: Deployment) -> None:
    """DeploymentError when ``deployment``'s DeploymentTriggers, with those stored,
    make a loop (each run would start the next, without end)."""
    me = f"{deployment.flow_name}/{deployment.name}"
    upstreams: dict[str, list[str]] = {}
    for flow, name, triggers in conn.execute(
            "SELECT flow, name, triggers FROM deployments WHERE triggers LIKE '%\"deployment\"%'"):
        upstreams[f"{flow}/{name}"] = [t["after"] for t in json.loads(triggers) if t.get("type") == "deployment"]
    upstreams[me] = [d["after"] for d in (t.to_dict() for t in deployment.triggers) if d["type"] == "deployment"]
    path = [me]
    seen: set[str] = set()

    def back_to_me(current: str) -> bool:
        for upstream in upstreams.get(current, []):
            if upstream == me:
                return True
            if upstream in seen:
                continue
            seen.add(upstream)
            path.append(upstream)
            if back_to_me(upstream):
                return True
            path.pop()
        return False

    if back_to_me(me):
        steps = [f"{path[0]} starts after {path[1] if len(path) > 1 else me}"]
        steps += [f"{a} after {b}" for a, b in zip(path[1:], [*path[2:], me], strict=True)]
        raise DeploymentError(
            f"deployment {me}: its DeploymentTrigger closes a loop: {', '.join(steps)}; each run would "
            "start the next without end: remove one of these triggers"
        )


def _worker_dead(worker: WorkerRecord, now: float, stale_after: float) -> str | None:
    from flowcore.history import liveness
    from flowcore.processes import pid_alive, process_start, stat_fields

    where = f"pid {worker.pid} on {worker.host}"
    if worker.host == liveness.this_host():
        fields = stat_fields(worker.pid)
        zombie = fields is not None and fields[:1] == [b"Z"]
        if not pid_alive(worker.pid) or zombie:
            return f"its worker ({where}) died while the run was running (killed? out of memory?)"
        started = process_start(worker.pid)
        if worker.process_start and started and started != worker.process_start:
            return f"its worker ({where}) died while the run was running; the pid now names another process"
        return None
    if now - worker.heartbeat > stale_after:
        return f"no heartbeat from its worker ({where}) since {_when(worker.heartbeat)}"
    return None


def isoformat(timestamp: float | None) -> str:
    return "-" if timestamp is None else datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


__all__ = [
    "FINAL",
    "QUEUED",
    "DeploymentRecord",
    "DeploymentRun",
    "DeploymentStore",
    "FeedEntry",
    "ScheduleState",
    "WorkerRecord",
    "open_deployment_store",
    "schedule_key",
    "store_path",
]
