"""Which cache store a run uses, and the registration record of a store.

Stores are plugins (hook ``flowcore_cache_stores``). A task's ``cache_storage`` picks
its store: a directory (the ``file`` store there), or a store object. Without one,
the default store is resolved in the process that runs the task:

1. ``FLOWCORE_CACHE_STORE`` (a registered store name) with optional
   ``FLOWCORE_CACHE_STORE_OPTIONS`` (a JSON object);
2. ``[tool.flowcore] cache_store`` / ``cache_store_options`` in pyproject.toml;
3. the ``file`` store in the cache directory (``FLOWCORE_CACHE_DIR``, else
   ``[tool.flowcore] cache_dir``, else ``.flowcore/cache`` in the working directory).

A store object needs ``read(key)``, ``write(key, entry)``; see
:class:`flowcore.caching.store.CacheStore` for the whole protocol.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcore.errors import ConfigurationError

ENV_STORE = "FLOWCORE_CACHE_STORE"
ENV_STORE_OPTIONS = "FLOWCORE_CACHE_STORE_OPTIONS"


@dataclass(frozen=True)
class CacheStoreSpec:
    """A cache store a plugin provides: ``factory(**options)`` returns the store."""

    name: str
    factory: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class StoreChoice:
    name: str
    options: dict[str, Any]
    source: str


def configured_store(cwd: Path | None = None) -> StoreChoice:
    """The default store's name and options (see the module docstring)."""
    from flowcore.config import find_pyproject, tool_settings

    name = os.environ.get(ENV_STORE, "").strip()
    raw = os.environ.get(ENV_STORE_OPTIONS, "").strip()
    if name:
        return StoreChoice(name, _json_options(raw) if raw else {}, f"environment variable {ENV_STORE}")
    if raw:
        raise ConfigurationError(f"{ENV_STORE_OPTIONS} is set but {ENV_STORE} is not; name the store")
    pyproject = find_pyproject(cwd if cwd is not None else Path.cwd())
    if pyproject is not None:
        settings = tool_settings(pyproject)
        where = f"[tool.flowcore] in {pyproject}"
        store = settings.get("cache_store")
        options = settings.get("cache_store_options", {})
        if store is not None and not isinstance(store, str):
            raise ConfigurationError(f"{where}: 'cache_store' must be a string, got {store!r}")
        if not isinstance(options, dict):
            raise ConfigurationError(f"{where}: 'cache_store_options' must be a table, got {options!r}")
        if store:
            return StoreChoice(store, dict(options), where)
    return StoreChoice("file", {}, "default")


def _json_options(raw: str) -> dict[str, Any]:
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{ENV_STORE_OPTIONS} is not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ConfigurationError(f"{ENV_STORE_OPTIONS} must be a JSON object, got {raw!r}")
    return options


def create_store(name: str, options: dict[str, Any]) -> Any:
    """Create the registered store ``name``; a clear error lists the registered ones."""
    from flowcore.registry import get_registry

    table = get_registry().cache_stores()
    entry = table.get(name)
    if entry is None:
        raise ConfigurationError(
            f"unknown cache store {name!r}; registered: {', '.join(sorted(table)) or '(none)'}"
        )
    try:
        return entry[0].factory(**options)
    except TypeError as exc:
        raise ConfigurationError(f"invalid options for cache store {name!r}: {exc}") from exc


_stores: dict[Any, Any] = {}
_stores_lock = threading.Lock()


def resolve_store(storage: Any) -> Any:
    """The store for a task's ``cache_storage`` (None: the configured default)."""
    if storage is not None and not isinstance(storage, str):
        return storage
    # What decides the store, cheaply: a lookup runs on every cached call, and finding
    # pyproject.toml walks the directory tree (so its settings are read once per
    # working directory and environment).
    environ = os.environ
    ident: Any = (
        storage,
        environ.get(ENV_STORE),
        environ.get(ENV_STORE_OPTIONS),
        environ.get("FLOWCORE_CACHE_DIR"),
        os.getcwd(),
    )
    store = _stores.get(ident)
    if store is not None:
        return store
    if storage is None:
        choice = configured_store()
    else:
        choice = StoreChoice("file", {"directory": storage}, "cache_storage")
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = create_store(choice.name, choice.options)
        return store


__all__ = ["CacheStoreSpec", "StoreChoice", "configured_store", "create_store", "resolve_store"]
