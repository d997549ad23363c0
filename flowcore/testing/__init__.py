"""Testing helpers for backend authors: the conformance suite (needs pytest).

``from flowcore.testing import BackendConformance`` and subclass it once per backend;
see :mod:`flowcore.testing.conformance`. The suite's tasks live in
:mod:`flowcore.testing.workloads`, which workers import without pytest, so this package
imports the suite (and pytest) only when it is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcore.testing.conformance import BackendConformance, LifecycleRecorder


def __getattr__(name: str) -> Any:
    if name in ("BackendConformance", "LifecycleRecorder"):
        from flowcore.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'flowcore.testing' has no attribute {name!r}")


__all__ = ["BackendConformance", "LifecycleRecorder"]
