"""``flowcore cache ls | info | clear [--task NAME] | prune``: look after a cache store.

Works on the store runs use by default here (see :mod:`flowcore.caching.storage`), or on
the file store in ``--dir``. A store without listing or maintenance methods says so.
``ls`` and ``info`` list corrupt entries too, marked with the reason (header and
metadata are checked; ``--verify`` also checks every payload's checksum).
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


def _entries(store: Any, args: argparse.Namespace) -> list[Any]:
    """The store's entries, corrupt ones included; ``--verify`` checks each one whole."""
    entries = _needs(store, "entries")
    if not args.verify:
        return list(entries())
    try:
        listing = entries(verify=True)
    except TypeError:
        raise SystemExit(
            f"flowcore cache: the store {store!r} cannot verify its entries; run without --verify"
        ) from None
    return list(listing)


def _corrupt_note(count: int) -> str:
    if not count:
        return ""
    them = "it" if count == 1 else "them"
    return f" ({count} corrupt: `flowcore cache prune` removes {them})"


def _ls(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = [e for e in _entries(store, args) if args.task is None or e.task == args.task]
    entries.sort(key=lambda e: e.created)
    if args.json:
        listing = [
            {
                "key": e.key,
                "task": e.task,
                "size": e.size,
                "created": e.created,
                "expires": e.expires,
                "expired": e.expired,
                "corrupt": getattr(e, "corrupt", None),
                "path": getattr(e, "path", None),
            }
            for e in entries
        ]
        print(json.dumps(listing, indent=2))
        return 0
    rows = [("KEY", "TASK", "SIZE", "CREATED", "EXPIRES")]
    rows += [
        (e.key[:16], e.task or "-", _size(e.size), _when(e.created), _expiry(e)) for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    corrupt = sum(1 for e in entries if getattr(e, "corrupt", None))
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    print(f"{count}{_corrupt_note(corrupt)} in {store!r}")
    return 0


def _expiry(entry: Any) -> str:
    reason = getattr(entry, "corrupt", None)
    if reason:
        return f"corrupt: {reason}"
    return "expired" if entry.expired else _when(entry.expires)


def _info(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = _entries(store, args)
    corrupt = [e for e in entries if getattr(e, "corrupt", None)]
    intact = [e for e in entries if not getattr(e, "corrupt", None)]
    by_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in intact:
        by_task[entry.task][0] += 1
        by_task[entry.task][1] += entry.size
    summary = {
        "store": repr(store),
        "entries": len(entries),
        "bytes": sum(e.size for e in entries),
        "expired": sum(1 for e in intact if e.expired),
        "corrupt": len(corrupt),
        "tasks": {
            task: {"entries": n, "bytes": size} for task, (n, size) in sorted(by_task.items())
        },
        "corrupt_entries": [
            {"key": e.key, "path": getattr(e, "path", None), "reason": e.corrupt} for e in corrupt
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"store:   {summary['store']}")
    print(
        f"entries: {summary['entries']} ({_size(summary['bytes'])}), {summary['expired']} expired, "
        f"{len(corrupt)} corrupt"
    )
    for task, (n, size) in sorted(by_task.items()):
        print(f"  {task}: {n} entr{'y' if n == 1 else 'ies'}, {_size(size)}")
    if corrupt:
        print("corrupt entries (misses; `flowcore cache prune` removes them):")
        for entry in corrupt:
            print(f"  {getattr(entry, 'path', None) or entry.key}: {entry.corrupt}")
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
            action.add_argument(
                "--verify",
                action="store_true",
                help="also verify each entry's checksum (reads every payload)",
            )
        action.set_defaults(handler=handler)


__all__ = ["add_commands"]
