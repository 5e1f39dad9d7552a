"""SQL for the mail queue tables (`mail_messages`, `mail_recipients`, `mail_events`):
insert accepted messages in batches, idempotently, and read them back for operators.

Knows the envelope's fields and the tables, nothing of SMTP. Delivery claims work from the
same tables (see the 0002 migration for the lease columns and indexes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.policy import default as _header_policy
from typing import Any

import asyncpg
import orjson

from daemon.mail.queue.envelope import Envelope

STATUSES = ("queued", "delivering", "deferred", "delivered", "bounced", "expired")
PENDING = ("queued", "delivering", "deferred")       # not final: still the queue's job

Db = asyncpg.Pool | asyncpg.Connection


class Unstorable(ValueError):
    """A message the queue tables can never hold, however often the insert is retried."""


_SUBJECT = re.compile(rb"^Subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
# The original's queue ID in a delivery status notification egen wrote (bounce.py).
_ABOUT = re.compile(rb"\r\nX-Egen-Queue-ID: ([0-9A-Z]{14})\r\n")
MAX_SUBJECT = 300


def log_facts(envelope: Envelope, data: bytes) -> dict[str, str]:
    """What the mail log keeps of the message itself, so it can be searched after the
    message is gone: the decoded Subject, and for a notification sent with the null sender,
    the queue ID of the message it reports on."""
    facts: dict[str, str] = {}
    head = split_message(data)[0]
    found = _SUBJECT.search(head)
    if found is not None:
        raw = re.sub(rb"\r?\n", b"", found.group(1)).decode("utf-8", "replace")
        subject = raw if "=?" not in raw else _decoded(raw)  # the parser only decodes
        facts["subject"] = subject.strip()[:MAX_SUBJECT]
    if envelope.sender == "":
        about = _ABOUT.search(data, 0, 65536)
        if about is not None:
            facts["about"] = about.group(1).decode()
    return facts


def _decoded(raw: str) -> str:
    """A header value with RFC 2047 encoded words decoded (the email package's parser is
    the costliest step of a queue insert, so only values with encoded words see it)."""
    try:
        return str(_header_policy.header_factory("subject", raw))
    except Exception:    # a broken encoded word: keep the text as written
        return raw


def recipient_domain(address: str) -> str:
    """The lowercased part after the last '@' ('' for a bare `postmaster`)."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def check_storable(envelope: Envelope) -> datetime:
    """Raise Unstorable for values Postgres would refuse on every retry; returns the
    acceptance time as a timestamp."""
    texts = [envelope.queue_id, envelope.sender, envelope.client_ip, envelope.helo,
             envelope.message_id, envelope.auth_user or "", envelope.tls or "",
             *envelope.recipients, *envelope.signed_by]
    joined = "\n".join(texts)
    if "\x00" in joined:
        raise Unstorable("envelope has a NUL character in a text field")
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Unstorable(f"envelope text is not valid Unicode: {err}") from None
    if not envelope.queue_id:
        raise Unstorable("envelope has an empty queue ID")
    if not math.isfinite(envelope.received_at):
        raise Unstorable(f"received_at {envelope.received_at!r} is not a time")
    try:
        return datetime.fromtimestamp(envelope.received_at, tz=UTC)
    except (OverflowError, OSError, ValueError) as err:
        raise Unstorable(f"received_at {envelope.received_at!r} is out of range: {err}") from None


_INSERT = """
WITH inserted AS (
    INSERT INTO mail_messages (id, sender, data, size, received_at, client_ip, helo, auth_user,
                               tls, smtputf8, body_8bit, message_id, signed_by, dsn_ret,
                               dsn_envid)
    SELECT m.id, m.sender, m.data, m.size, m.received_at, m.client_ip, m.helo, m.auth_user,
           m.tls, m.smtputf8, m.body_8bit, m.message_id,
           ARRAY(SELECT jsonb_array_elements_text(m.signed_by::jsonb)), m.dsn_ret, m.dsn_envid
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int4[], $5::timestamptz[],
                $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::bool[],
                $12::text[], $13::text[], $19::text[], $20::text[])
         AS m(id, sender, data, size, received_at, client_ip, helo, auth_user, tls,
              smtputf8, body_8bit, message_id, signed_by, dsn_ret, dsn_envid)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, received_at
), recipients AS (
    INSERT INTO mail_recipients (message_id, idx, recipient, domain, dsn_notify, dsn_orcpt)
    SELECT r.message_id, r.idx, r.recipient, r.domain, string_to_array(r.notify, ','),
           r.orcpt
    FROM unnest($14::text[], $15::int4[], $16::text[], $17::text[], $21::text[], $22::text[])
         AS r(message_id, idx, recipient, domain, notify, orcpt)
    JOIN inserted i ON i.id = r.message_id
), events AS (
    INSERT INTO mail_events (message_id, at, event, detail)
    SELECT i.id, i.received_at, 'accepted', e.detail::jsonb
    FROM unnest($1::text[], $18::text[]) AS e(id, detail)
    JOIN inserted i ON i.id = e.id
)
SELECT id FROM inserted
"""


def _nth(values: Sequence[str | None], idx: int) -> str | None:
    return values[idx] if idx < len(values) else None


async def insert_messages(db: Db, messages: Sequence[tuple[Envelope, bytes]]) -> list[str]:
    """Store accepted messages, their recipients (all 'queued', due now) and one 'accepted'
    event each, in one statement (so one transaction, one round trip).

    Idempotent: a queue ID already stored (a journal replay after a crash between commit and
    checkpoint) is skipped with its recipients and event. Returns the IDs inserted now.
    Call `check_storable` on each envelope first."""
    columns: list[list[Any]] = [[] for _ in range(22)]
    (ids, senders, datas, sizes, received, client_ips, helos, auth_users, tlss, utf8s,
     eightbits, message_ids, signed_bys, r_ids, r_idxs, r_addrs, r_domains, details,
     rets, envids, r_notifies, r_orcpts) = columns
    seen: set[str] = set()
    for envelope, data in messages:
        if envelope.queue_id in seen:        # the same record twice in one batch
            continue
        seen.add(envelope.queue_id)
        ids.append(envelope.queue_id)
        senders.append(envelope.sender)
        datas.append(data)
        sizes.append(len(data))
        received.append(check_storable(envelope))
        client_ips.append(envelope.client_ip)
        helos.append(envelope.helo)
        auth_users.append(envelope.auth_user)
        tlss.append(envelope.tls)
        utf8s.append(envelope.smtputf8)
        eightbits.append(envelope.body_8bit)
        message_ids.append(envelope.message_id)
        signed_bys.append(orjson.dumps(list(envelope.signed_by)).decode())
        rets.append(envelope.dsn_ret)
        envids.append(envelope.dsn_envid)
        for idx, address in enumerate(envelope.recipients):
            r_ids.append(envelope.queue_id)
            r_idxs.append(idx)
            r_addrs.append(address)
            r_domains.append(recipient_domain(address))
            r_notifies.append(_nth(envelope.dsn_notify, idx))
            r_orcpts.append(_nth(envelope.dsn_orcpt, idx))
        details.append(orjson.dumps({
            "sender": envelope.sender, "recipients": list(envelope.recipients),
            "size": len(data), "client_ip": envelope.client_ip,
            "auth_user": envelope.auth_user, "tls": envelope.tls,
            "message_id": envelope.message_id, "signed_by": list(envelope.signed_by),
            **log_facts(envelope, data),
        }).decode())
    if not ids:
        return []
    rows = await db.fetch(_INSERT, *columns)
    return [row["id"] for row in rows]


_LIST = """
SELECT m.id, m.sender, m.size, m.received_at,
       extract(epoch FROM now() - m.received_at)::float8 AS age,
       c.recipients, f.first_recipient, c.statuses, w.next_attempt_at
FROM mail_messages m
CROSS JOIN LATERAL (
    SELECT sum(s.n)::int AS recipients, jsonb_object_agg(s.status, s.n) AS statuses
    FROM (SELECT status, count(*) AS n FROM mail_recipients
          WHERE message_id = m.id GROUP BY status) s
) c
CROSS JOIN LATERAL (
    SELECT recipient AS first_recipient FROM mail_recipients
    WHERE message_id = m.id ORDER BY idx LIMIT 1
) f
CROSS JOIN LATERAL (
    SELECT min(next_attempt_at) AS next_attempt_at FROM mail_recipients
    WHERE message_id = m.id AND status IN ('queued', 'deferred')
) w
WHERE $1::text[] IS NULL OR EXISTS (
    SELECT 1 FROM mail_recipients x WHERE x.message_id = m.id AND x.status = ANY($1::text[]))
ORDER BY m.received_at, m.id
LIMIT $2
"""


async def list_messages(db: Db, *, statuses: Sequence[str] | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
    """Messages oldest first, with recipient count, first recipient, a count per status and
    when the next waiting recipient is due (None when none waits).
    `statuses`: only messages with at least one recipient in one of them (None: all)."""
    rows = await db.fetch(_LIST, None if statuses is None else list(statuses), limit)
    out = []
    for row in rows:
        item = dict(row)
        counts = item["statuses"]
        item["statuses"] = {s: counts[s] for s in STATUSES if s in counts}
        out.append(item)
    return out


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header block with its last line ending, body) of an RFC 5322 message."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    if data.startswith(b"\n"):
        return b"", data[1:]
    ends = [(i, n) for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    if not ends:
        return data, b""
    at, length = min(ends)
    return data[:at + length // 2], data[at + length:]


async def show_message(db: asyncpg.Pool, queue_id: str) -> dict[str, Any] | None:
    """One message with its recipients (in RCPT order) and its events; None if unknown.
    `headers` and `body` are the message bytes split at the first empty line."""
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                      readonly=True):
        message = await conn.fetchrow(
            """
            SELECT id, sender, size, received_at, queued_at,
                   extract(epoch FROM now() - received_at)::float8 AS age,
                   client_ip, helo, auth_user, tls, smtputf8, body_8bit, message_id,
                   signed_by, dsn_ret, dsn_envid, warned_at, done_at, data
            FROM mail_messages WHERE id = $1
            """, queue_id)
        if message is None:
            return None
        recipients = await conn.fetch(
            """
            SELECT idx, recipient, domain, status, attempts, next_attempt_at,
                   last_attempt_at, last_code, last_response, lease_owner, lease_until,
                   dsn_notify, dsn_orcpt, updated_at
            FROM mail_recipients WHERE message_id = $1 ORDER BY idx
            """, queue_id)
        events = await conn.fetch(
            """
            SELECT at, recipient_idx, event, detail FROM mail_events
            WHERE message_id = $1 ORDER BY at, id
            """, queue_id)
    out = dict(message)
    out["headers"], out["body"] = split_message(out.pop("data"))
    out["recipients"] = [dict(r) for r in recipients]
    out["events"] = [dict(e) for e in events]
    return out
