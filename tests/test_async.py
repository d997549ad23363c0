"""Async tasks and flows: who gets a coroutine and who gets a value, flow timeouts,
retries and cancellation, many concurrent runs on one thread, and what ``import
flowcore`` loads. (Backend-facing behaviour is in the conformance suite: every backend
runs the ``test_async_*`` tests of ``flowcore.testing.conformance``.)"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from flowcore import flow, get_backend, get_run_logger, task
from flowcore.errors import CrashedError, TaskTimeoutError
from flowcore.events import EventKind, TaskRunEvent
from flowcore.hookspecs import hookimpl
from flowcore.states import State
from flowcore.tasks import AsyncTask, Task

NO_HANG = 15.0


class Boom(Exception):
    pass


@task
async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task
def sync_calls_async(x: int) -> Any:
    """A synchronous task whose body calls an async task: it gets the value."""
    return add(x, 1)


@task
async def async_calls_async(x: int) -> int:
    return await add(x, 1)


@task
async def logs_and_returns(x: int) -> int:
    get_run_logger().info("async task logging %d", x)
    return x


def test_an_async_function_makes_an_async_task() -> None:
    assert isinstance(add, AsyncTask) and isinstance(add, Task) and add.isasync
    assert isinstance(add.with_options(retries=1), AsyncTask)
    copy = pickle.loads(pickle.dumps(add))
    assert copy is add
    assert not sync_calls_async.isasync and type(sync_calls_async) is Task


def test_called_from_sync_code_it_returns_the_value() -> None:
    assert add(1, 2) == 3
    state = add(1, 2, return_state=True)
    assert isinstance(state, State) and state.result() == 3


def test_called_in_a_coroutine_it_returns_a_coroutine() -> None:
    async def main() -> tuple[int, list[int]]:
        call = add(1, 2)
        assert asyncio.iscoroutine(call)
        return await call, list(await asyncio.gather(add(1, 1), add(2, 2)))

    assert asyncio.run(main()) == (3, [2, 4])


def test_bad_arguments_raise_at_the_call() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="task 'add'"):
            add(1, 2, 3)

    asyncio.run(main())
    with pytest.raises(TypeError, match="task 'add'"):
        add(1)


def test_a_sync_body_inside_an_async_flow_gets_values() -> None:
    """A loop runs in the thread, but the innermost run (a sync task, a sync subflow)
    is synchronous: an async call there runs to completion and returns the value."""

    @flow
    def sync_subflow(x: int) -> Any:
        return add(x, 10)

    @flow
    async def outer(x: int) -> tuple[Any, Any, int]:
        return sync_calls_async(x), sync_subflow(x), await async_calls_async(x)

    assert outer(1) == (2, 11, 2)


def test_async_flow_called_from_sync_code_and_from_a_loop() -> None:
    @flow
    async def doubled(x: int) -> int:
        return await add(x, x)

    assert doubled(2) == 4  # from sync code: run to completion
    state = doubled(3, return_state=True)
    assert state.is_completed() and state.result() == 6

    async def main() -> int:
        coroutine = doubled(4)
        assert asyncio.iscoroutine(coroutine)
        return await coroutine

    assert asyncio.run(main()) == 8

    @flow
    def sync_parent() -> int:
        return doubled(5)  # a sync flow calling an async subflow gets its value

    assert sync_parent() == 10


def test_async_subflows_run_concurrently() -> None:
    @flow
    async def child(event: asyncio.Event, sets: bool) -> bool:
        if sets:
            event.set()
        await asyncio.wait_for(event.wait(), NO_HANG)
        return True

    @flow
    async def parent() -> list[bool]:
        event = asyncio.Event()
        return list(await asyncio.gather(child(event, False), child(event, True)))

    assert parent() == [True, True]


def test_async_flow_failure_and_state() -> None:
    @flow
    async def fails() -> None:
        await asyncio.sleep(0)
        raise Boom("no")

    with pytest.raises(Boom, match="no"):
        fails()
    state = fails(return_state=True)
    assert state.is_failed() and isinstance(state.exception, Boom)


def test_async_flow_retries() -> None:
    attempts: list[int] = []

    @flow(retries=2)
    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise Boom("again")
        return len(attempts)

    state = flaky(return_state=True)
    assert state.result() == 3 and state.attempts == 3


def test_async_flow_timeout_cancels_the_body() -> None:
    cancelled = threading.Event()

    @flow(timeout_seconds=0.3)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    state = slow(return_state=True)
    assert time.monotonic() - started < NO_HANG
    assert state.name == "TimedOut" and isinstance(state.exception, TaskTimeoutError)
    assert cancelled.is_set()


def test_cancelling_an_async_flow_from_outside() -> None:
    seen: list[str] = []

    @flow(
        on_cancellation=[lambda flow, run, state: seen.append(f"on_cancellation:{state.name}")],
        on_failure=[lambda flow, run, state: seen.append(f"on_failure:{state.name}")],
    )
    async def forever() -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(forever(), 0.2)

    asyncio.run(main())
    assert seen == ["on_cancellation:Cancelled"]


def test_many_runs_wait_at_once_on_one_thread() -> None:
    """1 000 awaited runs all wait together: each waits until every run has started
    (impossible if they ran one after the other), on the flow's thread."""
    n = 1000

    @task
    async def arrive(i: int, arrived: list[int], everyone: asyncio.Event) -> int:
        arrived.append(threading.get_ident())
        if len(arrived) == n:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), NO_HANG)
        return i

    @flow
    async def crowd() -> tuple[int, set[int]]:
        arrived: list[int] = []
        everyone = asyncio.Event()
        values = await asyncio.gather(*(arrive(i, arrived, everyone) for i in range(n)))
        return sum(values), set(arrived)

    total, threads = crowd()
    assert total == n * (n - 1) // 2
    assert threads == {threading.get_ident()}


def test_run_logger_and_sys_exit_in_async_tasks(caplog: pytest.LogCaptureFixture) -> None:
    @task
    async def exits() -> None:
        sys.exit(3)

    @flow
    async def body() -> tuple[int, State[Any]]:
        with pytest.raises(CrashedError, match=r"sys.exit\(3\)"):
            await exits()
        return await logs_and_returns(7), await exits(return_state=True)

    with caplog.at_level("INFO"):
        value, crashed = body()
    assert value == 7 and crashed.name == "Crashed"
    assert any("async task logging 7" in r.getMessage() for r in caplog.records)


def test_await_a_future_and_a_failed_future() -> None:
    @task
    async def boom() -> None:
        raise Boom("from a future")

    @flow(backend="threads")
    async def body() -> tuple[int, str]:
        ok = await add.submit(1, 2)
        with pytest.raises(Boom) as raised:
            await boom.submit()
        return ok, str(raised.value)

    assert body() == (3, "from a future")


def test_import_flowcore_does_not_load_asyncio() -> None:
    code = "import sys, flowcore; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_active = [0, 0]  # runs awaiting now, the most seen at once


@task
async def counted_wait(i: int) -> int:
    _active[0] += 1
    _active[1] = max(_active[1], _active[0])
    await asyncio.sleep(0.05)
    _active[0] -= 1
    return i


def test_a_map_of_async_runs_waits_together_in_a_worker_thread() -> None:
    """On an in-process pool, the runs of a map's batch wait together on the worker
    thread's event loop: with one worker, more than one run is awaiting at a time."""
    _active[:] = [0, 0]

    with get_backend("threads", max_workers=1) as one_thread:

        @flow(backend=one_thread)
        async def body() -> list[int]:
            return list(await asyncio.gather(*counted_wait.map(range(40))))

        assert body() == list(range(40))
    assert _active[1] > 1


# -- awaited direct runs (flowcore.direct_runs.call_async, await_unobserved) ---------------

HISTORY_PLUGIN = "flowcore.plugins.history"


@task
async def introspects(i: int, fail: bool = False) -> tuple[str, str, str]:
    """Its run's name as seen in the body, by a task the body creates and by a
    callback it schedules (both copy the body's context), after one suspension."""
    from flowcore import get_run_context

    def name() -> str:
        return get_run_context().task_run.name  # type: ignore[union-attr]

    await asyncio.sleep(0)
    own = name()

    async def child() -> str:
        return name()

    in_child = await asyncio.create_task(child())
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(lambda: seen.set_result(name()))
    in_callback = await seen
    if fail:
        raise Boom(f"run {i}")
    return own, in_child, in_callback


def _flow_of_awaited_runs(n: int) -> Any:
    @flow
    async def awaited(n: int) -> tuple[Any, ...]:
        from flowcore import get_run_context

        call = introspects(0)
        assert asyncio.iscoroutine(call)
        first = await call  # awaited inline, in the flow's own task
        after_first = get_run_context().task_run
        gathered = await asyncio.gather(*(introspects(i) for i in range(1, n)))
        with pytest.raises(Boom, match=f"run {n}"):
            await introspects(n, fail=True)
        cancelled = asyncio.ensure_future(introspects(n + 1))
        cancelled.cancel()  # before its first step: it never starts
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return first, after_first, gathered, get_run_context().task_run

    return awaited(n)


def _check_awaited_runs(n: int, result: tuple[Any, ...]) -> None:
    first, after_first, gathered, after_all = result
    assert first == ("introspects-0",) * 3
    assert list(gathered) == [(f"introspects-{i}",) * 3 for i in range(1, n)]
    assert after_first is None and after_all is None  # the flow body is no task run


def test_awaited_runs_are_their_own_task_runs_and_recorded(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the run history on (batched direct runs): each awaited run, inline or
    gathered, is the task run of its body, of the tasks it creates and the callbacks it
    schedules; every run that started is recorded (names, states, times); a run
    cancelled before its first step is not."""
    import sqlite3

    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path))
    monkeypatch.delenv("FLOWCORE_HISTORY", raising=False)
    n = 50
    _check_awaited_runs(n, _flow_of_awaited_runs(n))
    connection = sqlite3.connect(tmp_path / "history.db")
    try:
        stored = connection.execute(
            "SELECT name, state, start_time, end_time FROM task_runs_all WHERE task = 'introspects'"
        ).fetchall()
    finally:
        connection.close()
    by_name = {name: (state, start, end) for name, state, start, end in stored}
    assert set(by_name) == {f"introspects-{i}" for i in range(n + 1)}
    assert by_name[f"introspects-{n}"][0] == "Failed"
    assert all(by_name[f"introspects-{i}"][0] == "Completed" for i in range(n))
    assert all(start <= end for _, start, end in by_name.values())


def test_awaited_runs_unobserved() -> None:
    """With nothing observing runs the same calls behave the same (not recorded), and
    sys.exit() in an awaited body still ends that run only, as CrashedError."""
    from flowcore.registry import get_registry

    @task
    async def exits() -> None:
        await asyncio.sleep(0)
        sys.exit(2)

    @flow
    async def crashes() -> str:
        with pytest.raises(CrashedError, match=r"sys.exit\(2\)"):
            await exits()
        return "went on"

    registry = get_registry()
    plugin = registry.pm.get_plugin(HISTORY_PLUGIN)
    if plugin is not None:
        registry.unregister(plugin)
    try:
        assert not registry.observes_events
        _check_awaited_runs(5, _flow_of_awaited_runs(5))
        assert crashes() == "went on"
    finally:
        if plugin is not None:
            registry.register(plugin, name=HISTORY_PLUGIN)



def _pairs(home: Any, sql: str) -> dict[Any, Any]:
    """The two-column rows ``sql`` selects from the history database in ``home``, as a dict."""
    import sqlite3

    connection = sqlite3.connect(home / "history.db")
    try:
        return dict(connection.execute(sql).fetchall())
    finally:
        connection.close()


def _observed_or_not(run: Any, observed: bool) -> Any:
    """``run()`` as it is (the run history observing, when its plugin is registered),
    or with the history plugin unregistered (nothing observing runs)."""
    from flowcore.registry import get_registry

    registry = get_registry()
    plugin = registry.pm.get_plugin(HISTORY_PLUGIN)
    if observed or plugin is None:
        return run()
    registry.unregister(plugin)
    try:
        return run()
    finally:
        registry.register(plugin, name=HISTORY_PLUGIN)


def _seen_name() -> str | None:
    from flowcore import get_run_context

    task_run = get_run_context().task_run
    return task_run.name if task_run is not None else None


@task
async def starts_helpers_first(i: int) -> dict[str, Any]:
    """Starts a task, a gather of coroutines and a thread before its body asks for its
    run (an awaited run is found on the stack when first asked for, not set in the
    context when it starts): each of them sees the run; then the body, its id, and a
    run it awaits inline, which sees itself."""
    from flowcore import get_run_context

    async def helper() -> str | None:
        await asyncio.sleep(0)
        return _seen_name()

    in_task = asyncio.create_task(helper())
    gathered = await asyncio.gather(helper(), helper())
    in_thread = await asyncio.to_thread(_seen_name)
    context = get_run_context().task_run
    assert context is not None
    inner = await introspects(100 + i)
    return {
        "task": await in_task, "gathered": gathered, "thread": in_thread, "own": context.name,
        "id": context.id, "inner": inner, "after_inner": _seen_name(),
    }


@pytest.mark.parametrize("observed", [True, False], ids=["history", "unobserved"])
def test_what_an_awaited_run_starts_before_it_asks_for_its_run_sees_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, observed: bool
) -> None:
    """Tasks, gathered coroutines and ``asyncio.to_thread`` calls that an awaited
    run's body starts before it asks for its run see that run (flowcore's loops set it
    in the context they copy); the body sees its own run before and after awaiting
    another one inline; the history records each run under the id its body saw."""

    from flowcore.registry import get_registry

    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path))
    monkeypatch.delenv("FLOWCORE_HISTORY", raising=False)
    n = 4

    @flow
    async def fans_out() -> list[dict[str, Any]]:
        first = await starts_helpers_first(0)  # inline, in the flow's own task
        return [first, *await asyncio.gather(*(starts_helpers_first(i) for i in range(1, n)))]

    seen = _observed_or_not(fans_out, observed)
    plugin = get_registry().pm.get_plugin(HISTORY_PLUGIN)
    for i, run in enumerate(seen):
        name = f"starts_helpers_first-{i}"
        assert run["own"] == run["task"] == run["thread"] == run["after_inner"] == name
        assert run["gathered"] == [name, name]
        assert run["inner"] == (f"introspects-{i}",) * 3
    from flowcore.context import awaiting

    assert awaiting == {}  # every awaited run that started has ended
    if observed and plugin is not None:
        stored = _pairs(tmp_path, "SELECT name, id FROM task_runs_all WHERE task = 'starts_helpers_first'")
        assert stored == {f"starts_helpers_first-{i}": run["id"] for i, run in enumerate(seen)}


def test_an_async_task_run_to_completion_by_a_sync_flow_awaits_the_tasks_it_calls() -> None:
    """A synchronous flow calling an async task runs it to completion; in that body
    (an awaited run, not in the context variable) a call of another async task returns
    a coroutine to await, and both runs see themselves."""

    @task
    async def inner(x: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return x + 1, _seen_name()

    @task
    async def outer(x: int) -> tuple[Any, str | None, str | None]:
        call = inner(x)
        assert asyncio.iscoroutine(call)
        value = await call
        return value, _seen_name(), get_run_logger().extra["task_run_name"]  # type: ignore[index]

    @flow
    def sync_body() -> Any:
        return outer(1)

    assert sync_body() == ((2, "inner-0"), "outer-0", "outer-0")


def test_an_awaited_run_in_flight_keeps_one_object_more_than_a_plain_coroutine() -> None:
    """Thousands of awaited runs in flight cost the cyclic GC in proportion to the
    objects they keep alive: an awaited run keeps its coroutine beside the body's, and
    nothing else of its own (no context object, no context variable set: those made
    four). Counted with ``gc.get_objects()`` while 1,000 runs sleep, against 1,000
    plain coroutines; the bound (two) leaves room for what the history writer's thread
    holds at that moment."""
    import gc

    n = 1000
    counts: dict[str, int] = {}

    def count() -> int:
        gc.collect()
        return len(gc.get_objects())

    async def plain_sleeper(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    @task
    async def sleeper(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    async def probe(side: str) -> None:
        await asyncio.sleep(0.02)
        counts[side] = count()

    @flow
    async def in_flight() -> None:
        counts["flow-before"] = count()
        await asyncio.gather(probe("flow"), *(sleeper(i) for i in range(n)))

    async def plain() -> None:
        counts["plain-before"] = count()
        await asyncio.gather(probe("plain"), *(plain_sleeper(i) for i in range(n)))

    in_flight()
    asyncio.run(plain())
    in_flight()
    asyncio.run(plain())
    per_run = (counts["flow"] - counts["flow-before"]) / n
    per_plain = (counts["plain"] - counts["plain-before"]) / n
    assert per_run - per_plain <= 2.0, (per_run, per_plain)


@task
async def tells_its_id(i: int) -> str | None:
    """Its run id, as its body sees it, for even ``i``; None (never asked) for odd."""
    from flowcore import get_run_context

    await asyncio.sleep(0)
    if i % 2:
        return None
    return get_run_context().task_run.id  # type: ignore[union-attr]


@task
def tells_its_id_sync(i: int) -> str | None:
    from flowcore import get_run_context

    return None if i % 2 else get_run_context().task_run.id  # type: ignore[union-attr]


def test_a_recorded_direct_run_keeps_the_id_its_body_saw(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched direct runs take their run numbers late (when their body asks, else in
    one block when their buffer reports): the history records each run under the id
    its body saw, and every run under an id of its own."""
    import sqlite3

    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path))
    monkeypatch.delenv("FLOWCORE_HISTORY", raising=False)
    n = 40

    @flow
    async def awaited() -> list[str | None]:
        return list(await asyncio.gather(*(tells_its_id(i) for i in range(n))))

    @flow
    def called() -> list[str | None]:
        return [tells_its_id_sync(i) for i in range(n)]

    seen = {"tells_its_id": awaited(), "tells_its_id_sync": called()}
    connection = sqlite3.connect(tmp_path / "history.db")
    try:
        for task_name, ids in seen.items():
            stored = dict(
                connection.execute("SELECT name, id FROM task_runs_all WHERE task = ?", (task_name,)).fetchall()
            )
            assert len(stored) == n and len(set(stored.values())) == n
            for i, seen_id in enumerate(ids):
                assert (seen_id is None) == bool(i % 2)
                if seen_id is not None:
                    assert stored[f"{task_name}-{i}"] == seen_id
    finally:
        connection.close()


def test_an_async_flow_that_submits_nothing_starts_no_thread() -> None:
    """Its backend never started workers: the flow run closes it on the loop (no
    ``asyncio.to_thread``, whose executor would start threads for every flow run)."""

    @flow
    async def nothing_submitted(x: int) -> int:
        return await add(x, 1)

    assert nothing_submitted(1) == 2  # the history writer (if on) is started by now
    started: list[str] = []

    def trace(frame: Any, event: str, arg: Any) -> None:
        started.append(threading.current_thread().name)

    threading.settrace(trace)  # called in each thread started from now on
    try:
        assert nothing_submitted(2) == 3
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert started == []


def test_an_async_task_called_in_a_thread_that_copies_the_flows_context_runs_to_completion() -> None:
    """``asyncio.to_thread`` runs a function in a copy of the async flow's context but
    with no loop of its own: an async task called there is run to completion (its
    value, not a coroutine), and one awaited in the body afterwards is awaited as usual;
    both runs are recorded under the flow run."""
    from flowcore.registry import get_registry

    @task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    seen: list[Any] = []

    class Runs:
        @hookimpl
        def flowcore_run_events(self, events: Any) -> None:
            seen.extend(e for e in events if isinstance(e, TaskRunEvent) and e.kind is EventKind.FINISHED)

    @flow
    async def body() -> tuple[Any, int]:
        from_thread = await asyncio.to_thread(lambda: double(4))
        return from_thread, await double(5)

    registry = get_registry()
    observer = Runs()
    registry.register(observer, name="to-thread-runs")
    try:
        assert body() == (8, 10)
    finally:
        registry.unregister(observer)
    assert sorted(e.task_run_name for e in seen if e.task_name == "double") == ["double-0", "double-1"]


def _seen_in_copy() -> tuple[str, str]:
    """The run as code run in a copy of the context (``contextvars.copy_context().run``)
    sees it: (id, name)."""
    import contextvars

    def ask() -> tuple[str, str]:
        from flowcore import get_run_context

        task_run = get_run_context().task_run
        assert task_run is not None
        return task_run.id, task_run.name

    return contextvars.copy_context().run(ask)


@task
async def asks_in_a_copy_first(i: int) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """Asks for its run in a copy of its context first (a library that isolates its
    context), then, for even ``i``, in its own."""
    from flowcore import get_run_context

    await asyncio.sleep(0)
    in_copy = _seen_in_copy()
    if i % 2:
        return in_copy, None
    task_run = get_run_context().task_run
    assert task_run is not None
    get_run_logger().warning("run %d", i)  # (INFO is below the level under pytest)
    return in_copy, (task_run.id, task_run.name)


@pytest.mark.parametrize("observed", [True, False], ids=["history", "unobserved"])
def test_an_awaited_run_asked_for_in_a_copy_of_its_context_is_one_run(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, observed: bool
) -> None:
    """An awaited run whose body first asks for its run in a copy of its context
    (``contextvars.copy_context().run``: the run is set in that copy only) is one run:
    the body asking again after sees the same id and name, the history records it under
    that id (and its log records too), and nothing is left of it when it ends."""

    from flowcore import direct_runs
    from flowcore.context import awaiting
    from flowcore.registry import get_registry

    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path))
    monkeypatch.delenv("FLOWCORE_HISTORY", raising=False)
    n = 6

    @flow
    async def copies() -> list[Any]:
        first = await asks_in_a_copy_first(0)
        return [first, *await asyncio.gather(*(asks_in_a_copy_first(i) for i in range(1, n)))]

    seen = _observed_or_not(copies, observed)
    plugin = get_registry().pm.get_plugin(HISTORY_PLUGIN)
    for i, (in_copy, own) in enumerate(seen):
        assert in_copy[1] == f"asks_in_a_copy_first-{i}"
        assert own is None or own == in_copy
    assert len({in_copy[0] for in_copy, _ in seen}) == n
    assert awaiting == {} and direct_runs._materialized == {}
    if observed and plugin is not None:
        stored = _pairs(tmp_path, "SELECT name, id FROM task_runs_all WHERE task = 'asks_in_a_copy_first'")
        logged = _pairs(
            tmp_path, "SELECT task_run_name, task_run_id FROM logs WHERE task_name = 'asks_in_a_copy_first'"
        )
        assert stored == {in_copy[1]: in_copy[0] for in_copy, _ in seen}
        assert logged == {in_copy[1]: in_copy[0] for i, (in_copy, _) in enumerate(seen) if i % 2 == 0}


def test_asyncio_run_of_an_async_flow_call_runs_it_once_as_in_prefect() -> None:
    """``asyncio.run(my_flow())``, Prefect's way to start an async flow, gets the
    coroutine (the call is written inside a runner's call) and runs the flow once;
    ``my_flow()`` from synchronous code still runs it and returns the value. So do a
    loop's ``run_until_complete`` and an ``asyncio.Runner``'s ``run``, over several
    lines too; a call merely near one (an argument of ``str``) is not affected."""
    calls: list[int] = []

    @flow
    async def started_by_a_runner(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x + 1

    assert asyncio.run(started_by_a_runner(1)) == 2
    assert started_by_a_runner(2) == 3
    assert asyncio.run(
        started_by_a_runner(
            3,
        )
    ) == 4
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(started_by_a_runner(4)) == 5
    finally:
        loop.close()
    with asyncio.Runner() as runner:
        assert runner.run(started_by_a_runner(5)) == 6
    state = asyncio.run(started_by_a_runner(6, return_state=True))
    assert isinstance(state, State) and state.is_completed()
    assert str(started_by_a_runner(7)) == "8"
    assert calls == [1, 2, 3, 4, 5, 6, 7]
    # an async task called outside any flow, likewise
    assert asyncio.run(add(1, 2)) == 3
    assert add(2, 2) == 4


def test_asyncio_run_in_a_script_runs_the_flow_once(tmp_path: Any) -> None:
    """The same in a script run as ``python script.py`` (its source read from the file),
    with ``from asyncio import run`` too."""
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio\n"
        "from asyncio import run\n"
        "from flowcore import flow\n"
        "RUNS = []\n"
        "@flow\n"
        "async def main_flow(x: int) -> int:\n"
        "    RUNS.append(x)\n"
        "    return x * 10\n"
        "if __name__ == '__main__':\n"
        "    print(asyncio.run(main_flow(1)), run(main_flow(2)), main_flow(3), RUNS)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "FLOWCORE_HISTORY": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "10 20 30 [1, 2, 3]"


def _in_copied_threads() -> list[str]:
    """The run name (or "flow") that code run in copies of this context sees in other
    threads: a thread given ``copy_context().run``, a pool given it, and
    ``anyio.to_thread.run_sync`` where anyio is installed (these copy the context
    without flowcore's loop seeing it)."""
    import concurrent.futures
    import contextvars

    def who() -> str:
        from flowcore import get_run_context

        task_run = get_run_context().task_run
        return "flow" if task_run is None else task_run.name

    seen: list[str] = []
    copied = contextvars.copy_context()
    thread = threading.Thread(target=lambda: seen.append(copied.run(who)))
    thread.start()
    thread.join()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        seen.append(pool.submit(contextvars.copy_context().run, who).result())
    return seen


@task
async def copies_for_threads(ask_first: bool) -> tuple[list[str], str | None]:
    if ask_first:
        get_run_logger()
    seen = _in_copied_threads()
    try:
        import anyio.to_thread
    except ImportError:
        pass
    else:
        seen.append(await anyio.to_thread.run_sync(_seen_name))
    return seen, _seen_name()


def test_threads_given_a_copy_of_the_context_see_the_run_once_the_body_asked() -> None:
    """Code run in a copy of an awaited run's context in another thread (a thread or
    pool given ``copy_context().run``, ``anyio.to_thread.run_sync``) sees the run when
    the body asked for it first (the README's advice); copied before, it sees the flow
    run: a documented limit of awaited runs (found on the stack when first asked for,
    not set in the context when they start), which this test pins down."""

    @flow
    async def hands_to_threads() -> list[Any]:
        return [await copies_for_threads(True), await copies_for_threads(False)]

    (asked, asked_own), (not_asked, not_asked_own) = hands_to_threads()
    assert asked_own == "copies_for_threads-0" and not_asked_own == "copies_for_threads-1"
    assert set(asked) == {"copies_for_threads-0"} and len(asked) >= 2
    assert set(not_asked[:2]) == {"flow"}  # the limit: see the README's Async section
    assert all(seen in ("flow", None) for seen in not_asked[2:])


@task
async def starts_before_asking() -> tuple[str | None, str | None, str | None]:
    """A task and a thread started before the body asks for its run, then the body."""

    async def child() -> str | None:
        await asyncio.sleep(0)
        return _seen_name()

    in_task = asyncio.create_task(child())
    in_thread = await asyncio.to_thread(_seen_name)
    return await in_task, in_thread, _seen_name()


@flow
async def awaits_starts_before_asking() -> Any:
    return await starts_before_asking()


def test_an_async_flow_on_the_callers_loop_carries_its_awaited_runs_into_tasks_and_threads() -> None:
    """``asyncio.run(my_flow())`` (Prefect's way) and a flow awaited in the caller's
    ``asyncio.run(main())`` run on a loop flowcore did not make: the flow run gives it
    flowcore's task factory, so the tasks and ``asyncio.to_thread`` calls an awaited
    run's body starts before it asks see that run, as on flowcore's own loops (they saw
    the flow run). A loop with a task factory of its own is left as it is."""
    expected = ("starts_before_asking-0",) * 3

    async def main() -> Any:
        return await awaits_starts_before_asking()

    assert asyncio.run(awaits_starts_before_asking()) == expected
    assert asyncio.run(main()) == expected

    def own_factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coroutine, loop=loop, **kwargs)

    async def main_with_a_factory() -> Any:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(own_factory)  # type: ignore[arg-type]
        value = await awaits_starts_before_asking()
        assert loop.get_task_factory() is own_factory
        return value

    in_task, in_thread, own = asyncio.run(main_with_a_factory())
    assert own == "starts_before_asking-0" and in_task is None and in_thread is None  # the flow run
