"""The outputs of ``flowcore bench``: table, recommendation, JSON document, plot."""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

from flowcore.bench.runner import BackendResult

#: below this speedup over sequential, parallelism is not worth its overhead
WORTHWHILE_SPEEDUP = 1.1


def results_agree(results: list[BackendResult]) -> tuple[bool | None, str]:
    """Whether every backend that ran produced the same result, and a sentence."""
    hashes = {r.backend: r.result_hash for r in results if r.status == "ok"}
    if len(hashes) < 2:
        return None, "results: fewer than two backends completed; nothing to compare"
    if any(h is None for h in hashes.values()):
        missing = ", ".join(b for b, h in hashes.items() if h is None)
        return None, f"results: not compared (cannot hash the result on {missing})"
    reference_backend, reference = next(iter(hashes.items()))
    differ = [b for b, h in hashes.items() if h != reference]
    if not differ:
        return True, f"results: equal on all {len(hashes)} backends"
    return False, (
        f"results DIFFER: {', '.join(differ)} returned a different result than "
        f"{reference_backend} (check for unordered or non-deterministic output)"
    )


def recommend(results: list[BackendResult]) -> str:
    """One line: which backend to use for this flow, and why."""
    ok = [r for r in results if r.status == "ok" and r.median_wall_seconds]
    if not ok:
        return "recommendation: none (no backend completed the flow)"
    best = min(ok, key=lambda r: r.median_wall_seconds or float("inf"))
    sequential = next((r for r in ok if r.backend == "sequential"), None)
    if sequential is None or best.speedup is None:
        return f"recommendation: {best.backend} (fastest of those that completed; sequential not measured)"
    if best is sequential or best.speedup < WORTHWHILE_SPEEDUP:
        return (
            "recommendation: sequential (no backend is more than "
            f"{WORTHWHILE_SPEEDUP:.1f}x faster; the work is too small or too serial to gain from parallelism)"
        )
    return f"recommendation: {best.backend} ({best.speedup:.2f}x faster than sequential)"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _bytes(value: int | None) -> str:
    if not value:
        return "-"
    return f"{value / 2**20:.0f} MiB"


HEADERS = ("BACKEND", "STATUS", "MEDIAN WALL", "CPU", "PEAK MEMORY", "SPEEDUP")


def table(results: list[BackendResult]) -> str:
    """A fixed-width table, one row per backend (failed ones say why below it)."""
    rows = [
        (
            r.backend,
            r.status,
            _seconds(r.median_wall_seconds),
            _seconds(r.cpu_seconds),
            _bytes(r.peak_rss_bytes),
            f"{r.speedup:.2f}x" if r.speedup is not None else "-",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [HEADERS, *rows]) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [HEADERS, *rows]]
    for r in results:
        if r.status != "ok":
            lines.append(f"  {r.backend} failed: {r.error}")
    return "\n".join(lines)


def document(target: str, params: dict[str, Any], repeat: int, results: list[BackendResult]) -> dict[str, Any]:
    """The JSON document ``--json`` writes (schema version 1)."""
    agree, _ = results_agree(results)
    return {
        "schema": "flowcore-bench/1",
        "flow": target,
        "params": params,
        "repeat": repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "backends": [dataclasses.asdict(r) for r in results],
        "results_equal": agree,
        "recommendation": recommend(results),
    }


def plot(results: list[BackendResult], path: str, title: str) -> None:
    """A bar chart of median wall time per backend (matplotlib, ``flowcore[plot]``)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('flowcore bench: --plot needs matplotlib; install it: pip install "flowcore[plot]"') from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(max(4.0, 1.3 * len(results) + 2), 3.6))
    names = [r.backend for r in results]
    heights = [r.median_wall_seconds or 0.0 for r in results]
    bars = axes.bar(names, heights, color=["#4c72b0" if r.status == "ok" else "#dddddd" for r in results])
    for bar, result in zip(bars, results, strict=True):
        label = "failed" if result.status != "ok" else (f"{result.speedup:.2f}x" if result.speedup else "")
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    axes.set_ylabel("median wall time (s)")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)


__all__ = ["document", "plot", "recommend", "results_agree", "table"]
