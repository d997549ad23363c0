"""Static typing: Task[P, R] carries parameters and return types into editors and mypy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("mypy")


def _mypy(*paths: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.slow
def test_typed_example_and_misuse_are_checked(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        textwrap.dedent(
            """
            from flowcore import State, TaskFuture, flow, task

            @task
            def total(values: list[int]) -> int:
                return sum(values)

            @flow
            def main() -> None:
                wrong_result: str = total.submit([1, 2]).result()
                total.submit("not a list")
                total(values=[1], extra=2)
                state: State[int] = total.submit([1], return_state=True)
                after: TaskFuture[int] = total.submit([1], wait_for=[total.submit([2])])
                direct: State[int] = total([1], return_state=True)
                flow_state: State[None] = main(return_state=True)
            """
        )
    )
    good = _mypy(REPO / "examples" / "typed_usage.py", cache=tmp_path / "cache")
    assert good.returncode == 0, good.stdout + good.stderr

    bad = _mypy(misuse, cache=tmp_path / "cache")
    out = bad.stdout
    assert bad.returncode == 1, out
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in out
    assert 'No overload variant of "submit" of "Task" matches argument type "str"' in out
    assert 'No overload variant of "__call__" of "Task" matches argument types' in out
