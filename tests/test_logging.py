"""Run loggers carry the run they belong to; log_prints turns print() into log records."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

import flowcore
from flowcore import flow, get_run_logger, task
from flowcore.errors import MissingContextError

RUN_FIELDS = ("flow_name", "flow_run_id", "task_name", "task_run_id", "task_run_name")


@pytest.fixture(autouse=True)
def capture_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="flowcore")
    return caplog


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def _one(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    found = _records(caplog, message)
    assert len(found) == 1, f"expected one record {message!r}, got {[r.getMessage() for r in caplog.records]}"
    return found[0]


# -- get_run_logger -----------------------------------------------------------------------


def test_get_run_logger_outside_a_run_raises_missing_context() -> None:
    with pytest.raises(MissingContextError, match="get_run_logger"):
        get_run_logger()


def test_get_run_logger_inside_use_backend_but_outside_a_run_raises() -> None:
    with flowcore.use_backend("sequential"), pytest.raises(MissingContextError):
        get_run_logger()


@task(task_run_name="log-{x}")
def logs_in_task(x: int) -> int:
    get_run_logger().info("task message %d", x)
    return x


def test_submitted_task_records_carry_run_attributes(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[Any] = []
    futures: list[Any] = []

    @flow(name="logging-flow", backend="threads", on_completion=[lambda f, run, s: runs.append(run)])
    def pipeline() -> None:
        future = logs_in_task.submit(7)
        futures.append(future)
        future.result()

    pipeline()
    record = _one(caplog, "task message 7")
    (run,) = runs
    (future,) = futures
    assert record.flow_name == "logging-flow"  # type: ignore[attr-defined]
    assert record.flow_run_id == run.run_id  # type: ignore[attr-defined]
    assert record.task_name == "logs_in_task"  # type: ignore[attr-defined]
    assert record.task_run_id == future.task_run_id  # type: ignore[attr-defined]
    assert record.task_run_name == "log-7"  # type: ignore[attr-defined]


def test_directly_called_task_records_carry_run_attributes(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[Any] = []

    @flow(name="direct-flow", on_completion=[lambda f, run, s: runs.append(run)])
    def pipeline() -> None:
        logs_in_task(3)
        logs_in_task(4)

    pipeline()
    first, second = _one(caplog, "task message 3"), _one(caplog, "task message 4")
    (run,) = runs
    for record, x in ((first, 3), (second, 4)):
        assert record.flow_name == "direct-flow"  # type: ignore[attr-defined]
        assert record.flow_run_id == run.run_id  # type: ignore[attr-defined]
        assert record.task_name == "logs_in_task"  # type: ignore[attr-defined]
        assert record.task_run_name == f"log-{x}"  # type: ignore[attr-defined]
        assert record.task_run_id  # type: ignore[attr-defined]
    assert first.task_run_id != second.task_run_id  # type: ignore[attr-defined]


def test_task_called_outside_a_flow_has_a_run_logger(caplog: pytest.LogCaptureFixture) -> None:
    assert logs_in_task(11) == 11
    record = _one(caplog, "task message 11")
    assert record.task_name == "logs_in_task"  # type: ignore[attr-defined]
    assert record.task_run_name == "log-11"  # type: ignore[attr-defined]
    assert record.task_run_id  # type: ignore[attr-defined]
    assert record.flow_name is None  # type: ignore[attr-defined]
    assert record.flow_run_id is None  # type: ignore[attr-defined]


def test_flow_records_carry_the_flow_run_and_no_task(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[Any] = []

    @flow(name="plain-flow", on_completion=[lambda f, run, s: runs.append(run)])
    def pipeline() -> None:
        get_run_logger().warning("flow says hi")

    pipeline()
    record = _one(caplog, "flow says hi")
    assert record.levelno == logging.WARNING
    assert record.flow_name == "plain-flow"  # type: ignore[attr-defined]
    assert record.flow_run_id == runs[0].run_id  # type: ignore[attr-defined]
    for field in ("task_name", "task_run_id", "task_run_name"):
        assert getattr(record, field) is None


def test_every_record_of_a_run_has_all_fields(caplog: pytest.LogCaptureFixture) -> None:
    @flow
    def pipeline() -> None:
        get_run_logger().info("from flow")
        logs_in_task.submit(1).result()

    pipeline()
    run_records = [r for r in caplog.records if r.name.startswith("flowcore.")]
    assert run_records
    for record in run_records:
        for field in RUN_FIELDS:
            assert hasattr(record, field), (record.getMessage(), field)


# -- log_prints -----------------------------------------------------------------------------


@task
def prints_in_task(x: int) -> int:
    print("task print", x)
    print("task to stderr", x, file=sys.stderr)
    return x


def test_log_prints_routes_prints_to_the_run_loggers(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @flow(name="printing-flow", log_prints=True, backend="threads")
    def pipeline() -> None:
        print("flow print", 1, sep="-")
        print("flow to stderr", file=sys.stderr)
        prints_in_task.submit(2).result()
        prints_in_task(3)

    pipeline()
    out, err = capsys.readouterr()
    for message in ("flow print", "task print"):
        assert message not in out
    flow_record = _one(caplog, "flow print-1")
    assert flow_record.levelno == logging.INFO
    assert flow_record.flow_name == "printing-flow"  # type: ignore[attr-defined]
    for x in (2, 3):
        record = _one(caplog, f"task print {x}")
        assert record.task_name == "prints_in_task"  # type: ignore[attr-defined]
        assert record.flow_name == "printing-flow"  # type: ignore[attr-defined]
    # file=sys.stderr is left alone.
    assert "flow to stderr" in err
    assert "task to stderr 2" in err and "task to stderr 3" in err
    assert not any("stderr" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("log_prints", [False, None])
def test_without_log_prints_print_goes_to_stdout(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], log_prints: bool | None
) -> None:
    @flow(log_prints=log_prints, backend="threads")
    def pipeline() -> None:
        print("flow print")
        prints_in_task.submit(5).result()
        prints_in_task(6)

    pipeline()
    out, _ = capsys.readouterr()
    assert "flow print" in out
    assert "task print 5" in out and "task print 6" in out
    assert not any("print" in r.getMessage() for r in caplog.records)


def test_task_log_prints_option_overrides_the_flow(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = prints_in_task.with_options(log_prints=False)
    loud = prints_in_task.with_options(log_prints=True)

    @flow(log_prints=True, backend="threads")
    def printing() -> None:
        quiet.submit(1).result()

    @flow(log_prints=False, backend="threads")
    def not_printing() -> None:
        loud.submit(2).result()

    printing()
    not_printing()
    out, _ = capsys.readouterr()
    assert "task print 1" in out
    assert _records(caplog, "task print 1") == []
    assert "task print 2" not in out
    assert len(_records(caplog, "task print 2")) == 1


def test_prints_after_a_log_prints_flow_go_to_stdout_again(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    @flow(log_prints=True)
    def pipeline() -> None:
        print("inside")

    pipeline()
    print("outside afterwards")
    out, _ = capsys.readouterr()
    assert "outside afterwards" in out and "inside" not in out
    assert len(_records(caplog, "inside")) == 1
    assert _records(caplog, "outside afterwards") == []
