"""Runs stored as blocks: batched direct calls (flowcore.direct_runs) and the
``task_run_blocks`` rows they and a map's batches become, read back one run at a time
by the store, by the ``task_runs_all`` view, and removed by retention. Real SQLite
files under a per-test FLOWCORE_HOME."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flowcore import direct_runs, flow, task
from flowcore.events import EventKind, FlowRunEvent, TaskRunEvent
from flowcore.history.records import FlowRunWrite, HistoryBatch, PendingMapWrite, encode_block
from flowcore.history.sqlite import CHECKPOINT_AFTER_BYTES, SQLiteStore
from flowcore.hookspecs import hookimpl
from flowcore.registry import get_registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(directory))
    for name in ("FLOWCORE_HISTORY", "FLOWCORE_HISTORY_RETENTION", "FLOWCORE_HISTORY_STORE"):
        monkeypatch.delenv(name, raising=False)
    return directory


def rows(db: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


@task
def first(x: int) -> int:
    return x + 1


@task
def second(x: int) -> int:
    return x * 2


@task
def breaks(x: int) -> int:
    raise ValueError(f"broken {x}")


class Recorder:
    """Keeps every event it is given, in order, with the thread that gave it."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    @hookimpl
    def flowcore_run_events(self, events: Any) -> None:
        with self.lock:
            self.events.extend(events)


def test_interleaved_direct_calls_are_stored_in_blocks_and_read_back_one_by_one(home: Path) -> None:
    @flow
    def interleaved() -> int:
        total = 0
        for i in range(50):
            total += first(i) + second(i)
        try:
            breaks(7)
        except ValueError:
            total += 1
        return total

    expected = sum(i + 1 + 2 * i for i in range(50)) + 1
    assert interleaved() == expected
    db = home / "history.db"
    store = SQLiteStore(db)
    try:
        (run,) = store.list_runs(flow="interleaved")
        assert run.task_counts == {"Completed": 100, "Failed": 1}
        detail = store.get_run(run.id)
    finally:
        store.close()
    completed = [t for t in detail.task_runs if t.state == "Completed"]
    assert sorted(t.name for t in completed if t.task == "first") == sorted(f"first-{i}" for i in range(50))
    assert sorted(t.name for t in completed if t.task == "second") == sorted(f"second-{i}" for i in range(50))
    assert len({t.id for t in detail.task_runs}) == 101
    assert all(t.attempts == 1 and t.worker is not None and t.worker.thread == "MainThread" for t in completed)
    assert all(t.submitted is not None and t.start is not None and t.end is not None for t in completed)
    assert all(t.submitted <= t.start <= t.end for t in completed)  # type: ignore[operator]
    by_name = {t.name: t for t in completed}
    for i in range(49):  # in the order they were called
        assert by_name[f"first-{i}"].end <= by_name[f"second-{i}"].start <= by_name[f"first-{i + 1}"].start  # type: ignore[operator]
    (failed,) = [t for t in detail.task_runs if t.state == "Failed"]
    assert failed.name == "breaks-0" and failed.error_type == "ValueError" and "broken 7" in (failed.traceback or "")
    # a few rows hold the 100 runs; the failed run is a row of its own
    assert rows(db, "SELECT task, count FROM task_run_blocks ORDER BY task") == [("first", 50), ("second", 50)]
    assert rows(db, "SELECT name FROM task_runs") == [("breaks-0",)]
    # the view gives plain sqlite3 users the same runs, one row each
    view = rows(db, "SELECT id, name, state, attempts, submitted_time, start_time, end_time, worker_thread "
                    "FROM task_runs_all WHERE flow_run_id = ?", (run.id,))
    assert len(view) == 101
    from_store = {t.id: t for t in detail.task_runs}
    for run_id, name, state, attempts, submitted, start, end, thread in view:
        record = from_store[run_id]
        assert (name, state, attempts) == (record.name, record.state, record.attempts)
        assert thread == (record.worker.thread if record.worker else None)
        for seen, kept in ((submitted, record.submitted), (start, record.start), (end, record.end)):
            assert seen == pytest.approx(kept, abs=2e-6)


def test_batched_direct_calls_report_every_step_of_every_run_before_the_flow_ends(home: Path) -> None:
    recorder = Recorder()
    registry = get_registry()
    registry.register(recorder, name="direct-run-recorder")
    try:
        assert registry.batches_direct_runs  # only run-event observers: the batched path

        @flow
        def many() -> int:
            return sum(first(i) for i in range(direct_runs.MAX_RUNS + 10))

        assert many() == sum(range(1, direct_runs.MAX_RUNS + 11))
    finally:
        registry.unregister(recorder)
    tasks = [e for e in recorder.events if isinstance(e, TaskRunEvent)]
    flows = [i for i, e in enumerate(recorder.events) if isinstance(e, FlowRunEvent)]
    assert len(tasks) == 3 * (direct_runs.MAX_RUNS + 10)
    steps: dict[str, list[EventKind]] = {}
    for event in tasks:
        steps.setdefault(event.task_run_id, []).append(event.kind)
    assert set(map(tuple, steps.values())) == {(EventKind.SUBMITTED, EventKind.STARTED, EventKind.FINISHED)}
    finished = [e for e in tasks if e.kind is EventKind.FINISHED]
    assert all(e.state is not None and e.state.name == "Completed" and e.state.attempts == 1 for e in finished)
    assert sorted(e.task_run_name for e in finished) == sorted(f"first-{i}" for i in range(direct_runs.MAX_RUNS + 10))
    last_task = max(i for i, e in enumerate(recorder.events) if isinstance(e, TaskRunEvent))
    assert last_task < flows[-1]  # the flow's FINISHED comes after its runs' events


def test_a_slow_loop_of_direct_calls_reports_while_the_flow_runs(home: Path) -> None:
    recorder = Recorder()
    registry = get_registry()
    registry.register(recorder, name="direct-run-recorder")
    seen_during: list[int] = []
    try:
        @flow
        def slow() -> None:
            for i in range(4):
                first(i)
                time.sleep(direct_runs.MAX_AGE_S + 0.05)
            with recorder.lock:
                seen_during.append(sum(1 for e in recorder.events if isinstance(e, TaskRunEvent)))

        slow()
    finally:
        registry.unregister(recorder)
    assert seen_during[0] >= 3 * 3  # runs 0-2 were reported by later calls' age check


def test_a_direct_call_outside_a_flow_is_recorded_on_its_own(tmp_path: Path) -> None:
    script = tmp_path / "outside.py"
    script.write_text(textwrap.dedent("""
        from flowcore import task

        @task
        def alone(x):
            return x + 1

        print(alone(41))
    """))
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "h")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr
    assert rows(tmp_path / "h" / "history.db", "SELECT name, state, flow_run_id FROM task_runs_all") == [
        ("alone-0", "Completed", None)
    ]


def test_retention_removes_blocks_and_pending_maps_with_their_flow_run(tmp_path: Path) -> None:
    old = time.time() - 90 * 86400
    store = SQLiteStore(tmp_path / "history.db")
    try:
        block = encode_block(
            flow_run_id="0abc", task="t", id_prefix="p", backend=None, worker=None, tags=None,
            numbers=[1, 2, 5], names=[0, 1, 2], submitted=[old, old, old + 1], starts=[old, old + 1, old + 2],
            ends=[old + 0.5, old + 1.5, old + 2.5],
        )
        assert [r.id for r in block.expand()] == ["p-1", "p-2", "p-5"]
        assert [r.name for r in block.expand()] == ["t-0", "t-1", "t-2"]
        pending = PendingMapWrite("p-10", "0abc", "t", "p", 16, 3, 4, 0, old, "loky", None)
        store.write_events(HistoryBatch(
            flow_runs=[FlowRunWrite("0abc", "f", "f-0abc", "Completed", "COMPLETED", start=old, end=old + 3)],
            task_run_blocks=[block], pending_maps=[pending],
        ))
        detail = store.get_run("0abc")
        assert sorted(t.name for t in detail.task_runs) == ["t-0", "t-1", "t-2", "t-3", "t-4", "t-5", "t-6"]
        assert detail.run.task_counts == {"Completed": 3, "Pending": 4}
        assert store.delete_older_than(time.time() - 30 * 86400) == 1
        for table in ("flow_runs", "task_runs", "task_run_blocks", "pending_maps"):
            assert rows(tmp_path / "history.db", f"SELECT count(*) FROM {table}") == [(0,)], table
    finally:
        store.close()


@task(task_run_name="day-{x}")
def by_day(x: int) -> int:
    return x


def test_a_map_named_by_a_template_is_recorded_with_those_names(home: Path) -> None:
    @flow(backend="loky")
    def templated() -> list[int]:
        return [f.result() for f in by_day.map(range(30))]

    assert templated() == list(range(30))
    store = SQLiteStore(home / "history.db")
    try:
        (run,) = store.list_runs(flow="templated")
        detail = store.get_run(run.id)
    finally:
        store.close()
    assert sorted(t.name for t in detail.task_runs) == sorted(f"day-{i}" for i in range(30))
    assert {t.state for t in detail.task_runs} == {"Completed"} and run.task_counts == {"Completed": 30}


def test_encode_block_shares_equal_columns_and_rounds_offsets_to_the_nearest_microsecond(tmp_path: Path) -> None:
    """Names numbered like the ids reuse the ids' text, submissions at the starts reuse the
    starts' text, and every time (also a submission before the earliest start) reads back
    within half a microsecond, through the records and through the SQL view."""
    base = time.time()
    numbers, names = [3, 5, 6, 9], [0, 2, 3, 6]
    starts = [base, base + 0.0010004, base + 0.0020006, base + 0.0030001]
    ends = [s + 0.0000007 for s in starts]
    for submitted in (starts, list(starts), [base - 0.0000014, base - 0.0000016, base + 0.001, base + 0.002]):
        block = encode_block(
            flow_run_id="0abc", task="t", id_prefix="p", backend="threads", worker=None, tags=None,
            numbers=numbers, names=names, submitted=submitted, starts=starts, ends=ends,
        )
        assert block.numbers == block.names == "[0,2,3,6]"
        assert block.starts == "[0,1000,2001,3000]" and block.ends == "[1,1001,2001,3001]"
        if submitted == starts:
            assert block.submitted == block.starts
        else:
            assert block.submitted == "[-1,-2,1000,2000]"
        runs = block.expand()
        assert [r.id for r in runs] == ["p-3", "p-5", "p-6", "p-9"] and [r.name for r in runs] == ["t-0", "t-2", "t-3", "t-6"]
        for run, s, e, sub in zip(runs, starts, ends, submitted, strict=True):
            assert run.start == pytest.approx(s, abs=0.5e-6) and run.end == pytest.approx(e, abs=0.5e-6)
            assert run.submitted == pytest.approx(sub, abs=0.5e-6)
    store = SQLiteStore(tmp_path / "history.db")
    try:
        store.write_events(HistoryBatch(task_run_blocks=[block]))
    finally:
        store.close()
    stored = rows(tmp_path / "history.db", "SELECT name, submitted_time, start_time, end_time FROM task_runs_all ORDER BY name")
    for (name, sub, s, e), run in zip(stored, block.expand(), strict=True):
        assert name == run.name
        assert (sub, s, e) == pytest.approx((run.submitted, run.start, run.end), abs=1e-7)


def _write_big_blocks(store: SQLiteStore, transactions: int, base: float) -> None:
    """``transactions`` commits of one block of 20,000 runs each (about 0.6 MB of text)."""
    numbers = list(range(0, 40_000, 2))
    starts = [base + i * 1e-5 for i in numbers]
    for _ in range(transactions):
        block = encode_block(
            flow_run_id=None, task="t", id_prefix="p", backend="threads", worker=None, tags=None,
            numbers=numbers, names=numbers, submitted=[s - 1e-4 for s in starts], starts=starts,
            ends=[s + 3e-6 for s in starts],
        )
        store.write_events(HistoryBatch(task_run_blocks=[block]))


def test_a_writer_that_defers_upkeep_checkpoints_the_wal_in_upkeep_not_in_its_commits(tmp_path: Path) -> None:
    """The history writer's store leaves WAL checkpoints out of the commits a flow run's
    end waits for, and makes them in ``upkeep``; a plain store lets SQLite make them in
    its commits."""
    base = time.time()
    deferring = SQLiteStore(tmp_path / "deferring" / "history.db")
    plain = SQLiteStore(tmp_path / "plain" / "history.db")
    try:
        deferring.defer_upkeep()
        _write_big_blocks(deferring, 14, base)
        _write_big_blocks(plain, 14, base)
        wal = tmp_path / "deferring" / "history.db-wal"
        grown = wal.stat().st_size
        assert grown > 1.5 * CHECKPOINT_AFTER_BYTES  # no commit checkpointed it: it only grew
        # SQLite restarts a checkpointed WAL from its start: the plain one never grew so far
        assert (tmp_path / "plain" / "history.db-wal").stat().st_size < grown
        deferring.upkeep()
        _write_big_blocks(deferring, 2, base)
        assert wal.stat().st_size == grown  # written from its start again: it was checkpointed
        for home in ("deferring", "plain"):
            counted = rows(tmp_path / home / "history.db", "SELECT count(*), sum(count) FROM task_run_blocks")
            assert counted == ([(16, 320_000)] if home == "deferring" else [(14, 280_000)])
    finally:
        deferring.close()
        plain.close()
