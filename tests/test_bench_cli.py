"""``flowcore bench``: real child processes per backend, the table, JSON and plot."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from flowcore.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpu_bound.py"


def _rows(output: str) -> dict[str, list[str]]:
    """The table's rows by backend (columns split on runs of two or more spaces)."""
    import re

    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("BACKEND"))
    rows: dict[str, list[str]] = {}
    for line in lines[header + 1 :]:
        if not line or line.startswith(" ") or line.startswith("results") or line.startswith("recommendation"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def test_bench_example_on_two_backends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    want_plot = importlib.util.find_spec("matplotlib") is not None  # flowcore[plot]
    code = main(
        [
            "bench", f"{EXAMPLE}:crunch", "--backends", "sequential,threads",
            "--params", '{"chunks": 4, "chunk_size": 20000}', "--repeat", "2",
            "--json", str(out_json), *(["--plot", str(plot)] if want_plot else []),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _rows(captured.out)
    assert set(rows) == {"sequential", "threads"}
    assert all(row[1] == "ok" for row in rows.values())
    assert rows["sequential"][-1] == "1.00x"
    assert "results: equal on all 2 backends" in captured.out
    assert "recommendation:" in captured.out
    assert "[1/2] sequential" in captured.err and "[2/2] threads" in captured.err

    document = json.loads(out_json.read_text())
    assert document["schema"] == "flowcore-bench/1"
    assert document["flow"].endswith("cpu_bound.py:crunch")
    assert document["params"] == {"chunks": 4, "chunk_size": 20000}
    assert document["repeat"] == 2 and document["results_equal"] is True
    assert isinstance(document["machine"]["cpus"], int)
    by_name = {b["backend"]: b for b in document["backends"]}
    for entry in by_name.values():
        assert entry["status"] == "ok" and entry["error"] is None
        assert len(entry["wall_seconds"]) == 2 and all(t > 0 for t in entry["wall_seconds"])
        assert entry["median_wall_seconds"] > 0 and entry["cpu_seconds"] >= 0
        assert entry["result_hash"]
    assert by_name["sequential"]["speedup"] == 1.0
    assert by_name["sequential"]["result_hash"] == by_name["threads"]["result_hash"]
    if want_plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_flow_failing_on_one_backend_is_reported_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "picky.py"
    module.write_text(
        textwrap.dedent(
            """
            from flowcore import flow
            from flowcore.context import current_flow_run

            @flow
            def picky() -> str:
                backend = current_flow_run().slot.instance.name
                if backend == "threads":
                    raise RuntimeError("refuses to run on threads")
                return "done"
            """
        )
    )
    out_json = tmp_path / "bench.json"
    code = main(["bench", f"{module}:picky", "--backends", "threads,sequential", "--repeat", "1", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0
    rows = _rows(captured.out)
    assert rows["threads"][1] == "failed" and rows["sequential"][1] == "ok"
    assert "threads failed: Failed:" in captured.out and "refuses to run on threads" in captured.out
    assert "recommendation: sequential" in captured.out
    entries = {b["backend"]: b for b in json.loads(out_json.read_text())["backends"]}
    assert "refuses to run on threads" in entries["threads"]["error"]


def test_different_results_are_called_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "whoami.py"
    module.write_text(
        textwrap.dedent(
            """
            from flowcore import flow
            from flowcore.context import current_flow_run

            @flow
            def whoami() -> str:
                return current_flow_run().slot.instance.name
            """
        )
    )
    assert main(["bench", f"{module}:whoami", "--backends", "sequential,threads", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "results DIFFER: threads returned a different result than sequential" in out


def test_unknown_backend_fails_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"{EXAMPLE}:crunch", "--backends", "sequential,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'nope'" in err and "sequential" in err


def test_target_that_is_not_a_flow(tmp_path: Path) -> None:
    module = tmp_path / "plain.py"
    module.write_text("def f():\n    return 1\n")
    with pytest.raises(SystemExit, match="not a @flow"):
        main(["bench", f"{module}:f"])
