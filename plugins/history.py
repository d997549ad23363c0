"""The built-in run history, registered like any plugin: the ``sqlite`` history store
(hook ``flowcore_history_stores``) and the observer that records every run
(hook ``flowcore_run_events``, see :mod:`flowcore.history.recorder`).

The observer is registered only when history is on as flowcore loads its plugins (its
first flow run, usually): with ``FLOWCORE_HISTORY=0`` or ``[tool.flowcore] history =
false`` nothing observes the run-event stream and runs keep their unobserved fast
paths. While it is registered, the settings are read again as each top-level flow run
starts, so turning history off later stops the recording (it is not turned on later in
a process that started with it off).

Importing this module imports no sqlite3: the store's factory does, when the writer
thread opens the store for the first batch of events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flowcore.deferred_runs import accepts_deferred_runs, set_waker
from flowcore.history.recorder import recorder
from flowcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from flowcore.events import RunEvent
    from flowcore.history.settings import HistorySettings
    from flowcore.history.store import HistoryStore


def _history_on() -> bool:
    from flowcore.history.settings import current_settings

    try:
        return current_settings().enabled
    except Exception:  # a bad setting: the recorder says so when the first run starts
        return True


if _history_on():
    _accept = recorder.accept
    recorder.install_log_handler()
    set_waker(recorder.wake_for_deferred)  # runs of use_backend blocks are deferred too

    @hookimpl
    @accepts_deferred_runs  # the writer flushes them at each drain (flowcore.deferred_runs)
    def flowcore_run_events(events: Sequence[RunEvent]) -> None:
        _accept(events)


def _sqlite_store(settings: HistorySettings) -> HistoryStore:
    from flowcore.history.sqlite import open_sqlite_store

    return open_sqlite_store(settings)


@hookimpl
def flowcore_history_stores() -> list[Any]:
    from flowcore.history.store import HistoryStoreSpec

    return [
        HistoryStoreSpec(
            name="sqlite",
            factory=_sqlite_store,
            description="one SQLite file, $FLOWCORE_HOME/history.db (WAL; several processes may write)",
        )
    ]
