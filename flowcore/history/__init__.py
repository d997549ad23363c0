"""The run history: every flow run and task run, their states and logs, kept in a store.

On by default: the built-in SQLite store keeps ``$FLOWCORE_HOME/history.db``
(``~/.flowcore/history.db``). ``FLOWCORE_HISTORY=0`` or ``[tool.flowcore] history =
false`` turns it off. Read it with ``flowcore runs ls | show | logs | rm``, with
:func:`open_history`, or with plain ``sqlite3`` (the README documents the schema).

Modules: :mod:`~flowcore.history.records` (what is stored), :mod:`~.settings` (where
and whether), :mod:`~.store` (the store protocol, registered through the hook
``flowcore_history_stores``), :mod:`~.sqlite` (the built-in store),
:mod:`~.recorder` (the background writer fed by the run-event stream),
:mod:`~.liveness` (how a dead run is found Crashed), :mod:`~.commands` (the CLI).
Importing this package does not import sqlite3.
"""

from __future__ import annotations

from flowcore.history.records import (
    FlowRunRecord,
    LogRecord,
    StateRecord,
    TaskRunRecord,
    WorkerRecord,
)
from flowcore.history.settings import HistorySettings, current_settings, history_settings
from flowcore.history.store import HistoryStore, HistoryStoreSpec, RunDetail, open_store


def open_history(settings: HistorySettings | None = None) -> HistoryStore:
    """The configured history store, open for reading and writing (the caller closes
    it). Raises HistoryError naming the store and the fix when it cannot be opened."""
    return open_store(settings if settings is not None else history_settings())


__all__ = [
    "FlowRunRecord",
    "HistorySettings",
    "HistoryStore",
    "HistoryStoreSpec",
    "LogRecord",
    "RunDetail",
    "StateRecord",
    "TaskRunRecord",
    "WorkerRecord",
    "current_settings",
    "history_settings",
    "open_history",
    "open_store",
]
