"""What content hashing costs: a large array and a small dict, next to ``joblib.hash``.

``joblib.hash`` (md5 over a pickle, arrays hashed from their buffer) is the anchor:
it is what a joblib user's ``Memory`` cache pays for the same arguments. Each timed
round of ``flowcore.caching.content_hash`` is preceded by a round of the anchor
(see ``_harness.run_paired``); figures use the fastest round of each side.

* large array: one 200 MB float64 array (2 MB with ``--quick``); the figure is the
  speedup over joblib (goal: at least 15x), and the throughput in GB/s is stored.
* small dict: ``{"a": 1, "b": 2.5, "c": "text", "d": [1, 2, 3], "e": None}`` hashed
  N times in a loop; the figure is the cost of one call (goal: under 3 µs). joblib's
  loop is shorter (it is ~10x slower); the ratio is per call.

Nothing is asserted on timings; the tests assert that both sides hashed the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

from flowcore.caching import content_hash

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

ARRAY_SPEEDUP_GOAL = 15.0
SMALL_DICT_GOAL_US = 3.0
SMALL_DICT = {"a": 1, "b": 2.5, "c": "text", "d": [1, 2, 3], "e": None}


def test_large_array_vs_joblib(benchmark: BenchmarkFixture, quick: bool) -> None:
    """``content_hash`` of a float64 array against ``joblib.hash`` of the same array."""
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    megabytes = 2 if quick else 200
    rounds = 2 if quick else 5
    array = np.random.default_rng(0).random(megabytes * 1_000_000 // 8)

    paired = run_paired(
        benchmark,
        subject=lambda: content_hash(array),
        anchor=lambda: joblib.hash(array),
        rounds=rounds,
    )

    assert paired.subject_result == content_hash(array.copy())
    assert len(paired.subject_result) == 32
    assert len(paired.anchor_result) == 32
    speedup = paired.anchor_min / paired.subject_min
    record(
        benchmark,
        paired,
        anchor="joblib.hash, same array",
        n=1,
        figures=[
            figure("speedup over joblib.hash", speedup, "x", None, goal_min=ARRAY_SPEEDUP_GOAL)
        ],
        megabytes=megabytes,
        speedup=round(speedup, 2),
        flowcore_gb_per_s=round(array.nbytes / paired.subject_min / 1e9, 2),
        joblib_gb_per_s=round(array.nbytes / paired.anchor_min / 1e9, 2),
    )


def _hash_loop(hash_fn: Any, value: object, n: int) -> str:
    digest = ""
    for _ in range(n):
        digest = hash_fn(value)
    return digest


def test_small_dict_per_call(benchmark: BenchmarkFixture, quick: bool) -> None:
    """One call of ``content_hash`` on a small dict of mixed values, and joblib's."""
    joblib = pytest.importorskip("joblib")
    n = 2_000 if quick else 100_000
    anchor_n = max(n // 20, 1)
    rounds = 3 if quick else 10

    paired = run_paired(
        benchmark,
        subject=lambda: _hash_loop(content_hash, SMALL_DICT, n),
        anchor=lambda: _hash_loop(joblib.hash, SMALL_DICT, anchor_n),
        rounds=rounds,
    )

    assert paired.subject_result == content_hash(dict(reversed(SMALL_DICT.items())))
    assert paired.anchor_result == joblib.hash(SMALL_DICT)
    per_call_us = paired.subject_min / n * 1e6
    joblib_us = paired.anchor_min / anchor_n * 1e6
    record(
        benchmark,
        paired,
        anchor=f"joblib.hash, {anchor_n} calls",
        n=n,
        figures=[
            figure("content_hash per call", per_call_us, "µs", SMALL_DICT_GOAL_US),
            figure("speedup over joblib.hash", joblib_us / per_call_us, "x", None),
        ],
        flowcore_per_call_us=round(per_call_us, 4),
        joblib_per_call_us=round(joblib_us, 4),
    )
