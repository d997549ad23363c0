"""Task results kept on request (``persist_result``) and flow runs resumed from them.

Contracts:

* A task run keeps its result when its task's ``persist_result`` is True, or is None
  and its flow's is True; a ``result_storage`` given without ``persist_result`` turns
  it on too (as in Prefect). ``persist_result=False`` always wins.
* The result is written where the run ran (the worker), right after the body
  completed, to ``result_storage``: a directory (a :class:`~flowcore.caching.store.FileStore`
  there), the name of a registered cache store (``flowcore_cache_stores`` hook, made
  with no options), or a cache store object. Default: ``FLOWCORE_RESULTS_DIR``, else
  ``results/`` in the flowcore home (``~/.flowcore/results``).
* The key is the first 32 hex digits of BLAKE2b(task run id): one entry per run, never
  shared. The run's final state carries ``result_location = (storage, key)``, where
  ``storage`` is ``file:<absolute directory>`` or ``store:<name>``; the run history
  records it (table ``task_run_results``).
* A result that cannot be pickled or written fails the run with
  :class:`~flowcore.errors.ResultPersistenceError` naming the task and the fix.
* A resumed flow run (:func:`resume`, ``flowcore run --resume RUN_ID``) looks each task
  run up by ``(task name, run name)`` among the completed, kept runs of the earlier
  flow run: a match returns the kept value without running the body, in state
  ``Resumed`` (type COMPLETED, message ``resumed from <run>``, the same location).
  Run names are ``<task>-<n>`` in submission order per task, so this matches runs of
  a flow that submits in the same order each time; a flow whose submission order
  changes (``as_completed`` driving submits, random order) can match a different run.
  Only the resumed flow's own task runs are matched, not its subflows'.

This module imports only the standard library; the stores load on first use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from flowcore.context import _resuming, resuming
from flowcore.errors import ResultNotFoundError, ResultPersistenceError

if TYPE_CHECKING:
    from flowcore.calls import TaskCall
    from flowcore.flows import Flow
    from flowcore.states import State

ENV_RESULTS_DIR = "FLOWCORE_RESULTS_DIR"
#: the state name of a run whose kept result was reused by a resumed flow run
RESUMED = "Resumed"


@dataclass(frozen=True)
class ResultPlan:
    """What a flow run says about its task runs' results (travels with its calls on
    :class:`~flowcore.calls.FlowRun`): the flow's ``persist_result`` default, its
    storage (a resolved label, or None), and the runs it resumes."""

    persist: bool | None = None
    storage: str | None = None
    resume_from: str | None = None
    #: ``(task name, run name) -> (storage, key)`` of the resumed run's kept results
    resumed: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resume:
    run_id: str
    resumed: Mapping[tuple[str, str], tuple[str, str]]


def plan_for_flow(options: Any, parent_plan: ResultPlan | None) -> ResultPlan | None:
    """The plan of a new flow run with ``options`` (FlowOptions): None when neither the
    flow nor a resume asks for anything (its runs keep their fast paths). A subflow
    without options of its own inherits its parent's persistence, not its resume."""
    resuming = _resuming.get()
    if resuming is not None:
        _resuming.set(None)  # only the outermost flow run resumes
    persist, storage = options.persist_result, options.result_storage
    if persist is None and storage is None and resuming is None:
        if parent_plan is None or not parent_plan.persist:
            return None
        return ResultPlan(parent_plan.persist, parent_plan.storage)
    if persist is None and storage is not None:
        persist = True
    label = storage_label(storage) if persist else None
    if resuming is None:
        return ResultPlan(persist, label)
    return ResultPlan(persist, label, resuming.run_id, resuming.resumed)


# -- where results go ------------------------------------------------------------------

_labels: dict[Any, str] = {}
_stores: dict[str, Any] = {}
_lock = threading.Lock()


def default_results_dir() -> str:
    """``FLOWCORE_RESULTS_DIR``, else ``results`` in the flowcore home (absolute)."""
    given = os.environ.get(ENV_RESULTS_DIR, "").strip()
    if given:
        return os.path.abspath(os.path.expanduser(given))
    from flowcore.history.settings import history_settings

    return os.fspath(history_settings().home / "results")


def storage_label(storage: Any) -> str:
    """The label that names ``storage`` (a ``result_storage`` value) in run states and
    the run history: ``file:<absolute directory>`` or ``store:<name>``. A store object
    other than a ``FileStore`` is registered in this process under ``object:<id>``
    (its results load only here)."""
    if storage is None:
        return "file:" + default_results_dir()
    if isinstance(storage, (str, os.PathLike)):
        text = os.fspath(storage)
        if isinstance(text, str) and os.sep not in text and not os.path.isdir(text) and _is_store_name(text):
            return "store:" + text
        return "file:" + os.path.abspath(os.path.expanduser(text))
    from flowcore.caching.store import FileStore

    if isinstance(storage, FileStore):
        return "file:" + os.path.abspath(storage.directory)
    label = f"object:{id(storage):x}"
    with _lock:
        _stores[label] = storage
    return label


def _is_store_name(text: str) -> bool:
    from flowcore.registry import get_registry

    return text in get_registry().cache_stores() and text != "file"


def store_for(label: str) -> Any:
    """The cache store a label names (made once per process)."""
    store = _stores.get(label)
    if store is not None:
        return store
    kind, _, where = label.partition(":")
    if kind == "file":
        from flowcore.caching.store import FileStore

        store = FileStore(where)
    elif kind == "store":
        from flowcore.caching.storage import create_store

        store = create_store(where, {})
    else:
        raise ResultNotFoundError(
            f"result storage {label!r} was a store object of another process; it cannot be opened here"
        )
    with _lock:
        return _stores.setdefault(label, store)


def result_key(task_run_id: str) -> str:
    """The store key of a task run's kept result: 32 hex digits of BLAKE2b(id)."""
    from hashlib import blake2b  # not at import flowcore: hashlib loads OpenSSL (~3 ms)

    return blake2b(task_run_id.encode(), digest_size=16).hexdigest()


# -- in the engine ---------------------------------------------------------------------


def involved(call: TaskCall) -> bool:
    """Whether results concern ``call`` (cheap: run by the engine on every run)."""
    if call.task.keeps_results:
        return True
    flow_run = call.flow_run
    return flow_run is not None and flow_run.results is not None


def _plan(call: TaskCall) -> tuple[str | None, tuple[str, str] | None, str]:
    """``(storage label or None, resumed location or None, resumed run id)``."""
    options = call.task.options
    flow_run = call.flow_run
    plan = flow_run.results if flow_run is not None else None
    resumed: tuple[str, str] | None = None
    source = ""
    if plan is not None and plan.resumed:
        resumed = plan.resumed.get((call.task.name, call.task_run_name))
        source = plan.resume_from or ""
    persist = options.persist_result
    if persist is None:
        persist = True if options.result_storage is not None else (plan.persist if plan is not None else None)
    if not persist:
        return None, resumed, source
    if options.result_storage is not None:
        label = _label_cached(options.result_storage)
    elif plan is not None and plan.storage is not None:
        label = plan.storage
    else:
        label = _label_cached(None)
    return label, resumed, source


def _label_cached(storage: Any) -> str:
    try:
        ident: Any = (storage, os.environ.get(ENV_RESULTS_DIR), os.environ.get("FLOWCORE_HOME"), os.getcwd())
        hash(ident)
    except TypeError:
        return storage_label(storage)
    label = _labels.get(ident)
    if label is None:
        label = _labels[ident] = storage_label(storage)
    return label


def _resumed_state(call: TaskCall, location: tuple[str, str], source: str) -> State[Any] | None:
    """The ``Resumed`` state of ``call`` from its kept result, or None (with a warning)
    when the entry cannot be read: the run then runs its body."""
    from flowcore.states import State, StateType

    started = time.time()
    try:
        found, value = store_for(location[0]).load(location[1])
    except Exception as exc:  # a store that is gone: run the body instead
        found, value = False, exc
    if not found:
        from flowcore.engine import task_run_logger

        task_run_logger(call).warning(
            "cannot resume %r from run %s: its kept result %s/%s is not readable; running it",
            call.task_run_name, source, location[0], location[1],
        )
        return None
    return State(
        StateType.COMPLETED, RESUMED, f"resumed from {source}", data=value, started_at=started,
        finished_at=time.time(), attempts=0, result_location=location,
    )


def keep(call: TaskCall, state: State[Any], label: str) -> State[Any]:
    """Write a completed run's value to the storage ``label`` names; the state with its
    ``result_location``, or a Failed state (ResultPersistenceError) if it cannot be kept."""
    if not state.is_completed():
        return state
    from flowcore.caching.store import CacheEntry
    from flowcore.states import DeferredResult

    value = state.data
    if isinstance(value, DeferredResult):
        value = value.load()
    key = result_key(call.task_run_id)
    try:
        store = store_for(label)
        written = store.write(key, CacheEntry(key, call.task.name, value, time.time(), None))
    except Exception as exc:
        return _not_kept(call, state, f"its storage {label} failed: {type(exc).__name__}: {exc}", exc)
    if written:
        return replace(state, result_location=(label, key))
    reason = f"it could not be written to {label}"
    try:
        import cloudpickle

        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        return _not_kept(
            call, state,
            f"its value of type {type(value).__name__} cannot be pickled ({type(exc).__name__}: {exc}); "
            "return plain data or set persist_result=False", exc,
        )
    return _not_kept(call, state, reason + " (see the warning above)", None)


def _not_kept(call: TaskCall, state: State[Any], reason: str, cause: BaseException | None) -> State[Any]:
    from flowcore.engine import failure_state

    error = ResultPersistenceError(
        f"task {call.task.name!r}: run {call.task_run_name!r} completed but its result cannot be "
        f"kept (persist_result=True): {reason}"
    )
    error.__cause__ = cause
    failed = failure_state(error, False)
    return replace(failed, started_at=state.started_at, finished_at=time.time(), attempts=state.attempts)


def run_with_results(call: TaskCall, body: Callable[[TaskCall], State[Any]]) -> State[Any]:
    """``body(call)`` (the engine's run), resumed from a kept result or its result kept
    as the call's task and flow ask (see the module docstring)."""
    label, resumed, source = _plan(call)
    if resumed is not None:
        state = _resumed_state(call, resumed, source)
        if state is not None:
            return state
    state = body(call)
    return keep(call, state, label) if label is not None else state


async def run_with_results_async(
    call: TaskCall, body: Callable[[TaskCall], Coroutine[Any, Any, State[Any]]]
) -> State[Any]:
    """:func:`run_with_results` for a coroutine task."""
    label, resumed, source = _plan(call)
    if resumed is not None:
        state = _resumed_state(call, resumed, source)
        if state is not None:
            return state
    state = await body(call)
    return keep(call, state, label) if label is not None else state


# -- reading them back -----------------------------------------------------------------


def load_result(task_run_id: str, *, store: Any = None) -> Any:
    """The kept result of the task run ``task_run_id`` (a full id), read from the
    storage the run history recorded for it. ``store``: a history store (default: the
    configured one). Raises :class:`~flowcore.errors.ResultNotFoundError` when the run
    kept no result or its entry is gone. Entries are pickles: load only from storage
    you trust."""
    history = store if store is not None else _history_store()
    try:
        location = history.result_location(task_run_id)
    finally:
        if store is None:
            history.close()
    if location is None:
        raise ResultNotFoundError(
            f"task run {task_run_id!r} kept no result (it ran without persist_result=True, "
            "did not complete, or is not in this history)"
        )
    return load_location(location)


def load_location(location: tuple[str, str]) -> Any:
    """The value stored at ``(storage, key)``; ResultNotFoundError if it is gone."""
    found, value = store_for(location[0]).load(location[1])
    if not found:
        raise ResultNotFoundError(f"the kept result {location[1]} is no longer in {location[0]}")
    return value


def _history_store() -> Any:
    from flowcore.history import open_history

    return open_history()


def resumable_results(run_id: str, *, store: Any = None) -> tuple[str, dict[tuple[str, str], tuple[str, str]]]:
    """``(full run id, {(task, run name): (storage, key)})`` of the completed task runs
    of flow run ``run_id`` (any unique prefix) that kept their results."""
    history = store if store is not None else _history_store()
    try:
        full = history.get_run(run_id).run.id
        return full, history.kept_results(full)
    finally:
        if store is None:
            history.close()


def recorded_parameters(run_id: str, flow: Flow[..., Any] | None = None) -> dict[str, Any]:
    """The parameters recorded for flow run ``run_id`` (any unique prefix): the values
    JSON could hold as they were, the others as their ``repr()`` (pass those again).
    With ``flow``: ConfigurationError unless ``run_id`` is a run of that flow (checked
    first, so that a resume of the wrong flow says so instead of refusing the other
    flow's parameters)."""
    history = _history_store()
    try:
        recorded = history.get_run(run_id).run
    finally:
        history.close()
    if flow is not None:
        _check_same_flow(recorded.id, recorded.flow, flow)
    return dict(recorded.parameters or {})


def _check_same_flow(run_id: str, recorded_flow: str, flow: Flow[..., Any]) -> None:
    if recorded_flow != flow.name:
        from flowcore.errors import ConfigurationError

        raise ConfigurationError(
            f"run {run_id[:8]} is a run of flow {recorded_flow!r}, not of {flow.name!r}; resume it with that flow"
        )


def resume(flow: Flow[..., Any], run_id: str, /, **parameters: Any) -> Any:
    """Run ``flow`` again as a continuation of its earlier run ``run_id``: with that
    run's recorded parameters, updated by ``parameters``, and each task run that
    completed with a kept result there returned from it instead of running (see the
    module docstring for how runs are matched). Returns what calling the flow returns
    (pass ``return_state=True`` for the state): for an async flow called where a loop
    runs, a coroutine to await, which resumes while it runs."""
    history = _history_store()
    try:
        recorded = history.get_run(run_id).run
        full = recorded.id
        kept = history.kept_results(full)
    finally:
        history.close()
    _check_same_flow(full, recorded.flow, flow)
    arguments = dict(recorded.parameters or {})
    arguments.update(parameters)
    plan = _Resume(full, kept)
    from flowcore.coroutines import in_async_context

    if flow.isasync and in_async_context():
        # The call gives a coroutine: the resume must hold while it runs, not only
        # while it is made (``await resume(...)`` in async code).
        return _resumed(flow, plan, arguments)
    token = _resuming.set(plan)
    try:
        return flow(**arguments)
    finally:
        _resuming.reset(token)


async def _resumed(flow: Flow[..., Any], plan: _Resume, arguments: dict[str, Any]) -> Any:
    token = _resuming.set(plan)
    try:
        return await flow(**arguments)
    finally:
        _resuming.reset(token)


__all__ = [
    "RESUMED",
    "ResultPlan",
    "keep",
    "load_location",
    "load_result",
    "recorded_parameters",
    "result_key",
    "resumable_results",
    "resume",
    "resuming",
    "storage_label",
    "store_for",
]
