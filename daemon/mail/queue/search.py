"""SQL for reading the mail log one message at a time, as the web pages do: which messages
match a search (recipient, sender, queue ID or Message-ID, subject, time range), what state
their recipients are in, the whole history of one message, the delivery status
notifications sent about it, and the day's totals.

Reads only `mail_events` for what it lists, because the log outlives the messages
(retention and `queue delete` remove messages, never their log); the live recipients are
joined where they still exist, so a message in the queue shows its current state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from daemon.mail.queue.store import show_message

MAX_TEXT = 320           # longest search text taken (an address is at most 320 octets)
STATES = ("queued", "delivering", "deferred", "delivered", "bounced", "expired", "deleted")
TOTALS = ("accepted", "delivered", "deferred", "bounced", "expired")


@dataclass(frozen=True)
class MailSearch:
    """What to look for; None or '' matches anything. Texts match case-insensitively as
    parts (`to="@example.org"` finds every recipient there); `ident` is a queue ID or a
    Message-ID, with or without its angle brackets."""

    to: str | None = None
    sender: str | None = None
    ident: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None


# A message's state per recipient: from the live recipients while the message is stored,
# 'deleted' when an operator removed it, else each recipient's last logged result.
_STATES = """
CROSS JOIN LATERAL (
    SELECT COALESCE(
        (SELECT jsonb_object_agg(x.status, x.n) FROM (
            SELECT status, count(*) AS n FROM mail_recipients
            WHERE message_id = a.message_id GROUP BY status) x),
        (SELECT '{"deleted": 1}'::jsonb FROM mail_events d
         WHERE d.message_id = a.message_id AND d.event = 'deleted' LIMIT 1),
        (SELECT jsonb_object_agg(y.event, y.n) FROM (
            SELECT last.event, count(*) AS n FROM (
                SELECT DISTINCT ON (e.recipient_idx) e.event FROM mail_events e
                WHERE e.message_id = a.message_id AND e.recipient_idx IS NOT NULL
                  AND e.event IN ('delivered', 'deferred', 'bounced', 'expired')
                ORDER BY e.recipient_idx, e.id DESC) last
            GROUP BY last.event) y),
        '{}'::jsonb) AS states
) s
"""

_SEARCH = f"""
SELECT a.id AS log_id, a.at, a.message_id AS queue_id, a.detail->>'sender' AS sender,
       a.detail->'recipients' AS recipients, a.detail->>'subject' AS subject,
       a.detail->>'message_id' AS message_id, (a.detail->>'size')::bigint AS size,
       a.detail->>'auth_user' AS auth_user, s.states
FROM mail_events a
{_STATES}
WHERE a.event = 'accepted'
  AND ($1::timestamptz IS NULL OR a.at >= $1)
  AND ($2::timestamptz IS NULL OR a.at < $2)
  AND ($3::timestamptz IS NULL OR (a.at, a.id) < ($3, $4::bigint))
  AND ($5::text IS NULL OR EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(a.detail->'recipients') t(address)
      WHERE strpos(lower(t.address), lower($5)) > 0))
  AND ($6::text IS NULL OR strpos(lower(a.detail->>'sender'), lower($6)) > 0)
  AND ($7::text IS NULL OR a.message_id = upper($7)
       OR lower(a.detail->>'message_id') = lower('<' || $7 || '>'))
  AND ($8::text IS NULL OR strpos(lower(a.detail->>'subject'), lower($8)) > 0)
ORDER BY a.at DESC, a.id DESC
LIMIT $9
"""


def _text(value: str | None) -> str | None:
    value = (value or "").strip()[:MAX_TEXT]
    return value or None


async def search(db: asyncpg.Pool, query: MailSearch, *, limit: int = 50,
                 before: tuple[datetime, int] | None = None) -> list[dict[str, Any]]:
    """Accepted messages newest first, each with its recipients' states counted
    (`states`: status -> recipients). `before` is the (at, log_id) of the last row of the
    previous page."""
    ident = _text(query.ident)
    if ident is not None:
        ident = ident.removeprefix("<").removesuffix(">")
    rows = await db.fetch(
        _SEARCH, query.since, query.until, before[0] if before else None,
        before[1] if before else 0, _text(query.to), _text(query.sender), ident,
        _text(query.subject), limit)
    return [dict(row) for row in rows]


async def message(db: asyncpg.Pool, queue_id: str) -> dict[str, Any] | None:
    """One message for its page: while stored, everything `queue show` has (`stored` is
    True); once deleted or expired by retention, what its log still tells (the accepted
    event's envelope, each recipient's last result, every event). None if the log never
    heard of it."""
    stored = await show_message(db, queue_id)
    if stored is not None:
        stored["stored"] = True
        accepted = next((e["detail"] for e in stored["events"]
                         if e["event"] == "accepted"), {})
        stored["subject"] = accepted.get("subject")
        return stored
    events = [dict(r) for r in await db.fetch(
        "SELECT at, recipient_idx, event, detail FROM mail_events WHERE message_id = $1 "
        "ORDER BY at, id", queue_id)]
    if not events:
        return None
    accepted = next((e for e in events if e["event"] == "accepted"), None)
    detail = accepted["detail"] if accepted else next(
        (e["detail"] for e in events if e["event"] == "deleted"), {})
    addresses = detail.get("recipients") or []
    last: dict[int, dict[str, Any]] = {}
    for event in events:
        if event["recipient_idx"] is not None and event["event"] != "retry":
            last[event["recipient_idx"]] = event
    deleted = any(e["event"] == "deleted" for e in events)
    recipients = []
    for idx, address in enumerate(addresses):
        final = last.get(idx)
        recipients.append({
            "idx": idx, "recipient": address,
            "status": "deleted" if deleted else (final["event"] if final else "unknown"),
            "attempts": sum(1 for e in events if e["recipient_idx"] == idx
                            and e["event"] in ("delivered", "deferred", "bounced")),
            "next_attempt_at": None,
            "last_code": (final or {}).get("detail", {}).get("code"),
            "last_response": (final or {}).get("detail", {}).get("response")})
    return {"stored": False, "id": queue_id, "sender": detail.get("sender", ""),
            "size": detail.get("size"), "received_at": accepted["at"] if accepted else None,
            "client_ip": detail.get("client_ip"), "helo": None,
            "auth_user": detail.get("auth_user"), "tls": detail.get("tls"),
            "message_id": detail.get("message_id"), "signed_by": detail.get("signed_by", []),
            "subject": detail.get("subject"), "headers": None, "body": None,
            "recipients": recipients, "events": events}


async def notifications(db: asyncpg.Pool, queue_id: str) -> list[dict[str, Any]]:
    """The delivery status notifications (bounces, delay warnings) egen queued about a
    message, oldest first."""
    rows = await db.fetch(
        "SELECT a.at, a.message_id AS queue_id, a.detail->>'subject' AS subject, s.states "
        f"FROM mail_events a {_STATES} WHERE a.event = 'accepted' "
        "AND a.detail ? 'about' AND a.detail->>'about' = $1 ORDER BY a.at, a.id", queue_id)
    return [dict(row) for row in rows]


async def totals(db: asyncpg.Pool, *, hours: int = 24, now: datetime | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """Per hour over the last `hours` hours, oldest first: messages accepted, and
    recipients delivered, deferred, bounced and expired (each attempt's result counts)."""
    last = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    first = last - timedelta(hours=hours - 1)
    rows = await db.fetch(
        "SELECT date_trunc('hour', at, 'UTC') AS hour, event, count(*) AS n "
        "FROM mail_events WHERE at >= $1 AND event = ANY($2::text[]) GROUP BY 1, 2",
        first, list(TOTALS))
    counts = {(r["hour"], r["event"]): r["n"] for r in rows}
    return {event: [{"start": (first + timedelta(hours=h)).isoformat(),
                     "count": counts.get((first + timedelta(hours=h), event), 0)}
                    for h in range(hours)] for event in TOTALS}
