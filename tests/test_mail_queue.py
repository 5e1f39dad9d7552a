"""The mail queue tables against real Postgres: the flusher from a real journal, replays,
records Postgres refuses, the operator queries, and `egen queue list|show` as subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from daemon.cli import dispatch as cli
from daemon.db import Database
from daemon.journal.consumer import JournalConsumer, PoisonRecord
from daemon.journal.log import Journal
from daemon.mail.queue import store as queue_store
from daemon.mail.queue.envelope import Envelope, encode, new_queue_id
from daemon.mail.queue.flusher import mail_store

BASE_TIME = 1_700_000_000.0

# -- helpers (test_consumer uses them too) ------------------------------------------------


def sample_mail(i: int, *, recipients: tuple[str, ...] | None = None, sender: str | None = None,
                body_size: int = 2048) -> tuple[Envelope, bytes]:
    """A signed-looking message of about `body_size` body bytes and its envelope."""
    queue_id = new_queue_id()
    recipients = recipients or tuple(f"user{i}.{n}@Dest{n}.Example.NET" for n in range(1 + i % 3))
    head = (f"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; b=abc{i}\r\n"
            f"From: app{i}@example.com\r\nTo: {recipients[0]}\r\nSubject: test {i}\r\n"
            f"Message-ID: <{i}.{queue_id}@test.invalid>\r\n\r\n").encode()
    # Every byte value, NUL and CR/LF included, must come back exactly.
    body = (bytes(range(256)) * (body_size // 256 + 1))[:body_size]
    message = head + body
    envelope = Envelope(
        queue_id=queue_id, sender=f"app{i}@example.com" if sender is None else sender,
        recipients=recipients, received_at=BASE_TIME + i, client_ip=f"192.0.2.{i % 250}",
        helo=f"client{i}.test", auth_user="app" if i % 2 else None,
        tls="TLSv1.3 TLS_AES_256_GCM_SHA384" if i % 2 else None, smtputf8=i % 5 == 0,
        body_8bit=i % 3 == 0, message_id=f"<{i}.{queue_id}@test.invalid>",
        signed_by=("d=example.com s=sel a=rsa-sha256",) if i % 4 else (), size=len(message))
    return envelope, message


def mail_records(count: int, start: int = 0) -> list[tuple[Envelope, bytes, bytes]]:
    """(envelope, message, journal payload) for `count` messages."""
    out = []
    for i in range(start, start + count):
        envelope, message = sample_mail(i)
        out.append((envelope, message, encode(envelope, message)))
    return out


async def open_database(url: str, tmp_path: Path, **kwargs: float) -> Database:
    db = Database(url=url, data_dir=tmp_path / "unused-embedded", min_size=1, max_size=4,
                  **kwargs)  # type: ignore[arg-type]
    await db.start()
    return db


async def open_journal(directory: Path) -> Journal:
    journal = Journal(directory, name="mail", max_size=2**30)
    await journal.open()
    return journal


async def queue_counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """(messages, recipients, events) stored."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM mail_messages) AS m, "
        "(SELECT count(*) FROM mail_recipients) AS r, (SELECT count(*) FROM mail_events) AS e")
    return row["m"], row["r"], row["e"]


async def assert_stored_exactly(pool: asyncpg.Pool,
                                expected: list[tuple[Envelope, bytes, bytes]]) -> None:
    """The queue holds exactly these messages, each as accepted, nothing twice."""
    messages = {r["id"]: r for r in await pool.fetch("SELECT * FROM mail_messages")}
    assert sorted(messages) == sorted(e.queue_id for e, _, _ in expected)
    recipients: dict[str, list[asyncpg.Record]] = {}
    for row in await pool.fetch("SELECT * FROM mail_recipients ORDER BY message_id, idx"):
        recipients.setdefault(row["message_id"], []).append(row)
    events: dict[str, list[asyncpg.Record]] = {}
    for row in await pool.fetch("SELECT * FROM mail_events ORDER BY id"):
        events.setdefault(row["message_id"], []).append(row)
    for envelope, message, _ in expected:
        row = messages[envelope.queue_id]
        assert row["sender"] == envelope.sender
        assert bytes(row["data"]) == message
        assert row["size"] == len(message)
        assert row["received_at"].timestamp() == envelope.received_at
        assert (row["client_ip"], row["helo"], row["auth_user"], row["tls"]) == (
            envelope.client_ip, envelope.helo, envelope.auth_user, envelope.tls)
        assert (row["smtputf8"], row["body_8bit"]) == (envelope.smtputf8, envelope.body_8bit)
        assert row["message_id"] == envelope.message_id
        assert tuple(row["signed_by"]) == envelope.signed_by
        rcpts = recipients[envelope.queue_id]
        assert [r["recipient"] for r in rcpts] == list(envelope.recipients)
        assert [r["idx"] for r in rcpts] == list(range(len(envelope.recipients)))
        assert [r["domain"] for r in rcpts] == [
            a.rsplit("@", 1)[1].lower() for a in envelope.recipients]
        assert {(r["status"], r["attempts"], r["lease_owner"]) for r in rcpts} == {
            ("queued", 0, None)}
        [event] = events[envelope.queue_id]
        assert (event["event"], event["recipient_idx"]) == ("accepted", None)
        assert event["at"] == row["received_at"]
        assert event["detail"]["sender"] == envelope.sender
        assert event["detail"]["recipients"] == list(envelope.recipients)
        assert event["detail"]["size"] == len(message)
    assert sum(len(v) for v in events.values()) == len(expected)


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(pg_url, tmp_path)
    yield database
    await database.stop()


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await open_journal(tmp_path / "journal")
    yield j
    await j.close()


# -- the flusher ----------------------------------------------------------------------------


async def test_flush_from_journal_stores_every_message_as_accepted(
        db: Database, journal: Journal) -> None:
    mails = mail_records(60)
    registry = CollectorRegistry()
    consumer = JournalConsumer(journal, mail_store(db.pool), name="mail", max_records=7,
                               registry=registry)
    await consumer.start()
    try:
        for _, _, payload in mails[:25]:
            await journal.append(payload)
        await journal.append_many([payload for _, _, payload in mails[25:]])
        await consumer.drained()
        assert journal.unconsumed_bytes == 0
        await assert_stored_exactly(db.pool, mails)
        assert registry.get_sample_value(
            "egen_consumer_records_total", {"consumer": "mail"}) == 60
        assert registry.get_sample_value(
            "egen_consumer_batches_total", {"consumer": "mail"}) >= 60 / 7
    finally:
        await consumer.stop()
    # The checkpoint is durable: a reopened journal has nothing to replay.
    await journal.close()
    reopened = await open_journal(journal._dir)
    try:
        assert reopened.unconsumed_bytes == 0
        assert await reopened.read(timeout=0) == []
    finally:
        await reopened.close()


async def test_replay_of_stored_records_duplicates_nothing(
        db: Database, tmp_path: Path) -> None:
    mails = mail_records(30)
    store = mail_store(db.pool)
    journal = await open_journal(tmp_path / "j")
    await journal.append_many([p for _, _, p in mails])
    records = await journal.read(timeout=0)
    assert len(records) == 30
    await store(records[:20])
    # The same records again (a rewind after a failed checkpoint), and one twice in a batch.
    journal.rewind()
    again = await journal.read(timeout=0)
    assert again == records
    await store([again[0], *again[:20], again[0]])
    assert await queue_counts(db.pool) == (20, sum(len(e.recipients) for e, _, _ in mails[:20]),
                                           20)
    # Crash before the checkpoint: the reopened journal replays all 30 into the consumer.
    await journal.close()
    journal = await open_journal(tmp_path / "j")
    consumer = JournalConsumer(journal, store, name="mail")
    await consumer.start()
    try:
        await consumer.drained()
    finally:
        await consumer.stop()
        await journal.close()
    await assert_stored_exactly(db.pool, mails)


async def test_insert_returns_only_new_ids(db: Database) -> None:
    mails = [sample_mail(i) for i in range(5)]
    assert await queue_store.insert_messages(db.pool, mails[:3]) == [
        e.queue_id for e, _ in mails[:3]]
    assert sorted(await queue_store.insert_messages(db.pool, mails)) == sorted(
        e.queue_id for e, _ in mails[3:])
    assert await queue_store.insert_messages(db.pool, mails) == []
    assert await queue_store.insert_messages(db.pool, []) == []


@pytest.mark.parametrize(("envelope_change", "reason"), [
    ({"sender": "a\x00b@example.com"}, "NUL character"),
    ({"recipients": ("x@example.com", "y\x00@example.com")}, "NUL character"),
    ({"received_at": float("nan")}, "malformed"),      # orjson writes NaN as null
    ({"received_at": 1e300}, "out of range"),
    ({"queue_id": ""}, "empty queue ID"),
])
async def test_values_postgres_cannot_hold_are_poison(
        db: Database, journal: Journal, envelope_change: dict, reason: str) -> None:
    good, message = sample_mail(1)
    bad = dataclasses.replace(good, **{"queue_id": new_queue_id(), **envelope_change})
    await journal.append_many([encode(good, message), encode(bad, message)])
    records = await journal.read(timeout=0)
    with pytest.raises(PoisonRecord, match=reason) as caught:
        await mail_store(db.pool)(records)
    assert caught.value.position == records[1].position
    assert await queue_counts(db.pool) == (0, 0, 0)   # found before anything was written
    await mail_store(db.pool)(records[:1])
    assert await queue_counts(db.pool) == (1, len(good.recipients), 1)


async def test_a_message_postgres_refuses_is_found_in_the_batch(
        db: Database, journal: Journal) -> None:
    """A value only Postgres can judge (an index entry too large for a btree page): the
    batch is retried message by message and only the refused one is poison."""
    mails = mail_records(4)
    huge_domain = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                          for _ in range(20000))
    bad, message = sample_mail(9, recipients=(f"x@{huge_domain}",))
    payloads = [p for _, _, p in mails[:2]] + [encode(bad, message)] + [
        p for _, _, p in mails[2:]]
    await journal.append_many(payloads)
    records = await journal.read(timeout=0)
    store = mail_store(db.pool)
    with pytest.raises(PoisonRecord, match=rf"{bad.queue_id}.*ProgramLimitExceeded") as caught:
        await store(records)
    assert caught.value.position == records[2].position
    # What the consumer does next: the rest of the batch, which replays the ones already in.
    await store([r for r in records if r.position != caught.value.position])
    await assert_stored_exactly(db.pool, mails)


# -- schema for the delivery stage -----------------------------------------------------------


async def test_two_nodes_claim_disjoint_due_recipients(db: Database) -> None:
    mails = [sample_mail(i, recipients=tuple(f"r{n}@d{n % 2}.test" for n in range(4)))
             for i in range(3)]
    await queue_store.insert_messages(db.pool, mails)
    await db.pool.execute("UPDATE mail_recipients SET next_attempt_at = now() + interval '1h' "
                          "WHERE message_id = $1 AND idx = 0", mails[0][0].queue_id)
    claim = """
        UPDATE mail_recipients r SET status = 'delivering', lease_owner = $1,
               lease_until = now() + interval '5 minutes', updated_at = now()
        FROM (SELECT message_id, idx FROM mail_recipients
              WHERE status IN ('queued', 'deferred') AND next_attempt_at <= now()
              ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
        WHERE r.message_id = due.message_id AND r.idx = due.idx
        RETURNING r.message_id, r.idx
    """
    async with db.pool.acquire() as a, db.pool.acquire() as b:
        tx_a, tx_b = a.transaction(), b.transaction()
        await tx_a.start()
        await tx_b.start()
        got_a = {(r["message_id"], r["idx"]) for r in await a.fetch(claim, "node-a", 6)}
        got_b = {(r["message_id"], r["idx"]) for r in await b.fetch(claim, "node-b", 100)}
        await tx_a.commit()
        await tx_b.commit()
    assert len(got_a) == 6
    assert len(got_b) == 5                       # 12 recipients, one not due yet
    assert not got_a & got_b
    assert (mails[0][0].queue_id, 0) not in got_a | got_b
    owners = await db.pool.fetch("SELECT lease_owner, count(*) FROM mail_recipients "
                                 "GROUP BY lease_owner ORDER BY lease_owner NULLS LAST")
    assert [tuple(r) for r in owners] == [("node-a", 6), ("node-b", 5), (None, 1)]


# -- operator queries -----------------------------------------------------------------------


async def test_list_filters_by_status_oldest_first(db: Database) -> None:
    mails = [sample_mail(i, recipients=("a@x.test", "b@y.test", "c@z.test")[: 1 + i % 3])
             for i in range(6)]
    await queue_store.insert_messages(db.pool, list(reversed(mails)))
    ids = [e.queue_id for e, _ in mails]
    await db.pool.execute("UPDATE mail_recipients SET status = 'delivered' WHERE message_id = $1",
                          ids[0])
    await db.pool.execute("UPDATE mail_recipients SET status = 'bounced' "
                          "WHERE message_id = $1 AND idx = 1", ids[4])
    everything = await queue_store.list_messages(db.pool)
    assert [m["id"] for m in everything] == ids
    row = everything[5]
    assert (row["sender"], row["size"], row["recipients"], row["first_recipient"]) == (
        "app5@example.com", mails[5][0].size, 3, "a@x.test")
    assert row["age"] > time.time() - BASE_TIME - 60
    assert everything[4]["statuses"] == {"queued": 1, "bounced": 1}
    pending = await queue_store.list_messages(db.pool, statuses=queue_store.PENDING)
    assert [m["id"] for m in pending] == ids[1:]
    assert [m["id"] for m in await queue_store.list_messages(
        db.pool, statuses=["delivered", "bounced"])] == [ids[0], ids[4]]
    assert [m["id"] for m in await queue_store.list_messages(db.pool, limit=2)] == ids[:2]
    assert await queue_store.list_messages(db.pool, statuses=["expired"]) == []


async def test_show_returns_envelope_recipients_events_and_split_message(db: Database) -> None:
    envelope, message = sample_mail(3, recipients=("one@A.test", "two@b.test"))
    await queue_store.insert_messages(db.pool, [(envelope, message)])
    shown = await queue_store.show_message(db.pool, envelope.queue_id)
    assert shown is not None
    assert shown["headers"] + b"\r\n" + shown["body"] == message
    assert shown["headers"].endswith(b"@test.invalid>\r\n")
    assert shown["body"].startswith(bytes(range(10)))
    assert [(r["recipient"], r["domain"], r["status"]) for r in shown["recipients"]] == [
        ("one@A.test", "a.test", "queued"), ("two@b.test", "b.test", "queued")]
    assert [e["event"] for e in shown["events"]] == ["accepted"]
    assert await queue_store.show_message(db.pool, "NOSUCHID") is None


@pytest.mark.parametrize(("data", "headers", "body"), [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2\r\n", b"body\r\n\r\nmore"),
    (b"A: 1\nB: 2\n\nbody\n\nmore", b"A: 1\nB: 2\n", b"body\n\nmore"),
    (b"A: 1\r\n\r\nx\n\ny", b"A: 1\r\n", b"x\n\ny"),
    (b"A: 1\r\n", b"A: 1\r\n", b""),
    (b"\r\nonly body", b"", b"only body"),
    (b"", b"", b""),
])
def test_split_message(data: bytes, headers: bytes, body: bytes) -> None:
    assert queue_store.split_message(data) == (headers, body)


@pytest.mark.parametrize(("address", "domain"), [
    ("User@Example.COM", "example.com"), ('"a@b"@C.test', "c.test"), ("postmaster", "")])
def test_recipient_domain(address: str, domain: str) -> None:
    assert queue_store.recipient_domain(address) == domain


def test_cli_knows_every_status() -> None:
    assert set(cli.QUEUE_STATUSES) == set(queue_store.STATUSES)


# -- the CLI --------------------------------------------------------------------------------


async def egen(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def test_queue_list_and_show_verbs(db: Database, pg_url: str, tmp_path: Path) -> None:
    mails = [sample_mail(i) for i in range(3)]
    await queue_store.insert_messages(db.pool, mails)
    first, message = mails[0]
    await db.pool.execute(
        "UPDATE mail_recipients SET status = 'deferred', attempts = 2, last_code = 451, "
        "last_response = '4.7.1 greylisted, try later' WHERE message_id = $1", first.queue_id)
    config = tmp_path / "egen.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[database]\nurl = "{pg_url}"\n')
    c = ("--config", str(config))
    (rc_json, out_json, err_json), (rc_table, out_table, _), (rc_deferred, out_deferred, _), \
        (rc_show, out_show, _), (rc_body, out_body, _), (rc_show_json, out_show_json, _), \
        (rc_unknown, out_unknown, err_unknown) = await asyncio.gather(
            egen("queue", "list", "--json", *c),
            egen("queue", "list", *c),
            egen("queue", "list", "--json", "--status", "deferred", "--limit", "5", *c),
            egen("queue", "show", first.queue_id, *c),
            egen("queue", "show", first.queue_id, "--body", *c),
            egen("queue", "show", first.queue_id, "--json", *c),
            egen("queue", "show", "NOSUCHID", *c))
    assert rc_json == 0, err_json
    listed = orjson.loads(out_json)
    assert rc_table == 0
    table = out_table.decode()
    assert [m["id"] for m in listed] == [e.queue_id for e, _ in mails]
    assert listed[0]["sender"] == first.sender
    assert listed[0]["recipients"] == len(first.recipients)
    assert listed[0]["first_recipient"] == first.recipients[0]
    assert listed[0]["statuses"] == {"deferred": len(first.recipients)}
    assert listed[1]["statuses"] == {"queued": 2}
    header, *lines = table.splitlines()
    assert header.split() == ["ID", "SENDER", "RECIPIENTS", "SIZE", "AGE", "STATUS"]
    assert lines[1].split()[:5] == [mails[1][0].queue_id, "app1@example.com",
                                    mails[1][0].recipients[0], "(+1)", str(mails[1][0].size)]
    assert lines[1].endswith("queued 2")
    assert rc_deferred == 0
    assert [m["id"] for m in orjson.loads(out_deferred)] == [first.queue_id]

    headers, body = message.split(b"\r\n\r\n", 1)
    assert rc_show == 0
    assert re.search(rb"\nsender: +app0@example\.com\n", out_show)
    assert b"4.7.1 greylisted, try later" in out_show
    assert out_show.endswith(headers + b"\r\n")      # the headers as stored, no body
    assert body[:64] not in out_show
    assert rc_body == 0
    assert out_body.endswith(b"\n\n" + message)      # exactly as stored
    assert rc_show_json == 0
    shown = orjson.loads(out_show_json)
    assert shown["id"] == first.queue_id
    assert shown["headers"] == message.split(b"\r\n\r\n", 1)[0].decode() + "\r\n"
    assert "body" not in shown
    assert [(r["recipient"], r["status"], r["attempts"], r["last_code"])
            for r in shown["recipients"]] == [
        (a, "deferred", 2, 451) for a in first.recipients]
    assert [e["event"] for e in shown["events"]] == ["accepted"]

    assert rc_unknown == 1
    assert out_unknown == b""
    assert err_unknown.strip() == "egen: no message with queue ID 'NOSUCHID'"
