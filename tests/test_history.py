"""The run history: the SQLite store and its background writer, on real SQLite files
and real processes (no test writes the real ~/.flowcore: see conftest.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from _running import RunningWatch

import flowcore
from flowcore import flow, get_run_logger, task
from flowcore.errors import BackendRegistrationError, HistoryError, RunNotFoundError
from flowcore.events import EventKind
from flowcore.history.records import (
    FlowRunRecord,
    FlowRunWrite,
    HistoryBatch,
    LogRecord,
    LogWrite,
    PendingMapWrite,
    StateRecord,
    TaskRunWrite,
)
from flowcore.history.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, migrate
from flowcore.history.store import HistoryStore, HistoryStoreSpec, RunDetail
from flowcore.hookspecs import hookimpl
from flowcore.registry import get_registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(directory))
    for name in ("FLOWCORE_HISTORY", "FLOWCORE_HISTORY_RETENTION", "FLOWCORE_HISTORY_STORE", "FLOWCORE_HISTORY_STORE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    return directory


def run_script(directory: Path, code: str, env: dict[str, str] | None = None, timeout: float = 120,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
    script = directory / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=directory,
        env={**os.environ, **(env or {})}, timeout=timeout, check=False, **kwargs,
    )


def query(db: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


# -- recording, in this process ------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


@task
def square(x: int) -> int:
    get_run_logger().info("squaring %d", x)
    return x * x


@task(tags={"io", "flaky"})
def explode(x: int) -> int:
    raise ValueError(f"exploded on {x}")


_attempts: dict[int, int] = {}


@task(retries=1)
def flaky(x: int) -> int:
    _attempts[x] = _attempts.get(x, 0) + 1
    if _attempts[x] == 1:
        raise RuntimeError("first attempt fails")
    return x


@flow(log_prints=True)
def recorded(n: int, thing: Any = None) -> int:
    futures = square.map(range(n))
    bad = explode.submit(7)
    flaky(1)
    print("printed from the flow")
    bad.wait()
    return sum(f.result() for f in futures)


def test_a_flow_run_in_this_process_is_recorded_with_its_task_runs_and_logs(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")  # pytest configured logging: INFO is opt-in
    state = recorded(6, Opaque(), return_state=True)
    assert state.is_completed()
    store = SQLiteStore(home / "history.db")
    try:
        runs = store.list_runs(flow="recorded")
        assert len(runs) == 1
        run = runs[0]
        assert run.state == "Completed" and run.backend == "threads"
        assert run.parameters == {"n": 6, "thing": "<Opaque thing>"}
        assert run.host == socket.gethostname() and run.pid == os.getpid()
        assert run.task_counts == {"Completed": 7, "Failed": 1}
        assert run.start is not None and run.end is not None and run.end >= run.start

        detail = store.get_run(run.id[:10])
        assert [s.name for s in detail.run.states] == ["Running", "Completed"]
        by_task: dict[str, list[Any]] = {}
        for task_run in detail.task_runs:
            by_task.setdefault(task_run.task, []).append(task_run)
        assert len(by_task["square"]) == 6
        for task_run in by_task["square"]:
            assert task_run.state == "Completed" and task_run.attempts == 1
            assert task_run.worker is not None and task_run.worker.pid == os.getpid()
            assert task_run.worker.thread and task_run.backend == "threads"
            assert task_run.submitted is not None and task_run.start is not None and task_run.end is not None
        (failed,) = by_task["explode"]
        assert failed.state == "Failed" and failed.error_type == "ValueError"
        assert failed.error_message == "exploded on 7"
        assert failed.traceback is not None and "raise ValueError" in failed.traceback
        assert failed.tags == ["flaky", "io"]
        (retried,) = by_task["flaky"]
        assert retried.state == "Completed" and retried.attempts == 2
        assert retried.backend is None  # a direct call runs in the caller

        logs = store.logs(run.id)
        messages = [record.message for record in logs]
        assert "printed from the flow" in messages
        squaring = [r for r in logs if r.message.startswith("squaring ")]
        assert len(squaring) == 6 and all(r.task_name == "square" and r.task_run_id for r in squaring)
        assert {r.task_run_id for r in squaring} == {t.id for t in by_task["square"]}
        assert any("Beginning flow run" in m for m in messages)
        assert [r.message for r in store.logs(run.id, task="square")] == [r.message for r in squaring]
        assert all(r.level >= 30 for r in store.logs(run.id, level=30))
    finally:
        store.close()


@flow
def child(x: int) -> int:
    return square(x)


@flow
def parent() -> int:
    return child(2) + child(3)


def test_a_subflow_run_names_its_parent(home: Path) -> None:
    assert parent() == 13
    store = SQLiteStore(home / "history.db")
    try:
        runs = {r.flow: r for r in store.list_runs()} | {}
        children = [r for r in store.list_runs(flow="child")]
        assert len(children) == 2
        assert {c.parent_id for c in children} == {runs["parent"].id}
        assert all(c.task_counts == {"Completed": 1} for c in children)
    finally:
        store.close()


def test_a_flow_run_stopped_by_ctrl_c_is_recorded_crashed_in_its_attempt(home: Path) -> None:
    """Ctrl-C in the body: the run ends Crashed, in the attempt it was in, with an end."""

    @flow(retries=1, retry_delay_seconds=0)
    def interrupted() -> None:
        square(2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    store = SQLiteStore(home / "history.db")
    try:
        (run,) = store.list_runs(flow="interrupted")
        detail = store.get_run(run.id)
    finally:
        store.close()
    assert (run.state, run.attempts) == ("Crashed", 1), run
    assert "interrupt" in run.message and run.end is not None and run.start is not None and run.end >= run.start
    assert [(s.name, s.attempt) for s in detail.run.states] == [("Running", 1), ("Crashed", 1)]


def test_runs_of_a_process_backend_and_their_replayed_logs_are_recorded(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")
    @flow(backend="loky")
    def on_loky() -> list[int]:
        return [f.result() for f in square.map(range(4))]

    assert on_loky() == [0, 1, 4, 9]
    store = SQLiteStore(home / "history.db")
    try:
        (run,) = store.list_runs(flow="on_loky")
        detail = store.get_run(run.id)
        pids = {t.worker.pid for t in detail.task_runs if t.worker is not None}
        assert len(detail.task_runs) == 4 and pids and os.getpid() not in pids
        squaring = [r for r in store.logs(run.id) if r.message.startswith("squaring ")]
        assert len(squaring) == 4 and all(r.task_run_id for r in squaring)
    finally:
        store.close()



def _cached_square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("how", ["direct", "submit", "map"])
@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_cached_runs_record_their_cache_key_and_whether_they_hit(
    home: Path, tmp_path: Path, how: str, backend: str
) -> None:
    """A cached task's runs carry the key their value was stored or found under, on
    every path a run takes (direct calls, submits, maps; in threads and processes):
    the misses store it with cache_hit 0, the hits read it with cache_hit 1."""
    from flowcore.caching import INPUTS

    cached = task(_cached_square, name="cached_square", cache_policy=INPUTS, cache_storage=str(tmp_path / "c"))
    inputs = [i % 3 for i in range(9)]

    @flow(backend=backend)
    def twice() -> list[int]:
        first = [cached(i) for i in inputs[:3]]  # the misses first, one per input
        if how == "direct":
            return first + [cached(i) for i in inputs[3:]]
        if how == "submit":
            return first + [cached.submit(i).result() for i in inputs[3:]]
        return first + [f.result() for f in cached.map(inputs[3:])]

    assert twice() == [i * i for i in inputs]
    rows = query(
        home / "history.db",
        "SELECT name, cache_hit, cache_key FROM task_runs_all WHERE task = 'cached_square' ORDER BY start_time",
    )
    assert len(rows) == 9
    by_name = {name: (hit, key) for name, hit, key in rows}
    misses = [by_name[f"cached_square-{n}"] for n in range(3)]
    assert [hit for hit, _ in misses] == [0, 0, 0]
    keys = [key for _, key in misses]
    assert all(isinstance(key, str) and len(key) >= 16 for key in keys) and len(set(keys)) == 3
    hits = [by_name[f"cached_square-{n}"] for n in range(3, 9)]
    assert hits == [(1, keys[i % 3]) for i in range(3, 9)]


# -- settings: off, import cost ------------------------------------------------------------

SMALL_FLOW = """
    import sys
    from flowcore import flow, task

    @task
    def inc(x):
        return x + 1

    @flow
    def small(n: int = 3):
        return [f.result() for f in inc.map(range(n))]

    if __name__ == "__main__":
        print(small())
        print("sqlite3 imported:", "sqlite3" in sys.modules)
"""


def test_history_is_off_with_the_environment_variable(tmp_path: Path) -> None:
    result = run_script(tmp_path, SMALL_FLOW, {"FLOWCORE_HOME": str(tmp_path / "h"), "FLOWCORE_HISTORY": "0"})
    assert result.returncode == 0, result.stderr
    assert "sqlite3 imported: False" in result.stdout
    assert not (tmp_path / "h").exists()


def test_history_is_off_with_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.flowcore]\nhistory = false\nhome = "fchome"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWCORE_HOME", "FLOWCORE_HISTORY")}
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SMALL_FLOW))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "fchome").exists()
    (tmp_path / "pyproject.toml").write_text('[tool.flowcore]\nhome = "fchome"\n')
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert query(tmp_path / "fchome" / "history.db", "SELECT count(*) FROM task_runs_all") == [(3,)]


def test_import_flowcore_does_not_import_sqlite3(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import sys
        import flowcore
        from flowcore.registry import get_registry
        get_registry()
        print("sqlite3" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


# -- several processes, broken and locked files -----------------------------------------------

WRITER = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, task

    @task
    def one(x):
        return x

    @flow
    def writer(i: int):
        return len([f.result() for f in one.map(range(20))])

    if __name__ == "__main__":
        go = Path(sys.argv[1])
        while not go.exists():
            time.sleep(0.01)
        for i in range(25):
            writer(i)
        print("done")
"""


def test_four_processes_writing_one_database_lose_nothing(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    go = tmp_path / "go"
    processes = [
        subprocess.Popen([sys.executable, str(script), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
        for _ in range(4)
    ]
    go.touch()  # all four start writing at once
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "done" in out
        assert "locked" not in err.lower() and "history is off" not in err
    db = home / "history.db"
    assert query(db, "SELECT count(*) FROM task_runs_all") == [(2000,)]
    assert query(db, "SELECT count(*), count(DISTINCT pid) FROM flow_runs WHERE state = 'Completed'") == [(100, 4)]
    assert query(db, "SELECT count(*) FROM task_runs_all WHERE state != 'Completed'") == [(0,)]


def test_a_corrupt_database_warns_once_and_the_flow_still_runs(home: Path, tmp_path: Path) -> None:
    home.mkdir()
    db = home / "history.db"
    db.write_bytes(b"this is not a database, it is a grocery list\n" * 100)
    result = run_script(tmp_path, SMALL_FLOW)
    assert result.returncode == 0, result.stderr
    assert "[1, 2, 3]" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "history is off for this run" in line]
    assert len(warnings) == 1, result.stderr
    assert str(db) in warnings[0] and "is not a usable SQLite database" in warnings[0]
    assert f"mv {db} {db}.broken" in warnings[0]
    assert db.read_bytes().startswith(b"this is not a database")  # left as it was
    # The advice, followed literally, gives a working history.
    (home / "history.db-wal").write_bytes(b"an old WAL")
    advice = re.search(r"move it aside with its WAL \((.*?)\) and flowcore", warnings[0])
    assert advice is not None, warnings[0]
    subprocess.run(["sh", "-c", advice.group(1)], check=True)
    assert not db.exists() and not (home / "history.db-wal").exists()
    again = run_script(tmp_path, SMALL_FLOW)
    assert again.returncode == 0 and "history is off" not in again.stderr, again.stderr
    assert query(db, "SELECT count(*) FROM flow_runs") == [(1,)]


def test_a_database_locked_for_a_while_is_waited_for(home: Path, tmp_path: Path) -> None:
    SQLiteStore(home / "history.db").close()
    holder = sqlite3.connect(home / "history.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SMALL_FLOW))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    try:
        time.sleep(4.0)  # hold the lock while the flow runs and its writer waits
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "database is locked" not in err and "history is off" not in err
    # the flow's end waited for its records more than SLOW_FLUSH_WARNING_S: it said why, once
    assert err.count("takes longer than 2 s") == 1, err
    assert f"{home / 'history.db'} takes longer" in err and "may hold the database's lock" in err, err
    assert query(home / "history.db", "SELECT count(*) FROM task_runs_all") == [(3,)]
    assert query(home / "history.db", "SELECT state FROM flow_runs") == [("Completed",)]


def test_a_database_locked_for_too_long_turns_history_off_with_a_clear_warning(home: Path, tmp_path: Path) -> None:
    SQLiteStore(home / "history.db").close()
    holder = sqlite3.connect(home / "history.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_script(tmp_path, SMALL_FLOW, {"FLOWCORE_HISTORY_STORE_OPTIONS": '{"lock_timeout": 0.5}'})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0, result.stderr
    assert "[1, 2, 3]" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if "history is off for this run" in line]
    assert str(home / "history.db") in warning and "stayed locked by another process" in warning
    assert query(home / "history.db", "SELECT count(*) FROM flow_runs") == [(0,)]


def _read_only_command(home: Path, command: list[str]) -> list[str]:
    """``command``, run where ``home`` cannot be written. Root ignores permission bits,
    so as root the command runs in a private mount namespace where ``home`` is a
    read-only bind mount (nothing changes outside it); otherwise ``home`` is chmod 555."""
    if os.geteuid() != 0:
        os.chmod(home, 0o555)
        return command
    unshare = shutil.which("unshare")
    probe = subprocess.run(
        [unshare or "unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {home} {home} && mount -o remount,bind,ro {home} {home} && ! touch {home}/probe"],
        capture_output=True, check=False,
    ) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without a way to make a read-only directory (unshare/mount)")
    script = f"mount --bind {home} {home} && mount -o remount,bind,ro {home} {home} && exec \"$@\""
    return [unshare or "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def test_a_read_only_home_warns_and_the_flow_still_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SMALL_FLOW))
    try:
        result = subprocess.run(
            _read_only_command(home, [sys.executable, str(script)]), capture_output=True, text=True,
            cwd=tmp_path, env={**os.environ, "FLOWCORE_HOME": str(home)}, timeout=120, check=False,
        )
    finally:
        os.chmod(home, 0o755)
    assert result.returncode == 0, result.stderr
    assert "[1, 2, 3]" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if "history is off for this run" in line]
    assert str(home / "history.db") in warning and "cannot be written" in warning
    assert f"make {home} writable" in warning
    assert not (home / "history.db").exists()


def test_a_reader_that_cannot_write_finds_dead_runs_by_state_crashed(tmp_path: Path) -> None:
    """A read-only reader shows a dead run recorded as running Crashed (it cannot record
    it so): ``--state crashed`` finds it too, and ``--state running`` does not."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    db = tmp_path / "history.db"
    writer = SQLiteStore(db)
    writer.write_events(HistoryBatch(flow_runs=[
        FlowRunWrite("ab000001", "etl", "etl-ab000001", "Running", "RUNNING", start=now - 10, attempts=1,
                     host=socket.gethostname(), pid=dead.pid, heartbeat=now - 1),
        FlowRunWrite("ab000002", "etl", "etl-ab000002", "Running", "RUNNING", start=now - 5, attempts=1,
                     host=socket.gethostname(), pid=os.getpid(), heartbeat=now - 1),
    ]))
    writer.close()
    reader = SQLiteStore(db, readonly=True)
    try:
        assert [(r.id, r.state) for r in reader.list_runs()] == [("ab000002", "Running"), ("ab000001", "Crashed")]
        assert [r.id for r in reader.list_runs(state="crashed")] == ["ab000001"]
        assert [r.id for r in reader.list_runs(state="CRASHED", limit=1)] == ["ab000001"]
        assert [r.id for r in reader.list_runs(state="Running")] == ["ab000002"]
    finally:
        reader.close()
    assert query(db, "SELECT state FROM flow_runs WHERE id = 'ab000001'") == [("Running",)]  # read only


def _read_only_cli(home: Path, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _read_only_command(home, [sys.executable, "-m", "flowcore", *arguments]), capture_output=True,
        text=True, cwd=tmp_path, env={**os.environ, "FLOWCORE_HOME": str(home)}, timeout=120, check=False,
    )


@pytest.mark.parametrize("left_by", ["the flow", "a later reader"])
def test_runs_ls_show_and_logs_read_a_home_this_user_cannot_write(tmp_path: Path, left_by: str) -> None:
    """A history written earlier, in a directory this user cannot write, as the flow's
    process left it (-wal and -shm beside it) or as a later reader did (no -wal, no
    -shm: the last connection closed): ``flowcore runs`` reads it and changes nothing."""
    home = tmp_path / "home"
    home.mkdir()
    written = run_script(tmp_path, SMALL_FLOW, {"FLOWCORE_HOME": str(home)})
    assert written.returncode == 0, written.stderr
    if left_by == "a later reader":
        reader = SQLiteStore(home / "history.db")
        reader.close()
        assert sorted(p.name for p in home.iterdir()) == ["history.db"]
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    try:
        listed = _read_only_cli(home, tmp_path, "runs", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        [run] = json.loads(listed.stdout)
        assert (run["flow"], run["state"], run["task_counts"]) == ("small", "Completed", {"Completed": 3})
        shown = _read_only_cli(home, tmp_path, "runs", "show", run["id"][:8], "--json")
        assert shown.returncode == 0, shown.stderr
        assert sorted(t["name"] for t in json.loads(shown.stdout)["task_runs"]) == ["inc-0", "inc-1", "inc-2"]
        logs = _read_only_cli(home, tmp_path, "runs", "logs", run["id"][:8])
        assert logs.returncode == 0, logs.stderr
        assert "Finished in state Completed()" in logs.stdout
    finally:
        os.chmod(home, 0o755)
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before


# -- schema versions ---------------------------------------------------------------------------


def _documented_columns(readme: str, table: str) -> list[str]:
    """The column names the README's schema table gives ``table``: its row's backticked
    names outside parentheses."""
    import re

    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{table}` ")]
    cells = row.split(" | ", 1)[1]
    depth, top = 0, []
    for char in cells:
        depth += char == "("
        if depth == 0:
            top.append(char)
        depth -= char == ")"
    return re.findall(r"`([a-z_]+)`", "".join(top))


def test_the_readme_documents_the_schema_a_user_finds_with_sqlite3(tmp_path: Path) -> None:
    """The README's schema section names the version ``PRAGMA user_version`` gives and
    every column of the tables it documents, and says what a column holds today."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    store = SQLiteStore(tmp_path / "history.db")
    store.close()
    (version,) = query(tmp_path / "history.db", "PRAGMA user_version")[0]
    assert version == SCHEMA_VERSION
    assert f"### The schema (version {version}, `PRAGMA user_version`)" in readme
    for table in ("flow_runs", "flow_run_states", "task_runs", "logs", "task_run_results"):
        actual = [row[1] for row in query(tmp_path / "history.db", f"PRAGMA table_info({table})")]
        documented = _documented_columns(readme, table)
        missing = [c for c in actual if c not in documented and not c.startswith("worker_")]
        assert not missing, (table, missing)
    assert "not recorded yet" not in readme


def test_a_blank_database_at_version_0_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE notes (text TEXT)")  # someone else's table stays
    connection.execute("INSERT INTO notes VALUES ('keep me')")
    connection.commit()
    connection.close()
    assert query(db, "PRAGMA user_version") == [(0,)]
    store = SQLiteStore(db)
    store.close()
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "SELECT text FROM notes") == [("keep me",)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_a_new_migration_upgrades_an_older_database_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    store = SQLiteStore(db)
    store.write_events(HistoryBatch(flow_runs=[_flow("aa11", start=100.0)]))
    store.close()

    def add_notes(connection: sqlite3.Connection) -> None:
        connection.execute("ALTER TABLE flow_runs ADD COLUMN notes TEXT NOT NULL DEFAULT ''")

    connection = sqlite3.connect(db, isolation_level=None)
    try:
        assert migrate(connection, (*MIGRATIONS, add_notes), location=str(db)) == SCHEMA_VERSION
        assert migrate(connection, (*MIGRATIONS, add_notes), location=str(db)) == SCHEMA_VERSION + 1
    finally:
        connection.close()
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert query(db, "SELECT id, notes FROM flow_runs") == [("aa11", "")]


def test_a_version_4_database_gets_the_running_column_of_pending_maps(tmp_path: Path) -> None:
    """Step 5: a map row written by a flowcore that did not know which runs execute
    keeps its runs pending; one written after says which run."""
    db = tmp_path / "history.db"
    connection = sqlite3.connect(db, isolation_level=None)
    migrate(connection, MIGRATIONS[:4], location=str(db))
    connection.execute(
        "INSERT INTO pending_maps (id, flow_run_id, task, id_prefix, first_number, name_first, count, done, "
        "submitted_time, backend) VALUES ('p-10', 'aa11', 'step', 'p', 16, 0, 3, 1, 100.0, 'threads')"
    )
    connection.close()
    store = SQLiteStore(db)
    try:
        from flowcore.processes import process_start

        alive = _flow("aa11", state="Running", state_type="RUNNING", start=99.0, host=socket.gethostname(),
                      pid=os.getpid(), heartbeat=time.time(), process_start=process_start(os.getpid()))
        store.write_events(HistoryBatch(flow_runs=[alive]))
        assert store.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        detail = store.get_run("aa11")
        assert sorted((t.name, t.state) for t in detail.task_runs) == [
            ("step-0", "Pending"), ("step-1", "Pending"), ("step-2", "Pending"),
        ]  # done counts runs stored elsewhere: none here, so all three are listed
        assert detail.run.task_counts == {"Pending": 3}
        store.write_events(HistoryBatch(pending_maps=[PendingMapWrite(
            "p-10", "aa11", "step", "p", 16, 0, 3, 1, 100.0, "threads", None,
            json.dumps([[1, 101.5, "h", 7, "worker-1", None]]),
        )]))
        detail = store.get_run("aa11")
        [running] = [t for t in detail.task_runs if t.state == "Running"]
        assert (running.name, running.start, str(running.worker)) == ("step-1", 101.5, "h:7/worker-1")
        [listed] = store.list_runs()
        assert listed.task_counts == {"Pending": 1, "Running": 1}
    finally:
        store.close()


def test_a_database_from_a_newer_flowcore_is_refused_clearly(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    SQLiteStore(db).close()
    connection = sqlite3.connect(db)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.close()
    with pytest.raises(HistoryError, match="newer than this flowcore knows") as info:
        SQLiteStore(db)
    assert str(db) in str(info.value) and "upgrade flowcore" in str(info.value)


# -- the store's queries -------------------------------------------------------------------------


def _flow(run_id: str, *, flow_name: str = "etl", state: str = "Completed", state_type: str = "COMPLETED",
          start: float, end: float | None = None, host: str | None = None, pid: int | None = None,
          heartbeat: float | None = None, process_start: int | None = None) -> FlowRunWrite:
    return FlowRunWrite(
        run_id, flow_name, f"{flow_name}-{run_id[:8]}", state, state_type, start=start,
        end=end if end is not None or state_type == "RUNNING" else start + 1.0, attempts=1,
        host=host, pid=pid, heartbeat=heartbeat, process_start=process_start,
        state_entry=StateRecord(start, state_type, state),
    )


def _tasks(flow_run_id: str, states: list[str], start: float) -> list[TaskRunWrite]:
    return [
        TaskRunWrite(f"{flow_run_id}-t{i}", flow_run_id, "step", f"step-{i}", name,
                     "COMPLETED" if name == "Completed" else "FAILED", attempts=1, submitted=start,
                     start=start, end=start + 0.5)
        for i, name in enumerate(states)
    ]


def test_listing_filters_counts_and_prefixes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "history.db")
    now = time.time()
    try:
        store.write_events(HistoryBatch(
            flow_runs=[
                _flow("abc100", start=now - 3 * 86400),
                _flow("abc200", flow_name="train", state="Failed", state_type="FAILED", start=now - 3600),
                _flow("def300", start=now - 60),
            ],
            task_runs=_tasks("abc200", ["Completed", "Completed", "Failed"], now - 3600) + _tasks("def300", ["Completed"], now),
            logs=[LogWrite("def300", "def300-t0", now, 20, "INFO", "flowcore.task_runs", "hello", "step", "step-0"),
                  LogWrite("def300", None, now, 40, "ERROR", "flowcore.flow_runs", "bad")],
        ))
        assert [r.id for r in store.list_runs()] == ["def300", "abc200", "abc100"]
        assert [r.id for r in store.list_runs(limit=1)] == ["def300"]
        assert [r.id for r in store.list_runs(flow="train")] == ["abc200"]
        assert [r.id for r in store.list_runs(state="failed")] == ["abc200"]
        assert [r.id for r in store.list_runs(state="COMPLETED")] == ["def300", "abc100"]
        assert [r.id for r in store.list_runs(since=now - 86400)] == ["def300", "abc200"]
        assert store.list_runs(flow="train")[0].task_counts == {"Completed": 2, "Failed": 1}
        assert store.get_run("def").run.id == "def300"
        assert store.get_run("etl-def300").run.id == "def300"  # by name
        with pytest.raises(RunNotFoundError, match="ambiguous") as info:
            store.get_run("abc")
        assert "abc100" in str(info.value) and "abc200" in str(info.value)
        with pytest.raises(RunNotFoundError, match="no flow run"):
            store.get_run("fff")
        assert [r.message for r in store.logs("def300")] == ["hello", "bad"]
        assert [r.message for r in store.logs("def300", level=30)] == ["bad"]
        assert [r.message for r in store.logs("def300", task="step")] == ["hello"]
        first = store.logs("def300")[0]
        assert [r.message for r in store.logs("def300", after_id=first.id)] == ["bad"]

        assert store.delete_older_than(now - 86400) == 1
        assert [r.id for r in store.list_runs()] == ["def300", "abc200"]
        assert store.delete_older_than(now + 10) == 2
        assert store.list_runs() == []
        assert query(tmp_path / "history.db", "SELECT count(*) FROM task_runs_all") == [(0,)]
        assert query(tmp_path / "history.db", "SELECT count(*) FROM logs") == [(0,)]
    finally:
        store.close()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_run_whose_process_is_gone_reads_crashed(tmp_path: Path) -> None:
    from flowcore.history.liveness import process_start

    store = SQLiteStore(tmp_path / "history.db")
    now = time.time()
    here = socket.gethostname()
    try:
        store.write_events(HistoryBatch(
            flow_runs=[
                _flow("aa0001", state="Running", state_type="RUNNING", start=now, host=here,
                      pid=_dead_pid(), heartbeat=now),
                _flow("aa0002", state="Running", state_type="RUNNING", start=now, host=here,
                      pid=os.getpid(), heartbeat=now - 3600, process_start=process_start(os.getpid())),
                _flow("aa0003", state="Running", state_type="RUNNING", start=now, host="elsewhere",
                      pid=1234, heartbeat=now),
                _flow("aa0004", state="Running", state_type="RUNNING", start=now - 7200, host="elsewhere",
                      pid=1234, heartbeat=now - 3600),
                _flow("aa0005", state="Running", state_type="RUNNING", start=now, host=here,
                      pid=os.getpid(), heartbeat=now, process_start=process_start(os.getpid()) + 1),
            ],
            task_runs=[TaskRunWrite("aa0001-t", "aa0001", "step", "step-1", "Running", "RUNNING", start=now)],
        ))
        states = {r.id: r.state for r in store.list_runs()}
        assert states == {"aa0001": "Crashed", "aa0002": "Running", "aa0003": "Running",
                          "aa0004": "Crashed", "aa0005": "Crashed"}
        detail = store.get_run("aa0001")
        assert "ended without recording a final state" in detail.run.message
        assert [t.state for t in detail.task_runs] == ["Crashed"]
        assert detail.run.states[-1].name == "Crashed"
        # The reader recorded what it found: a plain sqlite3 query sees it too.
        assert query(tmp_path / "history.db", "SELECT id FROM flow_runs WHERE state = 'Crashed' ORDER BY id") == [
            ("aa0001",), ("aa0004",), ("aa0005",)]
        assert sorted(r.id for r in store.list_runs(state="crashed")) == ["aa0001", "aa0004", "aa0005"]
    finally:
        store.close()


def test_the_retention_setting_is_applied_by_the_writer(home: Path, tmp_path: Path) -> None:
    store = SQLiteStore(home / "history.db")
    old = time.time() - 10 * 86400
    store.write_events(HistoryBatch(flow_runs=[_flow("0ld001", start=old)], task_runs=_tasks("0ld001", ["Completed"], old)))
    store.close()
    result = run_script(tmp_path, SMALL_FLOW, {"FLOWCORE_HISTORY_RETENTION": "7d"})
    assert result.returncode == 0, result.stderr
    assert query(home / "history.db", "SELECT flow FROM flow_runs") == [("small",)]
    assert query(home / "history.db", "SELECT count(*) FROM task_runs_all") == [(3,)]


# -- another store, registered as a plugin ------------------------------------------------------


class MemoryStore(HistoryStore):
    """A whole (small) history store kept in memory: what a plugin provides."""

    def __init__(self) -> None:
        self.location = "memory"
        self.runs: dict[str, FlowRunWrite] = {}
        self.tasks: dict[str, TaskRunWrite] = {}
        self.log_lines: list[LogWrite] = []
        self.lock = threading.Lock()

    def write_events(self, batch: HistoryBatch) -> None:
        with self.lock:
            for run in batch.flow_runs:
                self.runs[run.id] = run
            blocks = [write for block in batch.task_run_blocks for write in block.writes()]
            for write in [*batch.task_runs, *batch.task_run_updates, *blocks]:
                if write.id in self.tasks:
                    self.tasks[write.id].update(write)
                else:
                    self.tasks[write.id] = write
            self.log_lines += batch.logs

    def list_runs(self, *, flow: str | None = None, state: str | None = None, since: float | None = None,
                  limit: int | None = 20) -> list[FlowRunRecord]:
        return [FlowRunRecord(r.id, r.flow, r.name, r.state, r.state_type) for r in self.runs.values()][:limit]

    def get_run(self, run_id: str) -> RunDetail:
        raise RunNotFoundError(run_id)

    def logs(self, flow_run_id: str, *, after_id: int = 0, level: int = 0, task: str | None = None,
             limit: int | None = None) -> list[LogRecord]:
        return []

    def delete_older_than(self, cutoff: float) -> int:
        return 0


def test_another_history_store_plugs_in_without_touching_the_core(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowcore")
    store = MemoryStore()

    class MemoryPlugin:
        @hookimpl
        def flowcore_history_stores(self) -> list[HistoryStoreSpec]:
            return [HistoryStoreSpec("memory", lambda settings: store, "kept in memory")]

    registry = get_registry()
    plugin = MemoryPlugin()
    registry.register(plugin, name="memory-history")
    try:
        assert registry.history_stores()["memory"][1] == "memory-history"
        assert registry.history_stores()["sqlite"][1] == "flowcore.plugins.history"
        monkeypatch.setenv("FLOWCORE_HISTORY_STORE", "memory")

        @flow
        def remembered() -> int:
            return square(4)

        assert remembered() == 16
        (run,) = store.runs.values()
        assert run.flow == "remembered" and run.state == "Completed"
        assert [t.state for t in store.tasks.values()] == ["Completed"]
        assert any(line.message == "squaring 4" for line in store.log_lines)
        assert not (home / "history.db").exists()
    finally:
        registry.unregister(plugin)

    class Duplicate:
        @hookimpl
        def flowcore_history_stores(self) -> list[HistoryStoreSpec]:
            return [HistoryStoreSpec("sqlite", lambda settings: store)]

    with pytest.raises(BackendRegistrationError, match="history store name 'sqlite' is registered twice"):
        registry.register(Duplicate(), name="duplicate-history")
    assert "duplicate-history" not in [name for name, _ in registry.pm.list_name_plugin()]


class _CountedStore(SQLiteStore):
    """The SQLite store, counting the reads ``flowcore runs logs`` makes of it."""

    calls: ClassVar[list[str]] = []

    def get_run(self, run_id: str) -> RunDetail:
        type(self).calls.append("get_run")
        return super().get_run(run_id)

    def get_flow_run(self, run_id: str) -> FlowRunRecord:
        type(self).calls.append("get_flow_run")
        return super().get_flow_run(run_id)


def _counted_store(monkeypatch: pytest.MonkeyPatch, home: Path) -> Any:
    class CountedPlugin:
        @hookimpl
        def flowcore_history_stores(self) -> list[HistoryStoreSpec]:
            return [HistoryStoreSpec("counted", lambda settings: _CountedStore(home / "history.db"))]

    plugin = CountedPlugin()
    get_registry().register(plugin, name="counted-history")
    monkeypatch.setenv("FLOWCORE_HISTORY_STORE", "counted")
    _CountedStore.calls = []
    return plugin


def test_runs_logs_follow_polls_the_run_without_reading_its_task_runs(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Following a run with a big map must not read all its task runs twice a second:
    a poll reads the flow run's row; only ``--task`` naming nothing reads them."""
    from flowcore.cli import main

    now = time.time()
    runs = [FlowRunWrite("f0000001", "etl", "etl-f0000001", "Completed", "COMPLETED", start=now - 2, end=now - 0.5,
                         attempts=1, state_entry=StateRecord(now - 0.5, "COMPLETED", "Completed"))]
    tasks = [TaskRunWrite(f"f0000001-{i}", "f0000001", "t", f"t-{i}", "Completed", "COMPLETED", start=now - 1,
                          end=now - 1) for i in range(3)]
    logs = [LogWrite("f0000001", None, now - 1, logging.INFO, "INFO", "flowcore.flow_runs", "hello")]
    store = SQLiteStore(home / "history.db")
    store.write_events(HistoryBatch(flow_runs=runs, task_runs=tasks, logs=logs))
    store.close()
    plugin = _counted_store(monkeypatch, home)
    try:
        assert main(["runs", "logs", "f000", "--follow"]) == 0
        assert "hello" in capsys.readouterr().out
        assert "get_run" not in _CountedStore.calls and "get_flow_run" in _CountedStore.calls
        _CountedStore.calls = []
        assert main(["runs", "logs", "f000", "--task", "t"]) == 0
        assert _CountedStore.calls == ["get_flow_run", "get_run"]  # no record of task t: does it exist?
    finally:
        get_registry().unregister(plugin)


def test_runs_logs_follow_of_a_run_that_ended_long_ago_ends_at_once(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its last lines were written long ago: nothing to wait for, no poll."""
    from flowcore.cli import main

    now = time.time()
    runs = [FlowRunWrite("f0000002", "etl", "etl-f0000002", "Completed", "COMPLETED", start=now - 600,
                         end=now - 599, attempts=1, state_entry=StateRecord(now - 599, "COMPLETED", "Completed"))]
    logs = [LogWrite("f0000002", None, now - 599, logging.INFO, "INFO", "flowcore.flow_runs", "long ago")]
    store = SQLiteStore(home / "history.db")
    store.write_events(HistoryBatch(flow_runs=runs, logs=logs))
    store.close()
    plugin = _counted_store(monkeypatch, home)
    try:
        assert main(["runs", "logs", "f000", "--follow"]) == 0
        assert "long ago" in capsys.readouterr().out
        assert _CountedStore.calls == ["get_flow_run"]
    finally:
        get_registry().unregister(plugin)


def test_json_keys_of_records_are_stable() -> None:
    run = FlowRunRecord("id1", "f", "f-id1", "Completed", "COMPLETED", start=1.0, end=3.5)
    document = run.to_json()
    assert {"id", "flow", "name", "state", "start", "end", "duration_s", "backend", "task_counts"} <= set(document)
    assert document["duration_s"] == 2.5 and document["start"] == "1970-01-01T00:00:01+00:00"
    json.dumps(document)
    assert flowcore.__version__


# -- the run-event stream as the history uses it --------------------------------------------------


def test_an_observer_that_raises_does_not_keep_the_history_from_its_events(home: Path) -> None:
    class Broken:
        @hookimpl
        def flowcore_run_events(self, events: Any) -> None:
            raise RuntimeError("a broken observer")

    registry = get_registry()
    broken = Broken()
    registry.register(broken, name="broken-observer")
    try:
        assert registry.run_event_functions is not None and len(registry.run_event_functions) == 2

        @flow
        def observed_twice() -> int:
            return square(3)

        assert observed_twice() == 9
    finally:
        registry.unregister(broken)
    (run,) = SQLiteStore(home / "history.db").list_runs(flow="observed_twice")
    assert run.task_counts == {"Completed": 1}


def test_history_off_at_load_leaves_the_event_stream_unobserved(tmp_path: Path) -> None:
    code = "from flowcore.registry import get_registry; print(get_registry().observes_events)"
    for value, expected in (("0", "False"), ("1", "True")):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "FLOWCORE_HISTORY": value}, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_a_new_task_run_row_that_exists_already_is_updated_not_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "history.db")
    try:
        pending = TaskRunWrite("x-1", None, "step", "step-1", "Pending", "PENDING", submitted=1.0)
        store.write_events(HistoryBatch(task_runs=[pending]))
        done = TaskRunWrite("x-1", None, "step", "step-1", "Completed", "COMPLETED", attempts=1, start=2.0, end=3.0)
        other = TaskRunWrite("x-2", None, "step", "step-2", "Completed", "COMPLETED", attempts=1, start=2.0, end=3.0)
        store.write_events(HistoryBatch(task_runs=[done, other]))  # "new", but x-1 is there
    finally:
        store.close()
    assert query(tmp_path / "history.db", "SELECT id, state, submitted_time, end_time FROM task_runs ORDER BY id") == [
        ("x-1", "Completed", 1.0, 3.0), ("x-2", "Completed", None, 3.0)]


def test_a_bad_history_setting_is_named_and_the_flow_still_runs(tmp_path: Path) -> None:
    result = run_script(tmp_path, SMALL_FLOW, {"FLOWCORE_HOME": str(tmp_path / "h"), "FLOWCORE_HISTORY": "maybe"})
    assert result.returncode == 0, result.stderr
    assert "[1, 2, 3]" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if "run history is off" in line]
    assert "FLOWCORE_HISTORY='maybe' is not understood" in warning and "use 0" in warning
    assert not (tmp_path / "h").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_records_its_own_runs(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import os, sys
        from flowcore import flow, task

        @task
        def inc(x):
            return x + 1

        @flow
        def forking(where: str):
            return [f.result() for f in inc.map(range(4))]

        if __name__ == "__main__":
            forking("parent")
            pid = os.fork()
            if pid == 0:
                forking("child")
                sys.exit(0)  # atexit flushes the child's writer
            _, status = os.waitpid(pid, 0)
            forking("parent again")
            print("child exit", os.waitstatus_to_exitcode(status))
    """, {"FLOWCORE_HOME": str(tmp_path / "h")})
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout
    rows = query(tmp_path / "h" / "history.db", "SELECT parameters, pid FROM flow_runs ORDER BY start_time")
    assert [json.loads(p)["where"] for p, _ in rows] == ["parent", "child", "parent again"]
    assert rows[0][1] == rows[2][1] != rows[1][1]
    assert query(tmp_path / "h" / "history.db", "SELECT count(*) FROM task_runs_all WHERE state = 'Completed'") == [(12,)]


@task(retries=1)
def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


class ColumnChecker:
    """Reads every batch that offers columns both ways and keeps what it saw."""

    def __init__(self) -> None:
        self.compared = 0
        self.problems: list[str] = []

    @hookimpl
    def flowcore_run_events(self, events: Any) -> None:
        columns_of = getattr(events, "columns", None)
        columns = columns_of() if columns_of is not None else None
        if columns is None:
            return
        per_run = len(columns.kinds)
        if len(events) != per_run * len(columns):
            self.problems.append(f"{len(events)} events for {len(columns)} runs of {columns.kinds}")
        for position, event in enumerate(events):
            run = position // per_run
            self.compared += 1
            expected = (columns.kinds[position % per_run], columns.run_id(run), columns.run_name(run),
                        columns.task_name, columns.flow_run_id, columns.backend)
            seen = (event.kind, event.task_run_id, event.task_run_name, event.task_name, event.flow_run_id,
                    event.backend)
            if seen != expected:
                self.problems.append(f"{seen} != {expected}")
            if event.kind is not EventKind.SUBMITTED and event.worker != columns.worker:
                self.problems.append(f"worker {event.worker} != {columns.worker}")
            if event.kind is EventKind.FINISHED:
                assert event.state is not None
                state = columns.states.get(run)
                name, attempts = (state.name, state.attempts) if state is not None else ("Completed", 1)
                timing = (event.state.started_at, event.timestamp)
                if (event.state.name, event.state.attempts) != (name, attempts) or timing != (columns.starts[run], columns.ends[run]):
                    self.problems.append(f"{event.task_run_id}: {event.state!r} vs columns {name} {attempts} "
                                         f"{timing} vs {(columns.starts[run], columns.ends[run])}")
            elif event.kind is EventKind.SUBMITTED and event.timestamp != columns.submitted_at(run):
                self.problems.append("submitted time differs")


def test_a_maps_batches_read_as_columns_agree_with_their_events(home: Path) -> None:
    checker = ColumnChecker()
    registry = get_registry()
    registry.register(checker, name="column-checker")
    try:
        @flow(backend="loky")
        def mixed() -> list[int]:
            futures = odd_fails.map(range(40))
            flowcore.wait(futures)
            return [f.result() for f in futures if f.state.is_completed()]

        @flow(backend="loky")
        def plain() -> list[int]:  # whole batches that completed: read from slices
            return [f.result() for f in square.map(range(300))]

        assert mixed() == list(range(0, 40, 2))
        compared = checker.compared
        assert plain() == [x * x for x in range(300)]
    finally:
        registry.unregister(checker)
    assert compared >= 120 and checker.compared >= compared + 900 and checker.problems == []
    store = SQLiteStore(home / "history.db")
    try:
        (run,) = store.list_runs(flow="mixed")
        assert run.task_counts == {"Completed": 20, "Failed": 20}
        tasks = store.get_run(run.id).task_runs
        failed = [t for t in tasks if t.state == "Failed"]
        assert all(t.attempts == 2 and t.error_type == "ValueError" and t.traceback for t in failed)
        assert all(t.attempts == 1 and t.error_type is None for t in tasks if t.state == "Completed")
        assert all(t.worker is not None and t.worker.pid != os.getpid() and t.submitted is not None
                   and t.start is not None and t.end is not None and t.end >= t.start for t in tasks)
    finally:
        store.close()


MAP_WAITING_FOR_GO = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, get_backend, task

    @task
    def wait_for_go(x, go):
        deadline = time.monotonic() + 120  # never outlive a test killed before it says go
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return x

    @flow(backend=get_backend(sys.argv[2], max_workers=2))
    def waiting(go: str):
        return [f.result() for f in wait_for_go.map(range(6), go=go)]

    if __name__ == "__main__":
        print(waiting(sys.argv[1]))
"""


def _running_map(home: Path, tmp_path: Path, backend: str) -> tuple[subprocess.Popen[str], Path, Path, str]:
    """Start a flow whose map of 6 runs waits for a file, on ``backend`` with 2 workers;
    return once its pending map row is written: (process, go file, db, flow run id)."""
    script = tmp_path / "waiting.py"
    script.write_text(textwrap.dedent(MAP_WAITING_FOR_GO))
    go = tmp_path / "go"
    process = subprocess.Popen([sys.executable, str(script), str(go), backend], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    db = home / "history.db"
    deadline = time.monotonic() + 60
    waiting: list[tuple[Any, ...]] = []
    try:
        while not waiting:  # a map that outlives the writer's hold is written as one pending row
            assert process.poll() is None, process.communicate()  # it ended: its output says why
            assert time.monotonic() < deadline, "the map's pending row was not written within 60 s"
            time.sleep(0.1)
            if db.exists():
                with contextlib.suppress(sqlite3.OperationalError):  # the schema is being made
                    waiting = query(db, "SELECT flow_run_id, task, count - done, submitted_time FROM pending_maps")
    except BaseException:
        go.touch()
        process.communicate(timeout=120)
        raise
    [(flow_run_id, task_name, left, submitted)] = waiting
    assert (task_name, left) == ("wait_for_go", 6) and submitted is not None
    return process, go, db, flow_run_id


def _finish_running_map(process: subprocess.Popen[str], go: Path, db: Path) -> None:
    go.touch()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.strip() == "[0, 1, 2, 3, 4, 5]"
    rows = query(db, "SELECT state, count(*), count(submitted_time), count(worker_pid) FROM task_runs_all GROUP BY 1")
    assert rows == [("Completed", 6, 6, 6)]
    assert query(db, "SELECT count(*) FROM pending_maps") == [(0,)]  # gone once every run finished


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_the_runs_of_a_map_are_recorded_running_while_they_execute(
    home: Path, tmp_path: Path, backend: str
) -> None:
    """A map's runs read Pending until they start and Running, with their start and
    worker, while they execute (they read Pending until their batch ended)."""
    process, go, db, flow_run_id = _running_map(home, tmp_path, backend)
    try:
        deadline = time.monotonic() + 60
        while True:
            store = SQLiteStore(db, readonly=True)
            try:
                detail = store.get_run(flow_run_id)
            finally:
                store.close()
            running = [t for t in detail.task_runs if t.state == "Running"]
            if len(running) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(t.name for t in detail.task_runs) == [f"wait_for_go-{i}" for i in range(6)]
        assert len(running) == 2, [(t.name, t.state) for t in detail.task_runs]
        assert {t.state for t in detail.task_runs} == {"Running", "Pending"}
        assert detail.run.task_counts == {"Running": 2, "Pending": 4}
        for run in running:
            assert run.state_type == "RUNNING" and run.end is None
            assert run.start is not None and run.submitted is not None and run.start >= run.submitted
            assert run.worker is not None and run.worker.pid is not None
            # threads run in the flow's process; loky's workers are processes of their own
            assert (run.worker.pid == process.pid) == (backend == "threads")
        assert len({str(run.worker) for run in running}) == 2  # one per worker
        listed = SQLiteStore(db, readonly=True)
        try:
            [summary] = [r for r in listed.list_runs() if r.id == flow_run_id]
        finally:
            listed.close()
        assert summary.task_counts == {"Running": 2, "Pending": 4}
        from flowcore.dashboard.queries import HistoryQueries

        queries = HistoryQueries(db)
        try:
            workers = queries.workers(summary)
        finally:
            queries.close()
        assert workers.pending == 4 and workers.busy == 2  # the dashboard's Workers view
        assert sorted(n for w in workers.workers for n in w.running) == sorted(t.name for t in running)
        shown = subprocess.run([sys.executable, "-m", "flowcore", "runs", "show", flow_run_id],
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        lines = [line for line in shown.stdout.splitlines() if " Running " in line and "wait_for_go-" in line]
        assert len(lines) == 2, shown.stdout
        for line in lines:  # how long it has run so far
            assert re.search(r" \d+(ms|\.\ds|m\d\ds)\+ ", line), line
    finally:
        _finish_running_map(process, go, db)


BACKEND_OPTIONS_FLOWS = """
    from flowcore import flow, get_backend

    @flow
    def plain() -> int:
        return 1

    @flow(backend=get_backend("threads", max_workers=2))
    def given() -> int:
        return 2

    if __name__ == "__main__":
        plain()
        given()
"""


def test_the_options_a_runs_backend_was_made_with_are_recorded(home: Path, tmp_path: Path) -> None:
    """Whichever way a backend gets its options (``flowcore run --backend-options``, the
    environment, ``get_backend(...)`` given to a flow), the run's history row keeps
    them; a backend object built by hand records none."""
    script = tmp_path / "options_flows.py"
    script.write_text(textwrap.dedent(BACKEND_OPTIONS_FLOWS))
    env = {**os.environ, "FLOWCORE_HOME": str(home)}
    cli = subprocess.run(
        [sys.executable, "-m", "flowcore", "run", f"{script}:plain", "--backend", "threads",
         "--backend-options", '{"max_workers": 3}'],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )
    assert cli.returncode == 0, cli.stderr
    configured = run_script(
        tmp_path, BACKEND_OPTIONS_FLOWS,
        env={"FLOWCORE_HOME": str(home), "FLOWCORE_BACKEND": "threads", "FLOWCORE_BACKEND_OPTIONS": '{"max_workers": 4}'},
    )
    assert configured.returncode == 0, configured.stderr

    from flowcore.backends.threads import ThreadsBackend

    @flow(backend=ThreadsBackend(max_workers=5))
    def by_hand() -> int:
        return 5

    assert by_hand() == 5
    rows = query(home / "history.db", "SELECT flow, backend, backend_options FROM flow_runs ORDER BY start_time")
    assert [(flow_name, backend, json.loads(options)) for flow_name, backend, options in rows] == [
        ("plain", "threads", {"max_workers": 3}),
        ("plain", "threads", {"max_workers": 4}),
        ("given", "threads", {"max_workers": 2}),
        ("by_hand", "threads", {}),
    ]


@task
def step(x: int) -> int:
    return x + 1


def test_direct_calls_are_written_while_their_flow_still_runs(home: Path) -> None:
    """Runs of direct calls wait in their thread's buffer; when the thread makes no
    more calls (the body sleeps, or waits on something else), the writer takes them
    within a drain or two: a live reader sees them before the flow ends."""
    database = home / "history.db"
    written_while_running: list[int] = []

    @flow
    def calls_then_waits() -> list[int]:
        values = [step(i) for i in range(3)]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError):  # not created yet
                (count,) = query(database, "SELECT count(*) FROM task_runs_all WHERE task = 'step'")[0]
                if count == 3:
                    written_while_running.append(count)
                    break
            time.sleep(0.05)
        return values

    assert calls_then_waits() == [1, 2, 3]
    assert written_while_running == [3]
    assert query(database, "SELECT count(*), count(DISTINCT id) FROM task_runs_all WHERE task = 'step'") == [(3, 3)]


@task
def nested_inner(x: int) -> tuple[int, str | None, str]:
    context = flowcore.get_run_context()
    assert context.task_run is not None
    return x, context.flow_run.id if context.flow_run else None, context.task_run.name


@task
def nested_outer(x: int) -> tuple[int, str | None, str]:
    return nested_inner(x)  # a direct call in a task body, on a pool thread


def test_a_task_called_directly_in_a_task_body_on_a_pool_thread_belongs_to_the_flow_run(home: Path) -> None:
    """The nested run sees its flow run, takes its name from the flow run's numbers
    (unique beside the submitted runs of the same task) and is recorded under it, even
    though the pool thread that ran it ended before the flow run reported."""

    @flow(backend="threads")
    def nests() -> tuple[str, list[tuple[int, str | None, str]]]:
        context = flowcore.get_run_context()
        assert context.flow_run is not None
        direct = nested_inner(100)
        submitted = [nested_outer.submit(i) for i in range(4)]
        return context.flow_run.id, [direct] + [f.result() for f in submitted]

    flow_run_id, results = nests()
    assert [value for value, _, _ in results] == [100, 0, 1, 2, 3]
    assert {seen for _, seen, _ in results} == {flow_run_id}
    names = [name for _, _, name in results]
    assert sorted(names) == [f"nested_inner-{n}" for n in range(5)]
    rows = query(home / "history.db", "SELECT name, flow_run_id, state FROM task_runs_all WHERE task = 'nested_inner'")
    assert sorted(rows) == [(name, flow_run_id, "Completed") for name in sorted(names)]


@task
def waits_for_file(path: str) -> int:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.02)
    return os.getpid()


def test_a_long_run_on_a_process_backend_is_recorded_running_on_its_worker(home: Path, tmp_path: Path) -> None:
    """A run on loky whose body runs long reads Running, with its start and its worker
    process, while it runs (the parent learns it from the worker's journal); then
    Completed, under the same id, one row."""
    if not get_registry().defers_runs:
        pytest.skip("the history plugin does not observe runs here")
    release = tmp_path / "release"
    watcher = RunningWatch(home / "history.db", "waits_for_file", "id, start_time, worker_pid", release.touch)

    @flow(backend="loky")
    def on_loky() -> int:
        watcher.start()
        return waits_for_file.submit(str(release)).result()

    before = time.time()
    try:
        worker_pid = on_loky()
    finally:
        release.touch()
        watcher.join()
    assert len(watcher.rows) == 1, "never recorded Running while it ran"
    run_id, start, pid = watcher.rows[0]
    assert pid == worker_pid != os.getpid()
    assert before - 0.01 <= start <= time.time()  # the journal keeps milliseconds
    rows = query(home / "history.db", "SELECT id, state, worker_pid FROM task_runs_all WHERE task = 'waits_for_file'")
    assert rows == [(run_id, "Completed", worker_pid)]


def test_a_run_reported_long_after_it_started_is_written_at_once_not_held() -> None:
    """The writer holds a run that is not final yet for up to HOLD_PENDING_S before it
    writes it (most runs end by then: one write instead of two); but a run whose
    STARTED (or SUBMITTED) arrives late on purpose -- a long direct or awaited run
    reported Running by ``direct_runs.announce``, dated at its start, at least
    ANNOUNCE_AFTER_S ago -- is written at that drain: held a second more, a 2 s run was
    never shown Running. A run that has just started is still held."""
    from flowcore.events import TaskRunEvent
    from flowcore.history.recorder import ANNOUNCE_AFTER_S, _OpenRuns, _Pending

    @task
    def step() -> None:
        pass

    now = time.time()
    long_running = TaskRunEvent(
        EventKind.STARTED, "prefix-1", "step-0", "step", "flow-1", now - 2 * ANNOUNCE_AFTER_S, None, task=step
    )
    just_started = TaskRunEvent(EventKind.STARTED, "prefix-2", "step-1", "step", "flow-1", now, None, task=step)
    open_runs = _OpenRuns()
    pending = _Pending(open_runs)
    pending.add_tasks([long_running, just_started])
    batch = pending.finish(time.monotonic(), release=False)
    assert [(w.id, w.state) for w in batch.task_runs] == [("prefix-1", "Running")]
    assert list(open_runs.held) == ["prefix-2"]  # held until it ends or its time is up
    assert open_runs.written == {"prefix-1"}  # its end is an update


def test_subflows_run_in_process_workers_are_written_before_their_flow_returns(home: Path, tmp_path: Path) -> None:
    """A flow called in a task body on loky runs in the worker process, a subflow of the
    task's flow run there: its record must be committed when it returns, as a top-level
    run's is (it is the outermost run of that process), so that the history read right
    after the parent returns has every subflow."""
    script = tmp_path / "subflows_in_workers.py"
    script.write_text(textwrap.dedent("""
        import os, sqlite3
        from flowcore import flow, task

        @flow
        def child(i):
            return i

        @task
        def calls_child(i):
            return child(i)

        @flow(backend="loky")
        def parent():
            return [f.result() for f in [calls_child.submit(i) for i in range(4)]]

        if __name__ == "__main__":
            assert parent() == [0, 1, 2, 3]
            db = os.path.join(os.environ["FLOWCORE_HOME"], "history.db")
            connection = sqlite3.connect(db)
            rows = connection.execute(
                "SELECT c.state, c.pid != p.pid FROM flow_runs AS c JOIN flow_runs AS p ON c.parent_id = p.id "
                "WHERE c.flow = 'child' AND p.flow = 'parent'"
            ).fetchall()
            print(sorted(rows))
    """))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == str([("Completed", 1)] * 4)


def _the_one_run(db: Path) -> tuple[FlowRunRecord, RunDetail]:
    """The only flow run in the history file ``db`` (ValueError if not exactly one), read
    as ``runs ls`` and ``runs show`` read it."""
    store = SQLiteStore(db, readonly=True)
    try:
        [run] = store.list_runs()
        return run, store.get_run(run.id)
    finally:
        store.close()


def test_a_map_stopped_by_its_failing_flow_leaves_no_pending_runs(home: Path, tmp_path: Path) -> None:
    """On loky, a flow whose body fails while its map runs stops the map: batches out are
    lost and their runs end one by one (Cancelled). Each run counts once, and the map's
    pending row goes (it said 4 Pending besides 16 Cancelled and 4 Completed: 24 of 20)."""
    script = tmp_path / "stopped_map.py"
    script.write_text(textwrap.dedent("""
        import time
        from flowcore import flow, get_backend, task

        @task
        def slow(x):
            time.sleep(0.5)
            return x

        @flow(backend=get_backend("loky", max_workers=2))
        def boom():
            slow.map(range(20))
            time.sleep(1.5)
            raise RuntimeError("stop")

        if __name__ == "__main__":
            try:
                boom()
            except RuntimeError:
                pass
    """))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    db = home / "history.db"
    run, detail = _the_one_run(db)
    assert run.state == "Failed"
    assert sum(run.task_counts.values()) == 20, run.task_counts
    assert "Pending" not in run.task_counts and "Running" not in run.task_counts
    assert sorted(t.name for t in detail.task_runs) == sorted(f"slow-{i}" for i in range(20))
    assert query(db, "SELECT count(*) FROM pending_maps") == [(0,)]


def test_the_runs_of_an_async_map_awaited_together_read_running(home: Path, tmp_path: Path) -> None:
    """An async task's map on threads awaits a batch's runs together on a worker
    thread's loop: every run of a batch out reads Running while they wait."""
    script = tmp_path / "async_map.py"
    script.write_text(textwrap.dedent("""
        import asyncio, sys, time
        from pathlib import Path
        from flowcore import flow, get_backend, task

        @task
        async def wait_for_go(x, go):
            deadline = time.monotonic() + 120
            while not Path(go).exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return x

        @flow(backend=get_backend("threads", max_workers=2))
        def waiting(go: str):
            return [f.result() for f in wait_for_go.map(range(6), go=go)]

        if __name__ == "__main__":
            print(waiting(sys.argv[1]))
    """))
    go = tmp_path / "go"
    process = subprocess.Popen([sys.executable, str(script), str(go)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    db = home / "history.db"
    try:
        deadline = time.monotonic() + 60
        running: list[Any] = []
        while len(running) < 2:
            assert process.poll() is None, "the flow ended before its runs were seen running"
            assert time.monotonic() < deadline, "no two runs of the map read Running within 60 s"
            time.sleep(0.2)
            if not db.exists():
                continue
            # the file or its schema is being made; the run not written yet
            with contextlib.suppress(sqlite3.OperationalError, HistoryError, ValueError):
                _, detail = _the_one_run(db)
                running = [t for t in detail.task_runs if t.state == "Running"]
        assert {t.state for t in detail.task_runs} <= {"Running", "Pending"} and len(detail.task_runs) == 6
        for task_run in running:
            assert task_run.start is not None and task_run.worker is not None
            assert task_run.worker.pid == process.pid and str(task_run.worker.thread).startswith("flowcore-thread")
    finally:
        go.touch()
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.strip() == "[0, 1, 2, 3, 4, 5]"
