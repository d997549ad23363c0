"""Results kept on request (``persist_result`` / ``result_storage``), read back from the
run history, and flow runs resumed from them (issue 16.8): real files, real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from flowcore import flow, task
from flowcore.errors import ResultNotFoundError, ResultPersistenceError
from flowcore.history import open_history
from flowcore.results import load_result, result_key


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    monkeypatch.delenv("FLOWCORE_RESULTS_DIR", raising=False)
    monkeypatch.delenv("FLOWCORE_HISTORY", raising=False)
    return home


def _last_run_tasks() -> tuple[Any, list[Any]]:
    store = open_history()
    try:
        run = store.list_runs(limit=1)[0]
        detail = store.get_run(run.id)
        return detail.run, detail.task_runs
    finally:
        store.close()


@task(persist_result=True)
def kept_inc(x: int) -> int:
    return x + 1


@task
def plain_double(x: int) -> int:
    return 2 * x


@task
async def async_square(x: int) -> int:
    return x * x


@task(persist_result=True)
def make_lock() -> Any:
    return threading.Lock()


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_results_kept_on_every_path_and_recorded(home: Path, backend: str) -> None:
    @flow(backend=backend, persist_result=True)
    def pipeline(n: int = 3) -> list[Any]:
        direct = kept_inc(1)  # a direct call: the task's own option
        submitted = plain_double.submit(5).result()  # the flow's default reaches the worker
        mapped = [f.result() for f in plain_double.map(range(n))]  # a column map
        squares = [f.result() for f in async_square.map(range(n))]
        return [direct, submitted, mapped, squares]

    assert pipeline() == [2, 10, [0, 2, 4], [0, 1, 4]]
    run, tasks = _last_run_tasks()
    assert run.state == "Completed"
    assert len(tasks) == 8
    for record in tasks:
        assert record.result is not None, record.name
        assert record.result["storage"] == "file:" + str(home / "results")
        assert record.result["key"] == result_key(record.id)
        assert (home / "results" / record.result["key"][:2] / record.result["key"][2:]).is_file()
    values = {record.name: load_result(record.id) for record in tasks}
    assert values == {
        "kept_inc-0": 2, "plain_double-0": 10, "plain_double-1": 0, "plain_double-2": 2,
        "plain_double-3": 4, "async_square-0": 0, "async_square-1": 1, "async_square-2": 4,
    }


def test_task_option_with_a_directory_of_its_own(home: Path, tmp_path: Path) -> None:
    where = tmp_path / "elsewhere"
    stored = plain_double.with_options(result_storage=where)  # storage alone turns it on

    @flow(backend="threads")
    def pipeline() -> list[int]:
        return [f.result() for f in stored.map(range(4))] + [plain_double(7)]

    assert pipeline() == [0, 2, 4, 6, 14]
    _, tasks = _last_run_tasks()
    kept = {t.name: t.result for t in tasks}
    assert all(kept[f"plain_double-{i}"]["storage"] == f"file:{where}" for i in range(4))  # type: ignore[index]
    assert kept["plain_double-4"] is None  # the other task is not kept
    assert len(list(where.rglob("*"))) >= 4
    assert not (home / "results").exists()


def test_persist_off_writes_nothing_and_keeps_the_fast_path(home: Path) -> None:
    assert plain_double._plain and not plain_double.keeps_results
    assert not kept_inc._plain and kept_inc.keeps_results
    assert not plain_double.with_options(persist_result=False, result_storage="x").keeps_results

    @flow(backend="threads")
    def pipeline() -> int:
        return plain_double(1) + sum(f.result() for f in plain_double.map(range(3)))

    assert pipeline() == 8
    _, tasks = _last_run_tasks()
    assert tasks and all(t.result is None for t in tasks)
    assert not (home / "results").exists()
    with pytest.raises(ResultNotFoundError, match="kept no result"):
        load_result(tasks[0].id)


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_unpicklable_result_fails_the_run_with_the_fix(home: Path, backend: str) -> None:
    @flow(backend=backend)
    def pipeline() -> Any:
        return make_lock.submit().result()

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(ResultPersistenceError) as info:
        state.result()
    message = str(info.value)
    assert "make_lock" in message and "cannot be pickled" in message
    assert "return plain data or set persist_result=False" in message


def test_options_are_checked_at_decoration() -> None:
    with pytest.raises(TypeError, match="'persist_result' must be True, False or None"):
        task(persist_result="yes")(lambda: 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="'result_storage' must be a directory"):
        flow(result_storage=3)(lambda: 1)  # type: ignore[call-overload]


@pytest.mark.parametrize("url", ["s3://bucket/results", "gs://bucket", "az://container/x", "https://example.com/r"])
def test_a_url_as_result_storage_is_refused_at_decoration(url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL is not a directory: before, ``s3://bucket/results`` silently kept results
    in a local directory named ``s3:``. It fails at decoration, naming what works."""
    monkeypatch.chdir(tmp_path)
    scheme = url.partition(":")[0]
    with pytest.raises(ValueError, match=re.escape(f"'result_storage' {url!r} is a {scheme}:// URL")) as info:
        task(result_storage=url)(lambda: 1)
    assert "flowcore_cache_stores" in str(info.value) and "directory" in str(info.value)
    with pytest.raises(ValueError, match=r"is a .*:// URL"):
        flow(result_storage=url)(lambda: 1)
    assert list(tmp_path.iterdir()) == []


def test_a_file_url_as_result_storage_is_its_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file:///abs/dir`` keeps results in that directory, as the path would."""
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    where = tmp_path / "kept"

    @task(persist_result=True, result_storage=where.as_uri())
    def one() -> int:
        return 1

    @flow
    def keeps() -> Any:
        state = one(return_state=True)
        return state.result(), state.result_location

    value, location = keeps()
    assert value == 1
    assert location is not None and location[0] == f"file:{where}"
    assert len(list(where.iterdir())) == 1


RESUMABLE = """
    import os
    from flowcore import flow, task

    @task(persist_result=True)
    def step(i: int) -> int:
        with open(os.environ["COUNT_FILE"], "a") as handle:
            handle.write(f"{i}\\n")
        if i == 2 and os.environ.get("FAIL_AT_3") == "1":
            raise RuntimeError("step 3 fails")
        return i * 10

    @flow(backend="loky")
    def pipeline(n: int = 3, offset: int = 0) -> list[int]:
        return [step.submit(i).result() + offset for i in range(n)]
"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowcore", *args], capture_output=True, text=True, env=env,
        timeout=180, check=False,
    )


def test_resume_skips_the_tasks_that_completed(tmp_path: Path) -> None:
    (tmp_path / "resumable.py").write_text(textwrap.dedent(RESUMABLE))
    count = tmp_path / "count"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
    env.update(FLOWCORE_HOME=str(tmp_path / "home"), FLOWCORE_PROGRESS="0", COUNT_FILE=str(count))
    target = str(tmp_path / "resumable.py") + ":pipeline"

    failed = _cli({**env, "FAIL_AT_3": "1"}, "run", target, "--param", "offset=1")
    assert failed.returncode == 1, failed.stderr
    assert count.read_text().split() == ["0", "1", "2"]
    listed = json.loads(_cli(env, "runs", "ls", "--json").stdout)
    run_id = listed[0]["id"]

    shown = _cli(env, "runs", "show", run_id[:8], "--results")
    assert shown.returncode == 0, shown.stderr
    results_part = shown.stdout.split("\nresults:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(" (")[0].strip() for line in results_part] == ["step-0", "step-1"]
    assert [line.rsplit(": ", 1)[1] for line in results_part] == ["0", "10"]
    document = json.loads(_cli(env, "runs", "show", run_id[:8], "--json").stdout)
    by_name = {t["name"]: t for t in document["task_runs"]}
    assert set(by_name["step-0"]["result"]) == {"storage", "key"}
    assert by_name["step-2"]["result"] is None

    count.write_text("")
    resumed = _cli(env, "run", target, "--resume", run_id[:8])
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "[1, 11, 21]"  # offset=1 came from the recorded run
    assert count.read_text().split() == ["2"]  # tasks 1-2 were not executed again
    latest = json.loads(_cli(env, "runs", "ls", "--json").stdout)[0]
    assert latest["state"] == "Completed"
    document = json.loads(_cli(env, "runs", "show", latest["id"], "--json", "--results").stdout)
    states = {t["name"]: (t["state"], t["message"]) for t in document["task_runs"]}
    assert states["step-0"] == ("Resumed", f"resumed from {run_id}")
    assert states["step-1"][0] == "Resumed"
    assert states["step-2"] == ("Completed", "")
    assert [t["result"]["repr"] for t in document["task_runs"]] == ["0", "10", "20"]

    # A resumed run resumes again (its resumed runs point at the same entries).
    count.write_text("")
    again = _cli(env, "run", target, "--resume", latest["id"], "--param", "offset=2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "[2, 12, 22]" and count.read_text() == ""


def test_resume_refuses_a_run_of_another_flow(home: Path) -> None:
    from flowcore.errors import ConfigurationError
    from flowcore.results import resume

    @flow(backend="threads")
    def first() -> int:
        return kept_inc(1)

    @flow(backend="threads")
    def second() -> int:
        return kept_inc(1)

    first()
    run, _ = _last_run_tasks()
    with pytest.raises(ConfigurationError, match="not of 'second'"):
        resume(second, run.id)
    assert resume(first, run.id[:8]) == 2
    _, tasks = _last_run_tasks()
    assert [t.state for t in tasks] == ["Resumed"]


TWO_FLOWS = """
    from flowcore import flow, task

    @task(persist_result=True)
    def step(i: int) -> int:
        return i

    @flow(backend="sequential")
    def first(day: str = "mon") -> int:
        return step(1)

    @flow(backend="sequential")
    def second(n: int = 2) -> int:
        return step(n)
"""


def test_cli_resume_refuses_a_run_of_another_flow_by_saying_so(tmp_path: Path) -> None:
    # The recorded parameters belong to the other flow: the error must name the flow
    # mismatch, not complain that 'second' has no parameter 'day'.
    (tmp_path / "two.py").write_text(textwrap.dedent(TWO_FLOWS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
    env.update(FLOWCORE_HOME=str(tmp_path / "home"), FLOWCORE_PROGRESS="0")
    assert _cli(env, "run", f"{tmp_path / 'two.py'}:first").returncode == 0
    run_id = json.loads(_cli(env, "runs", "ls", "--json").stdout)[0]["id"]
    refused = _cli(env, "run", f"{tmp_path / 'two.py'}:second", "--resume", run_id[:8])
    assert refused.returncode == 2
    assert f"run {run_id[:8]} is a run of flow 'first', not of 'second'" in refused.stderr, refused.stderr
    assert "has no parameter" not in refused.stderr


def test_resume_of_an_async_flow_awaited_in_async_code(home: Path) -> None:
    # `await resume(async_flow, run_id)` inside a running loop: the completed runs are
    # still skipped (the resume must hold while the flow's coroutine runs, not only
    # while resume() makes it).
    import asyncio

    ran: list[int] = []
    failing = [True]

    @task(persist_result=True)
    async def step(i: int) -> int:
        ran.append(i)
        if failing[0] and i == 1:
            raise RuntimeError("step 1 fails")
        return i * 10

    @flow(backend="threads")
    async def pipeline() -> list[int]:
        return [await step(i) for i in range(3)]

    from flowcore.results import resume

    assert pipeline(return_state=True).is_failed()
    run, _ = _last_run_tasks()
    ran.clear()
    failing[0] = False

    async def main() -> list[int]:
        return await resume(pipeline, run.id)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == [0, 10, 20]
    assert ran == [1, 2]
    _, tasks = _last_run_tasks()
    assert [t.state for t in tasks] == ["Resumed", "Completed", "Completed"]


def test_results_kept_on_dask(home: Path) -> None:
    pytest.importorskip("distributed")
    import flowcore

    @flow(persist_result=True)
    def pipeline() -> list[int]:
        return [kept_inc.submit(1).result()] + [f.result() for f in plain_double.map(range(3))]

    with flowcore.get_backend("dask", max_workers=2) as backend:
        assert pipeline.with_options(backend=backend)() == [2, 0, 2, 4]
    _, tasks = _last_run_tasks()
    assert len(tasks) == 4 and all(t.result is not None for t in tasks)
    assert sorted(load_result(t.id) for t in tasks) == [0, 2, 2, 4]


def test_a_version_3_history_file_gets_the_results_table(tmp_path: Path) -> None:
    import sqlite3

    from flowcore.history.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, migrate

    db = tmp_path / "history.db"
    connection = sqlite3.connect(db)
    migrate(connection, MIGRATIONS[:3], location=str(db))
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
    connection.close()
    store = SQLiteStore(db)
    try:
        assert SCHEMA_VERSION >= 4
        assert store.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert store.query("SELECT count(*) FROM task_run_results") == [(0,)]
        assert store.result_location("nope") is None and store.kept_results("nope") == {}
    finally:
        store.close()
