"""The dashboard's pages and JSON API, served by a real uvicorn on a loopback port, over
SQLite histories written by real flow runs (see ``dashboard_server.py``).

Page structure is checked through the documented ``data-testid`` attributes; the
browser tests (test_dashboard_browser.py) check what a person sees."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_server import Served, free_port, serve_dashboard

import flowcore
from flowcore import flow, get_run_logger, task
from flowcore.caching import INPUTS
from flowcore.dashboard.app import DOM_BAR_LIMIT
from flowcore.dashboard.command import exposure_warning, is_loopback
from flowcore.dashboard.queries import ChangeWatcher, HistoryQueries, RunFilter, percentile
from flowcore.history import liveness
from flowcore.history.formatting import local_time
from flowcore.history.records import FlowRunWrite, HistoryBatch, LogWrite, StateRecord, TaskRunWrite
from flowcore.history.sqlite import SQLiteStore

# -- flows that write the history -------------------------------------------------------------

_attempts: dict[int, int] = {}


@task
def double(x: int) -> int:
    get_run_logger().info("doubling %d", x)
    if x == 4:
        get_run_logger().warning("four is suspicious")
        raise ValueError(f"bad item {x}")
    return 2 * x


@task(retries=1)
def shaky(x: int) -> int:
    _attempts[x] = _attempts.get(x, 0) + 1
    if _attempts[x] == 1:
        raise RuntimeError(f"first attempt of {x} fails")
    return x


@task(cache_policy=INPUTS)
def cached_square(x: int) -> int:
    return x * x


@flow
def inner(n: int) -> int:
    return sum(f.result() for f in double.map(range(n)))


@flow(name="dashboard-etl")
def etl(n: int = 6, label: str = "first") -> int:
    futures = double.map(range(n))
    shaky(1)
    cached_square(3)
    inner(3)
    return sum(f.result() for f in futures if f.state.is_completed())


@flow(name="dashboard-other")
def other() -> int:
    return cached_square(3)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A history with two runs of ``dashboard-etl`` (a failed task each, a retry, a cache
    hit, a subflow) and one of ``dashboard-other``."""
    home = tmp_path_factory.mktemp("dashboard-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWCORE_HOME", str(home))
        patch.setenv("FLOWCORE_CACHE_DIR", str(home / "cache"))
        for name in ("FLOWCORE_HISTORY", "FLOWCORE_HISTORY_STORE", "FLOWCORE_HISTORY_STORE_OPTIONS"):
            patch.delenv(name, raising=False)
        logger = logging.getLogger("flowcore")
        level = logger.level
        logger.setLevel(logging.INFO)  # pytest configured logging: INFO records are opt-in
        try:
            etl(6, "first")
            _attempts.clear()
            etl(5, "second")
            other()
        finally:
            logger.setLevel(level)
        yield home / "history.db"


@pytest.fixture(scope="module")
def served(history: Path) -> Iterator[Served]:
    with serve_dashboard(history) as running:
        yield running


def find_testids(html: str, testid: str) -> list[dict[str, str]]:
    """The attributes of every element with ``data-testid=testid``."""
    found = []
    for match in re.finditer(r"<[a-z]+\s([^>]*data-testid=\"" + re.escape(testid) + r"\"[^>]*)>", html):
        found.append(dict(re.findall(r'([a-z-]+)="([^"]*)"', match.group(1))))
    return found


def etl_runs(served: Served) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = served.get("/api/runs?flow=dashboard-etl").json()["runs"]
    return runs


# -- runs ------------------------------------------------------------------------------------


def test_runs_api_lists_flow_runs_newest_first_with_task_counts(served: Served) -> None:
    body = served.get("/api/runs").json()
    names = [r["flow"] for r in body["runs"]]
    assert body["total"] == 5  # two etl runs, their subflow runs, one other
    assert names[0] == "dashboard-other" and names.count("dashboard-etl") == 2 and names.count("inner") == 2
    newest_etl = etl_runs(served)[0]
    assert newest_etl["state"] == "Completed"
    assert newest_etl["task_counts"] == {"Completed": 5, "Cached": 1, "Failed": 1}  # 4 doubles, shaky
    assert newest_etl["backend"] == "threads"


def test_runs_api_filters_and_pages(served: Served) -> None:
    assert {r["flow"] for r in served.get("/api/runs?flow=inner").json()["runs"]} == {"inner"}
    assert served.get("/api/runs?state=failed").json()["total"] == 0
    assert served.get("/api/runs?state=COMPLETED").json()["total"] == 5
    assert served.get("/api/runs?since=1h").json()["total"] == 5
    assert served.get("/api/runs?until=2000-01-01").json()["total"] == 0
    first = served.get("/api/runs?per_page=2").json()
    second = served.get("/api/runs?per_page=2&page=2").json()
    assert first["pages"] == 3 and len(first["runs"]) == 2 and len(second["runs"]) == 2
    assert not {r["id"] for r in first["runs"]} & {r["id"] for r in second["runs"]}


def test_a_runs_page_past_the_last_says_so_and_links_back(served: Served) -> None:
    # 5 runs, 2 a page: page 3 is the last; page 9 (an old bookmark, runs deleted) is empty
    html = served.get("/runs?per_page=2&page=9").text
    assert not find_testids(html, "run-row")
    assert "No flow runs recorded yet" not in html
    assert "page 9 is past the last page (3)" in html
    assert 'href="?per_page=2&amp;page=3"' in html
    filtered = served.get("/runs?flow=inner&page=4").text
    assert "page 4 is past the last page (1)" in filtered and 'href="?flow=inner&amp;page=1"' in filtered


def test_runs_page_has_a_row_per_run_with_state_and_badge(served: Served) -> None:
    html = served.get("/runs").text
    rows = find_testids(html, "run-row")
    assert len(rows) == 5
    assert all(len(r["data-run-id"]) == 32 and r["data-state"] == "Completed" for r in rows)
    assert len(find_testids(html, "state-badge")) == 5
    assert 'data-testid="runs-histogram"' in html
    fragment = served.get("/runs?fragment=runs_table&flow=dashboard-other").text
    assert "<html" not in fragment and len(find_testids(fragment, "run-row")) == 1
    assert ">1 run<" in fragment and "1 runs" not in fragment


def test_every_page_says_which_clock_its_times_are_on(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # Times are shown on the dashboard machine's clock; a browser elsewhere (an SSH
    # tunnel from another zone) must be told which one.
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        run = etl_runs(served)[0]
        for path in ("/runs", f"/runs/{run['id']}", f"/runs/{run['id']}/logs", "/flows", "/tasks", "/workers",
                     "/deployments", "/no/such/page"):
            zone = find_testids(served.get(path).text, "time-zone")
            assert len(zone) == 1 and zone[0]["data-utc-offset"] == "+05:30", path
        html = served.get("/runs").text
        assert ">times in IST (UTC+05:30)<" in html
        started = local_time(time.time())[:10]
        assert started in html  # the cells are on that clock too
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_pages_name_their_script_and_style_by_content(served: Served) -> None:
    # After an upgrade, a browser must not run a cached dashboard.js of the previous
    # version against the new pages (their contract changes): the URLs carry a hash
    # of the files' content.
    import hashlib

    import flowcore.dashboard.app as app_module

    html = served.get("/runs").text
    for name in ("dashboard.js", "dashboard.css"):
        digest = hashlib.sha256((Path(app_module.__file__).parent / "static" / name).read_bytes()).hexdigest()[:12]
        assert f"/static/{name}?v={digest}" in html, name
        assert served.get(f"/static/{name}?v={digest}").status == 200


def test_histogram_counts_runs_by_state_over_time(served: Served) -> None:
    body = served.get("/api/histogram?since=1h&bins=12").json()
    assert len(body["bins"]) == 12
    assert sum(sum(b["counts"].values()) for b in body["bins"]) == 5
    assert {name for b in body["bins"] for name in b["counts"]} == {"Completed"}


# -- one run ----------------------------------------------------------------------------------


def test_run_detail_api_has_parameters_states_subflows_and_task_summary(served: Served) -> None:
    run_id = etl_runs(served)[-1]["id"]  # the first run: n=6
    body = served.get(f"/api/runs/{run_id[:10]}").json()  # a prefix is enough
    assert body["id"] == run_id and body["parameters"] == {"n": 6, "label": "first"}
    assert [s["name"] for s in body["states"]] == ["Running", "Completed"]
    assert [(s["depth"], s["flow"]) for s in body["subflows"]] == [(1, "inner")]
    tasks = {t["task"]: t for t in body["tasks"]}
    assert tasks["double"]["counts"] == {"Completed": 5, "Failed": 1}
    assert tasks["shaky"]["retried"] == 1 and tasks["shaky"]["counts"] == {"Completed": 1}
    assert tasks["double"]["mean_s"] is not None and tasks["double"]["p95_s"] >= tasks["double"]["mean_s"] * 0.5


def test_run_page_draws_one_task_bar_per_task_run_in_its_worker_lane(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    task_runs = served.get(f"/api/runs/{run_id}/task-runs").json()["task_runs"]
    html = served.get(f"/runs/{run_id}").text
    bars = find_testids(html, "task-bar")
    assert sorted(b["data-task-run-id"] for b in bars) == sorted(t["id"] for t in task_runs)
    expected = {t["id"]: t["worker"] for t in task_runs}
    for bar in bars:
        worker = expected[bar["data-task-run-id"]]
        label = f"{worker['host']}:{worker['pid']}" + (f"/{worker['thread']}" if worker["thread"] else "")
        assert bar["data-worker"] == label
    lanes = {lane["data-worker"] for lane in find_testids(html, "gantt-lane")}
    assert {b["data-worker"] for b in bars} <= lanes
    retried = [b for b in bars if b["data-attempts"] == "2"]
    assert len(retried) == 1 and "retried" in html
    assert len(find_testids(html, "subflow-bar")) == 1


def test_run_page_shows_the_failed_tasks_traceback(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    html = served.get(f"/runs/{run_id}").text
    failed = find_testids(html, "failed-task")
    assert len(failed) == 1
    assert "Traceback (most recent call last)" in html and "ValueError: bad item 4" in html


def test_task_runs_api_filters_and_pages(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    body = served.get(f"/api/runs/{run_id}/task-runs?state=failed").json()
    assert body["total"] == 1 and body["task_runs"][0]["error"]["type"] == "ValueError"
    assert served.get(f"/api/runs/{run_id}/task-runs?task=double&limit=2").json()["total"] == 5
    assert len(served.get(f"/api/runs/{run_id}/task-runs?limit=2&offset=1").json()["task_runs"]) == 2


def test_timeline_api_gives_columns_for_the_canvas(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    body = served.get(f"/api/runs/{run_id}/timeline").json()
    assert len(body["bars"]["id"]) == 7 and body["span_s"] > 0
    assert all(0 <= lane < len(body["lanes"]) for lane in body["bars"]["lane"])
    assert all(s <= e for s, e in zip(body["bars"]["start"], body["bars"]["end"], strict=True))


# -- logs -------------------------------------------------------------------------------------


def test_logs_api_tails_and_filters(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    everything = served.get(f"/api/runs/{run_id}/logs").json()
    messages = [r["message"] for r in everything["logs"]]
    assert "doubling 0" in messages and "four is suspicious" in messages
    middle = everything["logs"][2]["id"]
    after = served.get(f"/api/runs/{run_id}/logs?after_id={middle}").json()["logs"]
    assert after and all(r["id"] > middle for r in after)
    warnings = served.get(f"/api/runs/{run_id}/logs?level=WARNING").json()["logs"]
    assert warnings and all(r["level"] in ("WARNING", "ERROR", "CRITICAL") for r in warnings)
    only = served.get(f"/api/runs/{run_id}/logs?task=shaky").json()["logs"]
    assert only and all(r["task"] == "shaky" for r in only)
    assert len(served.get(f"/api/runs/{run_id}/logs?limit=2").json()["logs"]) == 2


def test_following_the_logs_in_pages_misses_no_line(served: Served) -> None:
    # A follower passing last_id back gets every line once, even when more than
    # `limit` arrived since its last look (it took the newest and skipped the rest).
    run_id = etl_runs(served)[0]["id"]
    everything = [r["id"] for r in served.get(f"/api/runs/{run_id}/logs").json()["logs"]]
    assert len(everything) > 5
    seen: list[int] = []
    last = everything[0]
    while True:
        body = served.get(f"/api/runs/{run_id}/logs?after_id={last}&limit=2").json()
        if not body["logs"]:
            break
        seen += [r["id"] for r in body["logs"]]
        last = body["last_id"]
    assert seen == everything[1:]
    # without after_id, still the newest lines (what a page opens with)
    assert [r["id"] for r in served.get(f"/api/runs/{run_id}/logs?limit=2").json()["logs"]] == everything[-2:]


def test_logs_page_has_log_lines(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    html = served.get(f"/runs/{run_id}/logs?level=warning").text
    lines = find_testids(html, "log-line")
    assert lines and {line["data-level"] for line in lines} <= {"WARNING", "ERROR", "CRITICAL"}
    assert "data-log-tail" in html


def test_a_logs_page_that_shows_only_the_last_lines_says_so(served: Served) -> None:
    # The page shows the newest `limit` lines; the older ones must not vanish unsaid.
    run_id = etl_runs(served)[0]["id"]
    total = len(served.get(f"/api/runs/{run_id}/logs").json()["logs"])
    assert total > 3
    html = served.get(f"/runs/{run_id}/logs?limit=3").text
    assert len(find_testids(html, "log-line")) == 3
    note = find_testids(html, "logs-truncated")
    assert len(note) == 1 and f"the last 3 of {total} lines" in html
    assert f'href="/runs/{run_id}/logs?limit={total}"' in html
    whole = served.get(f"/runs/{run_id}/logs").text
    assert len(find_testids(whole, "log-line")) == total and not find_testids(whole, "logs-truncated")
    warnings = served.get(f"/runs/{run_id}/logs?level=WARNING&limit=1").text  # the filters stay
    assert "level=WARNING" in re.search(r'data-testid="logs-truncated".*?</p>', warnings, re.S).group(0)


# -- summaries ------------------------------------------------------------------------------


def test_tasks_summary_counts_states_durations_and_cache_hits(served: Served) -> None:
    tasks = {t["task"]: t for t in served.get("/api/tasks?since=1h").json()["tasks"]}
    assert tasks["double"]["counts"] == {"Completed": 15, "Failed": 2}  # 5+4 in etl, 3+3 in inner
    assert tasks["cached_square"]["total"] == 3 and tasks["cached_square"]["cache_hits"] == 2
    assert tasks["shaky"]["retried"] == 2
    only_other = served.get("/api/tasks?since=1h&flow=dashboard-other").json()["tasks"]
    assert [t["task"] for t in only_other] == ["cached_square"]
    html = served.get("/tasks").text
    assert {row["data-task"] for row in find_testids(html, "task-row")} == {"double", "shaky", "cached_square"}


def test_flows_summary_has_success_rate_and_recent_durations(served: Served) -> None:
    flows = {f["flow"]: f for f in served.get("/api/flows?last=5").json()["flows"]}
    assert set(flows) == {"dashboard-etl", "dashboard-other", "inner"}
    assert flows["dashboard-etl"]["runs"] == 2 and flows["dashboard-etl"]["success_rate"] == 1.0
    assert len(flows["dashboard-etl"]["recent"]) == 2 and flows["dashboard-etl"]["mean_s"] > 0
    html = served.get("/flows").text
    assert {row["data-flow"] for row in find_testids(html, "flow-row")} == set(flows)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/runs/0123456789abcdef0123", "/runs/nothing-like-this/logs", "/no/such/page"])
def test_unknown_run_or_page_is_a_404_page(served: Served, path: str) -> None:
    answer = served.get(path)
    assert answer.status == 404 and "text/html" in answer.headers["content-type"]
    assert 'data-testid="error-message"' in answer.text


def test_unknown_run_in_the_api_is_a_404_json(served: Served) -> None:
    answer = served.get("/api/runs/ffffffffffff")
    assert answer.status == 404 and "flowcore runs ls" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/runs?state=Exploded", "state: 'Exploded' is not a flow-run state"),
        ("/api/runs?since=yesterdayish", "since: 'yesterdayish'"),
        ("/api/runs?page=0", "page: 0 is out of range"),
        ("/api/runs?per_page=ten", "per_page: 'ten' is not a whole number"),
        ("/api/histogram?bins=100000", "bins: 100000 is out of range"),
        ("/runs?fragment=everything", "fragment: 'everything'"),
        ("/runs?until=13/45/2026", "until:"),
        # a date the platform cannot place on its clock: a 400, not a 500
        ("/api/runs?since=0001-01-01", "since: '0001-01-01'"),
        ("/api/histogram?until=0001-01-01T00:00", "until: '0001-01-01T00:00'"),
        ("/runs?since=0001-01-01", "since: '0001-01-01'"),
        # a stream with such a limit would never end
        ("/api/events?timeout=nan", "timeout: 'nan'"),
        ("/api/events?timeout=-1", "timeout: '-1'"),
    ],
)
def test_a_malformed_query_is_a_400_with_the_reason(served: Served, path: str, reason: str) -> None:
    answer = served.get(path)
    assert answer.status == 400
    text = answer.json()["error"] if path.startswith("/api/") else answer.text
    assert reason in text.replace("&#39;", "'")


def test_a_malformed_log_level_is_a_400(served: Served) -> None:
    run_id = etl_runs(served)[0]["id"]
    answer = served.get(f"/api/runs/{run_id}/logs?level=LOUD")
    assert answer.status == 400 and "level: 'LOUD'" in answer.json()["error"]


def test_pages_load_without_any_history(tmp_path: Path) -> None:
    with serve_dashboard(tmp_path / "new" / "history.db") as running:
        (tmp_path / "new" / "history.db").unlink()  # the store created it: now it is gone
        for path in ("/runs", "/flows", "/tasks", "/workers", "/api/runs", "/api/flows", "/api/histogram"):
            assert running.get(path).status == 200, path
        assert running.get("/api/runs").json()["total"] == 0
        page = running.get("/runs").text
        assert "No flow runs recorded yet" in page
        assert "no flow runs in this window" in page and "max per bar" not in page  # not "1 runs max per bar"


def test_pages_load_while_the_database_is_being_written_and_migrated(history: Path, tmp_path: Path) -> None:
    # A writer holding the write lock (as during a long batch or a migration) with
    # uncommitted rows: readers see the last committed state, at once.
    copy = tmp_path / "history.db"
    source = sqlite3.connect(history)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    with serve_dashboard(copy) as running:
        writer = sqlite3.connect(copy, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("CREATE TABLE schema_step_in_progress (x INTEGER)")
            writer.execute("DELETE FROM flow_runs")
            started = time.monotonic()
            assert running.get("/api/runs").json()["total"] == 5
            assert len(find_testids(running.get("/runs").text, "run-row")) == 5
            assert time.monotonic() - started < 5
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    # A file whose tables are not there yet (created, not yet migrated) reads as empty.
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()
    queries = HistoryQueries(bare)
    try:
        assert queries.runs_page(RunFilter()).total == 0
        assert queries.flow_summaries() == [] and queries.task_summaries() == []
    finally:
        queries.close()


# -- live -----------------------------------------------------------------------------------


def test_a_history_file_replaced_while_the_dashboard_runs_is_read_anew(tmp_path: Path) -> None:
    # The fix flowcore suggests for a corrupt history (move it aside, a new one is
    # started) or a history deleted by hand: the running dashboard shows the new file,
    # not the old one it still had open.
    db = tmp_path / "history.db"
    first = SQLiteStore(db)
    first.write_events(HistoryBatch(flow_runs=[_flow_write("1" * 32, "Completed", "COMPLETED")]))
    first.close()
    with serve_dashboard(db) as running:
        watcher = ChangeWatcher(db)
        try:
            assert watcher.changed() is False
            assert running.get("/api/runs").json()["total"] == 1
            assert running.get("/runs/" + "1" * 32).status == 200
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{db}{suffix}").exists():
                    os.replace(f"{db}{suffix}", f"{db}.broken{suffix}")
            assert running.get("/api/runs").json()["total"] == 0  # gone: empty, as before the first run
            assert running.get("/runs/" + "1" * 32).status == 404
            second = SQLiteStore(db)
            second.write_events(HistoryBatch(flow_runs=[_flow_write("2" * 32, "Completed", "COMPLETED")]))
            second.close()
            assert [r["id"] for r in running.get("/api/runs").json()["runs"]] == ["2" * 32]
            assert running.get("/runs/" + "2" * 32).status == 200
            assert running.get("/runs/" + "1" * 32).status == 404
            assert running.get("/api/deployments").json() == []
            assert watcher.changed() is True  # open pages refresh
        finally:
            watcher.close()


def test_event_stream_announces_a_change_when_a_flow_writes(history: Path, tmp_path: Path) -> None:
    copy = tmp_path / "history.db"
    source, target = sqlite3.connect(history), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    with serve_dashboard(copy, poll_s=0.1) as running:
        received: list[str] = []

        def listen() -> None:
            with urllib.request.urlopen(running.url + "/api/events?timeout=3", timeout=10) as response:
                received.append(response.read().decode())

        listener = threading.Thread(target=listen)
        listener.start()
        time.sleep(0.8)
        store = SQLiteStore(copy)
        try:
            store.write_events(HistoryBatch(flow_runs=[_flow_write("f" * 32, "Completed", "COMPLETED")]))
        finally:
            store.close()
        listener.join(timeout=15)
    assert received and received[0].startswith("retry:")
    assert "event: change" in received[0]


# -- big and running runs, written directly --------------------------------------------------


def _flow_write(run_id: str, state: str, state_type: str, **fields: Any) -> FlowRunWrite:
    now = time.time()
    defaults: dict[str, Any] = {"start": now - 5, "end": None if state_type == "RUNNING" else now}
    defaults.update(fields)
    return FlowRunWrite(run_id, "synthetic", f"synthetic-{run_id[:8]}", state, state_type, parameters="{}",
                        backend="loky", state_entry=StateRecord(now - 5, state_type, state), **defaults)


def test_the_timeline_of_a_crashed_run_ends_when_the_run_ended(tmp_path: Path) -> None:
    # kill -9 mid-task: the task run is left without an end and read as Crashed. The
    # Gantt spans the run's 5 s, not "until now" (it grew each time the page was seen).
    db = tmp_path / "history.db"
    store = SQLiteStore(db)
    run_id = "9" * 32
    start = time.time() - 300
    tasks = [TaskRunWrite(f"{i:032x}", run_id, "slow", f"slow-{i}", "Completed", "COMPLETED", submitted=start + i,
                          start=start + i, end=start + i + 1, worker_host="node", worker_pid=5) for i in range(4)]
    tasks.append(TaskRunWrite(f"{4:032x}", run_id, "slow", "slow-4", "Crashed", "CRASHED", submitted=start + 4,
                              start=start + 4, end=None, worker_host="node", worker_pid=5))
    store.write_events(HistoryBatch(flow_runs=[_flow_write(run_id, "Crashed", "CRASHED", start=start,
                                                           end=start + 5)], task_runs=tasks))
    store.close()
    with serve_dashboard(db) as running:
        timeline = running.get(f"/api/runs/{run_id}/timeline").json()
        assert timeline["span_s"] == pytest.approx(5.0, abs=0.01)
        assert timeline["bars"]["state"][-1] == "Crashed" and timeline["bars"]["end"][-1] <= 5.0
        page = running.get(f"/runs/{run_id}").text
        assert ">5.0 s</span></div>" in page  # the axis's last mark
        bars = find_testids(page, "task-bar")
        assert len(bars) == 5 and all(float(re.search(r"left: ([0-9.]+)%", b["style"]).group(1)) < 100 for b in bars)


def test_a_run_with_more_task_runs_than_the_dom_limit_is_drawn_on_a_canvas(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    store = SQLiteStore(db)
    run_id = "b" * 32
    start = time.time() - 100
    n = DOM_BAR_LIMIT + 500
    tasks = [
        TaskRunWrite(f"{i:032x}", run_id, "step", f"step-{i}", "Completed", "COMPLETED", attempts=1,
                     submitted=start, start=start + i * 0.01, end=start + i * 0.01 + 0.5, backend="loky",
                     worker_host="node", worker_pid=1000 + i % 4)
        for i in range(n)
    ]
    store.write_events(HistoryBatch(flow_runs=[_flow_write(run_id, "Completed", "COMPLETED", start=start)], task_runs=tasks))
    store.close()
    with serve_dashboard(db) as running:
        html = running.get(f"/runs/{run_id}").text
        assert not find_testids(html, "task-bar")
        assert 'data-testid="gantt-canvas"' in html and 'data-testid="gantt-canvas-note"' in html
        assert len(html) < 200_000
        timeline = running.get(f"/api/runs/{run_id}/timeline").json()
        assert len(timeline["bars"]["id"]) == n and len(timeline["lanes"]) == 4


def test_workers_of_a_running_flow_show_busy_idle_and_queue_depth(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    store = SQLiteStore(db)
    run_id = "c" * 32
    now = time.time()
    alive = {"host": liveness.this_host(), "pid": os.getpid(), "process_start": liveness.process_start(os.getpid()),
             "heartbeat": now}

    def task_run(i: int, state: str, state_type: str, pid: int | None, started: bool = True) -> TaskRunWrite:
        return TaskRunWrite(f"{i:032x}", run_id, "step", f"step-{i}", state, state_type, submitted=now - 3,
                            start=now - 2 if started else None, end=now - 1 if state_type != "RUNNING" and started else None,
                            worker_host="node" if pid else None, worker_pid=pid)

    tasks = [task_run(0, "Running", "RUNNING", 11), task_run(1, "Completed", "COMPLETED", 11),
             task_run(2, "Completed", "COMPLETED", 12), task_run(3, "Failed", "FAILED", 12)]
    tasks += [task_run(10 + i, "Pending", "PENDING", None, started=False) for i in range(5)]
    store.write_events(HistoryBatch(
        flow_runs=[_flow_write(run_id, "Running", "RUNNING", **alive)], task_runs=tasks,
        logs=[LogWrite(run_id, None, now, 20, "INFO", "flowcore", "started")],
    ))
    store.close()
    with serve_dashboard(db) as running:
        body = running.get(f"/api/runs/{run_id}/workers").json()
        assert body["queue_depth"] == 5 and body["busy"] == 1 and body["idle"] == 1
        workers = {w["worker"]: w for w in body["workers"]}
        assert workers["node:11"]["running"] == ["step-0"] and workers["node:12"]["failed"] == 1
        html = running.get("/workers").text
        rows = find_testids(html, "worker-row")
        assert {(r["data-worker"], r["data-busy"]) for r in rows} == {("node:11", "true"), ("node:12", "false")}
        assert re.search(r'data-testid="queue-depth">5<', html)
        detail = running.get(f"/runs/{run_id}").text
        assert "data-live-src" in detail  # a running run's page refreshes itself


# -- the command -------------------------------------------------------------------------------


def test_binding_a_non_loopback_address_warns() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    assert exposure_warning("127.0.0.1") is None
    warning = exposure_warning("0.0.0.0")
    assert warning is not None and "without a password" in warning


def _start_command(args: list[str], home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "FLOWCORE_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcore", "dashboard", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.startswith("generated the API token"):  # the first start over this home says so first
        line = process.stdout.readline()
    port = args[args.index("--port") + 1]
    deadline = time.monotonic() + 20
    while True:  # the line is printed just before uvicorn listens
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/flows", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.1)
    return process, line


def test_the_command_serves_and_warns_on_a_non_loopback_host(history: Path) -> None:
    port = free_port()
    process, line = _start_command(["--host", "0.0.0.0", "--port", str(port)], history.parent)
    try:
        assert f"0.0.0.0:{port}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as response:
            assert json.loads(response.read())["total"] == 5
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert "warning: the dashboard is listening on 0.0.0.0" in err


def test_the_command_on_loopback_refuses_foreign_host_headers_and_taken_ports(history: Path) -> None:
    port = free_port()
    process, line = _start_command(["--port", str(port)], history.parent)
    try:
        assert f"http://127.0.0.1:{port}/" in line, line
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/runs", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400
        with urllib.request.urlopen(f"http://localhost:{port}/api/runs", timeout=5) as response:
            assert response.status == 200
        second = subprocess.run(
            [sys.executable, "-m", "flowcore", "dashboard", "--port", str(port)], capture_output=True, text=True,
            env={**os.environ, "FLOWCORE_HOME": str(history.parent)}, timeout=60, check=False,
        )
        assert second.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in second.stderr
    finally:
        process.terminate()
        process.communicate(timeout=20)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--port", "99999"], "--port: 99999 is not a port number (1 to 65535)"),
        (["--port", "-1"], "--port: -1 is not a port number (1 to 65535)"),
        (["--host", "no-such-host.invalid", "--port", "4399"], "check --host"),
    ],
)
def test_the_command_refuses_a_bad_port_or_host_with_a_message(args: list[str], reason: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowcore", "dashboard", *args], capture_output=True, text=True,
        env={**os.environ, "FLOWCORE_HOME": str(tmp_path)}, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr
    assert "is listening on" not in result.stderr  # it is not: no exposure warning for a failed start


def test_the_cli_declares_the_command_without_loading_the_web_stack() -> None:
    code = (
        "import sys; from flowcore.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'sqlite3') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@task
def halve(x: int) -> float:
    if x == 3:
        raise ValueError("three")
    return x / 2


@task
def plain_step(x: int) -> int:
    return x + 1


def test_summaries_and_workers_count_the_runs_stored_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plainly completed runs are stored many to a row (task_run_blocks): the task
    summary and the workers view must count them as the store does."""
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "h"))

    @flow(backend="threads", name="blocks-flow")
    def blocks_flow() -> int:
        futures = halve.map(range(60))
        total = sum(plain_step(i) for i in range(25))  # direct calls: batched, stored as blocks too
        flowcore.wait(futures)
        return total + sum(1 for f in futures if f.state.is_completed())

    assert blocks_flow() == sum(range(1, 26)) + 59
    db = tmp_path / "h" / "history.db"
    assert sqlite3.connect(db).execute("SELECT count(*) FROM task_run_blocks").fetchone()[0] >= 2
    store = SQLiteStore(db)
    try:
        (run,) = store.list_runs(flow="blocks-flow")
        detail = store.get_run(run.id)
    finally:
        store.close()
    queries = HistoryQueries(db)
    try:
        summaries = {s.task: s for s in queries.task_summaries(flow="blocks-flow")}
        workers = queries.workers(run)
    finally:
        queries.close()
    for name in ("halve", "plain_step"):
        mine = [t for t in detail.task_runs if t.task == name]
        expected: dict[str, int] = {}
        for t in mine:
            expected[t.state] = expected.get(t.state, 0) + 1
        assert summaries[name].counts == expected
        assert len(summaries[name].durations) == len(mine)
        assert sum(summaries[name].durations) == pytest.approx(sum(t.duration_s or 0.0 for t in mine), abs=1e-3)
    assert summaries["halve"].counts == {"Completed": 59, "Failed": 1}
    assert sum(w.finished for w in workers.workers) == 85
    assert sum(w.failed for w in workers.workers) == 1
    assert workers.pending == 0


def test_percentile_interpolates() -> None:
    assert percentile([], 95) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([float(i) for i in range(101)], 95) == pytest.approx(95.0)

