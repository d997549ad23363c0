"""The dashboard in a real headless browser: Playwright for Python driving Debian's
Chromium (nothing is downloaded: ``playwright install`` is never run).

Install the browser with ``apt-get install chromium`` (or ``chromium-headless-shell``).
Without it these tests skip, saying so; with ``FLOWCORE_REQUIRE_BROWSER=1`` (CI sets
it) a missing browser fails them instead. ``FLOWCORE_CHROMIUM`` names another binary.

The README's screenshots are made here: ``FLOWCORE_SCREENSHOTS=examples/screenshots
.venv/bin/pytest tests/test_dashboard_browser.py -k screenshots`` rewrites them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from dashboard_server import serve_dashboard

from flowcore.history.records import FlowRunWrite, HistoryBatch, StateRecord, TaskRunWrite
from flowcore.history.sqlite import SQLiteStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")
INSTALL = "apt-get install chromium (Debian), or set FLOWCORE_CHROMIUM to a Chromium binary"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]


def _unavailable(reason: str) -> None:
    if os.environ.get("FLOWCORE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (FLOWCORE_REQUIRE_BROWSER=1 makes this a failure); {INSTALL}")
    pytest.skip(f"{reason}; to run the browser tests: {INSTALL}")


def _chromium() -> str | None:
    chosen = os.environ.get("FLOWCORE_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).exists() else None
    return next((path for path in CANDIDATES if Path(path).exists()), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable('playwright for Python is not installed (pip install -e ".[dev]")')
    executable = _chromium()
    if executable is None:
        _unavailable("no Chromium binary found (looked at " + ", ".join(CANDIDATES) + ")")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


FLOW_SCRIPT = """
    import time
    from flowcore import flow, task, get_backend, get_run_logger

    _tries = {}

    @task(retries=1)
    def fetch(source: str) -> str:
        _tries[source] = _tries.get(source, 0) + 1
        get_run_logger().info("fetching %s, attempt %d", source, _tries[source])
        time.sleep(0.4)
        if _tries[source] == 1:
            raise ConnectionError(f"{source} did not answer")
        return source

    @task
    def transform(i: int) -> int:
        get_run_logger().info("transforming item %d", i)
        time.sleep(0.5)
        if i == 5:
            raise ValueError(f"item {i} is malformed")
        return i * 10

    @flow(name="browser-etl", backend=get_backend("threads", max_workers=2))
    def browser_etl(n: int = 10) -> int:
        time.sleep(1.5)  # time for the test to watch the run appear
        fetch("warehouse")
        results = transform.map(range(n))
        return sum(f.result() for f in results if f.state.is_completed())

    if __name__ == "__main__":
        print(browser_etl())
"""


def _worker_label(worker: dict[str, Any] | None) -> str:
    if worker is None:
        return "(worker not reported)"
    where = f"{worker['host']}:{worker['pid']}" + (f"/{worker['thread']}" if worker["thread"] else "")
    return f"{worker['address']} ({where})" if worker["address"] else where


def test_a_running_flow_appears_live_with_its_gantt_traceback_and_log_tail(page: Page, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve_dashboard(home / "history.db") as served:
        page.goto(served.url + "/runs")
        page.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
        assert page.get_by_test_id("run-row").count() == 0
        marker = page.evaluate("() => (window.__notReloaded = 1)")
        assert marker == 1

        script = tmp_path / "browser_flow.py"
        script.write_text(textwrap.dedent(FLOW_SCRIPT))
        env = {**os.environ, "FLOWCORE_HOME": str(home), "FLOWCORE_HISTORY": "1"}
        process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # 1. The run appears in the open runs page, without a reload, while running.
            row = page.locator('[data-testid="run-row"]')
            deadline = time.monotonic() + 30
            while row.count() == 0:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the run never appeared; the flow script said: {process.communicate()}")
                page.wait_for_timeout(100)
            assert page.evaluate("() => window.__notReloaded") == 1
            run_id = row.first.get_attribute("data-run-id")
            assert run_id is not None
            assert row.first.get_attribute("data-state") == "Running"

            # 2. Its logs tail: lines arrive in the open logs page.
            logs = page.context.new_page()
            logs.goto(f"{served.url}/runs/{run_id}/logs")
            logs.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
            seen_first = logs.get_by_test_id("log-line").count()
            logs.locator('[data-testid="log-line"]', has_text="transforming item 9").wait_for(timeout=60_000)
            assert logs.get_by_test_id("log-line").count() > seen_first
            assert logs.locator('[data-testid="log-line"]', has_text="fetching warehouse, attempt 2").count() == 1

            # The row turns final in the runs page, still without a reload.
            page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"][data-state="Completed"]').wait_for(timeout=60_000)
            assert page.evaluate("() => window.__notReloaded") == 1
        finally:
            _out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err

        # 3. The Gantt: one bar per task run, each on its worker's lane; the retry shows.
        page.goto(f"{served.url}/runs/{run_id}")
        task_runs = served.get(f"/api/runs/{run_id}/task-runs").json()["task_runs"]
        assert len(task_runs) == 11  # fetch + 10 transforms
        bars = page.get_by_test_id("task-bar")
        assert bars.count() == len(task_runs)
        expected = {t["id"]: _worker_label(t["worker"]) for t in task_runs}
        for i in range(bars.count()):
            bar = bars.nth(i)
            run = bar.get_attribute("data-task-run-id")
            assert run in expected
            assert bar.get_attribute("data-worker") == expected[run]
            lane = bar.locator("xpath=ancestor::*[@data-testid='gantt-lane']")
            assert lane.get_attribute("data-worker") == expected[run]
            assert bar.is_visible()
        transform_lanes = {expected[t["id"]] for t in task_runs if t["task"] == "transform"}
        assert len(transform_lanes) == 2  # max_workers=2
        assert page.locator('[data-testid="task-bar"][data-attempts="2"]').count() == 1

        # 4. The failed task's traceback is on the page.
        traceback = page.get_by_test_id("traceback")
        assert traceback.count() == 1 and traceback.is_visible()
        text = traceback.inner_text()
        assert "Traceback (most recent call last)" in text and "ValueError: item 5 is malformed" in text


def _big_history(db: Path, n: int) -> str:
    store = SQLiteStore(db)
    run_id = "d" * 32
    start = time.time() - 600
    flow_run = FlowRunWrite(run_id, "huge", "huge-dddddddd", "Completed", "COMPLETED", parameters=f'{{"n": {n}}}',
                            backend="loky", start=start, end=start + 500,
                            state_entry=StateRecord(start + 500, "COMPLETED", "Completed"))
    tasks = [
        TaskRunWrite(f"{i:032x}", run_id, "step", f"step-{i}", "Failed" if i % 997 == 0 else "Completed",
                     "FAILED" if i % 997 == 0 else "COMPLETED", attempts=2 if i % 500 == 0 else 1, submitted=start,
                     start=start + i * 0.02, end=start + i * 0.02 + 0.05, backend="loky", worker_host="node",
                     worker_pid=2000 + i % 8, error_type="ValueError" if i % 997 == 0 else None,
                     error_message="bad" if i % 997 == 0 else None,
                     traceback="Traceback (most recent call last):\nValueError: bad" if i % 997 == 0 else None)
        for i in range(n)
    ]
    store.write_events(HistoryBatch(flow_runs=[flow_run], task_runs=tasks))
    store.close()
    return run_id


def test_a_20000_task_run_renders_on_a_canvas_without_freezing(page: Page, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    run_id = _big_history(db, 20_000)
    with serve_dashboard(db) as served:
        started = time.monotonic()
        page.goto(f"{served.url}/runs/{run_id}")
        page.get_by_test_id("gantt-canvas-note").wait_for()
        page.wait_for_function("() => { const c = document.querySelector('canvas'); return c && c._timeline; }",
                               timeout=30_000)
        loaded = time.monotonic() - started
        assert page.get_by_test_id("task-bar").count() == 0
        elements = page.evaluate("() => document.querySelectorAll('*').length")
        assert elements < 3000, elements
        painted = page.evaluate(
            "() => { const c = document.querySelector('canvas'); const g = c.getContext('2d');"
            " const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;"
            " for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) n++;"
            " return n; }"
        )
        assert painted > 1000  # coloured bars were drawn
        # The page answers at once afterwards: the main thread is not stuck.
        tick = time.monotonic()
        assert page.evaluate("() => 1 + 1") == 2
        assert time.monotonic() - tick < 2.0
        assert loaded < 30


def _demo_history(home: Path) -> None:
    """A few real runs for the screenshots: ETL runs with a failure, a retry, a subflow."""
    script = home.parent / "demo_flows.py"
    script.write_text(textwrap.dedent("""
        import time
        from flowcore import flow, task, get_backend, get_run_logger

        _tries = {}

        @task(retries=1)
        def fetch(source: str) -> str:
            _tries[source] = _tries.get(source, 0) + 1
            time.sleep(0.05)
            if _tries[source] == 1:
                raise ConnectionError(f"{source} did not answer")
            return source

        @task
        def transform(i: int) -> int:
            get_run_logger().info("transforming item %d", i)
            time.sleep(0.02 + (i % 4) * 0.03)
            if i == 7:
                raise ValueError(f"item {i} is malformed")
            return i

        @flow
        def publish(n: int) -> int:
            return sum(f.result() for f in transform.map(range(n)) if f.state.is_completed())

        @flow(name="nightly-etl", backend=get_backend("threads", max_workers=3))
        def nightly_etl(n: int = 16) -> int:
            fetch("warehouse")
            results = transform.map(range(n))
            publish(4)
            return sum(f.result() for f in results if f.state.is_completed())

        @flow(name="report")
        def report(fail: bool = False) -> str:
            if fail:
                raise RuntimeError("the report template is missing")
            return "ok"

        if __name__ == "__main__":
            for i in range(3):
                nightly_etl(12 + i * 4)
                try:
                    report(fail=i == 1)
                except RuntimeError:
                    pass
    """))
    env = {**os.environ, "FLOWCORE_HOME": str(home), "FLOWCORE_HISTORY": "1"}
    subprocess.run([sys.executable, str(script)], cwd=home.parent, env=env, check=True, capture_output=True,
                   timeout=120)


def test_screenshots_of_the_runs_page_and_a_run_detail(page: Page, tmp_path: Path) -> None:
    target = Path(os.environ.get("FLOWCORE_SCREENSHOTS") or tmp_path)
    if not target.is_absolute():
        target = REPO / target
    target.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    _demo_history(home)
    with serve_dashboard(home / "history.db") as served:
        runs = served.get("/api/runs?flow=nightly-etl").json()["runs"]
        page.goto(served.url + "/runs")
        page.get_by_test_id("run-row").first.wait_for()
        page.screenshot(path=str(target / "dashboard-runs.png"), full_page=True)
        page.goto(f"{served.url}/runs/{runs[0]['id']}")
        page.get_by_test_id("task-bar").first.wait_for()
        page.screenshot(path=str(target / "dashboard-run.png"), full_page=True)
    for name in ("dashboard-runs.png", "dashboard-run.png"):
        data = (target / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000



def test_the_deployments_page_pauses_and_runs_now_without_a_reload(page: Page, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard_server import deployment_flows

    from flowcore.deployments import Deployment
    from flowcore.deployments.store import DeploymentStore
    from flowcore.schedules import CronSchedule

    home = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    flows = deployment_flows(tmp_path)
    dep_id = Deployment.build_from_flow(
        flows.etl_workflow, "nightly", schedule=CronSchedule("0 2 * * *", timezone="Europe/Berlin"),
    ).apply()
    with serve_dashboard(home / "history.db", api_token="browser-test-token") as served:
        page.goto(served.url + "/runs")
        page.get_by_test_id("nav-deployments").click()
        page.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
        row = page.locator('[data-testid="deployment-row"][data-deployment="etl workflow/nightly"]')
        assert row.get_attribute("data-paused") == "false"
        assert row.get_by_test_id("next-run").count() == 3
        assert "daily at 02:00 (Europe/Berlin)" in row.inner_text()
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        row.get_by_test_id("pause-button").click()
        page.locator('[data-testid="deployment-row"][data-deployment="etl workflow/nightly"][data-paused="true"]'
                     ).wait_for(timeout=10_000)
        assert row.get_by_test_id("paused-badge").is_visible() and row.get_by_test_id("resume-button").is_visible()
        assert row.get_by_test_id("next-run").count() == 0
        page.get_by_test_id("trigger-event").filter(has_text="paused").wait_for(timeout=10_000)
        assert page.evaluate("window.__sameDocument") is True

        row.get_by_role("link", name="etl workflow/nightly").click()
        page.get_by_test_id("run-now-button").wait_for()
        assert page.get_by_test_id("next-run").count() == 0  # paused
        page.get_by_test_id("resume-button").click()
        page.locator('[data-testid="next-run"]').nth(9).wait_for(timeout=10_000)  # the next 10, live
        page.evaluate("window.__sameDocument = true")
        page.get_by_test_id("run-now-parameters").fill('{"n": 9, "label": "from the browser"}')
        page.get_by_test_id("run-now-button").click()
        page.get_by_test_id("action-result").filter(has_text="queued run").wait_for(timeout=10_000)
        queued = page.locator('[data-testid="deployment-run"][data-state="Scheduled"]')
        queued.wait_for(timeout=10_000)
        assert page.evaluate("window.__sameDocument") is True
        with DeploymentStore(home / "history.db") as store:
            (run,) = store.runs(dep_id)
        assert run.kind == "manual" and run.parameters == {"n": 9, "label": "from the browser"}
        assert queued.get_attribute("data-run-id") == run.id

        page.get_by_test_id("run-now-parameters").fill("{not json")
        page.get_by_test_id("run-now-button").click()
        page.get_by_test_id("action-result").filter(has_text="not JSON").wait_for(timeout=10_000)


def test_a_very_long_flow_name_or_parameter_keeps_every_page_within_the_window(page: Page, tmp_path: Path) -> None:
    # Names and values of any length: the pages wrap or truncate them; the runs table
    # keeps its columns on screen, no page scrolls sideways.
    db = tmp_path / "history.db"
    name = "a_very_long_flow_name_" * 14
    start = time.time() - 60
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(flow_runs=[
        FlowRunWrite("e" * 32, name, name + "-eeeeeeee", "Completed", "COMPLETED",
                     parameters='{"blob": "' + "x" * 5000 + '", "path": "' + "/very/long/path" * 100 + '"}',
                     backend="threads", start=start, end=start + 2,
                     state_entry=StateRecord(start + 2, "COMPLETED", "Completed")),
    ], task_runs=[
        TaskRunWrite("f" * 32, "e" * 32, "t" * 300, "t" * 300 + "-0", "Completed", "COMPLETED", submitted=start,
                     start=start + 0.5, end=start + 1.5, backend="threads", worker_host="node", worker_pid=7),
    ]))
    store.close()
    with serve_dashboard(db) as served:
        for path in ("/runs", "/flows", "/tasks", f"/runs/{'e' * 32}", f"/runs/{'e' * 32}/logs"):
            page.goto(served.url + path)
            widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"{path} scrolls sideways: {widths[0]} px wide in a {widths[1]} px window"
        page.goto(served.url + "/runs")
        last_cell = page.get_by_test_id("run-row").locator("td").last.bounding_box()
        assert last_cell is not None and last_cell["x"] + last_cell["width"] <= 1300
        page.set_viewport_size({"width": 800, "height": 900})  # half a laptop screen
        for path in ("/runs", "/flows", "/tasks"):
            page.goto(served.url + path)
            widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"{path} at 800 px scrolls sideways: {widths[0]} px wide"


def test_log_lines_tailed_live_read_like_the_lines_the_page_came_with(browser: Browser, tmp_path: Path) -> None:
    # The browser is in another time zone than the dashboard's machine: a line that
    # arrives by the live tail shows its time as the page's own lines do (same clock,
    # same format), not in the browser's locale ("12/3/2026, 12:16:50 PM").
    from flowcore.history.formatting import local_time
    from flowcore.history.records import LogWrite

    db = tmp_path / "history.db"
    run_id = "a" * 32
    start = time.time() - 30
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(
        flow_runs=[FlowRunWrite(run_id, "tail", "tail-aaaaaaaa", "Running", "RUNNING", backend="threads",
                                start=start, host=os.uname().nodename, pid=os.getpid(),
                                state_entry=StateRecord(start, "RUNNING", "Running"))],
        logs=[LogWrite(run_id, None, start + 1, 20, "INFO", "flowcore", "first line")],
    ))
    context = browser.new_context(viewport={"width": 1300, "height": 900}, timezone_id="Pacific/Kiritimati",
                                  locale="en-US")
    try:
        with serve_dashboard(db) as served:
            page = context.new_page()
            page.goto(f"{served.url}/runs/{run_id}/logs")
            page.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
            later = time.time()
            store.write_events(HistoryBatch(logs=[LogWrite(run_id, None, later, 30, "WARNING", "flowcore",
                                                           "<b>second</b> line")]))
            page.locator('[data-testid="log-line"]', has_text="second").wait_for(timeout=15_000)
            stamps = page.locator('[data-testid="log-line"] .ts').all_inner_texts()
            assert stamps == [local_time(start + 1), local_time(later)]
            assert page.locator('[data-testid="log-line"] b').count() == 0  # the message is text
            assert page.get_by_test_id("log-line").last.get_attribute("data-level") == "WARNING"
    finally:
        store.close()
        context.close()


def test_the_canvas_time_axis_reads_like_the_dom_one(page: Page, tmp_path: Path) -> None:
    # A big map that took 40 ms: the canvas axis is labelled as the DOM Gantt's is
    # (0 ms, 8 ms, ... 40 ms), not "0.00 s, 0.01 s, 0.01 s" (repeated, rounded away).
    from flowcore.history.formatting import duration

    db = tmp_path / "history.db"
    run_id = "c" * 32
    start = time.time() - 60
    n = 3000
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(
        flow_runs=[FlowRunWrite(run_id, "quick", "quick-cccccccc", "Completed", "COMPLETED", backend="loky",
                                start=start, end=start + 0.04,
                                state_entry=StateRecord(start + 0.04, "COMPLETED", "Completed"))],
        task_runs=[TaskRunWrite(f"{i:032x}", run_id, "inc", f"inc-{i}", "Completed", "COMPLETED", submitted=start,
                                start=start + 0.04 * i / n, end=start + 0.04 * (i + 1) / n, backend="loky",
                                worker_host="node", worker_pid=100 + i % 2) for i in range(n)],
    ))
    store.close()
    with serve_dashboard(db) as served:
        page.goto(f"{served.url}/runs/{run_id}")
        canvas = page.get_by_test_id("gantt-canvas")
        page.wait_for_function("() => document.querySelector('canvas').getAttribute('data-ticks')", timeout=10_000)
        ticks = (canvas.get_attribute("data-ticks") or "").split("|")
        span = page.evaluate("() => document.querySelector('canvas')._timeline.span_s")
        assert ticks == [duration(span * i / 5, " ") for i in range(6)]
        assert len(set(ticks)) == 6, ticks


def test_the_gantt_axis_labels_stay_inside_the_timeline(page: Page, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    run_id = "b" * 32
    start = time.time() - 60
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(
        flow_runs=[FlowRunWrite(run_id, "axis", "axis-bbbbbbbb", "Completed", "COMPLETED", backend="threads",
                                start=start, end=start + 20.2,
                                state_entry=StateRecord(start + 20.2, "COMPLETED", "Completed"))],
        task_runs=[TaskRunWrite(f"{i:032x}", run_id, "t", f"t-{i}", "Completed", "COMPLETED", submitted=start,
                                start=start + i, end=start + i + 1, worker_host="node", worker_pid=1) for i in range(20)],
    ))
    store.close()
    with serve_dashboard(db) as served:
        page.goto(f"{served.url}/runs/{run_id}")
        box = page.get_by_test_id("gantt").bounding_box()
        last = page.locator(".gantt .axis span").last
        assert last.inner_text() == "20.2 s"
        mark = last.bounding_box()
        assert box is not None and mark is not None
        assert mark["x"] + mark["width"] <= box["x"] + box["width"], (mark, box)


HIDE = ("() => { Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }")
SHOW = ("() => { Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }")


def test_many_open_tabs_do_not_use_up_the_browsers_connections(browser: Browser, tmp_path: Path) -> None:
    # A browser keeps 6 HTTP/1.1 connections per host; each open page's live stream
    # holds one. Pages in background tabs let theirs go, so a 7th tab still loads
    # (it hung) and a tab brought back catches up with what it missed.
    db = tmp_path / "history.db"
    start = time.time() - 60
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(flow_runs=[FlowRunWrite("1" * 32, "tabs", "tabs-1", "Completed", "COMPLETED",
                                                            start=start, end=start + 1)]))
    context = browser.new_context()
    try:
        with serve_dashboard(db) as served:
            tabs = []
            for _ in range(6):
                tab = context.new_page()
                tab.goto(f"{served.url}/runs")
                tab.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
                tab.evaluate(HIDE)  # the user opens the next tab: this one goes to the background
                tabs.append(tab)
            seventh = context.new_page()
            seventh.goto(f"{served.url}/runs", timeout=10_000)
            seventh.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
            assert seventh.get_by_test_id("run-row").count() == 1
            store.write_events(HistoryBatch(flow_runs=[FlowRunWrite("2" * 32, "tabs", "tabs-2", "Completed",
                                                                    "COMPLETED", start=start + 5, end=start + 6)]))
            seventh.locator('[data-testid="run-row"][data-run-id="' + "2" * 32 + '"]').wait_for(timeout=10_000)
            first = tabs[0]
            assert first.get_by_test_id("run-row").count() == 1  # in the background: not updated
            first.evaluate(SHOW)
            first.locator('[data-testid="run-row"][data-run-id="' + "2" * 32 + '"]').wait_for(timeout=10_000)
            first.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
    finally:
        store.close()
        context.close()


def test_the_log_tail_keeps_every_line_when_thousands_arrive_at_once(page: Page, tmp_path: Path) -> None:
    from flowcore.history.records import LogWrite

    db = tmp_path / "history.db"
    run_id = "5" * 32
    start = time.time() - 30
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(
        flow_runs=[FlowRunWrite(run_id, "chatty", "chatty-55555555", "Running", "RUNNING", backend="threads",
                                start=start, host=os.uname().nodename, pid=os.getpid(),
                                state_entry=StateRecord(start, "RUNNING", "Running"))],
        logs=[LogWrite(run_id, None, start + 1, 20, "INFO", "flowcore", "line 0")],
    ))
    try:
        with serve_dashboard(db) as served:
            page.goto(f"{served.url}/runs/{run_id}/logs")
            page.get_by_test_id("live-status").filter(has_text="live").wait_for(timeout=10_000)
            store.write_events(HistoryBatch(logs=[
                LogWrite(run_id, None, start + 2, 20, "INFO", "flowcore", f"line {i}") for i in range(1, 2501)]))
            page.locator('[data-testid="log-line"]', has_text="line 2500").wait_for(timeout=20_000)
            messages = page.locator('[data-testid="log-line"] .msg').all_inner_texts()
            assert messages == [f"line {i}" for i in range(2501)]
    finally:
        store.close()
