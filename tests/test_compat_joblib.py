"""flowcore.compat.joblib: joblib's Parallel API on flowcore backends, and flowcore as a
joblib backend. Real pools throughout; timings are never asserted."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

pytest.importorskip("loky")

import flowcore
from flowcore.compat.joblib import (
    Parallel,
    TerminatedWorkerError,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from flowcore.errors import CrashedError, FlowcoreError

# -- functions the workers run (module level: workers import them by reference) -------


def square(x: int) -> int:
    return x * x


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def slow_fail(x: int) -> int:
    if x == 0:
        time.sleep(1.0)
        raise KeyError("first")
    if x == 1:
        raise ZeroDivisionError("second")
    return x


def pid_of(_: int) -> int:
    time.sleep(0.01)
    return os.getpid()


def die(x: int) -> int:
    if x == 3:
        os._exit(17)
    return x


def nested_pids(_: int) -> tuple[int, list[int]]:
    inner: list[int] = Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(4))
    return os.getpid(), inner


def thread_name(_: int) -> str:
    return threading.current_thread().name


# -- results, backends, n_jobs ----------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["loky", "threading", "multiprocessing", "sequential", "threads", None]
)
def test_results_in_order_on_every_backend(backend: str | None) -> None:
    items = range(50)
    assert Parallel(n_jobs=2, backend=backend)(delayed(square)(i) for i in items) == [
        i * i for i in items
    ]


def test_keyword_arguments_and_mixed_functions() -> None:
    calls = [delayed(fail_at)(i, bad=-1) for i in range(5)] + [delayed(square)(3)]
    assert Parallel(n_jobs=2)(calls) == [0, 1, 2, 3, 4, 9]


def test_runs_in_other_processes_on_loky_and_in_threads_on_threading() -> None:
    pids = set(Parallel(n_jobs=2, backend="loky")(delayed(pid_of)(i) for i in range(8)))
    assert os.getpid() not in pids
    names = Parallel(n_jobs=2, backend="threading")(delayed(thread_name)(i) for i in range(8))
    assert all(name != threading.current_thread().name for name in names)


def test_n_jobs_rules() -> None:
    assert Parallel(n_jobs=-1)._effective_n_jobs() == cpu_count()
    assert Parallel(n_jobs="2")(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    assert Parallel(n_jobs=2.7).n_jobs == 2
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=0)
    with pytest.raises(ValueError, match="n_jobs could not be converted to int"):
        Parallel(n_jobs="many")
    assert Parallel().n_jobs == 1  # unset: 1, as in joblib
    assert effective_n_jobs(1) == 1
    assert effective_n_jobs(-1) == cpu_count()


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid backend: daks, expected one of .*loky.*threading"
    ):
        Parallel(backend="daks")


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="return_as"):
        Parallel(return_as="set")
    with pytest.raises(ValueError, match="batch_size"):
        Parallel(batch_size=0)
    with pytest.raises(ValueError, match="inconsistent"):
        Parallel(prefer="processes", require="sharedmem")
    with pytest.raises(ValueError, match="does not support shared memory"):
        Parallel(backend="loky", require="sharedmem")


def test_require_sharedmem_runs_in_threads() -> None:
    seen: list[int] = []
    Parallel(n_jobs=2, require="sharedmem")(delayed(seen.append)(i) for i in range(10))
    assert sorted(seen) == list(range(10))


def test_fixed_batch_size_and_pre_dispatch_all() -> None:
    for batch_size in (1, 7, 100):
        assert Parallel(n_jobs=2, batch_size=batch_size, pre_dispatch="all")(
            delayed(square)(i) for i in range(30)
        ) == [i * i for i in range(30)]


def test_many_tiny_tasks_with_a_generator_input() -> None:
    n = 20_000
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(n)) == [i * i for i in range(n)]


# -- lazy consumption, generators ---------------------------------------------------------


def test_pre_dispatch_consumes_the_input_lazily() -> None:
    events: list[str] = []
    lock = threading.Lock()

    def produce() -> Any:
        for i in range(6):
            with lock:
                events.append(f"produced {i}")
            yield delayed(record)(i)

    def record(i: int) -> None:
        time.sleep(0.05)
        with lock:
            events.append(f"consumed {i}")

    Parallel(n_jobs=2, batch_size=1, pre_dispatch=3, backend="threading")(produce())
    first_consumed = next(i for i, e in enumerate(events) if e.startswith("consumed"))
    assert events.index("produced 3") > first_consumed
    assert len(events) == 12


def test_generator_and_unordered_generator() -> None:
    ordered = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(20))
    assert not isinstance(ordered, list)
    assert list(ordered) == [i * i for i in range(20)]
    unordered = Parallel(n_jobs=2, return_as="generator_unordered")(
        delayed(square)(i) for i in range(20)
    )
    assert sorted(unordered) == [i * i for i in range(20)]


def test_calling_again_while_a_generator_runs_is_an_error() -> None:
    parallel = Parallel(n_jobs=2, return_as="generator", backend="threading")
    first = parallel(delayed(time.sleep)(0.2) for _ in range(4))
    with pytest.raises(RuntimeError, match="This Parallel instance is already running"):
        parallel(delayed(square)(i) for i in range(3))
    assert list(first) == [None] * 4
    assert list(parallel(delayed(square)(i) for i in range(3))) == [0, 1, 4]  # free again


def test_context_manager_reuses_workers_across_calls() -> None:
    with Parallel(n_jobs=2, backend="loky") as parallel:
        first = set(parallel(delayed(pid_of)(i) for i in range(20)))
        second = set(parallel(delayed(pid_of)(i) for i in range(20)))
    assert os.getpid() not in first
    assert second <= first | second and first & second  # the same worker processes
    with Parallel(n_jobs=2, backend="threads") as parallel:
        names = {*parallel(delayed(thread_name)(i) for i in range(20))}
        names |= {*parallel(delayed(thread_name)(i) for i in range(20))}
    assert len(names) <= 2  # one pool of two threads for both calls


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
def test_original_exception_type_with_worker_traceback(backend: str) -> None:
    with pytest.raises(ValueError, match="item 7 is bad") as info:
        Parallel(n_jobs=2, backend=backend)(delayed(fail_at)(i, 7) for i in range(30))
    if backend != "sequential":
        assert "fail_at" in str(info.value.__cause__)  # the worker's traceback, as text


def test_first_failure_in_submission_order_wins() -> None:
    # item 1 fails at once, item 0 a second later: joblib reports item 0's error only if
    # it is known when the call stops; flowcore waits for nothing and reports the
    # earliest failure it has seen, which is item 1 here -- unless item 0 failed first.
    with pytest.raises((KeyError, ZeroDivisionError)) as info:
        Parallel(n_jobs=2, batch_size=1)(delayed(slow_fail)(i) for i in range(4))
    assert isinstance(info.value, ZeroDivisionError)
    with pytest.raises(ValueError, match="item 2 is bad"):
        Parallel(n_jobs=1)(delayed(fail_at)(i, 2) for i in range(5))


def test_error_in_the_input_iterator_reaches_the_caller() -> None:
    def items() -> Any:
        for i in range(10):
            if i == 5:
                raise LookupError("input broke")
            yield delayed(square)(i)

    with pytest.raises(LookupError, match="input broke"):
        Parallel(n_jobs=2)(items())


@pytest.mark.parametrize("n_jobs", [2, 1])
@pytest.mark.parametrize("batch_size", ["auto", 3])
def test_items_that_are_not_delayed_calls_are_a_clear_error(n_jobs: int, batch_size: Any) -> None:
    """``Parallel()(f(i) for i in ...)``, delayed forgotten: the error names the item and
    the fix, instead of joblib's "cannot unpack" or a worker's
    "not subscriptable"."""
    if n_jobs == 1 and batch_size == "auto":
        pytest.skip("n_jobs=1 runs the items inline as joblib does (its unpacking error)")
    with pytest.raises(TypeError, match=r"item 0 is an int \(0\), not a call made with delayed\(\).*delayed\(fn\)\(\*args, \*\*kwargs\)"):
        Parallel(n_jobs=n_jobs, batch_size=batch_size)(square(i) for i in range(7))
    with pytest.raises(TypeError, match=r"item 1 is a tuple.*delayed\(fn\)\(\*args, \*\*kwargs\)"):
        Parallel(n_jobs=n_jobs, batch_size=batch_size)([delayed(square)(1), (square, (2,))])
    assert Parallel(n_jobs=n_jobs, batch_size=batch_size)(delayed(square)(i) for i in range(7))[-1] == 36


def test_an_error_stops_the_remaining_work() -> None:
    started = time.monotonic()
    with pytest.raises(TypeError):
        Parallel(n_jobs=2)(delayed(time.sleep)(s) for s in ["x", *[5] * 20])
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    # both calls finished long before the 100 s of sleeps the first one held
    assert time.monotonic() - started < 60


def test_timeout_raises_multiprocessing_timeout_error() -> None:
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, timeout=0.2)(delayed(time.sleep)(5) for _ in range(4))
    assert Parallel(n_jobs=2, timeout=30)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_timeout_with_n_jobs_1_warns_as_joblib() -> None:
    with pytest.warns(UserWarning, match="'SequentialBackend' does not support timeout"):
        Parallel(n_jobs=1, timeout=1)(delayed(square)(i) for i in range(3))


def test_worker_crash_raises_terminated_worker_error() -> None:
    with pytest.raises(TerminatedWorkerError) as info:
        Parallel(n_jobs=2, batch_size=1)(delayed(die)(i) for i in range(8))
    error = info.value
    assert isinstance(error, RuntimeError)
    assert isinstance(error, CrashedError) and isinstance(error, FlowcoreError)
    assert "17" in str(error) or "unexpectedly terminated" in str(error)
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky.process_executor import TerminatedWorkerError as JoblibTWE

    assert isinstance(error, JoblibTWE)
    # the pool is rebuilt for the next call
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert joblib.__version__


# -- nesting and configuration -------------------------------------------------------------


def test_nested_calls_run_in_threads_inside_process_workers() -> None:
    results = Parallel(n_jobs=2, backend="loky")(delayed(nested_pids)(i) for i in range(4))
    for outer_pid, inner_pids in results:
        assert outer_pid != os.getpid()
        assert set(inner_pids) == {outer_pid}  # no processes started below the workers


def test_nested_process_backend_below_threads_is_sequential_with_a_warning() -> None:
    def inner(_: int) -> list[int]:
        with pytest.warns(UserWarning, match="cannot be nested below threads"):
            return Parallel(n_jobs=2, backend="loky")(delayed(pid_of)(i) for i in range(2))

    results = Parallel(n_jobs=2, backend="threading")(delayed(inner)(i) for i in range(2))
    assert all(set(pids) == {os.getpid()} for pids in results)


def test_parallel_config_nests_and_overrides() -> None:
    with parallel_config(backend="threading", n_jobs=3):
        assert Parallel().n_jobs == 3
        assert effective_n_jobs(None) == 3
        with parallel_config(n_jobs=2):
            parallel = Parallel()
            assert parallel.n_jobs == 2
            names = parallel(delayed(thread_name)(i) for i in range(10))
            assert threading.current_thread().name not in names  # still threads
        assert Parallel(n_jobs=1).n_jobs == 1  # an explicit argument wins
        with parallel_config(backend="threading", n_jobs=None):
            assert Parallel().n_jobs == 1  # explicit None: the backend's default
    assert Parallel().n_jobs == 1
    with parallel_backend("threading") as (backend, n_jobs):
        assert n_jobs == -1 and backend.label == "ThreadingBackend"


def test_parallel_config_accepts_any_flowcore_backend() -> None:
    with parallel_config(backend="sequential", n_jobs=4):
        assert Parallel()(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3
    backend = flowcore.get_backend("threads", max_workers=2)
    try:
        with parallel_config(backend=backend, n_jobs=2):
            names = Parallel()(delayed(thread_name)(i) for i in range(6))
        assert all(name.startswith("flowcore-thread") for name in names)
    finally:
        backend.shutdown()


def test_register_parallel_backend_with_a_flowcore_factory() -> None:
    from flowcore.compat._config import unregister_parallel_backend

    register_parallel_backend("two-threads", lambda: flowcore.get_backend("threads", max_workers=2))
    try:
        with parallel_config(backend="two-threads", n_jobs=2):
            names = Parallel()(delayed(thread_name)(i) for i in range(6))
        assert all(name.startswith("flowcore-thread") for name in names)
    finally:
        unregister_parallel_backend("two-threads")


def test_parallel_config_dask_runs_on_flowcore_dask_backend() -> None:
    pytest.importorskip("distributed")
    from flowcore.registry import get_registry

    if "dask" not in get_registry().backends():
        pytest.skip("flowcore's dask backend is not registered here")
    with parallel_config(backend="dask", n_jobs=2):
        pids = Parallel()(delayed(pid_of)(i) for i in range(6))
        values = Parallel()(delayed(square)(i) for i in range(50))
    assert os.getpid() not in set(pids)
    assert values == [i * i for i in range(50)]


def test_parallel_config_dask_uses_the_users_dask_client_as_joblib_does() -> None:
    """A Dask user connects a Client, then ``with parallel_config(backend="dask")``:
    joblib runs the calls on that client's cluster (``get_client()``), and so must the
    drop-in, instead of starting a cluster of its own. ``scheduler_host`` names one."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:  # type: ignore[no-untyped-call]
            theirs = set(client.run(os.getpid).values())
            with parallel_config(backend="dask"):
                pids = set(Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(6)))
            assert pids <= theirs, (pids, theirs)
            assert client.status == "running"  # used, not closed
        with parallel_config(backend="dask", scheduler_host=cluster.scheduler_address):
            values = Parallel()(delayed(square)(i) for i in range(20))
        assert values == [i * i for i in range(20)]


# -- output ---------------------------------------------------------------------------------


def test_verbose_messages_in_joblib_format(capsys: pytest.CaptureFixture[str]) -> None:
    Parallel(n_jobs=2, verbose=10)(delayed(square)(i) for i in range(10))
    err = capsys.readouterr().err
    assert "[Parallel(n_jobs=2)]: Using backend LokyBackend with 2 concurrent workers." in err
    assert re.search(
        r"\[Parallel\(n_jobs=2\)\]: Done +10 out of +10 \| elapsed: +[0-9.]+s finished", err
    )
    Parallel(n_jobs=2, verbose=60)(delayed(square)(i) for i in range(3))
    assert re.search(r"Done +3 out of +3", capsys.readouterr().out)  # verbose >= 50: stdout


def test_progress_bar_renders_to_a_console() -> None:
    rich_console = pytest.importorskip("rich.console")
    buffer = io.StringIO()
    console = rich_console.Console(file=buffer, width=100, force_terminal=False)
    result = Parallel(n_jobs=2, progress=console)(delayed(square)(i) for i in range(40))
    assert result == [i * i for i in range(40)]
    text = buffer.getvalue()
    assert "40/40" in text and "Parallel(n_jobs=2)" in text
    plain = io.StringIO()
    Parallel(n_jobs=1, progress=plain)(delayed(square)(i) for i in range(5))
    assert "5/5" in plain.getvalue()


# -- import hygiene and missing joblib --------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_flowcore_does_not_import_joblib_or_the_shim() -> None:
    done = _run_python(
        "import sys, flowcore; print(sorted(m for m in sys.modules "
        "if m.startswith(('joblib', 'flowcore.compat', 'rich'))))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    done = _run_python(
        "import sys; from flowcore.compat.joblib import Parallel, delayed; "
        "print(Parallel(n_jobs=2, backend='threading')(delayed(abs)(-i) for i in range(3)), "
        "'joblib' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2] False"  # Parallel needs no joblib


def test_register_without_joblib_names_the_extra() -> None:
    done = _run_python(
        "import sys; sys.modules['joblib'] = None\n"
        "from flowcore.compat.joblib import Parallel, delayed, register\n"
        "assert Parallel(n_jobs=2, backend='threading')(delayed(abs)(-1) for _ in range(2)) == [1, 1]\n"
        "try:\n    register()\nexcept ImportError as e:\n    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "flowcore[joblib]"' in done.stdout


# -- flowcore as a joblib backend -------------------------------------------------------------


def test_joblib_runs_on_flowcore_backend_with_scikit_learn() -> None:
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from flowcore import plugins
    from flowcore.compat.joblib import register

    register()
    finished: list[str] = []

    class Observer:
        @flowcore.hookimpl
        def flowcore_task_run_finished(self, task: Any, call: Any, state: Any) -> None:
            finished.append(f"{task.name}:{state.name}")

    X, y = load_iris(return_X_y=True)
    expected = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5, n_jobs=1)
    observer = Observer()
    plugins.register(observer)
    try:
        with joblib.parallel_config("flowcore", flowcore_backend="loky"):
            scores = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5, n_jobs=2)
    finally:
        plugins.unregister(observer)
    assert list(scores) == list(expected)
    assert finished and all(entry == "joblib-batch:Completed" for entry in finished)


def test_joblib_on_flowcore_backend_keeps_exception_types() -> None:
    joblib = pytest.importorskip("joblib")
    from flowcore.compat.joblib import register

    register()
    with (
        joblib.parallel_config("flowcore", flowcore_backend="threads"),
        pytest.raises(ValueError, match="item 3"),
    ):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fail_at)(i, 3) for i in range(6))
    with joblib.parallel_config("flowcore", flowcore_backend="loky"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(30)) == [
            i * i for i in range(30)
        ]


def test_the_package_re_exports_the_drop_in_names_lazily() -> None:
    """``from flowcore.compat import Parallel, delayed`` is the drop-in's shortest import:
    the same objects as ``flowcore.compat.joblib``'s, loaded only when asked for."""
    import flowcore.compat as compat
    from flowcore.compat import joblib as shim

    for name in ("Parallel", "delayed", "parallel_config", "parallel_backend", "cpu_count"):
        assert getattr(compat, name) is getattr(shim, name), name
    from flowcore.compat import Parallel as P
    from flowcore.compat import delayed as d

    assert P(n_jobs=2, backend="threading")(d(square)(i) for i in range(4)) == [0, 1, 4, 9]
    with pytest.raises(AttributeError, match="no attribute 'Paralel'"):
        compat.Paralel  # noqa: B018 - the lookup is the test

    code = "import flowcore.compat, sys; print('flowcore.compat.joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
