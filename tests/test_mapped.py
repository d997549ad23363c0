"""Maps kept in columns (flowcore.mapped): on a real loky pool, every run of a map
behaves like a run submitted on its own -- values, states, ids, logs, failures,
crashes, cancellation, downstream use."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("loky")

import flowcore
from flowcore import flow, get_run_logger, task, unmapped
from flowcore.backend import Backend
from flowcore.errors import CrashedError, SerializationError
from flowcore.futures import TaskFuture
from flowcore.mapped import MappedFuture
from flowcore.processes import process_start
from flowcore.testing import workloads as w


@task
def scaled(x: int, factor: int = 1, *, offset: int = 0) -> int:
    return x * factor + offset


@task
def fails_on_multiples_of_five(i: int) -> int:
    if i % 5 == 0:
        raise w.ConformanceError(f"item {i} refused")
    return i


@task
def logs_its_name(i: int) -> int:
    get_run_logger().info("item %d", i)
    return i


@task
def die_at(i: int, target: int) -> int:
    if i == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


@task(log_prints=True)
def prints(i: int) -> int:
    print(f"printed {i}")
    return i


@task
def current_run_name(i: int) -> str:
    context = flowcore.context.current_task_run()
    assert context is not None
    return context.call.task_run_name


@task(task_run_name="named-{i}-of-{label}")
def named_by_template(i: int, label: str) -> str:
    context = flowcore.context.current_task_run()
    assert context is not None
    get_run_logger().info("templated %d", i)
    return context.call.task_run_name


@pytest.fixture()
def backend() -> Iterator[Backend]:
    backend = flowcore.get_backend("loky", max_workers=2)
    yield backend
    backend.shutdown()


def run(backend: Backend, body: Callable[[], Any]) -> Any:
    return flow(backend=backend, name="mapped-test")(body)()


def test_large_map_gives_mapped_futures_with_each_value(backend: Backend) -> None:
    holder: list[list[TaskFuture[int]]] = []

    def body() -> list[int]:
        futures = scaled.map(range(5000), 3, offset=unmapped(1))
        holder.append(futures)
        return [f.result() for f in futures]

    values = run(backend, body)
    (futures,) = holder
    assert values == [3 * i + 1 for i in range(5000)]
    assert all(isinstance(f, MappedFuture) for f in futures)
    assert len({f.task_run_id for f in futures}) == 5000
    state = futures[10].state
    assert state.name == "Completed" and state.result() == 31 and state.attempts == 1
    assert state.started_at is not None and state.finished_at is not None
    assert state.started_at <= state.finished_at


def test_mapped_keyword_columns(backend: Backend) -> None:
    def body() -> list[int]:
        return [f.result() for f in scaled.map(x=[1, 2, 3], factor=[10, 20, 30], offset=5)]

    assert run(backend, body) == [15, 45, 95]


def test_each_failure_stays_with_its_run(backend: Backend) -> None:
    def body() -> list[Any]:
        futures = fails_on_multiples_of_five.map(range(300))
        flowcore.wait(futures)
        return [(f.state.name, f.result(raise_on_failure=False)) for f in futures]

    outcomes = run(backend, body)
    for i, (name, value) in enumerate(outcomes):
        if i % 5 == 0:
            assert name == "Failed"
            assert isinstance(value, w.ConformanceError) and f"item {i} refused" in str(value)
        else:
            assert (name, value) == ("Completed", i)


def test_failed_run_raises_its_own_exception_with_the_worker_traceback(backend: Backend) -> None:
    def body() -> None:
        futures = fails_on_multiples_of_five.map(range(20))
        futures[5].result()

    with pytest.raises(w.ConformanceError, match="item 5 refused") as caught:
        run(backend, body)
    assert "fails_on_multiples_of_five" in str(caught.value.__cause__)


def test_run_names_inside_the_worker_match_the_parent(backend: Backend) -> None:
    def body() -> tuple[list[str], list[str]]:
        futures = current_run_name.map(range(500))
        return [f.result() for f in futures], [f.name for f in futures]

    inside, outside = run(backend, body)
    assert inside == outside
    assert len(set(outside)) == 500 and all(n.startswith("current_run_name-") for n in outside)


def test_mapped_run_names_are_decimal_and_follow_the_index(backend: Backend) -> None:
    """A map reserves a block of consecutive numbers per task in the flow run: run i of
    a map that follows one earlier run is ``name-(i + 1)``, in the parent and in the
    worker alike."""

    def body() -> tuple[list[str], list[str]]:
        first = current_run_name.submit(-1)
        futures = current_run_name.map(range(300))
        return [first.name] + [f.result() for f in futures], [f.name for f in futures]

    inside, outside = run(backend, body)
    expected = [f"current_run_name-{i}" for i in range(301)]
    assert inside == expected
    assert outside == expected[1:]


def test_a_task_run_name_template_keeps_the_column_path(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Names from a template are the same in the worker, the futures and the logs, and
    the map stays in columns (its futures are a MapBlock's views)."""

    def body() -> tuple[list[str], list[str], set[str]]:
        futures = named_by_template.map(range(40), label="x")
        flowcore.wait(futures)
        return [f.result() for f in futures], [f.name for f in futures], {type(f).__name__ for f in futures}

    with caplog.at_level(logging.INFO, logger="flowcore"):
        inside, outside, kinds = run(backend, body)
    expected = [f"named-{i}-of-x" for i in range(40)]
    assert inside == outside == expected
    assert kinds == {"MappedFuture"}
    logged = {r.getMessage(): getattr(r, "task_run_name", None) for r in caplog.records if r.getMessage().startswith("templated ")}
    assert logged == {f"templated {i}": expected[i] for i in range(40)}


def test_a_template_that_does_not_fit_the_arguments_fails_the_map_at_once(backend: Backend) -> None:
    bad = named_by_template.with_options(task_run_name="run-{label:d}")  # label is a str
    with pytest.raises(ValueError, match="format code"):
        run(backend, lambda: bad.map(range(40), label="x"))


@task(timeout_seconds=0.5)
def naps(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # Python code: the run's timer can stop it
        time.sleep(0.01)
    return seconds


@pytest.mark.parametrize("backend_name", ["threads", "loky"])
def test_a_map_with_a_timeout_stays_in_columns_and_times_out_run_by_run(backend_name: str) -> None:
    backend = flowcore.get_backend(backend_name, max_workers=2)
    try:
        def body() -> tuple[set[str], list[str]]:
            futures = naps.map([0.0, 0.0, 30.0, 0.0, 0.0, 30.0, 0.0])
            flowcore.wait(futures)
            return {type(f).__name__ for f in futures}, [f.state.name for f in futures]

        started = time.monotonic()
        kinds, names = run(backend, body)
    finally:
        backend.shutdown()
    assert kinds == {"MappedFuture"}
    assert names == ["Completed", "Completed", "TimedOut", "Completed", "Completed", "TimedOut", "Completed"]
    assert time.monotonic() - started < 20  # not the 30 s naps


def test_logs_of_each_run_are_replayed_with_its_name(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def body() -> list[str]:
        futures = logs_its_name.map(range(50))
        flowcore.wait(futures)
        return [f.name for f in futures]

    with caplog.at_level(logging.INFO, logger="flowcore"):
        names = run(backend, body)
    by_message = {
        r.getMessage(): getattr(r, "task_run_name", None)
        for r in caplog.records
        if r.getMessage().startswith("item ")
    }
    assert by_message == {f"item {i}": names[i] for i in range(50)}


def test_log_prints_and_retries_go_through_the_engine(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counters = [str(tmp_path / f"counter-{i}") for i in range(4)]
    retrying = w.fail_until.with_options(retries=2)

    def body() -> tuple[list[int], list[int], list[int]]:
        attempts = retrying.map(counters, 2)
        printed = prints.map(range(3))
        return (
            [f.result() for f in attempts],
            [f.state.attempts for f in attempts],
            [f.result() for f in printed],
        )

    with caplog.at_level(logging.INFO, logger="flowcore"):
        values, attempts, printed = run(backend, body)
    assert values == [2, 2, 2, 2] and attempts == [2, 2, 2, 2] and printed == [0, 1, 2]
    assert {r.getMessage() for r in caplog.records} >= {"printed 0", "printed 1", "printed 2"}


def test_a_worker_killed_in_the_column_loop_crashes_only_its_run(backend: Backend) -> None:
    holder: list[list[TaskFuture[int]]] = []

    def body() -> None:
        holder.append(die_at.map(range(400), 250))
        flowcore.wait(holder[0])

    run(backend, body)
    (futures,) = holder
    crashed = futures[250].state
    assert crashed.name == "Crashed" and "SIGKILL" in crashed.message
    assert isinstance(crashed.exception, CrashedError)
    assert [f.result() for i, f in enumerate(futures) if i != 250] == [
        i for i in range(400) if i != 250
    ]


def test_an_unpicklable_item_fails_alone_on_the_column_path(backend: Backend) -> None:
    items: list[Any] = [1, threading.Lock(), 3]

    def body() -> list[Any]:
        return [f.result(raise_on_failure=False) for f in w.identity.map(items)]

    first, second, third = run(backend, body)
    assert (first, third) == (1, 3)
    assert isinstance(second, SerializationError) and "argument 'x'" in str(second)


def test_mapped_futures_feed_downstream_tasks_and_waiters(backend: Backend) -> None:
    def body() -> tuple[int, list[int], int]:
        firsts = scaled.map(range(100), 2)
        total = w.total.submit(firsts)
        seconds = scaled.map(firsts, 1, offset=1)  # futures as elements: per-run path
        completed = sum(1 for _ in flowcore.as_completed(firsts))
        return total.result(), [f.result() for f in seconds], completed

    total, seconds, completed = run(backend, body)
    assert total == sum(2 * i for i in range(100))
    assert seconds == [2 * i + 1 for i in range(100)]
    assert completed == 100


def test_done_callbacks_run_once_per_run(backend: Backend) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def body() -> None:
        futures = scaled.map(range(200))
        for f in futures:
            f.add_done_callback(lambda done: _append(lock, seen, done.result()))
        flowcore.wait(futures)
        futures[0].add_done_callback(lambda done: _append(lock, seen, -1))  # already done

    run(backend, body)
    assert sorted(seen) == [-1, *range(200)]


def _append(lock: threading.Lock, seen: list[int], value: int) -> None:
    with lock:
        seen.append(value)


def test_flow_body_failure_cancels_the_runs_not_yet_sent(backend: Backend) -> None:
    holder: list[list[TaskFuture[float]]] = []

    def body() -> None:
        holder.append(w.sleep_for.map([0.05] * 200))
        raise RuntimeError("body gives up")

    state = flow(backend=backend)(body)(return_state=True)
    assert state.name == "Failed"
    names = {f.state.name for f in holder[0]}
    assert "Cancelled" in names
    assert names <= {"Cancelled", "Completed", "Crashed"}
    assert all(f.done() for f in holder[0])


def test_cancel_one_run_before_it_is_sent(backend: Backend) -> None:
    def body() -> tuple[bool, str, list[float]]:
        futures = w.sleep_for.map([0.02] * 100)
        cancelled = futures[-1].cancel()
        flowcore.wait(futures)
        return cancelled, futures[-1].state.name, [f.result() for f in futures[:-1]]

    cancelled, name, values = run(backend, body)
    assert cancelled and name == "Cancelled"
    assert values == [0.02] * 99


def test_unobserved_failed_run_is_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def body() -> None:
        fails_on_multiples_of_five.map([1, 2, 5])

    with caplog.at_level(logging.ERROR, logger="flowcore"):
        run(backend, body)
    reported = [r.getMessage() for r in caplog.records if "nothing retrieved" in r.getMessage()]
    assert len(reported) == 1 and "fails_on_multiples_of_five-" in reported[0]


def test_journal_range_names_the_run_at_the_current_position(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from flowcore.backends._supervision import journal\n"
        "journal.open_journal(sys.argv[1])\n"
        "journal.record_range('abc123-ff')\n"
        "journal.position_slots()[journal.POSITION_SLOT] = 3\n"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    from flowcore.backends._supervision import journal

    (entry,) = journal.read_journal_entries(tmp_path).values()
    assert entry[0] == "abc123-102"  # 0xff + 3
    assert entry[1] > 0


def test_a_journal_entry_never_kills_a_process_that_reused_its_pid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A dead worker's journal still names its run; if the pid now belongs to another
    process (here: this one, with another start time), it must not be killed."""
    import time

    from flowcore.backends._supervision import journal

    monkeypatch.setattr(journal, "_directory", str(tmp_path))
    text = f"abc123-1 {time.time():.3f}".encode().ljust(120)
    stale_start = process_start(os.getpid()) + 12345
    (tmp_path / str(os.getpid())).write_bytes(text + bytes(8) + stale_start.to_bytes(8, "little"))
    assert journal.read_journal_entries(tmp_path)[os.getpid()][0] == "abc123-1"
    assert journal.kill_workers_running({"abc123-1"}) == 0  # and this process is still here


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_a_cached_task_maps_in_columns_and_hits_its_cache(backend: str, tmp_path: Path) -> None:
    """A cache policy no longer pushes a map off the column path (issue 11, point 5):
    the first map misses and runs every body, the second hits every entry."""
    from flowcore.caching import INPUTS

    counter = str(tmp_path / "bodies")
    cached = w.counted_square.with_options(cache_policy=INPUTS, cache_storage=str(tmp_path / "cache"))

    @flow(backend=backend)
    def body() -> tuple[list[int], list[str], bool]:
        futures = cached.map(unmapped(counter), range(30))
        columns = all(isinstance(f, MappedFuture) for f in futures)
        return [f.result() for f in futures], sorted({f.state.name for f in futures}), columns

    first = body()
    assert first == ([i * i for i in range(30)], ["Completed"], True)
    assert w.read_count(counter) == 30
    second = body()
    assert second == ([i * i for i in range(30)], ["Cached"], True)
    assert w.read_count(counter) == 30  # no body ran again


@pytest.mark.parametrize("backend", ["threads", "loky", "sequential"])
def test_hooks_of_a_mapped_task_fire_once_per_run_in_columns(backend: str) -> None:
    """Hooks no longer push a map off the column path (issue 11, point 5): each run's
    hook fires once, in this process, before its future is done."""
    seen: list[tuple[str, str, int]] = []
    seen_before_done: list[bool] = []
    lock = threading.Lock()

    def record(task: Any, call: Any, state: Any) -> None:
        with lock:
            seen.append((call.task_run_name, state.name, os.getpid()))

    hooked = w.fail_on_three.with_options(on_completion=[record], on_failure=[record])

    @flow(backend=backend)
    def body() -> tuple[bool, list[str]]:
        futures = hooked.map(range(12))
        columns = all(isinstance(f, MappedFuture) for f in futures)
        names = []
        for f in futures:
            f.wait()
            with lock:
                seen_before_done.append(any(name == f.name for name, _, _ in seen))
            names.append(f.state.name)
        return columns, names

    columns, names = body()
    assert columns
    assert names == ["Failed" if i == 3 else "Completed" for i in range(12)]
    assert len(seen) == 12 and len({name for name, _, _ in seen}) == 12
    assert {pid for _, _, pid in seen} == {os.getpid()}
    assert sorted(state for _, state, _ in seen) == ["Completed"] * 11 + ["Failed"]
    assert all(seen_before_done)


@task
def counted_item(i: int, directory: str, culprit: int) -> Any:
    """Counts its executions in a file per item; item ``culprit`` returns a lock."""
    with open(os.path.join(directory, str(i)), "a") as counter:
        counter.write("x")
    return threading.Lock() if i == culprit else i


def test_an_unpicklable_result_fails_alone_and_no_finished_run_runs_again(tmp_path: Path) -> None:
    """Issue 12.22: one run returning a value that cannot be pickled fails alone; the
    other runs of its batch are not run a second time (their side effects happen once)."""
    backend = flowcore.get_backend("loky", max_workers=2)
    holder: list[list[TaskFuture[Any]]] = []

    def body() -> None:
        holder.append(counted_item.map(range(40), str(tmp_path), 23))
        flowcore.wait(holder[0])

    try:
        run(backend, body)
    finally:
        backend.shutdown()
    (futures,) = holder
    runs = {i: len((tmp_path / str(i)).read_text()) for i in range(40)}
    assert {i: n for i, n in runs.items() if n != 1} == {}, "runs executed more than once"
    culprit = futures[23].state
    assert culprit.name == "Failed" and isinstance(culprit.exception, SerializationError)
    assert "counted_item-23" in culprit.message and "_thread.lock" in culprit.message
    assert [f.result() for i, f in enumerate(futures) if i != 23] == [i for i in range(40) if i != 23]
