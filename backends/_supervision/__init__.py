"""Worker supervision for the process backends that need it (loky, joblib on its loky
pool, the Dask workers of a local cluster): private to ``flowcore.backends``.

* :mod:`.journal`: which task run each worker process is executing, so a crash is
  pinned on its run and a failed flow stops only its own runs;
* :mod:`.lifeline`: pool workers end when their parent dies;
* :mod:`.hard_timeouts`: the parent ends a worker whose run ignores its timer signal;
* :mod:`.journaled`: the backend methods (``stop_runs``, ``watch_deadline`` ...) built
  on them.

Nothing here is imported by ``import flowcore`` or by a threads-only program: the
backends import these modules when they start a pool, and a worker when it opens its
journal. The journal tells the engine about each run through
:func:`flowcore.engine.install_run_tracker`.
"""
