"""What flowcore costs on a Dask cluster: a map of tiny tasks against raw ``client.map``.

``inc.map(range(N))`` in a flow on the ``dask`` backend, then every ``.result()``,
against ``client.gather(client.map(inc, range(N), pure=False))`` on a raw Dask client.
Both sides use the same ``LocalCluster`` (2 worker processes of one thread each),
started once for the module, each through its own client; the anchor runs right
before every flowcore round (see ``_harness.run_paired``).

One Dask task costs milliseconds of scheduler work, far more than a tiny task, so raw
``client.map`` pays that per item; flowcore batches the items of a map (about 50 ms of
work per Dask task), so it should stay close to or under the raw client. Goals are
reported, never asserted; the test asserts that both sides returned the right values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

distributed = pytest.importorskip("distributed")

WORKERS = 2
RATIO_GOAL = 1.2  # flowcore map / raw client.map + gather


@flowcore.task
def inc(x: int) -> int:
    return x + 1


def bare_inc(x: int) -> int:
    """The same body as ``inc``, as a plain function for the raw client."""
    return x + 1


def map_inc(n: int) -> list[int]:
    futures = inc.map(range(n))
    return [f.result() for f in futures]


def test_map_tiny_tasks_vs_raw_dask_client(benchmark: BenchmarkFixture, quick: bool, cluster: Any) -> None:
    """``inc.map(range(N))`` in a flow on dask (2 workers) against raw client.map + gather."""
    n = 200 if quick else 2_000
    rounds = 1 if quick else 5
    backend = flowcore.get_backend("dask", address=cluster.scheduler_address)
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        host = flowcore.flow(backend=backend, name="benchmark-dask-map")(map_inc)

        def anchor(count: int) -> list[int]:
            result: list[int] = client.gather(client.map(bare_inc, range(count), pure=False))
            return result

        # Warm-up: connect both clients, import this module in the workers.
        assert host(50) == list(range(1, 51))
        assert anchor(50) == list(range(1, 51))

        paired = run_paired(benchmark, subject=lambda: host(n), anchor=lambda: anchor(n), rounds=rounds)
    finally:
        backend.shutdown()
        client.close()

    assert paired.subject_result == list(range(1, n + 1))
    assert paired.anchor_result == list(range(1, n + 1))
    record(
        benchmark,
        paired,
        anchor=f"Client.map + gather on the same LocalCluster ({WORKERS} workers)",
        n=n,
        figures=[
            figure("flowcore map / raw client.map", paired.subject_min / paired.anchor_min, "x", RATIO_GOAL),
            figure("flowcore per task", paired.subject_min / n * 1e6, "µs", None),
            figure("raw Dask per task", paired.anchor_min / n * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
    )
