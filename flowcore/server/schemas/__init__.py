"""Mirrors ``prefect.server.schemas``: see :mod:`flowcore.server.schemas.schedules`."""
