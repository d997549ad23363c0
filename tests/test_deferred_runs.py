"""Submitted runs reported late and in bulk (flowcore.deferred_runs): when every
run-event observer accepts it, each run's events still arrive once and in order, the
flow run brackets them, and the history records every run as on the plain path."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _running import RunningWatch

import flowcore
from flowcore import deferred_runs, flow, task
from flowcore.caching import INPUTS
from flowcore.events import EventKind, FlowRunEvent, RunColumns, RunEvent, TaskRunEvent
from flowcore.history.recorder import recorder
from flowcore.hookspecs import hookimpl
from flowcore.registry import get_registry


class Recording:
    """An observer that accepts deferred reports and keeps every event, made as read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[RunEvent] = []

    @hookimpl
    @deferred_runs.accepts_deferred_runs
    def flowcore_run_events(self, events: Sequence[RunEvent]) -> None:
        made = list(events)
        with self.lock:
            self.events.extend(made)

    def by_run(self, flow_run_id: str | None = None) -> dict[str, list[TaskRunEvent]]:
        """Each task run's events, in order (``flow_run_id``: only that flow run's; runs
        outside any flow run that earlier tests submitted may be reported meanwhile)."""
        runs: dict[str, list[TaskRunEvent]] = {}
        for event in self.events:
            if isinstance(event, TaskRunEvent) and (flow_run_id is None or event.flow_run_id == flow_run_id):
                runs.setdefault(event.task_run_id, []).append(event)
        return runs


class Plain:
    """An observer that does not accept deferred reports."""

    @hookimpl
    def flowcore_run_events(self, events: Sequence[RunEvent]) -> None:
        pass


@pytest.fixture
def recording(home: Path) -> Iterator[Recording]:
    registry = get_registry()
    observer = Recording()
    registry.register(observer, name="deferred-recording")
    try:
        if registry.pm.get_plugin("flowcore.plugins.history") is None or not hasattr(
            registry.pm.get_plugin("flowcore.plugins.history"), "flowcore_run_events"
        ):
            pytest.skip("the history plugin does not observe runs here")
        assert registry.defers_runs
        yield observer
    finally:
        registry.unregister(observer)


def _history_rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from the history database in ``home``."""
    connection = sqlite3.connect(home / "history.db")
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_only_observers_that_accept_it_get_deferred_reports(home: Path) -> None:
    registry = get_registry()
    history_observes = hasattr(registry.pm.get_plugin("flowcore.plugins.history"), "flowcore_run_events")
    assert registry.defers_runs == history_observes
    plain = Plain()
    registry.register(plain, name="plain-observer")
    try:
        assert not registry.defers_runs and registry.observes_events
    finally:
        registry.unregister(plain)
    assert registry.defers_runs == history_observes


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def fail(x: int) -> int:
    raise ValueError(f"failed on {x}")


@task(task_run_name="named-{x}")
def named(x: int) -> int:
    return x


_flaky_attempts: dict[int, int] = {}


@task(retries=1)
def flaky(x: int) -> int:
    _flaky_attempts[x] = _flaky_attempts.get(x, 0) + 1
    if _flaky_attempts[x] == 1:
        raise RuntimeError("first attempt fails")
    return x


def test_every_run_reports_its_events_once_in_order_inside_its_flow_run(recording: Recording) -> None:
    backend = flowcore.get_backend("threads", max_workers=2)

    @flow(backend=backend)
    def mixed() -> dict[str, list[str]]:
        plain = [add.submit(i, 1) for i in range(50)]
        chained = add.submit(plain[0], 1)  # waits on an upstream
        bad = fail.submit(1)
        skipped = add.submit(bad, 1)  # NotRun: never starts
        custom = named.submit(3)
        retried = flaky.submit(1)
        flowcore.wait([*plain, chained, bad, skipped, custom, retried])
        assert [f.result() for f in plain] == list(range(1, 51)) and chained.result() == 2
        return {
            "ran": [f.task_run_id for f in [*plain, chained, bad, custom, retried]],
            "not_run": [skipped.task_run_id],
        }

    try:
        ids = mixed()
    finally:
        backend.shutdown()
    events = recording.events
    flow_events = [e for e in events if isinstance(e, FlowRunEvent)]
    assert [e.kind for e in flow_events] == [EventKind.STARTED, EventKind.FINISHED]
    by_run = recording.by_run(flow_events[0].run.run_id)
    assert len(by_run) == 55
    positions = {id(e): i for i, e in enumerate(events)}
    started_at, finished_at = positions[id(flow_events[0])], positions[id(flow_events[1])]
    for run_id in ids["ran"]:
        stream = by_run[run_id]
        assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED], stream
        submitted, started, finished = stream
        assert {e.backend for e in stream} == {"threads"}
        assert finished.worker is not None and finished.worker.pid == os.getpid() and started.worker == finished.worker
        assert submitted.timestamp <= started.timestamp <= finished.timestamp
        assert started_at < positions[id(submitted)] and positions[id(finished)] < finished_at
    (not_run,) = ids["not_run"]
    assert [e.kind for e in by_run[not_run]] == [EventKind.SUBMITTED, EventKind.FINISHED]
    finals = sorted(s[-1].state.name for s in by_run.values() if s[-1].state is not None)
    assert finals.count("Completed") == 53 and finals.count("Failed") == 1 and finals.count("NotRun") == 1
    retried = by_run[ids["ran"][-1]][-1].state
    assert retried is not None and retried.attempts == 2


def test_a_run_that_runs_long_is_announced_at_a_flush_before_it_ends(recording: Recording, home: Path) -> None:
    go = threading.Event()
    running = threading.Event()

    @task
    def slow() -> int:
        running.set()
        assert go.wait(30)
        return 7

    backend = flowcore.get_backend("threads", max_workers=2)
    seen_before_end: list[list[EventKind]] = []

    @flow(backend=backend)
    def waiting() -> int:
        future = slow.submit()
        assert running.wait(30)
        deferred_runs.flush()  # what the history writer does every half second
        assert recorder.flush(10)  # written as a pending row now (a flush releases held runs)
        seen_before_end.append([e.kind for e in recording.by_run()[future.task_run_id]])
        go.set()
        return future.result()

    try:
        assert waiting() == 7
    finally:
        backend.shutdown()
    assert seen_before_end == [[EventKind.SUBMITTED, EventKind.STARTED]]  # its body had started
    stream = next(s for s in recording.by_run().values() if s[0].task_name == "slow")
    assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
    rows = _history_rows(
        home,
        "SELECT state, attempts, submitted_time IS NOT NULL, start_time IS NOT NULL, end_time IS NOT NULL, "
        "worker_pid FROM task_runs_all WHERE task = 'slow'"
    )
    assert rows == [("Completed", 1, 1, 1, 1, os.getpid())]  # the pending row, updated: one row


def test_the_history_records_deferred_runs_like_any_others(home: Path) -> None:
    registry = get_registry()
    if not registry.defers_runs:
        pytest.skip("the history plugin does not observe runs here")
    backend = flowcore.get_backend("threads", max_workers=2)

    @flow(backend=backend)
    def many() -> int:
        futures = [add.submit(i, 0) for i in range(300)]
        bad = fail.submit(2)
        bad.wait()
        return sum(f.result() for f in futures)

    try:
        assert many() == sum(range(300))
    finally:
        backend.shutdown()
    rows = _history_rows(
        home,
        "SELECT state, count(*), count(DISTINCT id), count(DISTINCT name), min(attempts), max(attempts), "
        "count(submitted_time), count(start_time), count(end_time), count(worker_thread), "
        "sum(submitted_time <= start_time AND start_time <= end_time) "
        "FROM task_runs_all GROUP BY state ORDER BY state"
    )
    assert rows == [("Completed", 300, 300, 300, 1, 1, 300, 300, 300, 300, 300), ("Failed", 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)]


def test_runs_buffered_by_pool_threads_that_ended_are_still_reported(recording: Recording) -> None:
    @flow  # the default backend: a pool of its own, shut down before the flow run ends
    def short() -> list[int]:
        futures = [add.submit(i, 1) for i in range(20)]
        bad = fail.submit(3)
        bad.wait()
        return [f.result() for f in futures]

    for _ in range(3):
        assert short() == list(range(1, 21))
    streams = recording.by_run()
    assert len(streams) == 63
    for stream in streams.values():
        assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
    assert sum(1 for s in streams.values() if s[-1].state is not None and s[-1].state.name == "Failed") == 3


class Batches:
    """An observer that accepts deferred reports and keeps each report's columns (a
    RunColumns batch) or its events as a list."""

    def __init__(self) -> None:
        self.reports: list[RunColumns | list[RunEvent]] = []

    @hookimpl
    @deferred_runs.accepts_deferred_runs
    def flowcore_run_events(self, events: Sequence[RunEvent]) -> None:
        columns_of = getattr(events, "columns", None)
        columns = columns_of() if callable(columns_of) else None
        self.reports.append(columns if columns is not None else list(events))


def test_cache_hits_of_direct_calls_are_reported_in_bulk_and_recorded_as_hits(home: Path, tmp_path: Path) -> None:
    registry = get_registry()
    if not registry.defers_runs:
        pytest.skip("the history plugin does not observe runs here")
    cached = task(_square, name="square", cache_policy=INPUTS, cache_storage=str(tmp_path / "cache"))

    @flow
    def hits() -> list[int]:
        return [cached(i % 3) for i in range(30)]  # 3 misses, then 27 hits

    observer = Batches()
    registry.register(observer, name="deferred-batches")
    try:
        assert hits() == [(i % 3) ** 2 for i in range(30)]
    finally:
        registry.unregister(observer)
    columns = [r for r in observer.reports if isinstance(r, RunColumns)]
    singles = [e for r in observer.reports if isinstance(r, list) for e in r if isinstance(e, TaskRunEvent)]
    assert singles == []  # no run reported on its own: misses and hits in the same columns
    # One batch, or more when a writer drain (every 0.5 s) took the buffer mid-run.
    assert columns and sum(len(batch) for batch in columns) == 30
    hits: list[int] = []
    offset = 0
    for batch in columns:
        assert batch.kinds == (EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED)
        # every run's state goes beside the columns: the misses carry the key they stored
        assert sorted(batch.states) == list(range(len(batch)))
        assert all(s.cache_key for s in batch.states.values())
        hits += [offset + index for index, s in batch.states.items() if s.name == "Cached"]
        offset += len(batch)
    assert hits == list(range(3, 30))
    rows = _history_rows(
        home,
        "SELECT state, cache_hit, count(*), count(DISTINCT id), count(DISTINCT name), min(attempts), "
        "sum(message LIKE 'cache hit %'), sum(submitted_time <= start_time AND start_time <= end_time), "
        "count(DISTINCT cache_key) FROM task_runs_all WHERE task = 'square' GROUP BY state ORDER BY state"
    )
    assert rows == [("Cached", 1, 27, 27, 27, 0, 27, 27, 3), ("Completed", 0, 3, 3, 3, 1, 0, 3, 3)]


def _square(x: int) -> int:
    return x * x


def test_runs_of_a_use_backend_block_are_deferred_and_flushed_by_the_writer(
    recording: Recording, home: Path
) -> None:
    """Outside any flow run, submitted runs are deferred too: nothing is reported as they
    run, and the history writer (woken by the first deferred run) reports and writes
    them within its next drains, each run's events once and in order."""

    @flow
    def first() -> int:  # the history's settings (this test's home) are read as a flow run starts
        return 1

    assert first() == 1
    with flowcore.use_backend("threads", max_workers=2):
        futures = [add.submit(i, 1) for i in range(40)]
        bad = fail.submit(4)
        assert [f.result() for f in futures] == list(range(1, 41))
        bad.wait()
    ids = {f.task_run_id for f in [*futures, bad]}
    deadline = time.monotonic() + 20
    while deferred_runs.outstanding() and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer drains every half second while runs are deferred
    assert not deferred_runs.outstanding()
    assert recorder.flush(10)
    streams = {run_id: s for run_id, s in recording.by_run().items() if run_id in ids}
    assert len(streams) == 41
    for stream in streams.values():
        assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
        assert {e.flow_run_id for e in stream} == {None} and {e.backend for e in stream} == {"threads"}
    assert streams[bad.task_run_id][-1].state is not None and streams[bad.task_run_id][-1].state.name == "Failed"
    rows = _history_rows(
        home,
        "SELECT state, count(*), count(DISTINCT id), count(start_time), count(end_time), "
        "count(flow_run_id) FROM task_runs_all WHERE task IN ('add', 'fail') GROUP BY state ORDER BY state"
    )
    assert rows == [("Completed", 40, 40, 40, 40, 0), ("Failed", 1, 1, 1, 1, 0)]


_release = threading.Event()


@task
def waits_for_release(x: int) -> int:
    assert _release.wait(30), "never released"
    return x


@pytest.mark.parametrize("how", ["submit", "direct"])
def test_a_long_run_is_reported_running_before_it_ends(recording: Recording, home: Path, how: str) -> None:
    """A deferred run that runs long (submitted to threads, or called directly through
    the engine) is reported SUBMITTED and then, its body having started, STARTED at the
    history writer's next drains: the history shows it Running, with its start time,
    while it runs; its end reports FINISHED only, each event once and in order."""
    if not get_registry().defers_runs:
        pytest.skip("the history plugin does not observe runs here")
    _release.clear()
    watcher = RunningWatch(home / "history.db", "waits_for_release", "id, state, start_time", _release.set)

    @flow(backend="threads")
    def long_run() -> int:
        watcher.start()
        if how == "submit":
            return waits_for_release.submit(7).result()
        return waits_for_release(7, return_state=True).result()  # the engine's path: deferred

    try:
        assert long_run() == 7
    finally:
        _release.set()
        watcher.join()
    assert len(watcher.rows) == 1, "never shown Running while it ran"
    run_id, _, start = watcher.rows[0]
    stream = recording.by_run()[run_id]
    assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
    assert stream[1].timestamp == start and stream[2].state is not None and stream[2].state.is_completed()
    # reported running on the worker (thread) that then reports its end
    assert stream[1].worker is not None and stream[1].worker == stream[2].worker
    assert _history_rows(home, f"SELECT state, start_time, attempts FROM task_runs_all WHERE id = '{run_id}'") == [
        ("Completed", start, 1)
    ]


_direct_release = threading.Event()


@task
def direct_waits(x: int) -> str:
    assert _direct_release.wait(30), "never released"
    context = flowcore.get_run_context()
    assert context.task_run is not None
    if x < 0:
        raise ValueError("asked to fail")
    return context.task_run.id  # asked for after it was reported running


@pytest.mark.parametrize("fails", [False, True])
def test_a_long_direct_call_is_reported_running_before_it_ends(recording: Recording, home: Path, fails: bool) -> None:
    """A plain task called directly in a flow body (the batched path, which reports a
    run when it ends) that runs long is reported SUBMITTED and STARTED by the history
    writer: the history shows it Running, with its start and worker, while it runs;
    its end (completed or failed) reports FINISHED only, under the same id, which is
    also the id its body sees."""
    if not get_registry().batches_direct_runs:
        pytest.skip("the history plugin does not observe runs here")
    _direct_release.clear()
    watcher = RunningWatch(
        home / "history.db", "direct_waits", "id, state, start_time, worker_thread", _direct_release.set
    )

    @flow
    def calls_long() -> str:
        watcher.start()
        if fails:
            with pytest.raises(ValueError, match="asked to fail"):
                direct_waits(-1)
            return ""
        return direct_waits(1)

    try:
        seen_id = calls_long()
    finally:
        _direct_release.set()
        watcher.join()
    assert len(watcher.rows) == 1, "never shown Running while it ran"
    run_id, _, start, thread = watcher.rows[0]
    assert thread == "MainThread"
    if not fails:
        assert seen_id == run_id
    stream = recording.by_run()[run_id]
    assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
    final = stream[2].state
    assert final is not None and final.name == ("Failed" if fails else "Completed")
    assert _history_rows(home, "SELECT id, state, start_time FROM task_runs_all WHERE task = 'direct_waits'") == [
        (run_id, "Failed" if fails else "Completed", start)
    ]


@task
async def awaited_waits(x: int, release: Any, ask_first: bool) -> str:
    """Waits (suspended: on no thread's stack) until released; asks for its run id
    before or after it is reported running; fails for x < 0."""
    early = flowcore.get_run_context().task_run if ask_first else None
    await release.wait()
    context = flowcore.get_run_context().task_run
    assert context is not None and (early is None or early.id == context.id)
    if x < 0:
        raise ValueError("asked to fail")
    return context.id


@pytest.mark.parametrize(
    ("gathered", "ask_first", "fails"),
    [(False, False, False), (True, False, False), (True, True, False), (False, True, True)],
    ids=["inline", "gathered", "gathered-asked-first", "inline-asked-first-fails"],
)
def test_a_long_awaited_run_is_reported_running_before_it_ends(
    recording: Recording, home: Path, gathered: bool, ask_first: bool, fails: bool
) -> None:
    """An async task awaited in an async flow (the short path: a suspended coroutine,
    on no stack) that runs long is reported SUBMITTED and STARTED by the history
    writer, found through the asyncio task that awaits it: the history shows it Running,
    with its start and the loop's thread, while it runs; its end reports FINISHED only,
    under the same id, which is the id its body sees, whether it asked before the
    report or after."""
    import asyncio

    if not get_registry().batches_direct_runs:
        pytest.skip("the history plugin does not observe runs here")
    released: dict[str, Any] = {}

    def release() -> None:
        loop, event = released["loop"], released["event"]
        loop.call_soon_threadsafe(event.set)

    watcher = RunningWatch(
        home / "history.db", "awaited_waits", "id, state, start_time, worker_thread, attempts", release
    )

    @flow
    async def awaits_long() -> list[str]:
        released["loop"], released["event"] = asyncio.get_running_loop(), asyncio.Event()
        watcher.start()
        x = -1 if fails else 1
        if fails:
            with pytest.raises(ValueError, match="asked to fail"):
                await awaited_waits(x, released["event"], ask_first)
            return []
        if gathered:
            return list(await asyncio.gather(
                awaited_waits(x, released["event"], ask_first), asyncio.sleep(0, "other")
            ))[:1]
        return [await awaited_waits(x, released["event"], ask_first)]

    try:
        seen = awaits_long()
    finally:
        watcher.join()
    assert len(watcher.rows) == 1, "never shown Running while it ran"
    run_id, _, start, thread, attempts = watcher.rows[0]
    assert thread == "MainThread"  # the flow's loop runs in the thread that called it
    assert attempts == 1  # running its first attempt
    if not fails:
        assert seen == [run_id]
    stream = recording.by_run()[run_id]
    assert [e.kind for e in stream] == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED]
    final = stream[2].state
    assert final is not None and final.name == ("Failed" if fails else "Completed")
    assert _history_rows(home, "SELECT id, state, start_time FROM task_runs_all WHERE task = 'awaited_waits'") == [
        (run_id, "Failed" if fails else "Completed", start)
    ]
    from flowcore import direct_runs

    assert direct_runs._materialized == {}  # dropped when the run ended
    assert not any(key[1] == id(awaited_waits) for key in direct_runs._announced)  # its end took its number


@task
async def cancelled_waiting(seen: dict[str, str], ask_first: bool) -> None:
    """Waits until cancelled; asks for its run id before it waits or in its ``finally``."""
    import asyncio

    if ask_first:
        seen["id"] = flowcore.get_run_context().task_run.id  # type: ignore[union-attr]
    try:
        await asyncio.Event().wait()
    finally:
        if not ask_first:
            seen["id"] = flowcore.get_run_context().task_run.id  # type: ignore[union-attr]


@task(retries=1)
async def cancelled_waiting_engine(seen: dict[str, str], ask_first: bool) -> None:
    """The same on the engine's path (a task with retries)."""
    await cancelled_waiting.fn(seen, ask_first)


@pytest.mark.parametrize(
    ("task_name", "ask_first"),
    [("cancelled_waiting", False), ("cancelled_waiting", True), ("cancelled_waiting_engine", False)],
    ids=["short-path", "short-path-asked-first", "engine"],
)
def test_a_long_awaited_run_cancelled_while_it_runs_ends_cancelled(
    recording: Recording, home: Path, task_name: str, ask_first: bool
) -> None:
    """An awaited run shown Running that is cancelled (``task.cancel()``,
    ``asyncio.wait_for``'s timeout) ends Cancelled in the history, under the id it was
    shown with and its body saw; nothing is left of it (it read Running for ever)."""
    import asyncio

    from flowcore import direct_runs

    awaited = {"cancelled_waiting": cancelled_waiting, "cancelled_waiting_engine": cancelled_waiting_engine}[task_name]
    released: dict[str, Any] = {}

    def release() -> None:
        released["loop"].call_soon_threadsafe(released["running"].cancel)

    watcher = RunningWatch(home / "history.db", task_name, "id, state", release)
    seen: dict[str, str] = {}

    @flow
    async def cancels_it() -> str:
        released["loop"] = asyncio.get_running_loop()
        released["running"] = asyncio.ensure_future(awaited(seen, ask_first))
        watcher.start()
        with pytest.raises(asyncio.CancelledError):
            await released["running"]
        return "went on"

    try:
        assert cancels_it() == "went on"
    finally:
        watcher.join()
    assert len(watcher.rows) == 1, "never shown Running while it ran"
    run_id = watcher.rows[0][0]
    assert seen["id"] == run_id
    stream = recording.by_run()[run_id]
    assert [e.kind for e in stream][-1] == EventKind.FINISHED
    final = stream[-1].state
    assert final is not None and final.name == "Cancelled"
    assert _history_rows(home, f"SELECT id, state FROM task_runs_all WHERE task = '{task_name}'") == [
        (run_id, "Cancelled")
    ]
    assert direct_runs._materialized == {}
    assert not any(key[1] == id(awaited) for key in direct_runs._announced)


_interrupt_release = threading.Event()


@task
def interrupted_after_release() -> None:
    assert _interrupt_release.wait(30), "never released"
    raise KeyboardInterrupt


def test_a_direct_call_shown_running_then_interrupted_does_not_read_running(home: Path) -> None:
    """A long direct call reported running, then interrupted (Ctrl-C in its body), ends
    the flow run Crashed; the task run, which the history shows Running, is recorded
    Crashed too, not left Running for as long as the process lives (the reader's
    liveness check only applies once the process is gone)."""
    if not get_registry().batches_direct_runs:
        pytest.skip("the history plugin does not observe runs here")
    _interrupt_release.clear()
    watcher = RunningWatch(home / "history.db", "interrupted_after_release", "id, state", _interrupt_release.set)

    @flow
    def interrupted() -> None:
        watcher.start()
        interrupted_after_release()

    try:
        with pytest.raises(KeyboardInterrupt):
            interrupted()
    finally:
        _interrupt_release.set()
        watcher.join()
    assert len(watcher.rows) == 1, "never shown Running while it ran"
    run_id = watcher.rows[0][0]
    assert recorder.flush(10)
    rows = _history_rows(home, "SELECT id, state FROM task_runs_all WHERE task = 'interrupted_after_release'")
    assert rows == [(run_id, "Crashed")]
    flows = _history_rows(home, "SELECT state FROM flow_runs WHERE flow = 'interrupted'")
    assert flows == [("Crashed",)]
