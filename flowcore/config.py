"""Where the default backend comes from when code does not name one.

Precedence, highest first (code-level choices are handled by the caller):

1. ``FLOWCORE_BACKEND`` with optional ``FLOWCORE_BACKEND_OPTIONS`` (a JSON object);
2. ``[tool.flowcore]`` ``backend`` / ``backend_options`` in the nearest
   ``pyproject.toml`` at or above the working directory;
3. ``threads`` with no options.

This module also holds the one list of settings flowcore knows: the keys of
``[tool.flowcore]`` (:data:`PYPROJECT_KEYS`; an unknown key is a ConfigurationError)
and the ``FLOWCORE_*`` environment variables (:data:`ENVIRONMENT_VARIABLES`; an
unknown one is a :class:`~flowcore.errors.ConfigurationWarning`), so that a typo such
as ``backends = "loky"`` fails loudly instead of running on threads.
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import tomllib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcore.errors import ConfigurationError, ConfigurationWarning

DEFAULT_BACKEND = "threads"
ENV_BACKEND = "FLOWCORE_BACKEND"
ENV_BACKEND_OPTIONS = "FLOWCORE_BACKEND_OPTIONS"

#: Every key ``[tool.flowcore]`` may hold, with what it sets.
PYPROJECT_KEYS: dict[str, str] = {
    "backend": "the default backend's name",
    "backend_options": "the default backend's options (a table)",
    "cache_dir": "the file cache store's directory",
    "cache_store": "the default cache store's name",
    "cache_store_options": "the default cache store's options (a table)",
    "home": "flowcore's home directory (the run history lives there)",
    "history": "false turns the run history off",
    "history_retention": "how long the run history keeps runs (e.g. \"30d\")",
    "history_store": "the run history store's name",
    "history_store_options": "the run history store's options (a table)",
}

#: Every ``FLOWCORE_*`` environment variable flowcore reads, with what it sets. The
#: one list: a test checks that each variable named in the code base is here.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    ENV_BACKEND: "the default backend's name",
    ENV_BACKEND_OPTIONS: "the default backend's options (JSON object)",
    "FLOWCORE_CACHE_DIR": "the file cache store's directory",
    "FLOWCORE_CACHE_STORE": "the default cache store's name",
    "FLOWCORE_CACHE_STORE_OPTIONS": "the default cache store's options (JSON object)",
    "FLOWCORE_LOGGING_LEVEL": "the level of flowcore's console handler",
    "FLOWCORE_HOME": "flowcore's home directory (the run history lives there)",
    "FLOWCORE_HISTORY": "0 turns the run history off",
    "FLOWCORE_HISTORY_RETENTION": "how long the run history keeps runs (e.g. 30d)",
    "FLOWCORE_HISTORY_STORE": "the run history store's name",
    "FLOWCORE_HISTORY_STORE_OPTIONS": "the run history store's options (JSON object)",
    "FLOWCORE_RESULTS_DIR": "where persist_result keeps task results by default (else FLOWCORE_HOME/results)",
    "FLOWCORE_PROGRESS": "0 turns the live progress display of flow runs on a terminal off",
    "FLOWCORE_REQUIRE_BROWSER": "tests only: 1 makes a missing Chromium fail the dashboard's browser tests",
    "FLOWCORE_DISABLE_PLUGIN_AUTOLOAD": "skip the 'flowcore' entry points",
    "FLOWCORE_WORKER_JOURNAL": "internal: the worker journal, passed from a flow's process to its workers",
    "FLOWCORE_API_TOKEN": "the bearer token of the deployment webhook API (default: $FLOWCORE_HOME/api-token)",
    "FLOWCORE_DEPLOYMENT_RUN_ID": "internal: the deployment run a worker's child process executes",
    "FLOWCORE_DEPLOYMENT_STORE": "internal: the store file, passed from a worker to its child processes",
    "FLOWCORE_WORKER_PID": "internal: the worker's pid, watched by its child processes",
    "FLOWCORE_WORKER_BACKEND": "internal: a worker's --backend, passed to its child processes",
}

_PREFIX = "FLOWCORE_"
_warned_variables: set[str] = set()
_warned_lock = threading.Lock()


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))


_scanned_size = -1  # len(os.environ) when check_environment last scanned it


def check_environment() -> None:
    """Warn (ConfigurationWarning, once per variable and process) about ``FLOWCORE_*``
    environment variables flowcore does not know, naming the nearest known one.
    Called when a top-level flow run or ``use_backend`` block starts.

    The environment is scanned again only when its number of variables has changed
    since the last scan (a variable set or unset since): decoding every name costs
    more than the rest of an empty flow run. A variable renamed in place between two
    flow runs of one process (one unset, another set) goes unnoticed until the next
    change in size."""
    global _scanned_size
    size = len(os.environ)
    if size == _scanned_size:
        return
    _scanned_size = size
    unknown = [
        name for name in os.environ
        if name.startswith(_PREFIX) and name not in ENVIRONMENT_VARIABLES and name not in _warned_variables
    ]
    if not unknown:
        return
    with _warned_lock:
        unknown = [name for name in unknown if name not in _warned_variables]
        _warned_variables.update(unknown)
    for name in sorted(unknown):
        warnings.warn(
            f"unknown environment variable {name!r} is ignored; {_did_you_mean(name, ENVIRONMENT_VARIABLES)} "
            "(unset it or fix its name)",
            ConfigurationWarning,
            stacklevel=2,
        )


@dataclass(frozen=True)
class BackendChoice:
    """A backend name, its options and where the choice came from (for messages)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "default"


def configured_backend(cwd: Path | None = None) -> BackendChoice:
    """The backend chosen by the environment, pyproject.toml, or the default."""
    name = os.environ.get(ENV_BACKEND, "").strip()
    raw_options = os.environ.get(ENV_BACKEND_OPTIONS, "").strip()
    if name:
        options = _parse_env_options(raw_options) if raw_options else {}
        return BackendChoice(name, options, f"environment variable {ENV_BACKEND}")
    if raw_options:
        raise ConfigurationError(
            f"{ENV_BACKEND_OPTIONS} is set but {ENV_BACKEND} is not; set {ENV_BACKEND} to the "
            "backend these options are for"
        )
    pyproject = find_pyproject(cwd if cwd is not None else Path.cwd())
    if pyproject is not None:
        settings = tool_settings(pyproject)
        backend = settings.get("backend")
        options = settings.get("backend_options", {})
        where = f"[tool.flowcore] in {pyproject}"
        if backend is not None and not isinstance(backend, str):
            raise ConfigurationError(f"{where}: 'backend' must be a string, got {backend!r}")
        if not isinstance(options, dict):
            raise ConfigurationError(f"{where}: 'backend_options' must be a table, got {options!r}")
        if backend:
            return BackendChoice(backend, dict(options), where)
        if options:
            raise ConfigurationError(
                f"{where}: 'backend_options' is set but 'backend' is not; name the backend"
            )
    return BackendChoice(DEFAULT_BACKEND, {}, "default")


def _parse_env_options(raw: str) -> dict[str, Any]:
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{ENV_BACKEND_OPTIONS} is not valid JSON ({exc}); use a JSON object such as "
            '\'{"max_workers": 4}\''
        ) from None
    if not isinstance(options, dict):
        raise ConfigurationError(
            f"{ENV_BACKEND_OPTIONS} must be a JSON object such as '{{\"max_workers\": 4}}', "
            f"got {raw!r}"
        )
    return options


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` that has a [tool.flowcore] table."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and tool_settings(candidate):
            return candidate
    return None


_cache: dict[Path, tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def tool_settings(pyproject: Path) -> dict[str, Any]:
    """The ``[tool.flowcore]`` table of a pyproject.toml (empty if absent); cached by mtime."""
    try:
        mtime = pyproject.stat().st_mtime
    except OSError:
        return {}
    with _cache_lock:
        cached = _cache.get(pyproject)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    try:
        with pyproject.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {pyproject}: {exc}") from None
    settings = document.get("tool", {}).get("flowcore", {})
    if not isinstance(settings, dict):
        raise ConfigurationError(f"{pyproject}: [tool.flowcore] must be a table")
    for key in settings:
        if key not in PYPROJECT_KEYS:
            raise ConfigurationError(
                f"[tool.flowcore] in {pyproject}: unknown key {key!r}; "
                f"{_did_you_mean(key, PYPROJECT_KEYS)} (known keys: {', '.join(PYPROJECT_KEYS)})"
            )
    with _cache_lock:
        _cache[pyproject] = (mtime, settings)
    return settings


__all__ = [
    "DEFAULT_BACKEND",
    "ENVIRONMENT_VARIABLES",
    "PYPROJECT_KEYS",
    "BackendChoice",
    "check_environment",
    "configured_backend",
    "find_pyproject",
]
