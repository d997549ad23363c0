"""The backend conformance suite: what every flowcore backend must do.

Usage, in a third-party backend's test file::

    from flowcore.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mybackend"          # registered name ...
        backend_options = {"max_workers": 2}  # ... and options

or override the ``backend`` fixture to build the instance yourself. Optional tests are
switched on by ``capabilities`` (derived from the backend's kind unless set):

* ``parallel``: two tasks can run at the same time.
* ``processes``: tasks run in other processes than the caller.
* ``real_timeouts``: a task blocked in a C call (``time.sleep``) is stopped at its
  timeout, not when the call returns.

Tests that guard against a hang carry a ``pytest.mark.timeout``: they fail instead of
blocking the suite.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from flowcore import as_completed, flow, hookimpl, wait
from flowcore.backend import Backend, BackendKind, Capabilities
from flowcore.errors import (
    CrashedError,
    SerializationError,
    TaskTimeoutError,
    UpstreamFailedError,
    WaitTimeoutError,
)
from flowcore.events import EventKind, FlowRunEvent, RunEvent, TaskRunEvent
from flowcore.futures import TaskFuture
from flowcore.registry import get_registry
from flowcore.selection import get_backend
from flowcore.states import State
from flowcore.testing import workloads as w


def conformance_switches(backend: Backend) -> frozenset[str]:
    """The optional conformance tests a backend's declared capabilities switch on:
    ``processes`` (tasks run in another process), ``parallel`` (more than one at a
    time), ``real_timeouts`` (a timeout interrupts blocking calls)."""
    declared = backend.capabilities
    caps = set()
    if not declared.in_process:
        caps.add("processes")
    if not declared.inline and backend.max_workers >= 2:
        caps.add("parallel")
    if declared.interrupts_blocking:
        caps.add("real_timeouts")
    return frozenset(caps)


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is a live descendant of ``ancestor`` on this machine
    (follows PPid in /proc; False where there is no /proc)."""
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


class LifecycleRecorder:
    """An observer plugin that records every lifecycle hook call (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: list[str] = []
        self.finished: list[tuple[str, str]] = []
        self.flows_started: list[str] = []
        self.flows_finished: list[tuple[str, str]] = []

    @hookimpl
    def flowcore_task_run_submitted(self, task: Any, call: Any) -> None:
        with self.lock:
            self.submitted.append(call.task_run_id)

    @hookimpl
    def flowcore_task_run_finished(self, task: Any, call: Any, state: State[Any]) -> None:
        with self.lock:
            self.finished.append((call.task_run_id, state.name))

    @hookimpl
    def flowcore_flow_run_started(self, flow: Any, run: Any) -> None:
        with self.lock:
            self.flows_started.append(run.run_id)

    @hookimpl
    def flowcore_flow_run_finished(self, flow: Any, run: Any, state: State[Any]) -> None:
        with self.lock:
            self.flows_finished.append((run.run_id, state.name))


class EventRecorder:
    """An observer plugin that keeps every run event it is given (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[RunEvent] = []

    @hookimpl
    def flowcore_run_events(self, events: Sequence[RunEvent]) -> None:
        with self.lock:
            self.events.extend(events)


class BackendConformance:
    """Base class of the conformance tests; subclass it once per backend."""

    backend_name: ClassVar[str | None] = None
    backend_options: ClassVar[dict[str, Any]] = {}
    capabilities: ClassVar[frozenset[str] | None] = None

    # -- fixtures an implementer may override ------------------------------
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        """The backend under test; shut down after each test."""
        if self.backend_name is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set backend_name (and backend_options) or "
                "override the 'backend' fixture"
            )
        instance = get_backend(self.backend_name, **self.backend_options)
        try:
            yield instance
        finally:
            instance.shutdown(wait=True)

    @pytest.fixture
    def caps(self, backend: Backend) -> frozenset[str]:
        if self.capabilities is not None:
            return frozenset(self.capabilities)
        return conformance_switches(backend)

    @pytest.fixture
    def run(self, backend: Backend) -> Callable[..., Any]:
        """``run(fn, *args, **kwargs)`` runs ``fn`` as a flow on the backend under test."""

        def run_flow(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return flow(backend=backend, name=f"conformance-{fn.__name__}")(fn)(*args, **kwargs)

        return run_flow

    @pytest.fixture
    def recorder(self) -> Iterator[LifecycleRecorder]:
        observer = LifecycleRecorder()
        registry = get_registry()
        registry.register(observer, name=f"conformance-recorder-{id(observer)}")
        try:
            yield observer
        finally:
            registry.unregister(observer)

    @pytest.fixture
    def events(self) -> Iterator[EventRecorder]:
        observer = EventRecorder()
        registry = get_registry()
        registry.register(observer, name=f"conformance-events-{id(observer)}")
        try:
            yield observer
        finally:
            registry.unregister(observer)

    # -- the protocol --------------------------------------------------------
    def test_default_options_match_the_advertised_kind(self) -> None:
        """Created with no options at all (``FLOWCORE_BACKEND=<name>``), a backend runs
        tasks the way its registration advertises (``flowcore backends`` shows it):
        a backend listed as ``processes`` really runs them in worker processes."""
        if self.backend_name is None:
            pytest.skip("the class builds its backend itself: no registered defaults to check")
        spec = get_registry().backends()[self.backend_name].spec
        instance = get_backend(self.backend_name)
        try:
            assert instance.kind is spec.kind, (
                f"backend {self.backend_name!r} is registered as {spec.kind} but its "
                f"default instance is {instance.kind} ({instance!r})"
            )
            if spec.kind is BackendKind.PROCESSES:
                pid = flow(backend=instance, name="conformance-defaults")(
                    lambda: w.worker_pid.submit().result()
                )()
                assert pid != os.getpid()
            if spec.capabilities is not None:  # declared before an instance is made
                assert instance.capabilities == spec.capabilities, (
                    f"backend {self.backend_name!r} registers capabilities {spec.capabilities} "
                    f"but its default instance has {instance.capabilities}"
                )
        finally:
            instance.shutdown(wait=True)

    def test_declared_worker_placement_holds(self, backend: Backend, run: Callable[..., Any]) -> None:
        """``local_processes``: runs execute in worker processes started from here;
        ``connects_to_cluster``: the worker count is known once connected. Neither goes
        with ``in_process``."""
        declared = backend.capabilities
        if not (declared.local_processes or declared.connects_to_cluster):
            pytest.skip("declares neither local_processes nor connects_to_cluster")
        assert not declared.in_process
        assert not (declared.local_processes and declared.connects_to_cluster)
        if declared.connects_to_cluster:
            assert backend.worker_count() >= 1
            return
        pid = run(lambda: w.worker_pid.submit().result())
        assert pid != os.getpid() and _descends_from(pid, os.getpid()), pid

    def test_backend_describes_itself(self, backend: Backend) -> None:
        assert isinstance(backend.name, str) and backend.name
        assert isinstance(backend.kind, BackendKind)
        assert isinstance(backend.capabilities, Capabilities)
        assert isinstance(backend.max_workers, int) and backend.max_workers >= 1

    def test_shutdown_is_idempotent_and_final(self, backend: Backend) -> None:
        future = backend.submit(pow, 2, 5)
        assert future.result(timeout=60) == 32
        backend.shutdown(wait=True)
        backend.shutdown(wait=True)
        with pytest.raises(RuntimeError):
            backend.submit(pow, 2, 5)

    def test_backend_as_context_manager(self, backend: Backend) -> None:
        with backend as entered:
            assert entered.submit(pow, 3, 2).result(timeout=60) == 9
        with pytest.raises(RuntimeError):
            backend.submit(pow, 2, 5)

    # -- results and ordering ---------------------------------------------------
    def test_submit_returns_the_value(self, run: Callable[..., Any]) -> None:
        def body() -> int:
            return w.add.submit(2, 3).result()

        assert run(body) == 5

    def test_map_keeps_submission_order(self, run: Callable[..., Any]) -> None:
        def body() -> list[int]:
            futures = w.square.map(range(50))
            return [f.result() for f in futures]

        assert run(body) == [i * i for i in range(50)]

    def test_direct_call_inside_flow(self, run: Callable[..., Any]) -> None:
        def body() -> int:
            return w.add(1, 1) + w.add.submit(1, 1).result()

        assert run(body) == 4

    def test_many_small_tasks(self, run: Callable[..., Any]) -> None:
        def body(n: int) -> int:
            return sum(f.result() for f in w.add.map(range(n), 1))

        assert run(body, 2000) == sum(range(2000)) + 2000

    def test_large_arguments_and_results(self, run: Callable[..., Any]) -> None:
        payload = os.urandom(16 * 1024 * 1024)

        def body() -> tuple[int, int]:
            return w.length.submit(payload).result(), len(w.echo_bytes.submit(8 * 1024 * 1024).result())

        assert run(body) == (len(payload), 8 * 1024 * 1024)

    # -- failures -----------------------------------------------------------------
    def test_exception_type_and_traceback(self, run: Callable[..., Any]) -> None:
        def body() -> tuple[State[Any]]:
            future = w.raise_value_error.submit("bad input 7")
            with pytest.raises(w.ConformanceError, match="bad input 7"):
                future.result()
            return (future.state,)

        (state,) = run(body)
        assert state.is_failed() and state.name == "Failed"
        assert isinstance(state.exception, w.ConformanceError)
        assert state.traceback is not None and "raise_value_error" in state.traceback
        assert "bad input 7" in state.traceback

    def test_result_without_raising(self, run: Callable[..., Any]) -> None:
        def body() -> Any:
            return w.raise_value_error.submit("quiet").result(raise_on_failure=False)

        error = run(body)
        assert isinstance(error, w.ConformanceError) and str(error) == "quiet"

    def test_failed_task_fails_the_flow_only_if_raised(self, run: Callable[..., Any]) -> None:
        def body() -> int:
            w.raise_value_error.submit("ignored")
            return 1

        assert run(body) == 1  # an unobserved failure is logged, not raised

        def failing() -> None:
            w.raise_value_error.submit("raised").result()

        with pytest.raises(w.ConformanceError, match="raised"):
            run(failing)

    def test_sys_exit_in_a_task_crashes_only_that_run(self, run: Callable[..., Any]) -> None:
        """``sys.exit()`` in a task ends that run Crashed; the flow, the process and
        the other runs go on (submitted, mapped or called directly)."""

        def body() -> tuple[State[Any], list[State[Any]], str, int]:
            exiting = w.exit_with.submit(3, return_state=True)
            futures = w.exit_if_odd.map(range(4))
            wait(futures)
            with pytest.raises(CrashedError) as direct:
                w.exit_with(5)
            return exiting, [f.state for f in futures], str(direct.value), w.add.submit(1, 2).result()

        exiting, mapped, direct, after = run(body)
        assert exiting.name == "Crashed" and exiting.is_crashed()
        assert "the task called sys.exit(3)" in exiting.message
        assert [s.name for s in mapped] == ["Completed", "Crashed", "Completed", "Crashed"]
        assert "the task called sys.exit(1)" in mapped[1].message
        assert mapped[2].result() == 2
        assert "the task called sys.exit(5)" in direct
        assert after == 3

    # -- values that cannot make the trip back -------------------------------
    @pytest.mark.timeout(60)
    def test_unpicklable_exception_fails_its_run(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        """An exception that pickles but cannot be unpickled (``__init__`` with two
        arguments) fails its own run at once; no hang, no endless resubmission."""

        def body() -> tuple[State[Any], list[State[Any]], int]:
            bad = w.raise_unpicklable.submit("a", "b", return_state=True)
            futures = w.raise_unpicklable_if_odd.map(range(4))
            wait(futures)
            return bad, [f.state for f in futures], w.add.submit(1, 2).result()

        bad, mapped, after = run(body)
        assert after == 3
        assert bad.name == "Failed"
        assert [s.name for s in mapped] == ["Completed", "Failed", "Completed", "Failed"]
        assert [mapped[0].result(), mapped[2].result()] == [0, 2]
        if "processes" in caps:
            assert isinstance(bad.exception, SerializationError)
            assert "raise_unpicklable" in bad.message and "UnpicklableError" in bad.message
            assert isinstance(mapped[1].exception, SerializationError)
        else:
            assert isinstance(bad.exception, w.UnpicklableError)

    @pytest.mark.timeout(60)
    def test_result_that_cannot_be_unpickled_fails_its_run(
        self, run: Callable[..., Any], caps: frozenset[str]
    ) -> None:
        def body() -> tuple[State[Any], int]:
            return w.return_unloadable.submit(return_state=True), w.add.submit(1, 2).result()

        state, after = run(body)
        assert after == 3
        if "processes" in caps:
            assert state.name == "Failed" and isinstance(state.exception, SerializationError)
            assert "return_unloadable" in state.message and "FailsWhenLoaded" in state.message
        else:
            assert state.is_completed() and isinstance(state.result(), w.FailsWhenLoaded)

    @pytest.mark.timeout(60)
    def test_argument_that_cannot_be_unpickled_fails_its_run(
        self, run: Callable[..., Any], caps: frozenset[str]
    ) -> None:
        def body() -> tuple[State[Any], int]:
            return w.identity.submit(w.FailsWhenLoaded(), return_state=True), w.add.submit(1, 2).result()

        state, after = run(body)
        assert after == 3
        if "processes" in caps:
            assert state.name == "Failed" and isinstance(state.exception, SerializationError)
            assert "identity" in state.message and "argument 'x'" in state.message
            assert "FailsWhenLoaded" in state.message
        else:
            assert state.is_completed()

    # -- futures as arguments, NotRun ------------------------------------------
    def test_futures_as_arguments(self, run: Callable[..., Any]) -> None:
        def body() -> int:
            # A future stands in for its value; cast tells the type checker so.
            a = w.add.submit(1, 2)
            b = w.add.submit(cast(int, a), 10)
            c = w.total.submit(cast(list[int], [a, b, 100]))
            return c.result()

        assert run(body) == 3 + 13 + 100

    def test_submit_does_not_block_on_upstream(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        if "parallel" not in caps:
            pytest.skip("needs a backend that runs tasks concurrently")

        def body() -> tuple[float, int]:
            slow = w.sleep_for.submit(1.0)
            start = time.monotonic()
            downstream = w.identity.submit(slow)
            elapsed = time.monotonic() - start
            return elapsed, int(downstream.result())

        elapsed, value = run(body)
        assert value == 1
        assert elapsed < 0.9  # the submit returned before the 1 s upstream finished

    def test_failed_upstream_gives_not_run(self, run: Callable[..., Any]) -> None:
        def body() -> tuple[State[Any], State[Any]]:
            bad = w.raise_value_error.submit("upstream broke")
            child = w.identity.submit(bad)
            grandchild = w.identity.submit([child])
            child.wait()
            grandchild.wait()
            return child.state, grandchild.state

        child, grandchild = run(body)
        for state in (child, grandchild):
            assert state.name == "NotRun" and state.is_failed()
            assert isinstance(state.exception, UpstreamFailedError)
        assert "raise_value_error" in child.message and "upstream broke" in child.message

    def test_wait_for(self, run: Callable[..., Any], tmp_path: Path) -> None:
        marker = str(tmp_path / "marker")

        def body() -> tuple[str, State[Any]]:
            first = w.touch.submit(marker)
            after = w.identity.submit("ok", wait_for=[first])
            failed = w.raise_value_error.submit("nope")
            blocked = w.identity.submit("never", wait_for=[failed])
            value = after.result()
            assert Path(marker).exists()
            blocked.wait()
            return value, blocked.state

        value, blocked = run(body)
        assert value == "ok"
        assert blocked.name == "NotRun"

    def test_return_state(self, run: Callable[..., Any]) -> None:
        def body() -> tuple[State[Any], State[Any]]:
            ok = w.add.submit(1, 1, return_state=True)
            bad = w.raise_value_error.submit("x", return_state=True)
            return ok, bad

        ok, bad = run(body)
        assert ok.is_completed() and ok.result() == 2
        assert bad.is_failed()

    # -- waiting -----------------------------------------------------------------
    def test_wait_and_as_completed(self, run: Callable[..., Any]) -> None:
        def body() -> tuple[int, int, list[int]]:
            futures = [w.sleep_for.submit(d) for d in (0.2, 0.0, 0.1)]
            done, not_done = wait(futures, timeout=60)
            seen = sorted(int(f.result() * 10) for f in as_completed(futures, timeout=60))
            return len(done), len(not_done), seen

        assert run(body) == (3, 0, [0, 1, 2])

    def test_wait_times_out_without_raising(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        if "parallel" not in caps:
            pytest.skip("an inline backend finishes every task before submit returns")

        def body() -> tuple[int, bool]:
            slow = w.sleep_for.submit(1.5)
            _done, not_done = wait([slow], timeout=0.05)
            with pytest.raises(WaitTimeoutError):
                slow.result(timeout=0.01)
            with pytest.raises(WaitTimeoutError):
                list(as_completed([slow], timeout=0.01))
            return len(not_done), slow.done()

        not_done, finished_early = run(body)
        assert not_done == 1 and finished_early is False

    def test_flow_awaits_outstanding_futures(self, run: Callable[..., Any], tmp_path: Path) -> None:
        paths = [str(tmp_path / f"file{i}") for i in range(5)]
        futures: list[TaskFuture[Any]] = []

        def body() -> None:
            futures.extend(w.touch.submit(p) for p in paths)  # nothing waits in the body

        run(body)
        assert all(f.done() for f in futures)
        assert all(Path(p).exists() for p in paths)

    # -- caching -----------------------------------------------------------------
    def test_cache_hit_skips_the_body(self, run: Callable[..., Any], tmp_path: Path) -> None:
        from flowcore.caching import INPUTS

        counter = str(tmp_path / "count")
        cached = w.counted_square.with_options(
            cache_policy=INPUTS, cache_storage=str(tmp_path / "cache")
        )

        def body() -> tuple[State[Any], ...]:
            first = cached.submit(counter, 4, return_state=True)
            again = cached.submit(counter, 4, return_state=True)
            other = cached.submit(counter, 5, return_state=True)
            direct = cached(counter, 4, return_state=True)
            return first, again, other, direct

        first, again, other, direct = run(body)
        assert [s.name for s in (first, again, other, direct)] == ["Completed", "Cached", "Completed", "Cached"]
        assert again.result() == 16 and direct.result() == 16 and other.result() == 25
        assert w.read_count(counter) == 2

    # -- retries -----------------------------------------------------------------
    def test_retries_until_success(self, run: Callable[..., Any], tmp_path: Path) -> None:
        counter = str(tmp_path / "count")
        retrying = w.fail_until.with_options(retries=3, retry_delay_seconds=0)

        def body() -> tuple[State[Any]]:
            return (retrying.submit(counter, 3, return_state=True),)

        (state,) = run(body)
        assert state.is_completed() and state.result() == 3
        assert state.attempts == 3
        assert w.read_count(counter) == 3

    def test_retries_exhausted_raise_original_error(self, run: Callable[..., Any], tmp_path: Path) -> None:
        counter = str(tmp_path / "count")
        retrying = w.fail_until.with_options(retries=2, retry_delay_seconds=[0, 0])

        def body() -> Any:
            return retrying.submit(counter, 10).result()

        with pytest.raises(w.ConformanceError, match="attempt 3 fails"):
            run(body)
        assert w.read_count(counter) == 3

    def test_retry_delay_is_respected(self, run: Callable[..., Any], tmp_path: Path) -> None:
        counter = str(tmp_path / "count")
        retrying = w.fail_until.with_options(retries=1, retry_delay_seconds=0.3)

        def body() -> tuple[State[Any]]:
            return (retrying.submit(counter, 2, return_state=True),)

        (state,) = run(body)
        assert state.is_completed()
        assert state.duration is not None and state.duration >= 0.29

    def test_retry_condition(self, run: Callable[..., Any], tmp_path: Path) -> None:
        counter = str(tmp_path / "count")
        only_value_errors = w.type_error_once.with_options(
            retries=3, retry_condition_fn=retry_only_value_errors
        )

        def body() -> tuple[State[Any]]:
            return (only_value_errors.submit(counter, return_state=True),)

        (state,) = run(body)
        assert isinstance(state.exception, TypeError)
        assert w.read_count(counter) == 1 and state.attempts == 1

    # -- timeouts ----------------------------------------------------------------
    def test_timeout_stops_python_code(self, run: Callable[..., Any]) -> None:
        limited = w.sleep_in_steps.with_options(timeout_seconds=0.3)

        def body() -> tuple[State[Any]]:
            return (limited.submit(20.0, return_state=True),)

        started = time.monotonic()
        (state,) = run(body)
        assert state.name == "TimedOut" and state.is_failed()
        assert isinstance(state.exception, TaskTimeoutError)
        assert time.monotonic() - started < 15

    def test_timeout_stops_blocking_call(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        if "real_timeouts" not in caps:
            pytest.skip("backend interrupts Python code only; blocking C calls end when they return")
        limited = w.sleep_for.with_options(timeout_seconds=0.3)

        def body() -> tuple[State[Any]]:
            return (limited.submit(30.0, return_state=True),)

        started = time.monotonic()
        (state,) = run(body)
        assert state.name == "TimedOut"
        assert time.monotonic() - started < 15

    def test_timed_out_blocking_call_is_retried_at_its_deadline(
        self, run: Callable[..., Any], caps: frozenset[str]
    ) -> None:
        """Each attempt ends at its deadline (plus a grace period), not when the blocked
        call returns; the retry does not wait for the first attempt's call either."""
        if "real_timeouts" not in caps:
            pytest.skip("backend interrupts Python code only; blocking C calls end when they return")
        limited = w.sleep_for.with_options(timeout_seconds=0.5, retries=1, retry_delay_seconds=0)

        def body() -> tuple[State[Any]]:
            return (limited.submit(60.0, return_state=True),)

        started = time.monotonic()
        (state,) = run(body)
        assert state.name == "TimedOut" and state.attempts == 2
        assert time.monotonic() - started < 30  # not the 2 x 60 s of the blocked calls

    def test_timed_out_task_is_retried(self, run: Callable[..., Any]) -> None:
        limited = w.sleep_in_steps.with_options(timeout_seconds=0.2, retries=1)

        def body() -> tuple[State[Any]]:
            return (limited.submit(20.0, return_state=True),)

        (state,) = run(body)
        assert state.name == "TimedOut" and state.attempts == 2

    # -- where tasks run -----------------------------------------------------
    def test_process_placement_matches_capabilities(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        def body() -> int:
            return w.worker_pid.submit().result()

        pid = run(body)
        if "processes" in caps:
            assert pid != os.getpid()
        else:
            assert pid == os.getpid()

    @pytest.mark.timeout(120)
    def test_an_idle_workers_death_spares_a_running_task(
        self, run: Callable[..., Any], caps: frozenset[str], tmp_path: Path
    ) -> None:
        """Issue 12.16: only the run a dead worker was executing is its culprit. A worker
        killed while idle must not end a run executing in another worker ``Crashed``:
        that run is at most lost with the pool and sent again, using no attempt."""
        import signal

        if not {"processes", "parallel"} <= caps:
            pytest.skip("needs tasks in two or more worker processes")
        started, release = tmp_path / "started", tmp_path / "release"

        def body() -> tuple[State[Any], int | None]:
            held = w.hold_until.submit(str(started), str(release))
            deadline = time.monotonic() + 60
            while not (started.exists() and started.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.01)  # until the pid is written, not just the file created
            busy = int(started.read_text())
            idle: int | None = None
            for _ in range(10):  # find a worker other than the busy one, now idle
                pids = {f.result() for f in [w.worker_pid.submit() for _ in range(8)]} - {busy}
                # Only a process started from here: a remote worker's pid names some
                # other process on this machine.
                pids = {pid for pid in pids if _descends_from(pid, os.getpid())}
                if pids:
                    idle = min(pids)
                    break
            if idle is not None:
                os.kill(idle, signal.SIGKILL)
                time.sleep(0.5)  # the pool notices the death while the held run executes
            release.write_text("go")
            wait([held])
            return held.state, idle

        state, idle = run(body)
        if idle is None:
            pytest.skip("no idle worker process started from here to kill")
        assert state.name == "Completed", state.message
        assert state.attempts == 1  # lost with the pool at most: no attempt used

    def test_tasks_run_concurrently(self, run: Callable[..., Any], caps: frozenset[str], tmp_path: Path) -> None:
        if "parallel" not in caps:
            pytest.skip("backend runs one task at a time")
        a, b = str(tmp_path / "a"), str(tmp_path / "b")

        def body() -> list[bool]:
            first = w.rendezvous.submit(a, b)
            second = w.rendezvous.submit(b, a)
            return [first.result(), second.result()]

        assert run(body) == [True, True]

    @pytest.mark.timeout(120)
    def test_a_tag_concurrency_limit_bounds_running_tasks(self, run: Callable[..., Any]) -> None:
        """With a limit of 1 on a task's tag, its runs never overlap (submitted, mapped
        or called directly), whatever the backend's parallelism. The limit is created in
        the history file of the current ``FLOWCORE_HOME`` (where the workers look too)
        and removed after."""
        from flowcore.limits.store import LimitStore, store_path

        store = LimitStore(store_path())
        store.set_limit(w.LIMITED_TAG, 1)
        try:

            def body() -> list[tuple[float, float]]:
                submitted = [w.limited_interval.submit(0.15) for _ in range(3)]
                mapped = w.limited_interval.map([0.15, 0.15])
                direct = w.limited_interval(0.05)
                return [f.result() for f in [*submitted, *mapped]] + [direct]

            intervals = sorted(run(body))
        finally:
            store.remove(w.LIMITED_TAG)
            store.close()
        assert len(intervals) == 6
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end - 0.005, f"two runs of a tag limited to 1 overlapped: {intervals}"

    # -- hooks -------------------------------------------------------------------
    def test_lifecycle_hooks_fire_once_per_run(self, run: Callable[..., Any], recorder: LifecycleRecorder) -> None:
        def body() -> None:
            ok = w.add.map(range(20), 1)
            bad = w.raise_value_error.submit("hooked")
            w.identity.submit(bad)  # NotRun
            w.add(1, 2)  # a direct call is a task run too
            wait(ok)

        run(body)
        submitted = recorder.submitted
        finished_ids = [run_id for run_id, _ in recorder.finished]
        assert len(submitted) == 23 and len(set(submitted)) == 23
        assert sorted(finished_ids) == sorted(submitted)
        names = sorted(name for _, name in recorder.finished)
        assert names.count("Completed") == 21 and "Failed" in names and "NotRun" in names
        assert len(recorder.flows_started) == 1
        assert [name for _, name in recorder.flows_finished] == ["Completed"]

    def test_run_event_stream(
        self, run: Callable[..., Any], backend: Backend, caps: frozenset[str], events: EventRecorder
    ) -> None:
        """Every run on every path reports SUBMITTED, STARTED (if it ran) and FINISHED,
        once each and in that order, with its backend and the worker that ran it."""

        def body() -> dict[str, list[str]]:
            mapped = w.add.map(range(20), 1)  # a map: columns or batches
            single = [w.square.submit(i) for i in range(5)]  # coalesced submits
            bad = w.raise_value_error.submit("stream")
            skipped = w.identity.submit(bad)  # NotRun: never starts
            chained = w.add.submit(cast(int, single[0]), 1)  # waits on an upstream future
            direct = w.add(1, 2, return_state=True)  # a direct call is a task run too
            sent: list[TaskFuture[Any]] = [*mapped, *single, bad, chained]
            wait([*sent, skipped])
            assert direct.name == "Completed"
            return {
                "backend": [f.task_run_id for f in sent],
                "not_run": [skipped.task_run_id],
            }

        ids = run(body)
        flow_events = [e for e in events.events if isinstance(e, FlowRunEvent)]
        assert [e.kind for e in flow_events] == [EventKind.STARTED, EventKind.FINISHED]
        assert flow_events[-1].state is not None and flow_events[-1].state.name == "Completed"
        by_run: dict[str, list[TaskRunEvent]] = {}
        for event in events.events:
            if isinstance(event, TaskRunEvent):
                by_run.setdefault(event.task_run_id, []).append(event)
        assert len(by_run) == 29  # 20 mapped + 5 + failed + NotRun + chained + direct
        ran = [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
        for run_id in ids["backend"]:
            stream = by_run[run_id]
            assert [e.kind for e in stream] == ran, (run_id, stream)
            submitted, started, finished = stream
            assert {e.backend for e in stream} == {backend.name}
            assert finished.state is not None and started.worker == finished.worker
            assert finished.worker is not None and finished.worker.pid > 0
            if "processes" in caps:
                assert finished.worker.pid != os.getpid()
            else:
                assert finished.worker.pid == os.getpid()
            assert submitted.timestamp <= started.timestamp + 1.0  # clocks of one host
            assert started.timestamp <= finished.timestamp
            assert finished.task_run_name == submitted.task_run_name and finished.call is not None
        (not_run,) = ids["not_run"]
        assert [e.kind for e in by_run[not_run]] == [EventKind.SUBMITTED, EventKind.FINISHED]
        last = by_run[not_run][-1].state
        assert last is not None and last.name == "NotRun"
        finished_states = sorted(
            e.state.name for stream in by_run.values() for e in stream
            if e.kind is EventKind.FINISHED and e.state is not None
        )
        assert finished_states.count("Completed") == 27
        assert finished_states.count("Failed") == 1 and finished_states.count("NotRun") == 1
        direct = [s for s in by_run.values() if s[0].backend is None]
        assert len(direct) == 1 and [e.kind for e in direct[0]] == ran
        assert direct[0][-1].worker is not None and direct[0][-1].worker.pid == os.getpid()
        # The flow run brackets its task runs.
        positions = {id(e): i for i, e in enumerate(events.events)}
        first_task = min(positions[id(s[0])] for s in by_run.values())
        last_task = max(positions[id(s[-1])] for s in by_run.values())
        assert positions[id(flow_events[0])] < first_task and last_task < positions[id(flow_events[-1])]

    def test_submit_and_map_inside_a_task(self, run: Callable[..., Any]) -> None:
        """A task may submit and map other tasks in its body, on every backend (they
        run inline in the task's worker where the flow's backend is out of reach)."""

        def body() -> list[int]:
            return w.fan_out_inside.submit(3).result()

        assert run(body) == [9, 0, 1, 4, 4]

    def test_task_hooks_fire_once_in_the_caller(self, run: Callable[..., Any]) -> None:
        seen: list[tuple[str, str, int]] = []

        def on_done(task: Any, call: Any, state: State[Any]) -> None:
            seen.append((task.name, state.name, os.getpid()))

        ok = w.add.with_options(on_completion=[on_done], on_failure=[on_done])
        bad = w.raise_value_error.with_options(on_completion=[on_done], on_failure=[on_done])

        def body() -> None:
            ok.submit(1, 2).wait()
            bad.submit("x").wait()

        run(body)
        assert sorted(seen) == [("add", "Completed", os.getpid()), ("raise_value_error", "Failed", os.getpid())]

    def test_hooks_stay_in_the_caller(self, run: Callable[..., Any]) -> None:
        """Hooks run only in the submitting process, so they are never sent to workers:
        a hook holding a lock (unpicklable) works on every backend."""
        hook = LockedHook()
        ok = w.add.with_options(on_completion=[hook], on_failure=[hook])
        bad = w.raise_value_error.with_options(on_failure=[hook])

        def body() -> list[int]:
            values = [ok.submit(1, 2).result()]
            values += [f.result() for f in ok.map(range(3), 10)]
            bad.submit("x").wait()
            return values

        assert run(body) == [3, 10, 11, 12]
        assert sorted(hook.seen) == ["Completed"] * 4 + ["Failed"]

    # -- async tasks and flows ----------------------------------------------------
    def test_async_task_in_a_sync_flow(self, run: Callable[..., Any], caps: frozenset[str]) -> None:
        """A synchronous flow gets an async task's value from a direct call, a future
        and a map, and the coroutine runs on an event loop where the backend runs
        tasks (a worker process on a process backend)."""

        def body() -> tuple[int, int, list[int], tuple[int, bool]]:
            direct: Any = w.async_add(1, 2)  # a value here: no loop runs in this thread
            submitted = w.async_add.submit(2, 3).result()
            mapped = [f.result() for f in w.async_add.map(range(4), 10)]
            return direct, submitted, mapped, w.async_where.submit().result()

        direct, submitted, mapped, (pid, on_a_loop) = run(body)
        assert (direct, submitted, mapped) == (3, 5, [10, 11, 12, 13])
        assert on_a_loop
        if "processes" in caps:
            assert pid != os.getpid()
        else:
            assert pid == os.getpid()

    def test_async_flow_awaits_submits_and_gathers(self, run: Callable[..., Any]) -> None:
        """An async flow awaits task calls, awaits futures (of async and sync tasks)
        and gathers both."""
        import asyncio

        async def body() -> list[Any]:
            awaited = await w.async_add(1, 2)
            future = w.async_add.submit(awaited, 1)
            from_future = await future
            gathered = await asyncio.gather(*(w.async_add(i, i) for i in range(5)))
            mapped = await asyncio.gather(*w.async_add.map(range(3), 1))
            sync_future = await w.add.submit(2, 2)
            sync_direct = w.add(1, 1)
            return [awaited, from_future, list(gathered), list(mapped), sync_future, sync_direct, future.state.name]

        assert run(body) == [3, 4, [0, 2, 4, 6, 8], [1, 2, 3], 4, 2, "Completed"]

    def test_async_failure_keeps_its_type(self, run: Callable[..., Any], tmp_path: Path) -> None:
        counter = str(tmp_path / "count")

        async def body() -> tuple[State[Any], str]:
            future = w.async_fail_until.submit(counter, 99)
            with pytest.raises(w.ConformanceError, match="attempt 1 fails") as raised:
                await future
            return future.state, str(raised.value)

        state, message = run(body)
        assert state.name == "Failed" and isinstance(state.exception, w.ConformanceError)
        assert state.traceback is not None and "async_fail_until" in state.traceback
        assert message == "attempt 1 fails"

    def test_async_timeout_cancels_the_coroutine(self, run: Callable[..., Any], tmp_path: Path) -> None:
        """``timeout_seconds`` cancels an async task's coroutine at its deadline (its
        ``finally`` and ``except CancelledError`` run), submitted or awaited."""
        limited = w.async_sleep_marking.with_options(timeout_seconds=0.3)
        submitted, awaited = str(tmp_path / "submitted"), str(tmp_path / "awaited")

        async def body() -> tuple[State[Any], State[Any]]:
            state = limited.submit(30.0, submitted, return_state=True)
            return state, await limited(30.0, awaited, return_state=True)

        started = time.monotonic()
        states = run(body)
        assert time.monotonic() - started < 15
        for state in states:
            assert state.name == "TimedOut" and isinstance(state.exception, TaskTimeoutError)
        assert Path(submitted).read_text() == "cancelled"
        assert Path(awaited).read_text() == "cancelled"

    def test_async_retries_and_cache(self, run: Callable[..., Any], tmp_path: Path) -> None:
        from flowcore.caching import INPUTS

        counter, squares = str(tmp_path / "count"), str(tmp_path / "squares")
        retrying = w.async_fail_until.with_options(retries=3, retry_delay_seconds=0)
        cached = w.async_counted_square.with_options(
            cache_policy=INPUTS, cache_storage=str(tmp_path / "cache")
        )

        async def body() -> tuple[State[Any], ...]:
            retried = retrying.submit(counter, 3, return_state=True)
            first = cached.submit(squares, 4, return_state=True)
            again = cached.submit(squares, 4, return_state=True)
            awaited = await cached(squares, 4, return_state=True)
            return retried, first, again, awaited

        retried, first, again, awaited = run(body)
        assert retried.is_completed() and retried.attempts == 3 and w.read_count(counter) == 3
        assert [s.name for s in (first, again, awaited)] == ["Completed", "Cached", "Cached"]
        assert awaited.result() == 16 and w.read_count(squares) == 1

    def test_async_runs_report_like_sync_runs(
        self, run: Callable[..., Any], events: EventRecorder, caps: frozenset[str]
    ) -> None:
        """Async task runs, awaited, submitted or mapped, report SUBMITTED, STARTED and
        FINISHED once each, and their hooks fire once, in the caller."""
        import asyncio

        seen: list[str] = []

        def on_done(task: Any, call: Any, state: State[Any]) -> None:
            seen.append(f"{state.name}:{os.getpid()}")

        hooked = w.async_add.with_options(on_completion=[on_done])

        async def body() -> list[int]:
            values = [await w.async_add(1, 1), await hooked(1, 2), await hooked.submit(2, 2)]
            values += await asyncio.gather(*w.async_add.map(range(3), 0))
            return values

        assert run(body) == [2, 3, 4, 0, 1, 2]
        assert seen == [f"Completed:{os.getpid()}"] * 2
        by_run: dict[str, list[TaskRunEvent]] = {}
        for event in events.events:
            if isinstance(event, TaskRunEvent):
                by_run.setdefault(event.task_run_id, []).append(event)
        assert len(by_run) == 6
        for stream in by_run.values():
            assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
            final = stream[-1].state
            assert final is not None and final.name == "Completed"
        flow_events = [e for e in events.events if isinstance(e, FlowRunEvent)]
        assert [e.kind for e in flow_events] == [EventKind.STARTED, EventKind.FINISHED]

    # -- run context ---------------------------------------------------------------
    def test_run_context_in_flows_and_tasks(
        self, run: Callable[..., Any], backend: Backend, tmp_path: Path
    ) -> None:
        """``get_run_context()`` in a flow body and in task bodies wherever they run:
        the task run (id, name, parameters, attempt, backend) and its flow run."""
        from flowcore.run_context import get_run_context

        counter = str(tmp_path / "count")

        def body(n: int) -> dict[str, Any]:
            submitted = w.run_context_of.submit(2)
            return {
                "flow": get_run_context(),
                "direct": w.run_context_of(1),
                "submitted": submitted.result(),
                "submitted_id": submitted.task_run_id,
                "mapped": [f.result() for f in w.run_context_of.map([3, 4])],
                "async": w.async_run_context_of.submit(5).result(),
                "retried": w.run_context_after_a_failure.submit(counter).result(),
            }

        seen = run(body, 7)
        flow_ctx = seen["flow"]
        assert flow_ctx.task_run is None
        flow_run = flow_ctx.flow_run
        assert flow_run.parameters == {"n": 7} and flow_run.attempt == 1
        assert flow_run.backend == backend.name and flow_run.flow_name == "conformance-body"
        direct = seen["direct"]
        assert direct.task_run.backend is None and direct.task_run.parameters == {"x": 1}
        tasks = [seen["submitted"], *seen["mapped"], seen["async"], seen["retried"]]
        for ctx in [direct, *tasks]:
            assert ctx.flow_run.id == flow_run.id and ctx.flow_run.parameters == {"n": 7}
            assert ctx.flow_run.attempt is None
            assert ctx.task_run.flow_run_id == flow_run.id
        for ctx in tasks:
            assert ctx.task_run.backend == backend.name
        assert seen["submitted"].task_run.id == seen["submitted_id"]
        assert seen["submitted"].task_run.name == "run_context_of-0"  # submitted first
        assert direct.task_run.name == "run_context_of-1"
        assert [c.task_run.parameters for c in seen["mapped"]] == [{"x": 3}, {"x": 4}]
        assert [c.task_run.name for c in seen["mapped"]] == ["run_context_of-2", "run_context_of-3"]
        assert seen["async"].task_run.parameters == {"x": 5}
        retried = seen["retried"].task_run
        assert retried.attempt == 2 and retried.task_name == "run_context_after_a_failure"

    # -- run hooks -------------------------------------------------------------------
    def test_running_hooks_fire_once_in_the_caller(self, run: Callable[..., Any], tmp_path: Path) -> None:
        """A task's ``on_running`` fires once per run whose body started (submitted,
        mapped, called directly, async; not a cache hit, not a run that never started),
        before its final hook, in the submitting process."""
        from flowcore.caching import INPUTS

        lock = threading.Lock()
        seen: list[tuple[str, str, str, int]] = []

        def recorder(kind: str) -> Callable[..., None]:
            def hook(owner: Any, run_record: Any, state: State[Any]) -> None:
                name = getattr(run_record, "task_run_name", None) or run_record.name
                with lock:
                    seen.append((kind, name, state.name, os.getpid()))

            return hook

        hooks = {"on_running": [recorder("running")], "on_completion": [recorder("completed")],
                 "on_failure": [recorder("failed")]}
        ok = w.add.with_options(**hooks)  # type: ignore[arg-type]
        bad = w.raise_value_error.with_options(**hooks)  # type: ignore[arg-type]
        cached = w.counted_square.with_options(
            cache_policy=INPUTS, cache_storage=str(tmp_path / "cache"), **hooks  # type: ignore[arg-type]
        )
        async_ok = w.async_add.with_options(**hooks)  # type: ignore[arg-type]
        counter = str(tmp_path / "count")

        def body() -> None:
            ok.submit(1, 2).wait()
            wait(ok.map(range(3), 1))
            ok(5, 5)
            failed = bad.submit("x")
            failed.wait()
            ok.submit(cast(int, failed), 1).wait()  # NotRun: never starts
            cached.submit(counter, 3).wait()
            cached.submit(counter, 3).wait()  # a hit: the body does not run
            async_ok.submit(1, 1).wait()

        run(body)
        pid = os.getpid()
        assert {p for *_, p in seen} == {pid}
        kinds: dict[str, list[str]] = {}
        for kind, name, state_name, _ in seen:
            kinds.setdefault(name, []).append(f"{kind}:{state_name}")
        ran = [events for name, events in kinds.items() if events[0] == "running:Running"]
        assert len(ran) == 8  # 1 + 3 mapped + direct + failed + first cached + async
        for events in ran:
            assert len(events) == 2 and events[1] in ("completed:Completed", "failed:Failed")
        never_ran = [events for events in kinds.values() if events[0] != "running:Running"]
        assert sorted(e for events in never_ran for e in events) == ["completed:Cached", "failed:NotRun"]

    def test_flow_hooks_when_a_task_fails_or_its_worker_dies(
        self, backend: Backend, caps: frozenset[str]
    ) -> None:
        """A flow's ``on_running`` fires once before its body (not again on a retry);
        a task whose worker dies ends ``Crashed``, and a flow that raises its error is
        ``Failed``: ``on_failure`` fires, once, in this process."""
        seen: list[str] = []

        def hook(kind: str) -> Callable[..., None]:
            return lambda flow_, run_record, state: seen.append(f"{kind}:{state.name}:{os.getpid()}")

        options: dict[str, Any] = {
            "backend": backend,
            "on_running": [hook("running")],
            "on_completion": [hook("completed")],
            "on_failure": [hook("failed")],
            "on_crashed": [hook("crashed")],
            "on_cancellation": [hook("cancelled")],
        }
        attempts: list[int] = []

        @flow(name="conformance-retried", retries=1, **options)
        def retried() -> int:
            attempts.append(1)
            if len(attempts) == 1:
                w.raise_value_error.submit("first attempt").result()
            return w.add.submit(1, 1).result()

        assert retried() == 2
        pid = os.getpid()
        assert seen == [f"running:Running:{pid}", f"completed:Completed:{pid}"]
        if "processes" not in caps:
            return
        seen.clear()

        @flow(name="conformance-worker-dies", **options)
        def dies() -> State[Any]:
            doomed = w.kill_own_worker.submit()
            doomed.wait()
            task_state = doomed.state
            doomed.result()  # raises CrashedError: the flow fails
            return task_state

        state = dies(return_state=True)
        assert state.name == "Failed" and isinstance(state.exception, CrashedError)
        assert seen == [f"running:Running:{pid}", f"failed:Failed:{pid}"]

    # -- allow_failure and quote ---------------------------------------------------
    def test_allow_failure_and_quote(self, run: Callable[..., Any]) -> None:
        """``allow_failure(future)`` runs the downstream task despite a failed upstream
        and hands it the upstream's exception (as an argument, in ``wait_for``, in a
        map); ``quote(x)`` passes ``x`` unscanned; without them the run is NotRun."""
        from flowcore import allow_failure, quote

        def body() -> dict[str, Any]:
            failed = w.raise_value_error.submit("upstream broke")
            good = w.add.submit(1, 2)
            return {
                "argument": w.describe.submit(allow_failure(failed), good).result(),
                "wait_for": w.describe.submit(5, wait_for=[allow_failure(failed), good]).result(),
                "mapped": [f.result() for f in w.describe.map([allow_failure(failed), good])],
                "quoted": w.describe.submit(quote((1, [2]))).result(),
                "plain": w.describe.submit(failed).state.name,
            }

        seen = run(body)
        assert seen["argument"] == ["ConformanceError:upstream broke", "int:3"]
        assert seen["wait_for"] == ["int:5"]
        assert seen["mapped"] == [["ConformanceError:upstream broke"], ["int:3"]]
        assert seen["quoted"] == ["tuple:(1, [2])"]
        assert seen["plain"] == "NotRun"


class LockedHook:
    """A task hook that holds a lock, as real hooks often do (so it cannot be pickled)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []

    def __call__(self, task: Any, call: Any, state: State[Any]) -> None:
        with self.lock:
            self.seen.append(state.name)


def retry_only_value_errors(task: Any, call: Any, state: State[Any]) -> bool:
    return isinstance(state.exception, ValueError)


__all__ = [
    "BackendConformance",
    "EventRecorder",
    "LifecycleRecorder",
    "LockedHook",
    "conformance_switches",
]
