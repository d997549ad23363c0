"""The joblib backend: joblib's configuration and registered backends, real pools."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

joblib = pytest.importorskip("joblib")

import flowcore  # noqa: E402
from flowcore import flow, task  # noqa: E402
from flowcore.backend import BackendKind  # noqa: E402
from flowcore.states import State  # noqa: E402


@task
def where(_: int = 0) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


@task
def slow_double(x: int) -> int:
    time.sleep(0.4)
    return 2 * x


@task
def kill_own_worker() -> None:
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGKILL)


def test_parallel_config_is_honoured() -> None:
    with joblib.parallel_config(backend="threading", n_jobs=3):
        backend = flowcore.get_backend("joblib")
    try:
        assert backend.kind is BackendKind.THREADS and backend.max_workers == 3
        result = flow(backend=backend)(lambda: [f.result() for f in where.map(range(6))])()
        assert {pid for pid, _ in result} == {os.getpid()}
    finally:
        backend.shutdown()


def test_options_select_the_joblib_backend() -> None:
    backend = flowcore.get_backend("joblib", backend="loky", n_jobs=2)
    try:
        assert backend.kind is BackendKind.PROCESSES and backend.max_workers == 2
        pids = flow(backend=backend)(lambda: {f.result()[0] for f in where.map(range(6))})()
        assert os.getpid() not in pids
    finally:
        backend.shutdown()


def test_no_options_default_to_loky_on_every_core(caplog: pytest.LogCaptureFixture) -> None:
    """joblib's own n_jobs=None means one job in the caller's process; flowcore's joblib
    backend defaults to parallel workers, and says how many when its pool starts."""
    backend = flowcore.get_backend("joblib")
    try:
        assert backend.kind is BackendKind.PROCESSES
        assert backend.max_workers == joblib.cpu_count()
        with caplog.at_level("INFO", logger="flowcore"):
            pids = flow(backend=backend)(lambda: {f.result()[0] for f in where.map(range(4))})()
        assert os.getpid() not in pids
    finally:
        backend.shutdown()
    started = [r for r in caplog.records if r.name.startswith("flowcore.") and "worker" in r.getMessage()]
    assert started and f"{joblib.cpu_count()} worker" in started[0].getMessage()
    assert "LokyBackend" in started[0].getMessage() or "loky" in started[0].getMessage()


def test_parallel_config_n_jobs_still_decides() -> None:
    with joblib.parallel_config(n_jobs=1):
        inline = flowcore.get_backend("joblib")
    with joblib.parallel_config(backend="threading"):
        threads = flowcore.get_backend("joblib")
    try:
        assert inline.kind is BackendKind.INLINE and inline.max_workers == 1
        # A configured backend without n_jobs: every core, as with no configuration.
        assert threads.kind is BackendKind.THREADS and threads.max_workers == joblib.cpu_count()
        assert flowcore.get_backend("joblib", n_jobs=1).kind is BackendKind.INLINE
    finally:
        inline.shutdown()
        threads.shutdown()


def test_a_registered_joblib_backend_is_reachable() -> None:
    from joblib.parallel import ThreadingBackend

    submitted: list[int] = []

    class CountingBackend(ThreadingBackend):  # type: ignore[misc]
        def submit(self, func: Any, callback: Any = None) -> Any:
            submitted.append(1)
            return super().submit(func, callback=callback)

    joblib.register_parallel_backend("flowcore-test-counting", CountingBackend)
    with joblib.parallel_config(backend="flowcore-test-counting", n_jobs=2):
        backend = flowcore.get_backend("joblib")
    try:
        assert backend.kind is BackendKind.CLUSTER  # unknown to flowcore: treated as remote
        values = flow(backend=backend)(lambda: [f.result() for f in slow_double.map(range(4))])()
    finally:
        backend.shutdown()
    assert values == [0, 2, 4, 6]
    assert len(submitted) == 4


@task
def returns_a_lock() -> Any:
    return {"lock": threading.Lock()}


def test_unpicklable_result_is_one_line_naming_run_and_type() -> None:
    backend = flowcore.get_backend("joblib", backend="loky", n_jobs=2)
    try:
        (state,) = flow(backend=backend)(lambda: (returns_a_lock.submit(return_state=True),))()
    finally:
        backend.shutdown()
    message = state.message
    assert "\n" not in message and "\\n" not in message and "Traceback" not in message
    assert "the result of task run 'returns_a_lock-" in message
    assert "(a dict) cannot be pickled to send it back: " in message
    assert "_thread.lock" in message
    assert message.endswith("; return plain data instead")


def test_worker_death_in_joblib_pool_is_pinned_on_its_task() -> None:
    backend = flowcore.get_backend("joblib", backend="loky", n_jobs=2)

    def body() -> tuple[State[Any], list[int]]:
        victims = [slow_double.submit(i) for i in range(3)]
        crashed = kill_own_worker.submit(return_state=True)
        return (crashed, [v.result() for v in victims])

    try:
        crashed, doubles = flow(backend=backend)(body)()
    finally:
        backend.shutdown()
    assert crashed.is_crashed() and "SIGKILL" in crashed.message
    assert doubles == [0, 2, 4]


@task
def array_total(array: Any) -> float:
    return float(array.sum())


def test_large_arrays_survive_other_joblib_calls_on_the_shared_pool() -> None:
    """joblib memory-maps large arrays into a folder tied to the Parallel call in
    progress; a plain joblib.Parallel call in between must not break flowcore's runs."""
    np = pytest.importorskip("numpy")
    import joblib

    big = np.ones(2**18)  # 2 MiB: above joblib's 1M memmapping threshold
    backend = flowcore.get_backend("joblib", n_jobs=2)
    try:
        runner = flow(backend=backend)(lambda: [f.result() for f in [array_total.submit(big) for _ in range(2)]])
        assert runner() == [float(2**18)] * 2
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(len)(big) for _ in range(2)) == [2**18] * 2
        assert runner() == [float(2**18)] * 2
    finally:
        backend.shutdown()
