"""``flowcore deployment ls | inspect | run | pause | resume | rm | feed`` and
``flowcore worker start``.

A deployment is addressed as ``flow-name/deployment-name`` (quote names with spaces),
by its own name where that is unique, or by id. ``--json`` prints one JSON document
(see :mod:`flowcore.deployments.views`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from flowcore.history.formatting import local_time

if TYPE_CHECKING:
    from flowcore.deployments.store import DeploymentRecord, DeploymentStore

#: seconds between looks at a watched run
WATCH_POLL_S = 0.5



def _table(headers: list[str], rows: list[list[str]]) -> None:
    from flowcore.history.commands import _print_table

    _print_table(headers, rows)


def _ls(args: argparse.Namespace) -> int:
    from flowcore.deployments.store import open_deployment_store
    from flowcore.deployments.views import describe_schedule, next_runs, summary

    with open_deployment_store() as store:
        records = store.list_deployments(pool=args.pool)
        now = time.time()
        if args.json:
            print(json.dumps([summary(store, r, now=now, next_n=1, last_n=1, feed_n=0) for r in records],
                             indent=2, default=str))
            return 0
        if not records:
            print("no deployments yet; create one with Deployment.build_from_flow(...).apply() or flow.serve(...)")
            return 0
        rows = []
        for record in records:
            last = store.runs(record.id, limit=1)
            upcoming = next_runs(record, 1, now)
            schedules = "; ".join(describe_schedule(s.schedule) for s in record.schedules) or "-"
            triggers = ", ".join(t.get("type", "?") for t in record.triggers) or "-"
            rows.append([
                record.full_name, record.work_pool, "paused" if record.paused else "active", schedules,
                local_time(upcoming[0][0], zone=True) if upcoming else "-",
                f"{last[0].state} {local_time(last[0].scheduled_time, zone=True)}" if last else "-", triggers,
            ])
        _table(["DEPLOYMENT", "POOL", "STATUS", "SCHEDULE", "NEXT RUN", "LAST RUN", "TRIGGERS"], rows)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from flowcore.deployments.store import open_deployment_store
    from flowcore.deployments.views import summary

    with open_deployment_store() as store:
        record = store.find(args.name)
        data = summary(store, record)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"{record.full_name}  (id {record.id})")
    if record.description:
        print(f"  {record.description.splitlines()[0]}")
    print(f"  flow:        {record.entrypoint}")
    print(f"  pool:        {record.work_pool}    status: {'PAUSED' if record.paused else 'active'}")
    print(f"  catchup:     {record.catchup}    overlap: {record.overlap}    "
          f"concurrency limit: {record.concurrency_limit or '-'}")
    if record.backend:
        print(f"  backend:     {record.backend} {json.dumps(record.backend_options) if record.backend_options else ''}")
    print(f"  parameters:  {json.dumps(record.parameters)}")
    if record.tags:
        print(f"  tags:        {', '.join(record.tags)}")
    for item in data["schedules"]:
        print(f"  schedule:    {item['description']}")
    for trigger in record.triggers:
        from flowcore.deployments.triggers import trigger_from_dict

        print(f"  trigger:     {trigger_from_dict(trigger).describe()}")
    from urllib.parse import quote

    print(f"  webhook:     POST /api/deployments/{quote(record.flow, safe='')}/{quote(record.name, safe='')}/runs "
          "(flowcore worker start --webhook-port PORT)")
    print()
    if data["next_runs"]:
        print("next runs:")
        for item in data["next_runs"]:
            print(f"  {local_time(item['time'], zone=True)}  ({item['wall_clock']} on the schedule's clock)  {item['schedule']}")
    elif record.paused:
        print("next runs: none (paused)")
    print()

    from flowcore.deployments.store import DeploymentRun

    runs = [DeploymentRun(**r) for r in data["last_runs"]]
    if runs:
        rows = [[r.id[:8], r.state, r.kind, local_time(r.scheduled_time, zone=True), local_time(r.start_time, zone=True), local_time(r.end_time, zone=True),
                 (r.flow_run_id or "-")[:8], r.message[:80]] for r in runs]
        _table(["RUN", "STATE", "KIND", "SCHEDULED", "STARTED", "ENDED", "FLOW RUN", "MESSAGE"], rows)
    else:
        print("no runs yet")
    if data["feed"]:
        print()
        print("trigger feed:")
        for entry in data["feed"][:10]:
            run = f" -> run {entry['run_id'][:8]}" if entry["run_id"] else ""
            reason = f": {entry['reason']}" if entry["reason"] else ""
            print(f"  {local_time(entry['timestamp'], zone=True)}  {entry['kind']:<8} {entry['outcome']}{run}{reason}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from flowcore.cli import UsageError, _parse_param_pairs, parse_params

    parameters = parse_params(args.params, "flowcore deployment run")
    parameters.update(_parse_param_pairs(args.param or []))
    from flowcore.deployments.store import open_deployment_store

    with open_deployment_store() as store:
        record = store.find(args.name)
        parameters.update(_text_for_str_parameters(record, args.param or []))
        key = f"manual:{args.idempotency_key}" if args.idempotency_key else None
        try:
            run_id, created = store.request_run(record.id, parameters, kind="manual", key=key)
        except Exception as exc:
            from flowcore.errors import DeploymentError

            if isinstance(exc, DeploymentError):
                raise UsageError(str(exc)) from None
            raise
        if args.json and not args.watch:
            print(json.dumps(store.run(run_id).to_json(), indent=2))
            return 0
        print(f"run {run_id} of {record.full_name} {'queued' if created else 'was already queued'}; "
              f"a worker on pool {record.work_pool!r} starts it (flowcore worker start --pool {record.work_pool})")
        if not store.pool_is_served(record.work_pool):
            print(f"note: no worker is running on pool {record.work_pool!r} now: the run waits until one starts "
                  f"(flowcore worker start --pool {record.work_pool})", file=sys.stderr)
        if not args.watch:
            return 0
        return _watch(store, record, run_id, args.timeout)


def _text_for_str_parameters(record: DeploymentRecord, pairs: list[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` for a parameter annotated ``str``: VALUE is the text (a
    JSON string's content when quoted), never a number JSON reads, as ``flowcore run``
    coerces it (``day=20261201`` stays "20261201")."""
    from flowcore.deployments.deployment import FlowSignature

    types = dict(FlowSignature.from_dict(record.signature).types)
    texts: dict[str, str] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        if types.get(name.strip()) != "str":
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        texts[name.strip()] = value if isinstance(value, str) else raw
    return texts


def _watch(store: DeploymentStore, record: DeploymentRecord, run_id: str, timeout: float | None) -> int:
    """Print the run's state changes and its flow run's logs until it ends; 0 when Completed."""
    seen_state = ""
    after_log = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = store.run(run_id)
        if run.state != seen_state:
            seen_state = run.state
            extra = f": {run.message}" if run.message else ""
            print(f"{local_time(time.time(), zone=True)}  {run.state}{extra}", flush=True)
        if run.flow_run_id:
            for log in store.history.logs(run.flow_run_id, after_id=after_log):
                after_log = log.id
                print(f"{local_time(log.timestamp, zone=True)}  {log.level_name:<7} {log.message}", flush=True)
        if run.is_final():
            return 0 if run.state == "Completed" else 1
        if deadline is not None and time.monotonic() > deadline:
            print(f"still {run.state} after {timeout:g} s; stop watching (the run goes on)", file=sys.stderr)
            return 3
        time.sleep(WATCH_POLL_S)


def _pause(args: argparse.Namespace) -> int:
    paused = args.deployment_command == "pause"
    from flowcore.deployments.store import open_deployment_store

    with open_deployment_store() as store:
        record = store.find(args.name)
        store.set_paused(record.id, paused)
    what = ("paused: no new scheduled or triggered runs (running ones finish)" if paused
            else "resumed: the catch-up policy applies to runs missed before the pause, none during it")
    print(f"{record.full_name} {what}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from flowcore.deployments.store import open_deployment_store

    with open_deployment_store() as store:
        record = store.find(args.name)
        cancelled = store.delete(record.id)
    print(f"removed {record.full_name}" + (f"; {cancelled} queued run(s) cancelled" if cancelled else ""))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from flowcore.cli import UsageError
    from flowcore.deployments.store import FINAL, open_deployment_store

    with open_deployment_store() as store:
        run = store.run(args.run_id)
        name = store.deployment(run.deployment_id).full_name
        if run.state in FINAL:
            raise UsageError(f"run {run.id[:8]} of {name} already ended {run.state}")
        store.request_cancel(run.id, f"cancelled by flowcore deployment cancel ({args.reason})" if args.reason
                             else "cancelled by flowcore deployment cancel")
        now = store.run(run.id)
    if now.state == "Cancelled":
        print(f"run {run.id[:8]} of {name} cancelled (it had not started)")
    else:
        print(f"run {run.id[:8]} of {name} is {now.state}: its worker stops it and it ends Cancelled")
    return 0


def _feed(args: argparse.Namespace) -> int:
    from flowcore.deployments.store import open_deployment_store

    with open_deployment_store() as store:
        dep_id = store.find(args.name).id if args.name else None
        entries = store.feed(dep_id, limit=args.limit)
        names = {d.id: d.full_name for d in store.list_deployments()}
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    rows = [[local_time(e.timestamp, zone=True), names.get(e.deployment_id or "", (e.deployment_id or "-")[:8]), e.kind,
             e.outcome, (e.run_id or "-")[:8], e.source[:60], e.reason[:100]] for e in entries]
    _table(["TIME", "DEPLOYMENT", "KIND", "OUTCOME", "RUN", "SOURCE", "REASON"], rows)
    return 0


def _worker_start(args: argparse.Namespace) -> int:
    from flowcore.cli import UsageError
    from flowcore.deployments.worker import Worker, WorkerOptions

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be a whole number >= 1")
    if args.grace < 0:
        raise UsageError("--grace must be >= 0 seconds")
    if args.backend:
        from flowcore.registry import get_registry

        get_registry().spec(args.backend)
    options = WorkerOptions(
        pool=args.pool, limit=args.limit, backend=args.backend, grace=args.grace, poll=args.poll,
        late_after=args.late_after, webhook_port=args.webhook_port, webhook_host=args.webhook_host,
    )
    offset = float(args.clock_offset)

    def clock() -> float:
        return time.time() + offset

    return Worker(options, clock=clock).run()


def add_commands(commands: Any) -> None:
    """Register ``deployment`` and ``worker`` on the CLI's subparsers."""
    from flowcore.deployments.scheduler import LATE_AFTER_S

    deployment = commands.add_parser("deployment", help="deployments: list, inspect, run now, pause, resume, remove")
    actions = deployment.add_subparsers(dest="deployment_command", required=True)
    name_help = "flow-name/deployment-name, or the deployment's own name where unique"

    ls = actions.add_parser("ls", help="list deployments with their schedules, next and last runs")
    ls.add_argument("--pool", help="only deployments of this work pool")
    ls.add_argument("--json", action="store_true", help="print one JSON list")
    ls.set_defaults(handler=_ls)

    inspect = actions.add_parser("inspect", help="one deployment: schedules, next 10 runs, last runs, trigger feed")
    inspect.add_argument("name", metavar="NAME", help=name_help)
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.set_defaults(handler=_inspect)

    run = actions.add_parser("run", help="queue a run now (a worker on its pool starts it)")
    run.add_argument("name", metavar="NAME", help=name_help)
    run.add_argument("--param", action="append", metavar="NAME=VALUE",
                     help="a flow parameter (repeatable; VALUE is JSON when it parses, else a string)")
    run.add_argument("--params", metavar="JSON", help="flow parameters as a JSON object")
    run.add_argument("--watch", action="store_true", help="print its states and logs until it ends (exit 0 if Completed)")
    run.add_argument("--timeout", type=float, help="with --watch: stop watching after this many seconds")
    run.add_argument("--idempotency-key", help="queue at most one run per key")
    run.add_argument("--json", action="store_true", help="print the queued run as JSON")
    run.set_defaults(handler=_run)

    for action, text in (("pause", "stop new scheduled and triggered runs"),
                         ("resume", "resume (no backfill of the paused time)")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", metavar="NAME", help=name_help)
        sub.set_defaults(handler=_pause)

    rm = actions.add_parser("rm", help="remove a deployment (its queued runs are cancelled)")
    rm.add_argument("name", metavar="NAME", help=name_help)
    rm.set_defaults(handler=_rm)

    cancel = actions.add_parser("cancel", help="cancel a run: a queued one at once, a running one by its worker")
    cancel.add_argument("run_id", metavar="RUN", help="the run's id or a unique prefix (deployment inspect lists them)")
    cancel.add_argument("--reason", help="a note kept in the run's message")
    cancel.set_defaults(handler=_cancel)

    feed = actions.add_parser("feed", help="the trigger feed: what fired, which run it created, what was skipped")
    feed.add_argument("name", metavar="NAME", nargs="?", help=name_help + " (default: all)")
    feed.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    feed.add_argument("--json", action="store_true", help="print one JSON list")
    feed.set_defaults(handler=_feed)

    worker = commands.add_parser("worker", help="run deployments: flowcore worker start")
    worker_actions = worker.add_subparsers(dest="worker_command", required=True)
    start = worker_actions.add_parser("start", help="create due runs, claim them, run each in a child process")
    start.add_argument("--pool", default="default", help="the work pool to serve (default: default)")
    start.add_argument("--limit", type=int, help="at most this many flow runs at once in this worker")
    start.add_argument("--backend", help="run every flow on this backend (overrides the deployments')")
    start.add_argument("--grace", type=float, default=30.0,
                       help="seconds running flow runs get to finish on SIGTERM/Ctrl-C before they end Crashed (default 30)")
    start.add_argument("--webhook-port", type=int, help="also serve the webhook API on this port")
    start.add_argument("--webhook-host", default="127.0.0.1", help="address the webhook binds (default 127.0.0.1)")
    start.add_argument("--late-after", type=float, default=LATE_AFTER_S,
                       help=f"seconds after which a fire time counts as missed and a queued run as Late (default {LATE_AFTER_S:g})")
    start.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    start.add_argument("--clock-offset", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: move "now"
    start.set_defaults(handler=_worker_start)


__all__ = ["add_commands"]
