"""The flowcore command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_backends_warns_when_the_configured_backend_is_not_registered(tmp_path: Path) -> None:
    """``flowcore backends`` is where a user looks when a flow fails with an unknown
    backend: it says which setting names it (the table itself is unchanged)."""
    env = {**os.environ, "FLOWCORE_BACKEND": "nonsense"}
    result = subprocess.run(
        [sys.executable, "-m", "flowcore", "backends"], capture_output=True, text=True,
        cwd=tmp_path, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "environment variable FLOWCORE_BACKEND names backend 'nonsense', which is not registered" in result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["NAME", "KIND"]
    assert "nonsense" not in result.stdout
    quiet = subprocess.run(
        [sys.executable, "-m", "flowcore", "backends"], capture_output=True, text=True,
        cwd=tmp_path, timeout=120, env={**os.environ, "FLOWCORE_BACKEND": "threads"},
    )
    assert quiet.returncode == 0 and "not registered" not in quiet.stderr


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


def test_quickstart_script_runs_on_a_process_backend(tmp_path: Path) -> None:
    """The example's docstring says to pick another backend with FLOWCORE_BACKEND: run as
    a script, its tasks travel by value to the workers, with what they use."""
    env = {**os.environ, "FLOWCORE_BACKEND": "loky", "FLOWCORE_BACKEND_OPTIONS": '{"max_workers": 2}'}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "on backend 'loky'" in result.stderr
    assert "14 days summarised" in result.stderr
    assert "retry 1/3" in result.stderr  # days 0, 5 and 10 fail once and are retried
    assert "in state Failed" not in result.stderr and "NotRun" not in result.stderr


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


FAILING_FLOW = '''
from flowcore import flow, task


def explode(x):
    raise ValueError(f"boom {x}")


@task
def bad(x: int) -> int:
    return explode(x)


@flow
def main(n: int) -> int:
    return bad.submit(n).result()
'''


@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_failed_flow_shows_the_task_traceback_once_then_the_final_state(
    tmp_path: Path, backend: str
) -> None:
    script = tmp_path / "failing.py"
    script.write_text(FAILING_FLOW)
    result = flowcore_cli("run", f"{script}:main", "--backend", backend, "--params", '{"n": 7}')
    assert result.returncode == 1
    err = result.stderr
    # The task's own frames (a remote task's as the RemoteTraceback cause), shown once.
    assert err.count(", in explode") == 1, err
    assert err.count("Encountered exception during execution") == 1, err
    last = err.rstrip().splitlines()[-1]
    assert "Flow run" in last and "Finished in state Failed('ValueError: boom 7')" in last, err
    assert err.index("in explode") < err.index(last)


SIGNATURES = '''
from flowcore import flow


@flow
def main(n: int, label: str = "x") -> str:
    return f"{n}-{label}"


@flow
def echo(a, b=None, c=None):
    return (a, b, c)


@flow
def workers() -> tuple[str, int]:
    from flowcore.context import current_scope

    backend = current_scope().backend()
    return backend.name, backend.max_workers
'''


def _signatures(tmp_path: Path) -> Path:
    script = tmp_path / "signatures.py"
    script.write_text(SIGNATURES)
    return script


@pytest.mark.parametrize(
    ("params", "named"),
    [('{"m": 3}', "'m'"), ('{"label": "y"}', "'n'")],
    ids=["unknown", "missing"],
)
def test_a_bad_parameter_is_a_one_line_usage_error(tmp_path: Path, params: str, named: str) -> None:
    script = _signatures(tmp_path)
    result = flowcore_cli("run", f"{script}:main", "--params", params)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("flowcore run: error: ")
    assert named in line and "main(n: int, label: str = 'x')" in line


def test_param_options_are_repeatable_and_parsed_as_json_when_they_parse(tmp_path: Path) -> None:
    script = _signatures(tmp_path)
    result = flowcore_cli(
        "run", f"{script}:echo", "--backend", "sequential", "--params", '{"a": 0, "b": 0}',
        "--param", "a=3", "--param", "b=hello world", "--param", "c=[1, 2]",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 'hello world', [1, 2])"
    bad = flowcore_cli("run", f"{script}:echo", "--param", "a")
    assert bad.returncode == 2
    assert "flowcore run: error: --param expects NAME=VALUE" in bad.stderr


def test_backend_options_on_the_command_line(tmp_path: Path) -> None:
    script = _signatures(tmp_path)
    result = flowcore_cli(
        "run", f"{script}:workers", "--backend", "threads", "--backend-options", '{"max_workers": 3}'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('threads', 3)"
    bad = flowcore_cli("run", f"{script}:workers", "--backend-options", "{nope")
    assert bad.returncode == 2 and "flowcore run: error: --backend-options" in bad.stderr


def test_backend_options_the_backend_does_not_take_are_a_usage_error(tmp_path: Path) -> None:
    script = _signatures(tmp_path)
    bad = flowcore_cli(
        "run", f"{script}:workers", "--backend", "threads", "--backend-options", '{"max_wrokers": 3}'
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("flowcore run: error: --backend-options"), line
    assert "'threads'" in line and "max_wrokers" in line, line


INTERRUPTED = """
import sys, time
from pathlib import Path
from flowcore import flow

@flow
def waits(ready: str):
    Path(ready).touch()
    time.sleep(60)
"""


def test_ctrl_c_during_flowcore_run_ends_it_with_130_and_no_traceback(tmp_path: Path) -> None:
    """The run records and logs how it ended; the command then exits 130 (as a shell
    reports Ctrl-C) with one line, not a KeyboardInterrupt traceback from flowcore's
    internals."""
    import signal
    import time

    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    ready = tmp_path / "ready"
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcore", "run", f"{script}:waits", "--param", f"ready={ready}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupt" in err.strip().splitlines()[-1], err
    listed = subprocess.run([sys.executable, "-m", "flowcore", "runs", "ls", "--json"], capture_output=True,
                            text=True, env=env, timeout=120, check=True)
    (run,) = json.loads(listed.stdout)
    assert run["state"] == "Crashed" and "interrupt" in run["message"], run


def test_module_flow_resolves_from_the_current_directory_with_the_installed_command(tmp_path: Path) -> None:
    """``flowcore run etl:daily`` in the directory holding etl.py, with the installed
    ``flowcore`` command (whose sys.path, unlike ``python -m``'s, lacks the current
    directory); a module that is nowhere is one error line, not a traceback."""
    command = Path(sys.executable).with_name("flowcore")
    if not command.exists():
        pytest.skip("the flowcore console script is not installed beside this interpreter")
    (tmp_path / "etl.py").write_text(
        "from flowcore import flow\n\n@flow\ndef daily(n: int = 2):\n    return n * 10\n"
    )
    env = {**os.environ, "FLOWCORE_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    ran = subprocess.run([str(command), "run", "etl:daily", "--param", "n=4"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "40"
    missing = subprocess.run([str(command), "run", "nowhere_module:daily"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=120, check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr, missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert "nowhere_module" in line and line.startswith("flowcore run: "), line
