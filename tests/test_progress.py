"""The live progress display: on a terminal only, off with FLOWCORE_PROGRESS=0.

The flows run in child processes whose standard error is a real pseudo-terminal
(``pty``) or a pipe, as a user's would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _terminal import plain, run_on_terminal

pytest.importorskip("rich")

SCRIPT = textwrap.dedent(
    """
    import time
    from flowcore import flow, task

    @task
    def square(x):
        time.sleep(0.002)
        return x * x

    @task
    def explode(x):
        raise ValueError(x)

    @flow(backend="threads")
    def squares(n):
        ok = square.map(range(n))
        bad = [explode.submit(i) for i in range(3)]
        time.sleep(0.6)  # long enough for a few refreshes
        return sum(f.result() for f in ok), sum(1 for f in bad if f.state.is_failed())

    if __name__ == "__main__":
        print("result", squares(300))
    """
)


def _run_on_terminal(script: Path, env: dict[str, str], stdout: Path | None = None) -> str:
    """Run ``script`` with stderr (and stdout, unless it goes to the file ``stdout``) on
    a pseudo-terminal; all it printed on the terminal."""
    return run_on_terminal([sys.executable, str(script)], env, stdout=stdout)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "squares.py"
    path.write_text(SCRIPT)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWCORE_PROGRESS"}
    env.update(extra, COLUMNS="120", TERM="xterm")
    return env


def test_a_terminal_shows_the_progress_table(script: Path) -> None:
    out = _run_on_terminal(script, _env())
    assert "result (8955050, 3)" in out
    for header in ("task", "done", "failed", "active", "total", "rate"):
        assert header in out, out
    final = plain(out[out.rindex("flow run 'squares-") :])  # the last drawing of the table
    square_row = next(line for line in final.splitlines() if " square " in line)
    cells = [cell.strip() for cell in square_row.split("│")[1:-1]]
    assert cells[:5] == ["square", "300", "0", "0", "300"], square_row  # task done failed active total
    explode_row = next(line for line in final.splitlines() if " explode " in line)
    cells = [cell.strip() for cell in explode_row.split("│")[1:-1]]
    assert cells[:5] == ["explode", "0", "3", "0", "3"], explode_row
    assert "Beginning flow run" in out  # log lines still printed


def test_progress_is_off_with_the_variable(script: Path) -> None:
    out = _run_on_terminal(script, _env(FLOWCORE_PROGRESS="0"))
    assert "result (8955050, 3)" in out
    assert "active" not in out and "flow run 'squares-" not in out


def test_no_progress_when_not_a_terminal(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=120, check=True
    )
    assert "result (8955050, 3)" in done.stdout
    assert "active" not in done.stderr and "\x1b[" not in done.stderr


def test_flowcore_run_progress_flag_turns_it_on_despite_the_variable(script: Path) -> None:
    launcher = script.parent / "launch.py"
    launcher.write_text(
        "import sys\nfrom flowcore.cli import main\n"
        f"sys.exit(main(['run', {str(script) + ':squares'!r}, '--param', 'n=50', '--progress']))\n"
    )
    out = _run_on_terminal(launcher, _env(FLOWCORE_PROGRESS="0"))
    assert "active" in out and "flow run 'squares-" in out


ROWS = textwrap.dedent(
    """
    from flowcore import flow, task

    @task
    def inc(x):
        return x + 1

    @flow(backend="threads")
    def rows(n):
        for future in inc.map(range(n)):
            print(f"row,{future.result()}")

    if __name__ == "__main__":
        rows(5)
    """
)


def test_prints_to_a_redirected_stdout_stay_in_its_file(tmp_path: Path) -> None:
    """``python flow.py > rows.csv`` on a terminal: the display is on stderr, and what
    the flow prints to stdout still goes to the file, not to the terminal."""
    script = tmp_path / "rows.py"
    script.write_text(ROWS)
    saved = tmp_path / "rows.csv"
    out = _run_on_terminal(script, _env(), stdout=saved)
    assert "flow run 'rows-" in out  # the display ran, on the terminal
    assert saved.read_text().splitlines() == [f"row,{i}" for i in range(1, 6)]
    assert "row," not in out


CHATTY = textwrap.dedent(
    """
    import time
    from flowcore import flow, task

    @task
    def say(i):
        print(f"line {i:05d} from a task")
        return i

    @flow(backend="threads", log_prints=True)
    def chatty(n):
        started = time.monotonic()
        total = sum(f.result() for f in say.map(range(n)))
        return total, time.monotonic() - started

    if __name__ == "__main__":
        total, seconds = chatty(2000)
        print(f"seconds {seconds:.3f}")
    """
)


def test_many_log_lines_redraw_the_table_at_most_ten_times_a_second(tmp_path: Path) -> None:
    """Each log line printed through the display must not redraw the table: the lines
    of a refresh are printed together, above one drawing. All lines arrive, whole and
    in order."""
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    out = _run_on_terminal(script, _env())
    seconds = float(out.rsplit("seconds ", 1)[1].split()[0])
    drawings = out.count("flow run 'chatty-")
    assert drawings <= 10 * seconds + 3, (drawings, seconds)
    shown = plain(out)
    numbers = [int(line.split("line ", 1)[1][:5]) for line in shown.splitlines() if "from a task" in line]
    assert sorted(numbers) == list(range(2000))


RAW = textwrap.dedent(
    """
    import sys
    from flowcore import flow, task

    @task
    def inc(x):
        return x + 1

    @flow(backend="threads")
    def raw(n):
        total = sum(f.result() for f in inc.map(range(n)))
        sys.stdout.buffer.write(b"raw bytes on stdout\\n")
        sys.stdout.buffer.flush()
        print("stdout encoding", sys.stdout.encoding, "line_buffering", sys.stdout.line_buffering)
        return total

    if __name__ == "__main__":
        print("result", raw(5))
    """
)


def test_what_flows_use_of_the_standard_streams_still_works_under_the_display(tmp_path: Path) -> None:
    """Libraries write bytes to ``sys.stdout.buffer`` and read its attributes: the
    display's stand-in streams pass what they do not handle to the real ones."""
    script = tmp_path / "raw.py"
    script.write_text(RAW)
    out = _run_on_terminal(script, _env())
    assert "flow run 'raw-" in out  # the display ran
    assert "raw bytes on stdout" in out and "result 15" in out
    assert "stdout encoding utf-8 line_buffering" in out.replace("UTF-8", "utf-8"), out


LATE = textwrap.dedent(
    """
    import logging, sys
    from flowcore import flow, task

    @task
    def inc(x):
        return x + 1

    handler = None

    @flow(backend="threads")
    def late(n):
        global handler
        handler = logging.StreamHandler()  # made while the display runs: binds its sys.stderr
        stdout = sys.stdout
        total = sum(f.result() for f in inc.map(range(n)))
        return total, stdout

    if __name__ == "__main__":
        total, stdout_then = late(5)
        logger = logging.getLogger("app")
        logger.addHandler(handler)
        logger.warning("logged after the flow through a handler made in it")
        print("printed after the flow through the stdout of the flow", file=stdout_then)
        print("result", total)
    """
)


def test_streams_kept_from_inside_the_flow_still_write_after_it(tmp_path: Path) -> None:
    """A handler or a reference to sys.stdout taken while the display ran keeps the
    display's stand-in stream: once the display is gone, what is written there goes
    to the terminal."""
    script = tmp_path / "late.py"
    script.write_text(LATE)
    out = _run_on_terminal(script, _env())
    assert "flow run 'late-" in out  # the display ran
    assert "result 15" in out
    assert "logged after the flow through a handler made in it" in out
    assert "printed after the flow through the stdout of the flow" in out


def test_progress_flag_without_rich_says_what_to_install(script: Path) -> None:
    """``flowcore run --progress`` asks for the display: without rich, one line says
    why there is none and how to get it; the flow still runs."""
    launcher = script.parent / "launch_without_rich.py"
    launcher.write_text(
        "import sys\nsys.modules['rich'] = None\nfrom flowcore.cli import main\n"
        f"sys.exit(main(['run', {str(script) + ':squares'!r}, '--param', 'n=5', '--progress']))\n"
    )
    out = _run_on_terminal(launcher, _env())
    assert "flow run 'squares-" not in out  # no display
    assert "(30, 3)" in out
    (line,) = [line for line in out.splitlines() if "--progress" in line]
    assert 'pip install "flowcore[progress]"' in line, line
