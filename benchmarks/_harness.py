"""Shared measuring helpers of the benchmark suite (not a test module).

``run_paired`` times the flowcore code with pytest-benchmark and runs an anchor right
before every timed round; ``figure`` and ``record`` put the resulting numbers into
``benchmark.extra_info`` in the shape ``render_table.py`` reads. The test modules
import these by their plain name (``from _harness import ...``): pytest puts this
folder on ``sys.path`` when it collects the suite.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture


@dataclass
class Paired:
    """Per-round timings (seconds) of the subject and of its anchor, warm-up dropped."""

    subject: list[float]
    anchor: list[float]
    subject_result: Any
    anchor_result: Any
    #: Per-round timings and last results of the side anchors (see ``run_paired``).
    side: dict[str, list[float]] = field(default_factory=dict)
    side_results: dict[str, Any] = field(default_factory=dict)

    def side_min(self, name: str) -> float:
        return min(self.side[name])

    @property
    def subject_min(self) -> float:
        return min(self.subject)

    @property
    def anchor_min(self) -> float:
        return min(self.anchor)

    @property
    def subject_median(self) -> float:
        return statistics.median(self.subject)

    @property
    def anchor_median(self) -> float:
        return statistics.median(self.anchor)


def run_paired(
    benchmark: BenchmarkFixture,
    subject: Callable[[], Any],
    anchor: Callable[[], Any],
    *,
    rounds: int,
    warmup_rounds: int = 1,
    side: dict[str, Callable[[], Any]] | None = None,
) -> Paired:
    """Benchmark ``subject`` with pytest-benchmark, timing ``anchor`` before each round.

    The anchor runs in pedantic's (untimed) ``setup``, so every timed round of the
    subject has an anchor round right before it. Both sides are also timed here with
    ``perf_counter``, so the ratio exists under ``--benchmark-disable`` too (one round).
    ``side``: more references, by name, each timed once per round before the anchor
    (for instance what the machine itself allows); their timings are in ``Paired.side``.
    """
    subject_times: list[float] = []
    anchor_times: list[float] = []
    results: dict[str, Any] = {}
    side_calls = dict(side or {})
    side_times: dict[str, list[float]] = {name: [] for name in side_calls}
    side_results: dict[str, Any] = {}

    def setup() -> None:
        for name, call in side_calls.items():
            start = time.perf_counter()
            side_results[name] = call()
            side_times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        results["anchor"] = anchor()
        anchor_times.append(time.perf_counter() - start)

    def target() -> Any:
        start = time.perf_counter()
        value = subject()
        subject_times.append(time.perf_counter() - start)
        return value

    pedantic: Callable[..., Any] = benchmark.pedantic  # pytest-benchmark ships no types
    subject_result = pedantic(
        target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1
    )
    skip = warmup_rounds if benchmark.enabled else 0
    measured = len(anchor_times) - skip
    return Paired(
        subject=subject_times[skip : skip + measured],
        anchor=anchor_times[skip : skip + measured],
        subject_result=subject_result,
        anchor_result=results["anchor"],
        side={name: times[skip : skip + measured] for name, times in side_times.items()},
        side_results=side_results,
    )


def figure(
    label: str,
    value: float,
    unit: str,
    goal_max: float | None,
    *,
    goal_min: float | None = None,
) -> dict[str, Any]:
    """One reported number; ``met`` says whether it meets its goal (never asserted).

    ``goal_max``: the value should stay under it (a cost, a ratio). ``goal_min``: the
    value should reach it (a speedup, an efficiency). At most one of them is given.
    """
    if goal_max is not None and goal_min is not None:
        raise ValueError("figure() takes goal_max or goal_min, not both")
    goal: str | None = None
    met: bool | None = None
    if goal_max is not None:
        goal, met = f"< {goal_max:g} {unit}".rstrip(), value < goal_max
    elif goal_min is not None:
        goal, met = f">= {goal_min:g} {unit}".rstrip(), value >= goal_min
    return {"label": label, "value": round(value, 4), "unit": unit, "goal": goal, "met": met}


def record(
    benchmark: BenchmarkFixture,
    paired: Paired,
    *,
    anchor: str,
    n: int,
    figures: list[dict[str, Any]],
    **extra: Any,
) -> None:
    """Store the pair and its figures in ``extra_info`` and print them."""
    info = benchmark.extra_info
    info["anchor"] = anchor
    info["n"] = n
    info["rounds"] = len(paired.subject)
    info["subject_min_s"] = paired.subject_min
    info["subject_median_s"] = paired.subject_median
    info["anchor_min_s"] = paired.anchor_min
    info["anchor_median_s"] = paired.anchor_median
    info["anchor_ns"] = paired.anchor_min * 1e9
    info["ratio"] = round(paired.subject_min / paired.anchor_min, 4)
    info["ratio_median"] = round(paired.subject_median / paired.anchor_median, 4)
    info["figures"] = figures
    info.update(extra)
    shown = "; ".join(
        f"{f['label']} = {f['value']:.3g} {f['unit']}".rstrip()
        + (f" (goal {f['goal']}: {'met' if f['met'] else 'NOT met'})" if f["goal"] else "")
        for f in figures
    )
    print(
        f"\n[{benchmark.name}] subject min {paired.subject_min * 1e3:.3f} ms, "
        f"anchor ({anchor}) min {paired.anchor_min * 1e3:.3f} ms, "
        f"ratio {info['ratio']:.3f} (median {info['ratio_median']:.3f}) over "
        f"{info['rounds']} round(s); {shown}"
    )
