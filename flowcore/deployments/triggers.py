"""Event triggers of a deployment: :class:`FileTrigger` and :class:`DeploymentTrigger`.

Both are frozen dataclasses validated at construction (a bad value raises
:class:`~flowcore.errors.DeploymentError` naming the problem and the fix) and stored
with their deployment as JSON (:meth:`to_dict`, :func:`trigger_from_dict`). The
webhook trigger needs no declaration: every deployment can be started by
``POST /api/deployments/{flow}/{deployment}/runs`` (see :mod:`.webhook`).

:class:`FileWatcher` is what a worker runs for a ``FileTrigger``: it polls the
directory and reports each file once it has stopped growing. Exactly-once across
restarts does not depend on the watcher's memory: the run it requests carries the
idempotency key ``file:<deployment>:<path>:<size>:<mtime_ns>``, which the store keeps
unique.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcore.errors import DeploymentError

#: states a :class:`DeploymentTrigger` may wait for
FINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled", "Skipped")


@dataclass(frozen=True)
class FileTrigger:
    """Start one run per new file in ``path`` matching ``pattern`` (fnmatch, on the
    file name), once the file has stopped growing (same size and mtime for
    ``settle_seconds``). The file's absolute path is passed as the flow parameter
    named ``parameter``. With ``recursive``, subdirectories are watched too.

    Each (path, size, mtime) starts exactly one run, across worker restarts and with
    several workers: a file rewritten later (new size or mtime) starts another. Files
    already present when the worker starts are new to it unless a run was already
    requested for them. A paused deployment's files wait until it is resumed.
    """

    path: str
    pattern: str = "*"
    parameter: str = "path"
    recursive: bool = False
    settle_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike) or not str(self.path).strip():
            raise DeploymentError(f"FileTrigger(path=...) must name a directory, got {self.path!r}")
        object.__setattr__(self, "path", str(Path(os.fspath(self.path)).expanduser().absolute()))
        if not isinstance(self.pattern, str) or not self.pattern:
            raise DeploymentError(f"FileTrigger(pattern=...) must be a glob such as '*.csv', got {self.pattern!r}")
        if not isinstance(self.parameter, str) or not self.parameter.isidentifier():
            raise DeploymentError(
                f"FileTrigger(parameter=...) must be the name of a flow parameter, got {self.parameter!r}"
            )
        if isinstance(self.settle_seconds, bool) or not isinstance(self.settle_seconds, int | float) or self.settle_seconds < 0:
            raise DeploymentError(f"FileTrigger(settle_seconds=...) must be a number >= 0, got {self.settle_seconds!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "file", "path": self.path, "pattern": self.pattern, "parameter": self.parameter,
            "recursive": self.recursive, "settle_seconds": self.settle_seconds,
        }

    def describe(self) -> str:
        where = os.path.join(self.path, "**" if self.recursive else "", self.pattern)
        return f"file arrives: {where} -> {self.parameter}=<path>"


@dataclass(frozen=True)
class DeploymentTrigger:
    """Start a run when a run of the deployment ``after`` (``"flow/deployment"``)
    reaches one of ``states``; ``parameters`` are merged over this deployment's own.
    Each upstream run starts at most one run (idempotency key
    ``after:<deployment>:<upstream run id>``)."""

    after: str
    states: tuple[str, ...] = ("Completed",)
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.after, str) or "/" not in self.after.strip("/"):
            raise DeploymentError(
                f"DeploymentTrigger(after=...) names the upstream deployment as 'flow-name/deployment-name', "
                f"got {self.after!r}"
            )
        raw: Any = self.states
        states = (raw,) if isinstance(raw, str) else tuple(raw)
        by_lower = {s.lower(): s for s in FINAL_STATES}
        fixed: list[str] = []
        for state in states:
            known = by_lower.get(str(state).lower())
            if known is None:
                raise DeploymentError(
                    f"DeploymentTrigger(states=...): {state!r} is not a final state; use some of "
                    f"{', '.join(FINAL_STATES)}"
                )
            fixed.append(known)
        if not fixed:
            raise DeploymentError("DeploymentTrigger(states=...) is empty; pass e.g. states=['Completed']")
        object.__setattr__(self, "states", tuple(fixed))
        if not isinstance(self.parameters, Mapping):
            raise DeploymentError(f"DeploymentTrigger(parameters=...) must be a dict, got {self.parameters!r}")
        object.__setattr__(self, "parameters", dict(self.parameters))

    def __hash__(self) -> int:
        return hash((self.after, self.states))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "deployment", "after": self.after, "states": list(self.states), "parameters": dict(self.parameters)}

    def describe(self) -> str:
        return f"after {self.after} is {'/'.join(self.states)}"


Trigger = FileTrigger | DeploymentTrigger


def trigger_from_dict(data: Mapping[str, Any]) -> Trigger:
    """The trigger that ``trigger.to_dict()`` described; DeploymentError otherwise."""
    fields = dict(data)
    kind = fields.pop("type", None)
    try:
        if kind == "file":
            return FileTrigger(**fields)
        if kind == "deployment":
            fields["states"] = tuple(fields.get("states", ("Completed",)))
            return DeploymentTrigger(**fields)
    except TypeError as exc:
        raise DeploymentError(f"bad {kind} trigger description {data!r}: {exc}") from None
    raise DeploymentError(f"unknown trigger type {kind!r} in {data!r}; known: file, deployment")


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class FileWatcher:
    """Polls one :class:`FileTrigger`'s directory (see the class docstring there).

    :meth:`poll` returns the files that have been stable for ``settle_seconds`` and
    were not reported before by this watcher, as (path, size, mtime_ns). The caller
    requests a run under the file's idempotency key, which makes it exactly-once.
    """

    def __init__(self, trigger: FileTrigger) -> None:
        self.trigger = trigger
        self._seen: dict[str, _Seen] = {}
        self._reported: set[tuple[str, int, int]] = set()
        #: why the directory could not be watched at the last poll (None: it could)
        self.problem: str | None = None
        #: the problem the worker last told about (it says each change once)
        self.told: str | None = None

    def _files(self) -> Iterator[tuple[str, int, int]]:
        root = self.trigger.path
        self.problem = _unwatchable(root)
        if self.problem is not None:
            return
        pattern = self.trigger.pattern
        walker = os.walk(root) if self.trigger.recursive else [(root, [], _names(root))]
        for directory, _dirs, names in walker:
            for name in names:
                if name.startswith(".") or not fnmatch.fnmatch(name, pattern):
                    continue  # hidden files: editors' and uploaders' temporary files
                full = os.path.join(directory, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if not _is_regular(st.st_mode):
                    continue
                yield full, st.st_size, st.st_mtime_ns

    def poll(self, now: float) -> list[tuple[str, int, int]]:
        """The files ready now (stable long enough, not reported before)."""
        ready: list[tuple[str, int, int]] = []
        present: set[str] = set()
        for path, size, mtime_ns in self._files():
            present.add(path)
            seen = self._seen.get(path)
            if seen is None or seen.size != size or seen.mtime_ns != mtime_ns:
                self._seen[path] = _Seen(size, mtime_ns, now)
                if self.trigger.settle_seconds > 0:
                    continue
                seen = self._seen[path]
            if now - seen.since < self.trigger.settle_seconds:
                continue
            ident = (path, size, mtime_ns)
            if ident not in self._reported:
                self._reported.add(ident)
                ready.append(ident)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        if len(self._reported) > 100_000:  # the store remembers; this only saves queries
            self._reported = {r for r in self._reported if r[0] in present}
        return ready


def _unwatchable(directory: str) -> str | None:
    """Why ``directory`` cannot be watched (missing, not a directory, unreadable), or None."""
    if not os.path.exists(directory):
        return f"{directory} does not exist"
    if not os.path.isdir(directory):
        return f"{directory} is not a directory"
    if not os.access(directory, os.R_OK | os.X_OK):
        return f"{directory} cannot be read by this user"
    return None


def _names(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


__all__ = ["FINAL_STATES", "DeploymentTrigger", "FileTrigger", "FileWatcher", "Trigger", "trigger_from_dict"]
