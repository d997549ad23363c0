"""Backend selection: ``get_backend``, ``use_backend`` and the precedence rules.

Highest precedence first: ``backend=`` on ``@flow`` / ``with_options``; the innermost
enclosing ``use_backend`` block or parent flow; ``FLOWCORE_BACKEND`` (+ options);
``[tool.flowcore]`` in pyproject.toml; ``threads``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flowcore.context import BackendSlot, RunScope, _scope, current_scope
from flowcore.errors import BackendNotFoundError, ConfigurationError
from flowcore.registry import get_registry

if TYPE_CHECKING:
    from flowcore.backend import Backend


def get_backend(name: str | None = None, **options: Any) -> Backend:
    """Create a backend (not started: no workers until the first submit).

    With no name, the configured default (environment, pyproject.toml, ``threads``),
    with ``options`` added to the configured ones. The caller owns the result: shut it
    down, or use it as a context manager, or pass it to ``@flow(backend=...)`` /
    ``use_backend`` (which then never shut it down).
    """
    if name is None:
        return _create_configured(options)
    return get_registry().create(name, **options)


def _create_configured(extra_options: dict[str, Any]) -> Backend:
    """The configured backend; errors name where the configuration came from."""
    from flowcore.config import configured_backend

    choice = configured_backend()
    try:
        return get_registry().create(choice.name, **{**choice.options, **extra_options})
    except BackendNotFoundError as exc:
        raise BackendNotFoundError(
            exc.name, exc.registered, hint=f"{exc.reason} (backend chosen by {choice.source})"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"backend {choice.name!r} rejected the options {choice.options!r} from "
            f"{choice.source}: {exc}"
        ) from exc


def slot_for(
    backend: str | Backend | None, parent: RunScope | None, options: dict[str, Any] | None = None
) -> BackendSlot:
    """The backend a new flow run uses, created now so bad settings fail before the body.

    A name creates a backend the run owns (and shuts down), with ``options``; an
    instance is used and never shut down; with neither, a subflow borrows its parent's
    backend and a top-level flow creates the configured one.
    """
    if isinstance(backend, str):
        return BackendSlot(get_registry().create(backend, **(options or {})), owned=True)
    if backend is not None:
        return BackendSlot(backend, owned=False)
    if parent is not None:
        return parent.slot.borrow()
    return BackendSlot(_create_configured({}), owned=True)


@contextlib.contextmanager
def use_backend(backend: str | Backend | None = None, **options: Any) -> Iterator[Backend]:
    """Run tasks submitted in this block (and flows without their own backend) on a backend.

    ``backend`` is a registered name (created here with ``options``, shut down when
    the block ends), a Backend instance (used, never shut down: the caller owns it), or
    None for the configured default. ``.submit`` and ``.map`` work inside the block even
    outside a flow; the block waits for its futures before it ends. Yields the backend
    (started lazily on first submit).
    """
    if current_scope() is None:
        from flowcore.config import check_environment

        check_environment()
    if isinstance(backend, str) or backend is None:
        instance = get_backend(backend, **options)
        owned = True
    else:
        if options:
            raise TypeError(
                "use_backend() got options together with a backend instance; pass options "
                "to get_backend(name, **options) instead"
            )
        instance, owned = backend, False
    scope = RunScope(BackendSlot(instance, owned=False), parent=current_scope())
    token = _scope.set(scope)
    interrupted = False
    try:
        yield instance
    except BaseException:
        interrupted = True
        raise
    finally:
        _scope.reset(token)
        try:
            if interrupted:
                for future in scope.outstanding():
                    future.cancel()
            else:
                scope.wait_all()
        finally:
            if owned:
                instance.shutdown(wait=not interrupted, cancel_futures=interrupted)


__all__ = ["get_backend", "use_backend"]
