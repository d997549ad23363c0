"""Async tasks: thousands of concurrent I/O-bound runs on one thread.

An ``async def`` flow gathers N awaited calls of an ``async def`` task whose body is
``await asyncio.sleep(0.01)``; all N wait at once on the flow's event loop, in one
thread. The anchor is the same N coroutines gathered by ``asyncio.run``, without
flowcore, timed right before every round (see ``_harness.run_paired``). The subject
includes the flow run itself (its start, its run-event reports, its end), as a user
calling the flow from a script pays it; the anchor includes ``asyncio.run``'s loop.

Nothing here asserts on a timing: the goal (at most 1.5x the plain gather) is reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from _harness import figure, record, run_paired

import flowcore
from flowcore.registry import get_registry

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

T = TypeVar("T")

SLEEP_S = 0.01
GATHER_RATIO_GOAL = 1.5
HISTORY_PLUGIN = "flowcore.plugins.history"  # its registered name (as in test_history.py)


@flowcore.task
async def io_bound(i: int) -> int:
    await asyncio.sleep(SLEEP_S)
    return i


async def plain_io_bound(i: int) -> int:
    """The same body as ``io_bound``, as a plain coroutine function."""
    await asyncio.sleep(SLEEP_S)
    return i


@flowcore.flow(name="benchmark-async-gather")
async def gather_in_flow(n: int) -> int:
    values = await asyncio.gather(*(io_bound(i) for i in range(n)))
    return sum(values)


async def plain_gather(n: int) -> int:
    values = await asyncio.gather(*(plain_io_bound(i) for i in range(n)))
    return sum(values)


def _without_history(fn: Callable[[], T]) -> T:
    """``fn()`` with the run-history plugin unregistered (nothing observes the runs, so
    awaited calls take the unobserved path), when it is registered."""
    registry = get_registry()
    plugin = registry.pm.get_plugin(HISTORY_PLUGIN)
    if plugin is None:
        return fn()
    registry.unregister(plugin)
    try:
        return fn()
    finally:
        registry.register(plugin, name=HISTORY_PLUGIN)


def test_async_tasks_vs_plain_gather(benchmark: BenchmarkFixture, quick: bool) -> None:
    """N concurrent awaited async task runs in an async flow against ``asyncio.gather``
    of the bare coroutines (N = 10 000). The subject runs as users run it, its runs
    recorded in the run history; a side measurement runs it with no observer."""
    n = 500 if quick else 10_000
    rounds = 3 if quick else 10

    paired = run_paired(
        benchmark,
        subject=lambda: gather_in_flow(n),
        anchor=lambda: asyncio.run(plain_gather(n)),
        rounds=rounds,
        side={"unobserved": lambda: _without_history(lambda: gather_in_flow(n))},
    )

    expected = n * (n - 1) // 2
    assert paired.subject_result == expected and paired.anchor_result == expected
    assert paired.side_results["unobserved"] == expected
    ratio = paired.subject_min / paired.anchor_min
    unobserved = paired.side_min("unobserved") / paired.anchor_min
    record(
        benchmark,
        paired,
        anchor="asyncio.run(asyncio.gather(...)) of the bare coroutines",
        n=n,
        figures=[
            figure("flowcore / plain gather", ratio, "x", GATHER_RATIO_GOAL),
            figure("flowcore without run history / plain gather", unobserved, "x", None),
        ],
        sleep_s=SLEEP_S,
        flowcore_per_task_us=round((paired.subject_min - SLEEP_S) / n * 1e6, 3),
        plain_per_task_us=round((paired.anchor_min - SLEEP_S) / n * 1e6, 3),
        unobserved_min_s=paired.side_min("unobserved"),
    )


def test_async_submits_vs_plain_gather(benchmark: BenchmarkFixture, quick: bool) -> None:
    """N async runs submitted to the ``threads`` backend (each worker runs them on its
    own loop) and awaited together, against the plain gather (N = 1 000). Reported
    only: submitted runs are spread over a pool's threads, not gathered on one loop."""
    n = 100 if quick else 1_000
    rounds = 3 if quick else 5

    @flowcore.flow(name="benchmark-async-submit", backend="threads")
    async def submit_in_flow(n: int) -> int:
        values = await asyncio.gather(*io_bound.map(range(n)))
        return sum(values)

    paired = run_paired(
        benchmark,
        subject=lambda: submit_in_flow(n),
        anchor=lambda: asyncio.run(plain_gather(n)),
        rounds=rounds,
    )

    expected = n * (n - 1) // 2
    assert paired.subject_result == expected and paired.anchor_result == expected
    record(
        benchmark,
        paired,
        anchor="asyncio.run(asyncio.gather(...)) of the bare coroutines",
        n=n,
        figures=[figure("flowcore map on threads / plain gather", paired.subject_min / paired.anchor_min, "x", None)],
        sleep_s=SLEEP_S,
    )
