"""Per-task overhead next to Prefect's, when Prefect is importable (skipped otherwise).

The same trivial task called N times inside one flow run, and submitted N times then
collected, in flowcore (``threads``, 2 workers) and in Prefect 3 (its default task
runner, a ``ThreadPoolTaskRunner``). Prefect is not a dependency of flowcore: install
it yourself (``pip install prefect``) to get these rows; a first Prefect flow run
starts a temporary server, which is done in the warm-up, outside the timed rounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

prefect = pytest.importorskip("prefect", reason="Prefect is not installed here (pip install prefect)")


def _bare(x: int) -> int:
    return x + 1


flowcore_inc = flowcore.task(_bare, name="inc")


@pytest.mark.parametrize("mode", ["direct", "submit"])
def test_task_overhead_vs_prefect(benchmark: BenchmarkFixture, quick: bool, mode: str) -> None:
    n = 20 if quick else 200
    prefect_inc: Any = prefect.task(_bare, name="inc")

    def flowcore_body() -> list[int]:
        if mode == "direct":
            return [flowcore_inc(i) for i in range(n)]
        futures = [flowcore_inc.submit(i) for i in range(n)]
        return [f.result() for f in futures]

    def prefect_body() -> list[int]:
        if mode == "direct":
            return [prefect_inc(i) for i in range(n)]
        futures = [prefect_inc.submit(i) for i in range(n)]
        return [f.result() for f in futures]

    ours = flowcore.flow(backend=flowcore.get_backend("threads", max_workers=2), name="overhead")(flowcore_body)
    theirs = prefect.flow(name="overhead")(prefect_body)
    assert ours() == theirs() == [i + 1 for i in range(n)]  # warm-up: Prefect starts its server here
    paired = run_paired(benchmark, subject=ours, anchor=theirs, rounds=1 if quick else 3)
    assert paired.subject_result == paired.anchor_result
    record(
        benchmark,
        paired,
        anchor=f"Prefect {prefect.__version__} flow, {mode} task calls",
        n=n,
        figures=[
            figure(f"flowcore / Prefect ({mode})", paired.subject_min / paired.anchor_min, "x", None),
            figure("Prefect per task", paired.anchor_min / n * 1e6, "µs", None),
            figure("flowcore per task", paired.subject_min / n * 1e6, "µs", None),
        ],
    )
