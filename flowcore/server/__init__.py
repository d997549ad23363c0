"""Prefect's import paths, for code moving from Prefect to flowcore.

flowcore has no server; this package only mirrors the module paths Prefect users
import from, so that porting is a change of package name. See
:mod:`flowcore.server.schemas.schedules`.
"""
