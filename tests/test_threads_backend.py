"""The threads backend: lazy start, worker count, and running queued work in the waiter."""

from __future__ import annotations

import threading
from typing import Any

import flowcore
from flowcore import task
from flowcore.backend import BackendKind

release = threading.Event()


@task
def block_until_released() -> str:
    release.wait(30)
    return threading.current_thread().name


@task
def thread_name() -> str:
    return threading.current_thread().name


def test_backend_is_lazy_and_sized() -> None:
    backend = flowcore.get_backend("threads", max_workers=3)
    try:
        assert backend.kind is BackendKind.THREADS and backend.max_workers == 3
        assert backend.started is False  # type: ignore[attr-defined]
        assert backend.submit(pow, 2, 3).result() == 8
        assert backend.started is True  # type: ignore[attr-defined]
    finally:
        backend.shutdown()


def test_waiting_on_a_queued_task_runs_it_in_the_waiting_thread() -> None:
    """One worker, busy: the caller waiting on a queued task runs it itself instead of
    waiting for the worker (no hand-off, and no deadlock behind a blocked pool)."""
    release.clear()
    with flowcore.use_backend("threads", max_workers=1):
        busy = block_until_released.submit()
        queued = thread_name.submit()
        assert queued.result(timeout=None) == threading.current_thread().name
        assert not busy.done()
        release.set()
        assert busy.result().startswith("flowcore-thread")
        assert queued.state.is_completed()


def test_a_timed_wait_never_runs_the_task_in_the_caller() -> None:
    release.clear()
    with flowcore.use_backend("threads", max_workers=1):
        busy = block_until_released.submit()
        queued = thread_name.submit()
        queued.wait(timeout=0.05)
        assert not queued.done()  # still queued behind the busy worker
        release.set()
        assert queued.result(timeout=30).startswith("flowcore-thread")  # timed: no stealing
        busy.result()


def test_a_running_task_is_waited_for_not_rerun() -> None:
    release.clear()
    counter: list[str] = []

    @task
    def counted() -> int:
        counter.append(threading.current_thread().name)
        release.wait(30)
        return len(counter)

    with flowcore.use_backend("threads", max_workers=2):
        future = counted.submit()
        while not counter:  # wait until a worker has started it
            threading.Event().wait(0.001)
        threading.Timer(0.05, release.set).start()
        assert future.result() == 1
    assert len(counter) == 1 and counter[0].startswith("flowcore-thread")


@task(timeout_seconds=1, retries=1)
def sleeps_past_its_timeout(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "woke"


def test_a_blocked_run_times_out_at_its_deadline_and_is_abandoned(caplog: Any) -> None:
    """issue 12 (5): a thread blocked in a call the timer cannot interrupt (time.sleep)
    held the run (and its retry) to the end of the call: 10 s for two 5 s sleeps."""
    import logging
    import time

    @flowcore.flow(backend="threads")
    def body() -> tuple[str, int]:
        state = sleeps_past_its_timeout.submit(30.0, return_state=True)
        return state.name, state.attempts

    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        name, attempts = body()
    elapsed = time.monotonic() - started
    assert (name, attempts) == ("TimedOut", 2)
    assert elapsed < 20  # two 30 s sleeps were not waited for (the flow ended too)
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(abandoned) == 2, [r.getMessage() for r in caplog.records]  # once per attempt


# -- the pool: work items without a Future each ---------------------------------------


def test_a_queued_run_is_pending_until_a_thread_takes_it_and_can_be_cancelled() -> None:
    """A run queued behind a busy worker is Pending and cancellable; the worker that
    later reaches it skips it (it ran once: never)."""
    release.clear()
    ran: list[int] = []

    @task
    def record(i: int) -> int:
        ran.append(i)
        return i

    with flowcore.use_backend("threads", max_workers=1):
        busy = block_until_released.submit()
        queued = record.submit(1)
        kept = record.submit(2)
        assert queued.state.name == "Pending"
        assert queued.cancel() is True
        assert queued.state.name == "Cancelled"
        release.set()
        assert kept.result(timeout=30) == 2
        busy.result(timeout=30)
    assert ran == [2]


def test_a_run_being_executed_shows_running_and_cannot_be_cancelled() -> None:
    started = threading.Event()
    go = threading.Event()

    @task
    def wait_for_go() -> str:
        started.set()
        go.wait(30)
        return "done"

    with flowcore.use_backend("threads", max_workers=1):
        future = wait_for_go.submit()
        assert started.wait(30)
        assert future.state.name == "Running"
        assert future.cancel() is False
        go.set()
        assert future.result(timeout=30) == "done"


def test_shutdown_with_cancel_futures_cancels_the_runs_no_thread_took() -> None:
    release.clear()
    backend = flowcore.get_backend("threads", max_workers=1)
    with flowcore.use_backend(backend):
        busy = block_until_released.submit()
        queued = [thread_name.submit() for _ in range(3)]
        backend.shutdown(wait=False, cancel_futures=True)
        release.set()
        assert busy.result(timeout=30).startswith("flowcore-thread")
        for future in queued:
            future.wait(30)
            assert future.state.name == "Cancelled", future.state
            assert "shut down" in (future.state.message or "")


def test_the_pool_is_an_executor_that_starts_threads_on_demand() -> None:
    from flowcore.backends.threads import WorkerThreads

    pool = WorkerThreads(3)
    try:
        assert pool.submit(pow, 2, 5).result(timeout=30) == 32
        assert pool.submit(pow, 2, 6).result(timeout=30) == 64
        gate = threading.Barrier(4)  # three threads busy at once: the pool grows to its limit
        busy = [pool.submit(gate.wait, 30) for _ in range(3)]
        gate.wait(30)
        assert len({f.result(timeout=30) for f in busy}) == 3
        # and never beyond it
        names = {pool.submit(lambda: threading.current_thread().name).result(timeout=30) for _ in range(50)}
        assert len(names) <= 3 and all(n.startswith("flowcore-thread") for n in names)
        failing = pool.submit(int, "x")
        assert isinstance(failing.exception(timeout=30), ValueError)
    finally:
        pool.shutdown(wait=True)
    import pytest

    from flowcore.errors import BackendShutdownError

    with pytest.raises(BackendShutdownError):
        pool.submit(pow, 2, 2)


def test_a_forked_child_gets_threads_of_its_own() -> None:
    """After os.fork only the forking thread exists in the child: a pool used before
    the fork starts new threads there instead of waiting for its parent's."""
    import os

    from flowcore.backends.threads import WorkerThreads

    pool = WorkerThreads(2)
    try:
        assert pool.submit(pow, 2, 3).result(timeout=30) == 8  # threads started, one idle
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if the pool still runs work
            code = 1
            try:
                code = 0 if pool.submit(pow, 2, 4).result(timeout=20) == 16 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        pool.shutdown()
