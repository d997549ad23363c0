"""Caching at the task level: policies, options, the Cached state, expiration,
refresh, unhashable arguments, results kept in the store, failed writes, plugins."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import flow, task
from flowcore.caching import (
    FLOW_PARAMETERS,
    INPUTS,
    NONE,
    RUN_ID,
    TASK_SOURCE,
    CacheContext,
    FileStore,
    task_input_hash,
)
from flowcore.caching.storage import CacheStoreSpec
from flowcore.errors import CacheError, CacheKeyError
from flowcore.hookspecs import hookimpl
from flowcore.states import DeferredResult, State
from flowcore.testing import workloads as w


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("FLOWCORE_CACHE_DIR", str(directory))
    return directory


def _counter(tmp_path: Path, name: str = "count") -> str:
    return str(tmp_path / name)


@task(cache_policy=INPUTS)
def power(counter: str, x: int, exponent: int = 2) -> int:
    w.bump(counter)
    return int(x**exponent)


@task(cache_policy=INPUTS)
def other_power(counter: str, x: int, exponent: int = 2) -> int:
    w.bump(counter)
    return int(x**exponent)


@task(cache_policy=INPUTS)
def describe(counter: str, value: Any) -> str:
    w.bump(counter)
    return type(value).__name__


def test_a_hit_returns_cached_without_running_the_body(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    first = power(counter, 3, return_state=True)
    second = power(counter, 3, return_state=True)
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == 9 and second.is_completed()
    assert w.read_count(counter) == 1
    assert any(cache_dir.rglob("*")), "the entry is a file under FLOWCORE_CACHE_DIR"


def test_inputs_bind_defaults_so_equivalent_calls_share_an_entry(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    assert power(counter, 3) == 9
    assert power(counter, 3, 2) == 9
    assert power(counter=counter, x=3, exponent=2) == 9
    assert w.read_count(counter) == 1
    assert power(counter, 3, 3) == 27
    assert w.read_count(counter) == 2


def test_list_and_tuple_arguments_do_not_share(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    assert describe(counter, [1, 2]) == "list"
    assert describe(counter, (1, 2)) == "tuple"
    assert describe(counter, 1) == "int" and describe(counter, 1.0) == "float"
    assert describe(counter, True) == "bool"
    assert w.read_count(counter) == 5


def test_two_tasks_with_the_same_inputs_never_share(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    power(counter, 4)
    other_power(counter, 4)
    renamed = power.with_options(name="power-renamed")
    renamed(counter, 4)
    assert w.read_count(counter) == 3


def test_excluded_argument_does_not_change_the_key(cache_dir: Path, tmp_path: Path) -> None:
    counting = power.with_options(cache_policy=INPUTS - "counter")
    assert counting(_counter(tmp_path, "a"), 5) == 25
    state = counting(_counter(tmp_path, "b"), 5, return_state=True)
    assert state.name == "Cached" and state.result() == 25
    assert w.read_count(_counter(tmp_path, "b")) == 0


def test_expired_entries_are_misses(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    short = power.with_options(cache_expiration=timedelta(seconds=0.3))
    assert short(counter, 2, return_state=True).name == "Completed"
    assert short(counter, 2, return_state=True).name == "Cached"
    time.sleep(0.5)
    assert short(counter, 2, return_state=True).name == "Completed"
    assert w.read_count(counter) == 2


def test_refresh_cache_runs_and_overwrites(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    power(counter, 6)
    refreshing = power.with_options(refresh_cache=True)
    assert refreshing(counter, 6, return_state=True).name == "Completed"
    assert w.read_count(counter) == 2
    assert power(counter, 6, return_state=True).name == "Cached"


def test_cache_key_fn_and_its_none(cache_dir: Path, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def by_x_unless_negative(context: CacheContext, arguments: dict[str, Any]) -> str | None:
        seen.append(arguments)
        assert context.task.name == "power" and context.call.task_run_id
        return None if arguments["x"] < 0 else f"x={arguments['x']}"

    keyed = power.with_options(cache_policy=None, cache_key_fn=by_x_unless_negative)
    counter = _counter(tmp_path)
    keyed(counter, 2)
    keyed(counter, 2)
    keyed(counter, -2)
    keyed(counter, -2)
    assert w.read_count(counter) == 3
    assert seen[0] == {"counter": counter, "x": 2, "exponent": 2}


def test_cache_key_fn_must_return_a_string(cache_dir: Path, tmp_path: Path) -> None:
    bad = power.with_options(cache_policy=None, cache_key_fn=lambda context, arguments: 42)
    with pytest.raises(CacheKeyError, match="returned int 42; it must return a str"):
        bad(_counter(tmp_path), 1)


def test_task_input_hash_includes_the_task(cache_dir: Path, tmp_path: Path) -> None:
    from flowcore.tasks import task_input_hash as prefect_path

    assert prefect_path.__name__ == "task_input_hash"
    counter = _counter(tmp_path)
    assert power.with_options(cache_policy=None, cache_key_fn=prefect_path)(counter, 7) == 49
    a = power.with_options(cache_policy=None, cache_key_fn=task_input_hash)
    b = other_power.with_options(cache_policy=None, cache_key_fn=task_input_hash)
    a(counter, 7)
    a(counter, 7)
    b(counter, 7)
    assert w.read_count(counter) == 2  # both paths make the same key: a hits; b is another task


def test_flow_parameters_policy(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    by_flow = power.with_options(cache_policy=FLOW_PARAMETERS)

    @flow
    def pipeline(day: int) -> int:
        return by_flow(counter, 3) + by_flow(counter, 4)  # same key within one flow run

    assert pipeline(1) == 9 + 9
    assert pipeline(1) == 18
    assert pipeline(2) == 18
    assert w.read_count(counter) == 2


def test_run_id_policy_reuses_within_one_flow_run_only(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    per_run = power.with_options(cache_policy=RUN_ID + INPUTS)

    @flow
    def twice() -> list[str]:
        return [per_run(counter, 2, return_state=True).name for _ in range(2)]

    assert twice() == ["Completed", "Cached"]
    assert twice() == ["Completed", "Cached"]
    assert w.read_count(counter) == 2


def test_none_policy_never_caches(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    uncached = power.with_options(cache_policy=NONE)
    assert uncached.options.cache is None
    uncached(counter, 2)
    uncached(counter, 2)
    assert w.read_count(counter) == 2


def test_unhashable_argument_fails_the_run_naming_it(cache_dir: Path, tmp_path: Path) -> None:
    import threading

    state = describe(_counter(tmp_path), {"lock": threading.Lock()}, return_state=True)
    assert state.name == "Failed"
    assert isinstance(state.exception, CacheKeyError)
    message = str(state.exception)
    assert message.startswith("task 'describe': ")
    assert "'value'" in message and "lock" in message.lower()
    assert w.read_count(_counter(tmp_path)) == 0


def test_unhashable_argument_can_run_uncached_with_one_warning(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    lenient = describe.with_options(name="describe-lenient", cache_key_errors="warn")
    counter = _counter(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert lenient(counter, threading.Lock()) == "lock"
        assert lenient(counter, threading.Lock()) == "lock"
    assert w.read_count(counter) == 2
    warnings = [r for r in caplog.records if "runs uncached" in r.getMessage()]
    assert len(warnings) == 1 and "describe-lenient" in warnings[0].getMessage()


def make_scaler(factor: int, counter: str) -> Any:
    @task(cache_policy=INPUTS + TASK_SOURCE)
    def scale(x: int) -> int:
        w.bump(counter)
        return x * factor

    return scale


def make_keyed_scaler(factor: int) -> Any:
    @task(cache_key_fn=task_input_hash)
    def keyed_scale(x: int) -> int:
        return x * factor

    return keyed_scale


def make_guarded(guard: Any, **options: Any) -> Any:
    @task(cache_policy=INPUTS + TASK_SOURCE, **options)
    def guarded(x: int) -> int:
        with guard:
            return x

    return guarded


def test_tasks_made_by_a_factory_key_their_closure_values(cache_dir: Path, tmp_path: Path) -> None:
    counter = _counter(tmp_path)
    assert (make_scaler(2, counter)(5), make_scaler(10, counter)(5)) == (10, 50)
    assert make_scaler(10, counter)(5, return_state=True).name == "Cached"  # same value: a hit
    assert w.read_count(counter) == 2
    assert (make_keyed_scaler(2)(5), make_keyed_scaler(10)(5)) == (10, 50)


def test_an_unhashable_closure_value_follows_cache_key_errors(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    state = make_guarded(threading.Lock())(1, return_state=True)
    assert state.name == "Failed" and isinstance(state.exception, CacheKeyError)
    message = str(state.exception)
    assert "closure variable 'guard'" in message and "lock" in message.lower()

    lenient = make_guarded(threading.Lock(), name="guarded-lenient", cache_key_errors="warn")
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert lenient(1, return_state=True).name == "Completed"
        assert lenient(1, return_state=True).name == "Completed"
    warnings = [r for r in caplog.records if "runs uncached" in r.getMessage()]
    assert len(warnings) == 1 and "guarded-lenient" in warnings[0].getMessage()


def test_result_kept_only_in_the_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    lean = power.with_options(cache_result_in_memory=False, cache_storage=str(store_dir))
    counter = _counter(tmp_path)
    state = lean(counter, 8, return_state=True)
    assert isinstance(state.data, DeferredResult)
    assert state.result() == 64
    hit = lean(counter, 8, return_state=True)
    assert hit.name == "Cached" and isinstance(hit.data, DeferredResult) and hit.result() == 64
    FileStore(store_dir).clear()
    with pytest.raises(CacheError, match="cache_result_in_memory=False"):
        hit.result()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory modes")
def test_a_failed_write_warns_and_keeps_the_result(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        stuck = power.with_options(cache_storage=str(readonly / "cache"))
        with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
            assert stuck(_counter(tmp_path), 3) == 9
    finally:
        readonly.chmod(0o700)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_a_failed_write_of_an_unpicklable_result_keeps_the_result(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    @task(cache_policy=INPUTS)
    def make_lock(n: int) -> Any:
        return threading.Lock()

    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        state = make_lock(1, return_state=True)
    assert state.name == "Completed" and state.result() is not None
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_options_are_validated_at_decoration() -> None:
    def fn(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="'cache_policy' must be a cache policy"):
        task(cache_policy="inputs")(fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either 'cache_policy' or 'cache_key_fn'"):
        task(cache_policy=INPUTS, cache_key_fn=task_input_hash)(fn)
    with pytest.raises(ValueError, match="excludes 'y', which is not a parameter"):
        task(cache_policy=INPUTS - "y")(fn)
    with pytest.raises(ValueError, match="'cache_expiration' must be positive"):
        task(cache_expiration=-1)(fn)
    with pytest.raises(TypeError, match="'cache_expiration' must be a timedelta"):
        task(cache_expiration="1h")(fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'cache_key_errors' must be 'raise' or 'warn'"):
        task(cache_policy=INPUTS, cache_key_errors="ignore")(fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'cache_storage' must be a directory"):
        task(cache_policy=INPUTS, cache_storage=42)(fn)  # type: ignore[arg-type]
    assert task(fn).options.cache is None
    assert repr(task(cache_expiration=60)(fn).options.cache.policy) == "INPUTS + TASK_SOURCE"
    assert repr(INPUTS - "a" + TASK_SOURCE) == "INPUTS - ['a'] + TASK_SOURCE"


def test_cached_runs_on_a_process_backend_use_the_same_store(cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("loky")
    counter = _counter(tmp_path)

    @flow(backend=flowcore.get_backend("loky", max_workers=2))
    def fan() -> list[State[int]]:
        first = [f.state for f in flowcore.wait(power.map(counter, [1, 2, 3])).done]
        again = [power.submit(counter, x, return_state=True) for x in (1, 2, 3)]
        return first + again

    states = fan()
    assert sorted(s.name for s in states) == ["Cached"] * 3 + ["Completed"] * 3
    assert w.read_count(counter) == 3


def test_store_objects_and_stored_results_cross_process_boundaries(
    cache_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("loky")
    counter = _counter(tmp_path)
    given_store = power.with_options(
        name="power-given-store", cache_storage=FileStore(tmp_path / "given")
    )
    kept_out = power.with_options(
        name="power-kept-out", cache_storage=str(tmp_path / "kept"), cache_result_in_memory=False
    )

    @flow(backend=flowcore.get_backend("loky", max_workers=2))
    def fan() -> list[State[int]]:
        return [
            given_store.submit(counter, 3, return_state=True),
            given_store.submit(counter, 3, return_state=True),
            kept_out.submit(counter, 4, return_state=True),
            kept_out.submit(counter, 4, return_state=True),
        ]

    states = fan()
    assert [s.name for s in states] == ["Completed", "Cached", "Completed", "Cached"]
    assert [s.result() for s in states] == [9, 9, 16, 16]
    assert w.read_count(counter) == 2
    assert [e.task for e in FileStore(tmp_path / "given").entries()] == ["power-given-store"]
    assert [e.task for e in FileStore(tmp_path / "kept").entries()] == ["power-kept-out"]


def test_a_store_that_cannot_be_pickled_is_named_not_the_result(tmp_path: Path) -> None:
    import pickle
    import threading

    from flowcore.caching.runs import StoredResult

    class LockedStore(DictStore):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()

    kept = StoredResult(FileStore(tmp_path / "kept"), "ab" * 16, "run-1")
    assert pickle.loads(pickle.dumps(kept)).store.directory == tmp_path / "kept"
    culprit = r"the cache store .*LockedStore.* run 'run-1'.* by its location"
    with pytest.raises(TypeError, match=culprit):
        pickle.dumps(StoredResult(LockedStore(), "ab" * 16, "run-1"))


def test_editing_a_helper_invalidates_task_source(tmp_path: Path) -> None:
    module = tmp_path / "pipeline_mod.py"
    source = textwrap.dedent(
        """
        from flowcore import task
        from flowcore.caching import TASK_SOURCE, INPUTS

        def helper(x):
            return x + 1

        @task(cache_policy=INPUTS + TASK_SOURCE)
        def compute(x):
            return helper(x)

        if __name__ == "__main__":
            import sys
            print(compute(int(sys.argv[1]), return_state=True).name, compute(int(sys.argv[1])))
        """
    )
    module.write_text(source)
    env = {**os.environ, "FLOWCORE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": "1"}

    def run() -> str:
        done = subprocess.run(
            [sys.executable, str(module), "5"], capture_output=True, text=True, env=env, timeout=120, check=True
        )
        return done.stdout.strip()

    assert run() == "Completed 6"
    env["PYTHONHASHSEED"] = "2"
    assert run() == "Cached 6"
    module.write_text(source.replace("return x + 1", "return x + 2"))
    assert run() == "Completed 7"
    assert run() == "Cached 7"


class DictStore:
    """A third-party cache store kept in memory (for the plugin test)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def read(self, key: str) -> Any:
        return None

    def write(self, key: str, entry: Any) -> bool:
        return True

    def load(self, key: str) -> tuple[bool, Any]:
        return (key in self.values, self.values.get(key))

    def save(self, key: str, value: Any, *, task: str, expires: float | None = None) -> bool:
        self.values[key] = value
        return True


class DictStorePlugin:
    def __init__(self) -> None:
        self.store = DictStore()

    @hookimpl
    def flowcore_cache_stores(self) -> list[CacheStoreSpec]:
        return [CacheStoreSpec(name="memory-test", factory=lambda: self.store)]


def test_a_store_plugin_selected_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = DictStorePlugin()
    name = flowcore.plugins.register(plugin)
    try:
        monkeypatch.setenv("FLOWCORE_CACHE_STORE", "memory-test")
        counter = _counter(tmp_path)
        uses_plugin = power.with_options(name="power-plugin")
        uses_plugin(counter, 2)
        assert uses_plugin(counter, 2, return_state=True).name == "Cached"
        assert list(plugin.store.values.values()) == [4]
    finally:
        flowcore.plugins.unregister(name=name)


def test_an_unknown_store_name_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_CACHE_STORE", "nowhere")
    with pytest.raises(flowcore.errors.ConfigurationError, match="unknown cache store 'nowhere'; registered: file"):
        power.with_options(name="power-nowhere")(_counter(tmp_path), 2)


def test_cache_cli_lists_inspects_clears_and_prunes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from flowcore.cli import main

    directory = str(tmp_path / "cli-cache")
    counter = _counter(tmp_path)
    fleeting = power.with_options(cache_storage=directory, cache_expiration=0.05)
    lasting = other_power.with_options(cache_storage=directory)
    for x in range(3):
        fleeting(counter, x)
        lasting(counter, x)
    time.sleep(0.1)

    assert main(["cache", "ls", "--dir", directory]) == 0
    listing = capsys.readouterr().out
    assert listing.count("expired") == 3 and "6 entries in FileStore" in listing

    assert main(["cache", "ls", "--dir", directory, "--task", "other_power", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 3 and {e["task"] for e in entries} == {"other_power"}
    assert all(e["size"] > 0 and e["expires"] is None and not e["expired"] for e in entries)

    assert main(["cache", "info", "--dir", directory, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 6 and info["expired"] == 3 and info["bytes"] > 0
    assert set(info["tasks"]) == {"power", "other_power"}

    assert main(["cache", "prune", "--dir", directory]) == 0
    assert "pruned 3 file(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--dir", directory, "--task", "other_power"]) == 0
    assert "removed 3 entries of task 'other_power'" in capsys.readouterr().out
    assert list(FileStore(directory).entries()) == []


def test_cache_cli_lists_corrupt_entries_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from flowcore.cli import main

    directory = tmp_path / "cli-cache"
    counter = _counter(tmp_path)
    stored = power.with_options(cache_storage=str(directory))
    for x in range(3):
        stored(counter, x)
    store = FileStore(directory)
    keys = sorted(e.key for e in store.entries())
    store.path_of(keys[0]).write_bytes(b"not a cache entry, but long enough for a header" * 2)
    damaged = store.path_of(keys[1])
    damaged.write_bytes(damaged.read_bytes()[:-1])  # truncated

    assert main(["cache", "ls", "--dir", str(directory)]) == 0
    listing = capsys.readouterr().out
    assert "corrupt: not a flowcore cache entry (bad magic)" in listing
    assert "corrupt: file is" in listing and keys[1][:16] in listing
    assert "3 entries (2 corrupt" in listing and "flowcore cache prune" in listing

    assert main(["cache", "ls", "--dir", str(directory), "--json"]) == 0
    entries = {e["key"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries[keys[0]]["corrupt"] == "not a flowcore cache entry (bad magic)"
    assert entries[keys[1]]["corrupt"].startswith("file is")
    assert entries[keys[2]]["corrupt"] is None and entries[keys[2]]["task"] == "power"

    assert main(["cache", "info", "--dir", str(directory), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 3 and info["corrupt"] == 2
    assert info["tasks"] == {"power": {"entries": 1, "bytes": entries[keys[2]]["size"]}}
    reasons = {e["key"]: e["reason"] for e in info["corrupt_entries"]}
    assert reasons == {k: entries[k]["corrupt"] for k in keys[:2]}

    assert main(["cache", "info", "--dir", str(directory)]) == 0
    text = capsys.readouterr().out
    assert "2 corrupt" in text and "bad magic" in text and str(store.path_of(keys[0])) in text

    stored(counter, 2)
    damaged = store.path_of(keys[2])
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # payload damage: found only by reading the payload
    damaged.write_bytes(bytes(data))
    assert main(["cache", "ls", "--dir", str(directory), "--verify"]) == 0
    assert "corrupt: checksum mismatch" in capsys.readouterr().out
