"""The rounds of the async gather benchmark, run in a fresh interpreter (not a test module).

``python _async_rounds.py N ROUNDS`` runs one warm-up round, then ROUNDS rounds of:
the flow with no run-event observer (a side reference), the anchor (plain
``asyncio.gather`` of the bare coroutines under ``asyncio.run``) and the subject (an
async flow gathering N awaited task runs, recorded in the run history as users run
it), each timed with ``perf_counter``; it prints one JSON document with the timings
(seconds) and each side's last result. A fresh process measures what a script that
gathers N runs pays, whatever heap the benchmarks before it left behind (the cyclic
GC's full collections cost in proportion to every live object of the process).

Each side starts from a collected heap (``gc.collect()`` before it, not timed): where
the GC's generation counters stand when a side starts decides whether it pays one full
collection or two (each about 30 ms with 10,000 runs in flight), so without it a side
pays for the allocations of the side before it, and the minimum over rounds depends on
that phase rather than on the side's own work. Every side gets the same start.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import flowcore
from flowcore.registry import get_registry

T = TypeVar("T")

SLEEP_S = 0.01
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


def without_history(fn: Callable[[], T]) -> T:
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


def run_rounds(n: int, rounds: int) -> dict[str, Any]:
    """One warm-up round, then ``rounds`` timed rounds of the three sides, alternated."""
    sides: dict[str, Callable[[], int]] = {
        "unobserved": lambda: without_history(lambda: gather_in_flow(n)),
        "anchor": lambda: asyncio.run(plain_gather(n)),
        "subject": lambda: gather_in_flow(n),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, int] = {}
    for round_number in range(rounds + 1):
        for name, call in sides.items():
            gc.collect()  # each side starts from the same GC state (see the module docstring)
            start = time.perf_counter()
            results[name] = call()
            if round_number:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {"times": times, "results": results}


if __name__ == "__main__":
    print(json.dumps(run_rounds(int(sys.argv[1]), int(sys.argv[2]))))
