"""Flow parameters validated and coerced against type hints (pydantic), on the call
and on ``flowcore run --param``; pydantic loaded only when it is needed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import typing
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from flowcore import flow
from flowcore.errors import ParameterTypeError
from flowcore.parameters import validator_for

REPO = Path(__file__).resolve().parents[1]


class Config(BaseModel):
    size: int
    label: str = "x"


@flow
def typed(n: int, when: date, config: Config, tags: list[str] | None = None) -> tuple[Any, ...]:
    return n, when, config, tags


def test_arguments_are_coerced_to_their_hints() -> None:
    n, when, config, tags = typed("3", "2024-01-02", {"size": "4"}, ["a"])
    assert n == 3 and when == date(2024, 1, 2)
    assert config == Config(size=4) and tags == ["a"]


def test_a_bad_value_fails_before_the_body_naming_parameter_type_and_value() -> None:
    ran: list[int] = []
    seen: list[str] = []

    @flow(on_failure=[lambda flow, run, state: seen.append(state.name)])
    def counted(n: int) -> int:
        ran.append(n)
        return n

    with pytest.raises(ParameterTypeError) as raised:
        counted("three")
    message = str(raised.value)
    assert "parameter 'n'" in message and "expects int" in message and "'three'" in message
    assert "flow 'counted'" in message
    assert isinstance(raised.value, TypeError)
    assert ran == [] and seen == ["Failed"]
    state = counted([1], return_state=True)
    assert state.is_failed() and isinstance(state.exception, ParameterTypeError)
    assert "expects int, got [1] (list)" in state.message


def test_retries_do_not_repeat_a_refused_call() -> None:
    @flow(retries=3)
    def once(n: int) -> int:
        return n

    state = once("x", return_state=True)
    assert state.is_failed() and state.attempts == 1


def test_validation_can_be_turned_off() -> None:
    @flow(validate_parameters=False)
    def loose(n: int) -> Any:
        return n

    assert loose("3") == "3"
    assert typed.with_options(validate_parameters=False)("3", "d", None) == ("3", "d", None, None)
    with pytest.raises(TypeError, match="validate_parameters"):
        flow(validate_parameters="yes")(lambda: None)  # type: ignore[arg-type]


class Handle:
    """A class pydantic knows nothing about: checked with isinstance."""


def test_defaults_unannotated_and_arbitrary_types() -> None:
    handle = Handle()

    @flow
    def mixed(h: Handle, anything, n: int = "not validated") -> tuple[Any, Any, Any]:  # type: ignore[assignment, no-untyped-def]
        return h, anything, n

    assert mixed(handle, "raw") == (handle, "raw", "not validated")
    with pytest.raises(ParameterTypeError, match="parameter 'h' expects Handle"):
        mixed(object(), 1)

    class Local:  # a hint that cannot be resolved (a local name, string annotations)
        pass

    @flow
    def unresolvable(x: Local) -> Any:
        return x

    assert unresolvable("anything") == "anything"  # not validated, not an error


def test_a_list_that_fits_is_passed_on_as_the_same_object() -> None:
    @flow
    def fill(out: list[int]) -> None:
        out.append(1)

    out: list[int] = []
    fill(out)
    assert out == [1]


def test_var_positional_and_keyword_parameters() -> None:
    @flow
    def spread(*values: float, **named: int) -> tuple[Any, Any]:
        return values, named

    assert spread("1.5", 2, k="3") == ((1.5, 2.0), {"k": 3})
    with pytest.raises(ParameterTypeError, match=r"parameter \"named\['k'\]\" expects int"):
        spread(k="x")


def test_async_flows_validate_too() -> None:
    @flow
    async def doubled(n: int) -> int:
        return n * 2

    assert doubled("4") == 8
    with pytest.raises(ParameterTypeError, match="parameter 'n'"):
        doubled("four")


def test_pydantic_is_loaded_only_by_a_flow_with_annotated_parameters(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, flowcore

        @flowcore.flow
        def plain(n):
            return n

        @flowcore.flow
        def typed(n: int):
            return n

        print("pydantic" in sys.modules)
        plain(1)
        print("pydantic" in sys.modules)
        typed("2")
        print("pydantic" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.split() == ["False", "False", "True"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowcore", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_the_command_line_coerces_the_same_way(tmp_path: Path) -> None:
    script = tmp_path / "typed_flows.py"
    script.write_text(
        textwrap.dedent(
            """
            from datetime import date
            from flowcore import flow

            @flow
            def main(n: int, label: str, when: date, xs: list[int], loose=None):
                return (n, label, when.isoformat(), xs, loose)
            """
        )
    )
    ok = _cli(
        "run", f"{script}:main", "--backend", "sequential", "--param", "n=3", "--param", "label=7",
        "--param", "when=2024-05-06", "--param", "xs=[1, 2]", "--param", "loose=[3]",
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "(3, '7', '2024-05-06', [1, 2], [3])"
    bad = _cli(
        "run", f"{script}:main", "--param", "n=three", "--param", "label=a",
        "--param", "when=2024-05-06", "--param", "xs=[]",
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--param n=three" in bad.stderr and "parameter 'n' expects int" in bad.stderr


class Options(typing.TypedDict):  # module level: its hint must resolve
    depth: int


@dataclasses.dataclass
class Guarded:
    lock: threading.Lock


def test_a_hint_pydantic_cannot_build_a_validator_for_is_skipped() -> None:
    # pydantic refuses typing.TypedDict before Python 3.12, and a dataclass whose field
    # it cannot validate (a lock): the flow must still be callable, that parameter
    # passed unchecked (as for a hint that cannot be resolved), not fail every call
    # with a PydanticUserError from deep inside.
    @flow
    def uses(options: Options, guarded: Guarded, n: int) -> tuple[Any, Any, int]:
        return options, guarded, n

    guarded = Guarded(threading.Lock())
    assert validator_for(uses)  # n is checked: the validator exists
    options, passed, n = uses({"depth": 2}, guarded, "3")  # type: ignore[arg-type]
    assert options == {"depth": 2} and passed is guarded and n == 3
