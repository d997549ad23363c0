"""Auto-batching of Task.map on process backends: same per-item outcomes, fewer trips."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("loky")

import flowcore
from flowcore import flow, task
from flowcore.backend import Backend
from flowcore.errors import SerializationError
from flowcore.testing import workloads as w


class CountingBackend(Backend):
    """A real loky backend that counts the trips made to it."""

    def __init__(self) -> None:
        self.inner = flowcore.get_backend("loky", max_workers=2)
        self.name = "counting-loky"
        self.kind = self.inner.kind
        self.max_workers = self.inner.max_workers
        self.trips = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self.lock:
            self.trips += 1
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait, cancel_futures=cancel_futures)

    def explain_failure(self, task_run_id: str, exc: BaseException) -> Any:
        return self.inner.explain_failure(task_run_id, exc)


@task
def maybe_fail(i: int) -> int:
    if i % 7 == 3:
        raise w.ConformanceError(f"item {i} fails")
    return i * 10


@task
def kill_worker_at(i: int, target: int, marker: str) -> int:
    if i == target and not Path(marker).exists():
        Path(marker).write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)
    return i


@task
def identity_of(value: Any) -> str:
    return type(value).__name__


def run_on(backend: Backend, body: Callable[[], Any]) -> Any:
    try:
        return flow(backend=backend)(body)()
    finally:
        backend.shutdown()


def test_many_tiny_tasks_take_far_fewer_trips() -> None:
    backend = CountingBackend()
    values = run_on(backend, lambda: [f.result() for f in w.add.map(range(3000), 1)])
    assert values == [i + 1 for i in range(3000)]
    assert backend.trips < 300  # batched: not one trip per task


def test_slow_tasks_stay_spread_over_the_workers() -> None:
    backend = CountingBackend()
    values = run_on(backend, lambda: [f.result() for f in w.sleep_for.map([0.2] * 6)])
    assert values == [0.2] * 6
    assert backend.trips >= 3  # never one batch holding everything


def test_each_item_keeps_its_own_state_and_exception() -> None:
    backend = flowcore.get_backend("loky", max_workers=2)

    def body() -> list[tuple[str, Any]]:
        futures = maybe_fail.map(range(40))
        out = []
        for future in futures:
            future.wait()
            state = future.state
            out.append((state.name, state.result(raise_on_failure=False)))
        return out

    outcomes = run_on(backend, body)
    for i, (name, value) in enumerate(outcomes):
        if i % 7 == 3:
            assert name == "Failed" and isinstance(value, w.ConformanceError)
            assert str(value) == f"item {i} fails"
        else:
            assert (name, value) == ("Completed", i * 10)


def test_retries_and_timeouts_apply_per_item(tmp_path: Path) -> None:
    backend = flowcore.get_backend("loky", max_workers=2)
    retrying = w.fail_until.with_options(retries=2)
    limited = w.sleep_in_steps.with_options(timeout_seconds=0.2)
    counters = [str(tmp_path / f"c{i}") for i in range(4)]

    def body() -> tuple[list[int], list[str]]:
        attempts = [f.result() for f in retrying.map(counters, 2)]
        timed = [f.state.name for f in flowcore.wait(limited.map([0.0, 5.0, 0.0])).done]
        return attempts, sorted(timed)

    attempts, timed = run_on(backend, body)
    assert attempts == [2, 2, 2, 2]
    assert timed == ["Completed", "Completed", "TimedOut"]


def test_a_worker_death_inside_a_batch_loses_no_other_result(tmp_path: Path) -> None:
    backend = flowcore.get_backend("loky", max_workers=2)
    marker = str(tmp_path / "killed")
    guarded = kill_worker_at.with_options(retries=1)

    def body() -> list[int]:
        return [f.result() for f in guarded.map(range(400), 250, marker)]

    assert run_on(backend, body) == list(range(400))
    assert Path(marker).exists()


def test_one_unpicklable_item_fails_alone() -> None:
    backend = flowcore.get_backend("loky", max_workers=2)
    items: list[Any] = [1, "two", threading.Lock(), 4.0]

    def body() -> list[Any]:
        return [f.result(raise_on_failure=False) for f in identity_of.map(items)]

    results = run_on(backend, body)
    assert results[0] == "int" and results[1] == "str" and results[3] == "float"
    assert isinstance(results[2], SerializationError) and "argument 'value'" in str(results[2])


def test_rapid_individual_submits_are_coalesced() -> None:
    backend = CountingBackend()

    def body() -> list[int]:
        futures = [w.add.submit(i, 1) for i in range(600)]
        return [f.result() for f in futures]

    assert run_on(backend, body) == [i + 1 for i in range(600)]
    assert backend.trips < 200


def test_a_lone_task_is_sent_at_once() -> None:
    backend = CountingBackend()

    def body() -> tuple[int, float]:
        future = w.sleep_for.submit(0.5)
        trips_right_after_submit = backend.trips
        return trips_right_after_submit, future.result()

    assert run_on(backend, body) == (1, 0.5)


@task
def touch_then_sleep(path: str, seconds: float) -> str:
    Path(path).touch()
    time.sleep(seconds)
    return path


def test_a_run_sent_in_a_batch_shows_running_while_it_executes(tmp_path: Path) -> None:
    """A run on a process backend travels in a batch (a lone submit too): its state is
    Running while the batch is out, not Pending (issue 11, point 5)."""
    marker = tmp_path / "started"

    @flow(backend="loky")
    def body() -> tuple[str, str]:
        future = touch_then_sleep.submit(str(marker), 2.0)
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = future.state.name
        future.wait()
        return seen, future.state.name

    assert body() == ("Running", "Completed")


@task
def counted_item(i: int, directory: str, culprit: int) -> Any:
    """Counts its executions in a file per item; item ``culprit`` returns a lock."""
    with open(os.path.join(directory, str(i)), "a") as counter:
        counter.write("x")
    time.sleep(0.002)
    return threading.Lock() if i == culprit else i


def test_an_unpicklable_result_in_a_coalesced_batch_fails_alone_and_nothing_runs_twice(tmp_path: Path) -> None:
    """Issue 12.22 for coalesced ``.submit`` batches: the run whose result cannot be
    pickled fails alone; no run of its batch executes a second time."""
    backend = CountingBackend()

    def body() -> list[Any]:
        futures = [counted_item.submit(i, str(tmp_path), 23) for i in range(40)]
        flowcore.wait(futures)
        return [f.state for f in futures]

    states = run_on(backend, body)
    assert backend.trips < 40  # the submits were coalesced into batches
    runs = {i: len((tmp_path / str(i)).read_text()) for i in range(40)}
    assert {i: n for i, n in runs.items() if n != 1} == {}, "runs executed more than once"
    culprit = states[23]
    assert culprit.name == "Failed" and isinstance(culprit.exception, SerializationError)
    assert "counted_item-23" in culprit.message and "_thread.lock" in culprit.message
    assert [s.result() for i, s in enumerate(states) if i != 23] == [i for i in range(40) if i != 23]
