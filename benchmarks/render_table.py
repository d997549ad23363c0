"""Render a pytest-benchmark JSON file as the Markdown table the README shows.

Usage::

    pytest benchmarks --benchmark-only --benchmark-json=out.json
    python benchmarks/render_table.py out.json            # prints Markdown
    python benchmarks/render_table.py out.json -o TABLE.md

Reads what the suite stores in ``extra_info`` (anchor, min/median timings, ratio and
the reported figures with their goals) and the machine description pytest-benchmark
records, so figures quoted in documentation are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def format_seconds(seconds: float | None) -> str:
    """A duration with a readable unit: ``812 ns``, ``3.41 µs``, ``17.9 ms``, ``1.20 s``."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2g}x" if abs(ratio) < 0.1 else f"{ratio:.2f}x"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _met(value: object) -> str:
    if value is None:
        return "-"
    return "yes" if value else "**no**"


def machine_line(data: dict[str, Any]) -> str:
    """One line describing where the numbers were taken."""
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    brand = cpu.get("brand_raw") or machine.get("processor") or "unknown CPU"
    count = cpu.get("count")
    cpus = f"{count} CPUs" if count else "CPU count unknown"
    python = " ".join(
        part
        for part in (machine.get("python_implementation"), machine.get("python_version"))
        if part
    )
    system = " ".join(part for part in (machine.get("system"), machine.get("release")) if part)
    parts = [
        f"{brand} ({cpus})",
        machine.get("machine") or "",
        system,
        python or "Python ?",
    ]
    commit = data.get("commit_info") or {}
    if commit.get("id"):
        dirty = " (dirty)" if commit.get("dirty") else ""
        parts.append(f"commit {str(commit['id'])[:10]}{dirty}")
    if data.get("datetime"):
        parts.append(str(data["datetime"]))
    if data.get("version"):
        parts.append(f"pytest-benchmark {data['version']}")
    return "Machine: " + ", ".join(p for p in parts if p)


def _figures(info: dict[str, Any]) -> list[dict[str, Any]]:
    figures = info.get("figures")
    if isinstance(figures, list) and figures:
        return [f for f in figures if isinstance(f, dict)]
    return [{"label": "-", "value": None, "unit": "", "goal": None, "met": None}]


def _figure_text(fig: dict[str, Any]) -> str:
    value = fig.get("value")
    if value is None:
        return "-"
    unit = fig.get("unit", "")
    if unit == "µs" and abs(value) >= 1000:  # 3.33e+04 µs reads better as 33.3 ms
        value, unit = value / 1000, "ms"
    return f"{fig.get('label', '')}: {value:.3g} {unit}".strip()


def rows(benchmarks: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Table rows: one per reported figure, the timing columns on each benchmark's first."""
    table: list[list[str]] = []
    for bench in benchmarks:
        info: dict[str, Any] = bench.get("extra_info") or {}
        stats: dict[str, Any] = bench.get("stats") or {}
        median = stats.get("median", info.get("subject_median_s"))
        minimum = stats.get("min", info.get("subject_min_s"))
        anchor_name = info.get("anchor", "-")
        anchor_min = info.get("anchor_min_s")
        for index, fig in enumerate(_figures(info)):
            first = index == 0
            table.append(
                [
                    _cell(bench.get("name", "?")) if first else "",
                    format_seconds(median) if first else "",
                    format_seconds(minimum) if first else "",
                    _cell(anchor_name) if first else "",
                    format_seconds(anchor_min) if first else "",
                    format_ratio(info.get("ratio")) if first else "",
                    _cell(_figure_text(fig)),
                    _cell(fig.get("goal") or "-"),
                    _met(fig.get("met")),
                ]
            )
    return table


HEADER = [
    "Benchmark",
    "Median",
    "Min",
    "Anchor",
    "Anchor min",
    "Ratio (min/min)",
    "Figure",
    "Goal",
    "Met",
]


def _is_cell(bench: dict[str, Any]) -> bool:
    info = bench.get("extra_info") or {}
    return "backend" in info and "workload" in info


def matrix(benchmarks: list[dict[str, Any]]) -> list[str]:
    """The backend x workload benchmarks as one table: rows are workloads, columns
    backends, each cell ``ratio to its anchor (flowcore min time)``."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    backends: list[str] = []
    workloads: list[str] = []
    for bench in benchmarks:
        info = bench["extra_info"]
        backend, workload = str(info["backend"]), str(info["workload"])
        cells[(workload, backend)] = info
        if backend not in backends:
            backends.append(backend)
        if workload not in workloads:
            workloads.append(workload)
    by_anchor: dict[str, dict[str, list[str]]] = {}
    for (workload, backend), info in cells.items():
        by_anchor.setdefault(backend, {}).setdefault(str(info.get("anchor", "-")), []).append(workload)
    anchors: dict[str, str] = {}
    for backend, used in by_anchor.items():
        # The anchor most cells use, then the exceptions with their workloads.
        ordered = sorted(used.items(), key=lambda item: -len(item[1]))
        text = ordered[0][0]
        for anchor, exceptions in ordered[1:]:
            text += f" ({', '.join(exceptions)}: {anchor})"
        anchors[backend] = text
    lines = ["| workload | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for workload in workloads:
        row = [workload]
        for backend in backends:
            info = cells.get((workload, backend))
            if info is None:
                row.append("-")
                continue
            text = f"{format_ratio(info.get('ratio'))} ({format_seconds(info.get('subject_min_s'))})"
            goals = [f for f in _figures(info) if f.get("goal")]
            if goals:
                text += f" goal {goals[0]['goal']}: {_met(goals[0].get('met'))}"
            row.append(_cell(text))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Each cell: flowcore's time over its anchor's (fastest rounds), and flowcore's own "
        "fastest time. Anchors: "
        + "; ".join(f"{backend}: {_cell(anchor)}" for backend, anchor in anchors.items())
        + "."
    )
    return lines


def render(data: dict[str, Any]) -> str:
    """The Markdown for one pytest-benchmark JSON document: the backend x workload
    matrix (if measured), then a row per figure of every other benchmark."""
    benchmarks = data.get("benchmarks") or []
    lines = [machine_line(data), ""]
    if not benchmarks:
        lines.append(
            "_No benchmark results in this file (was it written with --benchmark-disable?)._"
        )
        return "\n".join(lines) + "\n"
    grid = [b for b in benchmarks if _is_cell(b)]
    others = [b for b in benchmarks if not _is_cell(b)]
    if grid:
        lines.extend(matrix(grid))
        lines.append("")
    if others:
        lines.append("| " + " | ".join(HEADER) + " |")
        lines.append("|" + "|".join("---" for _ in HEADER) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in rows(others))
        lines.append("")
        lines.append(
            "Median and Min: one timed round of the flowcore code (pytest-benchmark). Anchor min: "
            "the fastest round of the reference code, run right before each flowcore round. "
            "Figures use the fastest rounds; goals are reported, not enforced."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("json_file", type=Path, help="file written by --benchmark-json")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here, not stdout")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"render_table: cannot read {args.json_file}: {exc}", file=sys.stderr)
        return 2
    text = render(data)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
