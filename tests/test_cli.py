"""The flowcore command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def flowcore_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowcore", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_backends_table_lists_builtins_with_plugin() -> None:
    result = flowcore_cli("backends")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "KIND", "PLUGIN", "STATUS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["threads"][1:4] == ["threads", "flowcore.backends.threads", "ready"]
    assert rows["sequential"][1:4] == ["inline", "flowcore.backends.sequential", "ready"]


def test_backends_json() -> None:
    result = flowcore_cli("backends", "--json")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert entries["threads"]["kind"] == "threads"
    assert entries["sequential"]["description"]


def test_run_example_flow_on_a_chosen_backend() -> None:
    result = flowcore_cli(
        "run", "examples/quickstart.py:weather_report", "--backend", "sequential", "--params", '{"days": 6}'
    )
    assert result.returncode == 0, result.stderr
    assert "6 days summarised" in result.stdout
    assert "on backend 'sequential'" in result.stderr
    assert "retry 1/3" in result.stderr  # day 0 and day 5 fail once and are retried


def test_run_reports_unknown_backend_and_bad_params(tmp_path: Path) -> None:
    unknown = flowcore_cli("run", "examples/quickstart.py:weather_report", "--backend", "thread")
    assert unknown.returncode == 2
    assert "unknown backend 'thread'; registered: dask, joblib, loky, sequential, threads" in unknown.stderr
    bad = flowcore_cli("run", "examples/quickstart.py:weather_report", "--params", "[1]")
    assert bad.returncode != 0 and "--params must be a JSON object" in bad.stderr
    missing = flowcore_cli("run", "examples/quickstart.py:nope")
    assert missing.returncode != 0 and "has no attribute 'nope'" in missing.stderr


def test_failed_flow_exits_nonzero(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(
        "from flowcore import flow\n\n@flow\ndef broken():\n    raise RuntimeError('kaput')\n"
    )
    result = flowcore_cli("run", f"{script}:broken")
    assert result.returncode == 1
    assert "kaput" in result.stderr


def test_version() -> None:
    result = flowcore_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("flowcore ")
