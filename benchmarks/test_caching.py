"""What a cached task costs: hits and misses of a small result, next to joblib.Memory.

* hit: N direct calls of a cached task inside one flow run, every call a hit (10
  distinct arguments, stored beforehand); the anchor is the same calls of a function
  wrapped by ``joblib.Memory(...).cache`` (also all hits). Figure: cost per hit
  (goal: under 50 µs) and the ratio to joblib.Memory.
* miss: N calls with new arguments each round (compute, hash, write an entry); anchor:
  joblib.Memory misses.

Both stores live in a fresh temporary directory. Nothing is asserted on timings.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

from flowcore import flow, task
from flowcore.caching import INPUTS

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

HIT_GOAL_US = 50.0


def summary(x: int, scale: float = 1.0) -> dict[str, float]:
    return {"x": float(x), "scaled": x * scale, "square": float(x * x)}


@pytest.fixture()
def directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="flowcore-bench-cache-") as name:
        yield Path(name)


def _cached(directory: Path) -> Any:
    return task(summary, name="summary", cache_policy=INPUTS, cache_storage=str(directory / "flowcore"))


def _memory(directory: Path) -> Any:
    joblib = pytest.importorskip("joblib")
    return joblib.Memory(str(directory / "joblib"), verbose=0).cache(summary)


def test_cache_hit_in_a_flow(benchmark: BenchmarkFixture, quick: bool, directory: Path) -> None:
    n = 200 if quick else 5_000
    cached = _cached(directory)
    memory = _memory(directory)

    @flow(name="bench-cache-hits")
    def hits() -> list[dict[str, float]]:
        return [cached(i % 10) for i in range(n)]

    def memory_hits() -> list[dict[str, float]]:
        return [memory(i % 10) for i in range(n)]

    assert hits() == memory_hits()  # fills both stores: every timed call is a hit
    paired = run_paired(benchmark, subject=hits, anchor=memory_hits, rounds=1 if quick else 5)
    assert paired.subject_result == paired.anchor_result
    per_hit = paired.subject_min / n * 1e6
    record(
        benchmark,
        paired,
        anchor="joblib.Memory(...).cache, all hits",
        n=n,
        figures=[
            figure("flowcore cache hit", per_hit, "µs", HIT_GOAL_US),
            figure("flowcore / joblib.Memory per hit", paired.subject_min / paired.anchor_min, "x", None),
        ],
    )


def test_cache_miss(benchmark: BenchmarkFixture, quick: bool, directory: Path) -> None:
    n = 50 if quick else 1_000
    cached = _cached(directory)
    memory = _memory(directory)
    fresh = itertools.count()

    def misses() -> list[dict[str, float]]:
        start = next(fresh) * n
        return [cached(i) for i in range(start, start + n)]

    anchor_fresh = itertools.count()

    def memory_misses() -> list[dict[str, float]]:
        start = next(anchor_fresh) * n
        return [memory(i) for i in range(start, start + n)]

    paired = run_paired(benchmark, subject=misses, anchor=memory_misses, rounds=1 if quick else 3)
    assert len(paired.subject_result) == n
    record(
        benchmark,
        paired,
        anchor="joblib.Memory(...).cache, all misses",
        n=n,
        figures=[
            figure("flowcore cache miss (run + write)", paired.subject_min / n * 1e6, "µs", None),
            figure("flowcore / joblib.Memory per miss", paired.subject_min / paired.anchor_min, "x", None),
        ],
    )
