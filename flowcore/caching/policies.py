"""Cache policies: what a task run's cache key is made of.

A policy turns a :class:`CacheContext` (the task, the run, its bound arguments) into
a key, or None for "do not cache this run". Policies combine with ``+``; the combined
key changes whenever any part does, and is None as soon as one part is None (a
``cache_key_fn`` that returns None vetoes caching for that run).

================== ==================================================================
``INPUTS``          the bound arguments, defaults applied: ``f(3)``, ``f(3, 2)`` and
                    ``f(x=3, y=2)`` share an entry. ``INPUTS - "arg"`` leaves
                    arguments out.
``TASK_SOURCE``     the task's code, and the code of the functions and classes it
                    uses from the user's own modules (editing a helper invalidates
                    the entry; comments and line numbers do not count), and the
                    values it captures from enclosing functions (hashed like
                    arguments). The same in the flow's process and in every worker.
``FLOW_PARAMETERS`` the parameters of the flow run the task belongs to
``RUN_ID``          the flow run id: results are reused within one flow run only
                    (its retries, repeated calls), never across runs
``NONE``            never cache
``DEFAULT``         ``INPUTS + TASK_SOURCE``
================== ==================================================================

Whatever the policy, the stored key also contains the task's identity (module,
qualified name and task name), so two different tasks never share an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flowcore.errors import CacheKeyError

if TYPE_CHECKING:
    from flowcore.calls import TaskCall
    from flowcore.tasks import Task


@dataclass(frozen=True)
class CacheContext:
    """What a policy sees of one run: the task, the call, and the arguments bound to
    the task's parameters (defaults applied)."""

    task: Task[..., Any]
    call: TaskCall
    parameters: dict[str, Any]


class CachePolicy:
    """Base class: :meth:`compute_key` returns a string, or None to skip the cache."""

    #: whether the key needs the flow run's parameters (sent along with the run)
    needs_flow_parameters = False

    def compute_key(self, context: CacheContext) -> str | None:
        raise NotImplementedError

    def check(self, task_name: str, parameters: Iterable[str]) -> None:
        """Raise at decoration time if the policy cannot apply to this task."""

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return CompoundPolicy((*_parts(self), *_parts(other)))


def _parts(policy: CachePolicy) -> tuple[CachePolicy, ...]:
    return policy.policies if isinstance(policy, CompoundPolicy) else (policy,)


@dataclass(frozen=True)
class Inputs(CachePolicy):
    """The run's bound arguments, except those in ``exclude``."""

    exclude: frozenset[str] = field(default_factory=frozenset)

    def __sub__(self, names: str | Iterable[str]) -> Inputs:
        more = {names} if isinstance(names, str) else set(names)
        for name in more:
            if not isinstance(name, str):
                raise TypeError(f"INPUTS - ...: argument names must be strings, got {name!r}")
        return Inputs(self.exclude | more)

    def check(self, task_name: str, parameters: Iterable[str]) -> None:
        unknown = sorted(self.exclude - set(parameters))
        if unknown:
            raise ValueError(
                f"@task {task_name!r}: cache_policy excludes {', '.join(map(repr, unknown))}, "
                f"which is not a parameter; parameters are: {', '.join(sorted(parameters)) or '(none)'}"
            )

    def compute_key(self, context: CacheContext) -> str | None:
        from flowcore.caching.hashing import hash_arguments

        arguments = context.parameters
        if self.exclude:
            arguments = {k: v for k, v in arguments.items() if k not in self.exclude}
        return hash_arguments(arguments)

    def __repr__(self) -> str:
        if not self.exclude:
            return "INPUTS"
        return "INPUTS - " + repr(sorted(self.exclude))


class TaskSource(CachePolicy):
    """The code of the task's function and of the user code it calls
    (:func:`~flowcore.caching.fingerprint.function_fingerprint`)."""

    def compute_key(self, context: CacheContext) -> str | None:
        from flowcore.caching.fingerprint import function_fingerprint

        return function_fingerprint(context.task.fn)

    def __repr__(self) -> str:
        return "TASK_SOURCE"


class FlowParameters(CachePolicy):
    """The parameters of the flow run (empty outside a flow)."""

    needs_flow_parameters = True

    def compute_key(self, context: CacheContext) -> str | None:
        key = context.call.flow_parameters_key
        return key if key is not None else "no-flow-run"

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


class RunId(CachePolicy):
    """The flow run id: reuse within one flow run. Outside a flow run: no caching."""

    def compute_key(self, context: CacheContext) -> str | None:
        return context.call.flow_run_id

    def __repr__(self) -> str:
        return "RUN_ID"


class NoCache(CachePolicy):
    """Never cache."""

    def compute_key(self, context: CacheContext) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NONE"


@dataclass(frozen=True)
class CompoundPolicy(CachePolicy):
    """Several policies together (``a + b``)."""

    policies: tuple[CachePolicy, ...]

    @property
    def needs_flow_parameters(self) -> bool:  # type: ignore[override]
        return any(p.needs_flow_parameters for p in self.policies)

    def check(self, task_name: str, parameters: Iterable[str]) -> None:
        names = list(parameters)
        for policy in self.policies:
            policy.check(task_name, names)

    def compute_key(self, context: CacheContext) -> str | None:
        keys: list[str] = []
        for policy in self.policies:
            key = policy.compute_key(context)
            if key is None:
                return None
            keys.append(f"{type(policy).__name__}:{key}")
        from flowcore.caching.hashing import content_hash

        return content_hash(keys)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.policies)


@dataclass(frozen=True)
class KeyFunction(CachePolicy):
    """A user's ``cache_key_fn(context, arguments) -> str | None``."""

    fn: Callable[[CacheContext, dict[str, Any]], str | None]

    def compute_key(self, context: CacheContext) -> str | None:
        key = self.fn(context, context.parameters)
        if key is not None and not isinstance(key, str):
            raise CacheKeyError(
                f"task {context.task.name!r}: cache_key_fn {getattr(self.fn, '__name__', self.fn)!r} "
                f"returned {type(key).__name__} {key!r}; it must return a str, or None to skip the cache"
            )
        return key

    def __repr__(self) -> str:
        return f"cache_key_fn={getattr(self.fn, '__qualname__', self.fn)!r}"


INPUTS = Inputs()
TASK_SOURCE = TaskSource()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
NONE = NoCache()
DEFAULT = INPUTS + TASK_SOURCE


def task_input_hash(context: CacheContext, arguments: dict[str, Any]) -> str | None:
    """A ``cache_key_fn`` (Prefect's signature): the task's identity and code plus the
    arguments. Raises :class:`~flowcore.errors.CacheKeyError` for an argument that has
    no deterministic hash."""
    from flowcore.caching.fingerprint import function_fingerprint
    from flowcore.caching.hashing import content_hash, hash_arguments

    task = context.task
    identity = (getattr(task.fn, "__module__", None), getattr(task.fn, "__qualname__", None), task.name)
    return content_hash([identity, function_fingerprint(task.fn), hash_arguments(arguments)])


__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheContext",
    "CachePolicy",
    "CompoundPolicy",
    "FlowParameters",
    "Inputs",
    "KeyFunction",
    "NoCache",
    "RunId",
    "TaskSource",
    "task_input_hash",
]
