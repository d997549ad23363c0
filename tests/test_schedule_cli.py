"""``flowcore schedule preview``, run as a real subprocess (``python -m flowcore``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def preview(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowcore", "schedule", "preview", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cron_preview_flags_the_skipped_time() -> None:
    result = preview("30 2 * * *", "--tz", "America/New_York", "--start", "2026-03-06", "-n", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cron schedule (cron='30 2 * * *', day_or=True) in America/New_York"
    assert "after 2026-03-06 00:00:00 EST (2026-03-06 05:00:00Z)" in lines[1]
    rows = [line for line in lines if line[:1].isdigit()]
    assert len(rows) == 4
    assert "Sun 2026-03-08 03:00:00 EDT (-0400)" in rows[2] and "2026-03-08 07:00:00Z" in rows[2]
    assert "skipped: 02:30 does not exist" in rows[2]
    assert "skipped" not in rows[1] + rows[3]


def test_cron_preview_json_flags_the_repeated_time() -> None:
    result = preview("30 1 * * *", "--tz", "America/New_York", "--start", "2026-10-31T12:00", "-n", "2", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schedule"] == {"type": "cron", "cron": "30 1 * * *", "timezone": "America/New_York", "day_or": True}
    assert document["after"] == "2026-10-31T16:00:00Z"  # a naive --start is read in --tz
    first, second = document["fire_times"]
    assert first["utc"] == "2026-11-01T05:30:00Z" and first["local"] == "2026-11-01T01:30:00-04:00"
    assert first["repeated"] and first["occurrence"] == 1 and not first["skipped"]
    assert second["utc"] == "2026-11-02T06:30:00Z" and not second["repeated"]


def test_interval_preview_shows_both_passes_of_the_repeated_hour() -> None:
    result = preview("--interval", "30m", "--tz", "Europe/London", "--start", "2026-10-24T23:40:00Z", "-n", "5", "--json")
    assert result.returncode == 0, result.stderr
    fires = json.loads(result.stdout)["fire_times"]
    assert [f["utc"][11:16] for f in fires] == ["00:00", "00:30", "01:00", "01:30", "02:00"]
    assert [(f["repeated"], f["occurrence"]) for f in fires] == [(True, 1), (True, 1), (True, 2), (True, 2), (False, 1)]


def test_interval_with_anchor_and_rrule_preview() -> None:
    anchored = preview("--interval", "PT1H", "--anchor", "2026-01-01T00:10", "--start", "2026-06-01T00:00Z", "-n", "2", "--json")
    assert anchored.returncode == 0, anchored.stderr
    assert [f["utc"] for f in json.loads(anchored.stdout)["fire_times"]] == ["2026-06-01T00:10:00Z", "2026-06-01T01:10:00Z"]
    rrule = preview("--rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9", "--tz", "Australia/Sydney", "--start", "2026-03-30T00:00Z", "-n", "2")
    assert rrule.returncode == 0, rrule.stderr
    assert "Mon 2026-04-06 09:00:00 AEST (+1000)" in rrule.stdout
    counted = preview("--rrule", "DTSTART:20260101T000000\\nRRULE:FREQ=DAILY;COUNT=2", "--start", "2025-12-01T00:00Z")
    assert counted.returncode == 0, counted.stderr
    assert "only 2 of 10 fire times exist" in counted.stdout


def test_day_and_flag() -> None:
    result = preview("0 0 13 * FRI", "--day-and", "--start", "2026-01-01T00:00Z", "-n", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert [f["utc"][:10] for f in json.loads(result.stdout)["fire_times"]] == ["2026-02-13", "2026-03-13"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["61 * * * *"], "the minute field '61' is not valid"),
        (["0 2 * * *", "--tz", "Mars/Base"], "unknown timezone 'Mars/Base'"),
        (["0 2 * * *", "--tz", "europe/berlin"], "did you mean 'Europe/Berlin'"),
        (["--interval", "0"], "interval must be greater than zero"),
        (["--interval", "5x"], "cannot read interval '5x'"),
        (["0 2 * * *", "--start", "yesterday"], "--start 'yesterday' is not an ISO 8601 date-time"),
        ([], "give exactly one of CRON, --interval or --rrule (got none)"),
        (["0 2 * * *", "--interval", "1h"], "(got CRON and --interval)"),
        (["* * * * *", "-n", "0"], "-n must be between 1 and 10000"),
        (["--rrule", "FREQ=FOO"], "invalid rrule"),
        (["0 0 * * * *"], "seconds field is not supported"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = preview(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("flowcore schedule: error: ")
    assert message in result.stderr


def test_default_start_is_now_and_help_lists_the_command() -> None:
    result = preview("@hourly", "-n", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["fire_times"]) == 1
    top = subprocess.run([sys.executable, "-m", "flowcore", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "schedule" in top.stdout


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """``flowcore schedule preview ... | head -1``: the pipe closes while the command
    still prints; it ends quietly with 141 (128 + SIGPIPE), as cat or ls do."""
    command = [sys.executable, "-m", "flowcore", "schedule", "preview", "* * * * *", "-n", "10000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    errors = process.stderr.read().decode()
    code = process.wait(timeout=120)
    assert first.startswith(b"cron schedule")
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert code == 141, (code, errors)
