"""``python -m flowcore``: the same as the ``flowcore`` command."""

from flowcore.cli import main

raise SystemExit(main())
