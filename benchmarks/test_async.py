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
from typing import TYPE_CHECKING

from _harness import figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

SLEEP_S = 0.01
GATHER_RATIO_GOAL = 1.5


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


def test_async_tasks_vs_plain_gather(benchmark: BenchmarkFixture, quick: bool) -> None:
    """N concurrent awaited async task runs in an async flow against ``asyncio.gather``
    of the bare coroutines (N = 10 000)."""
    n = 500 if quick else 10_000
    rounds = 3 if quick else 10

    paired = run_paired(
        benchmark,
        subject=lambda: gather_in_flow(n),
        anchor=lambda: asyncio.run(plain_gather(n)),
        rounds=rounds,
    )

    expected = n * (n - 1) // 2
    assert paired.subject_result == expected and paired.anchor_result == expected
    ratio = paired.subject_min / paired.anchor_min
    record(
        benchmark,
        paired,
        anchor="asyncio.run(asyncio.gather(...)) of the bare coroutines",
        n=n,
        figures=[figure("flowcore / plain gather", ratio, "x", GATHER_RATIO_GOAL)],
        sleep_s=SLEEP_S,
        flowcore_per_task_us=round((paired.subject_min - SLEEP_S) / n * 1e6, 3),
        plain_per_task_us=round((paired.anchor_min - SLEEP_S) / n * 1e6, 3),
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
