"""Plugins (installed as ``flowcore.plugins``): observers shipped with flowcore, and the
functions to register plugins programmatically.

A plugin is a module or object whose functions are decorated with
``flowcore.hookimpl`` (see :mod:`flowcore.hookspecs` for the hooks). Third-party
packages are found through the entry-point group ``flowcore``; code can also call
:func:`register` / :func:`unregister`.
"""

from __future__ import annotations

from flowcore.registry import get_registry


def register(plugin: object, name: str | None = None) -> str:
    """Register ``plugin`` (a module or an object with hook implementations).

    Returns the name it was registered under. Backends it provides are validated now:
    a duplicate backend name raises :class:`~flowcore.errors.BackendRegistrationError`
    and leaves the plugin unregistered.
    """
    return get_registry().register(plugin, name=name)


def unregister(plugin: object | None = None, *, name: str | None = None) -> None:
    """Unregister a plugin, given as the object or by name. Unknown plugins are ignored."""
    get_registry().unregister(plugin, name=name)


__all__ = ["register", "unregister"]
