""":class:`Deployment`: a flow, how a worker imports it, when and how it runs.

``Deployment.build_from_flow(...)`` validates everything a worker will need, at
build time, in the process that has the flow: the flow must be importable by a fresh
process (a module-level name of an importable module, ``module:attr``, or of the
script being run, ``/abs/path/script.py:attr``), options must have known values,
parameters must fit the flow's signature and be JSON. :meth:`Deployment.apply` stores
it (an upsert keyed by flow name and deployment name) and returns its id.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcore.deployments.triggers import DeploymentTrigger, FileTrigger, Trigger
from flowcore.errors import DeploymentError

if TYPE_CHECKING:
    from flowcore.deployments.store import DeploymentStore
    from flowcore.flows import Flow
    from flowcore.schedules import Schedule

CATCHUP_POLICIES = ("skip", "latest", "all")
#: the module name a script's flow is loaded under by :meth:`Entrypoint.load` (never
#: importable by name: a deployment built from such a flow records the script's path)
SCRIPT_MODULE_PREFIX = "__flowcore_deployment_"
#: the entrypoints being imported by :meth:`Entrypoint.load` now (innermost last)
_loading: list[str] = []


def loading_entrypoint() -> str | None:
    """The entrypoint this process is importing for a run right now, if any: module-level
    code of the flow's module (an unguarded ``flow.serve()``) runs then."""
    return _loading[-1] if _loading else None
OVERLAP_POLICIES = ("allow", "skip", "queue", "cancel_running")


@dataclass(frozen=True)
class FlowSignature:
    """What a worker and the webhook need to check parameters without importing the flow."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    var_keyword: bool
    #: (name, "int" | "float" | "str" | "bool") for parameters annotated with one of
    #: those plain types in a flow that validates its parameters: a request is checked
    #: as the flow would check it (pydantic, lax); other types are checked by the run
    types: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, flow: Flow[Any, Any]) -> FlowSignature:
        names: list[str] = []
        required: list[str] = []
        var_keyword = False
        hints = _plain_hints(flow)
        for name, p in flow.signature.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                var_keyword = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            names.append(name)
            if p.default is p.empty:
                required.append(name)
        types = tuple((n, hints[n]) for n in names if n in hints)
        return cls(tuple(names), tuple(required), var_keyword, types)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "required": list(self.required), "var_keyword": self.var_keyword,
                "types": dict(self.types)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowSignature:
        types = tuple((str(n), str(t)) for n, t in dict(data.get("types", {})).items() if t in _PLAIN_TYPES)
        return cls(tuple(data.get("names", ())), tuple(data.get("required", ())), bool(data.get("var_keyword", True)),
                   types)

    def check(self, parameters: Mapping[str, Any], what: str, *, supplied: Iterable[str] = ()) -> None:
        """DeploymentError naming an unknown or missing parameter (``supplied``: names
        that will be filled in later, such as a FileTrigger's)."""
        import difflib

        for name in parameters:
            if name not in self.names and not self.var_keyword:
                close = difflib.get_close_matches(name, list(self.names), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DeploymentError(
                    f"{what}: the flow has no parameter {name!r}{hint}; it takes {', '.join(self.names) or 'none'}"
                )
        given = set(parameters) | set(supplied)
        missing = [n for n in self.required if n not in given]
        if missing:
            raise DeploymentError(
                f"{what}: the flow needs parameter {', '.join(repr(m) for m in missing)}; pass "
                f"parameters={{{missing[0]!r}: ...}} (or --param {missing[0]}=VALUE)"
            )
        wrong = [(n, t) for n, t in self.types if n in parameters]
        if wrong:
            import pydantic

            for name, type_name in wrong:
                value = parameters[name]
                try:
                    pydantic.TypeAdapter(_PLAIN_TYPES[type_name]).validate_python(value)
                except pydantic.ValidationError as exc:
                    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                    reason = exc.errors(include_url=False)[0]["msg"]
                    raise DeploymentError(
                        f"{what}: parameter {name!r} expects {type_name}, got {shown} ({type(value).__name__}): "
                        f"{reason}; pass a value of that type"
                    ) from None


_PLAIN_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _plain_hints(flow: Flow[Any, Any]) -> dict[str, str]:
    """The flow's parameters annotated with a plain type (int, float, str, bool), by
    name, when the flow validates its parameters; {} when the hints cannot be read."""
    import typing

    if not flow.options.validate_parameters:
        return {}
    try:
        hints = typing.get_type_hints(inspect.unwrap(flow.fn))
    except Exception:  # a hint that cannot be resolved here: the run checks it
        return {}
    return {name: hint.__name__ for name, hint in hints.items() if hint in (int, float, str, bool)}


@dataclass(frozen=True)
class Entrypoint:
    """How a fresh process imports the flow: ``target`` is ``module:attr`` or
    ``/abs/path/script.py:attr``; ``import_path`` goes first on ``sys.path``;
    ``working_dir`` is the run's working directory."""

    target: str
    import_path: str
    working_dir: str

    def load(self) -> Flow[Any, Any]:
        """Import and return the flow. DeploymentError when that fails."""
        from flowcore.flows import Flow

        location, _, attribute = self.target.rpartition(":")
        if self.import_path and self.import_path not in sys.path:
            sys.path.insert(0, self.import_path)
        _loading.append(self.target)
        try:
            if location.endswith(".py"):
                path = Path(location)
                name = f"{SCRIPT_MODULE_PREFIX}{path.stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise DeploymentError(f"cannot import {location}: not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                # process backends' workers cannot import the script by this name: its
                # tasks travel by value, as they do from __main__ when the script is run
                from flowcore.tasks import pickle_by_value

                pickle_by_value(module)
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(location)
        except DeploymentError:
            raise
        except SystemExit as exc:  # module-level code of a script (argparse, sys.exit)
            raise DeploymentError(
                f"importing {self.target!r} called sys.exit({exc.code!r}) in its module-level code; a worker "
                "imports the module to run the flow, so put that code under `if __name__ == \"__main__\":`"
            ) from None
        except Exception as exc:
            raise DeploymentError(
                f"cannot import the flow {self.target!r}: {type(exc).__name__}: {exc}; the deployment "
                "records where the flow was when it was built: rebuild and apply it if the code moved"
            ) from exc
        finally:
            _loading.pop()
        found = getattr(module, attribute, None)
        if not isinstance(found, Flow):
            raise DeploymentError(
                f"{self.target!r} is {'missing' if found is None else type(found).__name__}, not a @flow; "
                "rebuild and apply the deployment if the code changed"
            )
        return found


def entrypoint_of(flow: Flow[Any, Any]) -> Entrypoint:
    """Where ``flow`` lives, checked to be importable by a fresh process.

    DeploymentError when the flow is not a module-level name (defined in a function,
    or created in an interactive session) or its module cannot be imported again.
    """
    fn = flow.fn
    module_name = getattr(fn, "__module__", None)
    module = sys.modules.get(module_name or "")
    cwd = os.getcwd()
    if module is None:
        raise DeploymentError(
            f"flow {flow.name!r}: its module {module_name!r} is not loaded; define the flow at the "
            "top level of a module or script"
        )
    attribute = next((n for n, v in vars(module).items() if v is flow and not n.startswith("__")), None)
    if attribute is None:
        raise DeploymentError(
            f"flow {flow.name!r} is not a module-level name of {module_name!r} (defined inside a function?); "
            "a worker imports the flow in a new process, so define it at the top level of a module or script"
        )
    file = getattr(module, "__file__", None)
    # a script loaded by path for a run (its module-level apply() runs again there) is
    # recorded by its path, as when it ran as __main__
    by_path = module_name == "__main__" or (module_name or "").startswith(SCRIPT_MODULE_PREFIX)
    if by_path or (file and module_name and not _importable(module_name, file)):
        if not file or not str(file).endswith(".py"):
            raise DeploymentError(
                f"flow {flow.name!r} was defined in an interactive session; a worker imports the flow "
                "in a new process, so put it in a .py file"
            )
        path = str(Path(file).resolve())
        return Entrypoint(f"{path}:{attribute}", str(Path(path).parent), cwd)
    assert module_name is not None and file is not None
    root = Path(file).resolve().parent
    depth = module_name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    return Entrypoint(f"{module_name}:{attribute}", str(root), cwd)


def _importable(module_name: str, file: str) -> bool:
    """True when importing ``module_name`` in a new process finds this ``file``."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None else None
    if origin is None:
        return False
    try:
        return Path(origin).resolve() == Path(file).resolve()
    except OSError:
        return False


def _choice(value: object, allowed: Sequence[str], option: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise DeploymentError(
            f"{option}={value!r} is not known; use one of {', '.join(repr(a) for a in allowed)}"
        )
    return value


def json_ready(value: Any, what: str) -> Any:
    """``value`` as stored (a JSON round trip). DeploymentError when it is not JSON,
    NaN and infinities included (Python's json writes them; no JSON reader takes them)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise DeploymentError(
            f"{what} must be JSON (numbers, strings, lists, dicts) because runs are stored and started "
            f"in another process: {exc}"
        ) from None


@dataclass(frozen=True)
class Deployment:
    """A stored recipe for running a flow: build it with :meth:`build_from_flow` (or
    ``flow.to_deployment``), store it with :meth:`apply`. See the module docstring.

    ``schedules``: when it runs (any mix of Cron/Interval/RRule schedules).
    ``catchup``: after a time with no worker running, ``"skip"`` (no missed run),
    ``"latest"`` (the most recent missed one, once; the default) or ``"all"`` (every
    missed one, oldest first, up to :data:`flowcore.deployments.scheduler.CATCHUP_CAP`).
    ``overlap``: when a run is due while another run of this deployment runs,
    ``"allow"``, ``"skip"`` (the new run ends ``Skipped``), ``"queue"`` (it waits) or
    ``"cancel_running"`` (the running one is cancelled). ``concurrency_limit``: at most
    this many runs of the deployment at once, on all workers (others wait).
    """

    flow_name: str
    name: str
    entrypoint: Entrypoint
    signature: FlowSignature
    schedules: tuple[Schedule, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    work_pool_name: str = "default"
    tags: tuple[str, ...] = ()
    description: str = ""
    paused: bool = False
    concurrency_limit: int | None = None
    catchup: str = "latest"
    overlap: str = "allow"
    triggers: tuple[Trigger, ...] = ()
    backend: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """``flow-name/deployment-name``, how commands address it."""
        return f"{self.flow_name}/{self.name}"

    @classmethod
    def build_from_flow(
        cls,
        flow: Flow[Any, Any],
        name: str,
        schedule: Schedule | None = None,
        schedules: Sequence[Schedule] | None = None,
        parameters: Mapping[str, Any] | None = None,
        work_pool_name: str = "default",
        tags: Sequence[str] | None = None,
        description: str | None = None,
        paused: bool = False,
        concurrency_limit: int | None = None,
        catchup: str = "latest",
        overlap: str = "allow",
        triggers: Sequence[Trigger] | None = None,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
    ) -> Deployment:
        """Build and validate a deployment of ``flow`` (nothing is stored yet).

        Raises :class:`~flowcore.errors.DeploymentError` naming the problem and the fix
        when: the flow cannot be imported by a new process, ``name`` is empty or holds
        ``/``, ``catchup``/``overlap`` is unknown, ``concurrency_limit`` is not a whole
        number >= 1, a schedule or trigger is not one, parameters are unknown to the
        flow, missing for a scheduled run, or not JSON, or the backend is not
        registered.
        """
        from flowcore.flows import Flow
        from flowcore.schedules import IntervalSchedule, Schedule

        if not isinstance(flow, Flow):
            raise DeploymentError(f"build_from_flow(flow=...) takes a @flow, got {type(flow).__name__} {flow!r}")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise DeploymentError(
                f"deployment name must be a non-empty string without '/', got {name!r} "
                "(it is addressed as 'flow-name/deployment-name')"
            )
        entrypoint = entrypoint_of(flow)
        chosen: list[Schedule] = []
        if schedule is not None:
            chosen.append(schedule)
        if schedules is not None:
            if isinstance(schedules, Schedule):
                raise DeploymentError("schedules=... takes a list of schedules; for one, pass schedule=...")
            chosen.extend(schedules)
        for item in chosen:
            if not isinstance(item, Schedule):
                raise DeploymentError(
                    f"{item!r} is not a schedule; use CronSchedule, IntervalSchedule or RRuleSchedule "
                    "from flowcore.schedules"
                )
        unique: list[Schedule] = []
        for item in chosen:
            if item not in unique:
                unique.append(item)
        for item in unique:
            seconds = float(item.to_dict()["interval"]) if isinstance(item, IntervalSchedule) else None
            if seconds is not None and seconds < 1:
                raise DeploymentError(
                    f"deployment {flow.name}/{name}: IntervalSchedule every {seconds:g} s is under "
                    "1 s; each run is a new process: use an interval of 1 s or more, or loop inside one flow run"
                )
            if not item.next(1):  # an rrule whose COUNT or UNTIL has passed: it would never fire
                from flowcore.deployments.views import describe_schedule

                raise DeploymentError(
                    f"deployment {flow.name}/{name}: schedule {describe_schedule(item.to_dict())} has no fire "
                    "time after now (its COUNT or UNTIL has passed; an rrule without DTSTART starts on "
                    "2020-01-01 00:00 in its zone); give it a DTSTART, or leave it out"
                )
        _choice(catchup, CATCHUP_POLICIES, "catchup")
        _choice(overlap, OVERLAP_POLICIES, "overlap")
        if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int) or concurrency_limit < 1
        ):
            raise DeploymentError(
                f"concurrency_limit={concurrency_limit!r}: use a whole number >= 1, or None for no limit"
            )
        if not isinstance(work_pool_name, str) or not work_pool_name.strip():
            raise DeploymentError(f"work_pool_name must be a non-empty string, got {work_pool_name!r}")
        trigger_list = tuple(triggers or ())
        for trigger in trigger_list:
            if not isinstance(trigger, FileTrigger | DeploymentTrigger):
                raise DeploymentError(
                    f"{trigger!r} is not a trigger; use FileTrigger or DeploymentTrigger from flowcore.deployments"
                )
        params = json_ready(dict(parameters or {}), "parameters")
        signature = FlowSignature.of(flow)
        what = f"deployment {flow.name}/{name}"
        # Unknown names always; missing ones only where a scheduled run (defaults only) needs them.
        signature.check(params, what, supplied=() if unique else signature.required)
        for trigger in trigger_list:
            if isinstance(trigger, FileTrigger) and trigger.parameter not in signature.names and not signature.var_keyword:
                raise DeploymentError(
                    f"{what}: FileTrigger(parameter={trigger.parameter!r}) names no parameter of the flow; "
                    f"it takes {', '.join(signature.names) or 'none'}"
                )
            # a triggered run gets the deployment's parameters and the trigger's, nothing else
            if isinstance(trigger, FileTrigger):
                signature.check(params, what, supplied=(trigger.parameter,))
            if isinstance(trigger, DeploymentTrigger):
                signature.check({**params, **trigger.parameters}, f"{what}: DeploymentTrigger(parameters=...)")
                if trigger.after == f"{flow.name}/{name.strip()}":
                    raise DeploymentError(
                        f"{what}: DeploymentTrigger(after={trigger.after!r}): {trigger.after!r} cannot be "
                        "triggered by its own runs (each run would start the next, without end); for "
                        "another attempt after a failure use @flow(retries=...)"
                    )
        if backend is not None:
            if not isinstance(backend, str):
                raise DeploymentError(f"backend must be a backend name such as 'loky', got {backend!r}")
            from flowcore.registry import get_registry

            get_registry().spec(backend)  # BackendNotFoundError lists the registered ones
        options = json_ready(dict(backend_options or {}), "backend_options")
        tag_list = tuple(str(t) for t in (tags or ()))
        return cls(
            flow_name=flow.name, name=name.strip(), entrypoint=entrypoint, signature=signature,
            schedules=tuple(unique), parameters=params, work_pool_name=work_pool_name.strip(), tags=tag_list,
            description=description or (inspect.getdoc(flow.fn) or "").strip(), paused=bool(paused),
            concurrency_limit=concurrency_limit, catchup=catchup, overlap=overlap, triggers=trigger_list,
            backend=backend, backend_options=options,
        )

    def apply(self, store: DeploymentStore | None = None) -> str:
        """Store this deployment (insert, or update the one with the same flow name and
        deployment name, keeping its id and the state of unchanged schedules) and
        return its id. Raises HistoryError when the store cannot be written."""
        from flowcore.deployments.store import open_deployment_store

        own = store is None
        target = open_deployment_store() if store is None else store
        try:
            return target.upsert(self)
        finally:
            if own:
                target.close()


__all__ = ["CATCHUP_POLICIES", "OVERLAP_POLICIES", "Deployment", "Entrypoint", "FlowSignature", "entrypoint_of"]
