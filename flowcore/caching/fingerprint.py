"""Code fingerprints: what a task's result depends on in the user's own code.

:func:`function_fingerprint` hashes a function's code together with the code of the
functions and classes it uses from the user's own modules, transitively, and the
simple constants (numbers, strings, tuples of them) it reads from module globals.
Editing a helper that a task calls changes the task's fingerprint; editing nothing
keeps it stable across interpreter runs (of one Python version).

"Code" is the compiled code object (:func:`~flowcore.caching._callables.code_digest`:
bytecode, constants, names, argument layout; not file names or line numbers) and a
function's default values (constants by value, other objects by their type); a class
is its bases, its methods' code and its constant attributes. Never source text: a function defined in the user's script (``__main__``)
reaches a process worker pickled by value (cloudpickle), where its source file may
be elsewhere or missing and ``inspect`` finds the worker's ``__main__`` instead. The
fingerprint depends on the code only, so it is the same in the flow's process and in
every worker. Comments, blank lines and moving a function do not change it.

"Uses" is read from the bytecode: the names loaded by the function and its nested
code objects (``co_names``), looked up in the function's globals. A module used
as ``helpers.compute(...)`` contributes the attributes named in the code
(``compute``). Calls made through other objects (``obj.method()`` on an argument,
``getattr`` with a computed name) are not followed.

"The user's own modules": modules with a source file outside the standard library
and outside site-packages / dist-packages (``sysconfig`` paths), plus ``__main__``
(the user's script; in a worker, whatever its own ``__main__`` is, an object whose
``__module__`` is ``"__main__"`` came from the script); never flowcore itself,
builtins or extension modules. The walk stops ``MAX_DEPTH`` references away from the
task and after ``MAX_OBJECTS`` objects.

Values a function captured from enclosing functions (closure cells) are part of the
fingerprint: the tasks a factory makes (``make_scaler(2)``, ``make_scaler(10)``)
differ by them. Captured user code is followed like a global; any other value is
hashed like an argument, and one that has no deterministic hash raises
:class:`~flowcore.errors.CacheKeyError` (the task's ``cache_key_errors`` decides what
the run does).

Results are cached per function (weakly), so repeated calls cost one dict lookup;
globals are read on the first call for a function in a process. A cached result is
used while the closure cells it read still hold the same objects (constants, code);
one that read a value that can change in place (a list, an object) is computed on
every call, as arguments are hashed on every call.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from flowcore.caching._callables import code_digest
from flowcore.caching.hashing import content_hash, hash_value

MAX_DEPTH = 8
MAX_OBJECTS = 512

#: A closure cell as read by a walk: its function (weakly: a cell may hold the
#: function itself), its index, and its value (a constant, held) or a weak reference
#: to it (code), or ``_EMPTY``. A cached fingerprint stays valid while every cell it
#: read still holds the very same object.
_CellRead = tuple["weakref.ref[types.FunctionType]", int, object]
_EMPTY = object()

_fingerprints: weakref.WeakKeyDictionary[types.FunctionType, tuple[str, tuple[_CellRead, ...]]] = (
    weakref.WeakKeyDictionary()
)

#: Global values read by code that count as constants (their value is hashed).
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


def function_fingerprint(fn: Callable[..., Any]) -> str:
    """32 hex digits identifying ``fn``'s code and the user code it depends on.

    Accepts functions, bound methods, ``functools.partial`` objects, classes and
    callable instances (their class's ``__call__``). Never raises for a callable:
    what cannot be read is represented by its qualified name. The result does not
    depend on the process computing it (see the module docstring).

    Raises :class:`~flowcore.errors.CacheKeyError` when a value captured in a closure
    (``x`` in ``def make(x): @task def t(): ... x ...``) has no deterministic hash:
    closure values are part of the fingerprint, hashed like arguments.
    """
    target = _function_of(fn)
    # Per function, not per code object: the functions a factory makes share one
    # code object and differ by their defaults and closures.
    if isinstance(target, types.FunctionType):
        cached = _fingerprints.get(target)
        if cached is not None and _cells_unchanged(cached[1]):
            return cached[0]
    walk = _Walk()
    walk.add(target, 0)
    fingerprint = content_hash(sorted(walk.parts))
    if isinstance(target, types.FunctionType) and walk.cells is not None:
        _fingerprints[target] = (fingerprint, tuple(walk.cells))
    return fingerprint


def _cells_unchanged(cells: tuple[_CellRead, ...]) -> bool:
    """True while every cell a walk read holds the same object as then."""
    for function_ref, index, seen in cells:
        function = function_ref()
        if function is None or function.__closure__ is None:
            return False
        try:
            current = function.__closure__[index].cell_contents
        except ValueError:
            current = _EMPTY
        if isinstance(seen, weakref.ref):
            seen = seen()
        if current is not seen:
            return False
    return True


def _cell_read(fn: types.FunctionType, index: int, value: object) -> _CellRead | None:
    """How a walk remembers cell ``index`` of ``fn``, or None when its value may change
    in place (a list, an object): then the fingerprint is computed on every call."""
    if value is _EMPTY or _is_constant(value):
        return (weakref.ref(fn), index, value)
    if isinstance(value, (types.FunctionType, type)) or _task_function(value) is not value:
        return (weakref.ref(fn), index, weakref.ref(value))  # code: its cells are read too
    return None


def _function_of(fn: Any) -> Any:
    """The function (or class) that holds the code of a callable."""
    for _ in range(16):
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, (types.MethodType, staticmethod, classmethod)):
            fn = fn.__func__
        else:
            break
    if isinstance(fn, (types.FunctionType, type)):
        return fn
    call = inspect.getattr_static(type(fn), "__call__", None)
    if isinstance(call, types.FunctionType):
        return call
    return fn


class _Walk:
    """Collects ``(qualified name, kind, text)`` parts, following references."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, str, str]] = []
        #: the closure cells read, or None once one held a value that can change in
        #: place (then the result is not cached)
        self.cells: list[_CellRead] | None = []
        self._seen: set[int] = set()

    def add(self, obj: Any, depth: int) -> None:
        if id(obj) in self._seen or len(self._seen) >= MAX_OBJECTS:
            return
        self._seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            self.parts.append((_qualified(obj), "function", _function_text(obj)))
            if depth < MAX_DEPTH:
                self._follow(obj, depth + 1)
        elif isinstance(obj, type):
            self.parts.append((_qualified(obj), "class", _class_text(obj)))
            if depth < MAX_DEPTH:
                for member in _class_functions(obj):
                    self._seen.add(id(member))
                    self._follow(member, depth + 1)
        else:
            named = obj if hasattr(obj, "__qualname__") else type(obj)
            self.parts.append((_qualified(named), "callable", ""))

    def _follow(self, fn: types.FunctionType, depth: int) -> None:
        self._closure(fn, depth)
        names = sorted(_loaded_names(fn.__code__))
        module_name = str(fn.__module__)
        scope = fn.__globals__
        for name in names:
            if name not in scope:
                continue
            value = scope[name]
            if isinstance(value, (types.FunctionType, type)):
                if is_user_object(value):
                    self.add(value, depth)
            elif isinstance(value, types.ModuleType):
                if is_user_module(value):
                    for attribute in names:
                        member = getattr(value, attribute, None)
                        if isinstance(member, (types.FunctionType, type)) and is_user_object(
                            member
                        ):
                            self.add(member, depth)
            elif _is_constant(value):
                self.parts.append((f"{module_name}.{name}", "constant", content_hash(value)))

    def _closure(self, fn: types.FunctionType, depth: int) -> None:
        """The values ``fn`` captured from enclosing functions: a factory's tasks differ
        by them. User code is followed like a global; other values are hashed like
        arguments (CacheKeyError for one with no deterministic hash)."""
        owner = _qualified(fn)
        cells = zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True)
        for index, (name, cell) in enumerate(cells):
            if name == "__class__":  # the class of a method using super(): fixed code
                continue
            where = f"{owner}.<closure {name}>"
            try:
                value = cell.cell_contents
            except ValueError:  # a cell not filled yet
                value = _EMPTY
            if self.cells is not None:
                read = _cell_read(fn, index, value)
                if read is None:
                    self.cells = None
                else:
                    self.cells.append(read)
            if value is _EMPTY:
                self.parts.append((where, "closure", "empty"))
                continue
            value = _task_function(value)
            if isinstance(value, (types.FunctionType, type)) and is_user_object(value):
                self.parts.append((where, "closure", "code:" + _qualified(value)))
                self.add(value, depth)
            elif isinstance(value, (types.FunctionType, type, types.BuiltinFunctionType)):
                self.parts.append((where, "closure", "library:" + _qualified(value)))
            else:
                text = hash_value(
                    value, path=f"closure variable {name!r} of {owner}", advice=_CLOSURE_ADVICE
                )
                self.parts.append((where, "closure", text))


_CLOSURE_ADVICE = (
    "A value a task's code captures from an enclosing function is part of its cache key "
    "(TASK_SOURCE, task_input_hash). Capture a value that hashes, give its type a "
    "__flowcore_hash__(self) -> bytes | str method (for a class you do not own: "
    "flowcore.caching.register_type), pass it as an argument instead, or set "
    "cache_key_errors='warn' to run the task uncached"
)


def _task_function(value: object) -> object:
    """The function of a flowcore task (a task captured by another task's code)."""
    from flowcore.tasks import Task

    return value.fn if isinstance(value, Task) else value


def _loaded_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _loaded_names(const)


def _class_functions(cls: type) -> Iterator[types.FunctionType]:
    for member in vars(cls).values():
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            for accessor in (member.fget, member.fset, member.fdel):
                if isinstance(accessor, types.FunctionType):
                    yield accessor
        elif isinstance(member, types.FunctionType):
            yield member


def _is_constant(value: object) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return len(value) <= 1000 and all(_is_constant(item) for item in value)
    return type(value) in _CONSTANT_TYPES


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def _function_text(fn: types.FunctionType) -> str:
    """The code digest and default values of ``fn`` (never its source text)."""
    text = "code:" + code_digest(fn.__code__).hex()
    defaults = [_value_text(value) for value in fn.__defaults__ or ()]
    defaults += [
        f"{name}={_value_text(value)}" for name, value in sorted((fn.__kwdefaults__ or {}).items())
    ]
    return text + (" defaults:" + ",".join(defaults) if defaults else "")


#: Class attributes that say where a class was defined, not what it does.
_PLACE_ATTRIBUTES = frozenset(
    {"__module__", "__qualname__", "__firstlineno__", "__dict__", "__weakref__"}
)


def _class_text(cls: type) -> str:
    """The bases of ``cls``, the code of its functions and its constant attributes."""
    parts = ["bases:" + ",".join(_qualified(base) for base in cls.__bases__)]
    for name, member in sorted(vars(cls).items()):
        if name in _PLACE_ATTRIBUTES:
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, types.FunctionType):
            parts.append(f"{name}={_function_text(member)}")
        elif isinstance(member, property):
            accessors = (member.fget, member.fset, member.fdel)
            texts = [
                _function_text(a) if isinstance(a, types.FunctionType) else "-" for a in accessors
            ]
            parts.append(f"{name}=property:{','.join(texts)}")
        elif _is_constant(member):
            parts.append(f"{name}={content_hash(member)}")
    return ";".join(parts)


def _value_text(value: object) -> str:
    """A default value: its hash if it is a constant, else its type's name."""
    if _is_constant(value):
        return content_hash(value)
    return "type:" + _qualified(type(value))


def is_user_object(obj: Any) -> bool:
    """True if ``obj`` (a function or class) is defined in one of the user's modules.

    Anything whose ``__module__`` is ``"__main__"`` is the user's: in a worker, such
    an object was pickled by value from the script, and the worker's own
    ``__main__`` module (a pool's bootstrap) says nothing about it.
    """
    module_name = getattr(obj, "__module__", None) or ""
    if module_name == "__main__":
        return True
    module = sys.modules.get(module_name)
    return module is not None and is_user_module(module)


def is_user_module(module: types.ModuleType) -> bool:
    """True for ``__main__`` and modules with a source file outside stdlib and site-packages."""
    name = module.__name__
    if name == "flowcore" or name.startswith("flowcore."):
        return False
    filename = getattr(module, "__file__", None)
    if not filename:
        return name == "__main__"
    if not filename.endswith(".py"):
        return False  # extension modules, bytecode-only installs
    path = os.path.realpath(filename)
    parts = set(path.split(os.sep))
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(path.startswith(prefix) for prefix in _library_prefixes())


@functools.cache
def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    prefixes = {
        os.path.realpath(paths[key]) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if paths.get(key)
    }
    return tuple(sorted(prefixes))


__all__ = ["MAX_DEPTH", "MAX_OBJECTS", "function_fingerprint", "is_user_module", "is_user_object"]
