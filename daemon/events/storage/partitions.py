"""Day partitions of the `events` table: created before a batch needs them, dropped when
they fall out of retention (dropping a partition is instant; deleting rows is not).

Several nodes may create the same partition at once: creation runs under a transaction-
level advisory lock and re-checks the catalog, so exactly one of them creates it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg

_LOCK = 0x6567656E_0003        # pg_advisory_xact_lock key: "egen", migration 3's tables
_NAME = re.compile(r"events_(\d{8})")


def partition_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


def day_of(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()


class Partitions:
    """Remembers which partitions exist, so a batch costs no catalog query in the usual
    case (every event of the day goes to one partition that already exists)."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    async def ensure(self, conn: asyncpg.Connection, days: Iterable[date]) -> None:
        missing = sorted(set(days) - self._known)
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            existing = await existing_days(conn)
            for day in missing:
                if day not in existing:
                    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    await conn.execute(
                        f"CREATE TABLE {partition_name(day)} PARTITION OF events "
                        f"FOR VALUES FROM ('{start.isoformat()}') "
                        f"TO ('{(start + timedelta(days=1)).isoformat()}')")
        # Only once committed: a failed commit must not leave days believed to exist.
        self._known.update(missing)
        self._known.update(existing)

    def forget_all(self) -> None:
        """Another node or an operator dropped a partition this node knew: ask again."""
        self._known.clear()

    def forget(self, days: Iterable[date]) -> None:
        self._known.difference_update(days)


async def existing_days(conn: asyncpg.Connection | asyncpg.Pool) -> set[date]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass")
    found = set()
    for row in rows:
        match = _NAME.fullmatch(row["relname"])
        if match:
            found.add(datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC).date())
    return found


async def drop_before(pool: asyncpg.Pool, cutoff: date) -> list[date]:
    """Drop the partitions of days before `cutoff`; returns the days dropped."""
    dropped = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        for day in sorted(await existing_days(conn)):
            if day < cutoff:
                await conn.execute(f"DROP TABLE {partition_name(day)}")
                dropped.append(day)
    return dropped
