"""``flowcore cache ls | info | clear [--task NAME] | prune``: look after a cache store.

Works on the store runs use by default here (see :mod:`flowcore.caching.storage`), or on
the file store in ``--dir``. A store without listing or maintenance methods says so.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any


def _store(args: argparse.Namespace) -> Any:
    from flowcore.caching.storage import resolve_store

    return resolve_store(str(args.dir) if args.dir else None)


def _needs(store: Any, method: str) -> Any:
    found = getattr(store, method, None)
    if not callable(found):
        raise SystemExit(f"flowcore cache: the store {store!r} does not support {method}()")
    return found


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} B"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _ls(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = [e for e in _needs(store, "entries")() if args.task is None or e.task == args.task]
    entries.sort(key=lambda e: e.created)
    if args.json:
        print(json.dumps([
            {"key": e.key, "task": e.task, "size": e.size, "created": e.created,
             "expires": e.expires, "expired": e.expired}
            for e in entries
        ], indent=2))
        return 0
    rows = [("KEY", "TASK", "SIZE", "CREATED", "EXPIRES")]
    rows += [
        (e.key[:16], e.task, _size(e.size), _when(e.created), "expired" if e.expired else _when(e.expires))
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {store!r}")
    return 0


def _info(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = list(_needs(store, "entries")())
    by_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in entries:
        by_task[entry.task][0] += 1
        by_task[entry.task][1] += entry.size
    summary = {
        "store": repr(store),
        "entries": len(entries),
        "bytes": sum(e.size for e in entries),
        "expired": sum(1 for e in entries if e.expired),
        "tasks": {task: {"entries": n, "bytes": size} for task, (n, size) in sorted(by_task.items())},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"store:   {summary['store']}")
    print(f"entries: {summary['entries']} ({_size(summary['bytes'])}), {summary['expired']} expired")
    for task, (n, size) in sorted(by_task.items()):
        print(f"  {task}: {n} entr{'y' if n == 1 else 'ies'}, {_size(size)}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    store = _store(args)
    removed = _needs(store, "clear")(args.task)
    what = f" of task {args.task!r}" if args.task else ""
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}{what} from {store!r}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    store = _store(args)
    report = _needs(store, "prune")()
    print(
        f"pruned {report.total} file(s) from {store!r}: {report.expired} expired, "
        f"{report.corrupt} corrupt, {report.temporary} stale temporary"
    )
    return 0


def add_commands(commands: Any) -> None:
    """Register ``cache`` and its subcommands on the CLI's subparsers."""
    cache = commands.add_parser("cache", help="list, inspect, clear and prune the task cache")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    for name, handler, text in (
        ("ls", _ls, "list entries"),
        ("info", _info, "entry count, size and expired entries, by task"),
        ("clear", _clear, "remove entries (all, or one task's)"),
        ("prune", _prune, "remove expired and corrupt entries and stale temporary files"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--dir", help="a cache directory (default: the configured store)")
        if name in ("ls", "clear"):
            action.add_argument("--task", help="only the entries of this task name")
        if name in ("ls", "info"):
            action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(handler=handler)


__all__ = ["add_commands"]
