"""SQL for delivery: claim due recipients under a lease, record attempt results, and the
delivery log. No SMTP knowledge here.

Claims use FOR UPDATE SKIP LOCKED, so nodes sharing the database take disjoint work, and
a lease, so work claimed by a node that died becomes due again when the lease runs out.
Results are written only while this node still holds the lease: a node that stalled
past its lease cannot overwrite what the node that took over has recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

FINAL = ("delivered", "bounced", "expired")


@dataclass(frozen=True)
class Claimed:
    message_id: str
    idx: int
    recipient: str
    domain: str
    attempts: int
    notify: tuple[str, ...] | None = None    # RFC 3461 NOTIFY of this RCPT, if given
    orcpt: str | None = None                 # RFC 3461 ORCPT of this RCPT, if given


@dataclass(frozen=True)
class ClaimedMessage:
    id: str
    sender: str
    data: bytes
    smtputf8: bool
    body_8bit: bool
    received_at: datetime
    dsn_ret: str | None
    dsn_envid: str | None
    warned: bool = False         # the delay warning went out already


@dataclass(frozen=True)
class Result:
    message_id: str
    idx: int
    status: str                  # delivered | deferred | bounced | expired
    next_attempt_at: datetime | None
    code: int
    response: str
    detail: dict[str, Any]


_CLAIM = """
WITH due AS (
    SELECT message_id, idx FROM mail_recipients
    WHERE (status IN ('queued', 'deferred') AND next_attempt_at <= now())
       OR (status = 'delivering' AND lease_until < now())
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE mail_recipients r
       SET status = 'delivering', lease_owner = $1,
           lease_until = now() + make_interval(secs => $2), updated_at = now()
      FROM due
     WHERE r.message_id = due.message_id AND r.idx = due.idx
    RETURNING r.message_id, r.idx, r.recipient, r.domain, r.attempts, r.dsn_notify,
              r.dsn_orcpt
)
SELECT m.id, m.sender, m.data, m.smtputf8, m.body_8bit, m.received_at, m.dsn_ret,
       m.dsn_envid, m.warned_at IS NOT NULL AS warned, array_agg(c.idx ORDER BY c.idx) AS idxs,
       array_agg(c.recipient ORDER BY c.idx) AS recipients,
       array_agg(c.domain ORDER BY c.idx) AS domains,
       array_agg(c.attempts ORDER BY c.idx) AS attempts,
       array_agg(array_to_string(c.dsn_notify, ',') ORDER BY c.idx) AS notifies,
       array_agg(c.dsn_orcpt ORDER BY c.idx) AS orcpts
  FROM claimed c JOIN mail_messages m ON m.id = c.message_id
 GROUP BY m.id
"""


async def claim(pool: asyncpg.Pool, *, owner: str, lease: float, limit: int
                ) -> tuple[list[Claimed], dict[str, ClaimedMessage]]:
    """Claim up to `limit` due recipients (and read their messages, each once) in one
    statement: one round trip, atomic without an explicit transaction."""
    rows = await pool.fetch(_CLAIM, owner, lease, limit)
    claimed: list[Claimed] = []
    messages: dict[str, ClaimedMessage] = {}
    for m in rows:
        messages[m["id"]] = ClaimedMessage(m["id"], m["sender"], bytes(m["data"]),
                                           m["smtputf8"], m["body_8bit"], m["received_at"],
                                           m["dsn_ret"], m["dsn_envid"], m["warned"])
        claimed.extend(Claimed(m["id"], idx, recipient, domain, attempts,
                               tuple(notify.split(",")) if notify else None, orcpt)
                       for idx, recipient, domain, attempts, notify, orcpt in zip(
                           m["idxs"], m["recipients"], m["domains"], m["attempts"],
                           m["notifies"], m["orcpts"], strict=True))
    return claimed, messages


# One statement (one round trip, atomic): update the recipients still leased to `owner`,
# log an event for each of them in the order given, and mark messages done whose every
# recipient is now final. The statement's CTEs all see the snapshot from before the update,
# so "every recipient final" is: the ones just updated are final, and no other is pending.
_RECORD = """
WITH u AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::text[], $5::timestamptz[], $6::int[],
                         $7::text[], $8::text[])
           WITH ORDINALITY AS u(message_id, idx, status, next_at, code, response, detail, n)
), updated AS (
    UPDATE mail_recipients r
       SET status = u.status,
           attempts = r.attempts + 1,
           next_attempt_at = COALESCE(u.next_at, r.next_attempt_at),
           lease_owner = NULL, lease_until = NULL,
           last_attempt_at = now(), last_code = u.code, last_response = u.response,
           updated_at = now()
      FROM u
     WHERE r.message_id = u.message_id AND r.idx = u.idx
       AND r.status = 'delivering' AND r.lease_owner = $1
    RETURNING r.message_id, r.idx, r.status
), events AS (
    INSERT INTO mail_events (message_id, recipient_idx, event, detail)
    SELECT u.message_id, u.idx, u.status, u.detail::jsonb
      FROM u JOIN updated USING (message_id, idx)
     ORDER BY u.n
), done AS (
    UPDATE mail_messages m SET done_at = now()
     WHERE m.id IN (SELECT message_id FROM updated) AND m.done_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM updated x WHERE x.message_id = m.id
                       AND x.status NOT IN ('delivered', 'bounced', 'expired'))
       AND NOT EXISTS (SELECT 1 FROM mail_recipients r WHERE r.message_id = m.id
                       AND r.status NOT IN ('delivered', 'bounced', 'expired')
                       AND NOT EXISTS (SELECT 1 FROM updated x WHERE x.message_id = r.message_id
                                       AND x.idx = r.idx))
)
SELECT count(*) FROM updated
"""


async def record(pool: asyncpg.Pool, *, owner: str, results: Sequence[Result]) -> int:
    """Store attempt results (and their log events) in one statement; returns how many
    recipients were still ours to update."""
    if not results:
        return 0
    return await pool.fetchval(
        _RECORD, owner, [r.message_id for r in results], [r.idx for r in results],
        [r.status for r in results], [r.next_attempt_at for r in results],
        [r.code for r in results], [r.response for r in results],
        [orjson.dumps({"code": r.code, "response": r.response, **r.detail}).decode()
         for r in results])


async def mark_warned(pool: asyncpg.Pool, warnings: dict[str, list[int]]) -> set[str]:
    """Claim the right to send each message's one delay warning: of the message IDs given
    (with the deferred recipients the warning is about), the ones no node has warned for
    yet, now marked, with a 'delay_warning' event per recipient in the delivery log. One
    statement, so two nodes deferring recipients of one message never both warn."""
    if not warnings:
        return set()
    ids = list(warnings)
    rows = await pool.fetch(
        """
        WITH marked AS (
            UPDATE mail_messages SET warned_at = now()
             WHERE id = ANY($1::text[]) AND warned_at IS NULL
            RETURNING id
        ), events AS (
            INSERT INTO mail_events (message_id, recipient_idx, event)
            SELECT u.message_id, u.idx, 'delay_warning'
              FROM unnest($2::text[], $3::int[]) AS u(message_id, idx)
              JOIN marked ON marked.id = u.message_id
        )
        SELECT id FROM marked
        """, ids, [mid for mid in ids for _ in warnings[mid]],
        [idx for mid in ids for idx in warnings[mid]])
    return {row["id"] for row in rows}


async def release(pool: asyncpg.Pool, *, owner: str, claimed: Sequence[Claimed]) -> None:
    """Give claims back untouched (shutting down before attempting them)."""
    if not claimed:
        return
    await pool.execute(
        """
        UPDATE mail_recipients r
           SET status = CASE WHEN r.attempts = 0 THEN 'queued' ELSE 'deferred' END,
               lease_owner = NULL, lease_until = NULL, updated_at = now()
          FROM unnest($2::text[], $3::int[]) AS u(message_id, idx)
         WHERE r.message_id = u.message_id AND r.idx = u.idx AND r.lease_owner = $1
        """, owner, [c.message_id for c in claimed], [c.idx for c in claimed])


async def next_due(pool: asyncpg.Pool) -> datetime | None:
    """When the earliest waiting recipient becomes due (for the idle wait)."""
    return await pool.fetchval(
        "SELECT min(next_attempt_at) FROM mail_recipients "
        "WHERE status IN ('queued', 'deferred')")


def now_utc() -> datetime:
    return datetime.now(UTC)
