"""What flowcore costs and gains on process pools: map, submit and CPU-bound scaling.

Three measurements, each next to an anchor timed right before every flowcore round
(see ``_harness.run_paired``):

1. ``task.map`` over many tiny tasks on the ``loky`` backend (2 workers), against
   ``joblib.Parallel(n_jobs=2)`` over the same function: flowcore batches small runs
   the way joblib's ``batch_size='auto'`` does, so it should cost less than joblib.
2. Many individual ``.submit`` calls of a tiny task on ``loky`` (2 workers), then all
   results, against the same submits on a raw ``loky.get_reusable_executor``: rapid
   submits are coalesced into batches, so flowcore should beat one trip per task.
3. CPU-bound pure-Python tasks of ~50 ms each (calibrated on the machine that runs the
   suite) with ``task.map`` on ``sequential`` and on ``loky`` (2 workers): speedup and
   parallel efficiency. With ``--benchmark-only`` (and not ``--quick``) also a scaling
   series at 1, 2, ... ``os.cpu_count()`` workers.

Pools are warmed up before timing; both pools stay up between rounds, so no round
pays for starting worker processes. The CPU-bound test also runs the same work on a
raw loky pool before every round: its speedup is what the machine allowed at that
moment (a busy machine caps both), and it records how many worker processes really
ran flowcore's tasks.

The raw-loky anchor runs on a thread of its own. ``loky.get_reusable_executor`` keeps
one pool *per thread* and replaces it (stopping its workers and starting new ones)
whenever it is asked for one with different settings; flowcore's ``loky`` backend
asks with its own settings (an initializer, a longer idle timeout). Run from the same
thread, the anchor and flowcore would restart each other's workers every round and
both sides would mostly time process start-up. joblib uses its own vendored copy of
loky, so its pool never meets flowcore's and its anchor runs in the test's thread.

Nothing here asserts on a timing: goals are reported (``met``), never enforced. The
tests do assert that every measured run returned the right results, in order.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

joblib = pytest.importorskip("joblib")
loky = pytest.importorskip("loky")

WORKERS = 2

MAP_RATIO_GOAL = 0.5  # flowcore map / joblib.Parallel
SUBMIT_RATIO_GOAL = 0.25  # flowcore submits / raw loky submits
EFFICIENCY_GOAL = 0.9  # speedup >= 0.9 x workers

CPU_TASK_SECONDS = 0.05
CPU_TASK_SECONDS_QUICK = 0.01


# -- what runs in the workers (module level: workers import it by reference) -------------


@flowcore.task
def inc(x: int) -> int:
    return x + 1


def bare_inc(x: int) -> int:
    """The same body as ``inc``, as a plain function for joblib and raw loky."""
    return x + 1


def burn(iterations: int, seed: int) -> int:
    """Pure-Python CPU work (holds the GIL throughout); deterministic in its arguments."""
    acc = seed
    for i in range(iterations):
        acc = (acc * 1_103_515_245 + i) & 0xFFFF_FFFF
    return acc


@flowcore.task
def burn_task(seed: int, iterations: int) -> tuple[int, int]:
    """``burn`` as a task; also says which process ran it."""
    return burn(iterations, seed), os.getpid()


# -- flow bodies ------------------------------------------------------------------------


def map_inc(n: int) -> list[int]:
    futures = inc.map(range(n))
    return [f.result() for f in futures]


def submit_inc(n: int) -> list[int]:
    futures = [inc.submit(i) for i in range(n)]
    return [f.result() for f in futures]


def map_burn(count: int, iterations: int) -> list[tuple[int, int]]:
    futures = burn_task.map(range(count), iterations=iterations)
    return [f.result() for f in futures]


# -- anchors ----------------------------------------------------------------------------


def joblib_inc(n: int) -> list[int]:
    result: list[int] = joblib.Parallel(n_jobs=WORKERS)(
        joblib.delayed(bare_inc)(i) for i in range(n)
    )
    return result


def raw_loky_inc(n: int) -> list[int]:
    executor = loky.get_reusable_executor(max_workers=WORKERS)
    futures: list[Future[int]] = [executor.submit(bare_inc, i) for i in range(n)]
    return [f.result() for f in futures]


# -- helpers ----------------------------------------------------------------------------


def expected_inc(n: int) -> list[int]:
    return list(range(1, n + 1))


def loky_pools_alive() -> int:
    """Process pools (any loky copy) whose manager thread runs in this process now."""
    return sum(t.name == "ExecutorManagerThread" for t in threading.enumerate())


def calibrate_burn(target_s: float) -> tuple[int, float]:
    """Iterations of ``burn`` that take about ``target_s`` here, and one measured call."""
    probe = 20_000
    while True:
        took = min(_timed_burn(probe) for _ in range(3))
        if took >= 0.005:
            break
        probe *= 4
    iterations = max(1, round(probe * target_s / took))
    return iterations, min(_timed_burn(iterations) for _ in range(2))


def _timed_burn(iterations: int) -> float:
    start = time.perf_counter()
    burn(iterations, 0)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def loky_backend() -> Iterator[Any]:
    """flowcore's loky backend with 2 workers, shared by this module's tests."""
    backend = flowcore.get_backend("loky", max_workers=WORKERS)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def anchor_thread() -> Iterator[ThreadPoolExecutor]:
    """A thread of its own for the raw-loky anchor (see the module docstring)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchmark-anchor") as thread:
        yield thread


# -- 1. task.map over tiny tasks vs joblib.Parallel -------------------------------------


def test_map_tiny_tasks_vs_joblib(
    benchmark: BenchmarkFixture, quick: bool, loky_backend: Any
) -> None:
    """``inc.map(range(N))`` in a flow on loky (2 workers) against joblib.Parallel(n_jobs=2)."""
    n = 5_000 if quick else 200_000
    rounds = 1 if quick else 5
    host = flowcore.flow(backend=loky_backend, name="benchmark-map")(map_inc)

    # Warm-up: start both pools (and import this module in their workers).
    assert host(100) == expected_inc(100)
    assert joblib_inc(100) == expected_inc(100)

    paired = run_paired(
        benchmark, subject=lambda: host(n), anchor=lambda: joblib_inc(n), rounds=rounds
    )

    record_tiny_task_ratio(
        benchmark,
        paired,
        n,
        anchor=f"joblib.Parallel(n_jobs={WORKERS})",
        label="flowcore map / joblib.Parallel",
        goal=MAP_RATIO_GOAL,
    )


class NoOpObserver:
    """An observer of the run-event stream that does nothing with what it is given."""

    @flowcore.hookimpl
    def flowcore_run_events(self, events: Any) -> None:
        return None


OBSERVER_RATIO_GOAL = 1.2  # map with an observer / the same map without


def test_map_with_an_observer_vs_without(
    benchmark: BenchmarkFixture, quick: bool, loky_backend: Any
) -> None:
    """``inc.map(range(N))`` on loky with a no-op run-event observer registered, against
    the same map with none: observers must keep the column fast path."""
    from flowcore.registry import get_registry

    n = 5_000 if quick else 200_000
    rounds = 1 if quick else 5
    host = flowcore.flow(backend=loky_backend, name="benchmark-map-observed")(map_inc)
    registry = get_registry()

    def observed() -> list[int]:
        observer = NoOpObserver()
        registry.register(observer, name="benchmark-noop-observer")
        try:
            return host(n)
        finally:
            registry.unregister(observer)

    assert observed() == expected_inc(n)  # warm-up, and the pool is up
    paired = run_paired(benchmark, subject=observed, anchor=lambda: host(n), rounds=rounds)
    assert paired.subject_result == expected_inc(n)
    assert paired.anchor_result == expected_inc(n)
    record(
        benchmark,
        paired,
        anchor="the same map without an observer",
        n=n,
        figures=[figure("map with observer / without", paired.subject_min / paired.anchor_min, "x", OBSERVER_RATIO_GOAL)],
        max_workers=WORKERS,
    )


def record_tiny_task_ratio(
    benchmark: BenchmarkFixture, paired: Any, n: int, *, anchor: str, label: str, goal: float
) -> None:
    """Check both sides computed the same results, then record flowcore/anchor and the
    per-task cost of each side."""
    assert paired.subject_result == expected_inc(n)
    assert paired.anchor_result == expected_inc(n)
    record(
        benchmark,
        paired,
        anchor=anchor,
        n=n,
        figures=[
            figure(label, paired.subject_min / paired.anchor_min, "x", goal),
            figure("flowcore per task", paired.subject_min / n * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
        flowcore_per_task_us=round(paired.subject_min / n * 1e6, 3),
        anchor_per_task_us=round(paired.anchor_min / n * 1e6, 3),
        loky_pools_alive=loky_pools_alive(),
    )


# -- 2. individual submits vs a raw loky executor ---------------------------------------


def test_submit_tiny_tasks_vs_raw_loky(
    benchmark: BenchmarkFixture,
    quick: bool,
    loky_backend: Any,
    anchor_thread: ThreadPoolExecutor,
) -> None:
    """``n`` x ``inc.submit(i)`` then all results, on loky, against raw loky submits."""
    n = 200 if quick else 2_000
    rounds = 2 if quick else 10
    host = flowcore.flow(backend=loky_backend, name="benchmark-submit")(submit_inc)

    def anchor(count: int) -> list[int]:
        return anchor_thread.submit(raw_loky_inc, count).result()

    # Warm-up: start both pools.
    assert host(50) == expected_inc(50)
    assert anchor(50) == expected_inc(50)

    paired = run_paired(benchmark, subject=lambda: host(n), anchor=lambda: anchor(n), rounds=rounds)

    record_tiny_task_ratio(
        benchmark,
        paired,
        n,
        anchor=f"loky.get_reusable_executor(max_workers={WORKERS}).submit",
        label="flowcore submits / raw loky",
        goal=SUBMIT_RATIO_GOAL,
    )


# -- 3. CPU-bound scaling: sequential vs loky -------------------------------------------


def raw_loky_burn(count: int, iterations: int, workers: int) -> list[tuple[int, int]]:
    """The same work on a raw loky pool: what this machine allows at the moment."""
    executor = loky.get_reusable_executor(max_workers=workers)
    futures: list[Future[int]] = [executor.submit(burn, iterations, s) for s in range(count)]
    return [(f.result(), 0) for f in futures]


def _check_burn(results: list[tuple[int, int]], expected: list[int]) -> set[int]:
    """Assert the values (in order); return the ids of the processes that ran them."""
    assert [value for value, _ in results] == expected
    return {pid for _, pid in results}


def _scaling_series(
    sequential: Callable[[], list[tuple[int, int]]],
    expected: list[int],
    anchor_thread: ThreadPoolExecutor,
    count: int,
    iterations: int,
    rounds: int,
) -> list[dict[str, Any]]:
    """Speedup and efficiency at 1 .. os.cpu_count() workers, each round anchored."""
    series: list[dict[str, Any]] = []
    for workers in range(1, (os.cpu_count() or 1) + 1):
        backend = flowcore.get_backend("loky", max_workers=workers)
        try:
            host = flowcore.flow(backend=backend, name=f"benchmark-cpu-{workers}")(map_burn)
            host(workers, 1_000)  # warm-up: size the pools for this worker count
            anchor_thread.submit(raw_loky_burn, workers, 1_000, workers).result()
            times: dict[str, list[float]] = {"sequential": [], "loky": [], "raw": []}
            pids: set[int] = set()
            for _ in range(rounds):
                start = time.perf_counter()
                _check_burn(
                    anchor_thread.submit(raw_loky_burn, count, iterations, workers).result(),
                    expected,
                )
                times["raw"].append(time.perf_counter() - start)
                start = time.perf_counter()
                _check_burn(sequential(), expected)
                times["sequential"].append(time.perf_counter() - start)
                start = time.perf_counter()
                pids |= _check_burn(host(count, iterations), expected)
                times["loky"].append(time.perf_counter() - start)
        finally:
            backend.shutdown()
        best = {name: min(values) for name, values in times.items()}
        speedup = best["sequential"] / best["loky"]
        raw_speedup = best["sequential"] / best["raw"]
        series.append(
            {
                "workers": workers,
                "sequential_min_s": round(best["sequential"], 4),
                "loky_min_s": round(best["loky"], 4),
                "raw_loky_min_s": round(best["raw"], 4),
                "speedup": round(speedup, 4),
                "efficiency": round(speedup / workers, 4),
                "raw_loky_efficiency": round(raw_speedup / workers, 4),
                "worker_processes_used": len(pids),
            }
        )
    return series


@pytest.mark.timeout(600)
def test_cpu_bound_scaling(
    benchmark: BenchmarkFixture,
    quick: bool,
    loky_backend: Any,
    anchor_thread: ThreadPoolExecutor,
    request: pytest.FixtureRequest,
) -> None:
    """``burn_task.map`` over ~50 ms tasks: sequential / loky (2 workers), and efficiency.

    A raw loky pool runs the same work before every round too (on the anchor thread):
    its speedup is what the machine gave at that moment, so a low flowcore speedup on a
    busy machine can be told from a slow flowcore.
    """
    count = 8 if quick else 40
    rounds = 1 if quick else 5
    iterations, task_s = calibrate_burn(CPU_TASK_SECONDS_QUICK if quick else CPU_TASK_SECONDS)

    sequential_backend = flowcore.get_backend("sequential")
    on_sequential = flowcore.flow(backend=sequential_backend, name="benchmark-cpu-seq")(map_burn)
    on_loky = flowcore.flow(backend=loky_backend, name="benchmark-cpu-loky")(map_burn)

    # Reference values, checked against the plain function; warm-up of both pools.
    reference = on_sequential(count, iterations)
    assert [value for value, _ in reference[:2]] == [burn(iterations, s) for s in range(2)]
    expected = [value for value, _ in reference]
    small = [burn(1_000, seed) for seed in range(WORKERS)]
    _check_burn(on_loky(WORKERS, 1_000), small)
    _check_burn(anchor_thread.submit(raw_loky_burn, WORKERS, 1_000, WORKERS).result(), small)

    raw = "raw loky pool"
    paired = run_paired(
        benchmark,
        subject=lambda: on_loky(count, iterations),
        anchor=lambda: on_sequential(count, iterations),
        rounds=rounds,
        side={
            raw: lambda: anchor_thread.submit(raw_loky_burn, count, iterations, WORKERS).result()
        },
    )

    loky_pids = _check_burn(paired.subject_result, expected)
    assert _check_burn(paired.anchor_result, expected) == {os.getpid()}
    _check_burn(paired.side_results[raw], expected)
    assert os.getpid() not in loky_pids

    speedup = paired.anchor_min / paired.subject_min
    raw_speedup = paired.anchor_min / paired.side_min(raw)
    figures = [
        figure(
            f"speedup at {WORKERS} workers", speedup, "x", None, goal_min=EFFICIENCY_GOAL * WORKERS
        ),
        figure(
            f"efficiency at {WORKERS} workers",
            speedup / WORKERS,
            "",
            None,
            goal_min=EFFICIENCY_GOAL,
        ),
        figure(f"raw loky speedup at {WORKERS} workers (machine)", raw_speedup, "x", None),
        figure(f"worker processes used (max_workers={WORKERS})", len(loky_pids), "", None),
    ]

    series: list[dict[str, Any]] = []
    if benchmark.enabled and request.config.getoption("benchmark_only") and not quick:
        series = _scaling_series(
            lambda: on_sequential(count, iterations),
            expected,
            anchor_thread,
            count,
            iterations,
            rounds=3,
        )
        for point in series:
            label = f"{point['workers']} worker(s)"
            figures.append(
                figure(
                    f"efficiency at {label} (series)",
                    point["efficiency"],
                    "",
                    None,
                    goal_min=EFFICIENCY_GOAL,
                )
            )
            figures.append(
                figure(
                    f"raw loky efficiency at {label} (machine)",
                    point["raw_loky_efficiency"],
                    "",
                    None,
                )
            )
    sequential_backend.shutdown()

    record(
        benchmark,
        paired,
        anchor="the same map on sequential",
        n=count,
        figures=figures,
        max_workers=WORKERS,
        burn_iterations=iterations,
        task_ms=round(task_s * 1e3, 3),
        speedup=round(speedup, 4),
        speedup_median=round(paired.anchor_median / paired.subject_median, 4),
        efficiency=round(speedup / WORKERS, 4),
        raw_loky_min_s=round(paired.side_min(raw), 4),
        raw_loky_speedup=round(raw_speedup, 4),
        worker_processes_used=len(loky_pids),
        scaling=series,
    )
