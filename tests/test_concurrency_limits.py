"""Tag concurrency limits: stored in history.db, enforced across processes, released
when a holder dies, 0 blocks, ``concurrency()`` in user code, the CLI, Dask semaphores."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowcore import concurrency, flow, limits, task
from flowcore.cli import main
from flowcore.errors import (
    ConcurrencyLimitError,
    ConcurrencyLimitNotFoundError,
    ConcurrencySlotTimeoutError,
)
from flowcore.limits import slots
from flowcore.limits.store import LimitStore, stamp_path, store_path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "home"
    monkeypatch.setenv("FLOWCORE_HOME", str(directory))
    for name in ("FLOWCORE_HISTORY", "FLOWCORE_HISTORY_STORE", "FLOWCORE_HISTORY_STORE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    limits.forget_limited_tags()
    yield directory
    limits.forget_limited_tags()


@pytest.fixture
def store(home: Path) -> Iterator[LimitStore]:
    opened = LimitStore(store_path())
    yield opened
    opened.close()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    current = peak = 0
    for _, step in points:
        current += step
        peak = max(peak, current)
    return peak


# -- the CLI and the store ---------------------------------------------------------------


def test_create_ls_inspect_rm(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["concurrency-limit", "ls"]) == 0
    assert "no concurrency limits" in capsys.readouterr().out
    assert main(["concurrency-limit", "create", "db", "2"]) == 0
    assert main(["concurrency-limit", "create", "api", "0"]) == 0
    assert main(["concurrency-limit", "create", "db", "3"]) == 0  # changes it
    capsys.readouterr()
    assert main(["concurrency-limit", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["tag"], e["limit"], e["active_slots"]) for e in listed] == [("api", 0, 0), ("db", 3, 0)]
    with concurrency("db", occupy=2):
        assert main(["concurrency-limit", "inspect", "db"]) == 0
        out = capsys.readouterr().out
        assert "limit 3, 2 slot(s) taken" in out and str(os.getpid()) in out and "concurrency(db)" in out
    assert main(["concurrency-limit", "rm", "db"]) == 0
    assert main(["concurrency-limit", "rm", "db"]) == 2
    err = capsys.readouterr().err
    assert "no concurrency limit for tag 'db'" in err and "limits: api" in err
    assert main(["concurrency-limit", "inspect", "nope"]) == 2


def test_prefects_command_names_work_too(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `prefect concurrency-limit delete TAG` is what a Prefect user types.
    assert main(["concurrency-limit", "create", "db", "2"]) == 0
    assert main(["concurrency-limit", "delete", "db"]) == 0
    capsys.readouterr()
    assert main(["concurrency-limit", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_limits_live_in_the_history_file_as_migration_step_3(store: LimitStore, home: Path) -> None:
    import sqlite3

    from flowcore.history.sqlite import SCHEMA_VERSION

    store.set_limit("db", 1)
    connection = sqlite3.connect(home / "history.db")
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        assert connection.execute("SELECT tag, slots FROM concurrency_limits").fetchall() == [("db", 1)]
    finally:
        connection.close()
    with pytest.raises(ConcurrencyLimitError, match="must be an int >= 0"):
        store.set_limit("db", -1)
    with pytest.raises(ConcurrencyLimitNotFoundError):
        store.remove("other")


def test_no_limit_costs_no_database(home: Path) -> None:
    """Without any limit ever made, a tagged task never opens (or creates) history.db."""

    @task(tags=["db"])
    def tagged(x: int) -> int:
        return x + 1

    assert tagged(1) == 2
    assert limits.limited_tags(frozenset({"db"})) == frozenset()
    assert not (home / "history.db").exists() and not stamp_path(home / "history.db").exists()


# -- in one process ------------------------------------------------------------------


@task(tags=["db"])
def interval(seconds: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def test_threads_respect_a_limit_of_two(store: LimitStore) -> None:
    store.set_limit("db", 2)

    @flow(backend="threads")
    def many() -> list[tuple[float, float]]:
        return [f.result() for f in interval.map([0.15] * 8)]

    intervals = many()
    assert max_overlap(intervals) == 2  # bounded, and the bound is used
    assert store.get("db").holders == ()  # every slot given back


def test_a_limit_of_zero_blocks_and_says_why(store: LimitStore, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    store.set_limit("db", 0)
    with pytest.raises(ConcurrencySlotTimeoutError, match="limit of tag 'db' is 0"), \
            concurrency("db", timeout_seconds=0.3):
        pass
    monkeypatch.setattr(slots, "WAIT_LOG_FIRST_S", 0.2)
    caplog.set_level(logging.INFO, logger="flowcore")
    raise_later = threading.Timer(1.0, lambda: store.set_limit("db", 1))
    raise_later.start()

    @flow
    def blocked() -> tuple[float, float]:
        return interval(0.01)

    began = time.time()
    try:
        started, _ = blocked()
    finally:
        raise_later.join()
    assert started - began >= 0.9  # waited for the limit to be raised
    assert any("waits for a concurrency slot" in r.getMessage() and "is 0" in r.getMessage() for r in caplog.records)


def test_retries_give_the_slot_back_between_attempts(store: LimitStore, tmp_path: Path) -> None:
    store.set_limit("db", 1)
    attempts: list[int] = []

    @task(tags=["db"], retries=2)
    def flaky() -> int:
        attempts.append(len(store.get("db").holders))
        if len(attempts) < 3:
            raise RuntimeError("again")
        return len(attempts)

    assert flaky() == 3
    assert attempts == [1, 1, 1]
    assert store.get("db").holders == ()


def test_async_with_concurrency_and_async_tasks(store: LimitStore) -> None:
    store.set_limit("db", 1)

    @task(tags=["db"])
    async def waiter(seconds: float) -> tuple[float, float]:
        started = time.time()
        await asyncio.sleep(seconds)
        return started, time.time()

    async def user_block() -> tuple[float, float]:
        async with concurrency("db"):
            started = time.time()
            await asyncio.sleep(0.1)
            return started, time.time()

    @flow
    async def together() -> list[tuple[float, float]]:
        return list(await asyncio.gather(waiter(0.1), waiter(0.1), user_block()))

    assert max_overlap(together()) == 1  # an async flow called from sync code runs to completion


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="occupy must be an int >= 1"):
        concurrency("db", occupy=0)
    with pytest.raises(TypeError, match="tags must be"):
        concurrency([])


# -- across processes ----------------------------------------------------------------

WORKER = """
import json, sys, time
from flowcore import flow, task

@task(tags=["db"])
def interval(i: int) -> tuple[float, float]:
    started = time.time()
    time.sleep(0.25)
    return started, time.time()

@flow(backend="threads")
def four() -> list:
    return [f.result() for f in interval.map(range(4))]

if __name__ == "__main__":
    print(json.dumps(four()))
"""


def _script(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


@pytest.mark.timeout(180)
def test_three_processes_share_a_limit_of_two(store: LimitStore, tmp_path: Path) -> None:
    store.set_limit("db", 2)
    script = _script(tmp_path, "worker.py", WORKER)
    processes = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=dict(os.environ))
        for _ in range(3)
    ]
    intervals: list[tuple[float, float]] = []
    for process in processes:
        out, err = process.communicate(timeout=150)
        assert process.returncode == 0, err
        intervals += [tuple(pair) for pair in json.loads(out.strip().splitlines()[-1])]  # type: ignore[misc]
    assert len(intervals) == 12
    assert max_overlap(intervals) == 2
    assert store.get("db").holders == ()


HOLDER = """
import sys, time
from flowcore import concurrency

with concurrency("db"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_a_holder_killed_with_sigkill_releases_its_slot(store: LimitStore, tmp_path: Path) -> None:
    store.set_limit("db", 1)
    script = _script(tmp_path, "holder.py", HOLDER)
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path, env=dict(os.environ))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (held,) = store.get("db").holders
        assert held.pid == holder.pid
        with pytest.raises(ConcurrencySlotTimeoutError, match="all 1 slots of tag 'db' are taken"), \
                concurrency("db", timeout_seconds=0.3):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        began = time.monotonic()
        with concurrency("db", timeout_seconds=10):
            assert [h.pid for h in store.get("db").holders] == [os.getpid()]
        assert time.monotonic() - began < 2
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_reused_pid_does_not_keep_a_slot(store: LimitStore) -> None:
    """A row naming a live pid with another process start time is a dead holder."""
    store.set_limit("db", 1)
    outcome = store.try_acquire(["db"], 1, "stale-holder", "old run", process_start=1)
    assert outcome == ["db"]
    with concurrency("db", timeout_seconds=5):  # our own pid, another start time: reaped
        assert [h.holder for h in store.get("db").holders] != ["stale-holder"]


# -- Dask ----------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_on_dask_workers_slots_are_cluster_semaphores(store: LimitStore) -> None:
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    store.set_limit("db", 1)
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",  # type: ignore[no-untyped-call]
                      dashboard_address="127.0.0.1:0") as cluster:
        from flowcore.selection import get_backend

        with get_backend("dask", address=cluster.scheduler_address) as backend:

            @flow(backend=backend)
            def on_cluster() -> list[tuple[float, float]]:
                return [f.result() for f in [interval.submit(0.2) for _ in range(4)]]

            intervals = on_cluster()
        with Client(cluster.scheduler_address, set_as_default=False) as client:  # type: ignore[no-untyped-call]
            names: Any = client.run_on_scheduler(
                lambda dask_scheduler: dict(dask_scheduler.extensions["semaphores"].max_leases)
            )
    assert max_overlap(intervals) == 1
    assert names.get(slots.semaphore_name("db")) == 1


@pytest.mark.timeout(180)
def test_dask_workers_also_respect_the_machines_slots(store: LimitStore) -> None:
    # "At most N runs ... across every flow and process on the machine": a slot held by
    # another process here (a loky flow, a second Dask cluster, `concurrency()` in a
    # script) bounds the runs of a Dask cluster's workers on this machine too.
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    store.set_limit("db", 1)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",  # type: ignore[no-untyped-call]
                      dashboard_address="127.0.0.1:0") as cluster:
        from flowcore.selection import get_backend

        with get_backend("dask", address=cluster.scheduler_address) as backend:

            @flow(backend=backend)
            def on_cluster() -> list[tuple[float, float]]:
                return [f.result() for f in [interval.submit(0.05) for _ in range(2)]]

            on_cluster()  # the workers are up and have imported this module
            held = threading.Event()
            released: list[float] = []

            def hold() -> None:
                with concurrency("db"):  # a slot on this machine, held by this process
                    held.set()
                    time.sleep(1.5)
                    released.append(time.time())

            holder = threading.Thread(target=hold)
            holder.start()
            assert held.wait(30)
            intervals = on_cluster()
            holder.join()
    assert len(intervals) == 2 and max_overlap(intervals) == 1
    assert min(start for start, _ in intervals) >= released[0] - 0.05
    assert store.get("db").holders == ()
