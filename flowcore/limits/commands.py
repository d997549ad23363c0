"""``flowcore concurrency-limit create TAG N | ls [--json] | inspect TAG [--json] | rm TAG``.

Limits live in ``history.db`` (see :mod:`flowcore.limits.store`); ``ls`` and
``inspect`` show the live holders of each tag's slots (holders whose process is
gone are released first).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from flowcore.limits.store import ConcurrencyLimit, LimitStore, store_path


def _open() -> LimitStore:
    return LimitStore(store_path())


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _create(args: argparse.Namespace) -> int:
    store = _open()
    try:
        limit = store.set_limit(args.tag, args.limit)
    finally:
        store.close()
    print(f"concurrency limit of tag {limit.tag!r}: {limit.slots} (in {store.path})")
    return 0


def _ls(args: argparse.Namespace) -> int:
    store = _open()
    try:
        limits = store.limits()
    finally:
        store.close()
    if args.json:
        print(json.dumps([limit.to_json() for limit in limits], indent=2))
        return 0
    if not limits:
        print("no concurrency limits (create one: flowcore concurrency-limit create TAG N)")
        return 0
    rows = [["TAG", "LIMIT", "ACTIVE", "UPDATED"]]
    rows += [[lim.tag, str(lim.slots), str(lim.active), _when(lim.updated)] for lim in limits]
    _print(rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    store = _open()
    try:
        limit = store.get(args.tag)
    finally:
        store.close()
    if args.json:
        print(json.dumps(limit.to_json(), indent=2))
        return 0
    _describe(limit)
    return 0


def _describe(limit: ConcurrencyLimit) -> None:
    print(f"tag {limit.tag!r}: limit {limit.slots}, {limit.active} slot(s) taken")
    if not limit.holders:
        return
    rows = [["HOLDER", "SLOTS", "PID", "HOST", "SINCE", "HELD BY"]]
    rows += [
        [h.holder, str(h.occupy), str(h.pid), h.host, _when(h.acquired), h.label]
        for h in limit.holders
    ]
    _print(rows)


def _rm(args: argparse.Namespace) -> int:
    store = _open()
    try:
        store.remove(args.tag)
    finally:
        store.close()
    print(f"removed the concurrency limit of tag {args.tag!r}")
    return 0


def _print(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0 blocks every run), got {value}")
    return value


def add_commands(commands: Any) -> None:
    """Add ``concurrency-limit`` to the ``flowcore`` parser's subcommands."""
    parser = commands.add_parser(
        "concurrency-limit", help="limit how many runs with a tag run at once on this machine"
    )
    sub = parser.add_subparsers(dest="limit_command", required=True)
    create = sub.add_parser("create", help="create (or change) the limit of a tag")
    create.add_argument("tag")
    create.add_argument("limit", type=_count, help="runs at once (0 blocks every run with the tag)")
    create.set_defaults(handler=_create)
    listing = sub.add_parser("ls", help="list the limits and their active slots")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_ls)
    inspect = sub.add_parser("inspect", help="show a limit and who holds its slots")
    inspect.add_argument("tag")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    remove = sub.add_parser("rm", aliases=["delete"], help="delete the limit of a tag (alias: delete, Prefect's name)")
    remove.add_argument("tag")
    remove.set_defaults(handler=_rm)


__all__ = ["add_commands"]
