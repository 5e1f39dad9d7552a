"""Delivery against real peers: aiosmtpd sinks as MX hosts and smarthosts on loopback, a
real DNS answerer, the maildir transport; DKIM checked where the mail arrives."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest

from daemon.app import App
from daemon.mail.delivery import store as delivery_store
from daemon.mail.intake.tls import ensure_self_signed, server_context
from tests.dnsserver import DnsServer
from tests.mailfixtures import dns_of, mail_config, port, started_app, verify_all
from tests.smtpsink import Sink

MESSAGE = (b"From: App <app@example.com>\r\nTo: ops@example.org\r\nSubject: deploy\r\n\r\n"
           b"Deployed.\r\n")
FAST_RETRY = 'poll_interval = "100ms"\nfirst_retry = "200ms"\nmax_backoff = "400ms"\n'


@dataclass
class World:
    dns: DnsServer
    mx1: Sink          # 127.0.0.2, preference 10
    mx2: Sink          # 127.0.0.3, preference 20
    back: Sink         # 127.0.0.4: example.com's MX, where bounces to app@example.com go


@pytest.fixture
async def world() -> AsyncIterator[World]:
    mx1 = Sink("127.0.0.2")
    await mx1.start()
    mx2, back = Sink("127.0.0.3", mx1.port), Sink("127.0.0.4", mx1.port)
    await mx2.start()
    await back.start()
    dns = DnsServer({
        ("example.org", "MX"): ["10 mx1.example.org.", "20 mx2.example.org."],
        ("mx1.example.org", "A"): ["127.0.0.2"],
        ("mx2.example.org", "A"): ["127.0.0.3"],
        ("example.com", "MX"): ["10 mx.example.com."],
        ("mx.example.com", "A"): ["127.0.0.4"],
        ("nomx.test", "A"): ["127.0.0.3"],
        ("nullmx.test", "MX"): ["0 ."],
        ("down.test", "MX"): ["10 mx.down.test."],
        ("mx.down.test", "A"): ["127.0.0.9"],
    })
    await dns.start()
    yield World(dns, mx1, mx2, back)
    for sink in (mx1, mx2, back):
        await sink.stop()
    dns.stop()


def mx_config(tmp_path: Path, pg_url: str, world: World, delivery: str = "",
              routes: str = "") -> object:
    return mail_config(
        tmp_path, pg_url, routes=routes + '[[routes]]\ndomains = ["*"]\ntransport = "mx"\n',
        delivery=f'port = {world.mx1.port}\nnameservers = ["127.0.0.1:{world.dns.port}"]\n'
                 f'{delivery}')


async def send(app: App, recipients: list[str], message: bytes = MESSAGE,
               sender: str = "app@example.com") -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        _, reply = await client.sendmail(sender, recipients, message)
    return reply.rsplit(" ", 1)[1]


async def statuses(app: App, queue_id: str) -> dict[str, str]:
    rows = await app.database.db.pool.fetch(
        "SELECT recipient, status FROM mail_recipients WHERE message_id = $1", queue_id)
    return {r["recipient"]: r["status"] for r in rows}


async def wait_status(app: App, queue_id: str, want: dict[str, str],
                      timeout: float = 20.0) -> None:
    """Wait until delivery recorded `want`, woken by the worker going idle (no sleeps)."""
    async def reached() -> None:
        while await statuses(app, queue_id) != want:
            app.delivery.idle.clear()
            await app.delivery.idle.wait()

    await asyncio.wait_for(reached(), timeout)


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


async def test_maildir_delivery(tmp_path: Path, pg_url: str) -> None:
    async with started_app(mail_config(tmp_path, pg_url)) as app:
        queue_id = await send(app, ["ops@example.org", "dev@example.org"])
        await wait_status(app, queue_id, {"ops@example.org": "delivered",
                                          "dev@example.org": "delivered"})
        files = sorted((tmp_path / "maildir" / "new").iterdir())
        assert len(files) == 2
        assert not list((tmp_path / "maildir" / "tmp").iterdir())
        delivered = {f.read_bytes().split(b"\r\n", 1)[0] for f in files}
        assert delivered == {b"Delivered-To: ops@example.org", b"Delivered-To: dev@example.org"}
        for f in files:
            assert verify_all(f.read_bytes().split(b"\r\n", 1)[1], dns_of(app)) == [True, True]
        events = await app.database.db.pool.fetch(
            "SELECT event FROM mail_events WHERE message_id = $1 ORDER BY id", queue_id)
        assert [e["event"] for e in events] == ["accepted", "delivered", "delivered"]
        assert await app.database.db.pool.fetchval(
            "SELECT done_at IS NOT NULL FROM mail_messages WHERE id = $1", queue_id)


async def test_mx_preference_and_fallback_to_the_next_host(tmp_path: Path, pg_url: str,
                                                           world: World) -> None:
    await world.mx1.stop()   # the preferred MX refuses connections
    async with started_app(mx_config(tmp_path, pg_url, world)) as app:
        queue_id = await send(app, ["ops@example.org"])
        [received] = await world.mx2.handler.wait_for(1)
        await wait_status(app, queue_id, {"ops@example.org": "delivered"})
    assert received.recipients == ["ops@example.org"]
    assert not received.tls   # the sink offers no STARTTLS: opportunistic means plaintext
    assert world.mx1.handler.connections == 0
    assert verify_all(received.data, dns_of(app)) == [True, True]


async def test_no_mx_falls_back_to_a_and_null_mx_bounces(tmp_path: Path, pg_url: str,
                                                         world: World) -> None:
    async with started_app(mx_config(tmp_path, pg_url, world)) as app:
        first = await send(app, ["x@nomx.test"])
        await wait_status(app, first, {"x@nomx.test": "delivered"})
        assert [m.recipients for m in world.mx2.handler.messages] == [["x@nomx.test"]]
        second = await send(app, ["y@nullmx.test"])
        await wait_status(app, second, {"y@nullmx.test": "bounced"})
        [bounce] = await world.back.handler.wait_for(1)
    assert bounce.sender == "" and bounce.recipients == ["app@example.com"]
    report = parse(bounce.data)
    assert report.get_content_type() == "multipart/report"
    assert "Status: 5.1.10" in bounce.data.decode(errors="replace")
    assert "Final-Recipient: rfc822;y@nullmx.test" in bounce.data.decode(errors="replace")


async def test_partial_success_and_5xx_bounce(tmp_path: Path, pg_url: str,
                                              world: World) -> None:
    world.mx1.handler.rules["gone@example.org"] = "5xx"
    async with started_app(mx_config(tmp_path, pg_url, world)) as app:
        queue_id = await send(app, ["ops@example.org", "gone@example.org"])
        await wait_status(app, queue_id, {"ops@example.org": "delivered",
                                          "gone@example.org": "bounced"})
        [bounce] = await world.back.handler.wait_for(1)
        row = await app.database.db.pool.fetchrow(
            "SELECT last_code, last_response FROM mail_recipients WHERE recipient = $1",
            "gone@example.org")
    assert row["last_code"] == 550 and "User unknown" in row["last_response"]
    text = bounce.data.decode(errors="replace")
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp;" in text and "gone@example.org" in text
    assert [m.recipients for m in world.mx1.handler.messages] == [["ops@example.org"]]


async def test_4xx_is_retried_until_it_succeeds(tmp_path: Path, pg_url: str,
                                                world: World) -> None:
    world.mx1.handler.rules["later@example.org"] = "4xx"
    async with started_app(mx_config(tmp_path, pg_url, world, FAST_RETRY)) as app:
        queue_id = await send(app, ["later@example.org"])
        await wait_status(app, queue_id, {"later@example.org": "deferred"})
        world.mx1.handler.rules.clear()
        await wait_status(app, queue_id, {"later@example.org": "delivered"})
        attempts = await app.database.db.pool.fetchval(
            "SELECT attempts FROM mail_recipients WHERE message_id = $1", queue_id)
    assert attempts >= 2
    assert world.back.handler.messages == []   # no notice for a delay by default


async def wait_attempts(app: App, queue_id: str, at_least: int,
                        timeout: float = 20.0) -> None:
    async def reached() -> None:
        while min(r["attempts"] for r in await app.database.db.pool.fetch(
                "SELECT attempts FROM mail_recipients WHERE message_id = $1",
                queue_id)) < at_least:
            app.delivery.idle.clear()
            await app.delivery.idle.wait()

    await asyncio.wait_for(reached(), timeout)


async def test_delay_warning_goes_out_once_to_whom_it_concerns(tmp_path: Path, pg_url: str,
                                                               world: World) -> None:
    world.mx1.handler.rules["later@example.org"] = "4xx"
    world.mx1.handler.rules["quiet@example.org"] = "4xx"
    config = mx_config(tmp_path, pg_url, world, FAST_RETRY + 'delay_warning = "300ms"\n')
    async with started_app(config) as app:
        pool = app.database.db.pool
        queue_id = await send(app, ["later@example.org"])
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
            await client.mail("app@example.com")
            await client.rcpt("quiet@example.org", options=["NOTIFY=FAILURE"])
            _, reply = await client.data(MESSAGE)
        quiet_id = reply.rsplit(" ", 1)[1]
        [notice] = await world.back.handler.wait_for(1)
        await wait_attempts(app, queue_id, 5)
        await wait_attempts(app, quiet_id, 5)
        world.mx1.handler.rules.clear()
        await wait_status(app, queue_id, {"later@example.org": "delivered"})
        await wait_status(app, quiet_id, {"quiet@example.org": "delivered"})
        events = await pool.fetch("SELECT message_id, event FROM mail_events "
                                  "WHERE event = 'delay_warning'")
        again = await delivery_store.mark_warned(pool, {queue_id: [0]})
    assert len(world.back.handler.messages) == 1      # once, and not for NOTIFY=FAILURE
    text = notice.data.decode(errors="replace")
    assert notice.sender == "" and notice.recipients == ["app@example.com"]
    assert "Subject: Delayed Mail (still being retried)" in text
    assert "Action: delayed" in text and "Will-Retry-Until:" in text
    assert "Final-Recipient: rfc822;later@example.org" in text
    assert "Status: 4." in text
    assert sorted(r["message_id"] for r in events) == sorted([queue_id, quiet_id])
    assert again == set()                              # another node cannot warn again


async def test_unreachable_destination_expires_with_a_notice(tmp_path: Path, pg_url: str,
                                                             world: World) -> None:
    config = mx_config(tmp_path, pg_url, world, FAST_RETRY + 'lifetime = "1s"\n')
    async with started_app(config) as app:
        queue_id = await send(app, ["x@down.test"])
        await wait_status(app, queue_id, {"x@down.test": "expired"})
        [notice] = await world.back.handler.wait_for(1)
    assert "Status: 4.4.7" in notice.data.decode(errors="replace")


async def test_no_notice_for_the_null_sender(tmp_path: Path, pg_url: str,
                                             world: World) -> None:
    world.mx1.handler.rules["gone@example.org"] = "5xx"
    async with started_app(mx_config(tmp_path, pg_url, world)) as app:
        queue_id = await send(app, ["gone@example.org"], sender="")
        await wait_status(app, queue_id, {"gone@example.org": "bounced"})
        count = await app.database.db.pool.fetchval("SELECT count(*) FROM mail_messages")
    assert count == 1 and world.back.handler.messages == []


async def test_smarthost_with_starttls_and_auth(tmp_path: Path, pg_url: str) -> None:
    cert, key = ensure_self_signed(tmp_path / "sinktls", "smarthost.test")
    sink = Sink("127.0.0.1")
    sink.tls_context = server_context(cert, key)
    sink.auth = ("relayuser", "relaypass")
    await sink.start()
    routes = (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
              f'port = {sink.port}\ntls = "starttls"\nrequire_tls = true\n'
              f'username = "relayuser"\npassword = "relaypass"\n')
    try:
        async with started_app(mail_config(tmp_path, pg_url, routes=routes)) as app:
            await send(app, ["customer@example.net"])
            [received] = await sink.handler.wait_for(1)
    finally:
        await sink.stop()
    assert received.tls and received.recipients == ["customer@example.net"]
    assert verify_all(received.data, dns_of(app)) == [True, True]


async def test_a_dead_nodes_lease_is_taken_over(tmp_path: Path, pg_url: str,
                                                world: World) -> None:
    async with started_app(mx_config(tmp_path, pg_url, world,
                                           'poll_interval = "100ms"\nlease = "1s"\n')) as app:
        # Another node claims the work and dies before recording anything.
        await app.delivery.stop()
        queue_id = await send(app, ["ops@example.org"])
        await app.mail_flusher.drained()
        claimed, _ = await delivery_store.claim(app.database.db.pool, owner="dead:1:x",
                                                lease=0.5, limit=10)
        assert [c.message_id for c in claimed] == [queue_id]
        app.delivery._stopping = False
        await app.delivery.start()
        await wait_status(app, queue_id, {"ops@example.org": "delivered"})
    assert len(world.mx1.handler.messages) == 1


@pytest.mark.slow
async def test_work_of_a_killed_process_is_delivered_by_another(tmp_path: Path, pg_url: str,
                                                                world: World) -> None:
    import signal

    from tests.daemonproc import DaemonProcess

    world.mx1.handler.rules["ops@example.org"] = "stall"   # the first node hangs in RCPT
    settings = mx_config(tmp_path, pg_url, world, 'poll_interval = "100ms"\nlease = "2s"\n')
    first = DaemonProcess(settings.source)
    try:
        await first.start()
        match = await first.wait_for_line(r"msg=listening proto=smtp address=127\.0\.0\.1:(\d+)")
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=int(match.group(1))) as client:
            _, reply = await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
        queue_id = reply.rsplit(" ", 1)[1]
        await asyncio.wait_for(world.mx1.handler.stalled.wait(), 20)
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.close()
    world.mx1.handler.rules.clear()
    async with started_app(settings) as app:
        assert await statuses(app, queue_id) == {"ops@example.org": "delivering"}
        await wait_status(app, queue_id, {"ops@example.org": "delivered"})
    assert [m.recipients for m in world.mx1.handler.messages] == [["ops@example.org"]]


async def test_notify_success_and_never_and_orcpt_are_honoured(tmp_path: Path, pg_url: str,
                                                               world: World) -> None:
    world.mx1.handler.rules["gone@example.org"] = "5xx"
    async with started_app(mx_config(tmp_path, pg_url, world)) as app:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
            await client.mail("app@example.com", options=["RET=FULL", "ENVID=job42"])
            await client.rcpt("ops@example.org", options=["NOTIFY=SUCCESS",
                                                          "ORCPT=rfc822;team+40example.org"])
            await client.rcpt("gone@example.org", options=["NOTIFY=NEVER"])
            _, reply = await client.data(MESSAGE)
        queue_id = reply.rsplit(" ", 1)[1]
        await wait_status(app, queue_id, {"ops@example.org": "delivered",
                                          "gone@example.org": "bounced"})
        [notice] = await world.back.handler.wait_for(1)
    text = notice.data.decode(errors="replace")
    assert notice.sender == "" and notice.recipients == ["app@example.com"]
    assert "Subject: Successful Mail Delivery Report" in text
    assert "Action: delivered" in text and "Original-Recipient: rfc822;team@example.org" in text
    assert "Original-Envelope-Id: job42" in text
    assert "gone@example.org" not in text.split("Content-Type: message/delivery-status")[1] \
        .split("Content-Type: message/rfc822")[0]
    assert "Content-Type: message/rfc822" in text and "Deployed." in text   # RET=FULL
