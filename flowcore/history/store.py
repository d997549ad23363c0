"""The history store protocol, and the registration record of a store.

A store keeps flow runs, task runs, state changes and run logs. The built-in one is
SQLite (:mod:`flowcore.history.sqlite`); another (PostgreSQL for a team) is a plugin
that returns a :class:`HistoryStoreSpec` from the hook ``flowcore_history_stores`` and
is selected with ``FLOWCORE_HISTORY_STORE`` or ``[tool.flowcore] history_store``.

Contract of every store:

- Safe to use from several processes at once (each process has its own store object;
  one thread of a process writes, others may read).
- :meth:`HistoryStore.write_events` applies a whole :class:`HistoryBatch` or nothing,
  waits out other writers (never surfaces "database is locked" on a busy store), and
  raises :class:`~flowcore.errors.HistoryError` only when it cannot write at all (the
  message names the store and the fix).
- Readers see a flow run recorded as running whose process is gone as ``Crashed``
  (see :mod:`flowcore.history.liveness`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowcore.errors import ConfigurationError, HistoryError
from flowcore.history.records import FlowRunRecord, HistoryBatch, LogRecord, TaskRunRecord

if TYPE_CHECKING:
    from flowcore.history.settings import HistorySettings


@dataclass(slots=True)
class RunDetail:
    """A flow run with its task runs (ordered by start) and its state history."""

    run: FlowRunRecord
    task_runs: list[TaskRunRecord] = field(default_factory=list)


class HistoryStore(abc.ABC):
    """Where the run history is kept. See the module docstring for the contract."""

    #: where the store is, for messages (a file path, a database URL without password)
    location: str = ""

    @abc.abstractmethod
    def write_events(self, batch: HistoryBatch) -> None:
        """Apply ``batch`` in one transaction (upserts: a field given as ``None``
        keeps the stored value). Blocks while other writers hold the store; raises
        :class:`~flowcore.errors.HistoryError` when the store cannot be written.

        Besides single task runs, a batch carries ``task_run_blocks`` (many plainly
        completed runs in one record: keep them so, or store
        :meth:`~flowcore.history.records.TaskRunBlockWrite.writes` one row each) and
        ``pending_maps`` (a map's runs not finished yet, replaced as they finish; a
        store may ignore them and show such runs only once they end)."""

    @abc.abstractmethod
    def list_runs(
        self,
        *,
        flow: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = 20,
    ) -> list[FlowRunRecord]:
        """Flow runs, newest start first, with ``task_counts`` filled. ``state``
        matches a state name or type, case-insensitively (``Crashed`` includes runs
        found dead when read); ``since`` is a time (runs started at or after it)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunDetail:
        """The flow run whose id is ``run_id`` or starts with it (or whose name is
        ``run_id``), its state history and task runs. Raises
        :class:`~flowcore.errors.RunNotFoundError` when none or several match (the
        message lists them)."""

    def get_flow_run(self, run_id: str) -> FlowRunRecord:
        """The flow run :meth:`get_run` finds for ``run_id``, its state as read now
        (crashed runs shown so), without its task runs, state history or task counts:
        what a poll needs (``flowcore runs logs --follow``). This default calls
        :meth:`get_run`; a store overrides it to skip reading the task runs."""
        return self.get_run(run_id).run

    @abc.abstractmethod
    def logs(
        self,
        flow_run_id: str,
        *,
        after_id: int = 0,
        level: int = 0,
        task: str | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        """Log records of a flow run (its own and its task runs'), oldest first: those
        with id above ``after_id`` (to follow), at ``level`` or above, of task runs of
        the task named ``task`` (or whose run name is ``task``) when given."""

    @abc.abstractmethod
    def delete_older_than(self, cutoff: float) -> int:
        """Delete flow runs (with their task runs, states and logs) that ended before
        ``cutoff``, and task runs and logs outside flow runs older than it. Runs still
        alive are kept. Returns how many flow runs were deleted."""

    def compact(self) -> tuple[int, int]:
        """Give back to the file system the space that deleted runs left (after
        :meth:`delete_older_than`); returns the storage's size in bytes before and after.
        A store that cannot raises NotImplementedError (the built-in one can)."""
        raise NotImplementedError(f"history store {type(self).__name__} cannot compact its storage")

    def result_location(self, task_run_id: str) -> tuple[str, str] | None:
        """``(storage, key)`` of the result the task run ``task_run_id`` kept
        (``persist_result``), or None. A store that does not record kept results
        raises NotImplementedError (the built-in one does)."""
        raise NotImplementedError(f"history store {type(self).__name__} does not record kept results")

    def kept_results(self, flow_run_id: str) -> dict[tuple[str, str], tuple[str, str]]:
        """``{(task, run name): (storage, key)}`` of the task runs of the flow run
        ``flow_run_id`` (a full id) that completed with a kept result."""
        raise NotImplementedError(f"history store {type(self).__name__} does not record kept results")

    def defer_upkeep(self) -> None:  # noqa: B027 - optional for stores without upkeep
        """The caller (the history writer) promises to call :meth:`upkeep` whenever no
        one waits for its writes: the store may leave its housekeeping (SQLite's WAL
        checkpoints) out of :meth:`write_events` from now on."""

    def upkeep(self) -> None:  # noqa: B027 - optional for stores without upkeep
        """Housekeeping left out of :meth:`write_events` (see :meth:`defer_upkeep`) that
        is due now. Never raises for a busy store (it tries again at a later call)."""

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections; the store is not used afterwards."""


@dataclass(frozen=True)
class HistoryStoreSpec:
    """A history store a plugin provides: ``factory(settings) -> HistoryStore``, where
    ``settings`` is the resolved :class:`~flowcore.history.settings.HistorySettings`
    (home directory, store options)."""

    name: str
    factory: Callable[[HistorySettings], HistoryStore]
    description: str = ""


def open_store(settings: HistorySettings) -> HistoryStore:
    """The store ``settings`` names, created by its plugin. Raises ConfigurationError
    for an unknown store name, HistoryError when it cannot be opened."""
    from flowcore.registry import get_registry

    table = get_registry().history_stores()
    entry = table.get(settings.store)
    if entry is None:
        registered = ", ".join(sorted(table)) or "(none)"
        raise ConfigurationError(
            f"unknown history store {settings.store!r}; registered: {registered} "
            "(set FLOWCORE_HISTORY_STORE or [tool.flowcore] history_store to one of them)"
        )
    spec: HistoryStoreSpec = entry[0]
    try:
        return spec.factory(settings)
    except (HistoryError, ConfigurationError):
        raise
    except TypeError as exc:
        raise ConfigurationError(f"invalid options for history store {settings.store!r}: {exc}") from exc


__all__ = ["HistoryStore", "HistoryStoreSpec", "RunDetail", "open_store"]
