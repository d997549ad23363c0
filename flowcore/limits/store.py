"""Tag concurrency limits and the slots taken under them, in ``history.db``.

The tables are described in :mod:`flowcore.limits.schema` (migration step 3). Every
change is one ``BEGIN IMMEDIATE`` transaction through
:meth:`~flowcore.history.sqlite.SQLiteStore.transaction` (retried while another
process writes), so checking the free slots and taking them is atomic across every
process on the machine: SQLite serialises the writers.

A slot whose holding process is gone (no process has its pid, or the process with
that pid started at another time) is deleted by the next transaction that looks at
its tag, so a holder killed with SIGKILL never keeps a slot.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcore.errors import ConcurrencyLimitError, ConcurrencyLimitNotFoundError

if TYPE_CHECKING:
    import sqlite3

    from flowcore.history.settings import HistorySettings


@dataclass(frozen=True)
class SlotHolder:
    """One slot row: who holds how many slots of ``tag``."""

    tag: str
    holder: str
    occupy: int
    host: str
    pid: int
    process_start: int
    acquired: float
    label: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A tag's limit and, when read with its holders, the slots taken now."""

    tag: str
    slots: int
    created: float
    updated: float
    holders: tuple[SlotHolder, ...] = ()

    @property
    def active(self) -> int:
        """Slots taken (by live holders, as of the last look)."""
        return sum(h.occupy for h in self.holders)

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag, "limit": self.slots, "active_slots": self.active,
            "created": self.created, "updated": self.updated,
            "holders": [h.to_json() for h in self.holders],
        }


@dataclass(frozen=True)
class Blocked:
    """Why an acquisition must wait: ``tag`` has ``limit`` slots, ``used`` are taken."""

    tag: str
    limit: int
    used: int
    occupy: int

    def reason(self) -> str:
        if self.limit == 0:
            return f"the concurrency limit of tag {self.tag!r} is 0: every run with it waits until the limit is raised"
        if self.occupy > self.limit:
            return (f"it needs {self.occupy} slots of tag {self.tag!r}, whose limit is {self.limit}: "
                    "it waits until the limit is raised")
        return f"all {self.limit} slots of tag {self.tag!r} are taken ({self.used} in use)"


def store_path(settings: HistorySettings | None = None) -> Path:
    """The history file the limits live in. ConfigurationError when the configured
    history store is not the built-in SQLite one."""
    from flowcore.history.settings import current_settings
    from flowcore.history.sqlite import history_file

    return history_file(settings if settings is not None else current_settings(), "concurrency limits", ConcurrencyLimitError)


def stamp_path(database: Path) -> Path:
    """The file rewritten after every change of the limits: processes look at its
    identity (inode, mtime, size) to learn cheaply whether any limit may have changed."""
    return database.with_name(database.name + "-limits")


def check_tag(tag: object) -> str:
    if not isinstance(tag, str) or not tag.strip():
        raise ConcurrencyLimitError(f"a concurrency limit's tag must be a non-empty string, got {tag!r}")
    return tag


def check_slots(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConcurrencyLimitError(f"a concurrency limit must be an int >= 0 (0 blocks every run), got {value!r}")
    return value


class LimitStore:
    """Concurrency limits and slots in one SQLite file (see the module docstring).

    Thread-safe (one connection behind a lock). Raises
    :class:`~flowcore.errors.HistoryError` when the file cannot be used.
    """

    def __init__(self, path: str | Path) -> None:
        from flowcore.history.sqlite import SQLiteStore

        self.history = SQLiteStore(path)
        self.path = self.history.path

    def close(self) -> None:
        self.history.close()

    # -- limits ---------------------------------------------------------------------
    def set_limit(self, tag: str, slots: int) -> ConcurrencyLimit:
        """Create the limit of ``tag``, or change it (holders keep their slots)."""
        check_tag(tag)
        check_slots(slots)
        now = time.time()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO concurrency_limits (tag, slots, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tag) DO UPDATE SET slots = excluded.slots, updated = excluded.updated",
                (tag, slots, now, now),
            )

        self.history.transaction(work)
        self._touch()
        return self.get(tag)

    def remove(self, tag: str) -> None:
        """Delete the limit of ``tag`` (and its slot rows); runs waiting for it go on.
        ConcurrencyLimitNotFoundError when there is none."""

        def work(conn: sqlite3.Connection) -> int:
            count = conn.execute("DELETE FROM concurrency_limits WHERE tag = ?", (tag,)).rowcount
            conn.execute("DELETE FROM concurrency_slots WHERE tag = ?", (tag,))
            return int(count)

        if not self.history.transaction(work):
            raise ConcurrencyLimitNotFoundError(self._not_found(tag))
        self._touch()

    def get(self, tag: str) -> ConcurrencyLimit:
        """The limit of ``tag`` with its live holders (dead ones are released first)."""
        found = self.limits([tag])
        if not found:
            raise ConcurrencyLimitNotFoundError(self._not_found(tag))
        return found[0]

    def limits(self, tags: Iterable[str] | None = None) -> list[ConcurrencyLimit]:
        """Every limit (or those of ``tags``) with their live holders, sorted by tag."""
        wanted = None if tags is None else sorted(set(tags))

        def work(conn: sqlite3.Connection) -> list[ConcurrencyLimit]:
            if wanted is None:
                rows = conn.execute("SELECT tag, slots, created, updated FROM concurrency_limits ORDER BY tag").fetchall()
            else:
                marks = ", ".join("?" * len(wanted))
                rows = conn.execute(
                    f"SELECT tag, slots, created, updated FROM concurrency_limits WHERE tag IN ({marks}) ORDER BY tag",
                    wanted,
                ).fetchall()
            return [
                ConcurrencyLimit(tag, slots, created, updated, holders=tuple(_live_holders(conn, tag)))
                for tag, slots, created, updated in rows
            ]

        result: list[ConcurrencyLimit] = self.history.transaction(work)
        return result

    def limited_tags(self) -> frozenset[str]:
        """The tags that have a limit (one read, no write)."""
        return frozenset(row[0] for row in self.history.query("SELECT tag FROM concurrency_limits"))

    # -- slots ----------------------------------------------------------------------
    def try_acquire(
        self, tags: Sequence[str], occupy: int, holder: str, label: str, process_start: int
    ) -> Blocked | list[str]:
        """Take ``occupy`` slots of every limited tag of ``tags`` for ``holder``, all or
        none, in one transaction. Returns the tags taken (those without a limit are
        skipped: possibly none), or :class:`Blocked` for the first tag that has too
        few free slots."""
        from flowcore.history.liveness import this_host

        def work(conn: sqlite3.Connection) -> Blocked | list[str]:
            taken: list[str] = []
            for tag in sorted(set(tags)):
                row = conn.execute("SELECT slots FROM concurrency_limits WHERE tag = ?", (tag,)).fetchone()
                if row is None:
                    continue
                limit = int(row[0])
                used = sum(h.occupy for h in _live_holders(conn, tag))
                if used + occupy > limit:
                    return Blocked(tag, limit, used, occupy)
                taken.append(tag)
            now = time.time()
            conn.executemany(
                "INSERT OR REPLACE INTO concurrency_slots (tag, holder, occupy, host, pid, process_start, acquired, label) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(tag, holder, occupy, this_host(), os.getpid(), process_start, now, label) for tag in taken],
            )
            return taken

        result: Blocked | list[str] = self.history.transaction(work)
        return result

    def release(self, holder: str) -> None:
        """Give back every slot of ``holder`` (nothing if it holds none)."""
        self.history.transaction(
            lambda conn: conn.execute("DELETE FROM concurrency_slots WHERE holder = ?", (holder,))
        )

    def _touch(self) -> None:
        """Replace the stamp file (a new inode each time: no mtime granularity trap)."""
        stamp = stamp_path(self.path)
        temporary = stamp.with_name(f"{stamp.name}.{os.getpid()}.{os.urandom(4).hex()}")
        temporary.write_text(json.dumps({"changed": time.time()}))
        os.replace(temporary, stamp)
        from flowcore import limits

        limits.forget_limited_tags()

    def _not_found(self, tag: str) -> str:
        known = sorted(self.limited_tags())
        listed = ", ".join(known) if known else "none"
        return (f"no concurrency limit for tag {tag!r} in {self.path}; limits: {listed} "
                f"(create one: flowcore concurrency-limit create {tag} N)")


def _live_holders(conn: sqlite3.Connection, tag: str) -> list[SlotHolder]:
    """The holders of ``tag``'s slots, after deleting those whose process on this host
    is gone (pid not alive, or alive with another start time: the pid was reused)."""
    from flowcore.history.liveness import this_host
    from flowcore.processes import pid_alive, process_start

    rows = conn.execute(
        "SELECT tag, holder, occupy, host, pid, process_start, acquired, label FROM concurrency_slots "
        "WHERE tag = ? ORDER BY acquired",
        (tag,),
    ).fetchall()
    live: list[SlotHolder] = []
    dead: list[tuple[str, str]] = []
    host = this_host()
    for row in rows:
        holder = SlotHolder(*row)
        if holder.host == host and (
            not pid_alive(holder.pid)
            or (holder.process_start and process_start(holder.pid) not in (0, holder.process_start))
        ):
            dead.append((holder.tag, holder.holder))
            continue
        live.append(holder)
    if dead:
        conn.executemany("DELETE FROM concurrency_slots WHERE tag = ? AND holder = ?", dead)
    return live


__all__ = ["Blocked", "ConcurrencyLimit", "LimitStore", "SlotHolder", "stamp_path", "store_path"]
