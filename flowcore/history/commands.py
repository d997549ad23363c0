"""``flowcore runs ls | show | logs | rm``: read the run history from the command line.

Run ids may be given by any unique prefix (or as the run's name). ``--json`` prints
one JSON document with stable keys (see :meth:`FlowRunRecord.to_json` and
:meth:`TaskRunRecord.to_json`). Tables use rich when it is installed (``flowcore[progress]``)
and plain text otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from flowcore.errors import ConfigurationError, HistoryError
from flowcore.history.formatting import duration, local_time, run_duration
from flowcore.history.records import FlowRunRecord, LogRecord, TaskRunRecord
from flowcore.history.settings import HistorySettings, history_settings, parse_age, parse_since
from flowcore.history.store import HistoryStore, RunDetail

STATE_STYLES = {
    "COMPLETED": "green",
    "FAILED": "red",
    "CRASHED": "bold magenta",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "PENDING": "dim",
}
#: task runs listed by ``runs show`` (all of them are in ``--json``)
SHOW_TASKS = 200
#: failed task runs whose tracebacks ``runs show`` prints
SHOW_TRACEBACKS = 5
#: the state names runs are recorded in (see flowcore.states), in the order tables list them
STATE_NAMES = ("Completed", "Cached", "Resumed", "Running", "Pending", "Failed", "TimedOut", "NotRun",
               "Crashed", "Cancelled")
TIMELINE_WIDTH = 60
FOLLOW_POLL_S = 0.5
#: how long ``--follow`` keeps looking for records once the run is final and quiet
FOLLOW_GRACE_S = 2.0


# -- opening ---------------------------------------------------------------------------


def open_for_cli(settings: HistorySettings | None = None) -> HistoryStore:
    """The configured store; an SQLite file in a directory this user cannot write is
    opened read-only (crashed runs are then shown, not recorded)."""
    from flowcore.history.store import open_store

    chosen = settings if settings is not None else history_settings()
    try:
        return open_store(chosen)
    except HistoryError:
        if chosen.store != "sqlite":
            raise
        from flowcore.history.sqlite import FILE_NAME, SQLiteStore

        path = chosen.store_options().get("path") or chosen.home / FILE_NAME
        try:
            return SQLiteStore(path, readonly=True)
        except HistoryError:
            pass
        raise


# -- formatting -----------------------------------------------------------------------





def _counts(counts: dict[str, int]) -> str:
    order = STATE_NAMES
    names = sorted(counts, key=lambda n: (order.index(n) if n in order else len(order), n))
    return ", ".join(f"{counts[n]} {n}" for n in names) or "-"


def _rich() -> Any:
    try:
        import rich.console
        import rich.table
    except ImportError:
        return None
    return rich


def _print_table(headers: Sequence[str], rows: list[list[str]], styles: list[str | None] | None = None,
                 state_column: int | None = None, title: str | None = None, *,
                 wrap: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
    """Print a table: with rich, cells stay whole (only the last column and those in
    ``wrap`` wrap, at spaces); on a terminal too narrow for it, the columns in
    ``optional`` are left out, in that order, until it fits."""
    rich = _rich()
    if rich is not None:
        from rich.table import Table
        from rich.text import Text

        console = _console()
        shown = list(range(len(headers)))
        while True:
            table = Table(title=title, box=rich.box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for i in shown:
                header = headers[i]
                wraps = header == headers[-1] or header in wrap
                table.add_column(header, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")
            for index, row in enumerate(rows):
                cells: list[Any] = [row[i] for i in shown]
                if state_column in shown and styles is not None and styles[index]:
                    assert state_column is not None
                    cells[shown.index(state_column)] = Text(row[state_column], style=styles[index] or "")
                table.add_row(*cells)
            droppable = [i for i in shown if headers[i] in optional]
            if not droppable or _least_width(headers, rows, shown, wrap) <= console.width:
                break
            shown.remove(min(droppable, key=lambda i: list(optional).index(headers[i])))
        console.print(table)
        return
    if title:
        print(title)
    widths = [max(len(str(r[i])) for r in [list(headers), *rows]) for i in range(len(headers))]
    for row in [list(headers), *rows]:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _least_width(headers: Sequence[str], rows: list[list[str]], shown: list[int], wrap: Sequence[str]) -> int:
    """The width of the table of columns ``shown`` with each cell whole: the columns
    that wrap as wide as their longest word, three characters between columns."""
    from rich.cells import cell_len

    total = 3 * (len(shown) - 1)
    for i in shown:
        wraps = headers[i] == headers[-1] or headers[i] in wrap
        texts = [headers[i], *(row[i] for row in rows)]
        pieces = [word for text in texts for word in text.split()] if wraps else texts
        total += max((cell_len(piece) for piece in pieces), default=0)
    return total


def _console() -> Any:
    """A rich console; printing to a pipe, as wide as the table needs (not 80 columns)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=240)
    return console


def _style(state_type: str) -> str | None:
    return STATE_STYLES.get(state_type)


# -- ls --------------------------------------------------------------------------------


def check_state(text: str) -> str:
    """``text`` when it names a state or a state type (any case); ConfigurationError
    naming the choices (and the closest one) otherwise."""
    from flowcore.states import StateType

    if text.lower() in {name.lower() for name in (*STATE_NAMES, *StateType)}:
        return text
    import difflib

    close = difflib.get_close_matches(text.lower(), [name.lower() for name in STATE_NAMES], n=1)
    hint = f" (did you mean {STATE_NAMES[[n.lower() for n in STATE_NAMES].index(close[0])]!r}?)" if close else ""
    raise ConfigurationError(
        f"--state: unknown state {text!r}{hint}; use a state name ({', '.join(STATE_NAMES)}) "
        f"or a type ({', '.join(StateType)}), in any case"
    )


def _ls(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    if args.state is not None:
        check_state(args.state)
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError("--limit must be at least 1")
    store = open_for_cli()
    try:
        runs = store.list_runs(flow=args.flow, state=args.state, since=since, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([run.to_json() for run in runs], indent=2))
        return 0
    if not runs:
        print(f"no flow runs recorded in {store.location} match", file=sys.stderr)
        return 0
    rows = [
        [run.id[:8], run.flow, run.name, run.state, local_time(run.start), run_duration(run),
         run.backend or "-", _counts(run.task_counts)]
        for run in runs
    ]
    _print_table(
        ("ID", "FLOW", "NAME", "STATE", "START", "DURATION", "BACKEND", "TASKS"), rows,
        [_style(run.state_type) for run in runs], state_column=3,
        wrap=("START",), optional=("NAME", "BACKEND"),
    )
    return 0


# -- show ------------------------------------------------------------------------------


def detail_to_json(detail: RunDetail) -> dict[str, Any]:
    """The stable JSON document of ``flowcore runs show --json``."""
    run = detail.run
    document = run.to_json()
    document["parameters"] = run.parameters
    document["backend_options"] = run.backend_options
    document["error"] = (
        {"type": run.error_type, "message": run.error_message, "traceback": run.traceback}
        if run.error_type or run.error_message else None
    )
    document["states"] = [state.to_json() for state in run.states]
    document["task_runs"] = [task.to_json() for task in detail.task_runs]
    return document


#: characters of a kept result's repr shown by ``runs show --results``
RESULT_REPR_LIMIT = 200


def _result_repr(location: dict[str, str]) -> str:
    """The repr of a kept result (truncated), or why it cannot be read."""
    from flowcore.results import load_location

    try:
        text = repr(load_location((location["storage"], location["key"])))
    except Exception as exc:
        return f"<not readable: {type(exc).__name__}: {exc}>"
    if len(text) > RESULT_REPR_LIMIT:
        text = text[: RESULT_REPR_LIMIT - 3] + "..."
    return text


def _show(args: argparse.Namespace) -> int:
    store = open_for_cli()
    try:
        detail = store.get_run(args.run_id)
    finally:
        store.close()
    if args.json:
        document = detail_to_json(detail)
        if args.results:
            for task_json, task in zip(document["task_runs"], detail.task_runs, strict=True):
                if task.result is not None:
                    task_json["result"]["repr"] = _result_repr(task.result)
        print(json.dumps(document, indent=2))
        return 0
    run, tasks = detail.run, detail.task_runs
    rich = _rich()
    state_text = run.state + (f" ({run.message})" if run.message else "")
    if rich is not None:
        from rich.text import Text

        state_line = Text("state:      ")
        state_line.append(state_text, style=_style(run.state_type) or "")
        console = _console()
        console.print(Text(f"flow run:   {run.name} ({run.id})"), soft_wrap=True)
        console.print(state_line, soft_wrap=True)
    else:
        print(f"flow run:   {run.name} ({run.id})")
        print(f"state:      {state_text}")
    print(f"flow:       {run.flow}")
    print(f"start:      {local_time(run.start)}")
    print(f"end:        {local_time(run.end)}")
    print(f"duration:   {run_duration(run)}")
    print(f"backend:    {run.backend or '-'}" + (f" {json.dumps(run.backend_options, ensure_ascii=False)}" if run.backend_options else ""))
    print(f"process:    pid {run.pid} on {run.host}")
    print(f"attempts:   {run.attempts}")
    if run.parent_id:
        print(f"parent run: {run.parent_id}")
    print(f"tasks:      {_counts(run.task_counts)}")
    print("parameters:")
    for name, value in run.parameters.items():
        print(f"  {name} = {json.dumps(value, ensure_ascii=False)}")
    if run.states:
        print("states:")
        for state in run.states:
            attempt = f" (attempt {state.attempt})" if state.attempt else ""
            message = f": {state.message}" if state.message else ""
            print(f"  {local_time(state.timestamp)}  {state.name}{attempt}{message}")
    if tasks:
        shown = tasks[:SHOW_TASKS]
        rows = [
            [t.id, t.name, t.state, str(t.attempts), run_duration(t), str(t.worker) if t.worker else "-"]
            for t in shown
        ]
        print()
        _print_table(
            ("TASK RUN ID", "NAME", "STATE", "ATTEMPTS", "DURATION", "WORKER"), rows,
            [_style(t.state_type) for t in shown], state_column=2,
        )
        if len(tasks) > len(shown):
            print(f"... and {len(tasks) - len(shown)} more task runs (flowcore runs show {run.id[:8]} --json lists all)")
        print()
        for line in timeline(run, tasks):
            print(line)
    if args.results:
        kept = [t for t in tasks if t.result is not None]
        print()
        if not kept:
            print("results:    none kept (run tasks with persist_result=True to keep them)")
        else:
            print("results:")
            for task in kept:
                assert task.result is not None
                print(f"  {task.name} ({task.id}): {_result_repr(task.result)}")
    if run.traceback and run.state_type != "COMPLETED":
        print()
        print(f"flow run failed: {run.error_type}: {run.error_message}")
        print(run.traceback.rstrip())
    failed = [t for t in tasks if t.state_type in ("FAILED", "CRASHED") and (t.traceback or t.error_message)]
    for task in failed[:SHOW_TRACEBACKS]:
        print()
        print(f"task run {task.name} ({task.id}) {task.state}: {task.error_type}: {task.error_message}")
        if task.traceback:
            print(task.traceback.rstrip())
    if len(failed) > SHOW_TRACEBACKS:
        print(f"\n... and {len(failed) - SHOW_TRACEBACKS} more failed task runs (see --json)")
    return 0


def timeline(run: FlowRunRecord, tasks: Sequence[TaskRunRecord], width: int = TIMELINE_WIDTH) -> list[str]:
    """A text timeline: one line per worker, ``#`` where it ran a task run that
    completed, ``x`` where one failed, over the flow run's span."""
    timed = [t for t in tasks if t.start is not None and t.end is not None]
    if not timed:
        return []
    begin = min([t.start for t in timed if t.start is not None] + ([run.start] if run.start else []))
    finish = max([t.end for t in timed if t.end is not None] + ([run.end] if run.end else []))
    span = max(finish - begin, 1e-6)
    lanes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for task in timed:
        assert task.start is not None and task.end is not None
        label = str(task.worker) if task.worker else "(unknown worker)"
        lane = lanes.setdefault(label, [" "] * width)
        counts[label] = counts.get(label, 0) + 1
        first = min(width - 1, int((task.start - begin) / span * width))
        last = min(width - 1, max(first, int((task.end - begin) / span * width)))
        mark = "#" if task.state_type == "COMPLETED" else "x"
        for position in range(first, last + 1):
            if lane[position] != "x":
                lane[position] = mark
    label_width = min(48, max(len(label) for label in lanes))
    lines = [f"timeline ({duration(span)} from {local_time(begin)}; # ran, x failed):"]
    for label in sorted(lanes):
        shown = label if len(label) <= label_width else "..." + label[-(label_width - 3):]
        lines.append(f"  {shown.ljust(label_width)} |{''.join(lanes[label])}| {counts[label]} runs")
    return lines


# -- logs ------------------------------------------------------------------------------


def _level(text: str | None) -> int:
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    value = logging.getLevelName(text.upper())
    if not isinstance(value, int):
        raise ConfigurationError(f"--level: unknown level {text!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _format_log(record: LogRecord, run_name: str) -> str:
    origin = f"Task run {record.task_run_name!r}" if record.task_run_name else f"Flow run {run_name!r}"
    return f"{local_time(record.timestamp)}.{int((record.timestamp % 1) * 1000):03d} | {record.level_name:<7} | {origin} - {record.message}"


def _check_task(task: str, run: FlowRunRecord, tasks: Sequence[TaskRunRecord]) -> None:
    """ConfigurationError when ``run`` (final) has no task run of the task or with the
    run name ``task``: naming the tasks it ran."""
    if any(task in (t.task, t.name) for t in tasks):
        return
    ran = sorted({t.task for t in tasks})
    raise ConfigurationError(
        f"--task: flow run {run.name} has no task runs of task {task!r} (nor one named so); "
        + (f"its tasks: {', '.join(ran)}" if ran else "it ran no task runs")
    )


def _logs(args: argparse.Namespace) -> int:
    level = _level(args.level)
    if args.follow and args.json:
        raise ConfigurationError("--follow prints lines as they come; drop --json to follow")
    store = open_for_cli()
    try:
        run = store.get_flow_run(args.run_id)
        run_id, name = run.id, run.name
        records = store.logs(run_id, level=level, task=args.task)
        if args.task and not records and run.is_final():
            _check_task(args.task, run, store.get_run(run_id).task_runs)
        if args.json:
            print(json.dumps([r.to_json() for r in records], indent=2))
            return 0
        for record in records:
            print(_format_log(record, name), flush=True)
        if not args.follow:
            return 0
        if run.is_final() and run.end is not None and time.time() - run.end >= FOLLOW_GRACE_S:
            return 0  # its last lines were written long ago: nothing to wait for
        last = records[-1].id if records else 0
        quiet_since_final = 0.0
        try:
            while True:
                finished = store.get_flow_run(run_id).is_final()
                more = store.logs(run_id, after_id=last, level=level, task=args.task)
                for record in more:
                    print(_format_log(record, name), flush=True)
                if more:
                    last = more[-1].id
                    quiet_since_final = 0.0
                elif finished:
                    # A run logs its last lines ("Finished in state ...") just after its
                    # final state is recorded: wait a moment for them before ending.
                    if quiet_since_final >= FOLLOW_GRACE_S:
                        return 0
                    quiet_since_final += FOLLOW_POLL_S
                time.sleep(FOLLOW_POLL_S)
        except KeyboardInterrupt:
            return 130
    finally:
        store.close()


# -- rm --------------------------------------------------------------------------------


def _rm(args: argparse.Namespace) -> int:
    seconds = parse_age(args.older_than, "--older-than")
    store = open_for_cli()
    sizes: tuple[int, int] | None = None
    try:
        deleted = store.delete_older_than(time.time() - seconds)
        if args.vacuum:
            try:
                sizes = store.compact()
            except NotImplementedError as exc:
                print(f"flowcore: {exc}", file=sys.stderr)
                return 2
    finally:
        store.close()
    if args.json:
        report: dict[str, Any] = {"deleted_flow_runs": deleted, "older_than": args.older_than}
        if sizes is not None:
            report["bytes_before"], report["bytes_after"] = sizes
        print(json.dumps(report))
        return 0
    print(f"deleted {deleted} flow run{'s' if deleted != 1 else ''} older than {args.older_than} "
          f"(with their task runs, states and logs) from {store.location}")
    if sizes is not None:
        print(f"compacted {store.location}: {_megabytes(sizes[0])} -> {_megabytes(sizes[1])}")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _quiet_on_closed_pipe(handler: Any) -> Any:
    """``flowcore runs ls | head``: stop quietly when the reader goes away."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except BrokenPipeError:
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail
            return 0

    return run


def add_commands(commands: Any) -> None:
    """Register ``runs`` and its subcommands on the CLI's subparsers."""
    runs = commands.add_parser("runs", help="the run history: list runs, show one, its logs, remove old ones")
    actions = runs.add_subparsers(dest="runs_command", required=True)

    ls = actions.add_parser("ls", help="list flow runs, newest first")
    ls.add_argument("--flow", help="only runs of this flow name")
    ls.add_argument("--state", help="only runs in this state (name or type: Completed, Failed, Crashed, Running ...)")
    ls.add_argument("--since", help="only runs started since: an age (2d, 12h) or a date (2026-12-01)")
    ls.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    ls.add_argument("--json", action="store_true", help="print one JSON list")
    ls.set_defaults(handler=_quiet_on_closed_pipe(_ls))

    show = actions.add_parser("show", help="one flow run: parameters, states, task runs, timeline, tracebacks")
    show.add_argument("run_id", metavar="RUN_ID", help="a flow run id, a unique prefix of one, or a run name")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.add_argument(
        "--results", action="store_true",
        help="load and print each kept result (persist_result=True), its repr truncated to 200 characters",
    )
    show.set_defaults(handler=_quiet_on_closed_pipe(_show))

    logs = actions.add_parser("logs", help="the log records of a flow run and its task runs")
    logs.add_argument("run_id", metavar="RUN_ID", help="a flow run id, a unique prefix of one, or a run name")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new records until the run ends")
    logs.add_argument("--level", help="only records at this level or above (DEBUG, INFO, WARNING, ERROR)")
    logs.add_argument("--task", help="only records of task runs of this task (or this task run name)")
    logs.add_argument("--json", action="store_true", help="print one JSON list")
    logs.set_defaults(handler=_quiet_on_closed_pipe(_logs))

    rm = actions.add_parser("rm", help="delete runs that ended long ago")
    rm.add_argument("--older-than", required=True, metavar="AGE", help="an age: 30d, 12h, 1w ...")
    rm.add_argument(
        "--vacuum", action="store_true",
        help="then compact the database file (SQLite VACUUM): deleting runs alone leaves the file its size",
    )
    rm.add_argument("--json", action="store_true", help="print JSON")
    rm.set_defaults(handler=_quiet_on_closed_pipe(_rm))


__all__ = ["add_commands", "detail_to_json", "open_for_cli", "timeline"]
