"""Run hooks beyond on_completion/on_failure: a flow's on_running, on_crashed and
on_cancellation, a task's on_running. (Every backend runs the hook tests of the
conformance suite: once each, in the submitting process.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcore import flow, task
from flowcore.states import State


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, kind: str) -> list[Any]:
        def hook(owner: Any, run: Any, state: State[Any]) -> None:
            self.seen.append(f"{kind}:{state.name}")

        return [hook]

    def flow_options(self) -> dict[str, Any]:
        return {
            kind: self(kind)
            for kind in ("on_running", "on_completion", "on_failure", "on_crashed", "on_cancellation")
        }


@pytest.mark.parametrize(
    ("raised", "message"),
    [(KeyboardInterrupt, "interrupt signal"), (SystemExit, "sys.exit(3)")],
    ids=["ctrl-c", "sys-exit"],
)
def test_an_interrupted_flow_is_crashed_and_calls_on_crashed(raised: type[BaseException], message: str) -> None:
    hooks = Recorder()
    states: list[State[Any]] = []

    @flow(**hooks.flow_options())
    def interrupted() -> None:
        raise raised(3) if raised is SystemExit else raised()

    from flowcore.hookspecs import hookimpl
    from flowcore.registry import get_registry

    class Finished:
        @hookimpl
        def flowcore_flow_run_finished(self, flow: Any, run: Any, state: State[Any]) -> None:
            states.append(state)

    observer = Finished()
    get_registry().register(observer, name="test-hooks-finished")
    try:
        with pytest.raises(raised):
            interrupted()
    finally:
        get_registry().unregister(observer)
    assert hooks.seen == ["on_running:Running", "on_crashed:Crashed"]
    assert states[-1].name == "Crashed" and message in states[-1].message


def test_a_cancelled_async_flow_calls_on_cancellation() -> None:
    hooks = Recorder()

    @flow(**hooks.flow_options())
    async def slow() -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        task_ = asyncio.ensure_future(slow())
        await asyncio.sleep(0.1)
        task_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_

    asyncio.run(main())
    assert hooks.seen == ["on_running:Running", "on_cancellation:Cancelled"]


def test_on_running_fires_before_the_body_once_per_run() -> None:
    order: list[str] = []

    @flow(retries=2, on_running=[lambda f, r, s: order.append(f"running:{s.name}")])
    def flaky() -> None:
        order.append("body")
        if order.count("body") < 3:
            raise ValueError("again")

    flaky()
    assert order == ["running:Running", "body", "body", "body"]


def test_a_refused_call_does_not_call_on_running() -> None:
    hooks = Recorder()

    @flow(**hooks.flow_options())
    def typed(n: int) -> int:
        return n

    typed("x", return_state=True)
    assert hooks.seen == ["on_failure:Failed"]


def test_failed_and_timed_out_flows_call_on_failure() -> None:
    hooks = Recorder()

    @flow(timeout_seconds=0.2, **hooks.flow_options())
    def slow() -> None:
        import time

        time.sleep(5)

    slow(return_state=True)
    assert hooks.seen == ["on_running:Running", "on_failure:TimedOut"]


def test_a_raising_hook_is_logged_and_the_state_kept(caplog: pytest.LogCaptureFixture) -> None:
    def bad(*_: Any) -> None:
        raise RuntimeError("hook broke")

    @flow(on_running=[bad])
    def fine() -> int:
        return 1

    @task(on_running=[bad])
    def t() -> int:
        return 2

    assert fine() == 1 and t() == 2
    assert sum("hook 'bad'" in r.getMessage() for r in caplog.records) == 2


def test_task_on_running_gets_a_running_state_dated_at_the_start() -> None:
    got: list[State[Any]] = []
    final: list[State[Any]] = []

    @task(on_running=[lambda t, c, s: got.append(s)], on_completion=[lambda t, c, s: final.append(s)])
    def work() -> int:
        return 1

    @flow
    def body() -> int:
        return work.submit().result() + work()

    assert body() == 2
    assert [s.name for s in got] == ["Running", "Running"]
    for running, done in zip(got, final, strict=True):
        assert running.is_running() and running.timestamp == done.started_at


def test_hook_options_are_validated() -> None:
    with pytest.raises(TypeError, match="on_running"):
        task(on_running=lambda *a: None)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_crashed"):
        flow(on_crashed=[1])(lambda: None)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="on_cancellation"):
        flow(on_cancellation="x")(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["sequential", "threads", "loky"])
def test_async_hooks_are_awaited(backend: str) -> None:
    # As in Prefect 3: a hook that is an ``async def`` function is awaited (a sync run
    # runs it to completion), for flows (sync and async) and tasks, never dropped as a
    # coroutine that nobody awaits.
    seen: list[str] = []

    def recorder(kind: str) -> Any:
        async def hook(owner: Any, run: Any, state: State[Any]) -> None:
            await asyncio.sleep(0)
            seen.append(f"{kind}:{state.name}")

        return hook

    @task(on_running=[recorder("t_running")], on_completion=[recorder("t_done")])
    def work(x: int) -> int:
        return x

    @task(on_failure=[recorder("a_failed")])
    async def broken() -> None:
        raise ValueError("boom")

    @flow(backend=backend, on_running=[recorder("f_running")], on_completion=[recorder("f_done")])
    def sync_flow() -> int:
        return work.submit(1).result()

    @flow(backend=backend, on_failure=[recorder("af_failed")])
    async def async_flow() -> None:
        await broken.submit()

    assert sync_flow() == 1
    assert seen == ["f_running:Running", "t_running:Running", "t_done:Completed", "f_done:Completed"]
    seen.clear()
    assert asyncio.run(_state_of(async_flow)).is_failed()
    assert seen == ["a_failed:Failed", "af_failed:Failed"]


def test_an_async_flows_async_hooks_run_on_its_own_loop() -> None:
    """An async flow's ``async def`` hooks (on_running, on_completion, on_failure) are
    awaited on the flow's own event loop, in its thread, as in Prefect: a hook can use
    what the body made on that loop (here an asyncio.Queue bound to it). Before, they
    ran on a helper thread's new loop."""
    seen: list[tuple[str, Any, Any]] = []
    loops: dict[str, Any] = {}

    def recorder(kind: str) -> Any:
        async def hook(owner: Any, run: Any, state: State[Any]) -> None:
            queue = loops.get("queue")
            item = queue.get_nowait() if queue is not None and not queue.empty() else None
            seen.append((kind, asyncio.get_running_loop(), item))

        return hook

    @flow(on_running=[recorder("running")], on_completion=[recorder("done")])
    async def fine() -> int:
        loops["flow"] = asyncio.get_running_loop()
        loops["queue"] = queue = asyncio.Queue()
        await queue.put("made in the body")
        return 1

    @flow(on_failure=[recorder("failed")])
    async def fails() -> None:
        loops["flow"] = asyncio.get_running_loop()
        raise ValueError("boom")

    assert fine() == 1
    assert seen == [("running", loops["flow"], None), ("done", loops["flow"], "made in the body")]
    seen.clear()
    loops.clear()
    assert fails(return_state=True).is_failed()
    assert seen == [("failed", loops["flow"], None)]


async def _state_of(owner: Any) -> State[Any]:
    state: State[Any] = await owner(return_state=True)
    return state


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_hooks_read_prefects_run_attributes(backend: str) -> None:
    # Prefect's hooks read flow_run.id / flow_run.name and task_run.id / task_run.name;
    # a missing attribute raised inside the hook, which was only logged.
    seen: dict[str, Any] = {}

    def flow_hook(owner: Any, flow_run: Any, state: State[Any]) -> None:
        seen["flow"] = (flow_run.id, flow_run.name)

    def task_hook(owner: Any, task_run: Any, state: State[Any]) -> None:
        seen["task"] = (task_run.id, task_run.name)

    @task(on_completion=[task_hook])
    def work() -> str:
        from flowcore import get_run_context

        info = get_run_context().task_run
        assert info is not None
        return info.id

    @flow(backend=backend, on_completion=[flow_hook])
    def body() -> tuple[str, str]:
        from flowcore import get_run_context

        info = get_run_context().flow_run
        assert info is not None
        return info.id, work.submit().result()

    flow_run_id, task_run_id = body()
    assert seen["flow"][0] == flow_run_id and seen["flow"][1].startswith("body-")
    assert seen["task"] == (task_run_id, "work-0")
