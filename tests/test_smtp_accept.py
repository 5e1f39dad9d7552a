"""Mail in through SMTP and out into the queue: what apps do every day, checked on the
stored bytes (DKIM verified by dkimpy) and the envelope in Postgres."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest

from daemon.app import App
from daemon.mail.intake.handler import IntakeHandler
from tests.mailfixtures import (
    PASSWORD,
    client_tls,
    dns_of,
    mail_config,
    port,
    started_app,
    verify_all,
)
from tests.test_app import proxied

MESSAGE = (b"From: App <app@example.com>\r\nTo: ops@example.org\r\nSubject: build failed\r\n"
           b"Bcc: secret@example.org\r\n\r\nThe nightly build failed.\r\n")


@pytest.fixture
async def app(tmp_path: Path, pg_url: str) -> AsyncIterator[App]:
    async with started_app(mail_config(tmp_path, pg_url)) as running:
        yield running


async def stored(app: App) -> list[asyncpg.Record]:
    await app.mail_flusher.drained()
    return await app.database.db.pool.fetch(
        "SELECT m.*, array_agg(r.recipient ORDER BY r.idx) AS rcpts FROM mail_messages m "
        "JOIN mail_recipients r ON r.message_id = m.id GROUP BY m.id ORDER BY m.received_at")


def queue_id(reply: str) -> str:
    assert "queued as " in reply, reply
    return reply.rsplit(" ", 1)[1]


async def test_trusted_relay_queues_signed_message(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        _, reply = await client.sendmail("app@example.com", ["ops@example.org", "dev@x.test"],
                                         MESSAGE)
    [row] = await stored(app)
    assert row["id"] == queue_id(reply)
    assert row["sender"] == "app@example.com"
    assert row["rcpts"] == ["ops@example.org", "dev@x.test"]
    assert row["auth_user"] is None and row["tls"] is None
    data = bytes(row["data"])
    headers = data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers and b"secret@example.org" not in data
    assert headers.count(b"Message-ID: <") == 1 and b"\r\nDate: " in headers
    assert f"id {row['id']}".encode() in headers  # Received: names the queue ID
    assert data.endswith(b"\r\n\r\nThe nightly build failed.\r\n")
    assert verify_all(data, dns_of(app)) == [True, True]
    assert sorted(s.split()[2] for s in row["signed_by"]) == ["a=ed25519-sha256",
                                                              "a=rsa-sha256"]
    assert app.journals.get("mail").unconsumed_bytes == 0


async def test_submission_with_starttls_and_auth(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 1), start_tls=True,
                               tls_context=client_tls()) as client:
        await client.login("app", PASSWORD)
        await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
    [row] = await stored(app)
    assert row["auth_user"] == "app"
    assert row["tls"].startswith("TLSv1.")
    assert b"with ESMTPSA" in bytes(row["data"]).split(b"\r\n\r\n")[0]
    assert verify_all(bytes(row["data"]), dns_of(app)) == [True, True]


async def test_smtplib_login_mechanism_and_pipelined_transaction(app: App) -> None:
    def send() -> dict:
        with smtplib.SMTP("127.0.0.1", port(app, 1)) as client:
            client.starttls(context=client_tls())
            client.ehlo()
            assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
            client.user, client.password = "app", PASSWORD
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            return client.sendmail("app@example.com", ["a@x.test", "b@x.test"], MESSAGE)

    assert await asyncio.to_thread(send) == {}
    reader, writer = await asyncio.open_connection("127.0.0.1", port(app, 0))
    await reader.readline()
    writer.write(b"EHLO client.test\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    writer.write(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<c@x.test>\r\n"
                 b"RCPT TO:<d@x.test>\r\nDATA\r\n")
    replies = [await reader.readline() for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
    writer.write(MESSAGE + b".\r\nQUIT\r\n")
    assert (await reader.readline()).startswith(b"250 2.0.0 Ok: queued as ")
    assert (await reader.readline()).startswith(b"221")
    writer.close()
    rows = await stored(app)
    assert [r["rcpts"] for r in rows] == [["a@x.test", "b@x.test"], ["c@x.test", "d@x.test"]]


async def test_8bitmime_and_smtputf8_are_kept_byte_for_byte(app: App) -> None:
    body = "Grüße aus Tromsø — 東京\r\n".encode()
    message = ("From: Jørn <jørn@example.com>\r\nTo: ops@example.org\r\n"
               "Subject: Ærlig talt\r\n\r\n").encode() + body
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        await client.sendmail("jørn@example.com", ["åse@example.org"], message,
                              mail_options=["BODY=8BITMIME", "SMTPUTF8"])
    [row] = await stored(app)
    assert row["sender"] == "jørn@example.com" and row["rcpts"] == ["åse@example.org"]
    assert row["smtputf8"] is True and row["body_8bit"] is True
    assert bytes(row["data"]).endswith(b"\r\n\r\n" + body)
    assert verify_all(bytes(row["data"]), dns_of(app)) == [True, True]


async def test_oversize_is_refused_and_the_session_goes_on(app: App) -> None:
    limit = app.settings.smtp.max_message_size
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as declared:
            await client.mail("app@example.com", options=[f"SIZE={limit + 1}"])
        assert (declared.value.code, declared.value.message[:5]) == (552, "5.3.4")
        await client.rset()
        big = MESSAGE + b"x" * 998 + (b"\r\n" + b"y" * 998) * (limit // 1000)
        await client.mail("app@example.com")  # no SIZE: the server finds out while reading
        await client.rcpt("ops@example.org")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(big)
        assert refused.value.code == 552 and refused.value.message.startswith("5.3.4")
        await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
    rows = await stored(app)
    assert len(rows) == 1 and rows[0]["size"] < limit


async def test_too_many_recipients(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        await client.mail("app@example.com")
        for i in range(app.settings.smtp.max_recipients):
            assert (await client.rcpt(f"r{i}@x.test"))[0] == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("one-too-many@x.test")
        assert refused.value.code == 452 and refused.value.message.startswith("4.5.3")


async def test_users_send_only_as_their_senders(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 1), start_tls=True,
                               tls_context=client_tls()) as client:
        await client.login("alerts", PASSWORD)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as envelope_refused:
            await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
        assert envelope_refused.value.code == 553
        assert "not allowed for user alerts" in envelope_refused.value.message
        await client.rset()
        with pytest.raises(aiosmtplib.SMTPDataError) as header_refused:
            await client.sendmail("alerts@example.org", ["ops@example.org"], MESSAGE)
        assert header_refused.value.code == 550
        assert "From: header" in header_refused.value.message
    assert await stored(app) == []


@pytest.mark.parametrize(("message", "problem"), [
    (b"To: ops@example.org\r\nSubject: no sender\r\n\r\nbody\r\n", "From"),
    (b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n", "From"),
    (b"From: a@example.com\r\nSubject: " + b"x" * 1200 + b"\r\n\r\nbody\r\n", "998"),
    (b"From: a@example.com\r\nSubject: nul\x00here\r\n\r\nbody\r\n", "NUL"),
])
async def test_unparsable_messages_get_550_5_6_0(app: App, message: bytes,
                                                  problem: str) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("a@example.com", ["ops@example.org"], message)
    assert refused.value.code == 550 and refused.value.message.startswith("5.6.0")
    assert problem in refused.value.message
    assert await stored(app) == []


async def test_unsigned_domain_relayed_or_refused_per_config(tmp_path: Path,
                                                             pg_url: str) -> None:
    other = b"From: x@other.test\r\nSubject: s\r\n\r\nbody\r\n"
    async with started_app(mail_config(tmp_path, pg_url)) as app:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
            await client.sendmail("x@other.test", ["ops@example.org"], other)
        [row] = await stored(app)
        assert row["signed_by"] == [] and b"DKIM-Signature" not in bytes(row["data"])
    (tmp_path / "refuse").mkdir()
    refusing = mail_config(tmp_path / "refuse", pg_url, extra='[dkim]\nunsigned = "refuse"\n')
    async with started_app(refusing) as app:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await client.sendmail("x@other.test", ["ops@example.org"], other)
            await client.rset()
            await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
        assert refused.value.code == 550 and "No DKIM key for other.test" in str(refused.value)
        assert len(await stored(app)) == 2  # the relayed one from before, and the signed one


async def test_full_journal_answers_451_and_postgres_blip_loses_nothing(
        tmp_path: Path, pg_url: str) -> None:
    proxy, _ = proxied(pg_url, 0)
    await proxy.start()
    _, url = proxied(pg_url, proxy.port)
    settings = mail_config(tmp_path, url, extra='[journal]\nmax_size = "16KiB"\n'
                                                'segment_size = "4KiB"\n')
    try:
        async with started_app(settings) as app:
            proxy.cut()
            accepted, refused = [], []
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
                for _ in range(40):
                    try:
                        _, reply = await client.sendmail("app@example.com", ["o@x.test"],
                                                         MESSAGE)
                        accepted.append(queue_id(reply))
                    except aiosmtplib.SMTPDataError as err:
                        refused.append((err.code, err.message))
                        await client.rset()
            assert accepted and refused
            assert set(refused) == {(451, "4.3.0 Queue full; try again later")}
            proxy.restore()
            rows = await stored(app)
            assert sorted(r["id"] for r in rows) == sorted(accepted)
    finally:
        await proxy.stop()


async def test_internal_error_is_451_not_500(app: App) -> None:
    app.smtp.sign_pool.shutdown(wait=True)  # signing can no longer be scheduled
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("app@example.com", ["ops@example.org"], MESSAGE)
    assert refused.value.code == 451
    assert refused.value.message == "4.3.0 Internal error; try again later"
    assert await stored(app) == []


def test_handler_hooks_are_spelled_as_aiosmtpd_expects() -> None:
    hooks = {name for name in dir(IntakeHandler) if name.startswith("handle_")}
    assert hooks == {"handle_EHLO", "handle_MAIL", "handle_RCPT", "handle_DATA",
                     "handle_exception"}


async def test_one_client_connecting_does_not_shrink_anothers_mail_limit(app: App) -> None:
    # After EHLO, MAIL may be longer than 512 octets (SIZE and SMTPUTF8 parameters).
    reader, writer = await asyncio.open_connection("127.0.0.1", port(app, 0))
    await reader.readline()
    writer.write(b"EHLO first.test\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    other_reader, other_writer = await asyncio.open_connection("127.0.0.1", port(app, 0))
    await other_reader.readline()   # a second session has started meanwhile
    local = "a" * 60
    domain = ".".join(["d" * 60] * 7) + ".example.com"
    line = f"MAIL FROM:<{local}@{domain}> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n".encode()
    assert 512 < len(line) - 2 < 548
    writer.write(line)
    reply = await reader.readline()
    # The line got past the length check and reached the sender policy (its domain is
    # too long for RFC 5321), instead of "500 Command line too long".
    assert reply.startswith(b"501 5.1.7 Bad sender address: the domain is longer"), reply
    for w in (writer, other_writer):
        w.close()
        await w.wait_closed()


async def test_dsn_parameters_are_accepted_and_stored(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        await client.ehlo()
        assert client.supports_extension("dsn")
        await client.mail("app@example.com", options=["RET=HDRS", "ENVID=job+2B42"])
        await client.rcpt("a@x.test", options=["NOTIFY=SUCCESS,FAILURE",
                                                "ORCPT=rfc822;alias+40x.test"])
        await client.rcpt("b@x.test")
        await client.data(MESSAGE)
    [row] = await stored(app)
    assert (row["dsn_ret"], row["dsn_envid"]) == ("HDRS", "job+42")
    rcpts = await app.database.db.pool.fetch(
        "SELECT dsn_notify, dsn_orcpt FROM mail_recipients WHERE message_id = $1 "
        "ORDER BY idx", row["id"])
    assert [(r["dsn_notify"], r["dsn_orcpt"]) for r in rcpts] == [
        (["SUCCESS", "FAILURE"], "rfc822;alias@x.test"), (None, None)]


@pytest.mark.parametrize(("command", "problem"), [
    ("MAIL FROM:<app@example.com> RET=ALL", "RET must be FULL or HDRS"),
    ("MAIL FROM:<app@example.com> RET=FULL RET=HDRS", "RET given twice"),
    ("MAIL FROM:<app@example.com> ENVID=bad+ZZ", "ENVID"),
])
async def test_bad_dsn_parameters_get_501(app: App, command: str, problem: str) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        await client.ehlo()
        response = await client.execute_command(*command.encode().split(b" "))
    assert response.code == 501 and response.message.startswith("5.5.4")
    assert problem in response.message


async def test_bad_notify_gets_501(app: App) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        await client.mail("app@example.com")
        response = await client.execute_command(b"RCPT", b"TO:<a@x.test>",
                                                b"NOTIFY=NEVER,SUCCESS")
    assert response.code == 501 and "NOTIFY" in response.message
