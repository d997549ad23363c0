"""Content-hash caching: cache policies, hashing of values and code, and the store.

* Policies (:mod:`flowcore.caching.policies`): ``INPUTS``, ``TASK_SOURCE``,
  ``FLOW_PARAMETERS``, ``RUN_ID``, ``NONE``, ``DEFAULT``, combined with ``+``;
  :func:`task_input_hash` for ``cache_key_fn``.
* :func:`content_hash`, :func:`hash_arguments`: canonical XXH3-128 hashes of values
  (:mod:`flowcore.caching.hashing` says what is equal, what differs, and what cannot
  be hashed); :func:`register_type` teaches it a class you do not own.
* :func:`function_fingerprint`: a hash of a function's code and of the user code
  it uses (:mod:`flowcore.caching.fingerprint`).
* :class:`CacheStore`, :class:`FileStore`, :class:`CacheEntry`: where results live
  (:mod:`flowcore.caching.store`); stores are plugins (:mod:`flowcore.caching.storage`).

``import flowcore`` does not import this package, and this package imports each part
only when it is first used (the file store plugin loads with the registry and must
stay cheap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcore.caching.fingerprint import function_fingerprint
    from flowcore.caching.hashing import (
        content_hash,
        hash_arguments,
        register_type,
        unregister_type,
    )
    from flowcore.caching.policies import (
        DEFAULT,
        FLOW_PARAMETERS,
        INPUTS,
        NONE,
        RUN_ID,
        TASK_SOURCE,
        CacheContext,
        CachePolicy,
        task_input_hash,
    )
    from flowcore.caching.storage import CacheStoreSpec
    from flowcore.caching.store import (
        CacheEntry,
        CacheStore,
        EntryInfo,
        FileStore,
        PruneReport,
        default_cache_dir,
    )

_EXPORTS = {
    "function_fingerprint": "flowcore.caching.fingerprint",
    "content_hash": "flowcore.caching.hashing",
    "hash_arguments": "flowcore.caching.hashing",
    "register_type": "flowcore.caching.hashing",
    "unregister_type": "flowcore.caching.hashing",
    "DEFAULT": "flowcore.caching.policies",
    "FLOW_PARAMETERS": "flowcore.caching.policies",
    "INPUTS": "flowcore.caching.policies",
    "NONE": "flowcore.caching.policies",
    "RUN_ID": "flowcore.caching.policies",
    "TASK_SOURCE": "flowcore.caching.policies",
    "CacheContext": "flowcore.caching.policies",
    "CachePolicy": "flowcore.caching.policies",
    "task_input_hash": "flowcore.caching.policies",
    "CacheStoreSpec": "flowcore.caching.storage",
    "CacheEntry": "flowcore.caching.store",
    "CacheStore": "flowcore.caching.store",
    "EntryInfo": "flowcore.caching.store",
    "FileStore": "flowcore.caching.store",
    "PruneReport": "flowcore.caching.store",
    "default_cache_dir": "flowcore.caching.store",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcore.caching' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheContext",
    "CacheEntry",
    "CachePolicy",
    "CacheStore",
    "CacheStoreSpec",
    "EntryInfo",
    "FileStore",
    "PruneReport",
    "content_hash",
    "default_cache_dir",
    "function_fingerprint",
    "hash_arguments",
    "register_type",
    "task_input_hash",
    "unregister_type",
]
