"""Schedules: fire times, daylight saving in several zones, validation, the Prefect path.

No assertion depends on the real clock: every question passes ``after=``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from flowcore.errors import ConfigurationError, FlowcoreError, ScheduleError
from flowcore.schedules import (
    CronSchedule,
    FireTime,
    IntervalSchedule,
    RRuleSchedule,
    Schedule,
    parse_interval,
    schedule_from_dict,
)
from flowcore.schedules.wallclock import WallTime, classify, resolve

NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")
KOLKATA = ZoneInfo("Asia/Kolkata")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold)  # type: ignore[misc]


def walls(times: list[datetime], zone: ZoneInfo) -> list[str]:
    """Fire times as local wall-clock strings with their UTC offset, for readable asserts."""
    return [t.astimezone(zone).strftime("%m-%d %H:%M%z") for t in times]


def day_fires(schedule: Schedule, zone: ZoneInfo, day: date) -> list[datetime]:
    """The fire times whose local date (in ``zone``) is ``day``."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone) - timedelta(seconds=1)
    end = datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(days=1, hours=3)
    return [t for t in schedule.fire_times(start, end) if t.astimezone(zone).date() == day]


# -- the wall-clock resolver every wall-clock schedule uses --------------------------------


def test_resolve_takes_first_occurrence_and_moves_gaps_to_the_jump() -> None:
    assert classify(datetime(2026, 3, 8, 2, 30), NY) is WallTime.NONEXISTENT
    assert classify(datetime(2026, 11, 1, 1, 30), NY) is WallTime.AMBIGUOUS
    assert classify(datetime(2026, 7, 1, 2, 30), NY) is WallTime.NORMAL
    assert resolve(datetime(2026, 3, 8, 2, 30), NY) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert resolve(datetime(2026, 3, 8, 2, 0), NY) == utc(2026, 3, 8, 7, 0)
    assert resolve(datetime(2026, 11, 1, 1, 30), NY) == utc(2026, 11, 1, 5, 30)  # EDT, the first
    # Lord Howe Island moves its clock by 30 minutes: 02:00 -> 02:30.
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    moved = resolve(datetime(2026, 10, 4, 2, 15), lord_howe).astimezone(lord_howe)
    assert (moved.hour, moved.minute) == (2, 30)


# -- cron: daylight saving in several zones ------------------------------------------------


def test_cron_nonexistent_time_fires_at_next_valid_instant_new_york() -> None:
    schedule = CronSchedule("30 2 * * *", timezone="America/New_York")
    times = schedule.next(4, after=local(NY, 2026, 3, 6))
    assert walls(times, NY) == ["03-06 02:30-0500", "03-07 02:30-0500", "03-08 03:00-0400", "03-09 02:30-0400"]
    assert times[2] == utc(2026, 3, 8, 7, 0)


def test_cron_repeated_time_fires_once_new_york() -> None:
    schedule = CronSchedule("30 1 * * *", timezone="America/New_York")
    times = schedule.next(3, after=local(NY, 2026, 10, 31, 12))
    assert times == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)]


def test_cron_two_skipped_times_on_one_instant_fire_once() -> None:
    schedule = CronSchedule("0,30 2 * * *", timezone="America/New_York")
    times = schedule.next(3, after=local(NY, 2026, 3, 8, 1))
    assert walls(times, NY) == ["03-08 03:00-0400", "03-09 02:00-0400", "03-09 02:30-0400"]


def test_cron_after_inside_the_second_pass_of_a_repeated_hour() -> None:
    """01:30 EDT has happened by 01:10 EST: the next run is the next day's."""
    schedule = CronSchedule("30 1 * * *", timezone="America/New_York")
    second_pass = local(NY, 2026, 11, 1, 1, 10, fold=1)
    assert second_pass.utcoffset() == timedelta(hours=-5)
    assert schedule.next(1, after=second_pass) == [utc(2026, 11, 2, 6, 30)]
    first_pass = local(NY, 2026, 11, 1, 1, 10)
    assert schedule.next(1, after=first_pass) == [utc(2026, 11, 1, 5, 30)]


@pytest.mark.parametrize(
    ("zone", "cron", "spring", "spring_fire", "autumn", "autumn_fire"),
    [
        # London: 01:00 GMT -> 02:00 BST in March, 02:00 BST -> 01:00 GMT in October.
        (LONDON, "30 1 * * *", date(2026, 3, 29), utc(2026, 3, 29, 1, 0), date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),
        # Berlin: 02:00 -> 03:00 in March, 03:00 -> 02:00 in October.
        (BERLIN, "30 2 * * *", date(2026, 3, 29), utc(2026, 3, 29, 1, 0), date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),
        # Sydney (southern hemisphere): 02:00 -> 03:00 on the first Sunday of October,
        # 03:00 -> 02:00 on the first Sunday of April.
        (SYDNEY, "30 2 * * *", date(2026, 10, 4), utc(2026, 10, 3, 16, 0), date(2026, 4, 5), utc(2026, 4, 4, 15, 30)),
    ],
)
def test_cron_dst_in_several_zones(
    zone: ZoneInfo, cron: str, spring: date, spring_fire: datetime, autumn: date, autumn_fire: datetime
) -> None:
    schedule = CronSchedule(cron, timezone=zone.key)
    assert day_fires(schedule, zone, spring) == [spring_fire]
    fired = spring_fire.astimezone(zone)
    assert fired.minute == 0 and fired.hour == int(cron.split()[1]) + 1  # the jump, not 30 min later
    assert day_fires(schedule, zone, autumn) == [autumn_fire]
    assert autumn_fire.astimezone(zone).fold == 0  # the first occurrence


@pytest.mark.parametrize("zone", [NY, LONDON, BERLIN, SYDNEY, KOLKATA, ZoneInfo("UTC")])
@pytest.mark.parametrize("cron", ["30 2 * * *", "30 1 * * *", "0 3 * * *"])
def test_cron_daily_fires_exactly_once_per_local_day_for_a_year(zone: ZoneInfo, cron: str) -> None:
    schedule = CronSchedule(cron, timezone=zone.key)
    start = local(zone, 2026, 1, 1)
    times = list(schedule.fire_times(start, start + timedelta(days=365)))
    days = [t.astimezone(zone).date() for t in times]
    assert len(times) == 365
    assert len(set(days)) == 365
    assert times == sorted(times)


def test_kolkata_has_no_dst_so_daily_runs_are_24h_apart() -> None:
    schedule = CronSchedule("0 9 * * *", timezone="Asia/Kolkata")
    times = schedule.next(366, after=utc(2026, 1, 1))
    assert {b - a for a, b in itertools.pairwise(times)} == {DAY}
    assert times[0] == utc(2026, 1, 1, 3, 30)


def test_periodic_cron_follows_the_clock_through_dst() -> None:
    """Every-hour and every-30-minute cron run on real time: 25 and 23 hour days."""
    hourly = CronSchedule("0 * * * *", timezone="America/New_York")
    autumn = day_fires(hourly, NY, date(2026, 11, 1))
    spring = day_fires(hourly, NY, date(2026, 3, 8))
    assert len(autumn) == 25 and len(spring) == 23
    for times in (autumn, spring):
        assert {b - a for a, b in itertools.pairwise(times)} == {HOUR}
    half_hourly = CronSchedule("*/30 * * * *", timezone="Europe/London")
    times = half_hourly.next(6, after=local(LONDON, 2026, 10, 25, 0, 40))
    assert walls(times, LONDON) == [
        "10-25 01:00+0100", "10-25 01:30+0100", "10-25 01:00+0000", "10-25 01:30+0000",
        "10-25 02:00+0000", "10-25 02:30+0000",
    ]
    assert CronSchedule("@hourly", timezone="America/New_York").next(3, after=local(NY, 2026, 3, 8, 0, 30)) == [
        utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)
    ]


# -- cron: calendar ---------------------------------------------------------------------


def test_leap_day() -> None:
    schedule = CronSchedule("0 0 29 2 *")
    assert schedule.next(3, after=utc(2026, 1, 1)) == [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]
    berlin = CronSchedule("0 0 29 2 *", timezone="Europe/Berlin")
    assert berlin.next(1, after=utc(2026, 1, 1)) == [utc(2028, 2, 28, 23)]
    # Daily across a leap day, and the year 2100 (no leap day).
    daily = CronSchedule("0 12 * * *")
    assert date(2028, 2, 29) in [t.date() for t in daily.next(3, after=utc(2028, 2, 28))]
    assert CronSchedule("0 0 29 2 *").next(1, after=utc(2096, 3, 1)) == [utc(2104, 2, 29)]


def test_day_or_semantics() -> None:
    after = utc(2026, 6, 1)  # a Monday
    either = CronSchedule("0 0 1,15 * MON")
    assert [t.date() for t in either.next(4, after=after - timedelta(seconds=1))] == [
        date(2026, 6, 1), date(2026, 6, 8), date(2026, 6, 15), date(2026, 6, 22)
    ]
    both = CronSchedule("0 0 1,15 * MON", day_or=False)
    assert [t.date() for t in both.next(3, after=after - timedelta(seconds=1))] == [
        date(2026, 6, 1), date(2026, 6, 15), date(2027, 2, 1)
    ]
    friday_13th = CronSchedule("0 0 13 * FRI", day_or=False)
    assert [t.date() for t in friday_13th.next(3, after=utc(2026, 1, 1))] == [
        date(2026, 2, 13), date(2026, 3, 13), date(2026, 11, 13)
    ]
    # A day field starting with "*" (a step included) means both fields must match.
    stepped = CronSchedule("0 0 */2 * MON")
    assert all(t.weekday() == 0 and t.day % 2 == 1 for t in stepped.next(10, after=utc(2026, 1, 1)))


def test_nicknames_and_names() -> None:
    after = utc(2026, 1, 7, 5)
    assert CronSchedule("@daily").next(2, after) == CronSchedule("0 0 * * *").next(2, after)
    assert CronSchedule("@weekly").next(1, after) == [utc(2026, 1, 11)]  # Sunday
    assert CronSchedule("@monthly").next(1, after) == [utc(2026, 2, 1)]
    assert CronSchedule("@yearly").next(1, after) == [utc(2027, 1, 1)]
    assert CronSchedule("0 9 * JAN-MAR mon-fri").next(1, after) == [utc(2026, 1, 7, 9)]


# -- next(): contract ----------------------------------------------------------------------


def test_next_is_strictly_after_and_returns_utc() -> None:
    schedule = CronSchedule("0 * * * *", timezone="Europe/Berlin")
    times = schedule.next(2, after=utc(2026, 5, 1, 10))
    assert times == [utc(2026, 5, 1, 11), utc(2026, 5, 1, 12)]
    assert all(t.tzinfo is UTC for t in times)
    assert schedule.next(1, after=utc(2026, 5, 1, 10, 0, 0, 1)) == [utc(2026, 5, 1, 11)]
    # An aware `after` in any zone names the same instant.
    assert schedule.next(2, after=local(NY, 2026, 5, 1, 6)) == times
    assert schedule.next(0, after=utc(2026, 5, 1)) == []


def test_next_without_after_is_in_the_future() -> None:
    before = datetime.now(UTC)
    (first,) = IntervalSchedule(timedelta(seconds=5)).next(1)
    assert before < first <= datetime.now(UTC) + timedelta(seconds=5)


def test_naive_after_is_rejected_with_a_fix() -> None:
    schedule = CronSchedule("0 2 * * *", timezone="America/New_York")
    with pytest.raises(ScheduleError, match=r"naive.*pass an aware datetime"):
        schedule.next(1, after=datetime(2026, 1, 1))
    with pytest.raises(ScheduleError, match="naive"):
        list(schedule.fire_times(datetime(2026, 1, 1), utc(2026, 2, 1)))
    with pytest.raises(ScheduleError, match="must be a datetime"):
        schedule.next(1, after="2026-01-01")  # type: ignore[arg-type]
    for bad in (-1, 1.5, True):
        with pytest.raises(ScheduleError, match="n must be"):
            schedule.next(bad, after=utc(2026, 1, 1))  # type: ignore[arg-type]


def test_fire_times_between_two_instants_for_catch_up() -> None:
    schedule = IntervalSchedule(HOUR)
    last_seen, now = utc(2026, 4, 1, 0), utc(2026, 4, 1, 5)
    missed = list(schedule.fire_times(last_seen, now))
    assert missed == [utc(2026, 4, 1, h) for h in range(1, 6)]  # after < t <= until
    # Looking again from where the last look stopped neither repeats nor loses a run.
    first = list(schedule.fire_times(utc(2026, 4, 1), utc(2026, 4, 1, 2, 30)))
    second = list(schedule.fire_times(utc(2026, 4, 1, 2, 30), now))
    assert first + second == missed
    assert list(schedule.fire_times(now, last_seen)) == []
    # Lazy: a century of minutes is not computed to take three of them.
    minutely = CronSchedule("* * * * *")
    iterator = minutely.fire_times(utc(2026, 1, 1), utc(2126, 1, 1))
    assert [next(iterator) for _ in range(3)] == [utc(2026, 1, 1, 0, m) for m in (1, 2, 3)]


def test_preview_flags_skipped_and_repeated() -> None:
    spring = CronSchedule("30 2 * * *", timezone="America/New_York").preview(1, after=local(NY, 2026, 3, 8))
    (fire,) = spring
    assert isinstance(fire, FireTime)
    assert fire.skipped and not fire.repeated
    assert fire.nominal == datetime(2026, 3, 8, 2, 30)
    assert fire.local == local(NY, 2026, 3, 8, 3)
    assert "02:30 does not exist" in fire.note
    autumn = IntervalSchedule(HOUR, timezone="America/New_York").preview(3, after=local(NY, 2026, 11, 1, 0, 30))
    assert [(f.repeated, f.occurrence) for f in autumn] == [(True, 1), (True, 2), (False, 1)]
    assert "second" in autumn[1].note and autumn[2].note == ""


# -- intervals -------------------------------------------------------------------------


def test_interval_under_a_day_keeps_a_fixed_period_across_dst() -> None:
    for step in (HOUR, timedelta(minutes=90), timedelta(hours=5)):
        schedule = IntervalSchedule(step, timezone="America/New_York")
        for start in (local(NY, 2026, 3, 7), local(NY, 2026, 10, 31)):
            times = schedule.next(40, after=start)
            assert {b - a for a, b in itertools.pairwise(times)} == {step}
    hourly = IntervalSchedule(HOUR, timezone="America/New_York")
    assert len(day_fires(hourly, NY, date(2026, 11, 1))) == 25
    assert len(day_fires(hourly, NY, date(2026, 3, 8))) == 23


@pytest.mark.parametrize("step", [DAY, timedelta(hours=24), timedelta(days=7)])
def test_interval_of_a_day_or_more_keeps_the_wall_clock(step: timedelta) -> None:
    schedule = IntervalSchedule(step, anchor_date=datetime(2026, 1, 5, 9, 0), timezone="Europe/Berlin")
    times = schedule.next(300 if step == DAY else 60, after=local(BERLIN, 2026, 3, 1))
    assert {(t.astimezone(BERLIN).hour, t.astimezone(BERLIN).minute) for t in times} == {(9, 0)}
    # 23 hours across the spring change, 25 across the autumn one, the period otherwise.
    assert {b - a for a, b in itertools.pairwise(times)} == {step - HOUR, step, step + HOUR}
    assert schedule.keeps_wall_clock


def test_daily_interval_dst_rules_match_cron() -> None:
    for anchor_time in ((2, 30), (1, 30)):
        interval = IntervalSchedule(DAY, anchor_date=datetime(2026, 1, 1, *anchor_time), timezone="America/New_York")
        cron = CronSchedule(f"{anchor_time[1]} {anchor_time[0]} * * *", timezone="America/New_York")
        for start in (local(NY, 2026, 3, 6), local(NY, 2026, 10, 30)):
            assert interval.next(5, after=start) == cron.next(5, after=start)


def test_interval_over_a_day_adds_on_the_wall_clock() -> None:
    schedule = IntervalSchedule(timedelta(hours=36), anchor_date=datetime(2026, 3, 6), timezone="America/New_York")
    assert walls(schedule.next(3, after=local(NY, 2026, 3, 6)), NY) == [
        "03-07 12:00-0500", "03-09 00:00-0400", "03-10 12:00-0400"
    ]


def test_default_anchor_is_fixed_so_the_phase_never_moves() -> None:
    first = IntervalSchedule(timedelta(hours=5))
    second = IntervalSchedule(timedelta(hours=5))
    assert first == second and hash(first) == hash(second)
    assert first.anchor_date == utc(2020, 1, 1)
    times = first.next(3, after=utc(2026, 6, 1))
    assert all((t - utc(2020, 1, 1)) % timedelta(hours=5) == timedelta(0) for t in times)
    assert times == second.next(3, after=utc(2026, 6, 1))
    # In a zone, the default anchor is midnight there.
    berlin = IntervalSchedule(DAY, timezone="Europe/Berlin")
    assert berlin.anchor_date == local(BERLIN, 2020, 1, 1)
    assert berlin.next(1, after=local(BERLIN, 2026, 7, 1, 12)) == [local(BERLIN, 2026, 7, 2).astimezone(UTC)]


def test_anchor_sets_the_phase_both_ways() -> None:
    schedule = IntervalSchedule(HOUR, anchor_date=utc(2026, 1, 1, 0, 10))
    assert schedule.next(2, after=utc(2026, 6, 1)) == [utc(2026, 6, 1, 0, 10), utc(2026, 6, 1, 1, 10)]
    assert schedule.next(1, after=utc(2025, 1, 1)) == [utc(2025, 1, 1, 0, 10)]  # before the anchor too


def test_anchor_zone_and_naive_anchor() -> None:
    from_anchor = IntervalSchedule(DAY, anchor_date=local(SYDNEY, 2026, 1, 1, 6))
    assert from_anchor.timezone == "Australia/Sydney"
    naive = IntervalSchedule(DAY, anchor_date=datetime(2026, 1, 1, 6), timezone="Australia/Sydney")
    assert naive == from_anchor
    assert IntervalSchedule(HOUR, anchor_date=datetime(2026, 1, 1, tzinfo=UTC)).timezone == "UTC"
    converted = IntervalSchedule(DAY, anchor_date=utc(2026, 1, 1, 8), timezone="Europe/Berlin")
    assert converted.next(1, after=utc(2026, 7, 1)) == [utc(2026, 7, 1, 7)]  # 09:00 CEST
    with pytest.raises(ScheduleError, match="fixed UTC offset"):
        IntervalSchedule(DAY, anchor_date=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    fixed = IntervalSchedule(DAY, anchor_date=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))), timezone="Europe/Berlin")
    assert fixed.next(1, after=utc(2026, 1, 5)) == [utc(2026, 1, 5, 22)]


def test_interval_accepts_seconds() -> None:
    assert IntervalSchedule(3600) == IntervalSchedule(HOUR)
    assert IntervalSchedule(0.5).next(2, after=utc(2026, 1, 1)) == [
        utc(2026, 1, 1) + timedelta(milliseconds=500), utc(2026, 1, 1, 0, 0, 1)
    ]


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        (timedelta(0), "greater than zero"),
        (-5, "greater than zero"),
        (timedelta(hours=-1), "greater than zero"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("1h", "must be a timedelta"),
        (True, "must be a timedelta"),
        (1e20, "too long"),
    ],
)
def test_invalid_intervals(interval: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        IntervalSchedule(interval)  # type: ignore[arg-type]


def test_invalid_anchor() -> None:
    with pytest.raises(ScheduleError, match="anchor_date must be a datetime"):
        IntervalSchedule(HOUR, anchor_date=date(2026, 1, 1))  # type: ignore[arg-type]


def test_parse_interval() -> None:
    assert parse_interval("90") == timedelta(seconds=90)
    assert parse_interval("1h30m") == timedelta(minutes=90)
    assert parse_interval("2d") == timedelta(days=2)
    assert parse_interval("1w") == timedelta(weeks=1)
    assert parse_interval("1.5h") == timedelta(minutes=90)
    assert parse_interval("PT1H") == HOUR
    assert parse_interval("P1DT12H") == timedelta(hours=36)
    assert parse_interval(" 30 m ") == timedelta(minutes=30)
    for bad in ("5x", "", "PT", "P", "h", "1h x"):
        with pytest.raises(ScheduleError, match="cannot read interval"):
            parse_interval(bad)
    with pytest.raises(ScheduleError, match="months have no fixed length"):
        parse_interval("P1M")
    with pytest.raises(ScheduleError, match="greater than zero"):
        parse_interval("0")


# -- rrule -------------------------------------------------------------------------------


def test_rrule_weekly_byday_with_floating_dtstart() -> None:
    schedule = RRuleSchedule(
        "DTSTART:20260105T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR", timezone="Europe/Berlin"
    )
    times = schedule.next(4, after=local(BERLIN, 2026, 1, 5, 9))
    assert [t.astimezone(BERLIN).strftime("%a %d %H:%M") for t in times] == [
        "Wed 07 09:00", "Fri 09 09:00", "Mon 12 09:00", "Wed 14 09:00"
    ]
    summer = schedule.next(1, after=local(BERLIN, 2026, 7, 1))  # 09:00 CEST, not CET
    assert summer == [utc(2026, 7, 1, 7)]


def test_rrule_zone_from_dtstart() -> None:
    zoned = RRuleSchedule("DTSTART;TZID=America/New_York:20260101T090000\nRRULE:FREQ=DAILY")
    assert zoned.timezone == "America/New_York"
    assert zoned.next(1, after=utc(2026, 7, 1, 12)) == [utc(2026, 7, 1, 13)]
    in_utc = RRuleSchedule("DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY")
    assert in_utc.timezone == "UTC"
    assert RRuleSchedule("DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY", timezone="UTC") == in_utc
    with pytest.raises(ScheduleError, match="TZID=America/New_York but timezone='Europe/Berlin'"):
        RRuleSchedule("DTSTART;TZID=America/New_York:20260101T090000\nRRULE:FREQ=DAILY", timezone="Europe/Berlin")
    with pytest.raises(ScheduleError, match="UTC"):
        RRuleSchedule("DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY", timezone="Europe/Berlin")


def test_rrule_dst_rules() -> None:
    """dateutil alone yields the nonexistent 02:30 (read as 03:30); flowcore fires at 03:00."""
    spring = RRuleSchedule("DTSTART;TZID=America/New_York:20260301T023000\nRRULE:FREQ=DAILY")
    assert walls(spring.next(3, after=local(NY, 2026, 3, 7, 12)), NY) == [
        "03-08 03:00-0400", "03-09 02:30-0400", "03-10 02:30-0400"
    ]
    autumn = RRuleSchedule("DTSTART:20261025T013000\nRRULE:FREQ=DAILY", timezone="Europe/London")
    assert day_fires(autumn, LONDON, date(2026, 10, 25)) == [utc(2026, 10, 25, 0, 30)]
    hourly = RRuleSchedule("RRULE:FREQ=HOURLY", timezone="America/New_York")
    assert walls(hourly.next(3, after=local(NY, 2026, 3, 8, 0, 30)), NY) == [
        "03-08 01:00-0500", "03-08 03:00-0400", "03-08 04:00-0400"
    ]


def test_rrule_without_dtstart_has_a_fixed_phase() -> None:
    every_other_day = RRuleSchedule("RRULE:FREQ=DAILY;INTERVAL=2;BYHOUR=6")
    times = every_other_day.next(3, after=utc(2026, 6, 1))
    assert all((t.date() - date(2020, 1, 1)).days % 2 == 0 and t.hour == 6 for t in times)
    assert RRuleSchedule("FREQ=DAILY;BYHOUR=6").next(1, after=utc(2026, 6, 1)) == [utc(2026, 6, 1, 6)]
    minutely = RRuleSchedule("RRULE:FREQ=MINUTELY;INTERVAL=7")  # re-anchored, same lattice
    assert minutely.next(5, after=utc(2031, 6, 1)) == IntervalSchedule(timedelta(minutes=7)).next(5, after=utc(2031, 6, 1))


def test_rrule_ends_with_count_and_until() -> None:
    counted = RRuleSchedule("DTSTART:20260101T000000\nRRULE:FREQ=DAILY;COUNT=3")
    assert counted.next(10, after=utc(2025, 12, 31)) == [utc(2026, 1, d) for d in (1, 2, 3)]
    assert counted.next(10, after=utc(2026, 1, 3)) == []
    until = RRuleSchedule("RRULE:FREQ=DAILY;UNTIL=20260103T000000Z")
    assert until.next(10, after=utc(2025, 12, 31, 12)) == [utc(2026, 1, d) for d in (1, 2, 3)]
    excluded = RRuleSchedule("DTSTART:20260101T000000\nRRULE:FREQ=DAILY;COUNT=3\nEXDATE:20260102T000000")
    assert excluded.next(10, after=utc(2025, 12, 31)) == [utc(2026, 1, 1), utc(2026, 1, 3)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RRULE:FREQ=DAILY;COUNT=50000", "COUNT=50000 asks for more than 10000 runs"),
        ("RRULE:FREQ=FOO", "invalid rrule"),
        ("RRULE:FREQ=DAILY;BYHOUR=25", "invalid rrule"),
        ("DTSTART:2026\nRRULE:FREQ=DAILY", "DTSTART '2026' is not a date-time"),
        ("DTSTART;TZID=Mars/Olympus:20260101T000000\nRRULE:FREQ=DAILY", "unknown rrule TZID 'Mars/Olympus'"),
        ("DTSTART:20260101T000000", "no RRULE or RDATE line"),
        ("", "non-empty"),
        ("RRULE:FREQ=DAILY;" + "BYHOUR=1;" * 1000, "more than 6500"),
    ],
)
def test_invalid_rrules(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        RRuleSchedule(text)


# -- validation and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "the minute field '61' is not valid"),
        ("0 24 * * *", "the hour field '24' is not valid"),
        ("0 0 32 * *", "the day-of-month field '32'"),
        ("0 0 * 13 *", "the month field '13'"),
        ("0 0 * * FUNDAY", "the day-of-week field 'FUNDAY'"),
        ("0 0 31 2 *", "never occurs in the months given"),
        ("* * *", "has 3 field"),
        ("0 0 0 * * *", "seconds field is not supported"),
        ("@sometimes", "unknown cron nickname"),
        ("", "has 0 field"),
    ],
)
def test_invalid_cron(cron: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        CronSchedule(cron)


def test_cron_that_never_fires_with_day_and() -> None:
    assert CronSchedule("0 0 30 2 MON").next(1, after=utc(2026, 1, 1))  # Mondays in February
    with pytest.raises(ScheduleError, match="never fires"):
        CronSchedule("0 0 30 2 MON", day_or=False)


def test_unknown_timezone_names_close_matches() -> None:
    with pytest.raises(ScheduleError, match=r"unknown timezone 'america/new_york'.*'America/New_York'"):
        CronSchedule("0 0 * * *", timezone="america/new_york")
    with pytest.raises(ScheduleError, match="did you mean 'Europe/Berlin'"):
        IntervalSchedule(HOUR, timezone="Europe/Berln")
    with pytest.raises(ScheduleError, match="IANA time zone name"):
        RRuleSchedule("RRULE:FREQ=DAILY", timezone="")
    with pytest.raises(ScheduleError, match="not an IANA"):
        CronSchedule("0 0 * * *", timezone="../../etc/passwd")


def test_schedule_error_is_in_the_one_hierarchy() -> None:
    assert issubclass(ScheduleError, ConfigurationError)
    assert issubclass(ScheduleError, FlowcoreError) and issubclass(ScheduleError, ValueError)


def test_type_errors_are_schedule_errors() -> None:
    with pytest.raises(ScheduleError, match="cron must be a string"):
        CronSchedule(5)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="day_or must be"):
        CronSchedule("* * * * *", day_or="yes")  # type: ignore[arg-type]


# -- records: frozen, equal, serialisable --------------------------------------------------


def test_schedules_are_frozen_normalised_and_hashable() -> None:
    schedule = CronSchedule("0 2 * * *")
    assert schedule.timezone == "UTC" and schedule.zone == ZoneInfo("UTC")
    assert schedule == CronSchedule("0 2 * * *", timezone="UTC")
    assert schedule != CronSchedule("0 2 * * *", timezone="Europe/Berlin")
    assert len({schedule, CronSchedule("0 2 * * *", "UTC"), IntervalSchedule(HOUR)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.cron = "0 3 * * *"  # type: ignore[misc]
    assert repr(schedule) == "CronSchedule(cron='0 2 * * *', timezone='UTC', day_or=True)"


@pytest.mark.parametrize(
    "schedule",
    [
        CronSchedule("30 2 * * *", timezone="America/New_York", day_or=False),
        IntervalSchedule(timedelta(hours=36), anchor_date=datetime(2026, 3, 8, 2, 30), timezone="America/New_York"),
        IntervalSchedule(timedelta(minutes=15)),
        RRuleSchedule("DTSTART;TZID=Europe/Berlin:20260105T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO"),
    ],
)
def test_to_dict_and_back_and_pickle(schedule: Schedule) -> None:
    import json

    described = json.loads(json.dumps(schedule.to_dict()))
    again = schedule_from_dict(described)
    assert again == schedule
    after = utc(2026, 3, 1)
    assert again.next(20, after=after) == schedule.next(20, after=after)
    unpickled = pickle.loads(pickle.dumps(schedule))
    assert unpickled == schedule and unpickled.next(5, after=after) == schedule.next(5, after=after)


def test_schedule_from_dict_errors() -> None:
    with pytest.raises(ScheduleError, match="unknown schedule type 'weekly'"):
        schedule_from_dict({"type": "weekly"})
    with pytest.raises(ScheduleError, match="bad cron schedule description"):
        schedule_from_dict({"type": "cron", "cron": "* * * * *", "every": 5})
    with pytest.raises(ScheduleError, match="'type' key"):
        schedule_from_dict({"cron": "* * * * *"})


# -- the Prefect import path and import weight -------------------------------------------


def test_prefect_import_path_reexports_the_same_classes() -> None:
    from flowcore.server.schemas import schedules as prefect_style

    assert prefect_style.CronSchedule is CronSchedule
    assert prefect_style.IntervalSchedule is IntervalSchedule
    assert prefect_style.RRuleSchedule is RRuleSchedule
    assert set(prefect_style.__all__) == {"CronSchedule", "IntervalSchedule", "RRuleSchedule"}


def test_imports_stay_light() -> None:
    """``import flowcore`` loads no schedule code; schedules load cronsim/dateutil on first use."""
    code = (
        "import sys, json\n"
        "import flowcore\n"
        "out = {'flowcore': sorted(m for m in ('flowcore.schedules', 'cronsim', 'dateutil') if m in sys.modules)}\n"
        "import flowcore.server.schemas.schedules as s\n"
        "out['package'] = sorted(m for m in ('cronsim', 'dateutil') if m in sys.modules)\n"
        "from datetime import datetime, timezone\n"
        "s.CronSchedule('0 2 * * *').next(1, after=datetime(2026, 1, 1, tzinfo=timezone.utc))\n"
        "out['cron'] = sorted(m for m in ('cronsim', 'dateutil') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    import json

    assert json.loads(result.stdout) == {"flowcore": [], "package": [], "cron": ["cronsim"]}


def test_schedules_end_with_the_calendar() -> None:
    """Past year 9999 there are no datetimes: the stream ends instead of raising."""
    end = utc(9999, 12, 30)
    for schedule in (
        CronSchedule("0 0 * * *"),
        CronSchedule("0 * * * *", timezone="Europe/Berlin"),
        IntervalSchedule(DAY),
        IntervalSchedule(HOUR, timezone="Asia/Kolkata"),
        RRuleSchedule("FREQ=DAILY"),
    ):
        times = schedule.next(100, after=end)
        assert 1 <= len(times) < 100 and times[-1].year == 9999
