"""What ``flowcore.compat.joblib.Parallel`` costs next to ``joblib.Parallel``.

Two measurements, each next to joblib timed right before every shim round (see
``_harness.run_paired``):

1. ``Parallel(n_jobs=2)(delayed(f)(i) for i in range(N))`` with a tiny ``f``, the shim
   on flowcore's ``loky`` backend against joblib's ``loky`` backend, each side with its
   own ``delayed``. Goal: the shim at most as slow as joblib (1.0 x), stretch 0.5 x.
2. An empty call (``Parallel(n_jobs=2)([])``) on a warm pool, repeated: what one call
   costs when there is nothing to do.

Both pools are warmed up first (joblib's vendored loky and flowcore's loky pools are
separate processes). Nothing here asserts on a timing: goals are reported (``met``);
the tests assert that every measured run returned the right results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from _harness import figure, record, run_paired

from flowcore.compat import joblib as shim

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

joblib = pytest.importorskip("joblib")
pytest.importorskip("loky")

WORKERS = 2
RATIO_GOAL = 1.0  # shim / joblib.Parallel
RATIO_STRETCH = 0.5
EMPTY_CALLS = 200


def bare_inc(x: int) -> int:
    return x + 1


def shim_inc(n: int) -> list[int]:
    result: list[int] = shim.Parallel(n_jobs=WORKERS)(shim.delayed(bare_inc)(i) for i in range(n))
    return result


def joblib_inc(n: int) -> list[int]:
    result: list[int] = joblib.Parallel(n_jobs=WORKERS)(
        joblib.delayed(bare_inc)(i) for i in range(n)
    )
    return result


def shim_empty(calls: int) -> int:
    for _ in range(calls):
        assert shim.Parallel(n_jobs=WORKERS)([]) == []
    return calls


def joblib_empty(calls: int) -> int:
    for _ in range(calls):
        assert joblib.Parallel(n_jobs=WORKERS)([]) == []
    return calls


def test_shim_tiny_tasks_vs_joblib(benchmark: BenchmarkFixture, quick: bool) -> None:
    """200,000 tiny calls through the shim against joblib.Parallel (2 loky workers)."""
    n = 5_000 if quick else 200_000
    rounds = 1 if quick else 5
    expected = list(range(1, n + 1))
    # Warm-up: start both pools (and import this module in their workers).
    assert shim_inc(100) == expected[:100]
    assert joblib_inc(100) == expected[:100]

    paired = run_paired(
        benchmark, subject=lambda: shim_inc(n), anchor=lambda: joblib_inc(n), rounds=rounds
    )

    assert paired.subject_result == expected
    assert paired.anchor_result == expected
    ratio = paired.subject_min / paired.anchor_min
    record(
        benchmark,
        paired,
        anchor=f"joblib.Parallel(n_jobs={WORKERS})",
        n=n,
        figures=[
            figure("shim / joblib.Parallel", ratio, "x", RATIO_GOAL),
            figure("shim / joblib.Parallel (stretch)", ratio, "x", RATIO_STRETCH),
            figure("shim per task", paired.subject_min / n * 1e6, "µs", None),
            figure("joblib per task", paired.anchor_min / n * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
    )


def test_empty_call_on_warm_pool_vs_joblib(benchmark: BenchmarkFixture, quick: bool) -> None:
    """``Parallel(n_jobs=2)([])``, repeated, once both pools are up."""
    calls = 20 if quick else EMPTY_CALLS
    rounds = 1 if quick else 5
    assert shim_inc(10) == list(range(1, 11))  # warm pools
    assert joblib_inc(10) == list(range(1, 11))

    paired = run_paired(
        benchmark,
        subject=lambda: shim_empty(calls),
        anchor=lambda: joblib_empty(calls),
        rounds=rounds,
    )

    assert paired.subject_result == calls == paired.anchor_result
    record(
        benchmark,
        paired,
        anchor=f"joblib.Parallel(n_jobs={WORKERS})([])",
        n=calls,
        figures=[
            figure("empty call, shim / joblib", paired.subject_min / paired.anchor_min, "x", 1.0),
            figure("empty call, shim", paired.subject_min / calls * 1e6, "µs", None),
            figure("empty call, joblib", paired.anchor_min / calls * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
    )
