"""The hooks a flowcore plugin may implement (pluggy, project name ``flowcore``).

A plugin is any module or object with functions decorated by ``flowcore.hookimpl``.
Built-in backends register through these hooks exactly like third-party packages,
which are found through the entry-point group ``flowcore`` or registered with
``flowcore.plugins.register(obj)``.

Lifecycle hooks fire in the process that submitted the work (the parent), never in
a worker, once per run. Their arguments are live objects: observers must not mutate
them. An exception raised by an observer is logged and does not affect the run. When
no plugin implements a lifecycle hook, flowcore does not call it at all, so an
unobserved task pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from flowcore.backend import BackendSpec
    from flowcore.caching.storage import CacheStoreSpec
    from flowcore.calls import FlowRun, TaskCall
    from flowcore.events import RunEvent
    from flowcore.history.store import HistoryStoreSpec
    from flowcore.states import State

PROJECT_NAME = "flowcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def flowcore_backends() -> list[BackendSpec]:  # type: ignore[empty-body]
    """Return the backends this plugin provides.

    Called once when the plugin manager is first used (not at ``import flowcore``) and
    again after plugins are registered or unregistered. Return a list of
    :class:`flowcore.backend.BackendSpec`; an empty list is fine. Import heavy
    dependencies inside the spec's factory, never here. Two specs with the same name
    (from any plugins) are an error that names both plugins.
    """


@hookspec
def flowcore_cache_stores() -> list[CacheStoreSpec]:  # type: ignore[empty-body]
    """Return the cache stores this plugin provides.

    A list of :class:`flowcore.caching.storage.CacheStoreSpec`: a name and a factory
    ``factory(**options) -> store``. The built-in file store registers as ``file``.
    Select one with ``FLOWCORE_CACHE_STORE`` (options: ``FLOWCORE_CACHE_STORE_OPTIONS``,
    a JSON object) or ``[tool.flowcore] cache_store`` / ``cache_store_options``. Two
    stores with the same name are an error that names both plugins.
    """


@hookspec
def flowcore_history_stores() -> list[HistoryStoreSpec]:  # type: ignore[empty-body]
    """Return the run-history stores this plugin provides.

    A list of :class:`flowcore.history.store.HistoryStoreSpec`: a name and a factory
    ``factory(settings) -> HistoryStore`` (see :mod:`flowcore.history.store` for the
    protocol). The built-in SQLite store registers as ``sqlite``. Select one with
    ``FLOWCORE_HISTORY_STORE`` (options: ``FLOWCORE_HISTORY_STORE_OPTIONS``, a JSON
    object) or ``[tool.flowcore] history_store`` / ``history_store_options``. Called
    when the plugin manager is first used and after plugins change; import the store's
    dependencies in its factory, not here. Two stores with the same name are an error
    that names both plugins.
    """


@hookspec
def flowcore_run_events(events: Sequence[RunEvent]) -> None:
    """The run-event stream: called with a batch of :mod:`flowcore.events` records.

    Every flow run and task run reports here, on every path and backend: a flow run's
    ``FlowRunEvent`` STARTED (before each attempt of its body) and FINISHED (once,
    with the final state); a task run's ``TaskRunEvent`` SUBMITTED (when it is
    created), STARTED (if its body started) and FINISHED (once, with the final state,
    attempts, start and end times in the state, and the ``worker`` that ran it).

    Fires in the process that submitted the runs, never in a worker; on whichever
    thread settled them (the caller's, a pool's result thread, a flowcore feeder
    thread), so keep it short and hand heavy work to a thread of your own. Events of
    runs that ran in another process arrive with their results, one call per batch.

    Guaranteed: each event of a run is delivered once; a task run's SUBMITTED comes
    before its STARTED, which comes before its FINISHED; a flow run's STARTED comes
    before the SUBMITTED of its task runs, and its FINISHED after their FINISHED
    (except when the run timed out, was interrupted or its body raised: runs left on
    threads may finish later). Not guaranteed: any order between different runs.

    ``events`` is a read-only sequence (for a column map, its items are made as you
    read them): read it during the call, or copy what you need. Return value is
    ignored; an exception is logged and does not affect the run. Registering an
    implementation keeps every fast path (batches and column maps report in bulk).

    An implementation marked with ``flowcore.deferred_runs.accepts_deferred_runs``
    (the run history's) may, while every observer is so marked, receive submitted
    task runs (of a flow run, or of a ``use_backend`` block) late and in bulk: each
    run's events still once and in that order, within its flow run's STARTED and
    FINISHED, but SUBMITTED possibly together with FINISHED, and FINISHED up to a
    flush after the run ended. Its plugin calls ``flowcore.deferred_runs.flush()``
    about every second while runs are in flight (see :mod:`flowcore.deferred_runs`).
    """


@hookspec
def flowcore_flow_run_started(flow: Any, run: FlowRun) -> None:
    """Called when a flow run starts, before its body runs (and before each retry's).

    ``flow`` is the :class:`flowcore.Flow`; ``run`` describes the run (id, name,
    parameters, backend name). Return value is ignored.
    """


@hookspec
def flowcore_flow_run_finished(flow: Any, run: FlowRun, state: State[Any]) -> None:
    """Called once when a flow run reaches its final state, with that state.

    Fires after the run's task futures have finished, except when the run timed out,
    was interrupted or its body raised: then the runs that could be stopped were
    stopped, and tasks still running on threads may finish later. Return value is
    ignored.
    """


@hookspec
def flowcore_task_run_submitted(task: Any, call: TaskCall) -> None:
    """Called once per task run when it is handed to a backend or called directly
    (for each SUBMITTED event of ``flowcore_run_events``, with the run's call).

    ``call`` carries the task run id, its name, the flow run id and the submission
    time. For a task waiting on upstream futures, fires at ``.submit`` time, before
    the upstreams finish. Return value is ignored.
    """


@hookspec
def flowcore_task_run_finished(task: Any, call: TaskCall, state: State[Any]) -> None:
    """Called once per task run with its final state (after all retries), for each
    FINISHED event of ``flowcore_run_events``.

    ``state.started_at`` / ``state.finished_at`` time the body; ``call.submitted_at``
    times the submission. Fires in the parent, on whichever thread completed the
    future. Return value is ignored.
    """
