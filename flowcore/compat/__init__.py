"""Compatibility layers that move code written for other libraries onto flowcore.

* :mod:`flowcore.compat.joblib` -- a drop-in ``joblib.Parallel`` / ``delayed`` /
  ``parallel_config`` on flowcore's backends, and flowcore as a joblib backend
  (:func:`flowcore.compat.joblib.register`).

Nothing here is imported by ``import flowcore``; each layer is imported on first use.
"""

from __future__ import annotations

__all__: list[str] = []
