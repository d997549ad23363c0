"""``flowcore runs ...`` as real subprocesses against runs recorded by other real
processes (each test has its own FLOWCORE_HOME)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from _terminal import plain, run_on_terminal

from flowcore.history.records import FlowRunWrite, HistoryBatch, StateRecord, TaskRunWrite
from flowcore.history.sqlite import SQLiteStore

SCRIPT = """
    import sys
    from flowcore import flow, task, get_run_logger

    @task
    def double(x):
        get_run_logger().info("doubling %d", x)
        return 2 * x

    @task
    def fail(x):
        get_run_logger().warning("about to fail on %d", x)
        raise KeyError(f"no key {x}")

    @flow
    def report(n: int = 4, label: str = "demo"):
        values = double.map(range(n))
        bad = fail.submit(99)
        bad.wait()
        return sum(v.result() for v in values)

    if __name__ == "__main__":
        print(report(int(sys.argv[1]) if len(sys.argv) > 1 else 4))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
    return {**clean, "FLOWCORE_HOME": str(tmp_path / "home")}


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowcore", *args], capture_output=True, text=True, env=env,
        timeout=120, check=False, **kwargs,
    )


def script(tmp_path: Path, env: dict[str, str], *args: str, code: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "flow_script.py"
    path.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)


def ls(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = cli(env, "runs", "ls", "--json", *args)
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, Any]] = json.loads(result.stdout)
    return runs


def test_runs_ls_in_another_process_sees_a_script_run_right_after_it(tmp_path: Path, env: dict[str, str]) -> None:
    ran = script(tmp_path, env, "5")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "20"
    (run,) = ls(env)
    assert {"id", "flow", "name", "state", "start", "end", "duration_s", "backend", "task_counts"} <= set(run)
    assert run["flow"] == "report" and run["state"] == "Completed" and run["backend"] == "threads"
    assert run["task_counts"] == {"Completed": 5, "Failed": 1}
    assert run["duration_s"] is not None and run["duration_s"] >= 0
    assert run["name"].startswith("report-")

    table = cli(env, "runs", "ls")
    assert table.returncode == 0, table.stderr
    assert run["id"][:8] in table.stdout and "Completed" in table.stdout and "5 Completed, 1 Failed" in table.stdout


def test_runs_show_json_and_text(tmp_path: Path, env: dict[str, str]) -> None:
    assert script(tmp_path, env).returncode == 0
    (run,) = ls(env)
    shown = cli(env, "runs", "show", run["id"][:6], "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["id"] == run["id"] and document["parameters"] == {"n": 4, "label": "demo"}
    assert [s["name"] for s in document["states"]] == ["Running", "Completed"]
    tasks = document["task_runs"]
    assert len(tasks) == 5
    for entry in tasks:
        assert {"id", "task", "state", "attempts", "start", "end", "worker", "error"} <= set(entry)
        assert entry["worker"]["pid"] > 0 and entry["attempts"] == 1
    (failed,) = [t for t in tasks if t["state"] == "Failed"]
    assert failed["task"] == "fail" and failed["error"]["type"] == "KeyError"
    assert "no key 99" in failed["error"]["message"] and "raise KeyError" in failed["error"]["traceback"]
    assert all(t["error"] is None for t in tasks if t["state"] == "Completed")

    text = cli(env, "runs", "show", run["id"])
    assert text.returncode == 0, text.stderr
    assert "timeline" in text.stdout and "# ran, x failed" in text.stdout
    assert "raise KeyError" in text.stdout  # the failed task's traceback
    assert "n = 4" in text.stdout and 'label = "demo"' in text.stdout


def test_runs_logs_filters_by_level_and_task(tmp_path: Path, env: dict[str, str]) -> None:
    assert script(tmp_path, env).returncode == 0
    (run,) = ls(env)
    every = cli(env, "runs", "logs", run["id"][:8])
    assert every.returncode == 0, every.stderr
    assert "doubling 3" in every.stdout and "about to fail on 99" in every.stdout
    assert "Beginning flow run" in every.stdout
    warnings = cli(env, "runs", "logs", run["id"][:8], "--level", "warning")
    assert "about to fail on 99" in warnings.stdout and "doubling" not in warnings.stdout
    doubling = cli(env, "runs", "logs", run["id"][:8], "--task", "double", "--json")
    assert doubling.returncode == 0, doubling.stderr
    messages = sorted(r["message"] for r in json.loads(doubling.stdout))
    assert messages == [f"doubling {i}" for i in range(4)]


def test_runs_logs_task_that_the_run_never_ran_is_an_error_naming_its_tasks(
    tmp_path: Path, env: dict[str, str]
) -> None:
    assert script(tmp_path, env).returncode == 0
    (run,) = ls(env)
    by_run_name = cli(env, "runs", "logs", run["id"][:8], "--task", "double-2")
    assert by_run_name.returncode == 0 and "doubling 2" in by_run_name.stdout, by_run_name
    quiet = cli(env, "runs", "logs", run["id"][:8], "--task", "double", "--level", "error")
    assert (quiet.returncode, quiet.stdout) == (0, ""), quiet  # a task that logged nothing at that level
    for args in (("--task", "dubble"), ("--task", "dubble", "--json")):
        unknown = cli(env, "runs", "logs", run["id"][:8], *args)
        assert unknown.returncode == 2 and unknown.stdout == "", unknown
        (line,) = unknown.stderr.strip().splitlines()
        assert "'dubble'" in line and "double, fail" in line and run["name"] in line, line


FOLLOWED = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, get_run_logger

    @flow
    def ticking():
        logger = get_run_logger()
        logger.info("tick 0")
        Path(sys.argv[1]).touch()
        while not Path(sys.argv[2]).exists():
            time.sleep(0.05)
        for i in range(1, 4):
            logger.info("tick %d", i)
            time.sleep(0.3)
        logger.info("last tick")

    if __name__ == "__main__":
        ticking()
"""


def test_runs_logs_follow_prints_records_until_the_run_ends(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "ticking.py"
    path.write_text(textwrap.dedent(FOLLOWED))
    started, proceed = tmp_path / "started", tmp_path / "proceed"
    flow_process = subprocess.Popen([sys.executable, str(path), str(started), str(proceed)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: started.exists() and bool(ls(env)), flow_process)
        (run,) = ls(env)
        assert run["state"] == "Running"
        follower = subprocess.Popen([sys.executable, "-m", "flowcore", "runs", "logs", run["id"][:8], "--follow"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proceed.touch()
        out, err = follower.communicate(timeout=120)
    finally:
        flow_process.communicate(timeout=120)
    assert follower.returncode == 0, err
    messages = [line.rsplit(" - ", 1)[1] for line in out.splitlines()]
    ticks = [m for m in messages if m.startswith("tick ") or m == "last tick"]
    assert ticks == ["tick 0", "tick 1", "tick 2", "tick 3", "last tick"]
    assert "Finished in state Completed" in out


def _wait_for(condition: Any, process: subprocess.Popen[str], deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the flow process did not get going"
        time.sleep(0.05)


HANGING = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, task

    @task
    def hang():
        Path(sys.argv[1]).touch()
        time.sleep(600)

    @flow
    def doomed():
        return hang.submit().result()

    if __name__ == "__main__":
        doomed()
"""


def test_a_flow_process_killed_with_sigkill_is_listed_crashed(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "doomed.py"
    path.write_text(textwrap.dedent(HANGING))
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, str(path), str(ready)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def task_recorded() -> bool:
        runs = ls(env)
        if not runs:
            return False
        shown = json.loads(cli(env, "runs", "show", runs[0]["id"], "--json").stdout)
        return bool(shown["task_runs"])  # a run seen only as submitted is written within a second

    try:
        _wait_for(lambda: ready.exists() and task_recorded(), process)
        (running,) = ls(env)
        assert running["state"] == "Running" and running["end"] is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    (run,) = ls(env)
    assert run["state"] == "Crashed" and run["end"] is not None
    assert ls(env, "--state", "crashed") == [run]
    shown = json.loads(cli(env, "runs", "show", run["id"], "--json").stdout)
    assert f"pid {process.pid}" in shown["message"]
    assert [t["state"] for t in shown["task_runs"]] == ["Crashed"]


BUSY_THEN_HANGING = """
    import sys, time
    from pathlib import Path
    from flowcore import flow, get_run_logger, task

    @task
    def step(i):
        time.sleep(0.15)
        return i

    @flow
    def busy():
        for i in range(8):
            step.submit(i).result()
        get_run_logger().info("eight steps done")
        Path(sys.argv[1]).touch()
        time.sleep(600)

    if __name__ == "__main__":
        busy()
"""


def test_a_crashed_run_ends_at_its_last_recorded_sign_of_life(tmp_path: Path, env: dict[str, str]) -> None:
    """Killed between heartbeats (the first comes after 5 s), a run's end is not its
    last heartbeat but the latest of that, its task runs' ends and its log records."""
    path = tmp_path / "busy.py"
    path.write_text(textwrap.dedent(BUSY_THEN_HANGING))
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, str(path), str(ready)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def steps_recorded() -> bool:
        runs = ls(env)
        if not runs:
            return False
        logs = json.loads(cli(env, "runs", "logs", runs[0]["id"], "--json").stdout)
        shown = json.loads(cli(env, "runs", "show", runs[0]["id"], "--json").stdout)
        return len(shown["task_runs"]) == 8 and any(r["message"] == "eight steps done" for r in logs)

    try:
        _wait_for(lambda: ready.exists() and steps_recorded(), process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    (run,) = ls(env)
    assert run["state"] == "Crashed"
    shown = json.loads(cli(env, "runs", "show", run["id"], "--json").stdout)
    logs = json.loads(cli(env, "runs", "logs", run["id"], "--json").stdout)
    last_sign = max([t["end"] for t in shown["task_runs"]] + [r["timestamp"] for r in logs])
    assert run["end"] >= last_sign, (run, last_sign)
    assert run["duration_s"] >= 8 * 0.15, run
    assert shown["states"][-1]["name"] == "Crashed" and shown["states"][-1]["timestamp"] == run["end"]


def _synthetic(home: Path, runs: list[FlowRunWrite], tasks: list[TaskRunWrite] | None = None) -> None:
    store = SQLiteStore(home / "history.db")
    try:
        store.write_events(HistoryBatch(flow_runs=runs, task_runs=tasks or []))
    finally:
        store.close()


def _run(run_id: str, start: float, flow_name: str = "etl", state: str = "Completed") -> FlowRunWrite:
    state_type = state.upper() if state in ("Completed", "Failed") else "COMPLETED"
    return FlowRunWrite(run_id, flow_name, f"{flow_name}-{run_id[:8]}", state, state_type, start=start,
                        end=start + 2.0, attempts=1, state_entry=StateRecord(start + 2.0, state_type, state))


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path, env: dict[str, str]) -> None:
    now = time.time()
    _synthetic(tmp_path / "home", [_run("abcd1111", now), _run("abcd2222", now - 5), _run("ffff0000", now - 9)])
    result = cli(env, "runs", "show", "abcd")
    assert result.returncode == 2
    assert "ambiguous" in result.stderr and "abcd1111" in result.stderr and "abcd2222" in result.stderr
    assert json.loads(cli(env, "runs", "show", "abcd2", "--json").stdout)["id"] == "abcd2222"
    missing = cli(env, "runs", "show", "0123")
    assert missing.returncode == 2 and "no flow run with an id starting with '0123'" in missing.stderr


def test_a_name_several_runs_share_lists_them_with_their_start(tmp_path: Path, env: dict[str, str]) -> None:
    """Runs named by a ``flow_run_name`` template share names: asked for such a name,
    the error says it is a name, lists the runs with when each started, and asks for
    an id (more characters of a name would not help)."""
    now = time.time()
    runs = [_run("e1000001", now - 3600), _run("e2000002", now - 60)]
    for run in runs:
        run.name = "daily-mon"
    _synthetic(tmp_path / "home", runs)
    result = cli(env, "runs", "show", "daily-mon")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "name 'daily-mon'" in line and "give more characters" not in line, line
    for run_id, start in (("e1000001", now - 3600), ("e2000002", now - 60)):
        assert f"{run_id} (etl, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start))})" in line, line
    assert "give a run id" in line, line


def test_ls_filters_and_rm_older_than(tmp_path: Path, env: dict[str, str]) -> None:
    now = time.time()
    day = 86400.0
    _synthetic(
        tmp_path / "home",
        [_run("a0000001", now - 40 * day), _run("a0000002", now - 3 * day, "train", "Failed"),
         _run("a0000003", now - 60), _run("a0000004", now - 30, "train")],
        [TaskRunWrite("a0000001-1", "a0000001", "t", "t-1", "Completed", "COMPLETED", submitted=now - 40 * day)],
    )
    assert [r["id"] for r in ls(env)] == ["a0000004", "a0000003", "a0000002", "a0000001"]
    assert [r["id"] for r in ls(env, "--flow", "train")] == ["a0000004", "a0000002"]
    assert [r["id"] for r in ls(env, "--state", "Failed")] == ["a0000002"]
    assert [r["id"] for r in ls(env, "--since", "2d")] == ["a0000004", "a0000003"]
    assert [r["id"] for r in ls(env, "--limit", "1")] == ["a0000004"]
    bad = cli(env, "runs", "ls", "--since", "yesterday")
    assert bad.returncode == 2 and "neither an age" in bad.stderr

    removed = cli(env, "runs", "rm", "--older-than", "30d")
    assert removed.returncode == 0, removed.stderr
    assert "deleted 1 flow run older than 30d" in removed.stdout
    assert [r["id"] for r in ls(env)] == ["a0000004", "a0000003", "a0000002"]
    bad_age = cli(env, "runs", "rm", "--older-than", "a while")
    assert bad_age.returncode == 2 and "is not an age" in bad_age.stderr


def test_rm_vacuum_gives_the_space_back(tmp_path: Path, env: dict[str, str]) -> None:
    """Deleting runs leaves the SQLite file its size; ``--vacuum`` compacts it and says
    by how much (the file shrinks to a fraction once most rows are gone)."""
    now = time.time()
    day = 86400.0
    old = [_run(f"c{i:07d}", now - 40 * day) for i in range(300)]
    tasks = [
        TaskRunWrite(f"{run.id}-{j}", run.id, "t", f"t-{j}", "Completed", "COMPLETED",
                     submitted=now - 40 * day, error_message="x" * 200)
        for run in old for j in range(20)
    ]
    _synthetic(tmp_path / "home", [*old, _run("d0000001", now - 60)], tasks)
    db = tmp_path / "home" / "history.db"

    def size() -> int:
        return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())

    removed = cli(env, "runs", "rm", "--older-than", "30d")
    assert removed.returncode == 0, removed.stderr
    kept_size = size()
    assert [r["id"] for r in ls(env)] == ["d0000001"]
    compacted = cli(env, "runs", "rm", "--older-than", "30d", "--vacuum", "--json")
    assert compacted.returncode == 0, compacted.stderr
    report = json.loads(compacted.stdout)
    assert report["deleted_flow_runs"] == 0
    assert report["bytes_before"] == kept_size and report["bytes_after"] == size()
    assert size() < kept_size / 4, (size(), kept_size)
    assert [r["id"] for r in ls(env)] == ["d0000001"]
    said = cli(env, "runs", "rm", "--older-than", "30d", "--vacuum")
    assert said.returncode == 0 and f"compacted {db}" in said.stdout and " MB -> " in said.stdout


def test_ls_state_takes_names_and_types_in_any_case_and_refuses_an_unknown_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    now = time.time()
    _synthetic(tmp_path / "home", [_run("b0000001", now - 60, state="Failed"), _run("b0000002", now - 30)])
    for spelling in ("Failed", "failed", "FAILED"):
        assert [r["id"] for r in ls(env, "--state", spelling)] == ["b0000001"]
    assert [r["id"] for r in ls(env, "--state", "completed")] == ["b0000002"]
    assert ls(env, "--state", "crashed") == []  # a known state nothing is in: an empty list
    for typo in ("Faild", "done"):
        bad = cli(env, "runs", "ls", "--state", typo)
        assert bad.returncode == 2 and bad.stdout == "", bad
        (line,) = bad.stderr.strip().splitlines()
        assert f"unknown state {typo!r}" in line and "Completed" in line and "Crashed" in line, line
    suggested = cli(env, "runs", "ls", "--state", "Faild")
    assert "did you mean 'Failed'?" in suggested.stderr


def test_every_bad_option_value_exits_2_with_one_error_line(tmp_path: Path, env: dict[str, str]) -> None:
    """As argparse does for a value that is not a number (``--limit x``): exit status 2
    and one ``error:`` line on stderr, nothing on stdout."""
    _synthetic(tmp_path / "home", [_run("c0000001", time.time() - 60)])
    cases = {
        ("ls", "--limit", "x"): "--limit",
        ("ls", "--limit", "0"): "--limit must be at least 1",
        ("ls", "--limit", "-3"): "--limit must be at least 1",
        ("ls", "--since", "2x"): "--since",
        ("logs", "c000", "--level", "loud"): "unknown level 'loud'",
        ("logs", "c000", "--follow", "--json"): "--follow",
    }
    for args, message in cases.items():
        result = cli(env, "runs", *args)
        assert (result.returncode, result.stdout) == (2, ""), (args, result)
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(error_lines) == 1 and message in error_lines[0], (args, result.stderr)


def test_a_corrupt_database_is_named_with_the_fix(tmp_path: Path, env: dict[str, str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "history.db").write_bytes(b"\x00garbage" * 1000)
    result = cli(env, "runs", "ls")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(home / "history.db") in line and "is not a usable SQLite database" in line and "mv " in line


def _on_terminal(env: dict[str, str], columns: int, *args: str) -> str:
    """``flowcore *args`` with stdout on a pseudo-terminal ``columns`` wide: what it
    printed, without escape sequences."""
    text = run_on_terminal(
        [sys.executable, "-m", "flowcore", *args], {**env, "COLUMNS": str(columns), "TERM": "xterm"}
    )
    return plain(text.replace("\r\n", "\n"))


def test_ls_on_an_80_column_terminal_shows_whole_states_times_and_task_counts(
    tmp_path: Path, env: dict[str, str]
) -> None:
    now = time.time()
    runs = [_run("d0000001", now - 60, "nightly_warehouse_load", "Failed"), _run("d0000002", now - 30, "etl")]
    tasks = [TaskRunWrite(f"d0000001-{i}", "d0000001", "extract", f"extract-{i}", "Completed", "COMPLETED",
                          submitted=now - 60) for i in range(3)]
    _synthetic(tmp_path / "home", runs, tasks)
    out = _on_terminal(env, 80, "runs", "ls")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    header = lines[0].split()
    for column in ("ID", "FLOW", "STATE", "START", "DURATION", "TASKS"):
        assert column in header, out
    words = out.split()
    for whole in ("d0000001", "d0000002", "Failed", "Completed", "2.0s", "nightly_warehouse_load", "etl"):
        assert whole in words, (whole, out)
    assert time.strftime("%H:%M:%S", time.localtime(now - 60)) in words, out
    assert "3 Completed" in " ".join(words), out


def test_runs_show_prints_parameters_as_written_not_as_escapes(tmp_path: Path, env: dict[str, str]) -> None:
    code = """
        from flowcore import flow

        @flow
        def greet(name: str, tags: list):
            return name

        if __name__ == "__main__":
            greet("Zoë ✓", ["日本", "ok"])
    """
    assert script(tmp_path, env, code=code).returncode == 0
    (run,) = ls(env)
    shown = cli({**env, "PYTHONIOENCODING": "utf-8"}, "runs", "show", run["id"][:8])
    assert shown.returncode == 0, shown.stderr
    assert '  name = "Zoë ✓"' in shown.stdout.splitlines(), shown.stdout
    assert '  tags = ["日本", "ok"]' in shown.stdout.splitlines(), shown.stdout


def test_plain_text_without_rich(tmp_path: Path, env: dict[str, str]) -> None:
    assert script(tmp_path, env).returncode == 0
    code = "import sys; sys.modules['rich'] = None; from flowcore.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "runs", "ls"], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "FLOW", "NAME", "STATE", "START", "DURATION", "BACKEND", "TASKS"]
    assert "report" in row and "Completed" in row and "4 Completed, 1 Failed" in row


def test_flowcore_run_records_like_any_run_and_ls_survives_a_closed_pipe(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "flow_script.py"
    path.write_text(textwrap.dedent(SCRIPT))
    ran = cli(env, "run", f"{path}:report", "--params", '{"n": 3}', "--backend", "sequential")
    assert ran.returncode == 0, ran.stderr
    (run,) = ls(env)
    assert run["flow"] == "report" and run["backend"] == "sequential"
    assert run["task_counts"] == {"Completed": 3, "Failed": 1}
    many = [TaskRunWrite(f"bbbb-{i}", "bbbb0000", "t", f"t-{i}", "Completed", "COMPLETED", submitted=1.0)
            for i in range(3000)]
    _synthetic(tmp_path / "home", [_run("bbbb0000", time.time() - 99)], many)
    piped = subprocess.run(f"{sys.executable} -m flowcore runs show bbbb --json | head -1", shell=True,
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert piped.stdout == "{\n" and piped.stderr == ""  # 1 MB of JSON into a pipe closed after a line
