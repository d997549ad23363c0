"""``flow_run_name``: a template over the flow's parameters, or a callable; checked at
decoration time, used wherever the flow run's name shows (logs, run events, history,
``flowcore runs ls``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowcore import flow, get_run_context, task
from flowcore.events import FlowRunEvent
from flowcore.history.sqlite import SQLiteStore
from flowcore.hookspecs import hookimpl
from flowcore.registry import get_registry


@task
def report() -> str:
    return get_run_context().flow_run.name  # type: ignore[union-attr]


@flow(flow_run_name="etl-{day}-{region}")
def etl(day: str, region: str = "eu") -> str:
    return report.submit().result()


def test_a_template_names_the_run_from_its_parameters_defaults_included() -> None:
    assert etl("2026-12-03") == "etl-2026-12-03-eu"
    assert etl("d1", region="us") == "etl-d1-us"


def test_the_default_name_is_the_flow_and_an_id_prefix() -> None:
    @flow
    def plain() -> str:
        ctx = get_run_context().flow_run
        assert ctx is not None
        assert ctx.name == f"plain-{ctx.id[:8]}"
        return ctx.name

    assert plain().startswith("plain-")


def test_a_callable_is_called_without_arguments_and_sees_the_run_context() -> None:
    def name_it() -> str:
        flow_run = get_run_context().flow_run
        assert flow_run is not None
        return f"run-for-{flow_run.parameters['n']}"

    @flow(flow_run_name=name_it)
    def counted(n: int) -> str:
        return get_run_context().flow_run.name  # type: ignore[union-attr]

    assert counted(4) == "run-for-4"
    assert counted.with_options(flow_run_name=lambda: "fixed")(1) == "fixed"


def test_an_unknown_field_fails_at_decoration_naming_the_parameters() -> None:
    with pytest.raises(ValueError, match=r"'flow_run_name' 'x-\{dya\}' refers to 'dya'.*parameters are: day, region"):

        @flow(flow_run_name="x-{dya}")
        def bad(day: str, region: str = "eu") -> None: ...

    with pytest.raises(ValueError, match="positional field"):
        etl.with_options(flow_run_name="x-{}")
    with pytest.raises(TypeError, match="'flow_run_name' must be a string template or a callable"):
        etl.with_options(flow_run_name=3)  # type: ignore[arg-type]


def test_a_flow_taking_kwargs_accepts_any_field() -> None:
    @flow(flow_run_name="k-{color}")
    def loose(**options: Any) -> str:
        return get_run_context().flow_run.name  # type: ignore[union-attr]

    assert loose(color="red") == "k-red"
    with pytest.raises(TypeError, match=r"flow 'loose': flow_run_name 'k-\{color\}' cannot be formatted"):
        loose(size=1)


def test_a_callable_returning_no_str_is_a_clear_error() -> None:
    @flow(flow_run_name=lambda: 42)  # type: ignore[arg-type,return-value]
    def numbered() -> None: ...

    with pytest.raises(TypeError, match="it must give a non-empty str"):
        numbered()


def test_a_callable_that_needs_arguments_is_refused_at_decoration() -> None:
    # It is called with no arguments: say so when the decorator runs, not with the
    # callable's own TypeError at each call.
    with pytest.raises(TypeError, match=r"'flow_run_name' callable .*is called with no arguments"):

        @flow(flow_run_name=lambda day: f"etl-{day}")  # type: ignore[arg-type,misc]
        def named(day: str) -> None: ...


def test_the_name_shows_in_logs_events_and_history(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class Watcher:
        @hookimpl
        def flowcore_run_events(self, events: list[Any]) -> None:
            seen.extend(e.run.name for e in events if isinstance(e, FlowRunEvent))

    watcher = Watcher()
    get_registry().register(watcher)
    try:
        caplog.set_level(logging.INFO, logger="flowcore")
        assert etl("d7") == "etl-d7-eu"
    finally:
        get_registry().unregister(watcher)
    assert seen and set(seen) == {"etl-d7-eu"}
    assert any(getattr(r, "flow_run_name", None) == "etl-d7-eu" for r in caplog.records)
    store = SQLiteStore(home / "history.db")
    try:
        (run,) = store.list_runs(flow="etl")
        assert run.name == "etl-d7-eu"
    finally:
        store.close()
    listing = subprocess.run(
        [sys.executable, "-m", "flowcore", "runs", "ls"], capture_output=True, text=True,
        env={**os.environ, "FLOWCORE_HOME": str(home)}, timeout=120, check=True,
    )
    assert "etl-d7-eu" in listing.stdout
