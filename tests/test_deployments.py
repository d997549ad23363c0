"""Deployments, the run queue and the catch-up policy, against a real store file, with
time injected (years of schedule in milliseconds). Real workers: tests/test_workers.py."""

from __future__ import annotations

import importlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flowcore.deployments import Deployment, DeploymentTrigger, FileTrigger, scheduler
from flowcore.deployments.store import DeploymentStore
from flowcore.errors import DeploymentError, DeploymentNotFoundError
from flowcore.schedules import CronSchedule, IntervalSchedule

FLOWS = '''
from flowcore import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="etl workflow")
def etl_workflow(n: int = 3) -> int:
    return sum(double(i) for i in range(n))

@flow
def needs_path(path: str) -> str:
    return path

@flow
def other(n: int = 1) -> int:
    return n

@flow
def two(path: str, mode: str) -> str:
    return mode + path

@flow(validate_parameters=False)
def unchecked(n: int = 1) -> int:
    return n
'''


def load_flows(directory: Path, code: str = FLOWS) -> ModuleType:
    """A module of flows in ``directory``, importable by name (as a worker's child does)."""
    name = f"dflows_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(code))
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))


@pytest.fixture
def flows(tmp_path: Path) -> ModuleType:
    return load_flows(tmp_path)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = DeploymentStore(tmp_path / "history.db")
    yield s
    s.close()


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def query(db: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


# -- building and applying ------------------------------------------------------------------


def test_the_seed_snippet_applies_and_reapplying_keeps_the_id(flows: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    etl_workflow = flows.etl_workflow
    deployment_id = Deployment.build_from_flow(
        flow=etl_workflow, name="daily-etl", schedule=CronSchedule(cron="0 2 * * *"), work_pool_name="default"
    ).apply()
    again = Deployment.build_from_flow(
        flow=etl_workflow, name="daily-etl", schedule=CronSchedule(cron="0 2 * * *"), work_pool_name="default"
    ).apply()
    assert again == deployment_id
    with DeploymentStore(tmp_path / "home" / "history.db") as s:
        record = s.find("etl workflow/daily-etl")
        assert record.id == deployment_id and s.find("daily-etl").id == deployment_id
        assert record.entrypoint == f"{flows.__name__}:etl_workflow"
        assert [st.schedule for st in record.schedules] == [CronSchedule(cron="0 2 * * *").to_dict()]
    listing = subprocess.run([sys.executable, "-m", "flowcore", "deployment", "ls", "--json"],
                             capture_output=True, text=True, check=True)
    (item,) = json.loads(listing.stdout)
    assert item["full_name"] == "etl workflow/daily-etl"
    assert item["next_runs"][0]["time"] % 86400 == 2 * 3600
    assert item["next_runs"][0]["wall_clock"].endswith(" 02:00 UTC")  # the schedule's own clock


def test_build_errors_name_the_problem_and_the_fix(flows: ModuleType) -> None:
    with pytest.raises(DeploymentError, match=r"catchup='sometimes' is not known; use one of 'skip', 'latest', 'all'"):
        Deployment.build_from_flow(flows.etl_workflow, "x", catchup="sometimes")
    with pytest.raises(DeploymentError, match=r"overlap='drop' is not known; use one of .*'cancel_running'"):
        Deployment.build_from_flow(flows.etl_workflow, "x", overlap="drop")
    with pytest.raises(DeploymentError, match="concurrency_limit=0: use a whole number >= 1"):
        Deployment.build_from_flow(flows.etl_workflow, "x", concurrency_limit=0)
    with pytest.raises(DeploymentError, match="without '/'"):
        Deployment.build_from_flow(flows.etl_workflow, "a/b")
    with pytest.raises(DeploymentError, match=r"the flow has no parameter 'm'; it takes n"):
        Deployment.build_from_flow(flows.etl_workflow, "x", parameters={"m": 1})
    with pytest.raises(DeploymentError, match="needs parameter 'path'"):
        Deployment.build_from_flow(flows.needs_path, "x", schedule=IntervalSchedule(interval=60))
    with pytest.raises(DeploymentError, match="must be JSON"):
        Deployment.build_from_flow(flows.etl_workflow, "x", parameters={"n": object()})
    with pytest.raises(DeploymentError, match="names no parameter of the flow"):
        Deployment.build_from_flow(flows.etl_workflow, "x", triggers=[FileTrigger("/tmp", parameter="file")])
    with pytest.raises(DeploymentError, match="'flow-name/deployment-name'"):
        DeploymentTrigger(after="nope")
    with pytest.raises(DeploymentError, match="not a final state"):
        DeploymentTrigger(after="a/b", states=["Done"])

    from flowcore import flow

    @flow
    def local() -> None:
        pass

    with pytest.raises(DeploymentError, match=r"not a module-level name.*define it at the top level"):
        Deployment.build_from_flow(local, "x")


def test_triggered_runs_must_get_every_parameter_the_flow_needs(flows: ModuleType) -> None:
    """A file or chained run gets the deployment's parameters plus the trigger's: one
    that lacks a required parameter can never start (it was accepted, and each file
    was skipped later, in the feed, or each chained run failed)."""
    inbox = FileTrigger("/tmp", parameter="path")
    with pytest.raises(DeploymentError, match=r"two/x: the flow needs parameter 'mode'"):
        Deployment.build_from_flow(flows.two, "x", triggers=[inbox])
    assert Deployment.build_from_flow(flows.two, "x", parameters={"mode": "m"}, triggers=[inbox]).triggers
    upstream = DeploymentTrigger(after="other/a", parameters={"path": "/p"})
    with pytest.raises(DeploymentError, match=r"DeploymentTrigger\(parameters=...\): the flow needs parameter 'mode'"):
        Deployment.build_from_flow(flows.two, "y", triggers=[upstream])
    assert Deployment.build_from_flow(flows.two, "y", parameters={"mode": "m"}, triggers=[upstream]).triggers
    # webhook and manual runs may still bring what is missing: no trigger, no check
    assert Deployment.build_from_flow(flows.two, "z").name == "z"


def test_parameters_of_the_wrong_type_are_refused_when_the_run_is_requested(store: DeploymentStore,
                                                                           flows: ModuleType) -> None:
    """``deployment run --param n=abc`` (or a webhook body {"n": "abc"}) for ``n: int``:
    refused when asked, as the flow would refuse it (pydantic's lax mode: "7" passes),
    not queued to fail in a worker later."""
    dep = _apply(store, flows.etl_workflow, "typed", 0.0)
    with pytest.raises(DeploymentError, match=r"parameter 'n' expects int, got 'abc' \(str\)"):
        store.request_run(dep, {"n": "abc"})
    with pytest.raises(DeploymentError, match=r"parameter 'n' expects int, got 2.5"):
        store.request_run(dep, {"n": 2.5})
    assert store.request_run(dep, {"n": "7"})[1] and store.request_run(dep, {"n": 7.0})[1]
    with pytest.raises(DeploymentError, match=r"parameter 'n' expects int, got \[1\]"):
        Deployment.build_from_flow(flows.etl_workflow, "typed", parameters={"n": [1]})
    with pytest.raises(DeploymentError, match=r"parameter 'path' expects str, got 3"):
        Deployment.build_from_flow(flows.needs_path, "typed", parameters={"path": 3})
    loose = _apply(store, flows.unchecked, "loose", 0.0)
    assert store.request_run(loose, {"n": "abc"})[1]  # the flow does not check: neither does the request
    assert len(store.runs(dep)) == 2


def test_deployment_triggers_that_form_a_loop_are_refused_when_applied(store: DeploymentStore,
                                                                       flows: ModuleType) -> None:
    """a after b, b after c, c after a: each run starts the next, without end. Refused
    when the deployment that closes the loop is applied; nothing of it is stored."""
    _apply(store, flows.other, "a", 0.0, triggers=[DeploymentTrigger(after="other/b")])
    _apply(store, flows.other, "b", 0.0, triggers=[DeploymentTrigger(after="other/c", states=["Failed"])])
    with pytest.raises(DeploymentError, match=r"other/c: its DeploymentTrigger closes a loop: other/c starts "
                                              r"after other/a, other/a after other/b, other/b after other/c"):
        _apply(store, flows.other, "c", 0.0, triggers=[DeploymentTrigger(after="other/a")])
    assert sorted(r.name for r in store.list_deployments()) == ["a", "b"]
    _apply(store, flows.other, "c", 0.0, triggers=[DeploymentTrigger(after="etl workflow/x")])  # no loop
    with pytest.raises(DeploymentError, match="closes a loop"):  # re-applying c to close it again
        _apply(store, flows.other, "c", 0.0, triggers=[DeploymentTrigger(after="other/a")])
    assert [t["after"] for t in store.find("other/c").triggers] == ["etl workflow/x"]


def test_a_module_that_exits_while_imported_for_a_run_fails_the_run_naming_why(tmp_path: Path) -> None:
    """Module-level code that calls sys.exit (argparse at the top of a script) ended the
    run's child with a bare exit code ("exited with code 2"); loading says what to change."""
    from flowcore.deployments.deployment import Entrypoint

    script = tmp_path / "cli_job.py"
    script.write_text("import argparse\nfrom flowcore import flow\n\n@flow\ndef job() -> None: ...\n\n"
                      "argparse.ArgumentParser().parse_args(['--nope'])\n")
    with pytest.raises(DeploymentError, match=r"importing .*cli_job.py:job' called sys.exit\(2\).*"
                                              r"if __name__ == \"__main__\":"):
        Entrypoint(f"{script}:job", str(tmp_path), str(tmp_path)).load()


def test_deployment_run_param_text_stays_text_for_a_str_parameter(flows: ModuleType, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--param path=2026`` for ``path: str`` was read as JSON (the int 2026) and the
    run was refused (or failed) although the flow takes the text, as ``flowcore run`` does."""
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    Deployment.build_from_flow(flows.needs_path, "by-hand").apply()
    Deployment.build_from_flow(flows.etl_workflow, "by-hand").apply()

    def run(name: str, *args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "flowcore", "deployment", "run", name, "--json", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["parameters"]

    assert run("needs_path/by-hand", "--param", "path=2026") == {"path": "2026"}
    assert run("needs_path/by-hand", "--param", 'path="quoted"') == {"path": "quoted"}  # JSON text, as flowcore run
    assert run("etl workflow/by-hand", "--param", "n=5") == {"n": 5}  # an int stays JSON


def test_inspect_shows_a_webhook_address_that_can_be_pasted(flows: ModuleType, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow named "etl workflow": the address was printed with its space, which curl
    cannot take as it is."""
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    Deployment.build_from_flow(flows.etl_workflow, "night ly").apply()
    shown = subprocess.run([sys.executable, "-m", "flowcore", "deployment", "inspect", "etl workflow/night ly"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "POST /api/deployments/etl%20workflow/night%20ly/runs" in shown, shown


def test_a_schedule_that_has_ended_is_refused_at_build(flows: ModuleType) -> None:
    """An rrule with COUNT and no DTSTART counts from the fixed anchor (2020-01-01): it
    had ended before it was deployed, and the deployment silently never ran."""
    from flowcore.schedules import RRuleSchedule

    with pytest.raises(DeploymentError, match=r"rrule 'FREQ=DAILY;COUNT=3'.* has no fire time after now.*DTSTART"):
        Deployment.build_from_flow(flows.etl_workflow, "x", schedule=RRuleSchedule("FREQ=DAILY;COUNT=3"))
    ended = RRuleSchedule("DTSTART:20200101T000000\nRRULE:FREQ=DAILY;UNTIL=20200105T000000")
    with pytest.raises(DeploymentError, match="has no fire time after now"):
        Deployment.build_from_flow(flows.etl_workflow, "x", schedules=[IntervalSchedule(interval=60), ended])
    later = RRuleSchedule("DTSTART:20990101T000000\nRRULE:FREQ=DAILY;COUNT=3")
    assert Deployment.build_from_flow(flows.etl_workflow, "x", schedule=later).schedules == (later,)


def test_a_deployment_interval_under_a_second_is_refused(flows: ModuleType) -> None:
    """IntervalSchedule(0.001) was deployed: each fire time is a new process, and a
    worker would have started hundreds a second."""
    for interval in (0.001, 0.5, timedelta(milliseconds=999)):
        with pytest.raises(DeploymentError, match=r"every .* is under 1 s.*each run is a new process"):
            Deployment.build_from_flow(flows.etl_workflow, "x", schedule=IntervalSchedule(interval=interval))
    assert Deployment.build_from_flow(flows.etl_workflow, "x", schedule=IntervalSchedule(interval=1)).schedules


def test_deployment_ls_lists_every_deployment_when_one_schedule_cannot_be_read(
        flows: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One schedule this version cannot read (a newer flowcore's) made `deployment ls`
    fail as a whole ("unknown schedule type"); it lists every deployment, that one
    without next runs."""
    monkeypatch.setenv("FLOWCORE_HOME", str(tmp_path / "home"))
    Deployment.build_from_flow(flows.etl_workflow, "daily", schedule=CronSchedule("0 2 * * *")).apply()
    other = Deployment.build_from_flow(flows.other, "later", schedule=CronSchedule("0 3 * * *")).apply()
    connection = sqlite3.connect(tmp_path / "home" / "history.db")
    with connection:
        connection.execute("UPDATE deployment_schedules SET schedule = ?, key = 'calendar-1' WHERE deployment_id = ?",
                           ('{"type": "calendar", "spec": "weekdays"}', other))
    connection.close()
    listing = subprocess.run([sys.executable, "-m", "flowcore", "deployment", "ls", "--json"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    by_name = {item["full_name"]: item for item in json.loads(listing.stdout)}
    assert set(by_name) == {"etl workflow/daily", "other/later"}
    assert by_name["other/later"]["next_runs"] == [] and by_name["etl workflow/daily"]["next_runs"]
    shown = subprocess.run([sys.executable, "-m", "flowcore", "deployment", "inspect", "other/later"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "unknown schedule type 'calendar'" in shown.stdout, shown.stdout + shown.stderr


def test_a_deployment_cannot_trigger_itself(flows: ModuleType) -> None:
    """after= its own name: each run it started started the next, without end (a real
    worker made 13 runs in 5 s)."""
    for states in (["Completed"], ["Failed", "Crashed"]):
        with pytest.raises(DeploymentError, match=r"'etl workflow/loop' cannot be triggered by its own runs"):
            Deployment.build_from_flow(flows.etl_workflow, "loop",
                                       triggers=[DeploymentTrigger(after="etl workflow/loop", states=states)])
    assert Deployment.build_from_flow(flows.etl_workflow, "loop",
                                      triggers=[DeploymentTrigger(after="etl workflow/other")]).triggers


def test_a_flow_in_a_script_run_as_main_is_deployed_by_path(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(FLOWS + textwrap.dedent('''
        if __name__ == "__main__":
            from flowcore.deployments import Deployment
            d = Deployment.build_from_flow(etl_workflow, "main")
            print(d.entrypoint.target)
            print(d.entrypoint.load().name)
    '''))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path)
    target, loaded = result.stdout.strip().splitlines()[-2:]
    assert target == f"{script.resolve()}:etl_workflow"
    assert loaded == "etl workflow"


# -- the catch-up policy, pure (years in milliseconds) ---------------------------------------


def test_a_year_of_a_new_york_cron_fires_once_a_day_through_both_dst_changes() -> None:
    schedule = CronSchedule(cron="30 1 * * *", timezone="America/New_York")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    plan = scheduler.plan(schedule, start, start + timedelta(days=365), start + timedelta(days=365), "all",
                          late_after=10**9)
    times = [t for t, _ in plan.create]
    assert len(times) == len(set(times)) == 365  # 2026-11-01 01:30 happens twice, fires once
    assert all(t.astimezone(schedule.zone).strftime("%H:%M") == "01:30" for t in times)
    spring = CronSchedule(cron="30 2 * * *", timezone="America/New_York")
    march = [t.astimezone(spring.zone) for t, _ in scheduler.plan(
        spring, datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC),
        datetime(2026, 3, 10, tzinfo=UTC), "all", late_after=10**9).create]
    assert [t.strftime("%d %H:%M") for t in march] == ["07 02:30", "08 03:00", "09 02:30"]


def test_leap_days_over_eight_years_in_milliseconds() -> None:
    schedule = CronSchedule(cron="0 12 29 2 *", timezone="Europe/Berlin")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    until = datetime(2032, 12, 31, tzinfo=UTC)
    plan = scheduler.plan(schedule, start, until, until, "all", late_after=10**10)
    assert [t.year for t, _ in plan.create] == [2024, 2028, 2032]


@pytest.mark.parametrize(("catchup", "created", "late", "skipped"), [
    ("skip", 0, 0, 10), ("latest", 1, 1, 9), ("all", 10, 10, 0),
])
def test_catchup_after_ten_missed_hours(catchup: str, created: int, late: int, skipped: int) -> None:
    schedule = IntervalSchedule(interval=timedelta(hours=1))
    last = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    now = last + timedelta(hours=10, minutes=2)  # 10:00 was missed too (150 s ago)
    plan = scheduler.plan(schedule, last, now, now, catchup, late_after=60)
    assert len(plan.create) == created
    assert sum(1 for _, is_late in plan.create if is_late) == late
    assert plan.skipped == skipped
    if catchup == "latest":
        assert plan.create[0][0] == datetime(2026, 6, 1, 10, tzinfo=UTC)


def test_catchup_all_is_capped_and_latest_defers_to_a_due_run() -> None:
    schedule = IntervalSchedule(interval=timedelta(minutes=1))
    last = datetime(2026, 6, 1, tzinfo=UTC)
    now = last + timedelta(hours=1, seconds=5)
    capped = scheduler.plan(schedule, last, now, now, "all", late_after=30, cap=5)
    assert [t.minute for t, late in capped.create if late] == [1, 2, 3, 4, 5]
    assert capped.skipped == 54 and [late for _, late in capped.create][-1] is False  # 01:00 is due, not missed
    latest = scheduler.plan(schedule, last, now, now, "latest", late_after=30)
    assert [(t.hour, t.minute, late) for t, late in latest.create] == [(1, 0, False)]


def test_a_second_schedule_after_a_month_off_is_planned_without_scanning_every_second() -> None:
    schedule = IntervalSchedule(interval=timedelta(seconds=1))
    last = datetime(2026, 6, 1, tzinfo=UTC)
    now = last + timedelta(days=30)
    plan = scheduler.plan(schedule, last, now, now, "latest", late_after=60)
    assert plan.more_skipped and plan.skipped >= scheduler.SCAN_LIMIT
    assert len(plan.create) == 61 and plan.create[0][1] is False  # the last minute is due
    skip = scheduler.plan(schedule, last, now, now, "latest", late_after=0)
    assert skip.create == [(now, False)]  # due now: it is the catch-up


# -- the store: scheduling with an injected clock ----------------------------------------------


def _apply(store: DeploymentStore, flow: Any, name: str, now: float, **options: Any) -> str:
    return store.upsert(Deployment.build_from_flow(flow, name, **options), now=now)


def test_three_days_around_the_end_of_dst_tick_every_ten_minutes(store: DeploymentStore, flows: ModuleType) -> None:
    start = at("2026-10-31T00:00:00+00:00")
    dep = _apply(store, flows.etl_workflow, "nightly", start,
                 schedule=CronSchedule(cron="30 1 * * *", timezone="America/New_York"))
    now = start
    while now < start + 3 * 86400:
        now += 600
        store.schedule_due(now, late_after=900)
    runs = store.runs(dep, limit=None)
    local = sorted(scheduler.to_datetime(r.scheduled_time).astimezone(CronSchedule(
        cron="* * * * *", timezone="America/New_York").zone).strftime("%m-%d %H:%M %Z") for r in runs)
    assert local == ["10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST"]
    assert not any("missed" in r.message for r in runs)


def test_a_restart_neither_loses_nor_repeats_a_fire_time(store: DeploymentStore, flows: ModuleType,
                                                          tmp_path: Path) -> None:
    start = at("2026-06-01T00:00:00+00:00")
    dep = _apply(store, flows.etl_workflow, "minutely", start, schedule=CronSchedule(cron="* * * * *"),
                 catchup="all")
    other = DeploymentStore(tmp_path / "history.db")  # a second worker on the same file
    for i in range(1, 121):
        now = start + i * 17.0
        store.schedule_due(now, late_after=3600)
        other.schedule_due(now - 3, late_after=3600)  # a clock 3 s behind
        if i == 60:  # "restart": redeploy the same schedule
            _apply(store, flows.etl_workflow, "minutely", now, schedule=CronSchedule(cron="* * * * *"),
                   catchup="all")
    other.close()
    times = sorted(r.scheduled_time for r in store.runs(dep, limit=None))
    assert times == [start + 60 * k for k in range(1, len(times) + 1)]
    assert len(times) == (120 * 17 // 60)


def test_paused_deployments_create_nothing_and_resume_does_not_backfill(store: DeploymentStore,
                                                                        flows: ModuleType) -> None:
    start = at("2026-06-01T00:00:00+00:00")
    dep = _apply(store, flows.etl_workflow, "hourly", start, schedule=IntervalSchedule(interval=3600),
                 catchup="all")
    store.schedule_due(start + 2 * 3600 + 1)
    assert len(store.runs(dep)) == 2
    store.set_paused(dep, True, now=start + 2 * 3600 + 5)
    store.schedule_due(start + 10 * 3600)
    assert len(store.runs(dep)) == 2
    store.set_paused(dep, False, now=start + 10 * 3600 + 5)
    store.schedule_due(start + 10 * 3600 + 10)
    assert len(store.runs(dep)) == 2
    feed = [e.reason for e in store.feed(dep)]
    assert any("8 fire time(s) while paused" in r for r in feed)
    store.schedule_due(start + 11 * 3600 + 1)
    assert len(store.runs(dep)) == 3


def test_missed_runs_follow_the_policy_and_are_marked_late(store: DeploymentStore, flows: ModuleType) -> None:
    start = at("2026-06-01T00:00:00+00:00")
    ids = {c: _apply(store, flows.etl_workflow, f"c-{c}", start, schedule=IntervalSchedule(interval=3600),
                     catchup=c) for c in ("skip", "latest", "all")}
    store.schedule_due(start + 5 * 3600 + 120)  # down for 5 hours
    assert [len(store.runs(ids[c])) for c in ("skip", "latest", "all")] == [0, 1, 5]
    (latest,) = store.runs(ids["latest"])
    assert latest.late and "missed while no worker was running" in latest.message
    assert any("5 missed fire time(s)" in e.reason and e.outcome == "skipped" for e in store.feed(ids["skip"]))
    # a queued run nobody claims becomes Late (not dropped)
    store.schedule_due(start + 6 * 3600 + 1)
    store.schedule_due(start + 6 * 3600 + 200)
    states = {r.state for r in store.runs(ids["skip"])}
    assert states == {"Late"}
    claimed = store.claim("w", "default", start + 6 * 3600 + 201, ids=[ids["skip"]])
    assert [r.state for r in claimed] == ["Running"]


# -- claiming: once, overlap, concurrency ------------------------------------------------------


CLAIMER = '''
import json, sys, time
from flowcore.deployments.store import DeploymentStore
store = DeploymentStore(sys.argv[1])
got = []
deadline = time.time() + 60
while time.time() < deadline:
    runs = store.claim(sys.argv[2], "default", 100.0, limit=2)
    got += [r.id for r in runs]
    left = store._read("SELECT count(*) FROM deployment_runs WHERE state = 'Scheduled'")[0][0]
    if not left:
        break
print(json.dumps(got))
'''


def test_four_workers_claiming_one_queue_get_each_run_exactly_once(store: DeploymentStore, flows: ModuleType,
                                                                   tmp_path: Path) -> None:
    dep = _apply(store, flows.etl_workflow, "manual", 0.0)
    for i in range(60):
        store.request_run(dep, {"n": i}, now=1.0)
    script = tmp_path / "claimer.py"
    script.write_text(CLAIMER)
    processes = [subprocess.Popen([sys.executable, str(script), str(store.path), f"w{i}"], stdout=subprocess.PIPE,
                                  text=True) for i in range(4)]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    every = [run_id for got in claimed for run_id in got]
    assert len(every) == len(set(every)) == 60
    owners = query(store.path, "SELECT worker_id, count(*) FROM deployment_runs GROUP BY worker_id")
    assert sum(n for _, n in owners) == 60


def test_overlap_policies_and_the_concurrency_limit(store: DeploymentStore, flows: ModuleType) -> None:
    ids = {o: _apply(store, flows.etl_workflow, f"o-{o}", 0.0, overlap=o) for o in ("allow", "skip", "queue",
                                                                                 "cancel_running")}
    limited = _apply(store, flows.etl_workflow, "limited", 0.0, concurrency_limit=2)
    for dep in [*ids.values(), limited]:
        store.request_run(dep, now=1.0)
    first = {r.deployment_id: r.id for r in store.claim("w", "default", 2.0)}
    for dep in [*ids.values(), limited, limited]:
        store.request_run(dep, now=3.0)
    second = store.claim("w", "default", 4.0)
    started = {r.deployment_id for r in second}
    assert started == {ids["allow"], ids["cancel_running"], limited}
    assert [r.state for r in store.runs(ids["skip"])].count("Skipped") == 1
    assert "still running (overlap='skip')" in store.runs(ids["skip"], states=["Skipped"])[0].message
    assert [r.state for r in store.runs(ids["queue"])].count("Scheduled") == 1
    ((cancelled, reason),) = store.cancel_requests("w")
    assert cancelled == first[ids["cancel_running"]] and "superseded by run" in reason
    assert sorted(r.state for r in store.runs(limited)) == ["Running", "Running", "Scheduled"]
    store.finish_run(first[ids["queue"]], "Completed", now=5.0)
    assert {r.deployment_id for r in store.claim("w", "default", 6.0)} == {ids["queue"]}
    assert store.claim("w", "default", 7.0, limit=0) == []


# -- requests, idempotency, chaining, crash bookkeeping -------------------------------------------


def test_an_idempotency_key_starts_one_run(store: DeploymentStore, flows: ModuleType) -> None:
    dep = _apply(store, flows.etl_workflow, "hook", 0.0)
    a = store.request_run(dep, {"n": 5}, kind="webhook", key=f"webhook:{dep}:abc")
    b = store.request_run(dep, {"n": 6}, kind="webhook", key=f"webhook:{dep}:abc")
    assert a[0] == b[0] and (a[1], b[1]) == (True, False)
    assert store.run(a[0]).parameters == {"n": 5}
    assert [e.outcome for e in store.feed(dep)] == ["deduplicated", "fired"]
    with pytest.raises(DeploymentError, match="no parameter 'x'"):
        store.request_run(dep, {"x": 1})
    for not_json in (float("nan"), float("inf")):  # `deployment run --param n=NaN` reads one
        with pytest.raises(DeploymentError, match="must be JSON"):
            store.request_run(dep, {"n": not_json})
    with pytest.raises(DeploymentError, match="must be JSON"):
        Deployment.build_from_flow(flows.etl_workflow, "nan", parameters={"n": float("nan")})
    assert len(store.runs(dep)) == 1
    with pytest.raises(DeploymentNotFoundError, match="did you mean 'etl workflow/hook'"):
        store.find("etl workflow/hoook")


def test_a_deployment_trigger_chains_runs_once_per_upstream_run(store: DeploymentStore, flows: ModuleType) -> None:
    up = _apply(store, flows.etl_workflow, "extract", 0.0)
    down = _apply(store, flows.other, "load", 0.0,
                  triggers=[DeploymentTrigger(after="etl workflow/extract", states=["Completed"], parameters={"n": 7})])
    failing = _apply(store, flows.other, "alert", 0.0,
                     triggers=[DeploymentTrigger(after="etl workflow/extract", states=["Failed", "Crashed"])])
    run_id, _ = store.request_run(up, now=1.0)
    store.claim("w", "default", 10.0)
    assert store.finish_run(run_id, "Completed", now=10.0)
    assert not store.finish_run(run_id, "Completed", now=10.0)  # final already: no second chain
    (chained,) = store.runs(down)
    assert chained.kind == "after" and chained.parameters == {"n": 7}
    assert store.runs(failing) == []
    assert store.feed(down)[0].outcome == "fired"


def test_a_dead_workers_running_runs_end_crashed_with_their_flow_runs(store: DeploymentStore,
                                                                     flows: ModuleType) -> None:
    dep = _apply(store, flows.etl_workflow, "crashy", 0.0)
    run_id, _ = store.request_run(dep, now=1.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.register_worker("gone", "default", __import__("socket").gethostname(), dead.pid, 0, 1.0)
    store.claim("gone", "default", 2.0)
    store._write(lambda c: c.execute(
        "INSERT INTO flow_runs (id, flow, name, state, state_type, start_time) "
        "VALUES ('fr1', 'etl workflow', 'x', 'Running', 'RUNNING', 2.0)"))
    store.link_flow_run(run_id, "fr1")
    assert store.crash_orphans(now=3.0) == 1
    run = store.run(run_id)
    assert run.state == "Crashed" and "died while the run was running" in run.message
    assert query(store.path, "SELECT state FROM flow_runs WHERE id = 'fr1'") == [("Crashed",)]
    assert store.workers()[0].stopped == 3.0


def test_import_flowcore_does_not_load_deployments() -> None:
    code = ("import sys, flowcore; print(sorted(m for m in sys.modules if m.startswith('flowcore.deployments')"
            " or m in ('starlette', 'uvicorn', 'sqlite3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(__import__("flowcore").serve)
