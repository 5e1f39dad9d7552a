"""Alerts end to end against real peers: the sentry-sdk raises, egen groups the event,
and the alert arrives DKIM-signed at an aiosmtpd sink through egen's own queue, or at an
aiohttp webhook receiver (signature checked, retried after 500s); the relay's bounces
become issues; `egen alerts test` reaches every channel."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from daemon.app import App
from tests.eventfixtures import PROJECTS, dsn, run_sdk, stored
from tests.mailfixtures import dns_of, mail_config, started_app, verify_all
from tests.smtpsink import Sink

SECRET = "s3cret-signing-key"
ROOT = Path(__file__).resolve().parent.parent


async def egen(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Receiver:
    """A webhook endpoint that answers each POST with the next status of its path's list
    (200 once the list is used up) and keeps what it got."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    got: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.setdefault(request.path, []).append((dict(request.headers), body))
        self.arrived.set()
        planned = self.statuses.get(request.path, [])
        return web.Response(status=planned.pop(0) if planned else 200, text="ok")

    async def wait_for(self, path: str, count: int) -> list[tuple[dict[str, str], bytes]]:
        async def enough() -> None:
            while len(self.got.get(path, [])) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), 20)
        return self.got[path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = runner.addresses[0][1]
    yield found
    await runner.cleanup()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    found = Sink("127.0.0.1", rules={"nobody@example.net": "5xx"})
    await found.start()
    yield found
    await found.stop()


def alerts_config(tmp_path: Path, pg_url: str, sink: Sink, receiver: Receiver):  # type: ignore[no-untyped-def]
    alerts = f"""
[alerts]
sender = "alerts@example.com"
digest_window = "0s"
poll_interval = "50ms"
retry_first = "50ms"
retry_max = "100ms"
max_attempts = 5
relay_deferred_after = "0s"

[[alerts.channels]]
name = "team"
type = "email"
to = ["team@example.org"]

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{receiver.port}/hook"
secret = "{SECRET}"

[[alerts.channels]]
name = "chat"
type = "webhook"
format = "slack"
url = "http://127.0.0.1:{receiver.port}/chat"

[[alerts.rules]]
project = "app"
on = ["new"]
channels = ["team", "hook", "chat"]
"""
    routes = (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
              f'port = {sink.port}\ntls = "none"\n')
    return mail_config(tmp_path, pg_url, extra=PROJECTS.format(ingest="") + alerts,
                       routes=routes)


def checkout() -> None:
    cart: list[int] = []
    _ = 100 / len(cart)


def crash() -> None:
    import sentry_sdk

    try:
        checkout()
    except ZeroDivisionError:
        sentry_sdk.capture_exception()


async def test_a_new_issue_reaches_mail_and_webhooks(tmp_path: Path, pg_url: str, sink: Sink,
                                                     receiver: Receiver) -> None:
    receiver.statuses["/hook"] = [500, 500]
    async with started_app(alerts_config(tmp_path, pg_url, sink, receiver)) as app:
        await run_sdk(dsn(app), crash)
        [mail] = await sink.handler.wait_for(1)
        hooks = await receiver.wait_for("/hook", 3)
        [chat] = await receiver.wait_for("/chat", 1)
        await app.alerts.wait_attempts(5)
        records = dns_of(app)
        log = await app.database.db.pool.fetch(
            "SELECT s.channel, s.state, s.attempts, array_agg(a.ok ORDER BY a.attempted_at) "
            "AS oks FROM alert_sends s JOIN alert_attempts a ON a.send_id = s.id "
            "GROUP BY s.id ORDER BY s.channel")

    # The mail went through egen's own queue: signed with both keys, from the sender.
    assert mail.sender == "alerts@example.com" and mail.recipients == ["team@example.org"]
    assert verify_all(mail.data, records) == [True, True]
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert message["Subject"].startswith("[egen] New issue in app: ZeroDivisionError")
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()   # type: ignore[union-attr]
    assert "division by zero" in text and "checkout" in text and "/api/v1/issues/" in text
    assert "checkout" in html

    # The webhook failed twice with 500 and got the very same signed body three times.
    bodies = {body for _, body in hooks}
    assert len(bodies) == 1
    assert len({headers["X-Egen-Delivery"] for headers, _ in hooks}) == 1
    for headers, body in hooks:
        stamp = headers["X-Egen-Timestamp"]
        expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        assert headers["X-Egen-Signature"] == f"sha256={expected.hexdigest()}"
    generic = orjson.loads(hooks[0][1])
    [alert] = generic["alerts"]
    assert alert["kind"] == "new" and alert["issue"]["project"] == "app"
    assert alert["issue"]["frames"][0]["function"] == "checkout"
    assert "X-Egen-Signature" not in chat[0]         # no secret, no signature
    assert orjson.loads(chat[1])["text"].startswith("*New issue* in app")

    assert [(r["channel"], r["state"], r["attempts"], r["oks"]) for r in log] == [
        ("chat", "sent", 1, [True]), ("hook", "sent", 3, [False, False, True]),
        ("team", "sent", 1, [True])]


async def test_a_webhook_that_keeps_failing_is_given_up_after_max_attempts(
        tmp_path: Path, pg_url: str, sink: Sink, receiver: Receiver) -> None:
    receiver.statuses["/hook"] = [503] * 10
    async with started_app(alerts_config(tmp_path, pg_url, sink, receiver)) as app:
        await run_sdk(dsn(app), crash)
        await receiver.wait_for("/hook", 5)
        await app.alerts.wait_attempts(7)       # 5 for hook, 1 each for team and chat
        row = await app.database.db.pool.fetchrow(
            "SELECT state, attempts, result FROM alert_sends WHERE channel = 'hook'")
    assert dict(row) == {"state": "failed", "attempts": 5, "result": "HTTP 503: ok"}
    assert len(receiver.got["/hook"]) == 5


async def relay_issues(app: App) -> list[dict[str, object]]:
    rows = await app.database.db.pool.fetch(
        "SELECT i.title, i.level, i.event_count FROM issues i JOIN projects p "
        "ON p.id = i.project_id WHERE p.name = 'egen-relay' ORDER BY i.id")
    return [dict(r) for r in rows]


async def test_bounces_become_issues_of_the_relay_project(
        tmp_path: Path, pg_url: str, sink: Sink, receiver: Receiver) -> None:
    message = (b"From: app@example.com\r\nTo: nobody@example.net\r\n"
               b"Subject: invoice\r\n\r\nhello\r\n")
    async with started_app(alerts_config(tmp_path, pg_url, sink, receiver)) as app:
        submitter = app.smtp.submitter
        assert submitter is not None
        for _ in range(2):
            await submitter.submit("app@example.com", ["nobody@example.net"], message)
        await sink.handler.wait_for(2)      # the two DSNs, sent after the reports
        await stored(app)
        issues = await relay_issues(app)
    assert len(issues) == 1
    assert issues[0]["level"] == "error" and issues[0]["event_count"] == 2
    assert str(issues[0]["title"]).startswith("Mail to example.net bounced: 550 5.1.1")


async def test_alerts_test_sends_through_every_channel(
        tmp_path: Path, pg_url: str, sink: Sink, receiver: Receiver) -> None:
    settings = alerts_config(tmp_path, pg_url, sink, receiver)
    async with started_app(settings):
        rc, out, err = await egen(settings.source, "alerts", "test", "--project", "app",
                                  "--json")
        [mail] = await sink.handler.wait_for(1)
        hooks = await receiver.wait_for("/hook", 1)
        missing = await egen(settings.source, "alerts", "test", "--project", "nope")
        rc_log, log, _ = await egen(settings.source, "alerts", "log", "--json")
    assert rc == 0, err
    assert sorted((r["channel"], r["state"]) for r in orjson.loads(out)) == [
        ("chat", "sent"), ("hook", "sent"), ("team", "sent")]
    subject = email.message_from_bytes(mail.data, policy=email.policy.default)["Subject"]
    assert subject.startswith("[egen] Test alert in app")
    assert orjson.loads(hooks[0][1])["alerts"][0]["kind"] == "test"
    assert missing[0] == 2 and "no alert rule names a channel" in missing[2]
    assert rc_log == 0 and {r["channel"] for r in orjson.loads(log)} == {"chat", "hook",
                                                                          "team"}
