"""The stored key of a task run: the task's identity plus its policy's key."""

from __future__ import annotations

import threading
from types import MethodType
from typing import TYPE_CHECKING, Any

from flowcore.caching.hashing import content_hash

if TYPE_CHECKING:
    from flowcore.caching.settings import CacheSettings
    from flowcore.calls import FlowRun, TaskCall
    from flowcore.tasks import Task

_flow_keys: dict[str, str] = {}
_flow_keys_lock = threading.Lock()
_MAX_FLOW_KEYS = 256


def flow_parameters_key(run: FlowRun) -> str:
    """The hash of a flow run's parameters (computed once per run, in the parent)."""
    key = _flow_keys.get(run.run_id)
    if key is None:
        key = content_hash(run.parameters, path="flow parameter")
        with _flow_keys_lock:
            if len(_flow_keys) >= _MAX_FLOW_KEYS:
                _flow_keys.clear()
            _flow_keys[run.run_id] = key
    return key


def task_identity(task: Task[..., Any]) -> list[str]:
    """What tells tasks apart in the store: module, qualified name and task name."""
    fn = task.fn
    return [
        str(getattr(fn, "__module__", "")),
        str(getattr(fn, "__qualname__", type(fn).__qualname__)),
        task.name,
    ]


def run_key(call: TaskCall, settings: CacheSettings) -> str | None:
    """The store key of ``call``, or None when its policy says not to cache it.

    Raises :class:`~flowcore.errors.CacheKeyError` for an argument without a
    deterministic hash (and whatever a user's ``cache_key_fn`` raises).
    """
    from flowcore.caching.policies import CacheContext

    arguments = call.task.bind(call.args, call.kwargs)
    bound_to = getattr(call.task.fn, "__self__", None)
    if bound_to is not None and isinstance(call.task.fn, MethodType):
        # A task that is a method: its instance is an input too (two instances that
        # differ never share an entry; ``INPUTS - "self"`` leaves it out).
        arguments = {"self": bound_to, **arguments}
    context = CacheContext(call.task, call, arguments)
    key = settings.policy.compute_key(context)
    if key is None:
        return None
    return content_hash([task_identity(call.task), key])


__all__ = ["flow_parameters_key", "run_key", "task_identity"]
