"""Async tasks: thousands of concurrent I/O-bound runs on one thread.

An ``async def`` flow gathers N awaited calls of an ``async def`` task whose body is
``await asyncio.sleep(0.01)``; all N wait at once on the flow's event loop, in one
thread. The anchor is the same N coroutines gathered by ``asyncio.run``, without
flowcore, timed right before every round. The subject includes the flow run itself
(its start, its run-event reports, its end), as a user calling the flow from a script
pays it; the anchor includes ``asyncio.run``'s loop. Both run, alternated, in a fresh
interpreter (``_async_rounds.py``), as a script would run them: the cyclic GC's full
collections cost in proportion to every live object of the process, and the heap the
benchmarks before this one leave behind is no user's. Each side starts from a
collected heap (see ``_async_rounds.py``): the GC's phase left by the side before must
not decide whether a side pays one full collection or two.

Nothing here asserts on a timing: the goal (at most 1.5x the plain gather) is reported.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _async_rounds import SLEEP_S, io_bound, plain_gather
from _harness import Paired, figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

GATHER_RATIO_GOAL = 1.5
ROUNDS_SCRIPT = Path(__file__).with_name("_async_rounds.py")


def _rounds_in_a_fresh_process(n: int, rounds: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROUNDS_SCRIPT), str(n), str(rounds)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def test_async_tasks_vs_plain_gather(benchmark: BenchmarkFixture, quick: bool) -> None:
    """N concurrent awaited async task runs in an async flow against ``asyncio.gather``
    of the bare coroutines (N = 10 000), in a fresh interpreter. The subject runs as
    users run it, its runs recorded in the run history; a side measurement runs it with
    no observer. pytest-benchmark times the whole child process (one round); the
    figures come from the per-round timings the child reports."""
    n = 500 if quick else 10_000
    rounds = 3 if quick else 10

    measured: dict[str, Any] = {}

    def child() -> int:
        measured.update(_rounds_in_a_fresh_process(n, rounds))
        return int(measured["results"]["subject"])

    pedantic: Any = benchmark.pedantic  # pytest-benchmark ships no types
    pedantic(child, rounds=1, iterations=1)
    times, results = measured["times"], measured["results"]
    paired = Paired(
        subject=times["subject"], anchor=times["anchor"], subject_result=results["subject"],
        anchor_result=results["anchor"], side={"unobserved": times["unobserved"]},
        side_results={"unobserved": results["unobserved"]},
    )

    expected = n * (n - 1) // 2
    assert paired.subject_result == expected and paired.anchor_result == expected
    assert paired.side_results["unobserved"] == expected
    assert len(paired.subject) == len(paired.anchor) == rounds
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
        measured_in="a fresh interpreter (_async_rounds.py), sides alternated each round, each from a collected heap",
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
