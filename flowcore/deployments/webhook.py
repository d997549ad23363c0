"""Start deployment runs over HTTP: starlette routes, the API token, a uvicorn server.

:func:`deployment_routes` returns the routes (the dashboard mounts them in its app;
``flowcore worker start --webhook-port PORT`` serves them alone with
:class:`WebhookServer`):

=======  ==========================================================  ================================
method   path                                                        does
=======  ==========================================================  ================================
POST     ``/api/deployments/{flow}/{deployment}/runs``               queue a run; the JSON body (an
                                                                     object, may be empty) holds
                                                                     parameters. 201 new, 200 when
                                                                     ``Idempotency-Key`` repeats one
GET      ``/api/deployments``                                        every deployment, summarised
GET      ``/api/deployments/{flow}/{deployment}``                    schedules, next runs, last runs,
                                                                     trigger feed
POST     ``/api/deployments/{flow}/{deployment}/pause`` | ``resume``  pause or resume
GET      ``/api/deployment-runs/{run_id}``                           one run (poll it after a POST)
=======  ==========================================================  ================================

Every route needs ``Authorization: Bearer <token>`` (401 otherwise): the token is
``FLOWCORE_API_TOKEN`` or, when that is unset, the one in ``$FLOWCORE_HOME/api-token``
(generated on first use, mode 0600, printed once by the worker). Errors are JSON
``{"error": "..."}``: 400 bad body, 404 unknown deployment, 422 parameters that do
not fit the flow, 409 for a paused deployment (pausing stops triggers), 413 for a
body over :data:`MAX_BODY` bytes.

starlette and uvicorn are imported only here (``pip install "flowcore[ui]"``).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowcore.errors import DeploymentError, DeploymentNotFoundError

ENV_TOKEN = "FLOWCORE_API_TOKEN"
TOKEN_FILE = "api-token"
#: the longest Idempotency-Key kept (longer ones are refused)
MAX_KEY_LENGTH = 200
#: the largest request body read (413 beyond): parameters, not payloads
MAX_BODY = 1_000_000


def api_token(home: Path | None = None) -> tuple[str, bool]:
    """The API token and whether it was generated just now (print it once, then).

    ``FLOWCORE_API_TOKEN`` wins; otherwise ``home/api-token`` is read, or created
    with a new random token, readable by this user only."""
    from_env = os.environ.get(ENV_TOKEN, "").strip()
    if from_env:
        return from_env, False
    if home is None:
        from flowcore.history.settings import history_settings

        home = history_settings().home
    path = Path(home) / TOKEN_FILE
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


def deployment_routes(
    path: str | Path | None = None,
    *,
    token: str | None = None,
    on_request: Callable[[], None] | None = None,
) -> list[Any]:
    """The starlette ``Route`` objects of the deployment API (see the module docstring).

    ``path``: the history file (default: the configured one); ``token``: the bearer
    token (default: :func:`api_token`); ``on_request``: called after a run is queued
    (a worker in this process wakes up). The store is opened on first request."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from flowcore.deployments.store import DeploymentStore, store_path
    from flowcore.deployments.views import summary

    expected = token if token is not None else api_token()[0]
    lock = threading.Lock()
    opened: list[DeploymentStore] = []

    def store() -> DeploymentStore:
        with lock:
            if not opened:
                opened.append(DeploymentStore(path if path is not None else store_path()))
            return opened[0]

    def error(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())

    def guarded(handler: Callable[[Request, bytes], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Any:
            if not authorized(request):
                return error(401, "missing or wrong API token: send 'Authorization: Bearer <token>' "
                                  f"({ENV_TOKEN}, or the token in $FLOWCORE_HOME/{TOKEN_FILE})")
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY:
                return error(413, f"the body is larger than {MAX_BODY} bytes; send parameters, and pass large "
                                  "data by reference (a path or URL)")
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return error(413, f"the body is larger than {MAX_BODY} bytes; send parameters, and pass "
                                      "large data by reference (a path or URL)")
            from starlette.concurrency import run_in_threadpool

            try:
                return await run_in_threadpool(handler, request, body)
            except DeploymentNotFoundError as exc:
                return error(404, str(exc))
            except DeploymentError as exc:
                return error(422, str(exc))

        return endpoint

    def find(request: Request) -> Any:
        flow = request.path_params["flow"]
        name = request.path_params["deployment"]
        return store().find(f"{flow}/{name}")

    def create_run(request: Request, body: bytes) -> JSONResponse:
        record = find(request)
        try:
            parameters = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return error(400, f"the body is not JSON ({exc}); send a JSON object of parameters, e.g. {{\"n\": 3}}")
        if not isinstance(parameters, dict):
            return error(400, "the body must be a JSON object of flow parameters, e.g. {\"n\": 3}")
        try:  # Python's json reads NaN, Infinity and 1e999 (inf): no JSON answer or run could hold them
            json.dumps(parameters, allow_nan=False)
        except ValueError:
            return error(400, "the body holds a value that is not a finite number (NaN, Infinity, or out of "
                              "range like 1e999), which JSON does not have; send a finite number, a string or null")
        if record.paused:
            return error(409, f"deployment {record.full_name} is paused; resume it to accept runs "
                              f"(flowcore deployment resume '{record.full_name}')")
        key_header = request.headers.get("idempotency-key", "").strip()
        if len(key_header) > MAX_KEY_LENGTH:
            return error(400, f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
        key = f"webhook:{record.id}:{key_header}" if key_header else None
        client = request.client.host if request.client else ""
        run_id, created = store().request_run(record.id, parameters, kind="webhook", key=key,
                                              source=f"POST from {client}")
        if created and on_request is not None:
            on_request()
        run = store().run(run_id)
        return JSONResponse({"id": run_id, "deployment": record.full_name, "state": run.state,
                             "created": created, "parameters": run.parameters},
                            status_code=201 if created else 200)

    def list_all(request: Request, body: bytes) -> JSONResponse:
        now = time.time()
        return JSONResponse([summary(store(), r, now=now, next_n=1, last_n=1, feed_n=0)
                             for r in store().list_deployments()])

    def inspect(request: Request, body: bytes) -> JSONResponse:
        return JSONResponse(summary(store(), find(request)))

    def pause(request: Request, body: bytes) -> JSONResponse:
        action = request.path_params["action"]
        if action not in ("pause", "resume"):
            return error(404, f"no route POST .../{action}; use runs, pause or resume")
        record = find(request)
        store().set_paused(record.id, action == "pause")
        if on_request is not None:
            on_request()
        return JSONResponse({"deployment": record.full_name, "paused": action == "pause"})

    def misaddressed(request: Request, body: bytes) -> JSONResponse:
        # POST .../nightly/runs without the flow's name lands here (as flow "nightly",
        # deployment "runs"), as does POST .../flow/deployment without /runs
        flow, name = request.path_params["flow"], request.path_params["deployment"]
        return error(404, f"no route POST /api/deployments/{flow}/{name}; to start a run, POST "
                          "/api/deployments/<flow>/<deployment>/runs (the flow's name, then the deployment's: "
                          "GET /api/deployments lists them)")

    def show_run(request: Request, body: bytes) -> JSONResponse:
        return JSONResponse(store().run(request.path_params["run_id"]).to_json())

    return [
        Route("/api/deployments", guarded(list_all), methods=["GET"]),
        # {flow:path}: a flow name may hold "/" (a deployment name may not)
        Route("/api/deployments/{flow:path}/{deployment}/runs", guarded(create_run), methods=["POST"]),
        Route("/api/deployments/{flow:path}/{deployment}/{action:str}", guarded(pause), methods=["POST"]),
        Route("/api/deployments/{flow:path}/{deployment}", guarded(inspect), methods=["GET"]),
        Route("/api/deployments/{flow:path}/{deployment}", guarded(misaddressed), methods=["POST"]),
        Route("/api/deployment-runs/{run_id}", guarded(show_run), methods=["GET"]),
    ]


class WebhookServer:
    """The deployment routes served by uvicorn in a background thread (127.0.0.1 by default)."""

    def __init__(self, path: str | Path, host: str, port: int, *, on_request: Callable[[], None] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.host = host
        self.port = port
        self.on_request = on_request
        self.say = say if say is not None else (lambda message: None)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve; returns once the socket listens. DeploymentError when starlette or
        uvicorn is missing or the port is taken."""
        try:
            import uvicorn
            from starlette.applications import Starlette
        except ImportError as exc:
            raise DeploymentError(
                f"--webhook-port needs starlette and uvicorn ({exc}); pip install \"flowcore[ui]\""
            ) from None
        token, generated = api_token(self.path.parent)
        if generated:
            self.say(f"generated the API token (shown once; kept in {self.path.parent / TOKEN_FILE}): {token}")
        app = Starlette(routes=deployment_routes(self.path, token=token, on_request=self.on_request))
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        server = self._server = uvicorn.Server(config)
        thread = self._thread = threading.Thread(target=server.run, name="flowcore-webhook", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DeploymentError(
                    f"the webhook server could not listen on {self.host}:{self.port} (port in use?); "
                    "pick another --webhook-port"
                )
            time.sleep(0.02)
        self.say(f"webhook: POST http://{self.host}:{self.port}/api/deployments/<flow>/<deployment>/runs "
                 "(Authorization: Bearer <token>)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)


__all__ = ["ENV_TOKEN", "TOKEN_FILE", "WebhookServer", "api_token", "deployment_routes"]
