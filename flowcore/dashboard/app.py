"""The dashboard's ASGI application: server-rendered pages, a JSON API, live updates.

Pages (Jinja2 templates in ``templates/``; every asset in ``static/``, no CDN):

    /runs                       flow runs, filters flow/state/since/until, histogram, pages
    /runs/{id}                  parameters, state history, Gantt per worker, subflows,
                                failed tasks' tracebacks, per-task summary, workers
    /runs/{id}/logs             log lines, live tail, filters level/task
    /tasks                      per task name: counts by state, mean/p95 duration, cache hits
    /flows                      per flow: success rate and durations of its last N runs
    /workers                    running flow runs: busy/idle workers, queue depth
    /deployments[/{flow}/{name}] deployments: schedules, next and last runs, trigger feed,
                                pause/resume and "run now" (:mod:`.deployments`)

A page asked with ``?fragment=NAME`` answers only that part (what the page's script
swaps in when the history changes). The API under ``/api/`` answers JSON for the same
data; ``/api/events`` is a server-sent event stream with one ``change`` event each
time another process commits to the history.

The deployment webhook (:func:`flowcore.deployments.webhook.deployment_routes`:
``POST /api/deployments/{flow}/{name}/runs|pause|resume`` and
``GET /api/deployment-runs/{id}``, with ``Authorization: Bearer <token>``) is mounted
too, so ``flowcore dashboard`` serves it on its own port. The dashboard's own
deployment actions are POSTs guarded against cross-site requests instead (see
:mod:`flowcore.dashboard.deployments`).

Errors: a malformed query parameter answers 400 with the reason, an unknown run 404,
a history that cannot be read 503; pages in HTML, the API in JSON (``{"error": ...}``).
A history that is missing, being created or migrated reads as empty.

Run details come from the store (:meth:`HistoryStore.get_run`); everything else from
:mod:`flowcore.dashboard.queries`, the only place with SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flowcore.dashboard.deployments import DeploymentPages, wants_json
from flowcore.dashboard.queries import (
    ChangeWatcher,
    HistoryQueries,
    RunFilter,
    file_identity,
    parse_int,
    parse_state,
    parse_time,
    state_type_of,
    summarise_tasks,
    worker_label,
)
from flowcore.errors import (
    ActionRefusedError,
    DashboardError,
    DeploymentError,
    DeploymentNotFoundError,
    HistoryError,
    QueryError,
    RunNotFoundError,
)
from flowcore.history.formatting import duration, local_time, run_duration
from flowcore.history.records import FlowRunRecord, TaskRunRecord, iso_time
from flowcore.history.store import HistoryStore, RunDetail

HERE = Path(__file__).resolve().parent
#: task runs up to which the Gantt is drawn as DOM elements (``task-bar``); above it a canvas
DOM_BAR_LIMIT = 2000
#: failed task runs whose tracebacks the run page shows
SHOW_FAILED = 50
#: log lines a logs page or ``/api/runs/{id}/logs`` answers at most (``?limit=``)
MAX_LOG_LINES = 100_000
#: seconds between two looks at the history in an event stream
POLL_S = 0.5
#: seconds between keep-alive comments in an event stream
KEEPALIVE_S = 15.0
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

_log = logging.getLogger("flowcore.dashboard")


# -- the Gantt model -----------------------------------------------------------------------


@dataclass(slots=True)
class GanttBar:
    """One task run (or subflow run) on the timeline; ``left``/``width`` in percent."""

    id: str
    name: str
    task: str
    state: str
    state_type: str
    worker: str
    left: float
    width: float
    attempts: int
    start: float | None
    end: float | None


@dataclass(slots=True)
class GanttLane:
    worker: str
    bars: list[GanttBar] = field(default_factory=list)


@dataclass(slots=True)
class Gantt:
    """A flow run's task runs, one lane per worker, from ``start`` to ``end``.

    ``canvas``: too many runs for DOM bars; the page draws them on a canvas from
    ``/api/runs/{id}/timeline`` and ``lanes`` holds no bars.
    """

    start: float
    end: float
    lanes: list[GanttLane]
    subflows: list[GanttBar]
    placed: int
    pending: int
    canvas: bool

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        """(percent, label) marks of the time axis, from the run's start."""
        span = self.end - self.start
        return [(100.0 * i / count, duration(span * i / count, " ")) for i in range(count + 1)]


def _bar(task: TaskRunRecord | FlowRunRecord, start: float, span: float, now: float, worker: str,
         task_name: str) -> GanttBar:
    begin = task.start if task.start is not None else start
    finish = task.end if task.end is not None else (now if not task.is_final() else begin)
    left = 100.0 * (begin - start) / span
    width = max(100.0 * (finish - begin) / span, 0.15)
    return GanttBar(
        task.id, task.name, task_name, task.state, task.state_type, worker,
        round(min(max(left, 0.0), 99.85), 4), round(min(width, 100.0 - min(max(left, 0.0), 99.85)), 4),
        task.attempts, task.start, task.end,
    )


def build_gantt(detail: RunDetail, children: Sequence[FlowRunRecord] = (), now: float | None = None,
                dom_limit: int = DOM_BAR_LIMIT) -> Gantt:
    """The timeline of ``detail``: task runs that started, in one lane per worker (in
    the order workers were first used), and the direct subflow runs in their own lane."""
    current = time.time() if now is None else now
    run = detail.run
    started = [t for t in detail.task_runs if t.start is not None]
    pending = len(detail.task_runs) - len(started)
    begin_candidates = [t for t in (run.start, *(t.start for t in started)) if t is not None]
    start = min(begin_candidates) if begin_candidates else current
    ends = [run.end if run.end is not None else (current if not run.is_final() else start)]
    # a run without an end lasts until now only while it is not final (a task run of a
    # killed flow is read as Crashed with no end: it ends where it started, as its bar)
    ends += [t.end if t.end is not None else (current if not t.is_final() else t.start or start) for t in started]
    ends += [c.end if c.end is not None else (current if not c.is_final() else c.start or start) for c in children]
    end = max(ends)
    span = max(end - start, 1e-3)
    canvas = len(started) > dom_limit
    lanes: dict[str, GanttLane] = {}
    for task in started:
        worker = worker_label(task.worker)
        lane = lanes.get(worker)
        if lane is None:
            lane = lanes[worker] = GanttLane(worker)
        if not canvas:
            lane.bars.append(_bar(task, start, span, current, worker, task.task))
    subflows = [_bar(c, start, span, current, "subflows", c.flow) for c in children if c.start is not None]
    return Gantt(start, start + span, list(lanes.values()), subflows, len(started), pending, canvas)


def timeline_json(detail: RunDetail, now: float | None = None) -> dict[str, Any]:
    """The columns the canvas Gantt draws: lanes, and per task run its lane index,
    start and end (seconds from the run's start), state, attempts, task index, id."""
    current = time.time() if now is None else now
    gantt = build_gantt(detail, now=current, dom_limit=-1)
    lane_index = {lane.worker: i for i, lane in enumerate(gantt.lanes)}
    tasks: dict[str, int] = {}
    columns: dict[str, list[Any]] = {k: [] for k in ("lane", "start", "end", "state", "attempts", "task", "id")}
    for task in detail.task_runs:
        if task.start is None:
            continue
        finish = task.end if task.end is not None else (current if not task.is_final() else task.start)
        columns["lane"].append(lane_index[worker_label(task.worker)])
        columns["start"].append(round(task.start - gantt.start, 6))
        columns["end"].append(round(finish - gantt.start, 6))
        columns["state"].append(task.state)
        columns["attempts"].append(task.attempts)
        columns["task"].append(tasks.setdefault(task.task, len(tasks)))
        columns["id"].append(task.id)
    return {
        "run_id": detail.run.id, "start": iso_time(gantt.start), "span_s": round(gantt.end - gantt.start, 6),
        "lanes": [lane.worker for lane in gantt.lanes], "tasks": list(tasks), "pending": gantt.pending,
        "bars": columns,
    }


# -- formatting --------------------------------------------------------------------------





def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


_STATE_ORDER = ("Completed", "Cached", "Running", "Pending", "Failed", "TimedOut", "NotRun", "Crashed", "Cancelled")


def _ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    names = sorted(counts, key=lambda n: (_STATE_ORDER.index(n) if n in _STATE_ORDER else 99, n))
    return [(n, counts[n]) for n in names]


def clock_zone(now: float | None = None) -> tuple[str, str]:
    """The zone the pages' times are shown in (this machine's, as :func:`local_time`
    uses): its abbreviation now and its UTC offset, ``("CET", "+01:00")``."""
    moment = time.localtime(time.time() if now is None else now)
    offset = time.strftime("%z", moment)
    return time.strftime("%Z", moment), f"{offset[:3]}:{offset[3:]}"


def asset_versions() -> dict[str, str]:
    """Per file in ``static/``, a short hash of its content: the pages ask for
    ``/static/NAME?v=HASH``, so that a browser never runs a cached script or style of
    another flowcore version against these pages."""
    import hashlib

    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in sorted((HERE / "static").iterdir()) if path.is_file()}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["clock_zone"] = clock_zone
    env.globals["asset_version"] = asset_versions()
    env.filters.update(
        local=local_time, duration=lambda seconds: duration(seconds, " "),
        run_duration=lambda run: run_duration(run, " "), percent=_percent,
        counts=_ordered_counts, state_type=state_type_of, worker=worker_label,
        pretty=lambda value: json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False),
        # JSON as text in HTML (autoescape escapes it once); Jinja's ``tojson`` is for
        # <script> blocks and shows ``<`` and ``ü`` as \u003c and \u00fc
        json=lambda value: json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False),
    )
    return env


# -- the application -----------------------------------------------------------------------


class Dashboard:
    """What the routes share: the store (run details), the SQL reads, the templates.

    ``history_path``: the SQLite file that :class:`HistoryQueries` reads. Raises
    :class:`~flowcore.errors.DashboardError` when the store is not SQLite and no path
    is given.

    The dashboard follows the file at that path: when it is replaced (moved aside and
    started anew, as flowcore advises for a corrupt history) or removed, the next
    request reads the file now there (see :meth:`follow_file`); ``store`` is then a
    store of the dashboard's own over it (None while there is no file).
    """

    def __init__(self, store: HistoryStore, history_path: Path | None = None, *, poll_s: float = POLL_S) -> None:
        if history_path is None:
            path = getattr(store, "path", None)
            if not isinstance(path, Path):
                raise DashboardError(
                    f"the dashboard reads SQLite run histories; the configured store {store!r} "
                    "is not one (set FLOWCORE_HISTORY_STORE=sqlite)"
                )
            history_path = path
        self.store: HistoryStore | None = store
        self.path = history_path
        self.queries = HistoryQueries(history_path)
        self.env = _environment()
        self.poll_s = poll_s
        #: set by close(): open event streams end
        self.closed = False
        #: the history file ``store`` reads, and how many times another one replaced it
        self._identity = file_identity(history_path)
        self.generation = 0
        #: stores the dashboard opened itself (closed by close(), not while requests may use them)
        self._opened: list[HistoryStore] = []
        self._follow_lock = threading.Lock()

    def follow_file(self) -> None:
        """Read the history file now at :attr:`path` when it is not the one ``store``
        opened: a store over the new one (none while the path is empty), and
        :attr:`generation` counts up so that other stores over the file reopen too.
        :class:`HistoryQueries` follows the file by itself. Raises HistoryError for a
        new file that cannot be used (the next request tries again)."""
        identity = file_identity(self.path)
        if identity == self._identity:
            return
        with self._follow_lock:
            identity = file_identity(self.path)
            if identity == self._identity:
                return
            store = None
            if identity is not None:
                from flowcore.history.sqlite import SQLiteStore

                store = SQLiteStore(self.path)
                self._opened.append(store)
            self.store, self._identity = store, identity
            self.generation += 1

    def close(self) -> None:
        self.closed = True
        self.queries.close()
        for store in self._opened:
            store.close()
        self._opened.clear()

    # -- helpers --------------------------------------------------------------------------
    def render(self, request: Request, template: str, context: dict[str, Any], *,
               fragments: Sequence[str] = (), status: int = 200,
               headers: dict[str, str] | None = None) -> HTMLResponse:
        """The page ``template``, or with ``?fragment=NAME`` (one of ``fragments``) only
        the partial ``_NAME.html``."""
        fragment = request.query_params.get("fragment")
        if fragment:
            if fragment not in fragments:
                raise QueryError(f"fragment: {fragment!r} is not a part of this page; use one of {', '.join(fragments) or '(none)'}")
            template = f"_{fragment}.html"
        page = self.env.get_template(template).render(request=request, path=request.url.path, **context)
        return HTMLResponse(page, status_code=status, headers=headers)

    def detail(self, run_id: str) -> RunDetail:
        """The store's run detail; RunNotFoundError for an unknown id."""
        if self.store is None:
            raise RunNotFoundError(f"no flow run {run_id!r}: there is no run history at {self.path} (any more)")
        return self.store.get_run(run_id)

    def run_filter(self, request: Request) -> RunFilter:
        q = request.query_params
        now = time.time()
        return RunFilter(
            flow=(q.get("flow") or "").strip() or None,
            state=parse_state(q.get("state")),
            since=parse_time(q.get("since"), "since", now),
            until=parse_time(q.get("until"), "until", now),
        )

    # -- pages --------------------------------------------------------------------------
    def runs_page(self, request: Request) -> Response:
        q = request.query_params
        where = self.run_filter(request)
        page = parse_int(q.get("page"), "page", 1, 1, 10**9)
        per_page = parse_int(q.get("per_page"), "per_page", 50, 1, 500)
        runs = self.queries.runs_page(where, page, per_page)
        histogram = self.queries.histogram(where, parse_int(q.get("bins"), "bins", 60, 1, 500))
        kept = {k: v for k, v in q.items() if k in ("flow", "state", "since", "until", "per_page") and v}
        return self.render(request, "runs.html", {
            "page": runs, "histogram": histogram, "flows": self.queries.flow_names(),
            "filters": {k: q.get(k, "") for k in ("flow", "state", "since", "until")},
            "query": lambda **extra: "?" + urllib.parse.urlencode({**kept, **extra}),
            "states": ["Running", "Completed", "Failed", "TimedOut", "Crashed", "Cancelled"],
            "live_query": "?" + urllib.parse.urlencode({**kept, "page": page}),
        }, fragments=("runs_table", "histogram"))

    def run_page(self, request: Request) -> Response:
        detail = self.detail(request.path_params["run_id"])
        run = detail.run
        children = self.queries.children(run.id)
        gantt = build_gantt(detail, [c for level, c in children if level == 1])
        failed = [t for t in detail.task_runs if t.state_type in ("FAILED", "CRASHED") and t.state != "NotRun"]
        retried = sum(1 for t in detail.task_runs if t.attempts > 1)
        workers = self.queries.workers(run)
        parent = self.queries.flow_run(run.parent_id) if run.parent_id else None
        headers = {"X-Flowcore-Final": "1"} if run.is_final() else None
        return self.render(request, "run.html", {
            "detail": detail, "run": run, "gantt": gantt, "children": children,
            "failed": failed[:SHOW_FAILED], "failed_total": len(failed), "retried": retried,
            "summaries": summarise_tasks(detail.task_runs), "workers": workers, "parent": parent,
        }, fragments=("run_live",), headers=headers)

    def logs_page(self, request: Request) -> Response:
        detail = self.detail(request.path_params["run_id"])
        q = request.query_params
        level_name, level = _level(q.get("level"))
        task = (q.get("task") or "").strip() or None
        limit = parse_int(q.get("limit"), "limit", 1000, 1, MAX_LOG_LINES)
        after_id = parse_int(q.get("after_id"), "after_id", 0, 0, 2**62)
        records = self.queries.logs_tail(detail.run.id, level=level, task=task, after_id=after_id, limit=limit)
        # the page shows the newest `limit` lines: say so when there are older ones
        total = (self.queries.logs_count(detail.run.id, level=level, task=task)
                 if len(records) == limit and not after_id else len(records))
        more = "?" + urllib.parse.urlencode({k: v for k, v in (
            ("level", level_name), ("task", task), ("limit", str(min(total, MAX_LOG_LINES)))) if v})
        # The live tail asks this page for its new lines (?fragment=log_lines&after_id=N),
        # so they are rendered here, on the same clock and in the same format as the rest.
        tail = f"/runs/{detail.run.id}/logs?" + urllib.parse.urlencode(
            {k: v for k, v in (("level", level_name), ("task", task), ("fragment", "log_lines")) if v})
        return self.render(request, "logs.html", {
            "run": detail.run, "records": records, "level": level_name or "", "task": task or "",
            "tasks": self.queries.log_tasks(detail.run.id), "levels": list(LEVELS),
            "after_id": records[-1].id if records else 0, "tail_src": tail,
            "total": total, "more_href": f"/runs/{detail.run.id}/logs{more}", "max_lines": MAX_LOG_LINES,
        }, fragments=("log_lines",))

    def tasks_page(self, request: Request) -> Response:
        flow, since, until, since_text = self._task_window(request)
        summaries = self.queries.task_summaries(flow=flow, since=since, until=until)
        return self.render(request, "tasks.html", {
            "summaries": summaries, "flows": self.queries.flow_names(),
            "filters": {"flow": flow or "", "since": since_text, "until": request.query_params.get("until", "")},
        })

    def flows_page(self, request: Request) -> Response:
        last = parse_int(request.query_params.get("last"), "last", 20, 1, 1000)
        return self.render(request, "flows.html", {"summaries": self.queries.flow_summaries(last), "last": last},
                           fragments=("flows_table",))

    def workers_page(self, request: Request) -> Response:
        views = [self.queries.workers(run) for run in self.queries.running_runs()]
        return self.render(request, "workers.html", {"views": views}, fragments=("workers_list",))

    def _task_window(self, request: Request) -> tuple[str | None, float | None, float | None, str]:
        q = request.query_params
        since_text = q.get("since", "1d")
        now = time.time()
        return ((q.get("flow") or "").strip() or None, parse_time(since_text, "since", now),
                parse_time(q.get("until"), "until", now), since_text)

    # -- API ----------------------------------------------------------------------------
    def api_runs(self, request: Request) -> Response:
        q = request.query_params
        where = self.run_filter(request)
        page = parse_int(q.get("page"), "page", 1, 1, 10**9)
        per_page = parse_int(q.get("per_page"), "per_page", 50, 1, 500)
        runs = self.queries.runs_page(where, page, per_page)
        return JSONResponse({
            "total": runs.total, "page": runs.page, "per_page": runs.per_page, "pages": runs.pages,
            "runs": [r.to_json() for r in runs.runs],
        })

    def api_run(self, request: Request) -> Response:
        detail = self.detail(request.path_params["run_id"])
        run = detail.run
        body = run.to_json()
        body.update({
            "parameters": run.parameters, "backend_options": run.backend_options,
            "error": (None if run.error_type is None and run.error_message is None else
                      {"type": run.error_type, "message": run.error_message, "traceback": run.traceback}),
            "states": [s.to_json() for s in run.states],
            "task_counts": dict(run.task_counts),
            "subflows": [{"depth": level, **c.to_json()} for level, c in self.queries.children(run.id)],
            "tasks": [s.to_json() for s in summarise_tasks(detail.task_runs)],
            "task_runs_url": f"/api/runs/{run.id}/task-runs",
            "logs_url": f"/api/runs/{run.id}/logs",
        })
        return JSONResponse(body)

    def api_task_runs(self, request: Request) -> Response:
        detail = self.detail(request.path_params["run_id"])
        q = request.query_params
        offset = parse_int(q.get("offset"), "offset", 0, 0, 10**9)
        limit = parse_int(q.get("limit"), "limit", 1000, 1, 100_000)
        state = (q.get("state") or "").strip().lower()
        task = (q.get("task") or "").strip()
        chosen = [
            t for t in detail.task_runs
            if (not state or state in (t.state.lower(), t.state_type.lower())) and (not task or task in (t.task, t.name))
        ]
        return JSONResponse({
            "run_id": detail.run.id, "total": len(chosen), "offset": offset, "limit": limit,
            "task_runs": [t.to_json() for t in chosen[offset : offset + limit]],
        })

    def api_timeline(self, request: Request) -> Response:
        detail = self.detail(request.path_params["run_id"])
        headers = {"X-Flowcore-Final": "1"} if detail.run.is_final() else None
        return JSONResponse(timeline_json(detail), headers=headers)

    def api_logs(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        full = self.detail(run_id).run.id if len(run_id) != 32 else run_id
        q = request.query_params
        _, level = _level(q.get("level"))
        records = self.queries.logs_tail(
            full, after_id=parse_int(q.get("after_id"), "after_id", 0, 0, 2**62), level=level,
            task=(q.get("task") or "").strip() or None, limit=parse_int(q.get("limit"), "limit", 1000, 1, MAX_LOG_LINES),
        )
        return JSONResponse({
            "run_id": full, "last_id": records[-1].id if records else None,
            "logs": [r.to_json() for r in records],
        })

    def api_workers(self, request: Request) -> Response:
        run = self.detail(request.path_params["run_id"]).run
        return JSONResponse(self.queries.workers(run).to_json())

    def api_tasks(self, request: Request) -> Response:
        run_id = request.query_params.get("run")
        if run_id:
            summaries = summarise_tasks(self.detail(run_id).task_runs)
        else:
            flow, since, until, _ = self._task_window(request)
            summaries = self.queries.task_summaries(flow=flow, since=since, until=until)
        return JSONResponse({"tasks": [s.to_json() for s in summaries]})

    def api_flows(self, request: Request) -> Response:
        last = parse_int(request.query_params.get("last"), "last", 20, 1, 1000)
        return JSONResponse({"flows": [s.to_json() for s in self.queries.flow_summaries(last)]})

    def api_histogram(self, request: Request) -> Response:
        where = self.run_filter(request)
        bins = parse_int(request.query_params.get("bins"), "bins", 60, 1, 500)
        return JSONResponse(self.queries.histogram(where, bins).to_json())


def _level(text: str | None) -> tuple[str | None, int]:
    if text is None or not text.strip():
        return None, 0
    name = text.strip().upper()
    if name in LEVELS:
        return name, LEVELS[name]
    if name.isdigit():
        return name, int(name)
    raise QueryError(f"level: {text!r} is not a log level; use one of {', '.join(LEVELS)} or a number")


def create_app(store: HistoryStore, *, history_path: Path | None = None,
               allowed_hosts: Sequence[str] | None = None, poll_s: float = POLL_S,
               api_token: str | None = None, webhook: bool = True) -> Starlette:
    """The dashboard over ``store`` (SQLite; ``history_path`` is its file when the store
    has no ``path``). ``allowed_hosts``: Host header names accepted (a guard against
    DNS rebinding when bound to loopback); None accepts any. The caller keeps
    ownership of ``store``; the app closes its own read connections on shutdown.

    ``webhook``: also serve the deployment webhook routes, which need
    ``Authorization: Bearer <api_token>``; ``api_token`` defaults to
    ``FLOWCORE_API_TOKEN`` or the token file next to the history (created on first
    use, as ``flowcore worker start`` does)."""
    board = Dashboard(store, history_path, poll_s=poll_s)
    deployments = DeploymentPages(board)

    def page(method: Callable[[Request], Response]) -> Callable[[Request], Any]:
        def follow_then(request: Request) -> Response:
            board.follow_file()
            return method(request)

        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(follow_then, request)

        return endpoint

    async def events(request: Request) -> Response:
        limit = request.query_params.get("timeout")
        try:
            duration = float(limit) if limit else None
        except ValueError:
            raise QueryError(f"timeout: {limit!r} is not a number of seconds") from None
        if duration is not None and not (duration >= 0 and math.isfinite(duration)):
            raise QueryError(f"timeout: {limit!r} is not a number of seconds (0 or more; leave it out for no limit)")
        return StreamingResponse(
            _event_stream(request, board, duration), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def index(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=307)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/") or wants_json(request)

    def error(request: Request, status: int, message: str) -> Response:
        if is_api(request):
            return JSONResponse({"error": message, "status": status}, status_code=status)
        body = board.env.get_template("error.html").render(
            request=request, path=request.url.path, status=status, message=message)
        return HTMLResponse(body, status_code=status)

    async def on_query_error(request: Request, exc: Exception) -> Response:
        return error(request, 400, str(exc))

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return error(request, 404, str(exc))

    async def on_refused(request: Request, exc: Exception) -> Response:
        return error(request, 403, str(exc))

    async def on_deployment_error(request: Request, exc: Exception) -> Response:
        return error(request, 422, str(exc))

    async def on_history_error(request: Request, exc: Exception) -> Response:
        return error(request, 503, f"the run history cannot be read: {exc}")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return error(request, exc.status_code, message)

    routes = [
        Route("/", index),
        Route("/runs", page(board.runs_page)),
        Route("/runs/{run_id}", page(board.run_page)),
        Route("/runs/{run_id}/logs", page(board.logs_page)),
        Route("/tasks", page(board.tasks_page)),
        Route("/flows", page(board.flows_page)),
        Route("/workers", page(board.workers_page)),
        Route("/api/runs", page(board.api_runs)),
        Route("/api/runs/{run_id}", page(board.api_run)),
        Route("/api/runs/{run_id}/task-runs", page(board.api_task_runs)),
        Route("/api/runs/{run_id}/timeline", page(board.api_timeline)),
        Route("/api/runs/{run_id}/logs", page(board.api_logs)),
        Route("/api/runs/{run_id}/workers", page(board.api_workers)),
        Route("/api/tasks", page(board.api_tasks)),
        Route("/api/flows", page(board.api_flows)),
        Route("/api/histogram", page(board.api_histogram)),
        Route("/api/events", events),
        Route("/deployments", page(deployments.list_page)),
        # {flow:path}: a flow name may hold "/" (a deployment name may not), so the
        # deployment is the last segment before the action and the flow all before it
        Route("/deployments/{flow:path}/{name}", page(deployments.detail_page)),
        Route("/deployments/{flow:path}/{name}/{action}", deployments.action, methods=["POST"]),
        Route("/api/deployments", page(deployments.api_list), methods=["GET"]),
        Route("/api/deployments/{flow:path}/{name}", page(deployments.api_detail), methods=["GET"]),
        Route("/api/trigger-feed", page(deployments.api_feed)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if webhook:
        # After the dashboard's own routes: its unauthenticated GET /api/deployments[/...]
        # answer reads (same documents); the webhook's POSTs need the bearer token.
        from flowcore.deployments.webhook import api_token as resolve_token
        from flowcore.deployments.webhook import deployment_routes

        token = api_token if api_token is not None else resolve_token(board.path.parent)[0]
        routes += deployment_routes(board.path, token=token)
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        deployments.close()
        board.close()

    from contextlib import asynccontextmanager

    app = Starlette(
        routes=routes, middleware=middleware, lifespan=asynccontextmanager(lifespan),
        exception_handlers={
            QueryError: on_query_error, RunNotFoundError: on_not_found,
            HistoryError: on_history_error, HTTPException: on_http,
            DeploymentNotFoundError: on_not_found, DeploymentError: on_deployment_error,
            ActionRefusedError: on_refused,
        },
    )
    app.state.dashboard = board
    app.state.deployments = deployments
    return app


async def _event_stream(request: Request, board: Dashboard, duration: float | None) -> AsyncIterator[str]:
    """``retry``, then ``event: change`` each time the history changes, and a comment
    every :data:`KEEPALIVE_S`; ends when the client leaves, after ``duration`` seconds
    when given, or when the dashboard closes."""
    watcher = ChangeWatcher(board.path)
    deadline = None if duration is None else time.monotonic() + duration
    quiet_since = time.monotonic()
    try:
        yield "retry: 2000\n\n"
        watcher.changed()
        while not board.closed:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if await request.is_disconnected():
                break
            await asyncio.sleep(board.poll_s)
            if watcher.changed():
                yield f"event: change\ndata: {json.dumps({'time': time.time()})}\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
    finally:
        watcher.close()


__all__ = ["DOM_BAR_LIMIT", "Dashboard", "Gantt", "GanttBar", "GanttLane", "build_gantt", "create_app", "timeline_json"]
