"""``flowcore dashboard``: a local web dashboard over the run history.

Pages for runs (live list, histogram), a run's detail (Gantt per worker, subflows,
tracebacks), its logs (live tail), task and flow summaries, and the workers of running
flows; a JSON API under ``/api/``; live updates over server-sent events. Modules:
:mod:`~.command` (the CLI; light), :mod:`~.app` (the ASGI app: starlette, Jinja2),
:mod:`~.queries` (every SQL read). Needs ``pip install "flowcore[ui]"``.

Importing this package imports nothing else: ``flowcore``'s CLI loads it to declare
the command, and only running the command loads starlette, uvicorn and Jinja2.
"""

from __future__ import annotations
