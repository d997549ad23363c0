"""The ``flowcore`` command line.

* ``flowcore backends``: registered backends with kind, plugin and description.
* ``flowcore run PATH_OR_MODULE:FLOW [--backend NAME] [--backend-options JSON]
  [--params JSON] [--param NAME=VALUE ...] [--resume RUN_ID]``: run a flow; a failure's
  traceback is logged once, before the final state. ``--resume`` continues an earlier
  run (see :mod:`flowcore.results`). Ctrl-C ends any command with status 130 and one
  line (the flow run has recorded and logged how it ended).
* ``flowcore bench PATH_OR_MODULE:FLOW [--backends a,b] [--params JSON] [--repeat N]
  [--json PATH] [--plot PATH]``: compare backends on a flow (see :mod:`flowcore.bench`).
* ``flowcore cache ls | info | clear [--task NAME] | prune``: the task cache.
* ``flowcore runs ls | show RUN_ID | logs RUN_ID | rm --older-than AGE``: the run
  history (see :mod:`flowcore.history.commands`).
* ``flowcore schedule preview "CRON" | --interval 1h | --rrule RULE [--tz ZONE]
  [--start ISO] [-n N] [--json]``: the next fire times of a schedule, DST effects
  flagged (see :mod:`flowcore.schedules.commands`).
* ``flowcore deployment ls | inspect NAME | run NAME [--param k=v] [--watch] | pause |
  resume | rm | feed`` and ``flowcore worker start [--pool P] [--limit N] [--backend B]
  [--grace S] [--webhook-port PORT]`` (see :mod:`flowcore.deployments.commands`).
* ``flowcore concurrency-limit create TAG N | ls [--json] | inspect TAG [--json] | rm TAG``:
  tag concurrency limits (see :mod:`flowcore.limits`).
* ``flowcore dashboard [--host 127.0.0.1] [--port 4300] [--open]``: a web dashboard
  over the run history (see :mod:`flowcore.dashboard`; needs ``flowcore[ui]``).
* ``flowcore version``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
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
    else:
        headers = ("NAME", "KIND", "PLUGIN", "STATUS", "DESCRIPTION")
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(4)]
        for row in [headers, *rows]:
            print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    note = _configured_backend_problem(table)
    if note is not None:
        print(f"flowcore backends: warning: {note}", file=sys.stderr)
    return 0


def _configured_backend_problem(registered: Mapping[str, Any]) -> str | None:
    """What is wrong with the configured default backend (environment, pyproject.toml),
    which flows without a backend of their own use; None when nothing is."""
    from flowcore.config import configured_backend
    from flowcore.errors import ConfigurationError

    try:
        choice = configured_backend()
    except ConfigurationError as exc:
        return f"the configured backend cannot be read: {exc}"
    if choice.name in registered:
        return None
    return (
        f"{choice.source} names backend {choice.name!r}, which is not registered; flows "
        "without a backend of their own will fail until it names one of those listed"
    )


def load_flow(target: str, *, command: str = "flowcore run") -> Any:
    """The @flow named by ``PATH.py:FLOW`` or ``MODULE:FLOW``; SystemExit with a message
    naming ``command`` when it cannot be loaded or is not a flow."""
    from flowcore.flows import Flow

    found = _load_attribute(target, command)
    if not isinstance(found, Flow):
        raise SystemExit(f"{command}: {target!r} is a {type(found).__name__}, not a @flow")
    return found


def _load_attribute(target: str, command: str) -> Any:
    if ":" not in target:
        raise SystemExit(f"{command}: expected PATH.py:FLOW or MODULE:FLOW, got {target!r}")
    location, _, attribute = target.rpartition(":")
    if location.endswith(".py") or Path(location).is_file():
        path = Path(location).resolve()
        if not path.is_file():
            raise SystemExit(f"{command}: no such file {location!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"{command}: cannot import {location!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
        if sys.modules.get(path.stem) is module:  # remote workers need the file itself
            from flowcore.serialization import note_script_file

            note_script_file(path.stem, str(path))
    else:
        # MODULE:FLOW names a module of the current directory too, as with python -m
        # (the installed ``flowcore`` script's sys.path lacks it).
        here = os.getcwd()
        if "" not in sys.path and here not in sys.path:
            sys.path.insert(0, here)
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            if not exc.name or not (location == exc.name or location.startswith(exc.name + ".")):
                raise  # a module the flow's module imports: its traceback says where
            raise SystemExit(
                f"{command}: no module named {location!r} in the current directory or on sys.path "
                "(give PATH.py:FLOW or MODULE:FLOW)"
            ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"{command}: {location!r} has no attribute {attribute!r}") from None


class UsageError(Exception):
    """Bad command-line input: printed as ``flowcore run: error: ...``, exit status 2."""


def _run(args: argparse.Namespace) -> int:
    flow_obj = load_flow(args.target)
    params = parse_params(args.params, "flowcore run")
    params.update(_parse_param_pairs(args.param or [], flow_obj))
    if args.resume:
        from flowcore.results import recorded_parameters

        params = {**recorded_parameters(args.resume, flow_obj), **params}
    _check_parameters(flow_obj, params)
    if args.progress:
        import os

        from flowcore.progress import ENV_VAR

        os.environ[ENV_VAR] = "1"  # still only on a terminal
        if not _has_rich():
            print('flowcore run: --progress: the progress display needs rich: pip install "flowcore[progress]"',
                  file=sys.stderr)
    backend_options = _parse_backend_options(args.backend_options)
    if args.resume:
        from flowcore.results import resume

        if backend_options is not None:
            raise UsageError("--resume and --backend-options cannot be combined; configure the backend instead")
        if args.backend:
            flow_obj = flow_obj.with_options(backend=args.backend)
        state = resume(flow_obj, args.resume, **params, return_state=True)
    elif backend_options is None:
        if args.backend:
            flow_obj = flow_obj.with_options(backend=args.backend)
        state = flow_obj(**params, return_state=True)
    else:
        from flowcore.selection import get_backend

        # The options go to a backend made here (the configured one without --backend),
        # which this command owns and shuts down.
        try:
            made = get_backend(args.backend or None, **backend_options)
        except TypeError as exc:  # the backend does not take these options
            raise UsageError(f"--backend-options: {exc}") from None
        with made as backend:
            state = flow_obj.with_options(backend=backend)(**params, return_state=True)
    if state.is_completed():
        if state.data is not None:
            print(repr(state.data))
        return 0
    return 1


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_param_pairs(pairs: list[str], flow_obj: Any = None) -> dict[str, Any]:
    """``--param NAME=VALUE`` (repeatable). For a parameter with a type hint (on a flow
    that validates its parameters), VALUE is coerced as the flow coerces arguments:
    JSON of that type when it fits, else the text itself (``n=3`` is an int for
    ``n: int``, ``s=3`` the string "3" for ``s: str``); a value that fits neither is
    a UsageError naming the parameter and the type. Otherwise VALUE is JSON when it
    parses, else a string."""
    params: dict[str, Any] = {}
    validator = None
    if flow_obj is not None and flow_obj.options.validate_parameters and flow_obj.annotated:
        from flowcore.parameters import validator_for

        validator = validator_for(flow_obj)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param expects NAME=VALUE, got {pair!r} (e.g. --param n=10)")
        if validator is not None:
            from flowcore.errors import ParameterTypeError

            try:
                params[name] = validator.coerce_text(name, raw)
            except ParameterTypeError as exc:
                raise UsageError(f"--param {name}={raw}: {exc}") from None
            continue
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[name] = value
    return params


def _check_parameters(flow_obj: Any, params: dict[str, Any]) -> None:
    """UsageError naming an unknown or missing parameter and showing the signature."""
    signature = flow_obj.signature
    shown = f"{flow_obj.fn.__name__}{signature}"
    parameters = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for name in params:
        if name not in parameters and not takes_any:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"flow {flow_obj.name!r} has no parameter {name!r}{hint}; its signature is {shown}")
    try:
        signature.bind(**params)
    except TypeError as exc:
        missing = [
            n for n, p in parameters.items()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in params
        ]
        if missing:
            needed = ", ".join(repr(n) for n in missing)
            raise UsageError(
                f"flow {flow_obj.name!r} needs parameter {needed} (pass --param {missing[0]}=VALUE); "
                f"its signature is {shown}"
            ) from None
        raise UsageError(f"flow {flow_obj.name!r}: {exc}; its signature is {shown}") from None


def _parse_backend_options(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--backend-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise UsageError("--backend-options must be a JSON object, e.g. '{\"max_workers\": 4}'")
    return options


def parse_params(raw: str | None, command: str) -> dict[str, Any]:
    """``--params``: a JSON object (UsageError otherwise; ``command`` is kept for callers)."""
    try:
        params = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UsageError("--params must be a JSON object, e.g. '{\"n\": 10}'")
    return params


DEFAULT_BENCH_BACKENDS = ("sequential", "threads", "loky", "dask")


def _bench(args: argparse.Namespace) -> int:
    from flowcore.bench import report
    from flowcore.bench.runner import run_all
    from flowcore.registry import get_registry

    command = "flowcore bench"
    load_flow(args.target, command=command)  # fail here, not in every child
    params = parse_params(args.params, command)
    if args.repeat < 1 or args.warmup < 0:
        raise SystemExit(f"{command}: --repeat must be >= 1 and --warmup >= 0")
    registry = get_registry()
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        for name in backends:
            registry.spec(name)  # unknown or not installed: a clear error now
    else:
        table = registry.backends()
        backends = [
            b for b in DEFAULT_BENCH_BACKENDS if b in table and not table[b].spec.missing_requirements()
        ]
    if not backends:
        raise SystemExit(f"{command}: no backend to run; pass --backends")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = run_all(
        args.target, backends, params, repeat=args.repeat, warmup=args.warmup,
        timeout=args.timeout, progress=progress,
    )
    print(report.table(results))
    print(report.results_agree(results)[1])
    print(report.recommend(results))
    if args.json:
        Path(args.json).write_text(json.dumps(report.document(args.target, params, args.repeat, results), indent=2))
    if args.plot:
        report.plot(results, args.plot, title=args.target)
    return 0 if any(r.status == "ok" for r in results) else 1


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
    run.add_argument(
        "--backend-options", metavar="JSON",
        help="backend options as a JSON object, e.g. '{\"max_workers\": 4}' (for --backend, else the configured backend)",
    )
    run.add_argument("--params", metavar="JSON", help="flow parameters as a JSON object")
    run.add_argument(
        "--param", action="append", metavar="NAME=VALUE",
        help="one flow parameter (repeatable; VALUE is parsed as JSON when it parses, else a string; overrides --params)",
    )
    run.add_argument(
        "--resume", metavar="RUN_ID",
        help="continue an earlier run of this flow: its parameters (unless given), and each task run "
        "that completed with a kept result (persist_result=True) returns that result instead of running",
    )
    run.add_argument(
        "--progress", action="store_true",
        help="show the live progress display on a terminal even if FLOWCORE_PROGRESS=0 (never in a pipe or file)",
    )
    run.set_defaults(handler=_run)
    bench = commands.add_parser(
        "bench", help="run a flow on several backends and compare wall time, CPU, memory"
    )
    bench.add_argument("target", help="PATH.py:FLOW or MODULE:FLOW")
    bench.add_argument(
        "--backends",
        help="comma-separated backend names (default: those of sequential, threads, loky, dask installed here)",
    )
    bench.add_argument("--params", help="flow parameters as a JSON object")
    bench.add_argument("--repeat", type=int, default=3, help="measured runs per backend (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    bench.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per backend (default 600)"
    )
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    bench.add_argument("--plot", metavar="PATH", help="also write a bar chart (PNG; needs flowcore[plot])")
    bench.set_defaults(handler=_bench)
    from flowcore.caching.commands import add_commands as add_cache_commands

    add_cache_commands(commands)
    from flowcore.history.commands import add_commands as add_runs_commands

    add_runs_commands(commands)
    from flowcore.schedules.commands import add_commands as add_schedule_commands

    add_schedule_commands(commands)
    from flowcore.deployments.commands import add_commands as add_deployment_commands

    add_deployment_commands(commands)
    from flowcore.limits.commands import add_commands as add_limit_commands

    add_limit_commands(commands)
    from flowcore.dashboard.command import add_command as add_dashboard_command

    add_dashboard_command(commands)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flowcore.config import check_environment

    check_environment()
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"flowcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FlowcoreError as exc:
        print(f"flowcore: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``flowcore ... | head``): stop quietly, as cat does;
        # stdout now points at /dev/null so that the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, the status a shell reports for a command its pipe stopped
    except KeyboardInterrupt:
        # Ctrl-C: a flow run has recorded and logged how it ended; no traceback of
        # flowcore's internals, and the status a shell gives an interrupted command.
        print(f"flowcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
