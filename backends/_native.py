"""Native futures of the Dask backend: results that stay on its workers.

The Dask backend (capability ``remote_results``, :meth:`DaskBackend.submit_kept`) keeps
a run's full result where it was computed; only a *light copy* comes back (:func:`light_copy`, run on the worker): the
state and log records, with every large value replaced by a marker. In the parent the
run's ``State.data`` becomes a :class:`NativeValue`, which ``State.result()`` (and so
``future.result()``) fetches on first use -- once per dispatched unit, shared by the
runs of a batch. A downstream run that takes such a future as an argument gets a
:class:`NativeRef` placeholder in its place; the backend hands the upstream's own
future to its task graph and :func:`run_call_native`, on the worker, puts the values
back before the engine runs. The data never passes through the parent.

Small values (scalars, and anything whose pickle is at most :data:`INLINE_LIMIT`
bytes) come back at once, as on every other backend: fetching them later would cost
a round trip for nothing.
"""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flowcore.errors import CrashedError
from flowcore.states import DeferredResult, State, StateType

if TYPE_CHECKING:
    from flowcore.backend import Backend
    from flowcore.calls import TaskCall
    from flowcore.events import Worker

#: Results whose pickle (out-of-band buffers included) is at most this many bytes come
#: back with the run's state instead of staying on the workers.
INLINE_LIMIT = 64 * 1024

_SCALARS = (type(None), bool, int, float, complex)


class _Stripped:
    """The marker that stands in a light copy for a value left on the workers."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "STRIPPED"  # pickled by reference: the same object after a round trip

    def __repr__(self) -> str:
        return "<value kept on the workers>"


STRIPPED = _Stripped()


class NativeHandle:
    """The full result of one unit of work (a run or a batch of runs) that a backend
    with native futures keeps on its workers.

    :meth:`fetch` brings it here once (thread-safe; later calls return the same
    object), so the runs of one batch share a fetch. The backend's own future stays in
    :attr:`native` -- keeping the result alive on the workers -- until
    :meth:`materialize` (called by the backend before it shuts down) replaces it with
    the fetched value. Subclasses implement :meth:`_fetch_native`.
    """

    __slots__ = ("__weakref__", "_error", "_fetched", "_lock", "_native", "_result", "backend", "key")

    def __init__(self, backend: Backend, native: Any, key: str) -> None:
        self.backend = backend
        self.key = key
        self._native = native
        self._lock = threading.Lock()
        self._fetched = False
        self._result: Any = None
        self._error: BaseException | None = None

    @property
    def native(self) -> Any:
        """The backend's future of the full result, or None once materialized."""
        return self._native

    def attach(self, native: Any) -> None:
        """For the backend: ``native`` is the future of the full result (a handle may be
        made before the backend has submitted the work it stands for)."""
        self._native = native

    @property
    def fetched(self) -> bool:
        """True once the full result is in this process."""
        return self._fetched

    def fetch(self) -> Any:
        """The full result, fetched from the workers on the first call.

        Raises what the backend raised while fetching (a later call tries again),
        or, after :meth:`materialize` failed to fetch, that failure every time.
        """
        if self._fetched:
            return self._result
        with self._lock:
            if not self._fetched:
                if self._error is not None:
                    raise self._error
                self._result = self._fetch_native(self._native)
                self._fetched = True
            return self._result

    def materialize(self) -> None:
        """Fetch the result (or keep the failure to fetch it) and drop the backend's
        future, so that the handle no longer needs the backend. Idempotent."""
        with self._lock:
            native = self._native
            if self._fetched or native is None:
                self._native = None
                return
            try:
                self._result = self._fetch_native(native)
                self._fetched = True
            except Exception as exc:
                self._error = exc
            self._native = None

    def keep(self, result: Any) -> None:
        """For the backend: store a result it fetched itself (for many handles at once) and
        drop the backend's future."""
        with self._lock:
            if not self._fetched:
                self._result, self._fetched = result, True
            self._native = None

    def lose(self, error: BaseException) -> None:
        """For the backend: the result can no longer be fetched: :meth:`fetch` raises ``error``."""
        with self._lock:
            if not self._fetched:
                self._error = error
            self._native = None

    def _fetch_native(self, native: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        where = "fetched" if self._fetched else ("on the workers" if self._native is not None else "lost")
        return f"<{type(self).__name__} {self.key} {where}>"



@dataclass(frozen=True, slots=True)
class NativeRef:
    """Stands for an upstream run's value in a downstream call's arguments.

    ``key`` names the upstream's :class:`~flowcore.backend.NativeHandle` in the refs
    the worker receives; ``index`` is the run's position in its batch (None for a run
    dispatched on its own).
    """

    key: str
    index: int | None


class NativeValue(DeferredResult):
    """A completed run's value kept on the workers: :meth:`load` fetches it.

    The first ``load`` of any run of a batch fetches the batch's full result (once);
    the value is then read from it. Holding a NativeValue keeps the data alive on the
    workers. A failure to fetch raises :class:`~flowcore.errors.CrashedError` naming
    the run, the backend's exception as its cause.
    """

    __slots__ = ("handle", "index", "run_name")

    def __init__(self, handle: NativeHandle, index: int | None, run_name: str) -> None:
        self.handle = handle
        self.index = index
        self.run_name = run_name

    def load(self) -> Any:
        try:
            result = self.handle.fetch()
        except Exception as exc:
            # A value that does not unpickle here fails as it would have on its way back
            # with its run: a SerializationError naming the run (issue 12.15).
            from flowcore.serialization import explain_unsendable

            unsendable = explain_unsendable(self.run_name, exc)
            if unsendable is not None:
                raise unsendable from exc
            raise CrashedError(
                f"the result of task run {self.run_name!r} could not be fetched from the "
                f"{self.handle.backend.name!r} workers that kept it: {type(exc).__name__}: {exc}"
            ) from exc
        return value_at(result, self.index)

    def ref(self) -> NativeRef:
        return NativeRef(self.handle.key, self.index)

    def placeholder(self) -> NativeRef:
        """Its reference: a downstream call that has ended no longer keeps the value
        on the workers (nor fetches it when the backend closes)."""
        return self.ref()

    def __repr__(self) -> str:
        return f"NativeValue({self.run_name!r}, {self.handle!r})"


def value_at(result: Any, index: int | None) -> Any:
    """The value of run ``index`` (None: the only run) in a full result, as returned by
    ``run_call_remote`` (``(state, records, worker)``) or ``run_rows`` (``(values,
    ends, started, exact states, records, worker)``)."""
    if index is None:
        return result[0].result()
    values, exact = result[0], result[3]
    state = exact.get(index)
    return values[index] if state is None else state.result()


# -- on the worker ---------------------------------------------------------------------


def light_copy(result: Any) -> Any:
    """``result`` (of ``run_call_remote`` or ``run_rows``) with every large completed
    value replaced by a marker. Runs on the worker, next to the full result.

    Raises :class:`pickle.PicklingError` when a value cannot be pickled, so that the
    run fails as it would if its result had been sent back.
    """
    if len(result) == 3:  # one run
        state, records, worker = result
        return _light_state(state), records, worker
    values, ends, started, exact, records, worker = result
    light = [None if i in exact else (STRIPPED if _is_large(v) else v) for i, v in enumerate(values)]
    return light, ends, started, {i: _light_state(s) for i, s in exact.items()}, records, worker


def _light_state(state: State[Any]) -> State[Any]:
    if state.type is StateType.COMPLETED and not isinstance(state.data, DeferredResult) and _is_large(state.data):
        return replace(state, data=STRIPPED)
    return state


def _is_large(value: Any) -> bool:
    if type(value) in _SCALARS:
        return False
    sizes: list[int] = []

    def buffer(view: pickle.PickleBuffer) -> None:
        sizes.append(view.raw().nbytes)

    try:
        in_band = pickle.dumps(value, protocol=5, buffer_callback=buffer)
    except Exception:
        sizes.clear()
        try:  # what Dask sends: cloudpickle, for closures and the like
            import cloudpickle

            in_band = cloudpickle.dumps(value, protocol=5, buffer_callback=buffer)
        except Exception as exc:
            error = pickle.PicklingError(f"cannot pickle the result on the worker: {type(exc).__name__}: {exc}")
            raise error from exc
    return len(in_band) + sum(sizes) > INLINE_LIMIT


def run_call_native(call: TaskCall, *, refs: dict[str, Any] | None = None) -> tuple[State[Any], Sequence[dict[str, Any]], Worker]:
    """:func:`~flowcore.engine.run_call_remote` for a call whose arguments hold
    :class:`NativeRef` placeholders; ``refs`` maps their keys to the full results
    (resolved by the backend on this worker)."""
    from flowcore.engine import run_call_remote
    from flowcore.futures import substitute

    if refs:
        call = copy.copy(call)  # the backend's copy of the task may be run again

        def value_of(ref: NativeRef) -> Any:
            return value_at(refs[ref.key], ref.index)

        call.args = substitute(call.args, NativeRef, value_of)
        call.kwargs = substitute(call.kwargs, NativeRef, value_of)
    return run_call_remote(call)


# -- in the parent ---------------------------------------------------------------------


def adopt(state: State[Any], handle: NativeHandle, index: int | None, run_name: str) -> State[Any]:
    """``state`` from a light copy, its marker (if any) replaced by a NativeValue."""
    if state.data is STRIPPED:
        return replace(state, data=NativeValue(handle, index, run_name))
    return state


def adopt_result(light: Any, handle: NativeHandle, run_names: list[str] | str) -> Any:
    """A light copy (of ``run_call_remote``'s or ``run_rows``' result) as the core
    receives it from :meth:`DaskBackend.submit_kept`: each marker replaced by a
    :class:`NativeValue` of ``handle``. ``run_names``: the run's name, or the names of
    the batch's runs in order (for the errors of a failed fetch)."""
    if isinstance(run_names, str):
        state, records, worker = light
        return adopt(state, handle, None, run_names), records, worker
    values, ends, started, exact, records, worker = light
    values = [NativeValue(handle, i, run_names[i]) if v is STRIPPED else v for i, v in enumerate(values)]
    exact = {i: adopt(s, handle, i, run_names[i]) for i, s in exact.items()}
    return values, ends, started, exact, records, worker


def refer_to_kept(call: TaskCall, backend: Backend) -> tuple[TaskCall, dict[str, NativeHandle]]:
    """``call`` with each :class:`NativeValue` among its arguments that ``backend``
    keeps replaced by a :class:`NativeRef` (the worker puts the value back, see
    :func:`run_call_native`), any other deferred value loaded here; and the handles
    the refs name. The call is copied when anything changes."""
    from flowcore.futures import substitute

    refs: dict[str, NativeHandle] = {}

    def swap(value: DeferredResult) -> Any:
        if isinstance(value, NativeValue) and value.handle.backend is backend and value.handle.native is not None:
            refs[value.handle.key] = value.handle
            return value.ref()
        return value.load()

    args = substitute(call.args, DeferredResult, swap)
    kwargs = substitute(call.kwargs, DeferredResult, swap)
    if args is call.args and kwargs is call.kwargs:
        return call, refs
    call = copy.copy(call)
    call.args, call.kwargs = args, kwargs
    return call, refs


__all__ = [
    "INLINE_LIMIT",
    "STRIPPED",
    "NativeHandle",
    "NativeRef",
    "NativeValue",
    "adopt",
    "adopt_result",
    "light_copy",
    "refer_to_kept",
    "run_call_native",
    "value_at",
]
