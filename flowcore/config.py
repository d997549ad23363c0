"""Where the default backend comes from when code does not name one.

Precedence, highest first (code-level choices are handled by the caller):

1. ``FLOWCORE_BACKEND`` with optional ``FLOWCORE_BACKEND_OPTIONS`` (a JSON object);
2. ``[tool.flowcore]`` ``backend`` / ``backend_options`` in the nearest
   ``pyproject.toml`` at or above the working directory;
3. ``threads`` with no options.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcore.errors import ConfigurationError

DEFAULT_BACKEND = "threads"
ENV_BACKEND = "FLOWCORE_BACKEND"
ENV_BACKEND_OPTIONS = "FLOWCORE_BACKEND_OPTIONS"


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
    with _cache_lock:
        _cache[pyproject] = (mtime, settings)
    return settings


__all__ = ["DEFAULT_BACKEND", "BackendChoice", "configured_backend", "find_pyproject"]
