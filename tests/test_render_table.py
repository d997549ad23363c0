"""benchmarks/render_table.py: the README's performance tables come from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _render_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_table", REPO / "benchmarks" / "render_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_table", module)
    spec.loader.exec_module(module)
    return module


def _cell(backend: str, workload: str, anchor: str, ratio: float) -> dict[str, Any]:
    return {
        "name": f"test_matrix[{backend}-{workload}]",
        "stats": {"min": 0.1, "median": 0.1},
        "extra_info": {
            "backend": backend, "workload": workload, "anchor": anchor, "ratio": ratio,
            "subject_min_s": 0.1, "figures": [],
        },
    }


def test_matrix_has_a_row_per_workload_and_names_each_anchor() -> None:
    """Every workload gets its row, also when a backend uses another anchor for one of
    them (that exception once replaced the list of rows, leaving one)."""
    render = _render_table()
    cells = [
        _cell("threads", "tiny_map", "ThreadPoolExecutor", 0.05),
        _cell("threads", "cpu_bound", "ThreadPoolExecutor", 1.01),
        _cell("threads", "dag", "ThreadPoolExecutor", 1.5),
        _cell("loky", "tiny_map", "joblib.Parallel", 0.41),
        _cell("loky", "cpu_bound", "loky executor", 1.02),
        _cell("loky", "dag", "loky executor", 1.2),
    ]
    text = render.render({"benchmarks": cells, "machine_info": {}, "commit_info": {}})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| workload | threads | loky |"
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| tiny_map", "| cpu_bound", "| dag"]
    assert "| cpu_bound | 1.01x (100 ms) | 1.02x (100 ms) |" in rows
    assert "loky: loky executor (tiny_map: joblib.Parallel)" in text
