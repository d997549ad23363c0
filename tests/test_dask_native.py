"""Native futures on the dask backend: results stay on the workers.

A future passed to a downstream task reaches it as a Dask future, so its data moves
between workers (or not at all) and never through this process. The large values of
these tests are :class:`Big` objects that count how often they are unpickled in each
process: the parent's count says exactly which values came here.

One LocalCluster of two worker processes serves the module (as in
``test_dask_conformance``); each test connects its own backend by address and shuts it
down (closing its client only), except the test that lets the backend start and close
its own local cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import pytest

pytest.importorskip("distributed")
pytest.importorskip("numpy")

import numpy as np
from flowcore.backends._native import NativeValue

import flowcore
from flowcore import flow, task
from flowcore.backend import Backend
from flowcore.errors import UpstreamFailedError
from flowcore.futures import TaskFuture
from flowcore.states import State

#: how many Big values were unpickled in this process (per process: workers count their own)
UNPICKLED = [0]


def _rebuild(array: Any) -> Big:
    UNPICKLED[0] += 1
    return Big(array)


class Big:
    """A large array that records each unpickling in the process that unpickles it."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.array,))


# -- tasks (workers import this module by reference) -------------------------------------

MB = 1 << 20


@task
def source(megabytes: float, fill: float = 1.0) -> Big:
    return Big(np.full(int(megabytes * MB) // 8, fill))


@task
def scale(big: Big, factor: float) -> Big:
    return Big(big.array * factor)


@task
def total(parts: list[Big]) -> float:
    return float(sum(part.array.sum() for part in parts))


@task
def combine(nested: dict[str, Any], plain: int, extra: Big | None = None) -> float:
    """Sums every Big found in ``nested`` (lists, tuples, dicts), plus ``plain``."""

    def walk(value: Any) -> float:
        if isinstance(value, Big):
            return float(value.array.sum())
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple, set)):
            return sum(walk(v) for v in value)
        return float(value)

    return walk(nested) + plain + (walk(extra) if extra is not None else 0.0)


@task
def fails(big: Big) -> Big:
    raise ValueError("no")


@task
def worker_pid(_: Any = None) -> int:
    return os.getpid()


#: True in the flow's process while a test wants UnpicklableHere values refused here
#: (the workers import this module afresh: there it stays False)
REFUSE_HERE = [False]


def _rebuild_unless_here(array: Any) -> UnpicklableHere:
    if REFUSE_HERE[0]:
        # Not pickle's own words, but a class whose name holds "pickle" (issue 12.15)
        raise TypeError("UnpicklableHere cannot be rebuilt in the flow's process")
    return UnpicklableHere(array)


class UnpicklableHere:
    """A large value that unpickles on the workers but not in the flow's process."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unless_here, (self.array,))


@task
def refused_here(megabytes: float) -> UnpicklableHere:
    return UnpicklableHere(np.ones(int(megabytes * MB) // 8))


@task
def size_of(value: UnpicklableHere) -> int:
    return int(value.array.size)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"allowed_failures": 0},
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def backend(local_cluster: Any) -> Iterator[Backend]:
    instance = flowcore.get_backend("dask", address=local_cluster.scheduler_address)
    try:
        yield instance
    finally:
        instance.shutdown(wait=True)


@pytest.fixture(autouse=True)
def count_from_zero() -> None:
    UNPICKLED[0] = 0


def as_value(future: TaskFuture[Any]) -> Any:
    """A future where a value is expected (futures stand in for their values)."""
    return cast(Any, future)


# -- tests -------------------------------------------------------------------------------


def test_fan_out_fan_in_never_brings_the_large_values_here(backend: Backend) -> None:
    def body() -> float:
        big = source.submit(20)  # 20 MB
        middles = [scale.submit(as_value(big), k) for k in range(1, 5)]
        return total.submit(as_value(middles)).result()

    result = flow(backend=backend)(body)()
    assert result == (1 + 2 + 3 + 4) * (20 * MB // 8)
    assert UNPICKLED[0] == 0  # neither the source's array nor the middles' came here


def test_an_upstream_value_is_fetched_when_asked_once_per_batch(backend: Backend) -> None:
    # a callable run name is called at submission: batched single runs, not a map block
    named = source.with_options(task_run_name=lambda: "big")

    def body() -> tuple[list[Any], list[State[Any]], int, int]:
        futures = named.map(0.5, fill=list(range(40)))
        flowcore.wait(futures)
        states = [f.state for f in futures]
        assert UNPICKLED[0] == 0  # nothing fetched yet
        batches: dict[int, list[int]] = {}
        for index, state in enumerate(states):
            assert isinstance(state.data, NativeValue)
            batches.setdefault(id(state.data.handle), []).append(index)
        shared = max(batches.values(), key=len)
        futures[shared[-1]].result()
        after_one = UNPICKLED[0]
        values = [f.result() for f in futures] + [f.result() for f in futures]
        return values, states, after_one, len(shared)

    values, states, after_one, batch_size = flow(backend=backend)(body)()
    assert batch_size > 1
    assert after_one == batch_size  # one fetch brought the whole batch
    assert UNPICKLED[0] == 40  # each value came once, however often it was asked for
    assert [float(v.array[0]) for v in values] == list(range(40)) * 2
    assert all(s.is_completed() for s in states)


def test_futures_nested_in_containers_and_mixed_with_plain_values(backend: Backend) -> None:
    def body() -> tuple[float, int]:
        a = source.submit(1, 1.0)
        b = source.submit(1, 2.0)
        small = worker_pid.submit()  # a small value: comes back at once
        pid = small.result()
        nested = {"list": [a, 3], "tuple": (b,), "dict": {"again": a}, "set": {4}}
        combined = combine.submit(as_value(nested), plain=as_value(small), extra=as_value(b))
        return combined.result(), pid

    result, pid = flow(backend=backend)(body)()
    words = MB // 8
    assert result == words * (1 + 2 + 1 + 2) + 3 + 4 + pid
    assert UNPICKLED[0] == 0


def test_a_failed_upstream_leaves_its_downstream_not_run(backend: Backend) -> None:
    def body() -> tuple[State[Any], State[Any], float]:
        big = source.submit(1)
        failed = fails.submit(as_value(big))
        after = scale.submit(as_value(failed), 2)
        flowcore.wait([after])
        return failed.state, after.state, total.submit([as_value(big)]).result()

    failed, after, summed = flow(backend=backend)(body)()
    assert failed.is_failed() and isinstance(failed.exception, ValueError)
    assert after.name == "NotRun" and isinstance(after.exception, UpstreamFailedError)
    assert summed == MB // 8


def test_hooks_and_states_read_a_kept_value(backend: Backend) -> None:
    seen: list[float] = []

    def on_completion(_task: Any, _call: Any, state: State[Any]) -> None:
        seen.append(float(state.result().array[0]))

    hooked = source.with_options(on_completion=[on_completion])
    def body() -> tuple[State[Any], float]:
        state = hooked.submit(1, 7.0, return_state=True)
        return state, float(state.result().array[-1])  # fetched by the hook already

    state, last = flow(backend=backend)(body)()
    assert seen == [7.0] and last == 7.0 and float(state.result().array[0]) == 7.0
    assert UNPICKLED[0] == 1


def test_a_kept_future_has_its_value_after_the_local_cluster_is_closed() -> None:
    kept: list[TaskFuture[Any]] = []

    def body() -> None:
        big = source.submit(2, 3.0)
        kept.append(scale.submit(as_value(big), 2))
        flowcore.wait(kept)

    backend = flowcore.get_backend("dask", max_workers=2)
    try:
        flow(backend=backend)(body)()
        assert UNPICKLED[0] == 0
    finally:
        backend.shutdown()
    assert getattr(backend, "_cluster", None) is None  # the local cluster is gone
    assert UNPICKLED[0] == 1  # the kept value (only) came home before it closed
    value = kept[0].result()
    assert float(value.array.sum()) == 6.0 * (2 * MB // 8)
    assert UNPICKLED[0] == 1


def test_a_value_that_cannot_be_fetched_any_more_raises_crashed_naming_the_run(local_cluster: Any) -> None:
    from distributed import Client

    from flowcore.errors import CrashedError

    kept: list[TaskFuture[Any]] = []
    client = Client(local_cluster.scheduler_address, set_as_default=False)  # type: ignore[no-untyped-call]
    backend = flowcore.get_backend("dask", client=client)
    def body() -> None:
        kept.append(source.submit(1))
        flowcore.wait(kept)

    try:
        flow(backend=backend)(body)()
    finally:
        backend.shutdown()
        client.close()  # a client passed in is the caller's: its results go with it
    with pytest.raises(CrashedError, match=kept[0].name):
        kept[0].result()


@pytest.fixture
def refuse_here() -> Iterator[None]:
    REFUSE_HERE[0] = True
    try:
        yield
    finally:
        REFUSE_HERE[0] = False


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("refuse_here")
def test_a_kept_value_that_does_not_unpickle_here_fails_its_fetch_naming_the_run(backend: Backend) -> None:
    """The run completed (its value stays on the workers, which load it for downstream
    tasks); fetching it here fails with a SerializationError naming the run and the
    type, during the flow and after it (the backend tried to bring it home before
    closing its client), not Dask's raw error or a Crashed run."""
    from flowcore.errors import SerializationError

    kept: list[TaskFuture[Any]] = []  # outside the flow's return value, which resolves futures

    def body() -> tuple[int, BaseException | None, int]:
        kept.append(refused_here.submit(1))
        downstream = size_of.submit(as_value(kept[0]))
        error: BaseException | None = None
        try:
            kept[0].result()
        except BaseException as exc:  # the test inspects whatever came
            error = exc
        from flowcore.testing import workloads

        return downstream.result(), error, workloads.add.submit(1, 2).result()

    size, during, after = flow(backend=backend)(body)()
    assert size == MB // 8  # the workers unpickled it for the downstream task
    assert after == 3
    assert kept[0].state.is_completed()
    with pytest.raises(SerializationError) as after_flow:
        kept[0].result()
    for error in (during, after_flow.value):
        assert isinstance(error, SerializationError), repr(error)
        message = str(error)
        assert kept[0].name in message and "UnpicklableHere" in message, message
        assert "cannot be unpickled in the flow's process" in message, message
