"""POST /v3/mail/send over real HTTP, driven by SendGrid's official Python client
pointed at egen (its `host` setting), delivering to a test smarthost: the mail arrives
DKIM-signed with its attachment, and every refusal is SendGrid's error shape with
nothing queued."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    Bcc,
    Disposition,
    FileContent,
    FileName,
    FileType,
    Mail,
    Personalization,
    To,
)

from daemon.app import App
from daemon.logs import LogfmtFormatter
from daemon.mail.send_api.keys import add_key, remove_key
from tests.mail_webfixtures import mail_web_app
from tests.mailfixtures import dns_of, verify_all
from tests.smtpsink import Sink
from tests.test_cli_web import egen

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[App, Sink, str]]:
    async with mail_web_app(tmp_path, pg_url) as (app, sink):
        _, token = await add_key(app.database.db.pool, "app", "tests")
        yield app, sink, token


def host(app: App) -> str:
    address = app.http.addresses[0]
    return f"http://{address.host}:{address.port}"


def accepted(app: App) -> float:
    value = app.registry.get_sample_value("egen_smtp_messages_total",
                                          {"outcome": "accepted", "reason": ""})
    return value or 0.0


async def client_send(app: App, token: str, message: Mail) -> Any:
    client = SendGridAPIClient(api_key=token, host=host(app))
    return await asyncio.to_thread(client.send, message)


async def client_error(app: App, token: str, message: Mail) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        await client_send(app, token, message)
    return caught.value


async def post(app: App, token: str | None, body: Any, *,
               content_type: str = "application/json") -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session, session.post(
            f"{host(app)}/v3/mail/send", data=data, headers=headers) as response:
        raw = await response.read()
        return response.status, dict(response.headers), orjson.loads(raw) if raw else None


def simple(**extra: Any) -> dict[str, Any]:
    return {"personalizations": [{"to": [{"email": "ops@example.org"}]}],
            "from": {"email": "app@example.com"}, "subject": "Deployed",
            "content": [{"type": "text/plain", "value": "Build 42 is out.\n"}], **extra}


async def test_the_sendgrid_client_sends_an_attachment_that_arrives_signed(
        world: tuple[App, Sink, str]) -> None:
    app, sink, token = world
    mail = Mail(from_email=("app@example.com", "Build bot"), to_emails="ops@example.org",
                subject="Nightly report ✓", plain_text_content="See the attached report.",
                html_content="<p>See the <b>attached</b> report.</p>")
    mail.attachment = Attachment(FileContent(base64.b64encode(PDF).decode()),
                                 FileName("report.pdf"), FileType("application/pdf"),
                                 Disposition("attachment"))
    response = await client_send(app, token, mail)
    assert response.status_code == 202
    queue_id = response.headers["X-Message-Id"]
    arrived = (await sink.handler.wait_for(1))[0]
    assert arrived.sender == "app@example.com"
    assert arrived.recipients == ["ops@example.org"]
    verdicts = verify_all(arrived.data, dns_of(app))
    assert verdicts and all(verdicts), verdicts
    parsed = email.message_from_bytes(arrived.data, policy=email.policy.default)
    assert parsed["Subject"] == "Nightly report ✓"
    assert parsed["From"].addresses[0].display_name == "Build bot"
    assert f"id {queue_id}" in parsed["Received"] and "with HTTP" in parsed["Received"]
    assert "(Authenticated sender: app)" in parsed["Received"]
    files = [part for part in parsed.iter_attachments()]
    assert [(f.get_filename(), f.get_content_type()) for f in files] == [
        ("report.pdf", "application/pdf")]
    assert files[0].get_content() == PDF
    body = parsed.get_body(("html",))
    assert body is not None and "<b>attached</b>" in body.get_content()
    assert max(arrived.data) < 128   # 7-bit throughout: no relay needs to re-encode it


async def test_each_personalization_is_one_message_and_bcc_stays_hidden(
        world: tuple[App, Sink, str]) -> None:
    app, sink, token = world
    mail = Mail(from_email="app@example.com", subject="Shared", plain_text_content="Hi")
    first = Personalization()
    first.add_to(To("a@example.org"))
    first.add_bcc(Bcc("audit@example.org"))
    second = Personalization()
    second.add_to(To("b@example.org"))
    second.subject = "Just for b"
    mail.add_personalization(first)
    mail.add_personalization(second)
    response = await client_send(app, token, mail)
    assert response.status_code == 202
    ids = response.headers["X-Egen-Queue-Ids"].split(",")
    assert len(ids) == 2 and response.headers["X-Message-Id"] == ids[0]
    arrived = {tuple(m.recipients): m for m in await sink.handler.wait_for(2)}
    assert set(arrived) == {("a@example.org", "audit@example.org"), ("b@example.org",)}
    hidden = arrived[("a@example.org", "audit@example.org")].data
    assert b"audit@example.org" not in hidden.split(b"\r\n\r\n", 1)[0]
    assert b"Subject: Just for b" in arrived[("b@example.org",)].data
    assert all(all(verify_all(m.data, dns_of(app))) for m in arrived.values())


async def test_a_wrong_or_revoked_key_is_401_and_queues_nothing(
        world: tuple[App, Sink, str]) -> None:
    app, _, token = world
    before = accepted(app)
    mail = Mail(from_email="app@example.com", to_emails="ops@example.org", subject="x",
                plain_text_content="x")
    key_id = token.split(".")[1]
    for wrong in ("SG.not-a-key", token[:-2] + "xx", f"EG.{key_id}.", ""):
        status, headers, body = await post(app, wrong or None, simple())
        assert status == 401, wrong
        assert body["errors"][0]["message"] and "field" in body["errors"][0]
        assert headers.get("WWW-Authenticate", "").startswith("Bearer") or wrong
    assert await remove_key(app.database.db.pool, key_id)
    await app.api_keys.refresh()
    error = await client_error(app, token, mail)
    assert error.status_code == 401
    assert orjson.loads(error.body)["errors"][0]["message"].startswith(
        "The provided authorization grant is invalid")
    assert accepted(app) == before


async def test_a_sender_the_user_may_not_use_is_403_on_the_field(
        world: tuple[App, Sink, str]) -> None:
    app, _, token = world
    before = accepted(app)
    status, _, body = await post(app, token, simple(**{"from": {"email": "ceo@example.net"}}))
    assert status == 403
    assert body["errors"][0]["field"] == "from.email"
    assert "ceo@example.net" in body["errors"][0]["message"]
    assert "not allowed for user app" in body["errors"][0]["message"]
    spoof = simple()
    spoof["personalizations"][0]["from"] = {"email": "boss@example.org"}
    status, _, body = await post(app, token, spoof)
    assert status == 403 and body["errors"][0]["field"] == "personalizations.0.from.email"
    assert accepted(app) == before


async def test_a_key_of_another_user_sends_with_that_users_senders(
        world: tuple[App, Sink, str]) -> None:
    app, sink, _ = world
    _, alerts = await add_key(app.database.db.pool, "alerts")
    status, _, _ = await post(app, alerts, simple())
    assert status == 403
    status, _, _ = await post(app, alerts, simple(**{"from": {"email": "alerts@example.org"}}))
    assert status == 202
    arrived = (await sink.handler.wait_for(1))[0]
    assert arrived.sender == "alerts@example.org"


@pytest.mark.parametrize(("body", "field"), [
    ({"personalizations": []}, "personalizations"),
    (simple(template_id="d-123"), "template_id"),
    (simple(headers={"From": "ceo@example.com"}), "headers.From"),
    (simple(headers={"X-Bad": "one\r\nBcc: victim@example.org"}), "headers.X-Bad"),
    (simple(attachments=[{"content": "not base64!", "filename": "a.txt"}]),
     "attachments.0.content"),
    (simple(content=[{"type": "text/html", "value": "<p>x</p>"},
                     {"type": "text/plain", "value": "x"}]), "content"),
    (simple(reply_to={"email": "not an address"}), "reply_to.email"),
    (simple(subject=None), "personalizations.0.subject"),
    (simple(categories=["a"] * 2), "categories.1"),
    (simple(mail_settings={"footer": {"enable": True}}), "mail_settings.footer"),
])
async def test_bad_bodies_are_400_naming_the_field(world: tuple[App, Sink, str],
                                                   body: dict[str, Any], field: str) -> None:
    app, _, token = world
    before = accepted(app)
    status, _, answer = await post(app, token, body)
    assert status == 400, answer
    assert field in [e["field"] for e in answer["errors"]], answer
    assert accepted(app) == before


async def test_not_json_too_large_and_wrong_type_are_refused(
        world: tuple[App, Sink, str]) -> None:
    app, _, token = world
    before = accepted(app)
    status, _, answer = await post(app, token, b'{"personalizations": [')
    assert status == 400 and "not valid JSON" in answer["errors"][0]["message"]
    status, _, answer = await post(app, token, simple(), content_type="text/plain")
    assert status == 415
    big = simple(attachments=[{"content": base64.b64encode(b"x" * 300_000).decode(),
                               "filename": "big.bin"}])
    status, _, answer = await post(app, token, big)
    assert status == 413 and "smtp.max_message_size" in answer["errors"][0]["message"]
    many = simple()
    many["personalizations"][0]["to"] = [{"email": f"r{i}@example.org"} for i in range(6)]
    status, _, answer = await post(app, token, many)
    assert status == 400 and answer["errors"][0]["field"] == "personalizations.0"
    assert accepted(app) == before


async def test_sandbox_mode_checks_everything_and_queues_nothing(
        world: tuple[App, Sink, str]) -> None:
    app, _, token = world
    before = accepted(app)
    status, _, answer = await post(app, token, simple(
        mail_settings={"sandbox_mode": {"enable": True}}))
    assert (status, answer) == (200, None)
    status, _, _ = await post(app, token, simple(
        mail_settings={"sandbox_mode": {"enable": True}}, **{"from": {"email": "x@evil.test"}}))
    assert status == 403
    assert accepted(app) == before


async def test_rate_limits_apply_per_message_with_retry_after(tmp_path: Path,
                                                              pg_url: str) -> None:
    async with mail_web_app(tmp_path, pg_url,
                            smtp="rate_per_user = { per_minute = 1, burst = 2 }") as (app, _):
        _, token = await add_key(app.database.db.pool, "app")
        three = simple()
        three["personalizations"] = [{"to": [{"email": f"r{i}@example.org"}]}
                                     for i in range(3)]
        status, _, answer = await post(app, token, three)
        assert status == 429 and "split the request" in answer["errors"][0]["message"]
        assert (await post(app, token, simple()))[0] == 202
        assert (await post(app, token, simple()))[0] == 202
        status, headers, answer = await post(app, token, simple())
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert "user app" in answer["errors"][0]["message"]


async def test_api_key_verbs_make_a_working_key_list_it_masked_and_revoke_it(
        tmp_path: Path, pg_url: str) -> None:
    async with mail_web_app(tmp_path, pg_url) as (app, sink):
        config = tmp_path / "egen.toml"
        rc, out, err = await egen(config, "user", "api-key", "add", "app", "--label", "ci")
        assert rc == 0 and "it is shown only now" in err, err
        token = out.strip()
        assert token.startswith("EG.") and out.count("\n") == 1
        status, _, _ = await post(app, token, simple())
        assert status == 202
        assert len(await sink.handler.wait_for(1)) == 1

        rc, out, _ = await egen(config, "user", "api-key", "list", "--json")
        (listed,) = orjson.loads(out)
        key_id = token.split(".")[1]
        assert rc == 0 and listed["id"] == key_id and listed["user"] == "app"
        assert listed["label"] == "ci" and listed["user_configured"] is True
        assert token not in out and listed["key"] == f"EG.{key_id}.…"

        rc, _, err = await egen(config, "user", "api-key", "remove", key_id)
        assert rc == 0 and f"removed key {key_id}" in err
        await app.api_keys.refresh()
        assert (await post(app, token, simple()))[0] == 401


@pytest.mark.parametrize(("args", "says"), [
    (("add", "nobody"), "no user 'nobody' in [smtp.users]"),
    (("remove", "0123456789abcdef"), "no key '0123456789abcdef'")])
async def test_bad_api_key_verbs_say_why_and_change_nothing(
        tmp_path: Path, pg_url: str, args: tuple[str, ...], says: str) -> None:
    async with mail_web_app(tmp_path, pg_url) as (app, _):
        pool = app.database.db.pool
        await add_key(pool, "app", "kept")
        before = [dict(r) for r in await pool.fetch("SELECT * FROM mail_api_keys")]
        rc, out, err = await egen(tmp_path / "egen.toml", "user", "api-key", *args)
        assert (rc, out) == (1, "") and says in err, err
        assert [dict(r) for r in await pool.fetch("SELECT * FROM mail_api_keys")] == before


async def test_categories_and_custom_args_are_logged_with_the_queue_ids_not_mailed(
        world: tuple[App, Sink, str], caplog: pytest.LogCaptureFixture) -> None:
    app, sink, token = world
    caplog.set_level(logging.INFO, logger="egen.maillog")
    status, headers, _ = await post(app, token, simple(
        categories=["deploy", "nightly"], custom_args={"ticket": "T-981"}))
    assert status == 202
    arrived = (await sink.handler.wait_for(1))[0]
    assert b"nightly" not in arrived.data and b"T-981" not in arrived.data
    [line] = [LogfmtFormatter().format(r) for r in caplog.records
              if r.getMessage() == "api request"]
    assert f"queue_ids={headers['X-Message-Id']}" in line and "user=app" in line
    assert "categories=deploy,nightly" in line and '{\\"ticket\\":\\"T-981\\"}' in line


async def test_a_request_whose_messages_are_too_large_together_is_413(
        world: tuple[App, Sink, str]) -> None:
    app, _, token = world
    before = accepted(app)
    shared = simple(attachments=[{"content": base64.b64encode(b"\x00" * 100_000).decode(),
                                  "filename": "dump.bin"}])
    shared["personalizations"] = [{"to": [{"email": f"r{i}@example.org"}]} for i in range(6)]
    status, _, body = await post(app, token, shared)
    assert status == 413 and body["errors"][0]["field"] == "personalizations"
    assert "split the request" in body["errors"][0]["message"]
    assert accepted(app) == before


async def test_sandbox_requests_count_against_the_rate_limit(tmp_path: Path,
                                                            pg_url: str) -> None:
    async with mail_web_app(tmp_path, pg_url,
                            smtp="rate_per_user = { per_minute = 1, burst = 2 }") as (app, _):
        _, token = await add_key(app.database.db.pool, "app")
        sandbox = simple(mail_settings={"sandbox_mode": {"enable": True}})
        assert [(await post(app, token, sandbox))[0] for _ in range(3)] == [200, 200, 429]
