"""The dashboard's deployments: pages, JSON reads and the actions that change them.

Pages (live over the same ``/api/events`` stream as the rest of the dashboard):

    /deployments                     every deployment (schedules in words with their time
                                     zone, paused badge, next 3 fire times, last runs,
                                     policies) and the trigger feed of all of them
    /deployments/{flow}/{name}       one deployment: next 10 fire times, last runs,
                                     parameters, policies, triggers, its trigger feed,
                                     "run now" with JSON parameters

JSON (the same documents as ``flowcore deployment ls|inspect --json``, built by
:mod:`flowcore.deployments.views`): ``GET /api/deployments``,
``GET /api/deployments/{flow}/{name}``, ``GET /api/trigger-feed``.

Actions (``POST /deployments/{flow}/{name}/pause|resume|run``) change the store through
the functions the CLI uses (:meth:`DeploymentStore.set_paused`,
:meth:`DeploymentStore.request_run` with ``kind="manual"``). They are refused with
:class:`~flowcore.errors.ActionRefusedError` (403) unless all of these hold:

* the method is POST (the routes take nothing else: a link or an ``<img>`` cannot act);
* the request carries this process's action token (:attr:`DeploymentPages.token`,
  random per dashboard process and embedded in every page) as the ``X-Flowcore-CSRF``
  header or the ``csrf`` form field: another site cannot read it;
* its ``Origin`` header (or, without one, its ``Referer``) names this dashboard's own
  host and port, when the browser sends one;
* it comes from a loopback address (the dashboard is a local tool: from another
  machine, use the webhook API with its bearer token).

Bodies are ``application/x-www-form-urlencoded`` (a plain HTML form) or JSON. A form
post without ``Accept: application/json`` is answered with a 303 redirect back to the
page; otherwise JSON.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from flowcore.errors import ActionRefusedError, DeploymentNotFoundError, QueryError

if TYPE_CHECKING:
    from flowcore.dashboard.app import Dashboard
    from flowcore.deployments.store import DeploymentRecord, DeploymentStore

#: the header and the form field that carry the action token
TOKEN_HEADER = "x-flowcore-csrf"
TOKEN_FIELD = "csrf"
#: the largest action body read (parameters are small; a bigger body is refused)
MAX_BODY = 1_000_000
#: the longest ``request_id`` (an idempotency key for "run now") kept
MAX_REQUEST_ID = 200
ACTIONS = ("pause", "resume", "run")


def _zone_time(timestamp: float | None, zone: str | None) -> str:
    """``2026-12-01 02:00:00 CET`` in ``zone`` (the schedule's), or local time without one."""
    if timestamp is None:
        return "-"
    from datetime import datetime

    if zone:
        from zoneinfo import ZoneInfo

        try:
            return datetime.fromtimestamp(timestamp, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")
        except (KeyError, ValueError, OSError):
            pass
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _origin_of(url: str) -> str | None:
    """``host:port`` of an absolute http(s) URL as it would appear in a Host header."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return None
    return parsed.netloc.rpartition("@")[2].lower()


def _host_of(request: Request) -> str:
    return request.headers.get("host", "").lower()


def check_same_origin(request: Request) -> None:
    """Raise ActionRefusedError when the request's ``Origin`` (or, without one, its
    ``Referer``) is another site than the ``Host`` it was sent to. A request with
    neither (curl, a script) passes this check; the action token still applies."""
    host = _host_of(request)
    origin = request.headers.get("origin")
    if origin is not None:
        if origin.strip().lower() == "null" or _origin_of(origin) != host:
            raise ActionRefusedError(
                f"cross-origin request refused: Origin {origin!r} is not this dashboard ({host}); "
                "dashboard actions are taken from the dashboard's own pages"
            )
        return
    referer = request.headers.get("referer")
    if referer and _origin_of(referer) != host:
        raise ActionRefusedError(
            f"cross-origin request refused: it was sent from {referer!r}, not from this dashboard ({host})"
        )


def check_loopback_client(request: Request) -> None:
    """Raise ActionRefusedError for a client that is not on this machine."""
    from flowcore.dashboard.command import is_loopback

    client = request.client.host if request.client else ""
    if not is_loopback(client):
        raise ActionRefusedError(
            f"dashboard actions are taken from this machine only (the request came from {client or 'unknown'}); "
            "from elsewhere use the webhook API: POST /api/deployments/{flow}/{name}/runs|pause|resume "
            "with 'Authorization: Bearer <token>'"
        )


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """An action's fields: a urlencoded form (every value a string) or a JSON object.
    QueryError for anything else."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        return {}
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise QueryError(f"the body is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise QueryError("the body must be a JSON object such as {\"parameters\": {\"n\": 3}}")
        return data
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise QueryError("the form body is not UTF-8") from None
        return dict(pairs)
    raise QueryError(f"unsupported Content-Type {content_type!r}; send a form or application/json")


def parse_parameters(value: Any) -> dict[str, Any]:
    """The ``parameters`` of "run now": a JSON object, given as text (a form field) or
    as an object (a JSON body); empty means the deployment's defaults. QueryError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise QueryError(f"parameters: not JSON ({exc}); write an object such as {{\"n\": 3}}") from None
    if not isinstance(value, dict):
        raise QueryError("parameters: must be a JSON object such as {\"n\": 3}")
    return value


def wants_json(request: Request) -> bool:
    """True when the client asked for JSON (the page's script does; a plain form does not)."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


class DeploymentPages:
    """The deployment pages, API and actions of one dashboard (see the module docstring).

    The deployment store over the dashboard's history file is opened on first use
    (opening it migrates the file to the deployment tables, as every flowcore command
    that uses deployments does) and closed by :meth:`close`. ``token``: the action
    token (random when not given)."""

    def __init__(self, board: Dashboard, *, token: str | None = None) -> None:
        self.board = board
        self.token = token if token is not None else secrets.token_urlsafe(32)
        self._lock = threading.Lock()
        self._store: DeploymentStore | None = None
        self._generation = board.generation
        self._retired: list[DeploymentStore] = []
        board.env.globals["csrf_token"] = self.token
        board.env.filters["zone_time"] = _zone_time
        board.env.filters["path_part"] = lambda value: urllib.parse.quote(str(value), safe="")

    def store(self) -> DeploymentStore:
        """The deployment store over the history file now at the board's path (a new
        one after the file was replaced: see :meth:`Dashboard.follow_file`)."""
        with self._lock:
            if self._store is not None and self._generation != self.board.generation:
                self._retired.append(self._store)  # other requests may still use it
                self._store = None
            if self._store is None:
                from flowcore.deployments.store import DeploymentStore

                self._store = DeploymentStore(self.board.path)
                self._generation = self.board.generation
            return self._store

    def close(self) -> None:
        with self._lock:
            for store in (*self._retired, *([self._store] if self._store is not None else [])):
                store.close()
            self._retired.clear()
            self._store = None

    def find(self, request: Request) -> DeploymentRecord:
        """The deployment named by the ``flow`` and ``name`` path parameters;
        DeploymentNotFoundError otherwise."""
        return self.store().find(f"{request.path_params['flow']}/{request.path_params['name']}")

    def _refuse_get_of_an_action(self, request: Request) -> None:
        """``GET /deployments/{flow}/{name}/pause`` reaches the page route (a flow name
        may hold "/"): when ``{flow}/{name}`` is a deployment and the last part an
        action, answer 405 as for any action URL; otherwise return."""
        flow, action = request.path_params["flow"], request.path_params["name"]
        if action not in ACTIONS or "/" not in flow:
            return
        try:
            self.store().find(flow)
        except DeploymentNotFoundError:
            return
        raise HTTPException(405, f"{action} is an action: POST it from the deployment's page")

    # -- the view model -------------------------------------------------------------------
    def view(self, record: DeploymentRecord, *, now: float, next_n: int, last_n: int) -> dict[str, Any]:
        """What a row or a detail page shows of ``record``."""
        from flowcore.deployments.views import describe_schedule, next_runs, schedule_in_words

        store = self.store()
        return {
            "record": record,
            "schedules": [
                {"words": schedule_in_words(s.schedule), "description": describe_schedule(s.schedule),
                 "zone": s.schedule.get("timezone") or "UTC"}
                for s in record.schedules
            ],
            "next_runs": [
                {"time": at, "zone": s.schedule.get("timezone") or "UTC", "schedule": schedule_in_words(s.schedule)}
                for at, s in next_runs(record, next_n, now)
            ],
            "last_runs": store.runs(record.id, limit=last_n),
        }

    # -- pages ----------------------------------------------------------------------------
    def list_page(self, request: Request) -> Response:
        now = time.time()
        store = self.store()
        records = store.list_deployments()
        views = [self.view(r, now=now, next_n=3, last_n=5) for r in records]
        feed = store.feed(limit=50)
        names = {r.id: r for r in records}
        return self.board.render(request, "deployments.html", {
            "views": views, "feed": feed, "names": names, "show_deployment": True,
        }, fragments=("deployments_table", "feed"))

    def detail_page(self, request: Request) -> Response:
        try:
            record = self.find(request)
        except DeploymentNotFoundError:
            self._refuse_get_of_an_action(request)
            raise
        now = time.time()
        view = self.view(record, now=now, next_n=10, last_n=20)
        feed = self.store().feed(record.id, limit=50)
        from flowcore.deployments.triggers import trigger_from_dict

        triggers = []
        for data in record.triggers:
            try:
                triggers.append(trigger_from_dict(data).describe())
            except Exception:  # an unreadable trigger is shown raw, the page still loads
                triggers.append(json.dumps(data))
        return self.board.render(request, "deployment.html", {
            "view": view, "record": record, "feed": feed, "names": {record.id: record},
            "show_deployment": False, "triggers": triggers,
            "request_id": secrets.token_hex(16),
        }, fragments=("deployment_live", "feed"))

    # -- API --------------------------------------------------------------------------------
    def api_list(self, request: Request) -> Response:
        """A JSON list (the shape of the webhook's ``GET /api/deployments``), each
        with ``?next=`` (3) next runs and ``?last=`` (5) last runs."""
        from flowcore.dashboard.queries import parse_int
        from flowcore.deployments.views import summary

        q = request.query_params
        next_n = parse_int(q.get("next"), "next", 3, 0, 100)
        last_n = parse_int(q.get("last"), "last", 5, 0, 1000)
        now = time.time()
        store = self.store()
        return JSONResponse([summary(store, r, now=now, next_n=next_n, last_n=last_n, feed_n=0)
                             for r in store.list_deployments()])

    def api_detail(self, request: Request) -> Response:
        from flowcore.deployments.views import summary

        return JSONResponse(summary(self.store(), self.find(request)))

    def api_feed(self, request: Request) -> Response:
        """``{"feed": [...]}``, newest first; ``?deployment=flow/name`` narrows it."""
        from flowcore.dashboard.queries import parse_int

        q = request.query_params
        limit = parse_int(q.get("limit"), "limit", 50, 1, 10_000)
        ref = (q.get("deployment") or "").strip()
        store = self.store()
        dep_id = store.find(ref).id if ref else None
        return JSONResponse({"feed": [e.to_json() for e in store.feed(dep_id, limit=limit)]})

    # -- actions ------------------------------------------------------------------------------
    def check_action(self, request: Request, fields: dict[str, Any]) -> None:
        """Raise ActionRefusedError unless the request may change state (see the module
        docstring): loopback client, same origin, this process's token."""
        check_loopback_client(request)
        check_same_origin(request)
        given = request.headers.get(TOKEN_HEADER) or fields.get(TOKEN_FIELD) or ""
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ActionRefusedError(
                "the action token is missing or stale (reload the page): dashboard actions need the token "
                "embedded in the dashboard's pages, so that other sites cannot trigger them"
            )

    async def action(self, request: Request) -> Response:
        """``POST /deployments/{flow}/{name}/pause|resume|run``."""
        from starlette.concurrency import run_in_threadpool

        name = request.path_params["action"]
        if name not in ACTIONS:
            raise QueryError(f"no action {name!r}; use one of {', '.join(ACTIONS)}")
        check_loopback_client(request)
        check_same_origin(request)  # before reading a body another site sent
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise QueryError(f"the body is larger than {MAX_BODY} bytes")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise QueryError(f"the body is larger than {MAX_BODY} bytes")
        fields = parse_body(request.headers.get("content-type", ""), body)
        self.check_action(request, fields)
        await run_in_threadpool(self.board.follow_file)
        result, status = await run_in_threadpool(self._act, request, name, fields)
        if wants_json(request):
            return JSONResponse(result, status_code=status)
        back = fields.get("next")
        if not (isinstance(back, str) and back.startswith("/") and not back.startswith("//")):
            back = f"/deployments/{urllib.parse.quote(result['flow'], safe='')}/" \
                   f"{urllib.parse.quote(result['name'], safe='')}"
        return RedirectResponse(back, status_code=303)

    def _act(self, request: Request, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
        store = self.store()
        record = self.find(request)
        base = {"deployment": record.full_name, "flow": record.flow, "name": record.name}
        if name in ("pause", "resume"):
            store.set_paused(record.id, name == "pause")
            return {**base, "paused": name == "pause"}, 200
        parameters = parse_parameters(fields.get("parameters"))
        request_id = fields.get("request_id")
        key = None
        if isinstance(request_id, str) and request_id.strip():
            if len(request_id) > MAX_REQUEST_ID:
                raise QueryError(f"request_id: longer than {MAX_REQUEST_ID} characters")
            key = f"manual:dashboard:{record.id}:{request_id.strip()}"
        run_id, created = store.request_run(record.id, parameters, kind="manual", key=key)
        run = store.run(run_id)
        return {**base, "id": run_id, "created": created, "state": run.state,
                "parameters": run.parameters}, 201 if created else 200


__all__ = [
    "ACTIONS",
    "TOKEN_FIELD",
    "TOKEN_HEADER",
    "DeploymentPages",
    "check_loopback_client",
    "check_same_origin",
    "parse_body",
    "parse_parameters",
]
