"""The loky process backend with real worker processes: crashes, pickling, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("loky")

from flowcore.backends.loky import LokyBackend

import flowcore
from flowcore import flow, task
from flowcore.errors import CrashedError, SerializationError
from flowcore.states import State

REPO = Path(__file__).resolve().parents[1]


@task
def pid_of_worker(_: int = 0) -> int:
    return os.getpid()


@task
def slow_square(x: int, seconds: float = 0.3) -> int:
    time.sleep(seconds)
    return x * x


@task
def die_once(marker: str, how: str) -> str:
    """Kills its own worker the first time (the marker file remembers), then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(0.2)  # let sibling tasks start, so they are lost with the pool too
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(7)
    return "survived"


@task
def always_die() -> None:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


@task
def takes_anything(value: Any) -> str:
    return type(value).__name__


@task
def returns_a_lock() -> Any:
    return threading.Lock()


def on_loky(body: Any, **options: Any) -> Any:
    backend = flowcore.get_backend("loky", max_workers=2, **options)
    try:
        return flow(backend=backend)(body)()
    finally:
        backend.shutdown()


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_worker_death_is_pinned_on_its_task_and_retried(tmp_path: Path, how: str) -> None:
    marker = str(tmp_path / "died")
    dying = die_once.with_options(retries=1)

    def body() -> tuple[State[Any], list[int]]:
        victims = [slow_square.submit(i, 0.5) for i in range(4)]  # in flight when it dies
        crashing = dying.submit(marker, how, return_state=True)
        return (crashing, [v.result() for v in victims])

    crashing, squares = on_loky(body)
    assert crashing.is_completed() and crashing.result() == "survived"
    assert crashing.attempts == 2  # the lost attempt counts
    assert squares == [0, 1, 4, 9]  # the others were resubmitted, not lost


def test_worker_death_without_retries_ends_crashed_with_the_signal() -> None:
    def body() -> tuple[State[Any], int]:
        victim = slow_square.submit(3, 0.5)
        crashed = always_die.submit(return_state=True)
        return (crashed, victim.result())

    crashed, victim = on_loky(body)
    assert crashed.is_crashed() and crashed.name == "Crashed"
    assert isinstance(crashed.exception, CrashedError)
    assert "SIGKILL (-9)" in crashed.message and "worker process" in crashed.message
    assert victim == 9
    # The pool was replaced: the next flow runs normally.
    assert on_loky(lambda: slow_square.submit(4, 0.0).result()) == 16


def test_exit_code_is_reported(tmp_path: Path) -> None:
    def body() -> tuple[State[Any]]:
        return (die_once.submit(str(tmp_path / "m"), "exit", return_state=True),)

    (state,) = on_loky(body)
    assert state.is_crashed() and "exit code 7" in state.message


def test_unpicklable_argument_fails_fast_and_names_it() -> None:
    lock = threading.Lock()
    started = time.monotonic()

    def body() -> tuple[State[Any], str]:
        bad = takes_anything.submit(lock, return_state=True)
        good = takes_anything.submit(3).result()
        return (bad, good)

    bad, good = on_loky(body)
    assert time.monotonic() - started < 30
    assert bad.is_failed() and isinstance(bad.exception, SerializationError)
    assert "argument 'value'" in bad.message and "_thread.lock" in bad.message
    assert "takes_anything" in bad.message
    assert good == "int"  # the pool is still usable


def test_unpicklable_result_is_reported() -> None:
    def body() -> tuple[State[Any]]:
        return (returns_a_lock.submit(return_state=True),)

    (state,) = on_loky(body)
    assert state.is_failed() and isinstance(state.exception, SerializationError)
    # One line, naming the run and the result's type; no loky traceback.
    message = state.message
    assert "\n" not in message and "\\n" not in message and "Traceback" not in message
    assert "the result of task run 'returns_a_lock-" in message
    assert "(a _thread.lock) cannot be pickled to send it back: " in message
    assert message.endswith("; return plain data instead")


def test_pool_is_reused_across_flow_runs() -> None:
    backend_a = flowcore.get_backend("loky", max_workers=2)
    backend_b = flowcore.get_backend("loky", max_workers=2)
    try:
        first = flow(backend=backend_a)(lambda: {f.result() for f in pid_of_worker.map(range(8))})()
        second = flow(backend=backend_b)(lambda: {f.result() for f in pid_of_worker.map(range(8))})()
    finally:
        backend_a.shutdown()
        backend_b.shutdown()
    assert first & second  # the same worker processes served both runs
    assert len(first | second) <= 2  # one pool, whatever thread submitted the batches
    assert os.getpid() not in first


def _run_script(tmp_path: Path, source: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def test_main_module_functions_closures_and_lambdas(tmp_path: Path) -> None:
    result = _run_script(
        tmp_path,
        """
        from flowcore import flow, task

        offset = 100

        @task
        def add_offset(x):
            return x + offset

        def make_scaler(k):
            @task(name="scale")
            def scale(x):
                return x * k
            return scale

        @flow(backend="loky")
        def main():
            scale = make_scaler(3)
            lam = task(lambda x: x - 1)
            return [add_offset.submit(1).result(), scale.submit(2).result(), lam.submit(10).result()]

        if __name__ == "__main__":
            print(main())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[101, 6, 9]"


def test_a_task_whose_function_holds_an_unpicklable_value_names_it(tmp_path: Path) -> None:
    """A task defined in a script travels by value, with the globals and closure cells
    its code uses: the error names the one that cannot be pickled, not just "the task"."""
    result = _run_script(
        tmp_path,
        """
        import threading
        from flowcore import flow, task

        _lock = threading.Lock()

        @task
        def guarded(x):
            with _lock:
                return x

        def make_counter():
            counter_lock = threading.RLock()

            @task
            def count(x):
                with counter_lock:
                    return x
            return count

        @flow(backend="loky")
        def main():
            states = [guarded.submit(1, return_state=True), make_counter().submit(2, return_state=True)]
            for state in states:
                print(state.message)

        if __name__ == "__main__":
            main()
        """,
    )
    assert result.returncode == 0, result.stderr
    glob, cell = result.stdout.strip().splitlines()[-2:]
    assert "task run 'guarded-0'" in glob and "global '_lock' (a _thread.lock)" in glob, glob
    assert "cannot pickle '_thread.lock' object" in glob
    assert "variable 'counter_lock' (a _thread.RLock)" in cell, cell


def test_ctrl_c_stops_workers_and_exits_quickly(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            from pathlib import Path
            from flowcore import flow, task

            # Ctrl-C as in a terminal, even if the test runner was started with SIGINT
            # ignored (a background job of a non-interactive shell): Python would then
            # keep ignoring it instead of raising KeyboardInterrupt.
            signal.signal(signal.SIGINT, signal.default_int_handler)

            @task
            def work(i):
                Path({str(pids)!r}, str(os.getpid())).write_text("")
                time.sleep(60)
                return i

            @flow(backend="loky")
            def main():
                futures = work.map(range(4))
                print("submitted", flush=True)
                return [f.result() for f in futures]

            if __name__ == "__main__":
                main()
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker_pids = [int(p.name) for p in pids.iterdir()]
        assert worker_pids, "no worker started"
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        assert time.monotonic() - interrupted < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    alive = _alive_after(worker_pids, 15)
    assert alive == [], f"worker processes outlived the parent: {alive}"


def _alive_after(pids: list[int], seconds: float) -> list[int]:
    """Those of ``pids`` still alive once all have died or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    alive = [pid for pid in pids if _alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@task
def array_checksum(array: Any) -> tuple[float, tuple[int, ...]]:
    return float(array.sum()), tuple(array.shape)


def test_large_numpy_argument_round_trip() -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(8_000_000, dtype=np.float64).reshape(4000, 2000)  # 64 MB

    def body() -> tuple[float, tuple[int, ...]]:
        return array_checksum.submit(array).result()

    total, shape = on_loky(body)
    assert shape == (4000, 2000) and total == float(array.sum())


@task(timeout_seconds=0.5)
def c_level_loop(_: int = 0) -> int:
    """``sum`` over a range runs in C and never lets a signal handler run (minutes)."""
    return sum(range(10**11))


@pytest.mark.parametrize("batched", [False, True])
def test_timeout_kills_a_worker_that_ignores_the_timer_signal(batched: bool) -> None:
    started = time.monotonic()

    def body() -> tuple[list[str], list[str], int]:
        victim = slow_square.submit(5, 0.2)
        futures = c_level_loop.map(range(2)) if batched else [c_level_loop.submit()]
        if batched:  # the map stays in columns: its batch's runs are watched while it is out
            assert {type(f).__name__ for f in futures} == {"MappedFuture"}
        flowcore.wait(futures)
        return [f.state.name for f in futures], [f.state.message for f in futures], victim.result()

    names, messages, victim = on_loky(body)
    assert set(names) == {"TimedOut"}
    assert all("ignored the timer signal" in m for m in messages)
    assert victim == 25
    assert time.monotonic() - started < 60
    assert on_loky(lambda: slow_square.submit(3, 0.0).result()) == 9  # pool replaced, usable


@task
def sleep_and_report(seconds: float, pids_dir: str) -> float:
    Path(pids_dir, str(os.getpid())).write_text("")
    time.sleep(seconds)
    return seconds


def test_an_exception_in_the_flow_body_stops_running_workers(tmp_path: Path) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    futures: list[Any] = []

    @flow(backend="loky")
    def failing() -> None:
        futures.extend(sleep_and_report.submit(60.0, str(pids_dir)) for _ in range(2))
        deadline = time.monotonic() + 60
        while len(list(pids_dir.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("the body gave up")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the body gave up"):
        failing()
    assert time.monotonic() - started < 30
    for future in futures:
        future.wait(30)
    assert [f.state.name for f in futures] == ["Cancelled", "Cancelled"]
    pids = [int(p.name) for p in pids_dir.iterdir()]
    assert _alive_after(pids, 15) == []


def test_segfault_in_a_worker_is_a_crash() -> None:
    def body() -> tuple[State[Any]]:
        return (segfault.submit(return_state=True),)

    (state,) = on_loky(body)
    assert state.is_crashed() and "SIGSEGV (-11)" in state.message


@task
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


@task(log_prints=True)
def chatty(i: int) -> int:
    flowcore.get_run_logger().info("working on %d in a worker", i)
    print(f"printed {i}")
    return os.getpid()


@pytest.mark.parametrize("batched", [False, True])
def test_worker_logs_are_replayed_in_the_parent(caplog: pytest.LogCaptureFixture, batched: bool) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="flowcore")

    def body() -> list[int]:
        futures = chatty.map([1, 2]) if batched else [chatty.submit(1), chatty.submit(2)]
        return [f.result() for f in futures]

    pids = on_loky(body)
    assert os.getpid() not in pids
    task_records = [r for r in caplog.records if r.name == "flowcore.task_runs"]
    messages = sorted(r.getMessage() for r in task_records)
    assert messages == ["printed 1", "printed 2", "working on 1 in a worker", "working on 2 in a worker"]
    for record in task_records:
        assert record.task_name == "chatty"  # type: ignore[attr-defined]
        assert record.task_run_name.startswith("chatty-")  # type: ignore[attr-defined]
        assert record.flow_run_id  # type: ignore[attr-defined]
        assert record.process in pids  # emitted in the worker, replayed here


def test_flow_retry_after_a_failed_body_runs_on_a_working_backend() -> None:
    attempts: list[int] = []

    @flow(backend="loky", retries=1)
    def flaky_body() -> int:
        attempts.append(1)
        value = slow_square.submit(4, 0.0).result()
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after its task")
        return value

    assert flaky_body() == 16
    assert len(attempts) == 2


@task(retries=1, retry_delay_seconds=2.5, timeout_seconds=1.0)
def fails_once_then_works(counter: str) -> int:
    from flowcore.testing.workloads import bump

    if bump(counter) == 1:
        raise ValueError("first attempt")
    return 7


def test_a_run_waiting_to_retry_is_not_taken_for_a_stuck_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def body() -> tuple[State[Any]]:
        return (fails_once_then_works.submit(str(tmp_path / "c"), return_state=True),)

    (state,) = on_loky(body)
    assert state.is_completed() and state.result() == 7 and state.attempts == 2
    assert not any("ignored the timer signal" in r.getMessage() for r in caplog.records)


def test_a_failing_subflow_does_not_stop_the_parents_runs_on_the_shared_pool() -> None:
    @flow(backend="loky")
    def failing_child() -> None:
        slow_square.submit(2, 1.0)
        time.sleep(0.3)
        raise RuntimeError("child gives up")

    @flow(backend="loky")
    def parent() -> tuple[int, str]:
        mine = slow_square.submit(3, 1.5)
        time.sleep(0.3)
        child = failing_child(return_state=True)
        return mine.result(), child.name

    assert parent() == (9, "Failed")


def test_cancel_of_a_batched_run_that_is_executing_returns_false() -> None:
    def body() -> tuple[bool, str]:
        futures = slow_square.map([1, 2], [1.0, 1.0])
        time.sleep(0.5)  # both are running in their workers by now
        cancelled = futures[0].cancel()
        return cancelled, futures[0].state.name if futures[0].done() else "running"

    cancelled, name = on_loky(body)
    assert cancelled is False and name in ("running", "Completed")


def _journaled_big_result(tag: str, size: int) -> bytes:
    """Runs as journaled run ``tag``, then returns ``size`` bytes: the worker spends a
    while writing them back to the parent after its journal says idle."""
    from flowcore.backends._supervision import journal

    journal.record_start(tag)
    time.sleep(0.05)
    journal.record_idle()
    return b"x" * size


def _blocked_in_pipe_write(pid: int) -> bool:
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs /proc/<pid>/wchan")
def test_a_worker_is_never_killed_while_it_writes_its_result_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill_workers_running kills a worker only while its journal names the run. A
    worker killed half way through writing its result back leaves loky's result reader
    waiting forever for the rest of the message, and every later run on that pool hangs.

    The killer here is slowed down between reading the journal and killing (as a
    preempted thread on a busy machine is): its SIGKILL waits until the worker is
    writing to the result pipe, or one second. A worker that may record itself idle
    while a kill of its run is under way would be killed mid-write."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from flowcore.backends._supervision import journal

    real_kill = os.kill

    def slow_kill(pid: int, sig: int) -> None:
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not _blocked_in_pipe_write(pid):
                time.sleep(0.001)
        real_kill(pid, sig)

    backend = flowcore.get_backend("loky", max_workers=2)
    killed = kills = 0
    try:
        for attempt in range(3):
            tag = f"race{os.getpid()}-{attempt}"
            future = backend.submit(_journaled_big_result, tag, 64 << 20)
            monkeypatch.setattr(os, "kill", slow_kill)
            try:
                while not future.done() and not killed:
                    killed += journal.kill_workers_running({tag})
            finally:
                monkeypatch.setattr(os, "kill", real_kill)
            try:
                future.result(timeout=30)  # its value, or the loss of its worker
            except FutureTimeout:
                pytest.fail(f"attempt {attempt}: the run never settled: the pool is stuck")
            except Exception:
                pass
            for _ in range(2):  # the probe may be lost with the pool the kill broke
                try:
                    assert backend.submit(pow, 2, 10).result(timeout=30) == 1024
                    break
                except FutureTimeout:
                    pytest.fail(f"attempt {attempt}: the pool no longer runs anything")
                except Exception:
                    continue
            else:
                pytest.fail(f"attempt {attempt}: no pool ran the probe")
            kills, killed = kills + killed, 0
    finally:
        backend.shutdown(wait=False, cancel_futures=True)
    assert kills > 0  # the race was run: the workers were killed while on their runs


@pytest.mark.parametrize("backend", ["loky", "joblib"])
def test_workers_end_when_their_parent_is_killed(tmp_path: Path, backend: str) -> None:
    """A parent that is SIGKILLed runs no exit code; its idle workers must not sit
    orphaned until their idle timeout (they watch their parent and end)."""
    options = "max_workers=2" if backend == "loky" else "n_jobs=2"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, time
            import flowcore
            from flowcore import flow, task

            @task
            def worker_pid(_):
                time.sleep(0.2)
                return os.getpid()

            @flow(backend=flowcore.get_backend({backend!r}, {options}))
            def main():
                return sorted({{f.result() for f in worker_pid.map(range(4))}})

            print(*main(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    # Output to files, not pipes: orphaned workers would hold a pipe open.
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        result = subprocess.run([sys.executable, str(script)], stdout=out, stderr=err, cwd=tmp_path, timeout=120)
    assert result.returncode == -signal.SIGKILL, (tmp_path / "err").read_text()
    worker_pids = [int(pid) for pid in (tmp_path / "out").read_text().split()]
    assert worker_pids and os.getpid() not in worker_pids
    alive = _alive_after(worker_pids, 15)
    assert alive == [], f"worker processes outlived their killed parent: {alive}"


def test_parent_watch_ends_only_orphans(tmp_path: Path) -> None:
    """The watch ends a process whose parent died, and leaves one whose parent lives. A
    process that only journals (a Dask worker, which may be started with ``nohup`` and
    outlive its shell by design) is not watched."""
    code = textwrap.dedent(
        """
        import os, sys, time
        from flowcore.backends._supervision import journal
        from flowcore.backends._supervision.lifeline import watch_parent

        if sys.argv[1] == "watched":
            watch_parent(interval=0.05)
        elif sys.argv[1] == "journaled":
            journal.open_journal(sys.argv[2])
        if sys.argv[1] in ("watched", "journaled"):
            print(os.getpid(), flush=True)
            time.sleep(60)
        else:  # the parent: start the child, report its pid, then die or stay
            import subprocess
            kind = "journaled" if sys.argv[1] == "die-journaled" else "watched"
            child = subprocess.Popen([sys.executable, __file__, kind, sys.argv[2]], stdout=subprocess.PIPE, text=True)
            print(child.stdout.readline().strip(), flush=True)
            if sys.argv[1].startswith("die"):
                os._exit(0)
            time.sleep(1.0)
            print("alive" if child.poll() is None else f"ended {child.returncode}", flush=True)
            child.kill()
        """
    )
    script = tmp_path / "watch.py"
    script.write_text(code)
    journals = tmp_path / "journals"
    journals.mkdir()

    def run(mode: str) -> list[str]:  # output to a file: an orphan would hold a pipe open
        with open(tmp_path / mode, "w") as out:
            subprocess.run([sys.executable, str(script), mode, str(journals)], stdout=out, timeout=60, check=True)
        return (tmp_path / mode).read_text().split()

    assert run("stay")[1] == "alive"
    orphan = int(run("die")[0])
    assert _alive_after([orphan], 10) == [], "the orphaned child kept running"
    journaled = int(run("die-journaled")[0])
    try:
        assert _alive_after([journaled], 2) == [journaled], "a process that only journals was ended"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(journaled, signal.SIGKILL)


# -- a pool broken again and again by one run (issue 12.15) -------------------------


def _unguarded(fn: Any, *args: Any) -> Any:
    return fn(*args)


class UnguardedLoky(LokyBackend):
    """A loky backend without flowcore's way-back guard (``send_back``), as a third-party
    process backend may be: a result that cannot be unpickled breaks the real pool on
    every round ("A result has failed to un-serialize"), and no worker died for it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.pools: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        from flowcore.backends.loky import discard_pool, shared_pool

        pool = shared_pool(self.max_workers, self.idle_timeout)
        try:
            future = pool.submit(_unguarded, fn, *args)
        except (BrokenProcessPool, RuntimeError):
            discard_pool(pool)
            pool = shared_pool(self.max_workers, self.idle_timeout)
            future = pool.submit(_unguarded, fn, *args)
        if not self.pools or self.pools[-1] is not pool:
            self.pools.append(pool)
        self._executor = pool
        future.add_done_callback(lambda done: self._settled(done, pool))
        return future


@pytest.mark.timeout(60)
def test_resubmission_after_pool_losses_is_bounded_and_pools_are_shut_down() -> None:
    from flowcore.dispatch import MAX_POOL_LOSSES
    from flowcore.testing import workloads as w

    backend = UnguardedLoky()
    try:
        (state,) = flow(backend=backend)(lambda: (w.return_unloadable.submit(return_state=True),))()
    finally:
        backend.shutdown()
    assert state.name == "Crashed"
    assert f"was lost {MAX_POOL_LOSSES + 1} times in a row with its worker pool" in state.message
    assert "\n" not in state.message
    # A fresh pool per round, no more: the first trip (in a batch, recovered by sending
    # the run alone) and the run's own MAX_POOL_LOSSES + 1.
    assert len(backend.pools) <= MAX_POOL_LOSSES + 2
    for discarded in backend.pools[:-1]:  # shut down, not just forgotten
        assert discarded._executor_manager_thread is None


# -- a parent killed while its pool starts (issue 12.19) -----------------------------


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _descendants_with(token: str, since: int) -> dict[int, int]:
    """``{pid: start time}`` of the live processes whose environment carries ``token``
    (inherited from one ancestor), whose command line mentions loky and that started no
    earlier than ``since`` (pids wrap here: a pid alone names no process for long)."""
    found: dict[int, int] = {}
    needle = token.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            if b"loky" not in (entry / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        started = _start_time(pid)
        if started is not None and started >= since and _alive(pid):
            found[pid] = started
    return found


@pytest.mark.timeout(300)
def test_workers_end_when_their_parent_is_killed_while_the_pool_starts(tmp_path: Path) -> None:
    """A parent SIGKILLed 0.05-0.15 s after its first submit, while its workers are still
    starting: a worker that first sees its parent after the death has PPid 1 and must
    not conclude it was always an orphan. No loky process it started survives (issue
    12.19). Not the joblib backend: a joblib worker that never received a task has not
    imported flowcore, and nothing of flowcore runs at its start."""
    import uuid

    backend, options = "loky", "max_workers=2"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            import flowcore
            from flowcore import flow, task

            @task
            def nap(x):
                time.sleep(1.0)
                return x

            @flow(backend=flowcore.get_backend({backend!r}, {options}))
            def main():
                nap.submit(1)
                time.sleep(float(sys.argv[1]))
                os.kill(os.getpid(), signal.SIGKILL)

            main()
            """
        )
    )
    survivors: dict[int, int] = {}
    try:
        for delay in (0.05, 0.1, 0.15):
            token = f"flowcore-test-{uuid.uuid4().hex}"
            env = {**os.environ, "FLOWCORE_TEST_LINEAGE": token}
            # Output to files, not pipes: orphaned workers would hold a pipe open.
            with open(tmp_path / "out", "w") as out:
                parent = subprocess.Popen(
                    [sys.executable, str(script), str(delay)], stdout=out, stderr=out, cwd=tmp_path, env=env
                )
                since = _start_time(parent.pid) or 0
                assert parent.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "out").read_text()
            deadline = time.monotonic() + 30  # generous: the watch ends a worker within 1 s
            left = _descendants_with(token, since)
            while left and time.monotonic() < deadline:
                time.sleep(0.2)
                left = _descendants_with(token, since)
            survivors.update(left)
            assert not left, f"killed {delay} s after its first submit, the parent left {sorted(left)} running"
    finally:
        for pid, started in survivors.items():
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
