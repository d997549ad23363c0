"""Content-hash caching: hashing of values and code, and the store of cached results."""

from __future__ import annotations

from flowcore.caching.hashing import content_hash, hash_arguments, register_type, unregister_type

__all__ = ["content_hash", "hash_arguments", "register_type", "unregister_type"]
