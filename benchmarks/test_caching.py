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


# -- a map with a cache policy, next to the same map without one -----------------------


def square_plus(x: int, offset: int) -> int:
    return x * x + offset


MAP_RATIO_GOAL = None  # reported only: a miss writes one entry per run


def _map_flows(directory: Path) -> tuple[Any, Any]:
    plain = task(square_plus, name="square_plus")
    cached = task(square_plus, name="square_plus_cached", cache_policy=INPUTS, cache_storage=str(directory / "map"))

    @flow(name="bench-map-plain", backend="threads")
    def plain_map(n: int, offset: int) -> int:
        return sum(f.result() for f in plain.map(range(n), offset))

    @flow(name="bench-map-cached", backend="threads")
    def cached_map(n: int, offset: int) -> int:
        return sum(f.result() for f in cached.map(range(n), offset))

    return plain_map, cached_map


@pytest.mark.timeout(900)  # 200k misses write 200k entries (minutes on a shared disk)
@pytest.mark.parametrize("outcome", ["misses", "hits"])
def test_map_with_a_cache_policy_vs_plain_map(
    benchmark: BenchmarkFixture, quick: bool, directory: Path, outcome: str
) -> None:
    """``t.map`` of N runs of a task with a cache policy (every run a miss: new
    arguments each round; or every run a hit) against the same map of the task without
    one, in the same run. Both take the column path."""
    n = 2_000 if quick else 200_000
    rounds = 1  # a round of 200k misses writes 200k entries
    plain_map, cached_map = _map_flows(directory)
    expected = sum(x * x for x in range(n))
    offsets = itertools.count(1)
    if outcome == "hits":
        assert cached_map(n, 0) == expected  # fill every entry first

        def subject() -> int:
            return cached_map(n, 0) - 0
    else:
        def subject() -> int:
            offset = next(offsets)
            return cached_map(n, offset) - offset * n

    paired = run_paired(benchmark, subject=subject, anchor=lambda: plain_map(n, 0), rounds=rounds)
    assert paired.subject_result == expected and paired.anchor_result == expected
    record(
        benchmark,
        paired,
        anchor="the same map without a cache policy (threads)",
        n=n,
        figures=[
            figure(f"cached map ({outcome}) / plain map", paired.subject_min / paired.anchor_min, "x", MAP_RATIO_GOAL),
            figure(f"per run ({outcome})", paired.subject_min / n * 1e6, "µs", None),
        ],
    )
