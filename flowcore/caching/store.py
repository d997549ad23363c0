"""Where cached results live: the store protocol and the file store.

A :class:`CacheStore` maps a key (lowercase hex, as made by the cache policies) to a
:class:`CacheEntry`: the task's result plus the task name, creation time and
expiration. The engine only calls :meth:`CacheStore.load` and
:meth:`CacheStore.save`; the CLI lists, clears and prunes.

The contract every store keeps: a store never fails a run. Reading an entry that
is missing, expired, truncated, corrupt or unreadable is a miss (``None``); a write
that fails (disk full, permission denied, a result that cannot be pickled) logs a
warning on the ``flowcore.caching`` logger and returns False. Neither raises
``OSError``. An invalid key raises ``ValueError``: that is a bug in the caller.

:class:`FileStore` keeps one file per entry under a directory, sharded by the first
two hex digits of the key (``ab/cdef...``) like git's objects. Writes go to a
temporary file in the same shard directory and are published with ``os.replace``,
so readers in any process see either the old entry, the new one, or none: never a
partial file. Entries are not fsynced: after a crash a torn entry fails its
checksum and is a miss. See :mod:`flowcore.caching.entryfile` for the file layout.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import pickle
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcore.caching import entryfile
from flowcore.caching.entryfile import CorruptEntryError, EntryMetadata
from flowcore.config import find_pyproject, tool_settings
from flowcore.errors import ConfigurationError

logger = logging.getLogger("flowcore.caching")

ENV_CACHE_DIR = "FLOWCORE_CACHE_DIR"
DEFAULT_CACHE_DIR = Path(".flowcore") / "cache"

#: Keys are lowercase hex: file names derived from them cannot leave the directory.
_KEY = re.compile(r"[0-9a-f]{8,128}")

#: Temporary files older than this are left over by a crashed writer: prune removes them.
STALE_TEMP_SECONDS = 3600.0


def validate_key(key: str) -> str:
    """Return ``key`` if it is 8 to 128 lowercase hex digits; raise ValueError otherwise."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(
            f"invalid cache key {key!r}: keys are 8 to 128 lowercase hex digits "
            "(hash a custom key with flowcore.caching.content_hash)"
        )
    return key


def default_cache_dir(cwd: Path | None = None) -> Path:
    """The directory of the default file store.

    ``FLOWCORE_CACHE_DIR`` if set (relative to the working directory); else
    ``[tool.flowcore] cache_dir`` of the nearest pyproject.toml at or above the
    working directory (relative to that file's directory); else ``.flowcore/cache``
    in the working directory. Raises ConfigurationError for a non-string cache_dir.
    """
    base = cwd if cwd is not None else Path.cwd()
    configured = os.environ.get(ENV_CACHE_DIR, "").strip()
    if configured:
        return base / Path(configured).expanduser()
    pyproject = find_pyproject(base)
    if pyproject is not None:
        value = tool_settings(pyproject).get("cache_dir")
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(
                    f"[tool.flowcore] in {pyproject}: 'cache_dir' must be a non-empty string, "
                    f"got {value!r}"
                )
            return pyproject.parent / Path(value).expanduser()
    return base / DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class CacheEntry:
    """A cached result and what is known about it.

    ``created`` and ``expires`` are Unix timestamps; ``expires`` None never expires.
    """

    key: str
    task: str
    value: Any
    created: float
    expires: float | None = None

    def is_expired(self, now: float | None = None) -> bool:
        """True once ``expires`` has passed."""
        return self.expires is not None and (time.time() if now is None else now) >= self.expires


@dataclass(frozen=True)
class EntryInfo:
    """What :meth:`CacheStore.entries` tells about an entry, without loading its value.

    ``corrupt`` is None for an intact entry, else why it cannot be used (damaged,
    unreadable, or holding another key's entry): such an entry is a miss, and
    :meth:`CacheStore.prune` removes it. Its ``task`` is empty, ``expires`` None,
    ``size`` and ``created`` are its file's size and modification time.
    """

    key: str
    task: str
    size: int
    created: float
    expires: float | None
    expired: bool
    path: str
    corrupt: str | None = None


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`CacheStore.prune` removed."""

    expired: int = 0
    corrupt: int = 0
    temporary: int = 0

    @property
    def total(self) -> int:
        return self.expired + self.corrupt + self.temporary


class CacheStore(abc.ABC):
    """The store protocol. Implementations must be safe to use from many threads and
    processes at once, and must keep the contract of the module docstring.

    A store must also pickle by its location: process backends send a task's
    ``cache_storage`` store to their workers, and a run kept only in the store
    (``cache_result_in_memory=False``) sends the store back with its result. An
    unpickled store opens the same entries (a path, a URL), never a copy of them,
    and leaves behind what belongs to one process (locks, connections, handles).
    """

    @abc.abstractmethod
    def read(self, key: str) -> CacheEntry | None:
        """The entry under ``key``; None if missing, expired or unreadable."""

    @abc.abstractmethod
    def write(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under ``key`` (replacing any); False, with a warning, on failure."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; True if there was one."""

    @abc.abstractmethod
    def entries(self) -> Iterator[EntryInfo]:
        """Every entry, expired and corrupt ones included (marked), in no particular
        order. A store may accept ``verify=True`` to check every entry whole."""

    @abc.abstractmethod
    def clear(self, task: str | None = None) -> int:
        """Remove every entry, or those of one task; the number removed."""

    @abc.abstractmethod
    def prune(self) -> PruneReport:
        """Remove expired and corrupt entries and leftovers of crashed writers."""

    def load(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit, ``(False, None)`` on a miss."""
        entry = self.read(key)
        if entry is None:
            return False, None
        return True, entry.value

    def save(self, key: str, value: Any, *, task: str, expires: float | None = None) -> bool:
        """Store ``value`` as a new entry created now; see :meth:`write`."""
        return self.write(key, CacheEntry(key, task, value, time.time(), expires))


class FileStore(CacheStore):
    """Entries as files under ``directory`` (created on first write, mode 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._root = os.fspath(self.directory)
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    def __getstate__(self) -> dict[str, Any]:
        """What travels when the store is pickled: its location (and a subclass's own
        attributes), not its lock or the files it has warned about in this process."""
        state = self.__dict__.copy()
        del state["_warned"], state["_warned_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Re-open the store at the pickled location, with this process's own lock."""
        self.__dict__.update(state)
        self._warned = set()
        self._warned_lock = threading.Lock()

    def path_of(self, key: str) -> Path:
        """The file of ``key`` (which need not exist)."""
        return Path(self._file_of(key))

    def _file_of(self, key: str) -> str:
        validate_key(key)  # strings, not Paths: this runs on every cache lookup
        return os.path.join(self._root, key[:2], key[2:])

    # -- reading --------------------------------------------------------------------

    def read(self, key: str) -> CacheEntry | None:
        path = self._file_of(key)
        try:
            with open(path, "rb") as handle:
                metadata, payload = entryfile.read_entry(handle)
        except FileNotFoundError:
            return None
        except CorruptEntryError as exc:
            self._warn(path, f"ignoring corrupt cache entry {path}: {exc}")
            return None
        except OSError as exc:
            self._warn(path, f"cannot read cache entry {path}: {exc}")
            return None
        if metadata.key != key:
            self._warn(path, f"ignoring cache entry {path}: it holds key {metadata.key!r}")
            return None
        if metadata.expires is not None and time.time() >= metadata.expires:
            return None
        try:
            value = pickle.loads(payload)
        except Exception as exc:  # a class that moved, a module not installed here
            self._warn(path, f"cannot unpickle cache entry {path}: {type(exc).__name__}: {exc}")
            return None
        return CacheEntry(key, metadata.task, value, metadata.created, metadata.expires)

    # -- writing --------------------------------------------------------------------

    def write(self, key: str, entry: CacheEntry) -> bool:
        path = self.path_of(key)
        try:
            import cloudpickle

            payload = cloudpickle.dumps(entry.value, protocol=5)
        except Exception as exc:
            logger.warning(
                "not caching the result of task %r: it cannot be pickled (%s: %s)",
                entry.task,
                type(exc).__name__,
                exc,
            )
            return False
        metadata = EntryMetadata(key, entry.task, entry.created, entry.expires)
        temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            _make_private_dirs(path.parent)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    entryfile.write_entry(handle, metadata, payload)
                os.replace(temporary, path)
            except BaseException:
                _unlink_quietly(temporary)
                raise
        except OSError as exc:
            logger.warning("cannot write cache entry %s: %s", path, exc)
            return False
        return True

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path_of(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot delete cache entry %s: %s", self.path_of(key), exc)
            return False
        return True

    # -- listing and maintenance ----------------------------------------------------

    def entries(self, *, verify: bool = False) -> Iterator[EntryInfo]:
        """Every entry file, expired and corrupt ones included.

        Reads each file's header and metadata; an entry whose header, metadata or
        length is damaged, that cannot be read, or that holds another key's entry is
        listed with ``corrupt`` set to the reason. Payloads are not read unless
        ``verify`` is true: then every entry's checksum is verified too (reading the
        whole cache), which finds damage inside a payload as well.
        """
        now = time.time()
        for path, key in self._entry_files():
            try:
                with open(path, "rb") as handle:
                    if verify:
                        metadata, size = entryfile.verify_entry(handle)
                    else:
                        metadata, size = entryfile.read_metadata(handle)
            except FileNotFoundError:  # removed since the directory was listed
                continue
            except CorruptEntryError as exc:
                yield _corrupt_entry(path, key, str(exc))
                continue
            except OSError as exc:
                yield _corrupt_entry(path, key, f"unreadable: {exc.strerror or exc}")
                continue
            if metadata.key != key:
                yield _corrupt_entry(path, key, f"the file holds the entry of key {metadata.key}")
                continue
            expired = metadata.expires is not None and now >= metadata.expires
            yield EntryInfo(
                key, metadata.task, size, metadata.created, metadata.expires, expired, str(path)
            )

    def clear(self, task: str | None = None) -> int:
        removed = 0
        if task is None:
            for path, _ in self._entry_files():
                removed += _unlink_quietly(path)
        else:
            for info in list(self.entries()):
                if info.task == task:
                    removed += _unlink_quietly(Path(info.path))
        self._remove_empty_shards()
        return removed

    def prune(self) -> PruneReport:
        expired = corrupt = temporary = 0
        now = time.time()
        for path, key in self._entry_files():
            try:
                with open(path, "rb") as handle:
                    inode = os.fstat(handle.fileno()).st_ino
                    metadata, _ = entryfile.read_entry(handle)
            except FileNotFoundError:
                continue
            except CorruptEntryError:
                corrupt += _unlink_if_same(path, inode)
                continue
            except OSError:
                continue
            if metadata.key != key:
                corrupt += _unlink_if_same(path, inode)
            elif metadata.expires is not None and now >= metadata.expires:
                expired += _unlink_if_same(path, inode)
        for path in self._temporary_files():
            try:
                stale = now - path.stat().st_mtime > STALE_TEMP_SECONDS
            except OSError:
                continue
            if stale:
                temporary += _unlink_quietly(path)
        self._remove_empty_shards()
        return PruneReport(expired, corrupt, temporary)

    def _shards(self) -> Iterator[Path]:
        try:
            with os.scandir(self.directory) as listing:
                shards = [entry.path for entry in listing if _is_shard(entry)]
        except OSError:
            return
        for shard in sorted(shards):
            yield Path(shard)

    def _entry_files(self) -> Iterator[tuple[Path, str]]:
        for shard in self._shards():
            try:
                names = sorted(os.listdir(shard))
            except OSError:
                continue
            for name in names:
                key = shard.name + name
                if not name.startswith(".") and _KEY.fullmatch(key):
                    yield shard / name, key

    def _temporary_files(self) -> Iterator[Path]:
        for shard in self._shards():
            try:
                names = os.listdir(shard)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    yield shard / name

    def _remove_empty_shards(self) -> None:
        for shard in self._shards():
            with contextlib.suppress(OSError):  # not empty, or someone is writing there
                shard.rmdir()

    def _warn(self, path: str | Path, message: str) -> None:
        """Log ``message`` once per file and store (a corrupt entry may be read often)."""
        with self._warned_lock:
            if str(path) in self._warned:
                return
            if len(self._warned) < 10_000:
                self._warned.add(str(path))
        logger.warning("%s", message)


def _corrupt_entry(path: Path, key: str, reason: str) -> EntryInfo:
    """The listing of an entry file that cannot be used, with the reason."""
    try:
        status = os.stat(path)
        size, modified = status.st_size, status.st_mtime
    except OSError:
        size, modified = 0, 0.0
    return EntryInfo(key, "", size, modified, None, False, str(path), corrupt=reason)


def _is_shard(entry: os.DirEntry[str]) -> bool:
    return (
        len(entry.name) == 2
        and _KEY.fullmatch(entry.name + "000000") is not None
        and (entry.is_dir(follow_symlinks=False))
    )


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.mkdir(path, 0o700)


def _unlink_quietly(path: Path) -> int:
    try:
        os.unlink(path)
    except OSError:
        return 0
    return 1


def _unlink_if_same(path: Path, inode: int) -> int:
    """Remove ``path`` unless a writer has replaced it since it was inspected."""
    try:
        if os.stat(path).st_ino != inode:
            return 0
    except OSError:
        return 0
    return _unlink_quietly(path)


__all__ = [
    "DEFAULT_CACHE_DIR",
    "ENV_CACHE_DIR",
    "CacheEntry",
    "CacheStore",
    "EntryInfo",
    "FileStore",
    "PruneReport",
    "default_cache_dir",
    "validate_key",
]
