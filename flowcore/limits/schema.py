"""The tables of tag concurrency limits: migration step 3 of ``history.db``.

Plain SQL text, no imports: :mod:`flowcore.history.sqlite` appends it to its
``MIGRATIONS``, as it does :mod:`flowcore.deployments.schema` (step 2).

``concurrency_limits``
    one row per tag: ``slots`` is how many runs holding that tag may run at once on
    this machine (0 blocks every run with the tag).
``concurrency_slots``
    one row per slot taken: the holder (one acquisition, which may hold several
    tags), the tag, how many slots it occupies, the holding process (host, pid and
    its start time in clock ticks since boot, so a reused pid is told apart), when it
    was taken and what holds it (a task run's name, or ``concurrency(...)``). A row
    whose process is gone is deleted by the next process that looks at the tag.
"""

from __future__ import annotations

LIMITS_SQL = """
CREATE TABLE concurrency_limits (
    tag     TEXT PRIMARY KEY,
    slots   INTEGER NOT NULL CHECK (slots >= 0),
    created REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE concurrency_slots (
    tag           TEXT NOT NULL,
    holder        TEXT NOT NULL,
    occupy        INTEGER NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    process_start INTEGER NOT NULL DEFAULT 0,
    acquired      REAL NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tag, holder)
) WITHOUT ROWID;
CREATE INDEX concurrency_slots_by_holder ON concurrency_slots (holder)
"""

__all__ = ["LIMITS_SQL"]
