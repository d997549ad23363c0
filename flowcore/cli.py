"""The ``flowcore`` command line.

* ``flowcore backends``: registered backends with kind, plugin and description.
* ``flowcore run PATH_OR_MODULE:FLOW [--backend NAME] [--params JSON]``: run a flow.
* ``flowcore version``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowcore.errors import FlowcoreError


def _backends(args: argparse.Namespace) -> int:
    from flowcore.registry import get_registry

    table = get_registry().backends()
    rows = []
    for name, entry in table.items():
        missing = entry.spec.missing_requirements()
        if missing:
            fix = f'pip install "flowcore[{entry.spec.extra}]"' if entry.spec.extra else "install " + ", ".join(missing)
            status = f"missing {', '.join(missing)} ({fix})"
        else:
            status = "ready"
        rows.append((name, str(entry.spec.kind), entry.plugin, status, entry.spec.description))
    if args.json:
        keys = ("name", "kind", "plugin", "status", "description")
        print(json.dumps([dict(zip(keys, row, strict=False)) for row in rows], indent=2))
        return 0
    headers = ("NAME", "KIND", "PLUGIN", "STATUS", "DESCRIPTION")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(4)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def _load_flow(target: str) -> Any:
    if ":" not in target:
        raise SystemExit(f"flowcore run: expected PATH.py:FLOW or MODULE:FLOW, got {target!r}")
    location, _, attribute = target.rpartition(":")
    if location.endswith(".py") or Path(location).is_file():
        path = Path(location).resolve()
        if not path.is_file():
            raise SystemExit(f"flowcore run: no such file {location!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"flowcore run: cannot import {location!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"flowcore run: {location!r} has no attribute {attribute!r}") from None


def _run(args: argparse.Namespace) -> int:
    from flowcore.flows import Flow

    flow_obj = _load_flow(args.target)
    if not isinstance(flow_obj, Flow):
        raise SystemExit(f"flowcore run: {args.target!r} is a {type(flow_obj).__name__}, not a @flow")
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"flowcore run: --params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise SystemExit("flowcore run: --params must be a JSON object, e.g. '{\"n\": 10}'")
    if args.backend:
        flow_obj = flow_obj.with_options(backend=args.backend)
    state = flow_obj(**params, return_state=True)
    if state.is_completed():
        if state.data is not None:
            print(repr(state.data))
        return 0
    return 1


def _version(args: argparse.Namespace) -> int:
    import flowcore

    print(f"flowcore {flowcore.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowcore", description="flowcore: flows and tasks on interchangeable backends")
    commands = parser.add_subparsers(dest="command", required=True)
    backends = commands.add_parser("backends", help="list the registered backends")
    backends.add_argument("--json", action="store_true", help="print JSON instead of a table")
    backends.set_defaults(handler=_backends)
    run = commands.add_parser("run", help="run a flow: PATH.py:FLOW or MODULE:FLOW")
    run.add_argument("target")
    run.add_argument("--backend", help="backend name (overrides configuration)")
    run.add_argument("--params", help="flow parameters as a JSON object")
    run.set_defaults(handler=_run)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FlowcoreError as exc:
        print(f"flowcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
