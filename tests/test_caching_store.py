"""The file store: real files, real processes, and every way an entry can go bad."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from flowcore.caching import CacheEntry, CacheStore, FileStore, content_hash, default_cache_dir
from flowcore.caching.entryfile import HEADER
from flowcore.caching.store import STALE_TEMP_SECONDS, validate_key
from flowcore.errors import ConfigurationError

KEY = content_hash("first")
OTHER = content_hash("second")


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "cache")


def test_round_trip_and_metadata(store: FileStore) -> None:
    assert store.load(KEY) == (False, None)
    value = {"rows": [1, 2, 3], "f": lambda x: x + 1}
    assert store.save(KEY, value, task="extract", expires=time.time() + 60) is True
    entry = store.read(KEY)
    assert entry is not None
    assert entry.task == "extract"
    assert entry.key == KEY
    assert entry.value["rows"] == [1, 2, 3]
    assert entry.value["f"](1) == 2  # cloudpickle: lambdas survive
    assert not entry.is_expired()
    (info,) = store.entries()
    assert info.key == KEY
    assert info.task == "extract"
    assert info.size == Path(info.path).stat().st_size
    assert not info.expired
    assert Path(info.path) == store.directory / KEY[:2] / KEY[2:]


def test_is_a_cache_store(store: FileStore) -> None:
    assert isinstance(store, CacheStore)
    assert repr(store).startswith("FileStore(")


def test_a_store_pickles_by_its_location(store: FileStore) -> None:
    import pickle

    import cloudpickle

    store.save(KEY, [1, 2], task="t")
    store.read(KEY)  # the store now holds state (its lock, the files it warned about)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(store))
        assert type(copy) is FileStore and copy.directory == store.directory
        assert copy.load(KEY) == (True, [1, 2])
        assert copy.save(OTHER, "from the copy", task="t")
    assert store.load(OTHER) == (True, "from the copy")


def test_overwrite_and_delete(store: FileStore) -> None:
    store.save(KEY, 1, task="t")
    store.save(KEY, 2, task="t")
    assert store.load(KEY) == (True, 2)
    assert store.delete(KEY) is True
    assert store.delete(KEY) is False
    assert store.load(KEY) == (False, None)


def test_directories_are_private(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "b" / "cache")
    store.save(KEY, 1, task="t")
    for directory in (
        tmp_path / "a",
        tmp_path / "a" / "b",
        store.directory,
        store.path_of(KEY).parent,
    ):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(store.path_of(KEY).stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(
    "key", ["", "ABCDEF0123", "../../etc/passwd", "abc", "ab/cdef0123", "g" * 32, "a" * 129]
)
def test_invalid_keys_are_refused(store: FileStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid cache key"):
        store.read(key)
    with pytest.raises(ValueError, match="invalid cache key"):
        store.save(key, 1, task="t")
    assert not store.directory.exists()


def test_valid_key_shapes() -> None:
    assert validate_key("0123abcd") == "0123abcd"
    assert validate_key("f" * 128) == "f" * 128


def test_expired_entry_is_a_miss_and_pruned(store: FileStore) -> None:
    store.save(KEY, "old", task="t", expires=time.time() - 1)
    store.save(OTHER, "fresh", task="t", expires=None)
    assert store.load(KEY) == (False, None)
    assert store.path_of(KEY).exists()  # a miss, not a deletion: prune removes it
    expired = {info.key: info.expired for info in store.entries()}
    assert expired == {KEY: True, OTHER: False}
    report = store.prune()
    assert (report.expired, report.corrupt, report.total) == (1, 0, 1)
    assert [info.key for info in store.entries()] == [OTHER]
    assert store.load(OTHER) == (True, "fresh")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) - 3])
    elif how == "header-only":
        path.write_bytes(data[: HEADER.size - 1])
    elif how == "flipped":
        middle = len(data) - 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif how == "garbage":
        path.write_bytes(b"not an entry at all")
    elif how == "extended":
        path.write_bytes(data + b"tail")
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    "how", ["truncated", "header-only", "flipped", "garbage", "extended", "empty"]
)
def test_corrupt_entry_is_a_miss_with_one_warning(
    store: FileStore, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(KEY, list(range(100)), task="t")
    path = store.path_of(KEY)
    _damage(path, how)
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert store.read(KEY) is None
        assert store.read(KEY) is None
    warnings = [record for record in caplog.records if str(path) in record.getMessage()]
    assert len(warnings) == 1
    assert store.save(KEY, "rewritten", task="t")  # the next write replaces it
    assert store.load(KEY) == (True, "rewritten")


def test_corrupt_entries_are_listed_with_the_reason_and_pruned(store: FileStore) -> None:
    third = content_hash("third")
    store.save(KEY, 1, task="t")
    store.save(OTHER, 2, task="t")
    store.save(third, 3, task="t")
    _damage(store.path_of(KEY), "flipped")  # payload damage: header and metadata still read
    _damage(store.path_of(OTHER), "garbage")
    listed = {info.key: info for info in store.entries()}
    assert set(listed) == {KEY, OTHER, third}
    assert listed[OTHER].corrupt == "truncated header (19 of 40 bytes)"
    assert listed[OTHER].size == store.path_of(OTHER).stat().st_size
    assert listed[KEY].corrupt is None and listed[third].corrupt is None  # payload not read
    verified = {info.key: info.corrupt for info in store.entries(verify=True)}
    assert verified == {KEY: "checksum mismatch", OTHER: listed[OTHER].corrupt, third: None}
    report = store.prune()
    assert report.corrupt == 2
    assert [info.key for info in store.entries(verify=True)] == [third]
    assert not store.path_of(KEY).exists()


@pytest.mark.parametrize(
    "how", ["truncated", "header-only", "flipped", "garbage", "extended", "empty"]
)
def test_every_kind_of_damage_is_listed_when_verifying(store: FileStore, how: str) -> None:
    store.save(KEY, list(range(100)), task="t")
    _damage(store.path_of(KEY), how)
    (info,) = store.entries(verify=True)
    assert info.key == KEY and info.corrupt


def test_an_entry_under_the_wrong_name_is_listed_as_corrupt(store: FileStore) -> None:
    store.save(KEY, 1, task="t")
    moved = store.path_of(OTHER)
    moved.parent.mkdir(mode=0o700, exist_ok=True)
    store.path_of(KEY).rename(moved)
    (info,) = store.entries()
    assert info.key == OTHER and info.corrupt == f"the file holds the entry of key {KEY}"


def test_checksum_is_verified_before_unpickling(store: FileStore, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    store.save(KEY, "x" * 50, task="t")
    path = store.path_of(KEY)
    data = bytearray(path.read_bytes())
    # Replace the payload with a pickle that would create a file when loaded.
    import pickle

    class Evil:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil(), protocol=5)
    header = HEADER.unpack(bytes(data[: HEADER.size]))
    meta = bytes(data[HEADER.size : HEADER.size + header[3]])
    forged = HEADER.pack(header[0], header[1], header[2], header[3], len(payload), header[5])
    path.write_bytes(forged + meta + payload)
    assert store.read(KEY) is None
    assert not marker.exists()


def test_unpicklable_result_is_not_stored(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert store.save(KEY, threading.Lock(), task="locky") is False
    assert "locky" in caplog.text
    assert store.load(KEY) == (False, None)


def test_entry_that_cannot_be_unpickled_is_a_miss(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = tmp_path / "vanishing_module.py"
    module.write_text("class Thing:\n    pass\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import vanishing_module
        from flowcore.caching import FileStore
        FileStore({str(store.directory)!r}).save({KEY!r}, vanishing_module.Thing(), task="t")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert store.read(KEY) is None
    assert "vanishing_module" in caplog.text


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_failed_write_warns_and_returns_false(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.directory.mkdir(parents=True)
    store.directory.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
            assert store.save(KEY, 1, task="t") is False
        assert "cannot write cache entry" in caplog.text
        assert store.load(KEY) == (False, None)
    finally:
        store.directory.chmod(0o700)


def test_failed_write_on_a_file_in_the_way(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.directory.mkdir(parents=True)
    (store.directory / KEY[:2]).write_text("a file where the shard directory should be")
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        assert store.save(KEY, 1, task="t") is False
    assert "cannot write cache entry" in caplog.text
    assert store.load(KEY) == (False, None)


def test_clear_all_or_one_task(store: FileStore) -> None:
    keys = [content_hash(i) for i in range(6)]
    for index, key in enumerate(keys):
        store.save(key, index, task="even" if index % 2 == 0 else "odd")
    assert store.clear("odd") == 3
    assert sorted(info.task for info in store.entries()) == ["even"] * 3
    assert store.clear() == 3
    assert list(store.entries()) == []
    assert not any(store.directory.iterdir())  # empty shards removed


def test_prune_removes_stale_temporary_files_only(store: FileStore) -> None:
    store.save(KEY, 1, task="t")
    shard = store.path_of(KEY).parent
    stale = shard / f".{KEY[2:]}.123.abcd.tmp"
    fresh = shard / f".{KEY[2:]}.456.ef01.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    report = store.prune()
    assert report.temporary == 1
    assert not stale.exists()
    assert fresh.exists()
    assert store.load(KEY) == (True, 1)


def test_cache_entry_expiry() -> None:
    entry = CacheEntry(KEY, "t", 1, created=100.0, expires=200.0)
    assert not entry.is_expired(now=199.0)
    assert entry.is_expired(now=200.0)
    assert not CacheEntry(KEY, "t", 1, created=100.0).is_expired()


# -- default directory -----------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FLOWCORE_CACHE_DIR", raising=False)
    directory = tmp_path / "project" / "sub"
    directory.mkdir(parents=True)
    monkeypatch.chdir(directory)
    return directory


def test_default_dir_is_in_the_working_directory(workdir: Path) -> None:
    assert default_cache_dir() == workdir / ".flowcore" / "cache"


def test_default_dir_from_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_CACHE_DIR", "/somewhere/else")
    assert default_cache_dir() == Path("/somewhere/else")
    monkeypatch.setenv("FLOWCORE_CACHE_DIR", "relative")
    assert default_cache_dir() == workdir / "relative"


def test_default_dir_from_pyproject(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = workdir.parent / "pyproject.toml"
    pyproject.write_text('[tool.flowcore]\ncache_dir = "build/cache"\n')
    assert default_cache_dir() == workdir.parent / "build" / "cache"
    monkeypatch.setenv("FLOWCORE_CACHE_DIR", "/env/wins")
    assert default_cache_dir() == Path("/env/wins")


def test_bad_cache_dir_in_pyproject(workdir: Path) -> None:
    (workdir / "pyproject.toml").write_text("[tool.flowcore]\ncache_dir = 3\n")
    with pytest.raises(ConfigurationError, match="cache_dir"):
        default_cache_dir()


# -- many processes at once ------------------------------------------------------------

HAMMER = textwrap.dedent(
    """
    import hashlib, json, os, random, sys
    from flowcore.caching import FileStore, content_hash

    directory, writer, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = FileStore(directory)
    keys = [content_hash(i) for i in range(4)]
    rng = random.Random(writer)
    outcome = {"hits": 0, "misses": 0, "bad": [], "writes": 0}
    for _ in range(rounds):
        key = rng.choice(keys)
        if rng.random() < 0.5:
            body = os.urandom(rng.randrange(10, 200_000))
            value = {"key": key, "writer": writer, "body": body,
                     "digest": hashlib.sha256(body).hexdigest()}
            outcome["writes"] += store.save(key, value, task="hammer")
        else:
            found, value = store.load(key)
            if not found:
                outcome["misses"] += 1
            elif (value["key"] == key
                  and hashlib.sha256(value["body"]).hexdigest() == value["digest"]):
                outcome["hits"] += 1
            else:
                outcome["bad"].append(key)
    print(json.dumps(outcome))
    """
)


def test_many_processes_read_and_write_the_same_keys(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(store.directory), str(writer), "150"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in range(4)
    ]
    import json

    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "corrupt" not in err and "cannot" not in err, err
        outcomes.append(json.loads(out))
    assert all(outcome["bad"] == [] for outcome in outcomes)
    assert sum(outcome["hits"] for outcome in outcomes) > 0
    assert sum(outcome["writes"] for outcome in outcomes) > 0
    # Nothing half-written is left behind, and every entry reads back whole.
    assert list(store._temporary_files()) == []
    with caplog.at_level(logging.WARNING, logger="flowcore.caching"):
        for info in store.entries():
            found, value = store.load(info.key)
            assert found
            assert value["key"] == info.key
    assert caplog.records == []
    assert store.prune().total == 0
