"""The joblib shim on the dispatcher's send loop, and what it asks of a backend.

Real pools throughout (loky, threads, a process pool behind a third-party backend);
timings are never asserted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("loky")

from flowcore.backend import BackendKind, BackendSpec, Capabilities, ExecutorBackend
from flowcore.compat._config import choose
from flowcore.compat.joblib import Parallel, TerminatedWorkerError, delayed
from flowcore.registry import get_registry


def square(x: int) -> int:
    return x * x


def mark_then_sleep(path: str, seconds: float) -> int:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def die_now(_: int) -> int:
    os._exit(23)


class _Pulls:
    """An input whose items record the thread that pulled each of them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.threads: set[int] = set()
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n):
            self.threads.add(threading.get_ident())
            self.count += 1
            yield delayed(square)(i)


@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_the_input_is_pulled_only_in_the_callers_thread(backend: str, return_as: str) -> None:
    """Batches come back on the pool's threads, and the send loop's feeder thread
    exists in this process: neither may pull the caller's input."""
    source = _Pulls(3_000)
    out = Parallel(n_jobs=2, backend=backend, return_as=return_as)(source)
    values = sorted(out) if return_as == "generator_unordered" else list(out)
    assert values == [i * i for i in range(3_000)]
    assert source.count == 3_000
    assert source.threads == {threading.get_ident()}


def test_a_batch_lost_with_a_pool_another_call_broke_is_sent_again(tmp_path: Path) -> None:
    """Two calls share loky's pool; one call's worker dies. The other call's batches,
    lost only along with the pool, are sent again and its values all come back."""
    markers = [tmp_path / f"started-{i}" for i in range(2)]
    outcome: dict[str, Any] = {}

    def long_call() -> None:
        try:
            outcome["values"] = Parallel(n_jobs=3, batch_size=1)(
                delayed(mark_then_sleep)(str(marker), 1.5) for marker in markers
            )
        except BaseException as exc:  # reported below, on the test's thread
            outcome["error"] = exc

    caller = threading.Thread(target=long_call)
    caller.start()
    deadline = time.monotonic() + 60
    while not all(m.exists() and m.read_text() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(m.exists() for m in markers), "the long call's batches never started"
    with pytest.raises(TerminatedWorkerError):
        Parallel(n_jobs=3, batch_size=1)(delayed(die_now)(i) for i in range(1))
    caller.join(timeout=120)
    assert not caller.is_alive()
    assert "error" not in outcome, outcome.get("error")
    pids = outcome["values"]
    assert len(pids) == 2 and all(isinstance(pid, int) and pid != os.getpid() for pid in pids)


def _process_pool(max_workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers)


def test_a_third_party_backend_without_the_new_capabilities_gets_safe_defaults() -> None:
    """A backend that declares its own Capabilities and leaves out ``local_processes``
    and ``connects_to_cluster`` is treated as neither: the shim runs it without tagging
    its batches for stopping, and the kind it reports is never consulted."""
    backend = ExecutorBackend(
        "third-party-pool", BackendKind.PROCESSES, 2, _process_pool, Capabilities(batching=True)
    )
    try:
        choice = choose(backend)
        assert not choice.capabilities.local_processes
        assert not choice.capabilities.connects_to_cluster
        assert not choice.uses_threads and not choice.processes
        assert Parallel(n_jobs=2, backend=backend)(delayed(square)(i) for i in range(50)) == [
            i * i for i in range(50)
        ]
    finally:
        backend.shutdown(wait=True)


def test_a_spec_without_capabilities_declares_those_of_its_kind() -> None:
    def factory(**options: Any) -> Any:
        raise AssertionError("not called")

    processes = BackendSpec("p", factory, "a pool", BackendKind.PROCESSES)
    cluster = BackendSpec("c", factory, "a cluster", BackendKind.CLUSTER)
    assert processes.declared_capabilities().local_processes
    assert not processes.declared_capabilities().connects_to_cluster
    assert cluster.declared_capabilities().connects_to_cluster
    assert not cluster.declared_capabilities().local_processes
    declared = Capabilities(in_process=True)
    assert BackendSpec("t", factory, "threads", BackendKind.PROCESSES, capabilities=declared).declared_capabilities() is declared


def test_built_in_backends_register_their_capabilities() -> None:
    """Each built-in spec says what its default instance can do, so the shim can ask
    before making one (the conformance suite checks that the instance agrees)."""
    backends = get_registry().backends()
    expected = {
        "sequential": dict(inline=True, local_processes=False, connects_to_cluster=False),
        "threads": dict(in_process=True, inline=False, local_processes=False, connects_to_cluster=False),
        "loky": dict(in_process=False, local_processes=True, connects_to_cluster=False),
        "joblib": dict(in_process=False, local_processes=True, connects_to_cluster=False),
        "dask": dict(in_process=False, local_processes=False, connects_to_cluster=True),
    }
    for name, fields in expected.items():
        if name not in backends:
            continue
        declared = backends[name].spec.capabilities
        assert declared is not None, name
        for field, value in fields.items():
            assert getattr(declared, field) is value, (name, field)
