"""The backend x workload matrix: every flowcore figure next to the tool a user of
that backend would otherwise reach for, measured in the same run.

========== ================================================================
backend     anchor (what the same work costs without flowcore)
========== ================================================================
sequential  a plain Python loop
threads     ``concurrent.futures.ThreadPoolExecutor`` (2 workers)
loky        a raw ``loky.ProcessPoolExecutor`` (2 workers); for the tiny-task map,
            ``joblib.Parallel(n_jobs=2)`` as the issue asks
joblib      ``joblib.Parallel(n_jobs=2)`` (``batch_size=1`` for individual submits)
dask        the same 2-worker ``distributed.LocalCluster`` through its own client
            (``client.map`` / ``client.submit`` + ``gather``; futures passed to
            downstream tasks)
========== ================================================================

Workloads: ``tiny_map`` (``t.map`` of 200,000 tiny tasks), ``submits`` (2,000
individual ``.submit``), ``cpu_bound`` (20 pure-Python tasks of ~50 ms),
``io_bound`` (100 tasks sleeping 10 ms), ``large_numpy`` (4 tasks, each given a 100 MB
array), ``dag`` (a source, 50 tasks that each take its result, a sink that takes all
50). On dask the tiny-task sizes are 2,000 and 500: its raw ``client.map`` costs over a
millisecond of scheduler time per task on 2 cores, so 200,000 would take minutes. Every figure is flowcore's time over the anchor's (min over rounds); goals appear
only where an issue sets one. Sizes shrink with ``--quick``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest
from _harness import figure, record, run_paired

import flowcore
from flowcore import flow, task

pytest.importorskip("loky")
pytest.importorskip("joblib")

WORKERS = 2
CPU_TASK_SECONDS = 0.05
#: raw Dask pays over 1 ms of scheduler time per task here: smaller tiny-task sizes
DASK_SIZES = {"tiny_map": 2_000, "submits": 500}


# -- the work (module level: importable by worker processes) ------------------------------


def bare_inc(x: int) -> int:
    return x + 1


def bare_burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i % 7
    return total


def bare_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def bare_array_sum(array: Any) -> float:
    return float(array.sum())


def bare_source(n: int) -> list[int]:
    return list(range(n))


def bare_middle(values: list[int], i: int) -> int:
    return sum(values) + i


def bare_sink(values: list[int]) -> int:
    return sum(values)


inc = task(bare_inc, name="inc")
burn = task(bare_burn, name="burn")
sleep = task(bare_sleep, name="sleep")
array_sum = task(bare_array_sum, name="array_sum")
source = task(bare_source, name="source")
middle = task(bare_middle, name="middle")
sink = task(bare_sink, name="sink")


# -- sizes ----------------------------------------------------------------------------------


def sizes(quick: bool) -> dict[str, int]:
    return {
        "tiny_map": 2_000 if quick else 200_000,
        "submits": 100 if quick else 2_000,
        "cpu_bound": 4 if quick else 20,
        "io_bound": 10 if quick else 100,
        "large_numpy": 1 if quick else 100,  # megabytes per array
        "dag": 10 if quick else 50,
    }


def calibrate(seconds: float) -> int:
    """Iterations of ``bare_burn`` that take about ``seconds`` here."""
    iterations = 20_000
    while True:
        start = time.perf_counter()
        bare_burn(iterations)
        took = time.perf_counter() - start
        if took > 0.01:
            return max(1, int(iterations * seconds / took))
        iterations *= 4


# -- flowcore's side --------------------------------------------------------------------


def flowcore_workload(name: str, n: int, arg: Any) -> Callable[[], Any]:
    """The body of a flow running workload ``name`` (``arg``: calibrated iterations or
    the numpy array)."""

    def tiny_map() -> list[int]:
        return [f.result() for f in inc.map(range(n))]

    def submits() -> list[int]:
        futures = [inc.submit(i) for i in range(n)]
        return [f.result() for f in futures]

    def cpu_bound() -> list[int]:
        return [f.result() for f in burn.map([arg] * n)]

    def io_bound() -> list[float]:
        return [f.result() for f in sleep.map([0.01] * n)]

    def large_numpy() -> list[float]:
        return [f.result() for f in [array_sum.submit(arg) for _ in range(4)]]

    def dag() -> int:
        first = source.submit(100)
        mids = [middle.submit(first, i) for i in range(n)]
        return sink.submit(mids).result()

    return {
        "tiny_map": tiny_map,
        "submits": submits,
        "cpu_bound": cpu_bound,
        "io_bound": io_bound,
        "large_numpy": large_numpy,
        "dag": dag,
    }[name]


# -- the anchors ------------------------------------------------------------------------------


class Anchor:
    """The raw tool for one backend: ``map`` (bulk), ``each`` (one call per item) and
    ``dag`` (the fan-out/fan-in)."""

    label = ""

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def each(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.map(fn, items)

    def dag(self, n: int) -> int:
        values = self.map(bare_source, [100])[0]
        mids = self.each(lambda i: bare_middle(values, i), list(range(n)))
        return self.map(bare_sink, [mids])[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


class LoopAnchor(Anchor):
    label = "plain Python loop"

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]


class ExecutorAnchor(Anchor):
    def __init__(self, executor: Executor, label: str) -> None:
        self.executor = executor
        self.label = label

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.executor.map(fn, items))

    def each(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures = [self.executor.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class JoblibAnchor(Anchor):
    label = f"joblib.Parallel(n_jobs={WORKERS})"

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        import joblib

        return list(joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(fn)(i) for i in items))

    def each(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        import joblib

        return list(
            joblib.Parallel(n_jobs=WORKERS, batch_size=1)(joblib.delayed(fn)(i) for i in items)
        )


class DaskAnchor(Anchor):
    label = f"dask client.map/submit on the same LocalCluster ({WORKERS} workers)"

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.client.gather(self.client.map(fn, items, pure=False)))

    def each(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures = [self.client.submit(fn, item, pure=False) for item in items]
        return list(self.client.gather(futures))

    def dag(self, n: int) -> int:
        first = self.client.submit(bare_source, 100, pure=False)
        mids = [self.client.submit(bare_middle, first, i, pure=False) for i in range(n)]
        return int(self.client.submit(bare_sink, mids, pure=False).result())


def anchor_workload(anchor: Anchor, name: str, n: int, arg: Any) -> Callable[[], Any]:
    def large_numpy() -> list[float]:
        return anchor.each(bare_array_sum, [arg] * 4)

    return {
        "tiny_map": lambda: anchor.map(bare_inc, list(range(n))),
        "submits": lambda: anchor.each(bare_inc, list(range(n))),
        "cpu_bound": lambda: anchor.map(bare_burn, [arg] * n),
        "io_bound": lambda: anchor.map(bare_sleep, [0.01] * n),
        "large_numpy": large_numpy,
        "dag": lambda: anchor.dag(n),
    }[name]


# -- fixtures ------------------------------------------------------------------------------------

BACKENDS = ["sequential", "threads", "loky", "joblib", "dask"]
WORKLOADS = ["tiny_map", "submits", "cpu_bound", "io_bound", "large_numpy", "dag"]

#: rounds per cell (the slow cells fewer)
ROUNDS = {"tiny_map": 3, "submits": 5, "cpu_bound": 3, "io_bound": 3, "large_numpy": 3, "dag": 5}

#: goals set by issues, as (backend, workload) -> maximum ratio flowcore / anchor
GOALS = {("loky", "tiny_map"): 0.5, ("dask", "submits"): 1.2}


class Setup:
    """One backend of the matrix with its anchor (created once per module)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend: Any = None
        self.anchor: Anchor = LoopAnchor()
        self.cluster: Any = None
        if name == "sequential":
            self.backend = flowcore.get_backend("sequential")
        elif name == "threads":
            self.backend = flowcore.get_backend("threads", max_workers=WORKERS)
            self.anchor = ExecutorAnchor(
                ThreadPoolExecutor(max_workers=WORKERS), f"ThreadPoolExecutor(max_workers={WORKERS})"
            )
        elif name == "loky":
            import loky

            self.backend = flowcore.get_backend("loky", max_workers=WORKERS)
            self.anchor = ExecutorAnchor(
                loky.ProcessPoolExecutor(max_workers=WORKERS), f"loky.ProcessPoolExecutor({WORKERS})"
            )
        elif name == "joblib":
            self.backend = flowcore.get_backend("joblib", n_jobs=WORKERS)
            self.anchor = JoblibAnchor()
        elif name == "dask":
            distributed = pytest.importorskip("distributed")
            if "dask" not in flowcore.registry.get_registry().backends():
                pytest.skip("the dask backend is not registered")
            self.cluster = distributed.LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = distributed.Client(self.cluster)
            self.backend = flowcore.get_backend("dask", client=client)
            self.anchor = DaskAnchor(client)

    def anchor_for(self, workload: str) -> Anchor:
        if self.name == "loky" and workload == "tiny_map":
            return JoblibAnchor()  # the anchor for this figure
        return self.anchor

    def close(self) -> None:
        self.backend.shutdown()
        self.anchor.close()
        if self.cluster is not None:
            self.anchor.client.close()  # type: ignore[attr-defined]
            self.cluster.close()


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    built = Setup(request.param)
    yield built
    built.close()


@pytest.fixture(scope="module")
def numpy_array(quick: bool) -> Any:
    np = pytest.importorskip("numpy")
    megabytes = sizes(quick)["large_numpy"]
    return np.ones(megabytes * 2**20 // 8)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_matrix(
    benchmark: Any, quick: bool, setup: Setup, workload: str, request: pytest.FixtureRequest
) -> None:
    """One cell: ``workload`` on ``setup``'s backend against its anchor."""
    n = sizes(quick)[workload]
    if setup.name == "dask":
        n = min(n, DASK_SIZES.get(workload, n))
    arg: Any = None
    if workload == "cpu_bound":
        arg = calibrate(0.005 if quick else CPU_TASK_SECONDS)
    elif workload == "large_numpy":
        arg = request.getfixturevalue("numpy_array")
    body = flowcore_workload(workload, n, arg)
    host = flow(backend=setup.backend, name=f"matrix-{workload}")(body)
    anchor = setup.anchor_for(workload)
    raw = anchor_workload(anchor, workload, n, arg)
    # Warm-up outside the timed rounds: start pools, import this module in workers.
    assert host() == raw()
    rounds = 1 if quick else ROUNDS[workload]
    paired = run_paired(benchmark, subject=host, anchor=raw, rounds=rounds)
    assert paired.subject_result == paired.anchor_result
    goal = GOALS.get((setup.name, workload))
    unit_count = 4 if workload == "large_numpy" else n
    benchmark.extra_info.update(backend=setup.name, workload=workload)
    record(
        benchmark,
        paired,
        anchor=anchor.label,
        n=unit_count,
        figures=[
            figure(f"{setup.name} {workload}: flowcore / anchor", paired.subject_min / paired.anchor_min, "x", goal),
            figure("flowcore per task", paired.subject_min / unit_count * 1e6, "µs", None),
        ],
        backend=setup.name,
        workload=workload,
        cpus=os.cpu_count(),
    )
