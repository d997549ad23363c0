"""The plugin manager and the table of registered backends.

Built once, on first use (never at ``import flowcore``): registers the built-in plugin
modules from :data:`BUILTIN_PLUGINS` exactly as a third-party plugin is registered, then
loads the entry-point group ``flowcore`` unless ``FLOWCORE_DISABLE_PLUGIN_AUTOLOAD`` is
set. The backend table is rebuilt whenever a plugin is registered or unregistered.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcore.errors import BackendNotFoundError, BackendRegistrationError

if TYPE_CHECKING:
    # flowcore.backend loads with the first backend table (``Registry.backends``), not
    # with ``import flowcore``: every module on the run paths imports this one.
    from flowcore.backend import Backend, BackendSpec
    from flowcore.events import RunEvent

PLUGIN_LOGGER = "flowcore.plugins"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "flowcore.backends.sequential",
    "flowcore.backends.threads",
    "flowcore.backends.loky",
    "flowcore.backends.joblib",
    "flowcore.backends.dask",
    "flowcore.plugins.file_store",
    "flowcore.plugins.history",
)
ENTRY_POINT_GROUP = "flowcore"
AUTOLOAD_ENV = "FLOWCORE_DISABLE_PLUGIN_AUTOLOAD"

LIFECYCLE_HOOKS: tuple[str, ...] = (
    "flowcore_run_events",
    "flowcore_flow_run_started",
    "flowcore_flow_run_finished",
    "flowcore_task_run_submitted",
    "flowcore_task_run_finished",
)


@dataclass(frozen=True)
class RegisteredBackend:
    """A backend spec together with the name of the plugin that provided it."""

    spec: BackendSpec
    plugin: str


def _accepted_options(factory: Callable[..., Any]) -> str:
    """``"; it accepts: a, b (...)"`` naming the keyword options ``factory`` takes, for
    an error about options it refused; empty when its signature cannot tell."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return ""
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return f"; it accepts: {', '.join(names)}" if names else "; it accepts no options"


class Registry:
    """Owns the pluggy plugin manager and what it currently provides."""

    def __init__(self, *, autoload: bool = True) -> None:
        import importlib

        self._lock = threading.RLock()
        import pluggy

        from flowcore import hookspecs

        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        for module_name in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
        self._backends: dict[str, RegisteredBackend] | None = None
        if autoload:
            self._load_entry_points()
        self._stores: dict[str, tuple[Any, str]] | None = None
        self._history_stores: dict[str, tuple[Any, str]] | None = None
        self.observed: frozenset[str] = frozenset()
        #: some plugin observes the run-event stream (or a per-run lifecycle hook)
        self.observes_events = False
        self.batches_direct_runs = False
        #: only run-event observers, each accepting deferred reports (flowcore.deferred_runs)
        self.defers_runs = False
        #: the ``flowcore_run_events`` implementations, in pluggy's call order, when all
        #: are plain functions of ``events``: publish calls them without pluggy's machinery
        self.run_event_functions: tuple[Any, ...] | None = None
        self._refresh()

    # -- plugins ------------------------------------------------------------
    def _load_entry_points(self) -> None:
        """Register the plugins of the entry-point group ``flowcore``, each checked on
        its own: one that fails to import, or whose hooks fail or return bad backends,
        is left out with a :class:`~flowcore.errors.ConfigurationWarning` naming it, so
        that one broken installed package does not stop every flow."""
        import warnings
        from importlib.metadata import entry_points

        from flowcore.errors import ConfigurationWarning

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(entry.name) is not None or self.pm.is_blocked(entry.name):
                continue
            plugin: object = None
            try:
                plugin = entry.load()
                self.pm.register(plugin, name=entry.name)
                self._refresh()  # its backends and stores are valid, or it goes
            except Exception as exc:
                if plugin is not None and self.pm.is_registered(plugin):
                    self.pm.unregister(plugin)
                dist = entry.dist
                source = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"
                warnings.warn(
                    f"flowcore plugin {entry.name!r} (entry point {entry.value} of {source}) "
                    f"could not be loaded and is left out: {type(exc).__name__}: {exc}. Fix or "
                    "uninstall that package, or set FLOWCORE_DISABLE_PLUGIN_AUTOLOAD=1 to load no "
                    "installed plugins",
                    ConfigurationWarning,
                    stacklevel=2,
                )

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module; returns its name. Validates its backends."""
        with self._lock:
            registered = self.pm.register(plugin, name=name)
            if registered is None:
                raise BackendRegistrationError(
                    f"plugin {name or plugin!r} is already registered (or was blocked)"
                )
            try:
                self._refresh()
            except Exception:
                self.pm.unregister(plugin)
                self._refresh()
                raise
            return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> None:
        """Unregister a plugin given as the object or by name; unknown plugins are ignored."""
        with self._lock:
            if plugin is None and name is not None:
                plugin = self.pm.get_plugin(name)
            if plugin is not None and self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._refresh()

    def _refresh(self) -> None:
        self._backends = None
        self._stores = None
        self._history_stores = None
        self.backends()  # validate now, so a bad plugin fails at registration
        self.cache_stores()
        self.history_stores()
        self.observed = frozenset(
            hook for hook in LIFECYCLE_HOOKS if getattr(self.pm.hook, hook).get_hookimpls()
        )
        self.observes_events = bool(self.observed)
        #: only run-event observers: direct calls may report in batches (flowcore.direct_runs)
        self.batches_direct_runs = self.observed == {"flowcore_run_events"}
        impls = self.pm.hook.flowcore_run_events.get_hookimpls()
        plain = all(
            not (impl.hookwrapper or impl.wrapper) and tuple(impl.argnames) == ("events",) for impl in impls
        )
        self.run_event_functions = tuple(impl.function for impl in reversed(impls)) if plain else None
        from flowcore.deferred_runs import MARKER

        self.defers_runs = self.batches_direct_runs and all(getattr(impl.function, MARKER, False) for impl in impls)

    # -- backends -----------------------------------------------------------
    def backends(self) -> dict[str, RegisteredBackend]:
        """Registered backends by name, in registration order."""
        with self._lock:
            if self._backends is not None:
                return self._backends
            table: dict[str, RegisteredBackend] = {}
            for impl in reversed(self.pm.hook.flowcore_backends.get_hookimpls()):
                plugin_name = impl.plugin_name
                specs = impl.function()
                if specs is None:
                    continue
                if not isinstance(specs, (list, tuple)):
                    raise BackendRegistrationError(
                        f"plugin {plugin_name!r}: flowcore_backends must return a list of "
                        f"BackendSpec, got {specs!r}"
                    )
                for spec in specs:
                    _validate_spec(spec, plugin_name)
                    if spec.name in table:
                        raise BackendRegistrationError(
                            f"backend name {spec.name!r} is registered twice: by plugin "
                            f"{table[spec.name].plugin!r} and by plugin {plugin_name!r}; "
                            "rename one of them or unregister a plugin"
                        )
                    table[spec.name] = RegisteredBackend(spec, plugin_name)
            self._backends = table
            return table

    # -- cache stores ---------------------------------------------------------
    def cache_stores(self) -> dict[str, tuple[Any, str]]:
        """Registered cache stores by name: ``(CacheStoreSpec, plugin name)``."""
        with self._lock:
            if self._stores is None:
                self._stores = self._store_table(
                    "flowcore_cache_stores", "cache store", "flowcore.caching.storage.CacheStoreSpec"
                )
            return self._stores

    def history_stores(self) -> dict[str, tuple[Any, str]]:
        """Registered run-history stores by name: ``(HistoryStoreSpec, plugin name)``."""
        with self._lock:
            if self._history_stores is None:
                self._history_stores = self._store_table(
                    "flowcore_history_stores", "history store", "flowcore.history.store.HistoryStoreSpec"
                )
            return self._history_stores

    def _store_table(self, hook_name: str, what: str, spec_type: str) -> dict[str, tuple[Any, str]]:
        table: dict[str, tuple[Any, str]] = {}
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            specs = impl.function() or []
            if not isinstance(specs, (list, tuple)):
                raise BackendRegistrationError(
                    f"plugin {impl.plugin_name!r}: {hook_name} must return a list "
                    f"of {spec_type.rpartition('.')[2]}, got {specs!r}"
                )
            for spec in specs:
                name = getattr(spec, "name", None)
                if not isinstance(name, str) or not name or not callable(getattr(spec, "factory", None)):
                    raise BackendRegistrationError(
                        f"plugin {impl.plugin_name!r} returned {spec!r} from {hook_name}; "
                        f"return a list of {spec_type}"
                    )
                if name in table:
                    raise BackendRegistrationError(
                        f"{what} name {name!r} is registered twice: by plugin "
                        f"{table[name][1]!r} and by plugin {impl.plugin_name!r}"
                    )
                table[name] = (spec, impl.plugin_name)
        return table

    def spec(self, name: str) -> BackendSpec:
        """The spec registered under ``name``; raises BackendNotFoundError otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"a backend name must be a str, got {type(name).__name__}")
        table = self.backends()
        entry = table.get(name)
        if entry is None:
            raise BackendNotFoundError(name, table)
        missing = entry.spec.missing_requirements()
        if missing:
            extra = entry.spec.extra
            fix = (
                f'pip install "flowcore[{extra}]"'
                if extra
                else "install " + ", ".join(missing)
            )
            raise BackendNotFoundError(
                name,
                table,
                hint=(
                    f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
                    f"fix: {fix}"
                ),
            )
        return entry.spec

    def create(self, name: str, **options: Any) -> Backend:
        """Create (but do not start) a backend by name with the given options (which
        :func:`options_of` gives back for the new backend)."""
        spec = self.spec(name)
        try:
            backend = spec.factory(**options)
        except TypeError as exc:
            raise TypeError(f"invalid options for backend {name!r}: {exc}{_accepted_options(spec.factory)}") from exc
        for attribute in ("submit", "shutdown", "name", "kind", "max_workers"):
            if not hasattr(backend, attribute):
                raise BackendRegistrationError(
                    f"the factory of backend {name!r} returned {backend!r}, which has no "
                    f"{attribute!r}; a backend must look like flowcore.backend.Backend"
                )
        with contextlib.suppress(TypeError):  # a backend that takes no weak reference
            _created_with[backend] = dict(options)
        return backend


#: the options each backend made by :meth:`Registry.create` was made with
_created_with: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def options_of(backend: Any) -> dict[str, Any] | None:
    """The options ``backend`` was created with by name (``get_backend``, a flow's
    backend name, the configured default, ``flowcore run --backend-options``); None
    for a backend object made some other way (its options are not known)."""
    try:
        return _created_with.get(backend)
    except TypeError:
        return None


def _validate_spec(spec: object, plugin_name: str) -> None:
    from flowcore.backend import BackendKind, BackendSpec, Capabilities  # once per table build

    if not isinstance(spec, BackendSpec):
        raise BackendRegistrationError(
            f"plugin {plugin_name!r} returned {spec!r} from flowcore_backends; "
            "return a list of flowcore.backend.BackendSpec"
        )
    if not spec.name or not spec.name.replace("-", "_").replace(".", "_").isidentifier():
        raise BackendRegistrationError(
            f"plugin {plugin_name!r} registers a backend with an invalid name {spec.name!r}; "
            "use letters, digits, '_', '-' or '.'"
        )
    if not callable(spec.factory):
        raise BackendRegistrationError(
            f"backend {spec.name!r} from plugin {plugin_name!r} has a factory that is not callable"
        )
    if not isinstance(spec.kind, BackendKind):
        raise BackendRegistrationError(
            f"backend {spec.name!r} from plugin {plugin_name!r} has kind {spec.kind!r}; "
            "use a flowcore.backend.BackendKind"
        )
    if spec.capabilities is not None and not isinstance(spec.capabilities, Capabilities):
        raise BackendRegistrationError(
            f"backend {spec.name!r} from plugin {plugin_name!r} has capabilities "
            f"{spec.capabilities!r}; use a flowcore.backend.Capabilities or None"
        )


#: the process-wide registry once :func:`get_registry` has built it, else None (hot
#: paths read it directly: one module attribute instead of a call)
built: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first call."""
    global built
    registry = built
    if registry is not None:
        return registry
    with _registry_lock:
        if built is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
            built = Registry(autoload=autoload)
        return built


def observes_events() -> bool:
    """True when some plugin observes the run-event stream (cheap: one attribute)."""
    registry = built if built is not None else get_registry()
    return registry.observes_events


def _log_plugin_failure(hook_name: str | None) -> None:
    """Log the exception being handled: a plugin failed in ``hook_name``. (``logging``
    loads here or with the first run, not with ``import flowcore``.)"""
    import logging

    logging.getLogger(PLUGIN_LOGGER).exception(
        "a flowcore plugin failed in %s; the run is not affected", hook_name
    )


def publish(events: Sequence[RunEvent]) -> None:
    """Deliver run events to the observers, in order (see :mod:`flowcore.events`).

    ``flowcore_run_events`` receives the sequence as it is; the per-run hooks
    (``flowcore_task_run_submitted`` ...) are called for each event they describe. An
    observer's exception is logged and never affects the run.
    """
    registry = built if built is not None else get_registry()
    observed = registry.observed
    if not observed or not events:
        return
    hook = registry.pm.hook
    if "flowcore_run_events" in observed:
        functions = registry.run_event_functions
        if functions is not None:  # the same calls as pluggy's, a few microseconds cheaper
            for function in functions:
                try:
                    function(events)
                except Exception:
                    _log_plugin_failure("flowcore_run_events")
        else:
            try:
                hook.flowcore_run_events(events=events)
            except Exception:
                _log_plugin_failure("flowcore_run_events")
    per_run = observed - {"flowcore_run_events"}
    if per_run:
        for event in events:
            _call_per_run_hook(registry, per_run, event)


def _call_per_run_hook(registry: Registry, per_run: frozenset[str], event: RunEvent) -> None:
    from flowcore.events import EventKind, FlowRunEvent

    hook = registry.pm.hook
    name: str | None = None
    try:
        if isinstance(event, FlowRunEvent):
            if event.kind is EventKind.STARTED and "flowcore_flow_run_started" in per_run:
                name = "flowcore_flow_run_started"
                hook.flowcore_flow_run_started(flow=event.flow, run=event.run)
            elif event.kind is EventKind.FINISHED and "flowcore_flow_run_finished" in per_run:
                name = "flowcore_flow_run_finished"
                hook.flowcore_flow_run_finished(flow=event.flow, run=event.run, state=event.state)
        elif event.kind is EventKind.SUBMITTED and "flowcore_task_run_submitted" in per_run:
            name = "flowcore_task_run_submitted"
            hook.flowcore_task_run_submitted(task=event.task, call=event.call)
        elif event.kind is EventKind.FINISHED and "flowcore_task_run_finished" in per_run:
            name = "flowcore_task_run_finished"
            hook.flowcore_task_run_finished(task=event.task, call=event.call, state=event.state)
    except Exception:
        _log_plugin_failure(name)


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook if any plugin implements it; observer errors are logged."""
    registry = built if built is not None else get_registry()
    if hook_name not in registry.observed:
        return
    try:
        getattr(registry.pm.hook, hook_name)(**kwargs)
    except Exception:
        _log_plugin_failure(hook_name)


def is_observed(hook_name: str) -> bool:
    """True when at least one plugin implements ``hook_name``."""
    registry = built if built is not None else get_registry()
    return hook_name in registry.observed


__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "RegisteredBackend",
    "Registry",
    "built",
    "get_registry",
    "is_observed",
    "notify",
    "observes_events",
    "publish",
]
