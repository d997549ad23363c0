"""``flowcore bench``: run a user's flow on several backends and compare them.

Each backend runs in a fresh Python process (:mod:`flowcore.bench.child`), so pools,
caches and memory of one backend never colour another's figures, and a backend that
crashes or hangs is reported without stopping the rest. :mod:`flowcore.bench.runner`
drives the children; :mod:`flowcore.bench.report` makes the table, the JSON document,
the recommendation and the plot.
"""

from __future__ import annotations

__all__: list[str] = []
