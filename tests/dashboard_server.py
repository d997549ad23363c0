"""Helpers of the dashboard tests (not a test module): a real uvicorn server on a free
loopback port, serving the dashboard over a history file, in a thread of the test
process; plain ``urllib`` to ask it things."""

from __future__ import annotations

import importlib
import json
import socket
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("starlette", reason='the dashboard needs flowcore[ui]: pip install -e ".[ui]"')
pytest.importorskip("uvicorn", reason='the dashboard needs flowcore[ui]: pip install -e ".[ui]"')

import uvicorn

from flowcore.dashboard.app import create_app
from flowcore.history.sqlite import SQLiteStore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Served:
    """A running dashboard: its base URL and the store it reads."""

    url: str
    store: SQLiteStore

    def get(self, path: str, timeout: float = 30.0) -> Answer:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def post(self, path: str, body: bytes | str | dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
        """POST ``body`` (a dict is sent as JSON, a str as a urlencoded form)."""
        chosen = dict(headers or {})
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            chosen.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
            chosen.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            data = body or b""
        request = urllib.request.Request(self.url + path, data=data, headers=chosen, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextmanager
def serve_dashboard(history: Path, *, poll_s: float = 0.2, **app_options: Any) -> Iterator[Served]:
    """The dashboard over ``history`` (an SQLite file, created if missing) on a free
    port, stopped (and its store closed) on exit. ``app_options`` go to ``create_app``."""
    store = SQLiteStore(history)
    app = create_app(store, poll_s=poll_s, **app_options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1, access_log=False,
    ))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", store)
    finally:
        app.state.dashboard.closed = True  # open event streams end within poll_s
        server.should_exit = True
        thread.join(timeout=15)
        store.close()


DEPLOYMENT_FLOWS = '''
from flowcore import flow

@flow(name="etl workflow")
def etl_workflow(n: int = 3, label: str = "nightly") -> int:
    return n

@flow
def reports(region: str = "eu") -> str:
    return region

@flow(name="team/etl")
def team_etl(n: int = 1) -> int:
    return n
'''


def deployment_flows(directory: Path) -> ModuleType:
    """A module of flows, importable by name (as a worker's child would import it)."""
    name = f"dashdep_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(DEPLOYMENT_FLOWS))
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))
