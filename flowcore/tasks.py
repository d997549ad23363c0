"""``@task``: a function with retries, timeouts, hooks and run tracking.

* ``t(x)`` runs inline and returns the value (raises the task's own exception after
  its retries), inside or outside a flow.
* ``t.submit(x)`` hands the call to the current backend and returns a
  :class:`~flowcore.futures.TaskFuture`; it needs a flow run or a ``use_backend``
  block.
* ``t.map(xs)`` submits one call per element.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterable
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, Unpack, overload

from flowcore import deferred_runs, direct_runs, registry
from flowcore.annotations import allow_failure
from flowcore.calls import (
    UNSCOPED_RUN_NUMBERS,
    FlowRun,
    TaskCall,
    reserve_run,
    reserve_run_numbers,
    run_id_prefix,
)
from flowcore.context import FlowRunContext, TaskRunContext, _scope, _task_run, submission_scope
from flowcore.coroutines import handed_to_a_runner, in_async_context, run_sync, running_loop
from flowcore.errors import CrashedError, MissingContextError
from flowcore.limits import limited_tags

if TYPE_CHECKING:
    from flowcore.caching.policies import CacheContext
    from flowcore.context import RunScope
    from flowcore.dispatch import Dispatcher
    from flowcore.futures import FutureList, TaskFuture
    from flowcore.option_inputs import TaskOptionInputs
    from flowcore.options import TaskOptions
    from flowcore.options import exponential_backoff as exponential_backoff  # Prefect's path
    from flowcore.states import State
else:

    def __getattr__(name: str) -> Any:
        # flowcore.options (the option records and their validation) loads with the
        # first decoration, not with ``import flowcore``. Type checkers see the import above.
        if name == "exponential_backoff":
            from flowcore.options import exponential_backoff

            globals()[name] = exponential_backoff
            return exponential_backoff
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")



class Task(Generic[P, R]):
    """A function wrapped with run options. Create with :func:`task`.

    Attributes:
        fn: the wrapped function.
        options: the validated :class:`~flowcore.options.TaskOptions`.
    """

    def __new__(cls, fn: Callable[P, R], options: TaskOptions) -> Task[P, R]:
        # An ``async def`` function makes an AsyncTask (its own __call__), so that the
        # direct-call fast path of synchronous tasks pays nothing for async support.
        if cls is Task and inspect.iscoroutinefunction(fn):
            return object.__new__(AsyncTask)
        return object.__new__(cls)

    def __init__(self, fn: Callable[P, R], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        #: the function is a coroutine function: its runs are awaited on an event loop
        self.isasync = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)
        o = options
        #: the engine may call the function once, directly: no retries, timeout or cache
        self.single_attempt = o.retries == 0 and o.timeout_seconds is None and o.cache is None
        # Direct calls skip the engine entirely when nothing needs it. A tagged task
        # does so while none of its tags has a concurrency limit (looked up per call).
        plain = (
            self.single_attempt
            and not o.log_prints
            and not o.on_completion
            and not o.on_failure
            and not o.on_running
        )
        #: the task's own options keep its results (flowcore.results): never a fast path
        self.keeps_results = o.persist_result is True or (
            o.result_storage is not None and o.persist_result is not False
        )
        plain = plain and not self.keeps_results
        self._plain = plain and not o.tags
        self._plain_if_unlimited = plain and bool(o.tags)
        #: prints are never captured, whatever the flow says (``log_prints=False``)
        self._prints_off = o.log_prints is False

    # The signature and what the call paths read from it are computed on first use: a
    # worker that unpickles a task to run it (each run, for a task that travels by
    # value) never needs them. Once computed they are plain instance attributes.
    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The wrapped function's signature."""
        return inspect.signature(self.fn)

    @functools.cached_property
    def _max_args(self) -> int:
        """How many positional arguments a call may pass, or -1 when the signature is
        not plain (positional-only calls of a plain one are checked by counting, much
        cheaper than Signature.bind on the submit hot path)."""
        parameters = self.signature.parameters.values()
        plain = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
        return len(parameters) if plain else -1

    @functools.cached_property
    def _min_args(self) -> int:
        """How many positional arguments a call must pass (-1: not a plain signature)."""
        if self._max_args < 0:
            return -1
        return sum(1 for p in self.signature.parameters.values() if p.default is p.empty)

    @functools.cached_property
    def _names(self) -> list[str]:
        return list(self.signature.parameters)

    @functools.cached_property
    def _defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self.signature.parameters.items() if p.default is not p.empty}

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def tags(self) -> frozenset[str]:
        return self.options.tags

    # -- calling ------------------------------------------------------------
    def _direct_path(self, scope: Any, return_state: bool) -> tuple[FlowRun | None, bool, int]:
        """For a direct call in ``scope``: its flow run, whether prints are captured, and
        how it is observed (_UNOBSERVED / _BATCHED may take the short path; _FULL: the engine)."""
        flow_run = scope.flow_run if scope is not None else None
        log_prints = self.options.log_prints
        if log_prints is None:
            log_prints = scope.log_prints if scope is not None else False
        observation = (
            _observation()
            if (self._plain or (self._plain_if_unlimited and not limited_tags(self.options.tags)))
            and not return_state and not log_prints and (flow_run is None or flow_run.results is None)
            else _FULL
        )
        return flow_run, bool(log_prints), observation

    # Typing: the ParamSpec overload checks arguments against the function; the
    # return_state / wait_for variants keep the return type (extra keywords cannot be
    # combined with P.kwargs in one signature).
    # An async task's R is a coroutine type: its futures and states hold what the
    # coroutine returns (T), and awaiting its call gives T (the self-typed overloads).
    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(
        self: Task[P, Coroutine[Any, Any, T]], *args: Any, return_state: Literal[True], **kwargs: Any
    ) -> Coroutine[Any, Any, State[T]]: ...

    @overload
    def __call__(self, *args: Any, return_state: Literal[True], **kwargs: Any) -> State[R]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run inline and return the value (``return_state=True``: the final State)."""
        scope = _scope.get()
        # The common case, inlined (it is _direct_path's _BATCHED answer): a plain task
        # called in a flow body while only run-event observers (the history) watch.
        if self._plain and scope is not None and "return_state" not in kwargs:
            flow_run = scope.flow_run
            if (
                flow_run is not None
                and flow_run.results is None
                and (self._prints_off or not scope.log_prints)
                and (registry.built or registry.get_registry()).batches_direct_runs
            ):
                return direct_runs.call(self, args, kwargs, flow_run)
        return_state = kwargs.pop("return_state", False) if "return_state" in kwargs else False
        if scope is None:  # in a task body on a pool thread or in a worker: its flow run's
            scope = submission_scope()
        flow_run, log_prints, observation = self._direct_path(scope, return_state)
        if observation == _BATCHED and flow_run is not None:
            return direct_runs.call(self, args, kwargs, flow_run)
        if observation == _UNOBSERVED:
            token = _task_run.set(TaskRunContext(self, None, args, kwargs, flow_run))
            try:
                return self.fn(*args, **kwargs)
            except TypeError:
                # Free on success: only a failing call pays to tell bad arguments (named
                # after the task) from a TypeError raised inside the body.
                self.check_arguments(args, kwargs)
                raise
            except SystemExit as exc:
                # As on the engine's path (flowcore.engine.exit_state): the run crashes,
                # the flow and the process go on.
                from flowcore.engine import exit_message

                raise CrashedError(f"task {self.name!r}: {exit_message(exc)}") from exc
            finally:
                _task_run.reset(token)
        self.check_arguments(args, kwargs)  # before any attempt, retry or hook
        call = self.make_call(args, kwargs, flow_run, log_prints)
        from flowcore.engine import run_call
        from flowcore.events import current_worker
        from flowcore.reporting import report_final_state

        _report_submitted(call)
        state = run_call(call)
        report_final_state(call, state, None, current_worker())
        if return_state:
            _log_returned_failure(call, state)
            return state
        return state.result()

    @overload
    def submit(  # type: ignore[overload-overlap]
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskFuture[T]: ...

    @overload
    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]: ...

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]], *args: Any, return_state: Literal[True], **kwargs: Any
    ) -> State[T]: ...

    @overload
    def submit(self, *args: Any, return_state: Literal[True], **kwargs: Any) -> State[R]: ...

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]],
        *args: Any,
        wait_for: Iterable[TaskFuture[Any] | allow_failure[Any]],
        return_state: Literal[False] = False,
        **kwargs: Any,
    ) -> TaskFuture[T]: ...

    @overload
    def submit(
        self,
        *args: Any,
        wait_for: Iterable[TaskFuture[Any] | allow_failure[Any]],
        return_state: Literal[False] = False,
        **kwargs: Any,
    ) -> TaskFuture[R]: ...

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Submit one run to the current backend; returns at once with a TaskFuture.

        Keyword-only extras: ``wait_for=[futures]`` (run only after these finish,
        ``NotRun`` if one did not complete) and ``return_state=True`` (block and
        return the final State instead of the future). Futures among the arguments
        are replaced by their results before the task runs. Arguments that do not
        fit the signature raise TypeError here.
        """
        if kwargs:
            wait_for = kwargs.pop("wait_for", None)
            return_state = kwargs.pop("return_state", False)
        else:  # the common case: positional arguments only
            wait_for = return_state = None
        scope = submission_scope()
        if scope is None:
            raise MissingContextError(
                f"{self.name}.submit() needs a flow run or a backend: call it inside a "
                f"@flow function, or inside 'with flowcore.use_backend(\"threads\"):'; "
                f"to run the task inline, call it directly: {self.name}(...)"
            )
        self.check_arguments(args, kwargs)
        waits = _as_futures(wait_for) if wait_for else _NO_INPUTS
        dispatcher = scope.dispatcher
        if dispatcher is None:  # the scope's first submit
            dispatcher = _dispatcher_of(scope)
        future = dispatcher.submit_run(self, args, kwargs, waits)
        if return_state:
            future.wait()
            return future.state
        return future

    @overload
    def map(self: Task[P, Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> FutureList[T]: ...

    @overload
    def map(self, *args: Any, **kwargs: Any) -> FutureList[R]: ...

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """Submit one run per element of the iterable arguments; returns their futures
        as a :class:`~flowcore.futures.FutureList` (a list, with Prefect's ``wait()``
        and ``result()``), or with ``return_state=True`` waits and returns their final
        states, as Prefect does.

        Iterable arguments (lists, tuples, ranges, generators ...) must have equal
        lengths; strings, bytes, mappings, other values and ``unmapped(x)`` are passed
        unchanged to every run. ``wait_for`` applies to every run.
        """
        from flowcore.futures import FutureList

        return_state = kwargs.pop("return_state", False)
        futures = self._map(args, kwargs)
        if return_state:
            states: list[State[Any]] = []
            for future in futures:
                future.wait()
                states.append(future.state)
            return states
        return futures if type(futures) is FutureList else FutureList(futures)

    def _map(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[TaskFuture[Any]]:
        wait_for = _as_futures(kwargs.pop("wait_for", None))
        scope = submission_scope()
        if scope is None:
            raise MissingContextError(
                f"{self.name}.map() needs a flow run or a backend: call it inside a "
                f"@flow function, or inside 'with flowcore.use_backend(\"threads\"):'"
            )
        # The map path's modules load with the first map, not with ``import flowcore``.
        from flowcore import mapped as mapped_path
        from flowcore.dispatch import dispatcher_of, new_future, should_batch
        from flowcore.mapping import map_arguments

        mapped = map_arguments(self.name, args, kwargs)
        if not mapped.count:
            return []
        self.check_arguments(*mapped.layout(0, 1).rows()[0])
        backend = scope.backend()
        plain = not wait_for and not mapped.has_futures
        batched = plain and should_batch(backend, mapped.count)
        if plain and mapped_path.columnar(backend, mapped.count) and mapped_path.eligible(self):
            log_prints = self.options.log_prints
            return dispatcher_of(scope).map(self, mapped, scope.log_prints if log_prints is None else log_prints)
        calls = mapped.rows()
        if batched:
            dispatcher = dispatcher_of(scope)
            futures: list[TaskFuture[R]] = []
            # Hand over in chunks, so workers start while later futures are made.
            for start in range(0, len(calls), _MAP_CHUNK):
                chunk = [new_future(self, scope, a, k) for a, k in calls[start : start + _MAP_CHUNK]]
                dispatcher.add(chunk)
                futures.extend(chunk)
            return futures
        has_futures = mapped.has_futures
        dispatcher = dispatcher_of(scope)
        return [dispatcher.submit_run(self, a, k, wait_for, scan=has_futures) for a, k in calls]

    # -- helpers ------------------------------------------------------------
    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError (naming the task) if the arguments do not fit the signature."""
        if kwargs or not self._min_args <= len(args) <= self._max_args:
            self.bind(args, kwargs)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind arguments to the signature (defaults applied); TypeError names the task."""
        if not kwargs and self._min_args <= len(args) <= self._max_args:
            # Positional arguments of a plain signature: no need for Signature.bind.
            values = dict(zip(self._names, args, strict=False))  # fewer args: defaults follow
            if len(args) < self._max_args:
                for name in self._names[len(args) :]:
                    values[name] = self._defaults[name]
            return values
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}: {exc} (signature: {self.name}{self.signature})") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def make_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun | None, log_prints: bool
    ) -> TaskCall:
        """The :class:`~flowcore.calls.TaskCall` of a new run of this task (its run id
        and name reserved); for the runtime (submissions, direct calls, contexts)."""
        options = self.options
        if options.task_run_name is None:
            numbers = flow_run.run_numbers if flow_run is not None else UNSCOPED_RUN_NUMBERS
            task_name = options.name
            run_id, number, name_number = reserve_run(numbers, task_name)
            name = f"{task_name}-{name_number}"
        else:
            number = reserve_run_numbers(1)
            run_id = f"{run_id_prefix()}-{number:x}"
            name_number = -1
            name = self.run_name_for(args, kwargs, flow_run)
        # Positional construction: this runs once per task run, on the hot path.
        if flow_run is None:
            return TaskCall(
                self, args, kwargs, run_id, name, None, None, None, time.time(), log_prints, 0, None, None,
                None, number, name_number,
            )
        call = TaskCall(
            self, args, kwargs, run_id, name, flow_run.run_id, flow_run.name, flow_run.flow_name,
            time.time(), log_prints, 0, None, flow_run, None, number, name_number,
        )
        cache = options.cache
        if cache is not None and cache.policy.needs_flow_parameters:
            from flowcore.caching.keys import flow_parameters_key

            call.flow_parameters_key = flow_parameters_key(flow_run)
        return call

    def run_name_for(self, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun | None) -> str:
        """The name of a new run of this task with these arguments (its number is reserved)."""
        template = self.options.task_run_name
        if template is None:
            numbers = flow_run.run_numbers if flow_run is not None else UNSCOPED_RUN_NUMBERS
            return f"{self.name}-{numbers.reserve(self.name)}"
        from flowcore.options import NameFromParameters  # loaded by the decorator already

        if isinstance(template, str):
            return template.format(**self.bind(args, kwargs))
        if isinstance(template, NameFromParameters):
            name = template(self.bind(args, kwargs))
        else:
            name = template()
        if not isinstance(name, str):
            raise TypeError(f"task {self.name!r}: task_run_name callable returned {name!r}, not a str")
        return name

    def with_options(self, **options: Unpack[TaskOptionInputs]) -> Task[P, R]:
        """A copy of this task with some options changed (the rest kept); validated as
        ``@task`` validates them."""
        from flowcore.options import task_options

        return Task(self.fn, task_options(self.fn, options, base=self.options))

    def __get__(self, instance: Any, owner: type | None = None) -> Task[..., R]:
        """A task defined in a class body is a method, as in Prefect: read from an
        instance it is a copy of the task bound to that instance (its function a bound
        method; calls, ``submit`` and ``map`` pass the instance first); read from the
        class it is the task itself."""
        if instance is None:
            return self
        return _bind(self, instance)

    # -- pickling: by reference when importable, else by value --------------
    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self.fn, types.MethodType):
            # A task bound to an instance: the task of the plain function (by
            # reference when the class is importable) and the instance, bound again.
            return (_bind, (Task(self.fn.__func__, self.options), self.fn.__self__))
        # The module attribute named like the function is the Task (the decorator
        # replaced it), so the plain function cannot be pickled by reference. Pickle
        # the task by reference instead: itself, or the module-level task it was
        # derived from (with_options) plus these options. Otherwise (closures,
        # lambdas) fall back to the function by value, which needs cloudpickle.
        #
        # Hooks stay home: on_completion/on_failure run only in the submitting process
        # (engine.report_final_state, with the parent's own Task), so the pickled form
        # leaves them out; a hook holding a lock or a connection must not fail the run.
        module = getattr(self.fn, "__module__", None)
        qualname = getattr(self.fn, "__qualname__", "")
        # __main__ differs in a worker process: such tasks travel by value.
        # ``inc = task(bare_inc, name="inc")`` is found under its task name instead.
        if module and module != "__main__" and module not in _by_value_modules and "<locals>" not in qualname:
            candidates = [qualname]
            if self.name != qualname and self.name.isidentifier():
                candidates.append(self.name)
            for where in candidates:
                try:
                    found = _load_task(module, where)
                except (ImportError, AttributeError):
                    continue
                if found is self:
                    return (_load_task, (module, where))
                if isinstance(found, Task) and found.fn is self.fn:
                    return (_load_task, (module, where, _without_hooks(self.options)))
        return (Task, (self.fn, _without_hooks(self.options)))

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, fn={getattr(self.fn, '__qualname__', self.fn)!r})"


class AsyncTask(Task[P, R]):
    """A task whose function is an ``async def`` (``@task`` makes one by itself).

    Calling it where the caller awaits (an async flow or task body, or any coroutine
    with no run around it, see :func:`flowcore.coroutines.in_async_context`) returns a
    coroutine: ``await t(x)``, ``asyncio.gather(t(1), t(2))``. Elsewhere (a synchronous
    flow, task or script) the call runs the task to completion on an event loop and
    returns its value, as a synchronous task's call does (a call written directly inside
    ``asyncio.run(...)``, as Prefect users start one, gets the coroutine: see
    :func:`flowcore.coroutines.handed_to_a_runner`). ``submit`` and ``map`` are
    those of every task: the backend's worker runs the coroutine on its own event
    loop, and the futures they return are awaitable too.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``await``-able run where the caller awaits, else the value (see the class);
        ``return_state=True``: the final State instead. Bad arguments raise TypeError
        here, before any coroutine is made."""
        if kwargs:
            return_state = kwargs.pop("return_state", False)
            if kwargs or not self._min_args <= len(args) <= self._max_args:
                self.bind(args, kwargs)
        else:
            return_state = False
            if not self._min_args <= len(args) <= self._max_args:
                self.bind(args, kwargs)
            elif self._plain:
                # The common case, inlined (paid once per awaited run): positional
                # arguments of a plain task in the body of an async flow that this
                # thread's loop awaits (FlowRunContext.awaits_plain_in: no prints
                # captured, no kept results), outside any task run; observed by
                # run-event observers only (the history: runs recorded in bulk) or not
                # at all. Anything else takes the general path below, which decides the
                # same.
                scope = _scope.get()
                if (
                    isinstance(scope, FlowRunContext)
                    and scope.awaits_plain_in == _get_ident()
                    and _task_run.get() is None
                ):
                    current = registry.built
                    flow_run = scope.flow_run
                    if current is not None and flow_run is not None:
                        if current.batches_direct_runs:
                            return direct_runs.call_async(self, args, None, flow_run, scope.awaiting_loop)
                        if not current.observes_events:
                            return direct_runs.await_unobserved(self, args, None, flow_run, scope.awaiting_loop)
        scope = _scope.get()
        # in_async_context(), inlined for the common case: in the body of an async flow
        # where its loop runs
        if (
            _task_run.get() is None
            and isinstance(scope, FlowRunContext)
            and scope.flow.isasync
            and running_loop() is not None
        ):
            return self._run_coroutine(args, kwargs, return_state, scope)
        if in_async_context() or handed_to_a_runner(sys._getframe(1)):  # asyncio.run(t(x)), as in Prefect
            return self._run_coroutine(args, kwargs, return_state, scope)
        return run_sync(self._run_coroutine(args, kwargs, return_state, scope))

    def _run_coroutine(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool, scope: Any
    ) -> Coroutine[Any, Any, Any]:
        """The coroutine of one direct run, on the path its observation needs (chosen
        here, so that an awaited run costs one coroutine around the body's)."""
        if scope is None:  # in a task body on a pool thread or in a worker: its flow run's
            scope = submission_scope()
        flow_run, log_prints, observation = self._direct_path(scope, return_state)
        # (no keyword arguments: no dict kept alive while the run is in flight)
        if observation == _BATCHED and flow_run is not None:
            return direct_runs.call_async(self, args, kwargs or None, flow_run)
        if observation == _UNOBSERVED:
            return direct_runs.await_unobserved(self, args, kwargs or None, flow_run)
        return self._observed(args, kwargs, flow_run, log_prints, return_state)

    async def _observed(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], flow_run: FlowRun | None,
        log_prints: bool, return_state: bool,
    ) -> Any:
        call = self.make_call(args, kwargs, flow_run, log_prints)
        from flowcore.engine import run_call_async
        from flowcore.events import current_worker
        from flowcore.reporting import report_final_state

        _report_submitted(call)
        try:
            state = await run_call_async(call)
        except BaseException as exc:
            from flowcore.direct_runs import cancelled

            if cancelled(exc):  # task.cancel(), asyncio.wait_for: it ends Cancelled, as a flow run does
                _report_cancelled(call)
            raise
        report_final_state(call, state, None, current_worker())
        if return_state:
            _log_returned_failure(call, state)
            return state
        return state.result()


def _report_cancelled(call: TaskCall) -> None:
    """An awaited run on the engine's path was cancelled (its awaiting asyncio task
    was): report it ``Cancelled``, with the start of its body if it started."""
    from flowcore.events import current_worker
    from flowcore.reporting import report_final_state
    from flowcore.states import Cancelled

    started = call.started_at or None
    state = Cancelled(
        "the task run was cancelled while it ran", started_at=started, finished_at=time.time(),
        attempts=1 if started else 0,
    )
    report_final_state(call, state, None, current_worker())


def _log_returned_failure(call: TaskCall, state: State[Any]) -> None:
    """A direct call's run did not complete and its state goes back to the caller
    (``return_state=True``) instead of raising: it is logged as a failed submitted
    run is (ERROR, "Finished in state ..."), since nothing else will say it; a run
    cancelled on purpose is not."""
    if not state.is_completed() and not state.is_cancelled():
        from flowcore.engine import task_run_logger

        task_run_logger(call).error("Finished in state %r", state)


def _report_submitted(call: TaskCall) -> None:
    """A direct call's run starts (on the engine's path): its SUBMITTED is published
    now, or, while only observers that accept deferred reports watch and the run
    belongs to a flow run, noted and reported with its end (flowcore.deferred_runs)."""
    current = registry.get_registry()
    if current.defers_runs and call.flow_run_id is not None:
        deferred_runs.note(call)
    elif current.observes_events:
        from flowcore.events import submitted_event

        registry.publish([submitted_event(call, None)])


def _without_hooks(options: TaskOptions) -> TaskOptions:
    """``options`` as they travel to a worker: without the hooks, which run at home."""
    if not options.on_completion and not options.on_failure and not options.on_running:
        return options
    return dataclasses.replace(options, on_completion=(), on_failure=(), on_running=())


def _bind(task: Task[..., R], instance: Any) -> Task[..., R]:
    """``task`` as a method of ``instance``: a copy whose function is bound to it."""
    return Task(types.MethodType(task.fn, instance), task.options)


#: modules whose tasks travel by value, as those of ``__main__`` do: see pickle_by_value
_by_value_modules: set[str] = set()


def pickle_by_value(module: types.ModuleType) -> None:
    """Send the tasks and functions of ``module`` to other processes by value, as
    those of ``__main__`` are: for a script loaded under a name that a backend's worker
    processes cannot import (a deployment run's script, ``flowcore.deployments``)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    _by_value_modules.add(module.__name__)


def _load_task(module: str, qualname: str, options: TaskOptions | None = None) -> Task[..., Any]:
    """The task at ``module.qualname``; with ``options``, a copy that carries them."""
    import importlib

    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if options is not None:
        return Task(found.fn, options)
    return found  # type: ignore[no-any-return]


def task_input_hash(context: CacheContext, arguments: dict[str, Any]) -> str | None:
    """A ``cache_key_fn`` with Prefect's signature: a hash of the task's identity, its
    code and ``arguments`` (see :func:`flowcore.caching.task_input_hash`)."""
    from flowcore.caching.policies import task_input_hash as compute

    return compute(context, arguments)


_MAP_CHUNK = 2048
_observed = registry.observes_events


_UNOBSERVED, _BATCHED, _FULL = 0, 1, 2


def _observation() -> int:
    """How direct calls are observed: not at all, by run-event observers only (runs
    may be reported in batches, see flowcore.direct_runs), or by per-run hooks."""
    current = registry.get_registry()
    if not current.observes_events:
        return _UNOBSERVED
    return _BATCHED if current.batches_direct_runs else _FULL


def _dispatcher_of(scope: RunScope) -> Dispatcher:
    """``scope``'s dispatcher, made on its first submit. The submit path (flowcore.dispatch,
    the futures, the engine, and with them ``concurrent.futures`` and ``logging``) loads
    here, not with ``import flowcore``; later submits read ``scope.dispatcher``."""
    from flowcore.dispatch import dispatcher_of

    return dispatcher_of(scope)


#: no inputs to wait for (shared: never changed)
_NO_INPUTS: tuple[Any, ...] = ()


def _as_futures(wait_for: Any) -> list[Any]:
    """``wait_for`` as a list of TaskFuture and ``allow_failure(TaskFuture)`` items;
    ``allow_failure`` of a list, tuple or set of futures allows each of them (as in
    Prefect, whose annotation wraps any collection)."""
    if wait_for is None:
        return []
    from flowcore.futures import TaskFuture

    if isinstance(wait_for, (TaskFuture, allow_failure)):
        wait_for = [wait_for]
    try:
        given = list(wait_for)
    except TypeError:
        raise TypeError(f"wait_for must be a list of TaskFuture, got {wait_for!r}") from None
    items: list[Any] = []
    for item in given:
        if isinstance(item, allow_failure) and isinstance(item.value, (list, tuple, set, frozenset)):
            items.extend(allow_failure(inner) for inner in item.value)
        else:
            items.append(item)
    for item in items:
        inner = item.value if isinstance(item, allow_failure) else item
        if not isinstance(inner, TaskFuture):
            raise TypeError(
                "wait_for must contain only TaskFuture objects (or allow_failure(future), "
                f"allow_failure([futures])), got {item!r}"
            )
    return items


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    __fn: None = None, **options: Unpack[TaskOptionInputs]
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    __fn: Callable[P, R] | None = None, **options: Unpack[TaskOptionInputs]
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task, bare (``@task``) or with options (``@task(retries=2)``).

    Options (all validated here, at decoration time):
        name: the task's name (default: the function's ``__name__``).
        retries: how many times to retry a failed run (int >= 0).
        retry_delay_seconds: seconds before each retry: a number; a list where retry i
            waits item i and the last item repeats; or ``f(retries) -> list``, such as
            ``exponential_backoff(2)``.
        retry_jitter_factor: randomise each delay within ``d * (1 +/- factor)``.
        retry_condition_fn: ``f(task, call, state) -> bool``; retry only when true.
        timeout_seconds: stop an attempt after this long (state ``TimedOut``).
        tags: strings attached to the task (for observers and filters).
        task_run_name: a ``str.format`` template over the call's arguments
            (``"load-{path}"``) or a callable returning the name.
        log_prints: send ``print()`` in the task to its run logger (None: as the flow).
        on_completion / on_failure: lists of ``hook(task, call, state)``, called once
            per run with its final state, in the process that submitted it.
        on_running: list of ``hook(task, call, state)`` called once per run whose body
            started, with its ``Running`` state, in the submitting process, when the
            run's outcome reaches it (just before ``on_completion``/``on_failure``).
        cache_policy: what a run's cache key is made of (``flowcore.caching.INPUTS``,
            ``TASK_SOURCE``, ``FLOW_PARAMETERS``, ``RUN_ID``, ``NONE``, combined with
            ``+``; ``INPUTS - "arg"`` leaves an argument out). Runs are cached only
            when a policy, a ``cache_key_fn``, an expiration or ``refresh_cache`` is
            given; then the default policy is ``INPUTS + TASK_SOURCE``.
        cache_key_fn: ``f(context, arguments) -> str | None`` instead of a policy
            (None: do not cache this run).
        cache_expiration: how long an entry stays valid (timedelta or seconds).
        refresh_cache: run the body even on a hit, and overwrite the entry.
        cache_result_in_memory: False: the final state keeps no copy of the value;
            ``result()`` reads it back from the store (for large results).
        cache_storage: a directory, or a store object (default: the cache directory,
            see ``flowcore.caching``).
        cache_key_errors: ``"raise"``: an argument with no deterministic hash fails
            the run with ``CacheKeyError``; ``"warn"``: the run goes uncached, with
            one warning per task.
        persist_result: True: keep each completed run's result in ``result_storage``
            after the run (``flowcore runs show --results``, ``--resume``); False:
            never, whatever the flow says; None: as the flow says (see
            :mod:`flowcore.results`). Such runs take the engine's path, not the
            direct-call or column-map shortcuts.
        result_storage: where kept results go: a directory, a registered cache store's
            name or a cache store object (default: the flow's, else
            ``FLOWCORE_RESULTS_DIR`` or ``~/.flowcore/results``); giving it turns
            ``persist_result`` on unless that is False.
    """
    # The option records and their validation load here, with the first decoration.
    from flowcore.options import precheck_task_options, task_options

    if __fn is not None:
        return Task(__fn, task_options(__fn, options))
    # What does not depend on the function fails at the decorator line already.
    precheck_task_options(options)

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(fn, task_options(fn, options))

    return decorate


__all__ = ["AsyncTask", "Task", "exponential_backoff", "task", "task_input_hash"]
