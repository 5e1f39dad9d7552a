"""SQL for the operator's hands on the mail queue: make waiting recipients due now, delete a
message, and read the delivery log (`mail_events`) with filters.

Works beside running deliveries: rows are locked before they are changed, a recipient a
node has claimed (status 'delivering') is never touched by a retry, and a message with a
live lease is deleted only when forced. Every change is written to the log in the same
transaction. No argparse or printing here; the verbs are in daemon.cli.queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

RETRYABLE = ("queued", "deferred")     # waiting for their next attempt


@dataclass(frozen=True)
class Retried:
    rescheduled: int             # recipients made due now
    delivering: int              # recipients a live delivery holds right now: left alone


@dataclass(frozen=True)
class Deleted:
    id: str
    recipients: int              # all recipients removed with the message
    pending: int                 # of them, not final: they will never be delivered now
    forced: int                  # of them, leased by a live delivery (only with force)


@dataclass(frozen=True)
class Lease:
    idx: int
    recipient: str
    owner: str
    until: datetime


class BeingDelivered(Exception):
    """The message has recipients a live delivery holds; deleting it needs `force`."""

    def __init__(self, queue_id: str, leases: Sequence[Lease]) -> None:
        self.queue_id = queue_id
        self.leases = list(leases)
        owners = ", ".join(sorted({lease.owner for lease in leases}))
        super().__init__(f"{len(leases)} recipient(s) of {queue_id} are being delivered "
                         f"right now (by {owners})")


# Lock the waiting recipients first: one that a claim is taking (FOR UPDATE SKIP LOCKED)
# is waited for and then re-checked, so it drops out once it is 'delivering'.
_RESCHEDULE = """
WITH target AS (
    SELECT message_id, idx, next_attempt_at FROM mail_recipients
    WHERE status = ANY($2::text[]) AND ($1::text IS NULL OR message_id = $1)
    FOR UPDATE
), updated AS (
    UPDATE mail_recipients r
       SET next_attempt_at = LEAST(r.next_attempt_at, now()), updated_at = now()
      FROM target t
     WHERE r.message_id = t.message_id AND r.idx = t.idx
    RETURNING r.message_id, r.idx, r.status, t.next_attempt_at AS was_due
), logged AS (
    INSERT INTO mail_events (message_id, recipient_idx, event, detail)
    SELECT message_id, idx, 'retry',
           jsonb_build_object('status', status, 'was_due', was_due, 'by', $3::text)
    FROM updated
)
SELECT count(*) FROM updated
"""


async def retry_message(pool: asyncpg.Pool, queue_id: str, *,
                        by: str = "egen queue retry") -> Retried | None:
    """Make every queued or deferred recipient of one message due now, logging a 'retry'
    event for each; None if there is no such message. A recipient being delivered is left
    alone (its attempt is under way; one whose lease ran out is already due for another
    node to take over), and a final one has nothing left to do."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM mail_messages WHERE id = $1)",
                                   queue_id):
            return None
        count = await conn.fetchval(_RESCHEDULE, queue_id, list(RETRYABLE), by)
        delivering = await conn.fetchval(
            "SELECT count(*) FROM mail_recipients WHERE message_id = $1 "
            "AND status = 'delivering' AND lease_until > now()", queue_id)
    return Retried(rescheduled=count, delivering=delivering)


async def retry_deferred(pool: asyncpg.Pool, *, by: str = "egen queue flush") -> int:
    """Make every deferred recipient of every message due now (`postqueue -f`), logging a
    'retry' event for each; returns how many."""
    return await pool.fetchval(_RESCHEDULE, None, ["deferred"], by)


async def delete_message(pool: asyncpg.Pool, queue_id: str, *, force: bool = False,
                         by: str = "egen queue delete") -> Deleted | None:
    """Remove a message and its recipients, and log a 'deleted' event that keeps its sender
    and recipients (the log has no foreign key: it outlives the message). None if there is
    no such message. Sends no bounce: like `postsuper -d`, this is the operator's call.

    Raises BeingDelivered when a recipient is leased by a live delivery, unless `force`:
    then the attempt in flight may still reach the recipient, but its result is not
    recorded (the rows are gone)."""
    async with pool.acquire() as conn, conn.transaction():
        # Recipients before the message: the same lock order as recording a result.
        recipients = await conn.fetch(
            """
            SELECT idx, recipient, status, lease_owner, lease_until,
                   status = 'delivering' AND lease_until > now() AS live
            FROM mail_recipients WHERE message_id = $1 ORDER BY idx FOR UPDATE
            """, queue_id)
        sender = await conn.fetchval(
            "SELECT sender FROM mail_messages WHERE id = $1 FOR UPDATE", queue_id)
        if sender is None:
            return None
        leases = [Lease(r["idx"], r["recipient"], r["lease_owner"], r["lease_until"])
                  for r in recipients if r["live"]]
        if leases and not force:
            raise BeingDelivered(queue_id, leases)
        await conn.execute("DELETE FROM mail_messages WHERE id = $1", queue_id)
        pending = sum(1 for r in recipients if r["status"] not in ("delivered", "bounced",
                                                                   "expired"))
        await conn.execute(
            "INSERT INTO mail_events (message_id, event, detail) VALUES ($1, 'deleted', $2)",
            queue_id, {
                "sender": sender, "recipients": [r["recipient"] for r in recipients],
                "statuses": [r["status"] for r in recipients], "pending": pending,
                "forced": len(leases), "by": by,
            })
    return Deleted(id=queue_id, recipients=len(recipients), pending=pending,
                   forced=len(leases))


# One row per event, newest first, readable on its own: the sender and recipient come from
# the live message when it is still stored, else from the 'accepted' event's detail (or the
# 'deleted' event's, which repeats them).
_LOG = """
SELECT e.at, e.message_id AS queue_id, e.event, e.recipient_idx,
       COALESCE(m.sender, a.detail->>'sender', e.detail->>'sender') AS sender,
       CASE WHEN e.recipient_idx IS NOT NULL
            THEN COALESCE(r.recipient, a.detail->'recipients'->>e.recipient_idx) END
           AS recipient,
       CASE WHEN e.recipient_idx IS NULL
            THEN COALESCE(e.detail->'recipients', a.detail->'recipients') END AS recipients,
       CASE WHEN e.recipient_idx IS NOT NULL THEN e.detail->>'remote' END AS relay,
       CASE WHEN e.recipient_idx IS NOT NULL THEN e.detail->>'tls' END AS tls,
       CASE WHEN e.recipient_idx IS NOT NULL AND jsonb_typeof(e.detail->'code') = 'number'
            THEN (e.detail->>'code')::int END AS code,
       CASE WHEN e.recipient_idx IS NOT NULL THEN e.detail->>'response' END AS response,
       e.detail
FROM mail_events e
LEFT JOIN mail_messages m ON m.id = e.message_id
LEFT JOIN mail_recipients r ON r.message_id = e.message_id AND r.idx = e.recipient_idx
LEFT JOIN LATERAL (
    SELECT x.detail FROM mail_events x
    WHERE x.message_id = e.message_id AND x.event = 'accepted'
    ORDER BY x.id LIMIT 1
) a ON true
WHERE ($1::float8 IS NULL OR e.at >= now() - make_interval(secs => $1))
  AND ($2::text IS NULL OR e.message_id = $2)
  AND ($3::text IS NULL
       OR lower(COALESCE(m.sender, a.detail->>'sender', e.detail->>'sender')) = lower($3))
  AND ($4::text IS NULL OR CASE
       WHEN e.recipient_idx IS NULL THEN EXISTS (
           SELECT 1 FROM jsonb_array_elements_text(
               COALESCE(e.detail->'recipients', a.detail->'recipients', '[]')) t(address)
           WHERE lower(t.address) = lower($4))
       ELSE lower(COALESCE(r.recipient, a.detail->'recipients'->>e.recipient_idx))
            = lower($4) END)
ORDER BY e.at DESC, e.id DESC
LIMIT $5
"""


async def read_log(pool: asyncpg.Pool, *, to: str | None = None, sender: str | None = None,
                   queue_id: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """The delivery log newest first, at most `limit` events.

    Filters (None: any): `to` and `sender` are exact addresses, compared case-insensitively
    ('' is the null sender); an event about a whole message ('accepted', 'deleted')
    matches `to` when the address is one of its recipients. `since` is in seconds before
    the database's now(). Each row has at, queue_id, event, recipient_idx, sender,
    recipient (None for message events, which have `recipients` instead), relay, tls,
    code, response (of a delivery attempt: None for other events; the inbound TLS of an
    'accepted' event is in its detail) and the raw detail."""
    rows = await pool.fetch(_LOG, since, queue_id, sender, to, limit)
    return [dict(row) for row in rows]
