"""The tables of deployments, their schedules, their run queue and the trigger feed.

Plain SQL text, no imports: :mod:`flowcore.history.sqlite` appends it to its
``MIGRATIONS`` (step 2), so deployments live in the same ``history.db`` as the run
history and a deployment run can be joined to its flow run.

Tables (documented for people who query the file with ``sqlite3``):

``deployments``
    one row per (flow, name): how to import the flow, default parameters, pool,
    catch-up and overlap policies, concurrency limit, paused flag, triggers (JSON).
``deployment_schedules``
    one row per schedule of a deployment, keyed by the schedule's canonical JSON:
    ``last_fire`` is the latest fire time (UTC epoch seconds) the scheduler has dealt
    with (created a run for, or skipped by the catch-up policy). Re-applying the same
    schedule keeps it, so restarts and redeploys neither lose nor repeat a fire time.
``deployment_runs``
    the run queue: one row per requested run. ``idempotency_key`` is UNIQUE:
    ``schedule:<deployment>:<schedule key>:<fire time>`` for scheduled runs,
    ``webhook:<deployment>:<Idempotency-Key>``, ``file:<deployment>:<path>:<size>:<mtime_ns>``,
    ``after:<deployment>:<upstream run id>`` and ``manual:<uuid>``. States:
    ``Scheduled`` -> (``Late``) -> ``Running`` -> ``Completed`` | ``Failed`` |
    ``Crashed`` | ``Cancelled``; or ``Skipped`` (overlap="skip"). ``flow_run_id``
    links to ``flow_runs.id`` once the flow run started.
``deployment_workers``
    workers and ``serve`` processes: host, pid, process start, heartbeat; a run
    claimed by a worker found dead is ended ``Crashed``.
``trigger_feed``
    what fired (schedule catch-up, webhook, file, chained run), which run it created,
    and what was skipped and why.
"""

from __future__ import annotations

DEPLOYMENTS_SQL = """
CREATE TABLE deployments (
    id                TEXT PRIMARY KEY,
    flow              TEXT NOT NULL,
    name              TEXT NOT NULL,
    entrypoint        TEXT NOT NULL,
    import_path       TEXT NOT NULL DEFAULT '',
    working_dir       TEXT NOT NULL DEFAULT '',
    parameters        TEXT NOT NULL DEFAULT '{}',
    signature         TEXT NOT NULL DEFAULT '{}',
    work_pool         TEXT NOT NULL DEFAULT 'default',
    tags              TEXT NOT NULL DEFAULT '[]',
    description       TEXT NOT NULL DEFAULT '',
    paused            INTEGER NOT NULL DEFAULT 0,
    paused_since      REAL,
    concurrency_limit INTEGER,
    catchup           TEXT NOT NULL DEFAULT 'latest',
    overlap           TEXT NOT NULL DEFAULT 'allow',
    triggers          TEXT NOT NULL DEFAULT '[]',
    backend           TEXT,
    backend_options   TEXT NOT NULL DEFAULT '{}',
    created           REAL NOT NULL,
    updated           REAL NOT NULL,
    UNIQUE (flow, name)
);
CREATE INDEX deployments_by_pool ON deployments (work_pool);

CREATE TABLE deployment_schedules (
    deployment_id TEXT NOT NULL,
    key           TEXT NOT NULL,
    position      INTEGER NOT NULL,
    schedule      TEXT NOT NULL,
    last_fire     REAL NOT NULL,
    PRIMARY KEY (deployment_id, key)
) WITHOUT ROWID;

CREATE TABLE deployment_runs (
    id               TEXT PRIMARY KEY,
    deployment_id    TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    work_pool        TEXT NOT NULL,
    state            TEXT NOT NULL,
    message          TEXT NOT NULL DEFAULT '',
    parameters       TEXT NOT NULL DEFAULT '{}',
    scheduled_time   REAL NOT NULL,
    created          REAL NOT NULL,
    late             INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    claimed_time     REAL,
    start_time       REAL,
    end_time         REAL,
    pid              INTEGER,
    cancel_requested TEXT,
    flow_run_id      TEXT
);
CREATE INDEX deployment_runs_due ON deployment_runs (state, work_pool, scheduled_time);
CREATE INDEX deployment_runs_by_deployment ON deployment_runs (deployment_id, scheduled_time);
CREATE INDEX deployment_runs_by_flow_run ON deployment_runs (flow_run_id);

CREATE TABLE deployment_workers (
    id            TEXT PRIMARY KEY,
    work_pool     TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    process_start INTEGER NOT NULL DEFAULT 0,
    started       REAL NOT NULL,
    heartbeat     REAL NOT NULL,
    stopped       REAL
);

CREATE TABLE trigger_feed (
    id            INTEGER PRIMARY KEY,
    timestamp     REAL NOT NULL,
    deployment_id TEXT,
    kind          TEXT NOT NULL,
    source        TEXT NOT NULL DEFAULT '',
    outcome       TEXT NOT NULL,
    run_id        TEXT,
    reason        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX trigger_feed_by_deployment ON trigger_feed (deployment_id, id)
"""

__all__ = ["DEPLOYMENTS_SQL"]
