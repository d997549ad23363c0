"""Coroutines from synchronous code, and whether a call site is asynchronous.

flowcore runs ``async def`` tasks and flows wherever it runs synchronous ones. Two
questions come up on every call of one:

* **Does the caller await?** :func:`in_async_context` answers it. A call returns a
  coroutine (to be awaited) only when an event loop runs in this thread *and* the
  innermost run around the call -- a task run, else a flow run -- is itself async (no
  run at all: the running loop decides, as in Prefect). A synchronous task or flow
  body that calls an async task gets its value, even when some outer async flow's
  loop runs in this thread.
* **How does synchronous code run one to completion?** :func:`run_sync`. Each thread
  keeps one event loop (an :class:`asyncio.Runner`) for the async task bodies it runs
  -- a pool thread or a process worker runs many, and a fresh loop per run would cost
  more than a small run -- and runs each coroutine in a copy of the caller's context
  (so the run sees its flow, its backend, its logger). When a loop already runs in
  this thread (a synchronous task called from an async flow's body, or the sequential
  backend inside an async flow), the coroutine runs on a helper thread's loop and
  this thread blocks until it is done, as a synchronous call would.

The loops flowcore makes carry the run of a task awaited on the short path into the
tasks and threads its body starts (see :func:`_make_task`): such a run is found on the
stack when first asked for rather than set in the context when it starts
(:func:`flowcore.context.current_task_run`). An async flow run on a loop the caller
made (``asyncio.run(my_flow())``) gives that loop the same task factory, unless it has
one of its own (:func:`carry_awaited_runs`). A loop with a factory of its own does
not carry them, and neither does a callback the body schedules with ``loop.call_soon``
before it asked for its run, nor a copy of the context that other code makes
(``contextvars.copy_context()``, ``anyio.to_thread.run_sync``): those see the flow run.

asyncio itself is imported on first use: ``import flowcore`` does not load it, and
no loop can run in a process that has not imported it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from flowcore.context import FlowRunContext, _scope, _task_run, awaited_run, awaiting

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

_local = threading.local()


class _ThreadRunner:
    """The event loop of one thread, closed when the thread's locals are dropped."""

    __slots__ = ("runner",)

    def __init__(self) -> None:
        self.runner = _runner()

    def __del__(self) -> None:
        # Fails when another loop runs in the collecting thread, at interpreter exit ...
        with contextlib.suppress(Exception):
            self.runner.close()


_get_running_loop: Any = None  # asyncio's, once asyncio has been imported


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (never raises, imports nothing)."""
    global _get_running_loop
    if _get_running_loop is None:
        module = sys.modules.get("asyncio")
        if module is None:
            return None
        # asyncio's documented low-level getter (returns None instead of raising)
        _get_running_loop = module._get_running_loop
    return _get_running_loop()  # type: ignore[no-any-return]


def in_async_context() -> bool:
    """Whether a call made here should return a coroutine for the caller to await.

    True when a loop runs in this thread and the innermost task run or flow run
    around the call is async (or there is none): see the module docstring.
    """
    if running_loop() is None:
        return False
    task_run = _task_run.get()
    if task_run is not None:
        return bool(task_run.task.isasync)
    scope = _scope.get()
    while scope is not None:
        if isinstance(scope, FlowRunContext):
            # in a synchronous flow, the body of an async task awaited on the short
            # path (not in the context variable: found on the stack) awaits too
            return bool(scope.flow.isasync) or awaited_run(sys._getframe(1)) is not None
        scope = scope.parent
    return True


def run_sync(coroutine: Coroutine[Any, Any, T], *, fresh_loop: bool = False) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its value (or
    raise its exception). Blocks the calling thread.

    The coroutine runs in a copy of the caller's context, on this thread's own loop
    (``fresh_loop=True``: on a new loop, closed after, as ``asyncio.run`` does; a flow
    called from a script uses this), or, when a loop already runs in this thread, on a
    helper thread's new loop.
    """
    import asyncio

    context = contextvars.copy_context()
    if asyncio._get_running_loop() is not None:  # the documented low-level getter
        return _run_in_helper_thread(coroutine, context)
    if fresh_loop:
        with _runner() as runner:
            return runner.run(coroutine, context=context)
    holder: _ThreadRunner | None = getattr(_local, "runner", None)
    if holder is None:
        holder = _local.runner = _ThreadRunner()
    return holder.runner.run(coroutine, context=context)


def _run_in_helper_thread(coroutine: Coroutine[Any, Any, T], context: contextvars.Context) -> T:
    outcome: list[tuple[bool, Any]] = []

    def body() -> None:
        try:
            with _runner() as runner:
                outcome.append((True, runner.run(coroutine, context=context)))
        except BaseException as exc:  # handed to the blocked caller
            outcome.append((False, exc))

    helper = threading.Thread(target=body, name="flowcore-coroutine", daemon=True)
    helper.start()
    helper.join()
    ok, payload = outcome[0]
    if ok:
        return payload  # type: ignore[no-any-return]
    raise payload


def _runner() -> asyncio.Runner:
    """An :class:`asyncio.Runner` whose loop starts tasks and executor calls with the
    run awaited on the short path around them (see :func:`_make_task`)."""
    import asyncio

    runner = asyncio.Runner()
    carry_awaited_runs(runner.get_loop())
    return runner


def carry_awaited_runs(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` start tasks and executor calls with the run awaited on the short
    path around them (see :func:`_make_task`), as the loops flowcore makes do; called
    too by an async flow run on a loop the caller made (``asyncio.run(my_flow())``, a
    flow awaited in the caller's ``asyncio.run(main())``). A loop that has a task
    factory already (flowcore's, or the caller's own) is left as it is: there, tasks
    and threads that a body starts before it asked for its run see the flow run. The
    factory stays on the loop after the flow run (it costs a dictionary's truth test
    per task started while no awaited run is in progress)."""
    global _Task, _STEP_CODE, _current_task
    if loop.get_task_factory() is not None:
        return
    if _Task is None:
        import asyncio
        from asyncio.events import Handle

        _Task, _STEP_CODE, _current_task = asyncio.Task, Handle._run.__code__, asyncio.current_task
    loop.set_task_factory(_make_task)  # type: ignore[arg-type]
    with contextlib.suppress(AttributeError):  # a loop whose methods cannot be replaced (uvloop)
        loop.run_in_executor = functools.partial(_run_in_executor, loop.run_in_executor)  # type: ignore[method-assign,assignment]


_Task: Any = None  # asyncio.Task, once a runner was made
_current_task: Any = None  # asyncio.current_task, likewise
_STEP_CODE: Any = None  # the code of the frame that runs each step of an asyncio task
_getframe = sys._getframe


def _make_task(
    loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], *, context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """The task factory of flowcore's loops: a task as the loop's default makes it; but
    one started in the body of a run awaited on the short path whose run the context
    does not hold yet (it is found on the stack when first asked for, see
    :func:`flowcore.context.current_task_run`) first gets that run set in the context
    it copies, so that it sees the run as it would had the run been set when it
    started. Only the frames of the asyncio task that runs this code are looked at;
    this runs for every task the loop starts (``asyncio.gather`` of 10,000 runs makes
    10,000), so it looks at the stack only when the running asyncio task awaits such a
    run (:data:`flowcore.context.awaiting`)."""
    if awaiting and context is None and _current_task(loop) in awaiting and _task_run.get() is None:
        awaited_run(_getframe(1), _STEP_CODE)
    return _Task(coroutine, loop=loop, context=context)  # type: ignore[no-any-return]


def _run_in_executor(original: Any, executor: Any, function: Any, *args: Any) -> Any:
    """The loops' ``run_in_executor``: as :func:`_make_task` does for a task, a call in
    the body of a run awaited on the short path gets that run set in the context it
    runs in. ``asyncio.to_thread`` copies the context before it calls this: the run is
    set in that copy (its function is ``functools.partial(copy.run, ...)``)."""
    if awaiting and _current_task() in awaiting and _task_run.get() is None:
        run = awaited_run(_getframe(1), _STEP_CODE)
        if run is not None:
            copied = getattr(getattr(function, "func", None), "__self__", None)
            if isinstance(copied, contextvars.Context):
                copied.run(_task_run.set, run)
    return original(executor, function, *args)


#: (code, instruction offset) of a call site -> whether it is written directly inside a
#: runner's call (see handed_to_a_runner)
_runner_sites: dict[tuple[Any, int], bool] = {}
#: attribute names of the calls that run a coroutine given to them
_RUNNER_METHODS = frozenset({"run", "run_until_complete"})


def handed_to_a_runner(frame: Any) -> bool:
    """Whether the call ``frame`` is making now is written directly as the argument of a
    call that runs a coroutine: ``asyncio.run(my_flow())``, ``run(my_flow())`` (from
    asyncio), ``loop.run_until_complete(my_flow())``, ``runner.run(my_flow())`` (an
    ``asyncio.Runner``), read from the call site's source (``ast``, positions of the
    instruction) and cached per site. False when the source cannot be read (a REPL
    without it): the caller then gets the value, as it does elsewhere.

    This is how ``asyncio.run(my_flow())``, Prefect's way to start an async flow, works
    beside flowcore's ``my_flow()``, which runs it to completion from synchronous code."""
    site = (frame.f_code, frame.f_lasti)
    found = _runner_sites.get(site)
    if found is None:
        try:
            found = _written_in_a_runner(frame)
        except Exception:  # unreadable or unparsable source: the plain rule
            found = False
        if len(_runner_sites) > 4096:
            _runner_sites.clear()
        _runner_sites[site] = found
    return found


def _written_in_a_runner(frame: Any) -> bool:
    import ast
    import linecache

    code = frame.f_code
    positions = list(code.co_positions())
    line, end_line, column, end_column = positions[frame.f_lasti // 2]
    if line is None or column is None:
        return False
    source = "".join(linecache.getlines(code.co_filename, frame.f_globals))
    if not source:
        return False
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or len(node.args) != 1 or node.keywords:
            continue
        inner = node.args[0]
        if not (
            isinstance(inner, ast.Call) and inner.lineno == line and inner.col_offset == column
            and inner.end_lineno == end_line and inner.end_col_offset == end_column
        ):
            continue
        return _runs_coroutines(node.func, frame)
    return False


def _runs_coroutines(function: Any, frame: Any) -> bool:
    """Whether the callee expression ``function`` names asyncio's ``run``, a loop's
    ``run_until_complete`` or an ``asyncio.Runner``'s ``run`` (names looked up in the
    caller's frame; other expressions judged by the method's name)."""
    import ast
    import asyncio

    def lookup(name: str) -> Any:
        if name in frame.f_locals:
            return frame.f_locals[name]
        if name in frame.f_globals:
            return frame.f_globals[name]
        return frame.f_builtins.get(name)

    if isinstance(function, ast.Name):
        return lookup(function.id) is asyncio.run
    if not isinstance(function, ast.Attribute) or function.attr not in _RUNNER_METHODS:
        return False
    if not isinstance(function.value, ast.Name):  # asyncio.get_event_loop().run_until_complete(...)
        return function.attr == "run_until_complete"
    owner = lookup(function.value.id)
    if owner is asyncio:
        return function.attr == "run"
    if function.attr == "run":
        return isinstance(owner, asyncio.Runner)
    return isinstance(owner, asyncio.AbstractEventLoop)


def call_hook(hook: Any, *args: Any) -> None:
    """Call a run hook with ``args``; when it gives an awaitable (an ``async def``
    hook), run that to completion here, as Prefect 3 does, on this thread's loop or,
    when a loop already runs in this thread, on a helper thread's. Its exceptions
    propagate to the caller (which logs them)."""
    result = hook(*args)
    if hasattr(result, "__await__"):
        run_sync(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


__all__ = ["call_hook", "carry_awaited_runs", "in_async_context", "run_sync", "running_loop"]
