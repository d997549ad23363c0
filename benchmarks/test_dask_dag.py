"""A fan-out/fan-in DAG of large arrays on Dask: flowcore must not move them through
the client.

A source task makes an array of ``SIZE_MB`` MB; ``FAN_OUT`` middle tasks each take it
(its future passed as an argument), scale it and return an array of the same size; a
sink takes all middle results (a list of futures) and returns one float. flowcore runs
it as a flow on the ``dask`` backend; the anchor is the same DAG on a raw Dask client
(``client.submit`` with futures as arguments). Both use one ``LocalCluster`` (2 worker
processes of one thread each), each through its own client. A side reference runs the
flow with native futures switched off (results fetched into the client and sent out
again): what flowcore did before.

Measured per side: time (paired rounds), and in one more untimed run the bytes that
left the cluster (what the workers sent to anything but another worker, from their
transfer logs) and how many large arrays were unpickled in this process.
Goals are reported, never asserted; the test asserts that every side returned the
right value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pytest
from _harness import figure, record, run_paired

import flowcore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

WORKERS = 2
FAN_OUT = 8
RATIO_GOAL = 1.5  # flowcore flow / raw Dask
EXTRA_MB_GOAL = 1.0  # MB read by this process beyond what raw Dask reads
MB = 1 << 20

#: large arrays unpickled in this process (workers count their own)
UNPICKLED = [0]


def _rebuild(array: Any) -> Block:
    UNPICKLED[0] += 1
    return Block(array)


class Block:
    """A large array that counts its unpicklings in the process that unpickles it."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.array,))


def make(size_mb: float) -> Block:
    return Block(np.ones(int(size_mb * MB) // 8))


def transform(block: Block, k: int) -> Block:
    return Block(block.array * 2 + k)


def reduce_all(blocks: list[Block]) -> float:
    return float(sum(float(b.array.sum()) for b in blocks))


source = flowcore.task(name="source")(make)
middle = flowcore.task(name="middle")(transform)
sink = flowcore.task(name="sink")(reduce_all)


def dag(size_mb: float) -> float:
    """The flow body: futures passed as arguments all the way down."""
    big = source.submit(size_mb)
    middles = [middle.submit(cast(Any, big), k) for k in range(FAN_OUT)]  # futures stand in for values
    return sink.submit(cast(Any, middles)).result()


def expected(size_mb: float) -> float:
    words = int(size_mb * MB) // 8
    return float(sum((2 + k) * words for k in range(FAN_OUT)))


def _served(dask_worker: Any) -> list[tuple[Any, int]]:
    """In a worker: (requester, bytes written) of every transfer it served."""
    return [(entry["who"], int(entry["compressed"])) for entry in dask_worker.transfer_outgoing_log]


def bytes_out_of_cluster(client: Any) -> int:
    """Bytes the workers have sent to anything but another worker (clients, through
    the scheduler or directly): the data that left the cluster so far."""
    workers = set(client.scheduler_info()["workers"])
    served: dict[str, list[tuple[Any, int]]] = client.run(_served)
    return sum(size for entries in served.values() for who, size in entries if who not in workers)


def measure(client: Any, call: Callable[[], float]) -> tuple[float, int, int]:
    """One untimed run of ``call``: its value, the bytes that left the cluster and the
    large arrays unpickled in this process meanwhile."""
    before, UNPICKLED[0] = bytes_out_of_cluster(client), 0
    value = call()
    return value, bytes_out_of_cluster(client) - before, UNPICKLED[0]


def test_fan_out_fan_in_of_large_arrays_vs_raw_dask(benchmark: BenchmarkFixture, quick: bool, cluster: Any) -> None:
    """source -> 8 middles -> sink on dask (2 workers) against the same DAG on a raw client."""
    size_mb = 1.0 if quick else 50.0
    rounds = 1 if quick else 5
    backend = flowcore.get_backend("dask", address=cluster.scheduler_address)
    fetching = flowcore.get_backend("dask", address=cluster.scheduler_address)
    # what flowcore did before results stayed on the workers
    fetching.capabilities = dataclasses.replace(fetching.capabilities, remote_results=False)
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        host = flowcore.flow(backend=backend, name="benchmark-dask-dag")(dag)
        host_fetching = flowcore.flow(backend=fetching, name="benchmark-dask-dag-fetching")(dag)

        def raw(size: float) -> float:
            big = client.submit(make, size, pure=False)
            middles = [client.submit(transform, big, k, pure=False) for k in range(FAN_OUT)]
            result: float = client.submit(reduce_all, middles, pure=False).result()
            return result

        # Warm-up: connect the clients, import this module in the workers.
        assert host(0.01) == expected(0.01)
        assert host_fetching(0.01) == expected(0.01)
        assert raw(0.01) == expected(0.01)

        paired = run_paired(
            benchmark, subject=lambda: host(size_mb), anchor=lambda: raw(size_mb), rounds=rounds,
            side={"fetching": lambda: host_fetching(size_mb)},
        )
        # Bytes and unpicklings, in one more (untimed) run of each side.
        sides = {
            "flowcore": measure(client, lambda: host(size_mb)),
            "raw Dask": measure(client, lambda: raw(size_mb)),
            "fetching flowcore": measure(client, lambda: host_fetching(size_mb)),
        }
    finally:
        backend.shutdown()
        fetching.shutdown()
        client.close()

    assert paired.subject_result == paired.anchor_result == expected(size_mb)
    assert paired.side_results["fetching"] == expected(size_mb)
    assert all(value == expected(size_mb) for value, _, _ in sides.values())
    out = {name: moved for name, (_, moved, _) in sides.items()}
    unpickled = {name: count for name, (_, _, count) in sides.items()}
    figures = [
        figure("flowcore DAG / raw Dask", paired.subject_min / paired.anchor_min, "x", RATIO_GOAL),
        figure("MB out of the cluster, flowcore - raw Dask", (out["flowcore"] - out["raw Dask"]) / MB, "MB",
               EXTRA_MB_GOAL),
        figure("KB out of the cluster (flowcore)", out["flowcore"] / 1024, "KB", None),
        figure("KB out of the cluster (raw Dask)", out["raw Dask"] / 1024, "KB", None),
        figure("large arrays unpickled here (flowcore)", unpickled["flowcore"], "", 0.5),
        figure("fetching flowcore DAG / raw Dask", paired.side_min("fetching") / paired.anchor_min, "x", None),
        figure("MB out of the cluster (fetching flowcore)", out["fetching flowcore"] / MB, "MB", None),
        figure("large arrays unpickled here (fetching flowcore)", unpickled["fetching flowcore"], "", None),
    ]
    record(
        benchmark,
        paired,
        anchor=f"Client.submit with futures as arguments on the same LocalCluster ({WORKERS} workers)",
        n=FAN_OUT + 2,
        figures=figures,
        max_workers=WORKERS,
        array_mb=size_mb,
    )
