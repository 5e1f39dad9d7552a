"""Keeps the event store within its configured bounds: whole day partitions past
`ingest.retention_days` are dropped, event ids past it are forgotten, and issues holding
more than `ingest.max_events_per_issue` stored events lose their oldest ones. Issue
counts are never touched, so they stay exact while samples go.

Runs on every node every few minutes; the work itself is cheap and idempotent, and a
transaction-level advisory lock lets one node do it while the others skip that round.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from daemon.events.settings import IngestSettings
from daemon.events.storage.partitions import Partitions, drop_before
from daemon.logs import fields, get_logger

log = get_logger("events.retention")

_LOCK = 0x6567656E_0103

_TRIM = """
WITH over AS (
    SELECT issue_id FROM events GROUP BY issue_id HAVING count(*) > $1
), ranked AS (
    SELECT e.issue_id, e.received_at, e.event_id,
           row_number() OVER (PARTITION BY e.issue_id ORDER BY e.received_at DESC,
                                                             e.event_id DESC) AS rank
      FROM events e JOIN over USING (issue_id)
)
DELETE FROM events e USING ranked r
 WHERE e.issue_id = r.issue_id AND e.received_at = r.received_at
   AND e.event_id = r.event_id AND r.rank > $1
"""


async def enforce(pool: asyncpg.Pool, partitions: Partitions, settings: IngestSettings,
                  *, now: datetime | None = None) -> dict[str, int] | None:
    """One round; what it removed, or None when another node holds the lock."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=settings.retention_days)
    # Tomorrow's partition ahead of time: creating it locks the events table, better
    # now than under the first batch after midnight.
    async with pool.acquire() as conn:
        await partitions.ensure(conn, {now.date(), (now + timedelta(days=1)).date()})
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return None
        ids = await conn.execute("DELETE FROM event_ids WHERE received_at < $1", cutoff)
    # Old days first: dropping them is cheap, and must not wait on the trim (which scans
    # the events table and may run into the statement timeout on a large one).
    dropped = await drop_before(pool, cutoff.date())
    partitions.forget(dropped)
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return None
        trimmed = await conn.execute(_TRIM, settings.max_events_per_issue)
    return {"partitions": len(dropped), "event_ids": int(ids.split()[-1]),
            "events": int(trimmed.split()[-1])}


class Retention:
    name = "retention"

    def __init__(self, pool: Callable[[], asyncpg.Pool], partitions: Partitions,
                 settings: IngestSettings, *, every: float = 600.0) -> None:
        self._pool = pool
        self._partitions = partitions
        self._settings = settings
        self.every = every
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="events-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                removed = await enforce(self._pool(), self._partitions, self._settings)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as err:
                log.warning("event retention failed; trying again later", extra=fields(
                    error=f"{type(err).__name__}: {err}"))
            except Exception:       # a bug: say so, and keep the loop alive
                log.exception("event retention failed; trying again later")
            else:
                if removed and any(removed.values()):
                    log.info("event retention", extra=fields(**removed))
            await asyncio.sleep(self.every)
