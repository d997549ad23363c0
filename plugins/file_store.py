"""The built-in cache store, registered through the ``flowcore_cache_stores`` hook like
any third-party store: ``file``, entries under a directory (see
:mod:`flowcore.caching.store`)."""

from __future__ import annotations

from typing import Any

from flowcore.hookspecs import hookimpl


def _file_store(directory: str | None = None) -> Any:
    from flowcore.caching.store import FileStore, default_cache_dir

    return FileStore(directory if directory is not None else default_cache_dir())


@hookimpl
def flowcore_cache_stores() -> list[Any]:
    from flowcore.caching.storage import CacheStoreSpec

    return [
        CacheStoreSpec(
            name="file",
            factory=_file_store,
            description="pickled entries under FLOWCORE_CACHE_DIR (default .flowcore/cache)",
        )
    ]
