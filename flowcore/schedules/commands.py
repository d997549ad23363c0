"""``flowcore schedule preview``: the next fire times of a schedule, with DST effects flagged.

    flowcore schedule preview "CRON" [--day-and] [--tz ZONE] [--start ISO] [-n N] [--json]
    flowcore schedule preview --interval 1h [--anchor ISO] [--tz ZONE] ...
    flowcore schedule preview --rrule "FREQ=WEEKLY;BYDAY=MO" [--tz ZONE] ...

Each fire time is printed in the schedule's zone and in UTC; a time moved because its
wall-clock time does not exist (DST starts) is flagged ``skipped``, a wall-clock time
that happens twice (DST ends) ``repeated``. ``--start`` (default: now) is exclusive; a
naive one is read in the ``--tz`` zone. Bad input prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from flowcore.errors import ScheduleError

MAX_PREVIEW = 10_000


def _usage(message: str) -> Exception:
    from flowcore.cli import UsageError

    return UsageError(message)


def _schedule(args: argparse.Namespace) -> Any:
    from flowcore.schedules import CronSchedule, IntervalSchedule, RRuleSchedule, parse_interval

    given = [name for name, value in (("CRON", args.cron), ("--interval", args.interval), ("--rrule", args.rrule)) if value is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise _usage(f"give exactly one of CRON, --interval or --rrule (got {what}); e.g. flowcore schedule preview '0 2 * * *'")
    if args.anchor is not None and args.interval is None:
        raise _usage("--anchor goes with --interval")
    if args.day_and and args.cron is None:
        raise _usage("--day-and goes with a CRON expression")
    if args.cron is not None:
        return CronSchedule(args.cron, timezone=args.tz, day_or=not args.day_and)
    if args.interval is not None:
        anchor = _datetime(args.anchor, "--anchor", None) if args.anchor is not None else None
        return IntervalSchedule(parse_interval(args.interval), anchor_date=anchor, timezone=args.tz)
    text = args.rrule.replace("\\n", "\n")
    if ":" not in text and "\n" not in text and not text.upper().startswith("RRULE"):
        text = "RRULE:" + text  # a bare FREQ=...;BYDAY=... line
    return RRuleSchedule(text, timezone=args.tz)


def _datetime(raw: str, option: str, schedule: Any) -> datetime:
    """An ISO 8601 date-time; a naive one is read in the schedule's zone (kept naive without one)."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _usage(f"{option} {raw!r} is not an ISO 8601 date-time such as 2026-03-08T01:30 or 2026-03-08T06:30Z") from None
    if value.tzinfo is None and schedule is not None:
        from flowcore.schedules.wallclock import resolve

        return resolve(value, schedule.zone)
    return value


def _row(fire: Any) -> dict[str, Any]:
    return {
        "utc": fire.at.isoformat().replace("+00:00", "Z"),
        "local": fire.local.isoformat(),
        "zone_abbreviation": fire.local.tzname(),
        "nominal": fire.nominal.isoformat(),
        "skipped": fire.skipped,
        "repeated": fire.repeated,
        "occurrence": fire.occurrence,
        "note": fire.note,
    }


def _preview(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= MAX_PREVIEW:
        raise _usage(f"-n must be between 1 and {MAX_PREVIEW}, got {args.n}")
    try:
        schedule = _schedule(args)
        after = datetime.now(UTC) if args.start is None else _datetime(args.start, "--start", schedule)
        fires = schedule.preview(args.n, after)
    except ScheduleError as exc:
        raise _usage(str(exc)) from None
    if args.json:
        document = {
            "schedule": schedule.to_dict(),
            "after": after.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "fire_times": [_row(fire) for fire in fires],
        }
        print(json.dumps(document, indent=2))
        return 0
    described = schedule.to_dict()
    kind = described.pop("type")
    details = ", ".join(f"{k}={v!r}" for k, v in described.items() if k != "timezone")
    local_after = after.astimezone(schedule.zone)
    print(f"{kind} schedule ({details}) in {schedule.timezone}")
    print(f"next {len(fires)} fire time(s) after {local_after:%Y-%m-%d %H:%M:%S %Z} ({after.astimezone(UTC):%Y-%m-%d %H:%M:%SZ}):")
    rows = [("#", f"LOCAL ({schedule.timezone})", "UTC", "NOTE")]
    for index, fire in enumerate(fires, 1):
        rows.append((
            str(index),
            f"{fire.local:%a %Y-%m-%d %H:%M:%S %Z (%z)}",
            f"{fire.at:%Y-%m-%d %H:%M:%SZ}",
            fire.note,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.rjust(widths[0]) if i == 0 else cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    if len(fires) < args.n:
        print(f"(the schedule ends: only {len(fires)} of {args.n} fire times exist)")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``schedule`` and its subcommands on the CLI's subparsers."""
    schedule = commands.add_parser("schedule", help="preview schedules (cron, interval, rrule) and their DST behaviour")
    actions = schedule.add_subparsers(dest="schedule_command", required=True)
    preview = actions.add_parser(
        "preview",
        help="print the next fire times in the zone and in UTC, flagging skipped and repeated wall-clock times",
    )
    preview.add_argument("cron", nargs="?", help="a five-field cron expression, e.g. '0 2 * * *', or @daily")
    preview.add_argument("--interval", help="a period instead of CRON: seconds (3600), 1h, 30m, 1h30m, 2d, PT1H")
    preview.add_argument("--anchor", metavar="ISO", help="with --interval: the anchor that fixes the phase (default 2020-01-01T00:00 in the zone)")
    preview.add_argument("--rrule", help="an RFC 5545 rule instead of CRON, e.g. 'FREQ=WEEKLY;BYDAY=MO,FR' (\\n separates lines)")
    preview.add_argument("--tz", metavar="ZONE", help="IANA time zone, e.g. America/New_York (default UTC)")
    preview.add_argument("--day-and", action="store_true", help="with CRON: both day fields must match (day_or=False)")
    preview.add_argument("--start", metavar="ISO", help="list times after this instant (default now; naive: in the zone)")
    preview.add_argument("-n", type=int, default=10, help="how many fire times (default 10)")
    preview.add_argument("--json", action="store_true", help="print JSON")
    preview.set_defaults(handler=_preview)


__all__ = ["add_commands"]
