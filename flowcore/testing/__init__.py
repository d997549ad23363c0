"""Testing helpers for backend authors: the conformance suite (needs pytest).

``from flowcore.testing import BackendConformance`` and subclass it once per backend;
see :mod:`flowcore.testing.conformance`.
"""

from __future__ import annotations

from flowcore.testing.conformance import BackendConformance, LifecycleRecorder

__all__ = ["BackendConformance", "LifecycleRecorder"]
