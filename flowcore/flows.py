"""``@flow``: a function whose calls are tracked runs that own a backend.

Calling a flow runs its body in the caller's thread inside a flow run context:
tasks submitted in it go to the flow's backend (created lazily, shut down when the
run ends if the run created it). As in Prefect 3, the flow's state comes from its
function: an exception makes it ``Failed``, returning a failed state or future makes
it ``Failed``, anything else ``Completed``. At exit, outstanding futures are awaited
and failures nobody looked at are logged as errors. When the body raises, tasks that
have not started are cancelled, and on a process backend the run owns, the running
ones are stopped too, so a failed run ends within seconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NamedTuple,
    ParamSpec,
    TypeVar,
    Unpack,
    overload,
)

from flowcore import registry, states
from flowcore.annotations import quote
from flowcore.calls import FlowRun, new_flow_run_id
from flowcore.context import (
    FlowRunContext,
    TaskRunContext,
    _scope,
    _task_run,
    awaiting_codes,
    current_task_run,
    resuming,
)
from flowcore.coroutines import call_hook, handed_to_a_runner, in_async_context, run_sync
from flowcore.errors import TaskTimeoutError
from flowcore.selection import slot_for
from flowcore.states import State, StateType

if TYPE_CHECKING:
    import logging

    from flowcore.deployments import Deployment
    from flowcore.option_inputs import FlowOptionInputs
    from flowcore.options import FlowOptions

P = ParamSpec("P")
R = TypeVar("R")

_MAX_FAILURE_REPORTS = 10  # of each kind, per flow run attempt

# What only running a flow needs (the run loggers, the futures, deadlines) is imported
# where it is used: it loads with the first flow run, not with ``import flowcore``.


def _run_logger(context: FlowRunContext) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger of the flow run ``context`` (see :func:`flowcore.loggers.flow_logger`)."""
    from flowcore.loggers import flow_logger

    return flow_logger(context)


def _leave_task_run() -> contextvars.Token[TaskRunContext | None] | None:
    """A flow called in a task body is a run of its own: its body sees no task run
    (``get_run_context()``, ``get_run_logger()``), as in Prefect 3. A token to restore
    the task run with, or None when there was none. (A task awaited on the short path
    is not in the context variable: the stack walk of
    :func:`flowcore.context.current_task_run` stops at a flow's attempt instead.)"""
    if _task_run.get() is None:
        return None
    return _task_run.set(None)


class _OpenRun(NamedTuple):
    """A flow run that has begun: what its attempts share."""

    run: FlowRun
    slot: Any
    parent: Any
    log_prints: bool
    display: Any


class Flow(Generic[P, R]):
    """A function whose calls are flow runs. Create with :func:`flow`."""

    def __init__(self, fn: Callable[P, R], options: FlowOptions) -> None:
        self.fn = fn
        self.options = options
        #: the function is a coroutine function: its body runs on an event loop
        self.isasync = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        # pydantic is loaded only when a flow with annotated parameters is first called.
        #: some parameter has a type hint: calls are validated (``validate_parameters``)
        self.annotated = any(p.annotation is not p.empty for p in self.signature.parameters.values())
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self.options.name

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind arguments to the signature (defaults applied); TypeError names the flow."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc} (signature: {self.name}{self.signature})") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: Any, return_state: Literal[True], **kwargs: Any) -> State[R]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the flow; return its value or raise its exception.

        ``return_state=True`` returns the final :class:`~flowcore.states.State` instead
        (and never raises for a failed run).

        An ``async def`` flow called where the caller awaits (inside a coroutine, or
        the body of an async flow or task) returns a coroutine to await; called from
        synchronous code, it runs to completion on a new event loop (as
        ``asyncio.run`` would) and returns the value -- unless the call is written
        directly inside ``asyncio.run(...)`` (or a loop's ``run_until_complete``, an
        ``asyncio.Runner``'s ``run``), Prefect's way to start an async flow: that gets
        the coroutine to run (see :func:`flowcore.coroutines.handed_to_a_runner`).
        Arguments that do not fit the signature raise TypeError at the call either way.
        """
        return_state = kwargs.pop("return_state", False) if "return_state" in kwargs else False
        args, kwargs, parameters, invalid = self._checked_arguments(args, kwargs)
        if self.isasync:
            coroutine = self._call_async(args, kwargs, parameters, return_state, invalid)
            if in_async_context() or handed_to_a_runner(sys._getframe(1)):
                return coroutine
            return run_sync(coroutine, fresh_loop=True)
        # The caller who takes the state gets no exception (and no traceback): log it.
        state = self._run(args, kwargs, parameters, log_traceback=return_state, invalid=invalid)
        if return_state:
            return state
        return state.result()

    def _checked_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any], Exception | None]:
        """Bind the arguments (TypeError naming the flow if they do not fit), replace
        the futures among them by their results (as in Prefect: see
        :func:`_resolve_upstreams`) and, with ``validate_parameters``, validate and
        coerce the given ones against the type hints. Returns ``(args, kwargs, parameters with defaults, error)``: ``error`` is
        the ParameterTypeError that fails the run before its body, else None."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc} (signature: {self.name}{self.signature})") from None
        invalid, resolved = _resolve_upstreams(self.name, bound.arguments)
        if resolved:
            args, kwargs = bound.args, bound.kwargs
        if invalid is None and self.annotated and self.options.validate_parameters and bound.arguments:
            from flowcore.errors import ParameterTypeError
            from flowcore.parameters import validator_for

            validator = validator_for(self)
            if validator:
                try:
                    bound.arguments.update(validator.validate(bound.arguments))
                except ParameterTypeError as exc:
                    invalid = exc
                else:
                    args, kwargs = bound.args, bound.kwargs
        bound.apply_defaults()
        return args, kwargs, dict(bound.arguments), invalid

    # -- the run ------------------------------------------------------------
    def _open_run(self, parameters: dict[str, Any]) -> _OpenRun:
        """The flow run record, its backend slot, its parent scope and its display."""
        parent = _scope.get()
        parent_run_id = parent.flow_run.run_id if parent is not None and parent.flow_run else None
        in_task = None
        if parent is None:
            from flowcore.config import check_environment

            check_environment()
            # In a task body that does not see its flow's scope (a pool thread, a worker
            # process): a subflow of the task's flow run all the same.
            in_task = current_task_run()
            if in_task is not None:
                parent_run_id = in_task.flow_run.run_id if in_task.flow_run else in_task.call.flow_run_id
        slot = slot_for(self.options.backend, parent, self.options.backend_options)
        run_id = new_flow_run_id()
        run = FlowRun(
            flow_name=self.name,
            run_id=run_id,
            name=f"{self.name}-{run_id[:8]}",
            parameters=parameters,
            backend=slot.name,
            parent_run_id=parent_run_id,
            started_at=time.time(),
            backend_options=registry.options_of(slot.get()),
        )
        options = self.options
        if options.persist_result is not None or options.result_storage is not None or (
            parent is not None and parent.flow_run is not None and parent.flow_run.results is not None
        ) or (parent is None and resuming()):
            from flowcore.results import plan_for_flow

            parent_plan = parent.flow_run.results if parent is not None and parent.flow_run else None
            run = replace(run, results=plan_for_flow(options, parent_plan))
        log_prints = self.options.log_prints
        if log_prints is None:
            log_prints = parent.log_prints if parent is not None else False
        if self.options.flow_run_name is not None:
            run = replace(run, name=self._run_name(run, slot, log_prints, parent))
        from flowcore.loggers import ensure_console_handler

        ensure_console_handler()
        display = None
        if parent is None and in_task is None:  # a top-level run on a terminal shows its progress
            from flowcore.progress import start_for

            display = start_for(run)
        return _OpenRun(run, slot, parent, log_prints, display)

    def _run_name(self, run: FlowRun, slot: Any, log_prints: bool, parent: Any) -> str:
        """The name ``flow_run_name`` gives ``run``: the template formatted with the
        run's parameters (defaults applied), or what the callable returns. The callable
        is called with no arguments inside the run's scope, so ``get_run_context()``
        there sees the flow run (its id and parameters; its name is the default one).
        Raises TypeError naming the flow when the result is not a non-empty str, or
        the template cannot be formatted with these parameters."""
        template = self.options.flow_run_name
        if callable(template):
            context = FlowRunContext(self, run, slot, log_prints=log_prints, parent=parent)
            token = _scope.set(context)
            try:
                name = template()
            finally:
                _scope.reset(token)
            what = f"flow_run_name callable {getattr(template, '__name__', template)!r}"
        else:
            assert template is not None
            fields = dict(run.parameters)
            for parameter in self.signature.parameters.values():
                if parameter.kind is parameter.VAR_KEYWORD:  # **options: its items are fields
                    fields.update(fields.pop(parameter.name, None) or {})
            try:
                name = template.format(**fields)
            except (AttributeError, IndexError, KeyError, ValueError) as exc:
                raise TypeError(
                    f"flow {self.name!r}: flow_run_name {template!r} cannot be formatted with the "
                    f"parameters {sorted(fields)}: {type(exc).__name__}: {exc}"
                ) from None
            what = f"flow_run_name {template!r}"
        if not isinstance(name, str) or not name:
            raise TypeError(f"flow {self.name!r}: {what} gave {name!r}; it must give a non-empty str")
        return name

    def _run(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parameters: dict[str, Any],
        *,
        log_traceback: bool = False,
        invalid: Exception | None = None,
    ) -> State[Any]:
        opened = self._open_run(parameters)
        try:
            if invalid is not None:
                return self._refuse(opened, invalid, log_traceback)
            return self._run_attempts(opened, args, kwargs, log_traceback)
        finally:
            if opened.display is not None:
                opened.display.stop()

    def _begin_attempt(
        self, opened: _OpenRun, attempt: int, *, body_runs: bool = True, running_hooks: bool = True
    ) -> FlowRunContext:
        """The scope of attempt number ``attempt``; announced in the log and the
        run-event stream, and to the ``on_running`` hooks (the first attempt of a run
        whose body runs; ``running_hooks=False``: the caller, an async flow, awaits
        them)."""
        run = opened.run
        context = FlowRunContext(self, run, opened.slot, log_prints=opened.log_prints, parent=opened.parent)
        context.attempt = attempt
        if attempt == 1:
            _run_logger(context).info(
                "Beginning flow run for flow %r on backend %r", self.name, opened.slot.name
            )
        if registry.observes_events():
            from flowcore.events import EventKind, FlowRunEvent

            registry.publish([FlowRunEvent(EventKind.STARTED, run, time.time(), attempt, flow=self)])
        if attempt == 1 and body_runs and running_hooks and self.options.on_running:
            self._call_hooks(context, self.options.on_running, states.Running())
        return context

    def _call_hooks(self, context: FlowRunContext, hooks: tuple[Any, ...], state: State[Any]) -> None:
        """``hook(flow, flow_run, state)`` for each hook (an async hook is run to
        completion); one that raises is logged."""
        for hook in hooks:
            try:
                call_hook(hook, self, context.flow_run, state)
            except Exception:
                _run_logger(context).exception(
                    "hook %r of flow %r raised; the run's state is unchanged",
                    getattr(hook, "__name__", hook), self.name,
                )

    async def _call_hooks_async(self, context: FlowRunContext, hooks: tuple[Any, ...], state: State[Any]) -> None:
        """:meth:`_call_hooks` in an async flow: an ``async def`` hook is awaited here,
        on the flow's loop."""
        for hook in hooks:
            try:
                result = hook(self, context.flow_run, state)
                if hasattr(result, "__await__"):
                    await result
            except Exception:
                _run_logger(context).exception(
                    "hook %r of flow %r raised; the run's state is unchanged",
                    getattr(hook, "__name__", hook), self.name,
                )

    def _run_attempts(
        self, opened: _OpenRun, args: tuple[Any, ...], kwargs: dict[str, Any], log_traceback: bool
    ) -> State[Any]:
        policy = self.options.retry_policy
        attempt = 0
        while True:
            attempt += 1
            context = self._begin_attempt(opened, attempt)
            state = self._attempt(context, args, kwargs)
            if state.is_completed() or attempt > policy.retries:
                break
            policy.wait_before_retry(attempt, state.message, _run_logger(context))
        opened.slot.close(wait=state.name != "TimedOut", cancel_futures=state.name == "TimedOut")
        return self._end_run(context, opened, state, attempt, log_traceback)

    def _refuse(self, opened: _OpenRun, error: Exception, log_traceback: bool) -> State[Any]:
        """End the run ``Failed`` with ``error`` (its arguments were refused) without
        running the body: hooks and run events as for any failed run, no retries."""
        context = self._begin_attempt(opened, 1, body_runs=False)
        opened.slot.close(wait=False)
        return self._end_run(context, opened, states.Failed(error), 1, log_traceback)

    def _end_run(
        self, context: FlowRunContext, opened: _OpenRun, state: State[Any], attempts: int,
        log_traceback: bool,
    ) -> State[Any]:
        state = replace(state, started_at=opened.run.started_at, finished_at=time.time(), attempts=attempts)
        self._finish(context, state, log_traceback=log_traceback)
        return state

    # -- the run of an async flow -------------------------------------------------
    async def _call_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], parameters: dict[str, Any],
        return_state: bool,
        invalid: Exception | None = None,
    ) -> Any:
        opened = self._open_run(parameters)
        try:
            if invalid is not None:
                state = self._refuse(opened, invalid, return_state)
            else:
                state = await self._run_attempts_async(opened, args, kwargs, return_state)
        finally:
            if opened.display is not None:
                opened.display.stop()
        if return_state:
            return state
        return state.result()

    async def _run_attempts_async(
        self, opened: _OpenRun, args: tuple[Any, ...], kwargs: dict[str, Any], log_traceback: bool
    ) -> State[Any]:
        policy = self.options.retry_policy
        attempt = 0
        while True:
            attempt += 1
            context = self._begin_attempt(opened, attempt, running_hooks=False)
            if attempt == 1 and self.options.on_running:
                await self._call_hooks_async(context, self.options.on_running, states.Running())
            state = await self._attempt_async(context, args, kwargs)
            if state.is_completed() or attempt > policy.retries:
                break
            await policy.wait_before_retry_async(attempt, state.message, _run_logger(context))
        import asyncio

        timed_out = state.name == "TimedOut"
        if opened.slot.close_may_block():  # a shutdown waits for workers: not on the event loop
            await asyncio.to_thread(opened.slot.close, wait=not timed_out, cancel_futures=timed_out)
        else:  # no workers to wait for (nothing was submitted): no thread started for it
            opened.slot.close(wait=not timed_out, cancel_futures=timed_out)
        state = replace(state, started_at=opened.run.started_at, finished_at=time.time(), attempts=attempt)
        await self._finish_async(context, state, log_traceback=log_traceback)
        return state

    async def _attempt_async(
        self, context: FlowRunContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> State[Any]:
        """One attempt of an async flow's body, awaited on the running loop.
        ``timeout_seconds`` cancels the body (``asyncio.timeout``): a body blocked in
        synchronous code is stopped only when it next awaits."""
        import asyncio

        from flowcore.futures import collect_futures, wait_async

        run = context.flow_run
        if run is not None and run.results is None and not context.log_prints:
            context.awaits_plain_in = threading.get_ident()  # this coroutine runs on this thread's loop
            context.awaiting_loop = loop = asyncio.get_running_loop()
            if loop.get_task_factory() is None:  # a loop the caller made (asyncio.run(my_flow()))
                from flowcore.coroutines import carry_awaited_runs

                carry_awaited_runs(loop)
        seconds = self.options.timeout_seconds
        timer = None
        with self._body_context(context):
            try:
                try:
                    if seconds is None:
                        value = await self.fn(*args, **kwargs)  # type: ignore[misc]
                    else:
                        timer = asyncio.timeout(seconds)
                        async with timer:
                            value = await self.fn(*args, **kwargs)  # type: ignore[misc]
                except Exception as exc:
                    if timer is not None and timer.expired() and isinstance(exc, TimeoutError):
                        _stop_outstanding(context)
                        message = f"flow run of {self.name!r} exceeded its timeout of {seconds:g} s"
                        return State(StateType.FAILED, "TimedOut", message, exception=TaskTimeoutError(message))
                    state: State[Any] = states.Failed(exc, traceback=_format(exc))
                    _stop_outstanding(context)
                else:
                    returned = [] if isinstance(value, quote) else collect_futures(value)
                    if returned:
                        await wait_async(returned)
                    state = _state_from_return(value)
                if context.outstanding():
                    await asyncio.to_thread(context.wait_all)
                _log_failed_runs(context)
                return state
            except BaseException as exc:
                # Cancelled (by the caller, a timeout around the call), Ctrl-C, SystemExit.
                self._interrupted(context, exc)
                raise

    def _attempt(self, context: FlowRunContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> State[Any]:
        from flowcore.timeouts import call_with_timeout

        seconds = self.options.timeout_seconds
        with self._body_context(context):
            try:
                try:
                    if seconds is None:
                        value = self.fn(*args, **kwargs)
                    else:
                        # Our own error instance: a task's timeout raised in the body is a
                        # plain failure of the flow, not the flow timing out.
                        own_timeout = TaskTimeoutError(
                            f"flow run of {self.name!r} exceeded its timeout of {seconds:g} s"
                        )
                        value = call_with_timeout(seconds, "", self.fn, args, kwargs, error=own_timeout)
                except Exception as exc:
                    if seconds is not None and exc is own_timeout:
                        _stop_outstanding(context)
                        return State(StateType.FAILED, "TimedOut", str(exc), exception=exc)
                    state: State[Any] = states.Failed(exc, traceback=_format(exc))
                    # The run has failed: do not start what is still queued, and stop its
                    # runs on worker processes (threads cannot be stopped: awaited below).
                    _stop_outstanding(context)
                else:
                    state = _state_from_return(value)
                context.wait_all()
                _log_failed_runs(context)
                return state
            except BaseException as exc:
                # Ctrl-C, SystemExit: stop what can be stopped, do not wait for the rest.
                self._interrupted(context, exc)
                raise

    @contextlib.contextmanager
    def _body_context(self, context: FlowRunContext) -> Iterator[None]:
        """What an attempt's body runs in: its scope, where its prints go, and no task
        run (a flow called in a task body is a run of its own); all restored after."""
        from flowcore.loggers import restore_prints

        token = _scope.set(context)
        print_token = self._redirect_prints(context)
        outer_task_run = _leave_task_run()
        try:
            yield
        finally:
            if outer_task_run is not None:
                _task_run.reset(outer_task_run)
            if print_token is not None:
                restore_prints(print_token)
            _scope.reset(token)

    def _redirect_prints(self, context: FlowRunContext) -> contextvars.Token[Any] | None:
        """Send the body's prints to the run's logger with ``log_prints``, also when it
        is not set (None) and the enclosing run (a task that calls this flow) logs its
        prints; with ``log_prints=False`` there, to standard output. A token to restore
        with, or None when nothing changed."""
        from flowcore.loggers import capturing_prints, redirect_prints

        if context.log_prints or (self.options.log_prints is None and capturing_prints()):
            return redirect_prints(_run_logger(context))
        if capturing_prints():
            return redirect_prints(None)
        return None

    def _interrupted(self, context: FlowRunContext, exc: BaseException) -> None:
        """The body was interrupted (Ctrl-C, SystemExit, cancellation): stop what can be
        stopped, do not wait for the rest, and end the run in the matching state."""
        _stop_outstanding(context, closing=True)
        context.slot.close(wait=False, cancel_futures=True)
        run = context.flow_run
        assert run is not None
        state = replace(
            _interrupted_state(exc), started_at=run.started_at, finished_at=time.time(), attempts=context.attempt
        )
        self._finish(context, state)

    def _finish(self, context: FlowRunContext, state: State[Any], *, log_traceback: bool = False) -> None:
        """Hooks, observers and the final log line. ``log_traceback``: a failure's
        traceback is logged just before it (the caller gets a state, not the exception)."""
        self._report_runs(context)
        self._call_hooks(context, self._final_hooks(state), state)
        self._announce_end(context, state, log_traceback)

    async def _finish_async(self, context: FlowRunContext, state: State[Any], *, log_traceback: bool = False) -> None:
        """:meth:`_finish` for an async flow: its ``async def`` hooks are awaited on its
        own loop (as Prefect does), not run on a helper thread's."""
        self._report_runs(context)
        await self._call_hooks_async(context, self._final_hooks(state), state)
        self._announce_end(context, state, log_traceback)

    def _report_runs(self, context: FlowRunContext) -> None:
        """The run's direct calls' and submitted runs' events, reported before its hooks
        and its end."""
        run = context.flow_run
        assert run is not None
        if registry.observes_events():
            from flowcore import deferred_runs, direct_runs

            direct_runs.flush(run.run_id)  # its direct calls' runs
            deferred_runs.flush(run.run_id)  # and its submitted runs' (ended, or left running)

    def _announce_end(self, context: FlowRunContext, state: State[Any], log_traceback: bool) -> None:
        """The run's FINISHED event and its final log line."""
        run = context.flow_run
        assert run is not None
        logger = _run_logger(context)
        if registry.observes_events():
            from flowcore.events import EventKind, FlowRunEvent

            registry.publish(
                [FlowRunEvent(EventKind.FINISHED, run, time.time(), state.attempts, state, self)]
            )
        if state.is_completed():
            logger.info("Finished in state %r", state)
            return
        if log_traceback and state.traceback:
            # A task's failure raised in the body carries the task's frames (a remote
            # task's as the RemoteTraceback cause): the one place they are shown.
            logger.error("Encountered exception during execution:\n%s", state.traceback.rstrip("\n"))
        logger.error("Finished in state %r", state)

    def _final_hooks(self, state: State[Any]) -> tuple[Any, ...]:
        """The hooks a run that ended in ``state`` calls: ``on_completion``,
        ``on_crashed``, ``on_cancellation``, else (Failed, TimedOut) ``on_failure``."""
        options = self.options
        if state.is_completed():
            return options.on_completion
        if state.is_crashed():
            return options.on_crashed
        if state.is_cancelled():
            return options.on_cancellation
        return options.on_failure

    def __get__(self, instance: Any, owner: type | None = None) -> Flow[..., R]:
        """A flow defined in a class body is a method, as in Prefect: read from an
        instance it is a copy bound to that instance; from the class, the flow itself."""
        if instance is None:
            return self
        import types

        return Flow(types.MethodType(self.fn, instance), self.options)

    # -- options ------------------------------------------------------------
    def with_options(self, **options: Unpack[FlowOptionInputs]) -> Flow[P, R]:
        """A copy of this flow with some options changed (the rest kept); validated as
        ``@flow`` validates them."""
        return Flow(self.fn, _flow_options(self.fn, options, base=self.options))

    # -- deployments (flowcore.deployments, loaded on use) ------------------
    def to_deployment(self, name: str, *, cron: str | None = None, interval: Any = None,
                      rrule: str | None = None, **options: Any) -> Deployment:
        """A :class:`~flowcore.deployments.Deployment` of this flow, built and
        validated but not stored. ``cron``/``interval`` (a timedelta or seconds)/``rrule``
        are shorthands for one schedule each; ``options`` are those of
        ``Deployment.build_from_flow`` (``schedule``, ``parameters``, ``catchup`` ...).
        Raises DeploymentError as ``build_from_flow`` does."""
        from flowcore.deployments import Deployment
        from flowcore.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

        schedules = list(options.pop("schedules", None) or [])
        if cron is not None:
            schedules.append(CronSchedule(cron=cron))
        if interval is not None:
            schedules.append(IntervalSchedule(interval=interval))
        if rrule is not None:
            schedules.append(RRuleSchedule(rrule=rrule))
        return Deployment.build_from_flow(self, name, schedules=schedules, **options)

    def serve(self, name: str, *, cron: str | None = None, interval: Any = None, rrule: str | None = None,
              limit: int | None = None, grace: float = 30.0, webhook_port: int | None = None,
              **options: Any) -> None:
        """Deploy this flow as ``name`` and run it in this process until stopped
        (Ctrl-C or SIGTERM); see :func:`flowcore.serve`. Each flow run executes in its
        own child process; ``limit`` caps how many at once."""
        from flowcore.deployments import serve

        serve(self.to_deployment(name, cron=cron, interval=interval, rrule=rrule, **options),
              limit=limit, grace=grace, webhook_port=webhook_port)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r}, fn={getattr(self.fn, '__qualname__', self.fn)!r})"


# -- helpers ---------------------------------------------------------------------


def _format(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _interrupted_state(exc: BaseException) -> State[Any]:
    """The state of a flow run whose body was stopped by ``exc`` (not an Exception):
    ``Cancelled`` when its coroutine was cancelled (``asyncio.CancelledError``: by the
    caller, or a timeout around the call), ``Crashed`` for Ctrl-C, ``sys.exit()`` and
    the like -- the run did not end on its own terms (as in Prefect)."""
    import sys

    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        return states.Cancelled("the flow run was cancelled while it ran")
    if isinstance(exc, KeyboardInterrupt):
        reason = "an interrupt signal (KeyboardInterrupt)"
    elif isinstance(exc, SystemExit):
        reason = f"a system exit call (sys.exit({'' if exc.code is None else repr(exc.code)}))"
    else:
        reason = f"{type(exc).__name__}"
    return states.Crashed(f"the flow run was aborted by {reason}")


def _resolve_upstreams(flow_name: str, arguments: dict[str, Any]) -> tuple[Exception | None, bool]:
    """Replace, in place, each argument holding task futures (in containers too) by
    the same with their results, ``allow_failure(x)`` and ``quote(x)`` as a task's
    arguments are (Prefect 3 resolves a flow's parameters so). Waits for the futures.
    Returns ``(error, replaced)``: the error that fails the run before its body when
    one of them did not complete (else None), and whether any argument was replaced."""
    import sys

    futures = sys.modules.get("flowcore.futures")
    if futures is None:  # nothing has submitted a run in this process: no futures exist
        return None, False
    replaced = False
    for name, value in arguments.items():
        if not futures.holds_inputs(value):
            continue
        found: list[Any] = []
        futures.collect_inputs(value, found)
        for item in found:
            if isinstance(item, futures.TaskFuture):
                item.wait()
                state = item.state
                if not state.is_completed():
                    from flowcore.errors import UpstreamFailedError

                    return UpstreamFailedError(
                        f"flow {flow_name!r}: parameter {name!r} holds the future of task run "
                        f"{item.name!r}, which ended in state {state!r}"
                    ), replaced
        arguments[name] = futures.resolve_inputs(value)
        replaced = True
    return None, replaced


def _state_from_return(value: Any) -> State[Any]:
    """The flow's state from what its body returned (futures are waited for;
    ``quote(x)``: ``x`` as it is)."""
    from flowcore.futures import TaskFuture, collect_futures, resolve_futures

    if isinstance(value, quote):
        return states.Completed(value.value)
    if isinstance(value, State):
        if value.is_completed():  # ``return Completed(message=...)``: its message too
            return states.Completed(value.data, value.message)
        return _wrap_returned_state(value, "a state")
    if isinstance(value, TaskFuture):
        value.wait()
        return _wrap_returned_state(value.state, f"the future of task run {value.name!r}")
    futures = collect_futures(value)
    if futures:
        for future in futures:
            future.wait()
        failed = [f for f in futures if not f.state.is_completed()]
        if failed:
            first = failed[0].state
            return State(
                StateType.FAILED,
                "Failed",
                f"{len(failed)} of {len(futures)} returned futures did not complete; first: "
                f"task run {failed[0].name!r} ended {first!r}",
                exception=first.exception,
                traceback=first.traceback,
            )
        return states.Completed(resolve_futures(value))
    return states.Completed(value)


def _wrap_returned_state(state: State[Any], what: str) -> State[Any]:
    if state.is_completed():
        return states.Completed(state.data)
    if not state.is_final():
        return State(StateType.FAILED, "Failed", f"the flow returned {what} that is not final ({state!r})",
                     exception=ValueError(f"flow returned a non-final state {state!r}"))
    return State(
        StateType.FAILED,
        "Failed",
        f"the flow returned {what} in state {state!r}",
        exception=state.exception,
        traceback=state.traceback,
    )


def _stop_outstanding(context: FlowRunContext, *, closing: bool = False) -> None:
    """Cancel the run's queued tasks and have the backend stop the others.

    A backend that can (capability ``stops_running``) ends only this run's workers: a
    pool shared with other flows stays up, and their runs lost with it are
    resubmitted. ``closing``: the run owns the backend and shuts it down right after.
    """
    outstanding = context.outstanding()
    for future in outstanding:
        future.cancel()
    backend = context.slot.instance
    if backend.capabilities.stops_running:
        live: set[str] = set()
        for future in outstanding:
            live |= future.live_run_ids()
        backend.stop_runs(live, closing=closing and context.slot.owned)


def _log_failed_runs(context: FlowRunContext) -> None:
    """Log each failed task run of the flow run once, at ERROR (Prefect logs every task
    run's final state): a run nothing looked at with its traceback, since nobody else
    will show it; a run whose state or result the flow looked at by its final state."""
    if not context.failed:
        return
    from flowcore.engine import task_run_logger
    from flowcore.futures import final_state, is_observed

    failed = [
        (f, final)
        for f in context.failed
        if (final := final_state(f)) is not None
        and not final.is_completed()
        and not final.is_cancelled()  # stopped on purpose (by the caller, or this run's failure)
    ]
    if not failed:
        return
    unobserved = [(f, state) for f, state in failed if not is_observed(f)]
    observed = [(f, state) for f, state in failed if is_observed(f)]
    for future, state in observed[:_MAX_FAILURE_REPORTS]:
        task_run_logger(future.call).error("Finished in state %r", state)
    if len(observed) > _MAX_FAILURE_REPORTS:
        _run_logger(context).error(
            "... and %d more failed task runs", len(observed) - _MAX_FAILURE_REPORTS
        )
    logger = _run_logger(context)
    # Runs that crashed with one same error (each run that an unreachable Dask
    # scheduler refused) are reported in one line, not one line per run.
    groups: dict[object, list[tuple[Any, State[Any]]]] = {}
    for future, state in unobserved:
        cause = state.exception.__cause__ if state.is_crashed() and state.exception is not None else None
        key = (state.name, type(cause).__name__, str(cause)) if cause is not None else id(future)
        groups.setdefault(key, []).append((future, state))
    reports = list(groups.values())
    for group in reports[:_MAX_FAILURE_REPORTS]:
        future, state = group[0]
        details = (state.traceback or "").rstrip("\n")
        if len(group) > 1:
            logger.error(
                "%d task runs crashed with the same error and nothing retrieved their results "
                "or states; the first, %r, ended in state %r%s",
                len(group),
                future.name,
                state,
                "\n" + details if details else "",
            )
            continue
        logger.error(
            "Task run %r ended in state %r and nothing retrieved its result or state%s",
            future.name,
            state,
            "\n" + details if details else "",
        )
    if len(reports) > _MAX_FAILURE_REPORTS:
        rest = sum(len(group) for group in reports[_MAX_FAILURE_REPORTS:])
        logger.error("... and %d more unobserved failed task runs", rest)


def _check_backend(value: object, owner: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if all(hasattr(value, a) for a in ("submit", "shutdown", "name", "kind", "max_workers")):
        return value
    raise TypeError(
        f"{owner}: 'backend' must be a backend name such as 'threads' or an instance from "
        f"flowcore.get_backend(name, **options), got {type(value).__name__} {value!r}"
    )


def _flow_options(
    fn: Callable[..., Any], given: Mapping[str, Any], *, base: FlowOptions | None = None
) -> FlowOptions:
    from flowcore.options import flow_options  # loads with the first decoration

    return flow_options(fn, given, base=base, check_backend=_check_backend)


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(
    __fn: None = None, **options: Unpack[FlowOptionInputs]
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    __fn: Callable[P, R] | None = None, **options: Unpack[FlowOptionInputs]
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow, bare (``@flow``) or with options (``@flow(backend="threads")``).

    Options (validated here):
        name / description: shown in logs (description defaults to the docstring).
        backend: a registered backend name, or an instance from
            ``get_backend(name, **options)`` that the caller owns. Default: the
            enclosing ``use_backend`` block or parent flow, else the configuration.
        backend_options: a dict of options for the backend that ``backend`` names
            (``{"address": "tcp://host:8786"}``), created with them for each run and
            shut down when it ends; the backend checks them before the body runs.
            ``with_options(backend=...)`` without them drops the old ones.
        retries / retry_delay_seconds: rerun the whole body when the run fails.
        timeout_seconds: stop the body after this long (state ``TimedOut``).
        log_prints: send ``print()`` in the flow and its tasks to the run loggers.
        on_completion / on_failure / on_crashed / on_cancellation: lists of
            ``hook(flow, flow_run, state)`` called once when the run ends in that kind of
            state (on_failure: Failed and TimedOut; on_crashed: aborted by Ctrl-C or
            ``sys.exit()``; on_cancellation: an async flow cancelled while it ran).
        on_running: list of ``hook(flow, flow_run, state)`` called once when the run
            starts (before its body; not again for its retries).
        validate_parameters: check and coerce arguments against the type hints
            (pydantic) before the body starts (default True).
        flow_run_name: the name of each run (logs, run events, the history, ``flowcore
            runs ls``): a ``str.format`` template over the flow's parameters, e.g.
            ``"etl-{day}"`` (an unknown field fails here), or a callable taking no
            arguments that returns a str (``get_run_context()`` works inside it).
            Default: ``<flow>-<first 8 characters of the run id>``.
        persist_result: the default of the task option for the flow's task runs
            (and its subflows' without their own); see :mod:`flowcore.results`.
        result_storage: the default ``result_storage`` of its task runs (a directory,
            a registered cache store's name or a store object); giving it turns
            ``persist_result`` on unless that is False.
    """
    if __fn is not None:
        return Flow(__fn, _flow_options(__fn, options))
    # What does not depend on the function fails at the decorator line already.
    from flowcore import options as opts  # loads with the first decoration

    opts.check_option_names(options, opts.FlowOptions, "@flow")
    name = options.get("name")
    owner = f"@flow {name!r}" if name else "@flow"
    opts.retry_policy(
        opts.check_retries(options.get("retries", 0), owner), options.get("retry_delay_seconds"), None, owner
    )
    opts.check_timeout(options.get("timeout_seconds"), owner)
    _check_backend(options.get("backend"), owner)
    opts.check_backend_options(options.get("backend_options"), options.get("backend"), owner)

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return Flow(fn, _flow_options(fn, options))

    return decorate


def _no_task_run(frame: Any) -> None:
    """What a flow's attempt gives the stack walk for awaited runs: no task run."""
    return None


# The stack walk of flowcore.context.current_task_run stops at a flow's attempt: a
# subflow awaited inside a task awaited on the short path sees its own run only.
awaiting_codes[Flow._attempt.__code__] = _no_task_run
awaiting_codes[Flow._attempt_async.__code__] = _no_task_run

__all__ = ["Flow", "flow"]
