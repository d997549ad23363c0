"""Configuration of the joblib shim: backend names, ``parallel_config`` and n_jobs rules.

The shim keeps joblib's model: a per-thread configuration set by ``parallel_config``
(or the older ``parallel_backend``), read by every ``Parallel`` created under it, with
``Parallel``'s own arguments taking precedence. What a backend name means is decided
here, once, as a :class:`BackendChoice`:

* joblib's names map onto flowcore backends: ``loky`` and ``multiprocessing`` ->
  ``loky``, ``threading`` -> ``threads``, ``sequential`` -> ``sequential``, ``dask`` ->
  ``dask`` (when a plugin registered it);
* any flowcore backend name (``threads``, ``joblib``, a third party's) is accepted as is,
  and so is a :class:`flowcore.backend.Backend` instance (used, never shut down);
* joblib's own backend classes and instances map by type; any other joblib backend
  (``register_parallel_backend("ray", ...)``, an instance of a custom
  ``ParallelBackendBase``) is *foreign*: calls run through ``joblib.Parallel`` itself.

Nothing here imports joblib; it is consulted only when it is already imported (a
foreign backend cannot exist otherwise).
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flowcore.backend import Backend, Capabilities, usable_cpu_count
from flowcore.errors import ConfigurationError


class InvalidBackendOption(ConfigurationError, AssertionError):
    """A backend was given an option it does not support.

    Also an ``AssertionError`` because joblib raises that for the same mistake
    (``inner_max_num_threads`` on a backend other than loky).
    """


class _Unset:
    """Marks a parameter that was not given (``None`` is a value in joblib's API)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

#: joblib's backend names -> (flowcore backend, the joblib class name used in messages)
JOBLIB_NAMES: dict[str, tuple[str, str]] = {
    "loky": ("loky", "LokyBackend"),
    "threading": ("threads", "ThreadingBackend"),
    "multiprocessing": ("loky", "MultiprocessingBackend"),
    "sequential": ("sequential", "SequentialBackend"),
    "dask": ("dask", "DaskDistributedBackend"),
}
#: joblib's built-in backend classes -> the joblib name they stand for
_JOBLIB_CLASSES = {
    "LokyBackend": "loky",
    "ThreadingBackend": "threading",
    "MultiprocessingBackend": "multiprocessing",
    "SequentialBackend": "sequential",
}
_FLOWCORE_LABELS = {
    "threads": "ThreadingBackend",
    "loky": "LokyBackend",
    "sequential": "SequentialBackend",
}
DEFAULT_BACKEND = "loky"  # joblib's default, whatever flowcore's own default is
VALID_HINTS = ("processes", "threads", None)
VALID_CONSTRAINTS = ("sharedmem", None)


@dataclass(frozen=True)
class BackendChoice:
    """A resolved backend request: what runs a ``Parallel`` call, at which nesting level.

    Exactly one of ``name`` (a flowcore registry name, created per use), ``instance``
    (a flowcore backend owned by the caller) or ``foreign`` (a joblib backend object run
    through ``joblib.Parallel``) says what runs the work. ``label`` is the joblib class
    name that messages use (``LokyBackend``), so verbose output reads as joblib's.
    ``capabilities`` are what the shim asks about the backend before (or without)
    making one: the instance's own, the registered ones for a name
    (:meth:`~flowcore.backend.BackendSpec.declared_capabilities`), and for a foreign
    backend only whether it runs in this process.
    """

    label: str
    capabilities: Capabilities
    name: str | None = None
    instance: Backend | None = field(default=None, compare=False)
    foreign: Any = field(default=None, compare=False)
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    nesting_level: int = 0
    inner_max_num_threads: int | None = None

    @property
    def uses_threads(self) -> bool:
        """True when work runs in this process (threads or inline)."""
        if self.foreign is not None:
            return bool(getattr(self.foreign, "uses_threads", False))
        return self.capabilities.in_process

    @property
    def supports_sharedmem(self) -> bool:
        """True when tasks see the caller's objects (``require='sharedmem'``)."""
        if self.foreign is not None:
            return bool(getattr(self.foreign, "supports_sharedmem", False))
        return self.uses_threads

    @property
    def processes(self) -> bool:
        """True for process pools, the backends that must not nest below threads."""
        return self.label in ("LokyBackend", "MultiprocessingBackend") or (
            self.foreign is None and self.capabilities.local_processes
        )

    @property
    def sized_by_n_jobs(self) -> bool:
        """True when a backend made for this choice takes its worker count from the
        call (:func:`sized_by_n_jobs`)."""
        return sized_by_n_jobs(self.capabilities)

    def at_level(self, nesting_level: int) -> BackendChoice:
        return replace(self, nesting_level=nesting_level)

    def __repr__(self) -> str:
        what = self.name or (
            type(self.foreign).__name__ if self.foreign is not None else repr(self.instance)
        )
        return f"<backend {self.label} ({what}) nesting_level={self.nesting_level}>"


def sized_by_n_jobs(capabilities: Capabilities) -> bool:
    """Whether a backend with ``capabilities`` is a pool sized by its ``max_workers``
    option -- threads of this process, or worker processes it starts here -- so that a
    call's ``n_jobs`` sets it. Not an inline backend (one worker, no such option) nor a
    cluster (its own size)."""
    return capabilities.local_processes or (capabilities.in_process and not capabilities.inline)


@dataclass(frozen=True)
class WorkerInfo:
    """Set while a batch runs in a worker: what a nested ``Parallel`` may do there."""

    in_process: bool
    daemonic: bool


@dataclass(frozen=True)
class ParallelConfig:
    """One level of ``parallel_config``; ``UNSET`` fields inherit from the level above."""

    backend: Any = UNSET
    n_jobs: Any = UNSET
    verbose: Any = UNSET
    temp_folder: Any = UNSET
    max_nbytes: Any = UNSET
    mmap_mode: Any = UNSET
    prefer: Any = UNSET
    require: Any = UNSET
    nesting_level: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key)
        return default if value is UNSET else value

    def as_dict(self) -> dict[str, Any]:
        """joblib's shape of a configuration (what ``parallel_config`` yields)."""
        defaults = {"verbose": 0, "max_nbytes": "1M", "mmap_mode": "r"}
        keys = (
            "backend",
            "n_jobs",
            "verbose",
            "temp_folder",
            "max_nbytes",
            "mmap_mode",
            "prefer",
            "require",
        )
        shown = {k: self.get(k, defaults.get(k)) for k in keys}
        shown["backend"] = _shown_backend(shown["backend"])
        return shown


def _shown_backend(backend: Any) -> Any:
    """What ``with parallel_config(...) as config`` shows as the backend: the joblib
    object for a foreign backend (as joblib does), else the :class:`BackendChoice`."""
    if isinstance(backend, BackendChoice) and backend.foreign is not None:
        return backend.foreign
    return backend


DEFAULT_CONFIG = ParallelConfig()
_state = threading.local()
_registered: dict[str, Callable[..., Any]] = {}
_default_name: list[str] = [DEFAULT_BACKEND]


def current_config() -> ParallelConfig:
    """The configuration in force in this thread."""
    config: ParallelConfig = getattr(_state, "config", DEFAULT_CONFIG)
    return config


def set_config(config: ParallelConfig) -> ParallelConfig:
    """Install ``config`` for this thread; returns the one it replaces."""
    old = current_config()
    _state.config = config
    return old


def current_worker() -> WorkerInfo | None:
    """What kind of worker this thread is running a batch in, if any."""
    info: WorkerInfo | None = getattr(_state, "worker", None)
    return info


def set_worker(info: WorkerInfo | None) -> WorkerInfo | None:
    old = current_worker()
    _state.worker = info
    return old


# -- names -------------------------------------------------------------------------


def _joblib_module() -> Any:
    """joblib's ``parallel`` module when joblib is already imported, else None."""
    if "joblib" not in sys.modules:
        return None
    try:
        import joblib.parallel
    except ImportError:  # pragma: no cover - a broken joblib install
        return None
    return joblib.parallel


def _flowcore_names() -> set[str]:
    from flowcore.registry import get_registry

    return set(get_registry().backends())


def known_names() -> list[str]:
    """Every backend name the shim accepts here."""
    names = set(JOBLIB_NAMES) | set(_registered) | _flowcore_names()
    module = _joblib_module()
    if module is not None:
        names |= set(module.BACKENDS) | set(module.EXTERNAL_BACKENDS)
    if "dask" not in _flowcore_names() and (module is None or "dask" not in module.BACKENDS):
        names.discard("dask")
    return sorted(names)


def _invalid(name: object) -> ValueError:
    return ValueError(f"Invalid backend: {name}, expected one of {known_names()}")


def _flowcore_choice(
    name: str, label: str | None, level: int, options: Mapping[str, Any]
) -> BackendChoice:
    from flowcore.registry import get_registry

    spec = get_registry().spec(name)  # says what to install when dependencies are missing
    return BackendChoice(
        label=label or _FLOWCORE_LABELS.get(name, f"flowcore {name!r} backend"),
        capabilities=spec.declared_capabilities(),
        name=name,
        options=dict(options),
        nesting_level=level,
    )


def dask_as_joblib_would(options: dict[str, Any]) -> None:
    """joblib's ``dask`` backend runs on the cluster of ``scheduler_host``, else on the
    Dask client the program already made (``distributed.get_client()``): give flowcore's
    Dask backend that ``address`` or ``client`` (a client it does not close). Without
    either, it starts a local cluster (where joblib would refuse to run)."""
    host = options.pop("scheduler_host", None)
    if host is not None:
        options.setdefault("address", host)
    if "address" in options or "client" in options:
        return
    distributed = sys.modules.get("distributed")
    if distributed is None:  # never imported: no client can exist
        return
    try:
        options["client"] = distributed.default_client()
    except ValueError:  # no client yet
        return


def choose(
    backend: Any, nesting_level: int = 0, options: Mapping[str, Any] | None = None
) -> BackendChoice:
    """Resolve what the user passed as ``backend`` (a name, an instance, a class's
    product) to a :class:`BackendChoice`. Raises ``ValueError("Invalid backend: ...")``
    for an unknown name, as joblib does."""
    options = dict(options or {})
    if isinstance(backend, BackendChoice):
        return backend
    if isinstance(backend, str):
        return _choose_name(backend, nesting_level, options)
    if isinstance(backend, Backend):
        return BackendChoice(
            label=_FLOWCORE_LABELS.get(backend.name, f"flowcore {backend.name!r} backend"),
            capabilities=backend.capabilities,
            instance=backend,
            nesting_level=nesting_level,
        )
    if hasattr(backend, "effective_n_jobs") and hasattr(backend, "configure"):
        return _choose_joblib_object(backend, nesting_level)
    if hasattr(backend, "Pool") and hasattr(backend, "Lock"):  # a multiprocessing context
        return _flowcore_choice("loky", "MultiprocessingBackend", nesting_level, {})
    raise _invalid(backend)


def _choose_name(name: str, level: int, options: dict[str, Any]) -> BackendChoice:
    factory = _registered.get(name)
    if factory is not None:
        made = _call_factory(factory, level, options)
        return choose(made, level)
    if name in JOBLIB_NAMES:
        flowcore_name, label = JOBLIB_NAMES[name]
        if flowcore_name in _flowcore_names():
            return _flowcore_choice(flowcore_name, label, level, options)
        if name == "dask" and _joblib_module() is None:
            raise ValueError(
                "backend 'dask' needs flowcore's Dask backend; install it with "
                "pip install 'flowcore[dask]'"
            )
    if name in _flowcore_names():
        return _flowcore_choice(name, None, level, options)
    module = _joblib_module()
    if module is not None:
        if name not in module.BACKENDS and name in module.EXTERNAL_BACKENDS:
            module.EXTERNAL_BACKENDS[name]()
        if name in module.BACKENDS:
            return _choose_joblib_object(
                _call_factory(module.BACKENDS[name], level, options), level
            )
    raise _invalid(name)


def _call_factory(factory: Callable[..., Any], level: int, options: Mapping[str, Any]) -> Any:
    """joblib calls backend factories with ``nesting_level``; flowcore factories may not
    take it."""
    try:
        return factory(nesting_level=level, **options)
    except TypeError:
        return factory(**options)


def _choose_joblib_object(backend: Any, level: int) -> BackendChoice:
    cls = type(backend)
    if cls.__module__ == "joblib._parallel_backends" and cls.__name__ in _JOBLIB_CLASSES:
        joblib_name = _JOBLIB_CLASSES[cls.__name__]
        own_level = getattr(backend, "nesting_level", None)
        return _choose_name(
            joblib_name,
            level if own_level is None else own_level,
            dict(getattr(backend, "backend_kwargs", {}) or {}),
        )
    flowcore_name = getattr(backend, "flowcore_backend_name", None)
    if isinstance(flowcore_name, str):  # flowcore's own joblib backend, seen from the shim
        return _choose_name(flowcore_name, level, {})
    if getattr(backend, "nesting_level", None) is None:
        backend.nesting_level = level
    return BackendChoice(
        label=cls.__name__,
        capabilities=Capabilities(in_process=bool(getattr(backend, "uses_threads", False))),
        foreign=backend,
        nesting_level=backend.nesting_level,
    )


def default_choice(nesting_level: int) -> BackendChoice:
    """The backend used when nothing is configured: joblib's default (``loky``)."""
    return choose(_default_name[0], nesting_level)


def threads_choice(nesting_level: int) -> BackendChoice:
    return choose("threading", nesting_level)


# -- n_jobs --------------------------------------------------------------------------


def cpu_count(only_physical_cores: bool = False) -> int:
    """The number of CPUs this process may use (loky's count when loky is installed:
    it honours CPU affinity and cgroup quotas)."""
    try:
        from loky import cpu_count as loky_cpu_count
    except ImportError:
        return usable_cpu_count()
    return int(loky_cpu_count(only_physical_cores=only_physical_cores))


def as_n_jobs(n_jobs: Any) -> int | None:
    """joblib's conversion: None stays None, anything else through ``int()``."""
    if n_jobs is None:
        return None
    try:
        return int(n_jobs)
    except (TypeError, ValueError):
        raise ValueError("n_jobs could not be converted to int") from None


def effective_workers(choice: BackendChoice, n_jobs: int | None, *, stacklevel: int = 4) -> int:
    """How many jobs ``choice`` runs at once for ``n_jobs``, by joblib's rules.

    0 is an error; None means 1; negatives count from the CPU count (-1: all CPUs);
    process pools nested below threads run sequentially, with joblib's warning.
    """
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if choice.foreign is not None:
        return int(choice.foreign.effective_n_jobs(n_jobs))
    if n_jobs is None:
        return choice.instance.max_workers if choice.instance is not None else 1
    if choice.capabilities.inline:
        return 1
    if choice.processes:
        single = _nested_process_warning(choice, n_jobs)
        if single is not None:
            if n_jobs != 1:
                warnings.warn(single, stacklevel=stacklevel)
            return 1
    if n_jobs < 0:
        return max(cpu_count() + 1 + n_jobs, 1)
    return n_jobs


def _nested_process_warning(choice: BackendChoice, n_jobs: int) -> str | None:
    worker = current_worker()
    main = threading.current_thread() is threading.main_thread()
    if worker is not None and worker.daemonic:
        kind = "Loky" if choice.label == "LokyBackend" else "Multiprocessing"
        if kind == "Loky":
            return (
                "Loky-backed parallel loops cannot be called in a multiprocessing, setting n_jobs=1"
            )
        return "Multiprocessing-backed parallel loops cannot be nested, setting n_jobs=1"
    if choice.label == "MultiprocessingBackend" and worker is not None and worker.in_process:
        return (
            "Multiprocessing-backed parallel loops cannot be nested, below loky, setting n_jobs=1"
        )
    if not (main or choice.nesting_level == 0):
        if choice.label == "MultiprocessingBackend":
            return "Multiprocessing-backed parallel loops cannot be nested below threads, setting n_jobs=1"
        return "Loky-backed parallel loops cannot be nested below threads, setting n_jobs=1"
    return None


@dataclass(frozen=True)
class Resolved:
    """What a ``Parallel`` (or ``effective_n_jobs``) runs on, after the configuration."""

    choice: BackendChoice
    n_jobs: int | None
    verbose: int
    config: ParallelConfig


def resolve(
    backend: Any = None,
    n_jobs: Any = None,
    *,
    prefer: Any = UNSET,
    require: Any = UNSET,
    verbose: Any = UNSET,
    backend_kwargs: Mapping[str, Any] | None = None,
) -> Resolved:
    """Apply joblib's precedence: explicit arguments, then ``parallel_config``, then
    defaults; ``prefer`` is a soft hint, ``require='sharedmem'`` a hard constraint."""
    config = current_config()
    prefer = config.get("prefer") if prefer is UNSET else prefer
    require = config.get("require") if require is UNSET else require
    verbose_value = config.get("verbose", 0) if verbose is UNSET else verbose
    if prefer not in VALID_HINTS:
        raise ValueError(
            f"prefer={prefer} is not a valid backend hint, expected one of {VALID_HINTS}"
        )
    if require not in VALID_CONSTRAINTS:
        raise ValueError(
            f"require={require} is not a valid backend constraint, expected one of {VALID_CONSTRAINTS}"
        )
    if prefer == "processes" and require == "sharedmem":
        raise ValueError(
            "prefer == 'processes' and require == 'sharedmem' are inconsistent settings"
        )

    level = config.nesting_level
    context_n_jobs = config.n_jobs
    explicit = config.backend is not UNSET and config.backend is not None
    active: BackendChoice = config.backend if explicit else default_choice(level)
    if (require == "sharedmem" and not active.supports_sharedmem) or (
        not explicit and prefer == "threads" and not active.uses_threads
    ):
        replacement = threads_choice(active.nesting_level)
        if explicit and int(verbose_value or 0) >= 10:
            print(
                f"Using {replacement.label} as joblib backend instead of {active.label} "
                "as the latter does not provide shared memory semantics."
            )
        active, context_n_jobs = replacement, 1
    elif not explicit and prefer == "processes" and active.uses_threads:
        active = choose("loky", active.nesting_level)

    if backend is None or backend is UNSET:
        choice = active
    else:
        choice = choose(backend, level)
        if require == "sharedmem" and not choice.supports_sharedmem:
            raise ValueError(f"Backend {choice.label} does not support shared memory")
    if n_jobs is None or n_jobs is UNSET:
        n_jobs = None if context_n_jobs is UNSET else context_n_jobs
    return Resolved(choice, as_n_jobs(n_jobs), int(verbose_value or 0), config)


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """How many jobs would run at once for ``n_jobs`` with the configured backend
    (joblib's ``effective_n_jobs``): 1 stays 1, None takes the configured n_jobs."""
    if n_jobs == 1:
        return 1
    resolved = resolve(None, n_jobs)
    return effective_workers(resolved.choice, resolved.n_jobs)


# -- parallel_config ------------------------------------------------------------------


class parallel_config:
    """Set the backend and the defaults of ``Parallel`` in this thread (joblib's API).

    Takes effect when constructed (``with`` is the usual way; ``unregister()`` undoes
    it otherwise) and nests: parameters left out inherit from the enclosing level,
    ``n_jobs=None`` explicitly resets to the backend's default (1). ``backend`` is any
    name :func:`choose` accepts -- joblib's (``loky``, ``threading``, ...), a flowcore
    backend name (``threads``, ``dask``, ...), or an instance. Extra keyword arguments
    are options of the backend (only with a backend name). Raises ``ValueError`` for an
    unknown backend, as joblib does.
    """

    def __init__(
        self,
        backend: Any = UNSET,
        *,
        n_jobs: Any = UNSET,
        verbose: Any = UNSET,
        temp_folder: Any = UNSET,
        max_nbytes: Any = UNSET,
        mmap_mode: Any = UNSET,
        prefer: Any = UNSET,
        require: Any = UNSET,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        self.old_parallel_config = current_config()
        self._owned_backend: Backend | None = None
        level = self.old_parallel_config.nesting_level
        if backend is UNSET or backend is None:
            if inner_max_num_threads is not None or backend_params:
                raise ValueError(
                    "inner_max_num_threads and other constructor parameters backend_params "
                    "are only supported when backend is not None."
                )
            choice: Any = UNSET
        else:
            if not isinstance(backend, str) and backend_params:
                raise ValueError(
                    "Constructor parameters backend_params are only supported when backend is a string."
                )
            choice = choose(backend, level, backend_params)
            if inner_max_num_threads is not None:
                supported = (
                    bool(getattr(choice.foreign, "supports_inner_max_num_threads", False))
                    if choice.foreign is not None
                    else choice.label == "LokyBackend"
                )
                if not supported:
                    raise InvalidBackendOption(
                        f"{choice.label} does not accept setting the inner_max_num_threads argument."
                    )
                if choice.foreign is not None:
                    choice.foreign.inner_max_num_threads = inner_max_num_threads
                choice = replace(choice, inner_max_num_threads=inner_max_num_threads)
            if (
                choice.capabilities.connects_to_cluster
                and choice.name is not None
                and choice.instance is None
            ):
                # A cluster is costly to start: every Parallel in this block shares one.
                from flowcore.selection import get_backend

                options = dict(choice.options)
                if choice.name == "dask":
                    dask_as_joblib_would(options)
                self._owned_backend = get_backend(choice.name, **options)
                choice = replace(choice, instance=self._owned_backend)
        given = {
            "backend": choice,
            "n_jobs": n_jobs,
            "verbose": verbose,
            "temp_folder": temp_folder,
            "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode,
            "prefer": prefer,
            "require": require,
        }
        self.parallel_config = replace(
            self.old_parallel_config, **{k: v for k, v in given.items() if v is not UNSET}
        )
        set_config(self.parallel_config)

    def __enter__(self) -> Any:
        return self.parallel_config.as_dict()

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Restore the configuration that was in force before this one (and shut down
        the cluster backend this block started, if any)."""
        set_config(self.old_parallel_config)
        owned, self._owned_backend = self._owned_backend, None
        if owned is not None:
            owned.shutdown(wait=True)


class parallel_backend(parallel_config):
    """joblib's older form of :class:`parallel_config`: ``n_jobs`` defaults to -1 and
    ``with`` yields ``(backend, n_jobs)``."""

    def __init__(
        self,
        backend: Any,
        n_jobs: Any = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        super().__init__(
            backend=backend,
            n_jobs=n_jobs,
            inner_max_num_threads=inner_max_num_threads,
            **backend_params,
        )

    def __enter__(self) -> Any:
        return (
            _shown_backend(self.parallel_config.get("backend")),
            self.parallel_config.get("n_jobs"),
        )


def register_parallel_backend(
    name: str, factory: Callable[..., Any], make_default: bool = False
) -> None:
    """Register a backend factory under ``name`` (joblib's API).

    ``factory()`` may return a flowcore :class:`~flowcore.backend.Backend` or a joblib
    ``ParallelBackendBase``: joblib's own classes map onto flowcore backends, other
    joblib backends run through ``joblib.Parallel``. When joblib is imported the
    registration is also made there, so code that calls joblib directly finds it.
    ``make_default`` makes it the shim's default backend.
    """
    if not callable(factory):
        raise TypeError(f"register_parallel_backend: factory must be callable, got {factory!r}")
    _registered[name] = factory
    module = _joblib_module()
    if (
        module is not None
        and isinstance(factory, type)
        and issubclass(factory, module.ParallelBackendBase)
    ):
        module.BACKENDS[name] = factory
    if make_default:
        _default_name[0] = name


def unregister_parallel_backend(name: str) -> None:
    """Forget a backend registered with :func:`register_parallel_backend` (tests)."""
    _registered.pop(name, None)
    if _default_name[0] == name:
        _default_name[0] = DEFAULT_BACKEND
