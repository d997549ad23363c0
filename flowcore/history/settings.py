"""Where the run history lives and whether it is kept.

Each setting comes from the environment first, then ``[tool.flowcore]`` of the nearest
pyproject.toml at or above the working directory, then the default:

=================== ================================= =============================== ===========
setting             environment                       ``[tool.flowcore]``              default
=================== ================================= =============================== ===========
on or off           ``FLOWCORE_HISTORY`` (``0``/``1``) ``history = false``             on
home directory      ``FLOWCORE_HOME``                 ``home = "..."`` (relative to    ``~/.flowcore``
                                                      the pyproject.toml)
retention           ``FLOWCORE_HISTORY_RETENTION``    ``history_retention = "30d"``    keep all
store               ``FLOWCORE_HISTORY_STORE``        ``history_store = "sqlite"``     ``sqlite``
store options       ``FLOWCORE_HISTORY_STORE_OPTIONS`` ``history_store_options = {}``  none
                    (a JSON object)
=================== ================================= =============================== ===========

The built-in ``sqlite`` store keeps ``history.db`` in the home directory.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcore.errors import ConfigurationError

ENV_HISTORY = "FLOWCORE_HISTORY"
ENV_HOME = "FLOWCORE_HOME"
ENV_RETENTION = "FLOWCORE_HISTORY_RETENTION"
ENV_STORE = "FLOWCORE_HISTORY_STORE"
ENV_STORE_OPTIONS = "FLOWCORE_HISTORY_STORE_OPTIONS"
DEFAULT_HOME = "~/.flowcore"
DEFAULT_STORE = "sqlite"

_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"", "1", "true", "yes", "on"})


@dataclass(frozen=True)
class HistorySettings:
    """The resolved history settings (see the module docstring).

    Hashable: the writer keeps one open store per distinct settings.
    """

    enabled: bool
    home: Path
    store: str = DEFAULT_STORE
    #: the store's options as canonical JSON text (a dict is not hashable)
    store_options_json: str = "{}"
    #: seconds of history to keep (None: keep everything)
    retention_s: float | None = None
    #: where the on/off choice came from, for messages
    source: str = "default"

    def store_options(self) -> dict[str, Any]:
        """The options passed to the store's factory."""
        options: dict[str, Any] = json.loads(self.store_options_json)
        return options


def history_settings(cwd: Path | None = None) -> HistorySettings:
    """Resolve the settings now. Raises :class:`ConfigurationError` naming the bad
    setting and where it came from."""
    from flowcore.config import find_pyproject, tool_settings

    base = cwd if cwd is not None else Path.cwd()
    environ = os.environ
    pyproject = find_pyproject(base)
    table = tool_settings(pyproject) if pyproject is not None else {}
    where = f"[tool.flowcore] in {pyproject}"

    raw = environ.get(ENV_HISTORY)
    if raw is not None:
        value = raw.strip().lower()
        if value in _OFF:
            enabled, source = False, f"environment variable {ENV_HISTORY}={raw}"
        elif value in _ON:
            enabled, source = True, f"environment variable {ENV_HISTORY}"
        else:
            raise ConfigurationError(
                f"{ENV_HISTORY}={raw!r} is not understood; use 0 to turn the run history off "
                "or 1 to keep it on"
            )
    elif "history" in table:
        flag = table["history"]
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{where}: 'history' must be true or false, got {flag!r}")
        enabled, source = flag, where
    else:
        enabled, source = True, "default"

    home_env = environ.get(ENV_HOME, "").strip()
    if home_env:
        home = base / Path(home_env).expanduser()
    elif "home" in table:
        value = table["home"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{where}: 'home' must be a non-empty string, got {value!r}")
        assert pyproject is not None
        home = pyproject.parent / Path(value).expanduser()
    else:
        home = Path(DEFAULT_HOME).expanduser()

    retention_raw = environ.get(ENV_RETENTION, "").strip() or table.get("history_retention")
    retention: float | None = None
    if retention_raw:
        label = ENV_RETENTION if environ.get(ENV_RETENTION, "").strip() else f"{where}: 'history_retention'"
        if not isinstance(retention_raw, str):
            raise ConfigurationError(f"{label} must be a string such as '30d', got {retention_raw!r}")
        retention = parse_age(retention_raw, label)

    store = environ.get(ENV_STORE, "").strip() or table.get("history_store") or DEFAULT_STORE
    if not isinstance(store, str):
        raise ConfigurationError(f"{where}: 'history_store' must be a string, got {store!r}")
    options_raw = environ.get(ENV_STORE_OPTIONS, "").strip()
    if options_raw:
        try:
            options = json.loads(options_raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{ENV_STORE_OPTIONS} is not valid JSON ({exc}); use a JSON object") from None
        if not isinstance(options, dict):
            raise ConfigurationError(f"{ENV_STORE_OPTIONS} must be a JSON object, got {options_raw!r}")
    else:
        options = table.get("history_store_options", {})
        if not isinstance(options, dict):
            raise ConfigurationError(f"{where}: 'history_store_options' must be a table, got {options!r}")
    return HistorySettings(
        enabled, home.resolve() if home.is_absolute() else home.absolute(), store,
        json.dumps(options, sort_keys=True, default=str), retention, source,
    )


_cache: dict[tuple[Any, ...], HistorySettings] = {}
_cache_lock = threading.Lock()


def current_settings() -> HistorySettings:
    """:func:`history_settings`, cached per environment and working directory (finding
    pyproject.toml walks the directory tree; this runs once per flow run)."""
    environ = os.environ
    ident = (
        environ.get(ENV_HISTORY), environ.get(ENV_HOME), environ.get(ENV_RETENTION),
        environ.get(ENV_STORE), environ.get(ENV_STORE_OPTIONS), os.getcwd(),
    )
    settings = _cache.get(ident)
    if settings is None:
        settings = history_settings()
        with _cache_lock:
            if len(_cache) > 64:
                _cache.clear()
            _cache[ident] = settings
    return settings


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_age(text: str, what: str = "age") -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``1d12h``, ``90m``, ``45s``, ``2w``.

    Raises :class:`ConfigurationError` naming ``what`` for anything else.
    """
    cleaned = text.strip().lower()
    position, total = 0, 0.0
    for match in _AGE.finditer(cleaned):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not cleaned or position != len(cleaned):
        raise ConfigurationError(
            f"{what}: {text!r} is not an age; use a number and a unit (s, m, h, d, w), "
            "for example 30d, 12h or 1d12h"
        )
    return total


def parse_since(text: str, what: str = "--since", now: float | None = None) -> float:
    """A point in time given as an age back from now (``2d``) or as an ISO 8601 date or
    time (``2026-12-01``, ``2026-12-01T08:00``; local time unless it names a zone).
    Raises :class:`ConfigurationError` naming ``what`` for anything else, a date the
    platform cannot convert (year 1) included."""
    import datetime

    current = time.time() if now is None else now
    try:
        return current - parse_age(text, what)
    except ConfigurationError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"{what}: {text!r} is neither an age (30d, 12h) nor an ISO date (2026-12-01)"
        ) from None
    try:
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        # a naive date is placed through this machine's local time, which fails at the
        # edges of the calendar (year 1, 9999): the value cannot be used, say so
        raise ConfigurationError(
            f"{what}: {text!r} is out of the range of dates this machine can convert; "
            "give a date nearer to now, or an age (30d, 12h)"
        ) from None


__all__ = [
    "ENV_HISTORY",
    "ENV_HOME",
    "HistorySettings",
    "current_settings",
    "history_settings",
    "parse_age",
    "parse_since",
]
