"""How fast the dashboard answers over a big history, through a real uvicorn over HTTP.

The history is ``test_history.build_history``'s: 100 000 flow runs of 20 flows over a
year with 10 task runs each (1 000 000 task runs; ``--quick``: 5 000 runs), plus one
flow run of 20 000 task runs on 8 workers.

1. ``GET /runs`` (the whole HTML page: a page of 50 runs, their task counts, the
   histogram over a year, the flow list): goal under 0.3 s. Anchor: the store's own
   ``list_runs(limit=50)``, the query ``flowcore runs ls`` makes.
2. Side figures: ``/api/runs``, ``/runs`` filtered by flow and state, the 1000th page,
   ``/api/histogram``, ``/flows``, and the run detail page and timeline of the
   20 000-task run (drawn on a canvas: the page holds no element per task run).

Nothing here asserts on a timing; the tests assert what the pages hold.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired
from test_history import build_history

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dashboard_server import Served, serve_dashboard

from flowcore.history.records import FlowRunWrite, HistoryBatch, StateRecord, TaskRunWrite
from flowcore.history.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

PAGE_GOAL_S = 0.3
BIG_RUN_ID = "e" * 32
BIG_RUN_TASKS = 20_000


def add_big_run(db: Path, n: int) -> None:
    """One flow run of ``n`` task runs spread over 8 workers."""
    start = time.time() - 3600
    store = SQLiteStore(db)
    try:
        store.write_events(HistoryBatch(
            flow_runs=[FlowRunWrite(BIG_RUN_ID, "huge", "huge-eeeeeeee", "Completed", "COMPLETED", start=start,
                                    end=start + n * 0.01, backend="loky",
                                    state_entry=StateRecord(start, "COMPLETED", "Completed"))],
            task_runs=[
                TaskRunWrite(f"big{i:029x}", BIG_RUN_ID, "step", f"step-{i}", "Completed", "COMPLETED", attempts=1,
                             submitted=start, start=start + i * 0.01, end=start + i * 0.01 + 0.07,
                             backend="loky", worker_host="node", worker_pid=3000 + i % 8)
                for i in range(n)
            ],
        ))
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> Iterator[tuple[Served, int]]:
    db = tmp_path_factory.mktemp("dashboard-history") / "history.db"
    flow_runs = 5_000 if quick else 100_000
    build_history(db, flow_runs, 10)
    add_big_run(db, BIG_RUN_TASKS)
    with serve_dashboard(db) as running:
        yield running, flow_runs


def timed_get(served: Served, path: str) -> Callable[[], bytes]:
    def get() -> bytes:
        with urllib.request.urlopen(served.url + path, timeout=60) as response:
            assert response.status == 200
            body: bytes = response.read()
            return body

    return get


def test_runs_page_over_a_big_history(benchmark: BenchmarkFixture, quick: bool, served: tuple[Served, int]) -> None:
    server, flow_runs = served
    side = {
        "api_runs": timed_get(server, "/api/runs"),
        "filtered": timed_get(server, "/runs?flow=flow10&state=Failed"),
        "deep_page": timed_get(server, "/runs?page=1000"),
        "histogram": timed_get(server, "/api/histogram"),
        "flows": timed_get(server, "/flows"),
        "big_run": timed_get(server, f"/runs/{BIG_RUN_ID}"),
        "big_timeline": timed_get(server, f"/api/runs/{BIG_RUN_ID}/timeline"),
    }
    paired = run_paired(
        benchmark, subject=timed_get(server, "/runs"), anchor=lambda: server.store.list_runs(limit=50),
        rounds=3 if quick else 10, side=side,
    )
    page = paired.subject_result.decode()
    assert page.count('data-testid="run-row"') == 50
    assert len(paired.anchor_result) == 50
    big = paired.side_results["big_run"].decode()
    assert 'data-testid="gantt-canvas"' in big and 'data-testid="task-bar"' not in big
    filtered = paired.side_results["filtered"].decode()
    assert filtered.count('data-testid="run-row"') == 50 and 'data-state="Completed"' not in filtered
    extra: dict[str, Any] = {name: min(times) for name, times in paired.side.items()}
    record(
        benchmark, paired, anchor="store.list_runs(limit=50) in this process", n=flow_runs,
        figures=[
            figure("GET /runs (page of 50, histogram, flows)", paired.subject_min, "s", PAGE_GOAL_S),
            figure("GET /api/runs", extra["api_runs"], "s", PAGE_GOAL_S),
            figure("GET /runs?flow=..&state=Failed", extra["filtered"], "s", PAGE_GOAL_S),
            figure("GET /runs?page=1000", extra["deep_page"], "s", PAGE_GOAL_S),
            figure("GET /api/histogram", extra["histogram"], "s", PAGE_GOAL_S),
            figure("GET /flows (20 flows, last 20 runs each)", extra["flows"], "s", None),
            figure(f"GET /runs/ID of a {BIG_RUN_TASKS}-task run", extra["big_run"], "s", None),
            figure(f"GET /api/runs/ID/timeline of a {BIG_RUN_TASKS}-task run", extra["big_timeline"], "s", None),
        ],
        flow_runs=flow_runs, task_runs=flow_runs * 10 + BIG_RUN_TASKS,
    )
