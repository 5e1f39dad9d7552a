"""The operator's hands on the queue against real Postgres: `egen queue retry|delete|flush`
and `egen mail log`, with recipients in every state a delivery leaves them in (attempts
claimed and recorded through delivery_store, one left leased as if in flight)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.db import Database
from daemon.mail.delivery import store as delivery_store
from daemon.mail.queue import admin as queue_admin
from daemon.mail.queue import store as queue_store
from daemon.mail.queue.envelope import Envelope
from tests.test_mail_queue import open_database, sample_mail

RELAY = "mx.dest.example[192.0.2.7]:25"
TLS = "TLSv1.3 TLS_AES_256_GCM_SHA384"
Outcomes = dict[tuple[str, int], tuple[str, int, str]]


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(pg_url, tmp_path)
    yield database
    await database.stop()


async def attempt(db: Database, outcomes: Outcomes, *, owner: str = "node-a",
                  hold: bool = False) -> list[delivery_store.Claimed]:
    """One delivery round as a node does it: claim everything due, record the given
    (status, code, response) per (queue ID, idx); deferred ones are due again in an hour.
    The other claims are released, or with `hold` kept leased (a delivery in flight)."""
    claimed, _ = await delivery_store.claim(db.pool, owner=owner, lease=600, limit=1000)
    later = datetime.now(UTC) + timedelta(hours=1)
    mine = {(item.message_id, item.idx) for item in claimed}
    rest = [item for item in claimed if (item.message_id, item.idx) not in outcomes]
    results = [delivery_store.Result(   # logged in the order given
        queue_id, idx, status, later if status == "deferred" else None, code, response,
        {"remote": RELAY, "tls": TLS})
        for (queue_id, idx), (status, code, response) in outcomes.items()
        if (queue_id, idx) in mine]
    assert await delivery_store.record(db.pool, owner=owner, results=results) == len(results)
    if not hold:
        await delivery_store.release(db.pool, owner=owner, claimed=rest)
    return rest


async def recipients(db: Database, queue_id: str) -> list[dict[str, Any]]:
    rows = await db.pool.fetch(
        "SELECT idx, status, next_attempt_at <= now() AS due, lease_owner "
        "FROM mail_recipients WHERE message_id = $1 ORDER BY idx", queue_id)
    return [dict(r) for r in rows]


async def events(db: Database, queue_id: str, event: str) -> list[dict[str, Any]]:
    rows = await db.pool.fetch(
        "SELECT recipient_idx, detail FROM mail_events WHERE message_id = $1 AND event = $2 "
        "ORDER BY id", queue_id, event)
    return [dict(r) for r in rows]


async def store(db: Database, *mails: tuple[Envelope, bytes]) -> list[Envelope]:
    await queue_store.insert_messages(db.pool, list(mails))
    return [envelope for envelope, _ in mails]


async def mixed_message(db: Database) -> Envelope:
    """Recipient 0 deferred, 1 delivered, 2 bounced, 3 being delivered (leased)."""
    [mail] = await store(db, sample_mail(1, recipients=(
        "def@a.example", "ok@b.example", "gone@c.example", "busy@d.example")))
    q = mail.queue_id
    await attempt(db, {(q, 0): ("deferred", 451, "4.7.1 greylisted"),
                       (q, 1): ("delivered", 250, "2.0.0 ok"),
                       (q, 2): ("bounced", 550, "5.1.1 no such user")}, hold=True)
    return mail


# -- storage --------------------------------------------------------------------------------


async def test_retry_makes_waiting_recipients_due_and_leaves_a_delivery_alone(
        db: Database) -> None:
    mail = await mixed_message(db)
    [queued] = await store(db, sample_mail(2, recipients=("later@e.example",)))
    await db.pool.execute("UPDATE mail_recipients SET next_attempt_at = now() + '1 day' "
                          "WHERE message_id = $1", queued.queue_id)
    assert [(r["status"], r["due"]) for r in await recipients(db, mail.queue_id)] == [
        ("deferred", False), ("delivered", True), ("bounced", True), ("delivering", True)]

    result = await queue_admin.retry_message(db.pool, mail.queue_id)
    assert result == queue_admin.Retried(rescheduled=1, delivering=1)
    rows = await recipients(db, mail.queue_id)
    assert (rows[0]["status"], rows[0]["due"]) == ("deferred", True)
    assert (rows[3]["status"], rows[3]["lease_owner"]) == ("delivering", "node-a")
    [event] = await events(db, mail.queue_id, "retry")
    assert event["recipient_idx"] == 0
    assert event["detail"]["status"] == "deferred"
    assert event["detail"]["by"] == "egen queue retry"
    assert datetime.fromisoformat(event["detail"]["was_due"]) > datetime.now(UTC)

    # A queued recipient not due yet (released by a node that stopped) counts too.
    assert await queue_admin.retry_message(db.pool, queued.queue_id) == queue_admin.Retried(1, 0)
    assert (await recipients(db, queued.queue_id))[0]["due"]
    assert await queue_admin.retry_message(db.pool, "NOSUCHID") is None
    # A lease that ran out is no live delivery (another node takes it over anyway).
    await db.pool.execute("UPDATE mail_recipients SET lease_until = now() - interval '1s' "
                          "WHERE message_id = $1 AND status = 'delivering'", mail.queue_id)
    assert await queue_admin.retry_message(db.pool, mail.queue_id) == queue_admin.Retried(1, 0)


async def test_retry_of_a_finished_message_changes_nothing(db: Database) -> None:
    [mail] = await store(db, sample_mail(1, recipients=("ok@b.example",)))
    await attempt(db, {(mail.queue_id, 0): ("delivered", 250, "2.0.0 ok")})
    assert await queue_admin.retry_message(db.pool, mail.queue_id) == queue_admin.Retried(0, 0)
    assert await events(db, mail.queue_id, "retry") == []


async def test_flush_makes_only_deferred_recipients_due(db: Database) -> None:
    a, b, c = await store(db, sample_mail(1, recipients=("x@a.example", "y@a.example")),
                          sample_mail(2, recipients=("z@b.example",)),
                          sample_mail(3, recipients=("w@c.example",)))
    await attempt(db, {(a.queue_id, 0): ("deferred", 421, "4.4.2 timeout"),
                       (a.queue_id, 1): ("deferred", 421, "4.4.2 timeout"),
                       (b.queue_id, 0): ("deferred", 450, "4.2.0 mailbox busy")})
    await db.pool.execute("UPDATE mail_recipients SET next_attempt_at = now() + '1 day' "
                          "WHERE message_id = $1", c.queue_id)

    assert await queue_admin.retry_deferred(db.pool) == 3
    for mail in (a, b):
        assert all(r["due"] for r in await recipients(db, mail.queue_id))
    assert [(r["status"], r["due"]) for r in await recipients(db, c.queue_id)] == [
        ("queued", False)]
    assert [e["recipient_idx"] for e in await events(db, a.queue_id, "retry")] == [0, 1]
    assert (await events(db, b.queue_id, "retry"))[0]["detail"]["by"] == "egen queue flush"
    # Already due: made due again (nothing changes) but still counted, and claimable.
    assert await queue_admin.retry_deferred(db.pool, by="egen queue retry --all") == 3
    claimed, _ = await delivery_store.claim(db.pool, owner="node-b", lease=60, limit=10)
    assert {(x.message_id, x.idx) for x in claimed} == {
        (a.queue_id, 0), (a.queue_id, 1), (b.queue_id, 0)}
    assert await queue_admin.retry_deferred(db.pool) == 0      # all being delivered now


async def test_delete_refuses_a_live_delivery_unless_forced(db: Database) -> None:
    mail = await mixed_message(db)
    with pytest.raises(queue_admin.BeingDelivered) as refused:
        await queue_admin.delete_message(db.pool, mail.queue_id)
    assert [(lease.idx, lease.recipient, lease.owner) for lease in refused.value.leases] == [
        (3, "busy@d.example", "node-a")]
    assert "being delivered right now (by node-a)" in str(refused.value)
    assert len(await recipients(db, mail.queue_id)) == 4       # nothing deleted
    assert await events(db, mail.queue_id, "deleted") == []

    deleted = await queue_admin.delete_message(db.pool, mail.queue_id, force=True)
    assert deleted == queue_admin.Deleted(id=mail.queue_id, recipients=4, pending=2, forced=1)
    assert await db.pool.fetchval("SELECT count(*) FROM mail_messages") == 0
    assert await db.pool.fetchval("SELECT count(*) FROM mail_recipients") == 0
    [event] = await events(db, mail.queue_id, "deleted")
    assert event["recipient_idx"] is None
    assert event["detail"] == {
        "sender": mail.sender, "recipients": list(mail.recipients),
        "statuses": ["deferred", "delivered", "bounced", "delivering"], "pending": 2,
        "forced": 1, "by": "egen queue delete"}
    # The node in flight finds its rows gone: its result is not recorded.
    late = delivery_store.Result(mail.queue_id, 3, "delivered", None, 250, "2.0.0 ok", {})
    assert await delivery_store.record(db.pool, owner="node-a", results=[late]) == 0
    assert await queue_admin.delete_message(db.pool, mail.queue_id) is None


async def test_delete_takes_a_message_whose_lease_ran_out(db: Database) -> None:
    mail = await mixed_message(db)
    await db.pool.execute("UPDATE mail_recipients SET lease_until = now() - interval '1 second' "
                          "WHERE message_id = $1 AND status = 'delivering'", mail.queue_id)
    deleted = await queue_admin.delete_message(db.pool, mail.queue_id)
    assert deleted == queue_admin.Deleted(mail.queue_id, recipients=4, pending=2, forced=0)


async def log_of(db: Database, **filters: Any) -> list[tuple[str, str, str | None]]:
    rows = await queue_admin.read_log(db.pool, **filters)
    return [(r["queue_id"], r["event"], r["recipient"]) for r in rows]


async def test_log_is_newest_first_and_reads_deleted_messages(db: Database) -> None:
    mail = await mixed_message(db)
    q = mail.queue_id
    await queue_admin.retry_message(db.pool, q)
    await queue_admin.delete_message(db.pool, q, force=True)

    rows = await queue_admin.read_log(db.pool)
    assert [(r["event"], r["recipient"]) for r in rows] == [
        ("deleted", None), ("retry", "def@a.example"), ("bounced", "gone@c.example"),
        ("delivered", "ok@b.example"), ("deferred", "def@a.example"), ("accepted", None)]
    deleted, retry, bounced, *_, accepted = rows
    assert deleted["recipients"] == accepted["recipients"] == list(mail.recipients)
    assert {r["sender"] for r in rows} == {mail.sender}
    assert (bounced["relay"], bounced["tls"], bounced["code"], bounced["response"]) == (
        RELAY, TLS, 550, "5.1.1 no such user")
    assert bounced["recipient_idx"] == 2
    assert (retry["code"], retry["response"], retry["relay"]) == (None, None, None)
    assert accepted["at"].timestamp() == mail.received_at
    assert mail.tls and accepted["detail"]["tls"] == mail.tls
    assert (accepted["relay"], accepted["tls"], accepted["code"]) == (None, None, None)
    assert accepted["detail"]["size"] == mail.size


async def test_log_filters(db: Database) -> None:
    a, b, null = await store(
        db, sample_mail(1, recipients=("Alice@Example.org", "bob@example.org")),
        sample_mail(2, recipients=("bob@example.org",), sender="Other@Example.com"),
        sample_mail(3, recipients=("alice@example.org",), sender=""))
    await attempt(db, {(a.queue_id, 0): ("delivered", 250, "2.0.0 ok"),
                       (a.queue_id, 1): ("deferred", 451, "4.3.0 try later"),
                       (b.queue_id, 0): ("bounced", 550, "5.1.1 unknown"),
                       (null.queue_id, 0): ("delivered", 250, "2.0.0 ok")})

    assert await log_of(db, to="ALICE@example.ORG") == [
        (null.queue_id, "delivered", "alice@example.org"),
        (a.queue_id, "delivered", "Alice@Example.org"),
        (null.queue_id, "accepted", None), (a.queue_id, "accepted", None)]
    assert await log_of(db, to="bob@example.org", sender="other@example.com") == [
        (b.queue_id, "bounced", "bob@example.org"), (b.queue_id, "accepted", None)]
    assert await log_of(db, sender="") == [
        (null.queue_id, "delivered", "alice@example.org"), (null.queue_id, "accepted", None)]
    assert await log_of(db, queue_id=a.queue_id, to="bob@example.org") == [
        (a.queue_id, "deferred", "bob@example.org"), (a.queue_id, "accepted", None)]
    assert await log_of(db, to="nobody@example.org") == []
    assert await log_of(db, queue_id="NOSUCHID") == []
    # The accepted events are from 2023 (the envelopes' receive time); attempts are now.
    assert {e for _, e, _ in await log_of(db, since=3600)} == {
        "delivered", "deferred", "bounced"}
    await db.pool.execute("UPDATE mail_events SET at = now() - interval '2 hours' "
                          "WHERE message_id = $1", b.queue_id)
    assert [q for q, _, _ in await log_of(db, since=3600)] == [
        null.queue_id, a.queue_id, a.queue_id]
    assert len(await log_of(db, since=3 * 3600)) == 5
    assert len(await log_of(db, limit=2)) == 2


# -- the CLI --------------------------------------------------------------------------------


async def egen(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def config(pg_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "egen.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[database]\nurl = "{pg_url}"\n')
    return path


def ok(result: tuple[int, str, str]) -> str:
    rc, out, err = result
    assert rc == 0, err
    return out


async def test_queue_retry_verb(db: Database, config: Path) -> None:
    mail = await mixed_message(db)
    [other] = await store(db, sample_mail(2, recipients=("x@e.example",)))
    await attempt(db, {(other.queue_id, 0): ("deferred", 451, "4.4.1 no answer")})

    text, as_json, unknown, missing = await asyncio.gather(
        egen(config, "queue", "retry", mail.queue_id),
        egen(config, "queue", "retry", other.queue_id, "--json"),
        egen(config, "queue", "retry", "NOSUCHID"),
        egen(config, "queue", "retry"))
    assert ok(text) == (f"1 recipient of {mail.queue_id} due now; 1 being delivered right "
                        f"now, left alone\n")
    assert orjson.loads(ok(as_json)) == {"id": other.queue_id, "rescheduled": 1,
                                         "delivering": 0}
    assert unknown == (1, "", "egen: no message with queue ID 'NOSUCHID'\n")
    assert missing[0] == 2 and "one of the arguments ID --all is required" in missing[2]
    assert (await recipients(db, mail.queue_id))[0]["due"]
    assert (await recipients(db, other.queue_id))[0]["due"]
    assert len(await events(db, mail.queue_id, "retry")) == 1


async def test_queue_flush_and_retry_all_verbs(db: Database, config: Path) -> None:
    a, b = await store(db, sample_mail(1, recipients=("x@a.example", "y@a.example")),
                       sample_mail(2, recipients=("z@b.example",)))
    await attempt(db, {(a.queue_id, 0): ("deferred", 421, "4.4.2 timeout"),
                       (a.queue_id, 1): ("delivered", 250, "2.0.0 ok"),
                       (b.queue_id, 0): ("deferred", 421, "4.4.2 timeout")})
    assert ok(await egen(config, "queue", "flush")) == "2 deferred recipients due now\n"
    assert orjson.loads(ok(await egen(config, "queue", "retry", "--all", "--json"))) == {
        "rescheduled": 2}
    assert orjson.loads(ok(await egen(config, "queue", "flush", "--json"))) == {
        "rescheduled": 2}
    assert [e["detail"]["by"] for e in await events(db, b.queue_id, "retry")] == [
        "egen queue flush", "egen queue retry --all", "egen queue flush"]
    await attempt(db, {(a.queue_id, 0): ("delivered", 250, "2.0.0 ok"),
                       (b.queue_id, 0): ("delivered", 250, "2.0.0 ok")})
    assert ok(await egen(config, "queue", "flush")) == "0 deferred recipients due now\n"


async def test_queue_delete_verb(db: Database, config: Path) -> None:
    mail = await mixed_message(db)
    [done] = await store(db, sample_mail(2, recipients=("x@e.example",)))

    rc, out, err = await egen(config, "queue", "delete", mail.queue_id)
    assert (rc, out) == (1, "")
    assert err.startswith(f"egen: 1 recipient(s) of {mail.queue_id} are being delivered "
                          f"right now (by node-a) (lease until ")
    assert err.endswith("; try again after it, or use --force\n")
    assert len(await recipients(db, mail.queue_id)) == 4

    forced, plain, unknown = await asyncio.gather(
        egen(config, "queue", "delete", mail.queue_id, "--force", "--json"),
        egen(config, "queue", "delete", done.queue_id),
        egen(config, "queue", "delete", "NOSUCHID"))
    assert orjson.loads(ok(forced)) == {"id": mail.queue_id, "recipients": 4, "pending": 2,
                                        "forced": 1}
    assert ok(plain) == f"deleted {done.queue_id} (1 recipient, 1 not delivered)\n"
    assert unknown == (1, "", "egen: no message with queue ID 'NOSUCHID'\n")
    assert await db.pool.fetchval("SELECT count(*) FROM mail_messages") == 0
    assert len(await events(db, mail.queue_id, "deleted")) == 1
    assert (await egen(config, "queue", "show", mail.queue_id))[0] == 1


async def test_mail_log_verb(db: Database, config: Path) -> None:
    mail = await mixed_message(db)
    [other] = await store(db, sample_mail(2, recipients=("def@a.example",), sender=""))
    await attempt(db, {(other.queue_id, 0): ("delivered", 250, "2.0.0 queued as X")})
    ok(await egen(config, "queue", "delete", mail.queue_id, "--force"))

    everything, to, sender, by_id, since, table, limited = await asyncio.gather(
        egen(config, "mail", "log", "--json"),
        egen(config, "mail", "log", "--json", "--to", "<DEF@a.example>"),
        egen(config, "mail", "log", "--json", "--from", "<>"),
        egen(config, "mail", "log", "--json", "--id", mail.queue_id, "--to", "ok@b.example"),
        egen(config, "mail", "log", "--json", "--since", "1h"),
        egen(config, "mail", "log"),
        egen(config, "mail", "log", "--limit", "1"))
    rows = orjson.loads(ok(everything))
    assert [(r["queue_id"], r["event"]) for r in rows] == [
        (mail.queue_id, "deleted"), (other.queue_id, "delivered"),
        (mail.queue_id, "bounced"), (mail.queue_id, "delivered"), (mail.queue_id, "deferred"),
        (other.queue_id, "accepted"), (mail.queue_id, "accepted")]
    bounced = rows[2]
    assert {k: bounced[k] for k in ("recipient", "sender", "relay", "tls", "code",
                                    "response")} == {
        "recipient": "gone@c.example", "sender": mail.sender, "relay": RELAY, "tls": TLS,
        "code": 550, "response": "5.1.1 no such user"}
    assert datetime.fromisoformat(bounced["at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert [(r["queue_id"], r["event"]) for r in orjson.loads(ok(to))] == [
        (mail.queue_id, "deleted"), (other.queue_id, "delivered"), (mail.queue_id, "deferred"),
        (other.queue_id, "accepted"), (mail.queue_id, "accepted")]
    assert {(r["queue_id"], r["sender"]) for r in orjson.loads(ok(sender))} == {
        (other.queue_id, "")}
    assert [r["event"] for r in orjson.loads(ok(by_id))] == ["deleted", "delivered",
                                                            "accepted"]
    assert "accepted" not in {r["event"] for r in orjson.loads(ok(since))}

    header, *lines = ok(table).splitlines()
    assert header.split() == ["TIME", "ID", "EVENT", "RECIPIENT", "RELAY", "TLS", "CODE",
                              "RESPONSE"]
    assert len(lines) == 7
    assert lines[0].split()[2:] == [mail.queue_id, "deleted", "def@a.example", "(+3)", "-",
                                    "-", "-", "deleted", "by", "egen", "queue", "delete,",
                                    "2", "not", "delivered"]
    assert lines[2].split()[2:] == [mail.queue_id, "bounced", "gone@c.example", RELAY,
                                    "TLSv1.3", "550", "5.1.1", "no", "such", "user"]
    assert lines[5].split()[2:] == [other.queue_id, "accepted", "def@a.example", "-", "-",
                                    "-", "from", "<>", "via", f"{other.client_ip},",
                                    str(other.size), "bytes"]
    assert lines[6].split()[2:] == [mail.queue_id, "accepted", "def@a.example", "(+3)", "-",
                                    "-", "-", "from", f"<{mail.sender}>", "via",
                                    f"{mail.client_ip},", str(mail.size), "bytes"]
    rc, out, err = limited
    assert rc == 0 and len(out.splitlines()) == 2
    assert err == "(showing the newest 1; --limit N shows more)\n"


@pytest.mark.parametrize(("args", "message"), [
    (("--since", "1x"), "egen: --since: '1x' is not a duration (use a number and a unit: "
                        "ms, s, m, h, d, w)\n"),
    (("--since", ""), "egen: --since: '' is not a duration (use a number and a unit: "
                      "ms, s, m, h, d, w)\n"),
])
async def test_mail_log_rejects_a_bad_duration(tmp_path: Path, args: Sequence[str],
                                               message: str) -> None:
    # Checked before the config is read or a database is touched.
    rc, out, err = await egen(tmp_path / "missing.toml", "mail", "log", *args)
    assert (rc, out, err) == (2, "", message)


async def test_mail_log_limit_must_be_positive(tmp_path: Path) -> None:
    rc, _, err = await egen(tmp_path / "missing.toml", "mail", "log", "--limit", "0")
    assert rc == 2 and "'0' is not a positive number" in err
