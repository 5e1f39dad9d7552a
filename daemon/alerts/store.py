"""The alert tables: triggers (what happened to an issue), notifications (which channel is
to hear of it), sends (the messages, with their retries) and attempts (the delivery log).

Every step hands work to the next through Postgres, not memory, so a restart or a second
node carries on where this one stopped: triggers are claimed with SKIP LOCKED, a channel's
digest is built under an advisory lock, and sends are leased. Times come from the caller
(the service's clock), never from now(), so tests can move time. Knows the tables, not
how alerts read or travel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

Db = asyncpg.Pool | asyncpg.Connection


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True)
class Trigger:
    id: int
    project_id: int
    project: str
    issue_id: int
    kind: str
    dedup: str
    detail: str
    level: str
    title: str
    status: str


@dataclass(frozen=True)
class Pending:
    """A notification waiting for its channel's next message."""

    id: int
    kind: str
    detail: str
    issue_id: int


@dataclass(frozen=True)
class Send:
    id: int
    channel: str
    body: bytes
    attempts: int            # this one included
    test: bool
    created_at: datetime


async def add_triggers(db: Db, rows: Sequence[tuple[int, int, str, str, str]],
                       now: float) -> int:
    """(project_id, issue_id, kind, dedup, detail) rows; those already present are kept
    as they are. Returns how many were new."""
    if not rows:
        return 0
    result = await db.execute(
        "INSERT INTO alert_triggers (project_id, issue_id, kind, dedup, detail, created_at) "
        "SELECT p, i, k, d, t, $6 FROM unnest($1::int[], $2::bigint[], $3::text[], "
        "$4::text[], $5::text[]) AS r(p, i, k, d, t) "
        "WHERE EXISTS (SELECT 1 FROM issues WHERE id = r.i) ON CONFLICT DO NOTHING",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        [r[3] for r in rows], [r[4] for r in rows], at(now))
    return int(result.split()[-1])


async def recent_events(db: Db, issue_ids: Sequence[int], *, window: float,
                        now: float) -> dict[int, int]:
    """Events per issue in the minutes that started within `window` seconds before `now`."""
    rows = await db.fetch(
        "SELECT issue_id, sum(events)::bigint AS events FROM issue_minutes "
        "WHERE issue_id = ANY($1::bigint[]) AND minute > $2 AND minute <= $3 "
        "GROUP BY issue_id", list(issue_ids), at(now - window), at(now))
    return {r["issue_id"]: r["events"] for r in rows}


_PENDING_TRIGGERS = """
SELECT t.id, t.project_id, p.name AS project, t.issue_id, t.kind, t.dedup, t.detail,
       i.level, i.title, i.status
  FROM alert_triggers t JOIN issues i ON i.id = t.issue_id
  JOIN projects p ON p.id = t.project_id
 WHERE t.evaluated_at IS NULL
 ORDER BY t.id LIMIT $1
   FOR UPDATE OF t SKIP LOCKED
"""


async def evaluate(pool: asyncpg.Pool, *, now: float, channels_for: Callable[[Trigger],
                   list[str]], per_issue_interval: float, limit: int = 500) -> int:
    """Turn waiting triggers into notifications, one per channel their rules name; a
    channel that heard of the same issue within `per_issue_interval` gets a suppressed
    one. Returns the number of pending notifications made."""
    made = 0
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_PENDING_TRIGGERS, limit)
        for row in rows:
            trigger = Trigger(**dict(row))
            for channel in ([] if trigger.status == "ignored" else channels_for(trigger)):
                recent = await conn.fetchval(
                    "SELECT 1 FROM alert_notifications WHERE issue_id = $1 AND channel = $2 "
                    "AND state <> 'suppressed' AND created_at > $3 LIMIT 1",
                    trigger.issue_id, channel, at(now - per_issue_interval))
                state = "suppressed" if recent else "pending"
                await conn.execute(
                    "INSERT INTO alert_notifications (trigger_id, channel, issue_id, "
                    "created_at, state) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    trigger.id, channel, trigger.issue_id, at(now), state)
                made += state == "pending"
        if rows:
            await conn.execute("UPDATE alert_triggers SET evaluated_at = $2 "
                               "WHERE id = ANY($1::bigint[])", [r["id"] for r in rows],
                               at(now))
    return made


async def channels_with_pending(db: Db) -> list[str]:
    rows = await db.fetch("SELECT DISTINCT channel FROM alert_notifications "
                          "WHERE state = 'pending'")
    return [r["channel"] for r in rows]


async def lock_channel(conn: asyncpg.Connection, channel: str) -> bool:
    """Within a transaction: whether this node may build the channel's next message."""
    return bool(await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtext('egen.alerts'), hashtext($1))", channel))


async def channel_free_at(conn: asyncpg.Connection, channel: str, *, now: float,
                          digest_window: float, max_per_hour: int) -> float:
    """When the channel may get its next message: after the digest window since its last
    one, and once fewer than `max_per_hour` went out in the past hour."""
    row = await conn.fetchrow(
        "SELECT max(created_at) AS last, "
        "count(*) FILTER (WHERE created_at > $2) AS hour, "
        "(array_agg(created_at ORDER BY created_at DESC) FILTER (WHERE created_at > $2))"
        "[$3::int] AS oldest_counted "
        "FROM alert_sends WHERE channel = $1 AND NOT test AND created_at > $4",
        channel, at(now - 3600), max_per_hour, at(now - max(3600.0, digest_window)))
    free = now
    if row["last"] is not None:
        free = max(free, row["last"].timestamp() + digest_window)
    if row["hour"] >= max_per_hour and row["oldest_counted"] is not None:
        free = max(free, row["oldest_counted"].timestamp() + 3600)
    return free


async def pending(conn: asyncpg.Connection, channel: str, limit: int) -> list[Pending]:
    rows = await conn.fetch(
        "SELECT n.id, t.kind, t.detail, n.issue_id FROM alert_notifications n "
        "JOIN alert_triggers t ON t.id = n.trigger_id "
        "WHERE n.channel = $1 AND n.state = 'pending' ORDER BY n.id LIMIT $2", channel, limit)
    return [Pending(**dict(r)) for r in rows]


async def add_send(conn: asyncpg.Connection, channel: str, body: bytes, *, now: float,
                   notifications: Sequence[int], alerts: int, test: bool = False) -> int:
    send_id: int = await conn.fetchval(
        "INSERT INTO alert_sends (channel, created_at, alerts, test, body, next_attempt_at) "
        "VALUES ($1, $2, $3, $4, $5, $2) RETURNING id", channel, at(now), alerts, test, body)
    if notifications:
        await conn.execute("UPDATE alert_notifications SET state = 'sent', send_id = $2 "
                           "WHERE id = ANY($1::bigint[])", list(notifications), send_id)
    return send_id


async def claim_sends(pool: asyncpg.Pool, *, owner: str, now: float, lease: float,
                      limit: int = 20) -> list[Send]:
    """Due sends, leased to `owner`; a send whose node died is taken again after its
    lease, which is why each attempt is counted when it is claimed."""
    rows = await pool.fetch(
        "UPDATE alert_sends SET lease_owner = $1, lease_until = $3, attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM alert_sends WHERE state = 'pending' "
        "AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until <= $2) "
        "ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
        "RETURNING id, channel, body, attempts, test, created_at",
        owner, at(now), at(now + lease), limit)
    return [Send(**dict(r)) for r in sorted(rows, key=lambda r: r["id"])]


async def finish(pool: asyncpg.Pool, send: Send, *, owner: str, now: float, ok: bool,
                 detail: str, duration: float, retry_at: float | None) -> None:
    """Log the attempt and settle the send: sent (ok), pending again until `retry_at`, or
    failed (neither)."""
    state = "sent" if ok else "pending" if retry_at is not None else "failed"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO alert_attempts (send_id, attempted_at, duration_ms, ok, detail) "
            "VALUES ($1, $2, $3, $4, $5)", send.id, at(now), round(duration * 1000), ok,
            detail)
        await conn.execute(
            "UPDATE alert_sends SET state = $3::text, result = $4, lease_owner = NULL, "
            "lease_until = NULL, next_attempt_at = coalesce($5, next_attempt_at), "
            "finished_at = CASE WHEN $3::text = 'pending' THEN NULL ELSE $6::timestamptz END "
            "WHERE id = $1 AND lease_owner = $2", send.id, owner, state, detail,
            at(retry_at) if retry_at is not None else None, at(now))


async def prune(pool: asyncpg.Pool, *, now: float, keep: float) -> None:
    """Forget per-minute counts no spike window reaches, and alert history past `keep`."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM issue_minutes WHERE minute < $1",
                           at(now - 86400 - 3600))
        await conn.execute("DELETE FROM alert_sends WHERE created_at < $1 "
                           "AND state <> 'pending'", at(now - keep))
        await conn.execute("DELETE FROM alert_triggers WHERE created_at < $1 "
                           "AND evaluated_at IS NOT NULL", at(now - keep))


async def send_log(db: Db, *, since: float, channel: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """The newest sends with their attempts, for `egen alerts log`."""
    rows = await db.fetch(
        "SELECT s.id, s.channel, s.created_at, s.alerts, s.test, s.state, s.attempts, "
        "s.result, s.finished_at, s.next_attempt_at, coalesce(json_agg(json_build_object("
        "'at', a.attempted_at, 'ok', a.ok, 'ms', a.duration_ms, 'detail', a.detail) "
        "ORDER BY a.attempted_at) FILTER (WHERE a.send_id IS NOT NULL), '[]')::text "
        "AS tries FROM alert_sends s LEFT JOIN alert_attempts a ON a.send_id = s.id "
        "WHERE s.created_at >= $1 AND ($2::text IS NULL OR s.channel = $2) "
        "GROUP BY s.id ORDER BY s.id DESC LIMIT $3", at(since), channel, limit)
    return [dict(r) for r in rows]


async def send_states(db: Db, ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    rows = await db.fetch("SELECT id, state, result FROM alert_sends "
                          "WHERE id = ANY($1::bigint[])", list(ids))
    return {r["id"]: (r["state"], r["result"]) for r in rows}


def backoff(attempts: int, *, first: float, most: float) -> float:
    """Seconds before attempt `attempts + 1`: first, doubling, capped."""
    return float(min(most, first * 2 ** max(0, attempts - 1)))
