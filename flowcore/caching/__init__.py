"""Content-hash caching: hashing of values and code, and the store of cached results.

* :func:`content_hash`, :func:`hash_arguments`: canonical XXH3-128 hashes of values
  (:mod:`flowcore.caching.hashing` says what is equal, what differs, and what cannot
  be hashed); :func:`register_type` teaches it a class you do not own.
* :func:`function_fingerprint`: a hash of a function's source and of the user code
  it uses (:mod:`flowcore.caching.fingerprint`).
* :class:`CacheStore`, :class:`FileStore`, :class:`CacheEntry`: where results live
  (:mod:`flowcore.caching.store`).

``import flowcore`` does not import this package; it loads on first use.
"""

from __future__ import annotations

from flowcore.caching.fingerprint import function_fingerprint
from flowcore.caching.hashing import content_hash, hash_arguments, register_type, unregister_type
from flowcore.caching.store import (
    CacheEntry,
    CacheStore,
    EntryInfo,
    FileStore,
    PruneReport,
    default_cache_dir,
)

__all__ = [
    "CacheEntry",
    "CacheStore",
    "EntryInfo",
    "FileStore",
    "PruneReport",
    "content_hash",
    "default_cache_dir",
    "function_fingerprint",
    "hash_arguments",
    "register_type",
    "unregister_type",
]
