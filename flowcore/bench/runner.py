"""Drives ``flowcore bench``: one child process per backend, progress on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowcore.bench.child import MARKER


@dataclass
class BackendResult:
    """What one backend did with the flow (``status`` is ``ok`` or ``failed``)."""

    backend: str
    status: str
    error: str | None = None
    wall_seconds: list[float] = field(default_factory=list)
    median_wall_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    result_hash: str | None = None
    sampled_tree: bool = False
    speedup: float | None = None

    @classmethod
    def from_child(cls, report: dict[str, Any]) -> BackendResult:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in report.items() if k in known})


def run_backend(
    target: str,
    backend: str,
    params: dict[str, Any],
    *,
    repeat: int,
    warmup: int,
    timeout: float,
) -> BackendResult:
    """Measure ``target`` on ``backend`` in a fresh interpreter; never raises for the
    flow's or the backend's failures (they are the result's ``error``)."""
    command = [
        sys.executable, "-m", "flowcore.bench.child", target, backend, json.dumps(params),
        str(repeat), str(warmup),
    ]
    env = dict(os.environ)
    env.pop("FLOWCORE_BACKEND", None)  # the child names its backend explicitly
    env.pop("FLOWCORE_BACKEND_OPTIONS", None)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return BackendResult(backend, "failed", f"did not finish within {timeout:g} s (--timeout)")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return BackendResult.from_child(json.loads(line[len(MARKER):]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return BackendResult(
        backend, "failed", f"the benchmark process exited with code {done.returncode}: " + " | ".join(tail)
    )


def run_all(
    target: str,
    backends: list[str],
    params: dict[str, Any],
    *,
    repeat: int,
    warmup: int,
    timeout: float,
    progress: Callable[[str], None],
) -> list[BackendResult]:
    """Every backend in turn, then the speedups over ``sequential`` (when it ran)."""
    results: list[BackendResult] = []
    for number, backend in enumerate(backends, 1):
        progress(f"[{number}/{len(backends)}] {backend}: {warmup} warm-up + {repeat} measured run(s) ...")
        started = time.perf_counter()
        result = run_backend(target, backend, params, repeat=repeat, warmup=warmup, timeout=timeout)
        outcome = (
            f"median {result.median_wall_seconds:.3g} s" if result.status == "ok" and result.median_wall_seconds
            else f"FAILED: {result.error}"
        )
        progress(f"[{number}/{len(backends)}] {backend}: {outcome} ({time.perf_counter() - started:.1f} s)")
        results.append(result)
    baseline = next((r for r in results if r.backend == "sequential" and r.status == "ok"), None)
    if baseline is not None and baseline.median_wall_seconds:
        for result in results:
            if result.status == "ok" and result.median_wall_seconds:
                result.speedup = baseline.median_wall_seconds / result.median_wall_seconds
    return results


__all__ = ["BackendResult", "run_all", "run_backend"]
