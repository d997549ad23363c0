"""What the run history costs: runs with history on against the same runs with it off,
and how fast ``flowcore runs ls`` answers over a big history.

"Off" is the true baseline: the history plugin is unregistered for the anchor round,
so nothing observes the run-event stream (what ``FLOWCORE_HISTORY=0`` gives a process).
"On" includes the writer's work that the flow waits for: a top-level flow run ends
when its records are committed. Every round writes into one SQLite file under a
temporary FLOWCORE_HOME (see conftest.py).

1. ``inc.map(range(N))`` on loky (2 workers), N = 200 000: goal at most 1.1x.
2. 2 000 ``inc.submit(i)`` then every result on ``threads`` (2 workers): at most 1.1x.
3. N direct calls of a trivial task in one flow run: goal under 2 µs added per call.
4. ``flowcore runs ls`` over 100 000 flow runs and 1 000 000 task runs (built with
   ``executemany``): the store's query in this process, and the whole command in a
   fresh interpreter; goal under 0.3 s.
5. 4 processes x 500 task runs into one database at once: rows lost (goal 0).

Nothing here asserts on a timing; the tests assert the results and the row counts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _harness import figure, record, run_paired

import flowcore
from flowcore.registry import get_registry

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

PLUGIN = "flowcore.plugins.history"
WORKERS = 2
RATIO_GOAL = 1.1
DIRECT_ADDED_GOAL_US = 2.0
LS_GOAL_S = 0.3


@flowcore.task
def inc(x: int) -> int:
    return x + 1


def map_inc(n: int) -> list[int]:
    return [f.result() for f in inc.map(range(n))]


def submit_inc(n: int) -> list[int]:
    futures = [inc.submit(i) for i in range(n)]
    return [f.result() for f in futures]


def direct_inc(n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        inc(i)
    return time.perf_counter() - start


@pytest.fixture
def history_plugin() -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """``without_history(fn)``: call ``fn`` with the history plugin unregistered."""
    registry = get_registry()
    plugin = registry.pm.get_plugin(PLUGIN)
    if plugin is None or not hasattr(plugin, "flowcore_run_events"):
        pytest.skip("the history plugin is not observing runs here (FLOWCORE_HISTORY=0?)")

    def without_history(fn: Callable[[], Any]) -> Any:
        registry.unregister(plugin)
        try:
            return fn()
        finally:
            registry.register(plugin, name=PLUGIN)

    yield without_history
    if registry.pm.get_plugin(PLUGIN) is None:
        registry.register(plugin, name=PLUGIN)


def _task_runs_of_flow(flow_name: str) -> int:
    """How many task runs of ``flow_name``'s flow runs the history holds: rows, and the
    runs of blocks (counted from their columns, not expanded: the benchmark history
    also holds every other benchmark's runs)."""
    db = Path(os.environ["FLOWCORE_HOME"]) / "history.db"
    connection = sqlite3.connect(db)
    runs = "SELECT id FROM flow_runs WHERE flow = ?"
    try:
        return int(
            connection.execute(
                f"SELECT (SELECT count(*) FROM task_runs WHERE flow_run_id IN ({runs}))"
                f" + (SELECT coalesce(sum(count), 0) FROM task_run_blocks WHERE flow_run_id IN ({runs}))",
                (flow_name, flow_name),
            ).fetchone()[0]
        )
    finally:
        connection.close()


def test_map_on_loky_with_history_vs_without(
    benchmark: BenchmarkFixture, quick: bool, history_plugin: Callable[[Callable[[], Any]], Any]
) -> None:
    pytest.importorskip("loky")
    n = 5_000 if quick else 200_000
    rounds = 1 if quick else 3
    backend = flowcore.get_backend("loky", max_workers=WORKERS)
    try:
        host = flowcore.flow(backend=backend, name="benchmark-history-map")(map_inc)
        expected = list(range(1, n + 1))
        assert host(100) == expected[:100]  # start the pool
        before = _task_runs_of_flow("benchmark-history-map")
        paired = run_paired(
            benchmark, subject=lambda: host(n), anchor=lambda: history_plugin(lambda: host(n)), rounds=rounds
        )
        assert paired.subject_result == expected and paired.anchor_result == expected
        written = _task_runs_of_flow("benchmark-history-map") - before
        assert written == n * len(paired.subject) + (n if benchmark.enabled else 0)  # warm-up round too
    finally:
        backend.shutdown()
    record(
        benchmark, paired, anchor="the same map with history off", n=n,
        figures=[
            figure("map on loky, history on / off", paired.subject_min / paired.anchor_min, "x", RATIO_GOAL),
            figure("history cost per task run", (paired.subject_min - paired.anchor_min) / n * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
    )


def test_threads_submit_result_with_history_vs_without(
    benchmark: BenchmarkFixture, quick: bool, history_plugin: Callable[[Callable[[], Any]], Any]
) -> None:
    n = 500 if quick else 2_000
    rounds = 1 if quick else 5
    backend = flowcore.get_backend("threads", max_workers=WORKERS)
    try:
        host = flowcore.flow(backend=backend, name="benchmark-history-submit")(submit_inc)
        expected = list(range(1, n + 1))
        assert host(10) == expected[:10]
        paired = run_paired(
            benchmark, subject=lambda: host(n), anchor=lambda: history_plugin(lambda: host(n)), rounds=rounds
        )
        assert paired.subject_result == expected and paired.anchor_result == expected
    finally:
        backend.shutdown()
    record(
        benchmark, paired, anchor="the same submits with history off", n=n,
        figures=[
            figure("threads submit+result, history on / off", paired.subject_min / paired.anchor_min, "x", RATIO_GOAL),
            figure("history cost per task run", (paired.subject_min - paired.anchor_min) / n * 1e6, "µs", None),
        ],
        max_workers=WORKERS,
    )


def test_direct_calls_with_history_vs_without(
    benchmark: BenchmarkFixture, quick: bool, history_plugin: Callable[[Callable[[], Any]], Any]
) -> None:
    n = 2_000 if quick else 50_000
    rounds = 1 if quick else 5
    host = flowcore.flow(name="benchmark-history-direct")(direct_inc)
    host(100)
    loops: dict[str, list[float]] = {"on": [], "off": []}  # the loop's own time, without flow start/end

    def with_history() -> float:
        loops["on"].append(host(n))
        return loops["on"][-1]

    def without_history() -> float:
        loops["off"].append(history_plugin(lambda: host(n)))
        return loops["off"][-1]

    paired = run_paired(benchmark, subject=with_history, anchor=without_history, rounds=rounds)
    on, off = min(loops["on"]), min(loops["off"])
    record(
        benchmark, paired, anchor="the same calls with history off", n=n,
        figures=[
            figure("direct call added by history", (on - off) / n * 1e6, "µs", DIRECT_ADDED_GOAL_US),
            figure("direct call with history on", on / n * 1e6, "µs", None),
            figure("direct call with history off", off / n * 1e6, "µs", None),
        ],
    )


# -- reading a big history -------------------------------------------------------------------


def build_history(db: Path, flow_runs: int, tasks_per_run: int) -> None:
    """A history of ``flow_runs`` runs of 20 flows over a year, each with
    ``tasks_per_run`` task runs, written with executemany in big transactions."""
    from flowcore.history.sqlite import SQLiteStore

    SQLiteStore(db).close()  # the schema
    connection = sqlite3.connect(db, isolation_level=None)
    now = time.time()
    states = ("Completed", "Completed", "Completed", "Failed", "Cached")
    try:
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO flow_runs (id, flow, name, state, state_type, parameters, backend, start_time, "
            "end_time, attempts, host, pid) VALUES (?, ?, ?, ?, ?, '{}', 'threads', ?, ?, 1, 'bench', 1)",
            (
                (f"{i:032x}", f"flow{i % 20}", f"flow{i % 20}-{i:08x}", "Completed" if i % 10 else "Failed",
                 "COMPLETED" if i % 10 else "FAILED", now - 365 * 86400 * (1 - i / flow_runs),
                 now - 365 * 86400 * (1 - i / flow_runs) + 5.0)
                for i in range(flow_runs)
            ),
        )
        connection.executemany(
            "INSERT INTO task_runs (id, flow_run_id, task, name, state, state_type, attempts, "
            "submitted_time, start_time, end_time, backend, worker_host, worker_pid) "
            "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, 'threads', 'bench', 1)",
            (
                (f"{i:012x}-{j:x}", f"{i:032x}", f"task{j % 3}", f"task{j % 3}-{j:x}", states[j % 5],
                 "FAILED" if states[j % 5] == "Failed" else "COMPLETED", float(i), float(i), float(i) + 0.1)
                for i in range(flow_runs)
                for j in range(tasks_per_run)
            ),
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def big_history(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> Path:
    home = tmp_path_factory.mktemp("big-history")
    build_history(home / "history.db", 5_000 if quick else 100_000, 10)
    return home


def test_runs_ls_over_a_big_history(benchmark: BenchmarkFixture, quick: bool, big_history: Path) -> None:
    from flowcore.history.sqlite import SQLiteStore

    store = SQLiteStore(big_history / "history.db")
    flow_runs = 5_000 if quick else 100_000
    try:
        def query() -> list[Any]:
            return store.list_runs(limit=20)

        def filtered() -> list[Any]:
            return store.list_runs(flow="flow10", state="Failed", limit=20)

        paired = run_paired(benchmark, subject=query, anchor=filtered, rounds=3 if quick else 20)
        runs = paired.subject_result
        assert len(runs) == 20 and all(sum(r.task_counts.values()) == 10 for r in runs)
        assert len(paired.anchor_result) == 20 and {r.flow for r in paired.anchor_result} == {"flow10"}
    finally:
        store.close()
    env = {**os.environ, "FLOWCORE_HOME": str(big_history)}
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "flowcore", "runs", "ls", "--json"], capture_output=True,
                                text=True, env=env, timeout=120, check=False, cwd=big_history)  # the installed flowcore, not ./flowcore
        walls.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == 20
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flowcore"], env=env, timeout=120, check=True, cwd=big_history)
    interpreter = time.perf_counter() - start
    record(
        benchmark, paired, anchor="runs ls --flow --state (filtered)", n=flow_runs,
        figures=[
            figure("runs ls query (20 of the newest)", paired.subject_min, "s", LS_GOAL_S),
            figure("runs ls --flow --state query", paired.anchor_min, "s", LS_GOAL_S),
            figure("flowcore runs ls --json, whole command", min(walls), "s", LS_GOAL_S),
            figure("python -c 'import flowcore' (part of the above)", interpreter, "s", None),
        ],
        flow_runs=flow_runs, task_runs=flow_runs * 10,
    )


WRITER = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, task

    @task
    def one(x):
        return x

    @flow
    def writer():
        return [f.result() for f in one.map(range(500))]

    if __name__ == "__main__":
        go = Path(sys.argv[1])
        while not go.exists():
            time.sleep(0.01)
        writer()
"""


def test_four_processes_write_one_history(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """4 processes x 500 task runs at once into one fresh database: every row arrives."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    home = tmp_path / "home"
    env = {**os.environ, "FLOWCORE_HOME": str(home)}

    def once() -> tuple[int, list[str]]:
        go = tmp_path / "go"
        go.unlink(missing_ok=True)
        processes = [
            subprocess.Popen([sys.executable, str(script), str(go)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        go.touch()
        errors = [p.communicate(timeout=300)[1] for p in processes]
        connection = sqlite3.connect(home / "history.db")
        try:
            rows = int(connection.execute("SELECT count(*) FROM task_runs_all").fetchone()[0])
        finally:
            connection.close()
        return rows, errors

    paired = run_paired(benchmark, subject=once, anchor=lambda: None, rounds=1, warmup_rounds=0)
    rows, errors = paired.subject_result
    assert rows == 2_000
    assert not any("locked" in e.lower() for e in errors)
    record(
        benchmark, paired, anchor="none", n=2_000,
        figures=[figure("task rows lost of 2,000", 2_000 - rows, "rows", 1)],
    )
