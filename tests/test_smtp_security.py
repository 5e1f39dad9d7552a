"""The SMTP intake against hostile and careless clients: SMTP smuggling, STARTTLS command
injection, open relay, AUTH only over TLS (and on implicit-TLS listeners), AUTH guessing,
per-client rate limits, the connection cap, enhanced status codes on every reply, and no
internals in any error reply.

Real egen in the test's loop, real clients: raw asyncio streams where the exact bytes on
the wire matter, aiosmtplib and smtplib elsewhere. Queued mail is read back from Postgres
after the flusher drained the journal, and its DKIM signatures are verified with dkimpy.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import signal
import smtplib
import ssl
from base64 import b64encode
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import aiohttp
import aiosmtplib
import asyncpg
import pytest

from daemon.app import App
from daemon.logs import LogfmtFormatter
from tests.daemonproc import DaemonProcess
from tests.mailfixtures import (
    PASSWORD,
    client_tls,
    dns_of,
    mail_config,
    port,
    started_app,
    verify_all,
)

RELAY, SUBMISSION, IMPLICIT, UNTRUSTED = 0, 1, 2, 3
TIMEOUT = 10.0

REPLY_LINE = re.compile(r"^\d{3}([ -].*)?$")
ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}")
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")
# Exception class names a reply must never show: Python's own, and anything CamelCase
# ending like one (asyncpg's, aiosmtpd's, egen's).
_BUILTIN_EXCEPTIONS = frozenset(
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException))
_EXCEPTION_LIKE = re.compile(r"Traceback|\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Warning)\b")


def assert_no_leak(line: str) -> None:
    """An error reply says what the client did wrong, never what broke inside egen."""
    if line[:1] not in ("4", "5"):
        return
    assert not line.startswith("500 Error: ("), line
    assert not _EXCEPTION_LIKE.search(line), line
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line))
    assert not words & _BUILTIN_EXCEPTIONS, line


def plain(login: str, password: str) -> str:
    return b64encode(f"\0{login}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return b64encode(text.encode()).decode()


def message(*, sender: str = "app@example.com", to: str = "ops@example.org",
            subject: str = "test", body: str = "hello\r\n") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n{body}").encode()


class Dialog:
    """A raw SMTP client over asyncio streams: writes exactly the bytes it is given and
    reads replies line by line, checking each one for leaked internals."""

    opened: ClassVar[list[Dialog]] = []  # closed after each test, also when it failed midway

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[str] = []
        Dialog.opened.append(self)

    @classmethod
    async def open(cls, app: App, listener: int, *, implicit_tls: bool = False,
                   greeting: bool = True) -> Dialog:
        return await cls.connect(port(app, listener), implicit_tls=implicit_tls,
                                 greeting=greeting)

    @classmethod
    async def connect(cls, to_port: int, *, implicit_tls: bool = False,
                      greeting: bool = True) -> Dialog:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", to_port, ssl=client_tls() if implicit_tls else None)
        dialog = cls(reader, writer)
        if greeting:
            [line] = await dialog.reply()
            assert re.match(r"220 (2\.0\.0 )?relay\.test ", line), line
        return dialog

    async def _line(self) -> str | None:
        raw = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
        if not raw:
            return None
        text = raw.decode("utf-8")
        assert text.endswith("\r\n"), f"reply line without CRLF: {text!r}"
        line = text[:-2]
        assert REPLY_LINE.match(line), line
        assert_no_leak(line)
        self.seen.append(line)
        return line

    async def reply(self) -> list[str]:
        """One (possibly multi-line) reply."""
        lines: list[str] = []
        while True:
            line = await self._line()
            assert line is not None, f"connection closed mid-reply after {lines}"
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def command(self, line: str) -> list[str]:
        await self.send(line + "\r\n")
        return await self.reply()

    async def one(self, line: str) -> str:
        """A command whose reply must be a single line."""
        [reply] = await self.command(line)
        return reply

    async def starttls(self) -> None:
        assert (await self.one("STARTTLS")).startswith("220 ")
        await self.writer.start_tls(client_tls())

    async def rest(self) -> list[str]:
        """Every reply line until the server closes the connection."""
        lines = []
        while (line := await self._line()) is not None:
            lines.append(line)
        return lines

    async def quit(self) -> list[str]:
        """QUIT, and everything the server still says before it hangs up."""
        await self.send("QUIT\r\n")
        lines = await self.rest()
        await self.close()
        return lines

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture(autouse=True)
async def _close_dialogs() -> AsyncIterator[None]:
    yield
    while Dialog.opened:
        await Dialog.opened.pop().close()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, pg_url: str, *, smtp: str = "") -> AsyncIterator[App]:
    async with started_app(mail_config(tmp_path, pg_url, smtp=smtp)) as app:
        yield app


@pytest.fixture
async def app(tmp_path: Path, pg_url: str) -> AsyncIterator[App]:
    async with running(tmp_path, pg_url) as started:
        yield started


async def queued(app: App) -> list[asyncpg.Record]:
    """Every message in the queue tables once the journal is flushed, oldest first."""
    await app.mail_flusher.drained()
    return await app.database.db.pool.fetch(
        "SELECT m.id, m.sender, m.data, m.auth_user, m.tls, m.client_ip, "
        "       array_agg(r.recipient ORDER BY r.idx) AS recipients "
        "FROM mail_messages m JOIN mail_recipients r ON r.message_id = m.id "
        "GROUP BY m.id ORDER BY m.received_at, m.id")


def assert_signed(app: App, data: bytes) -> None:
    """Both of egen's signatures (Ed25519 and RSA) verify with dkimpy."""
    assert verify_all(data, dns_of(app)) == [True, True]


async def send_trusted(app: App, subject: str) -> str:
    """One ordinary message through the trusted relay listener; its queue ID."""
    dialog = await Dialog.open(app, RELAY)
    await dialog.command("EHLO client.test")
    assert (await dialog.one("MAIL FROM:<app@example.com>")).startswith("250 ")
    assert (await dialog.one("RCPT TO:<ops@example.org>")).startswith("250 ")
    assert (await dialog.one("DATA")).startswith("354 ")
    await dialog.send(message(subject=subject) + b".\r\n")
    [reply] = await dialog.reply()
    match = QUEUED.match(reply)
    assert match, reply
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    return match.group(1)


# -- SMTP smuggling --------------------------------------------------------------------------

SMUGGLED = ("MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            "From: <evil@example.com>\r\nTo: <victim@example.net>\r\nSubject: smuggled\r\n"
            "\r\nsmuggled body\r\n")


async def send_with_smuggled(dialog: Dialog, fake_end: str) -> str:
    """One DATA whose content holds `fake_end` and then what looks like a second
    transaction, ended by the real CRLF.CRLF; the one reply it gets."""
    await dialog.command("EHLO client.test")
    # Pipelined envelope, then the whole message with the smuggled second one in one write.
    await dialog.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
    assert [await dialog.reply() for _ in range(3)] == [
        ["250 2.1.0 Sender OK"], ["250 2.1.5 Recipient OK"],
        ["354 End data with <CR><LF>.<CR><LF>"]]
    await dialog.send(message(subject="outer", body=f"first part{fake_end}{SMUGGLED}")
                      + b"\r\n.\r\n")
    [reply] = await dialog.reply()
    # One message, one reply: nothing of the smuggled transaction was answered.
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    return reply


@pytest.mark.parametrize("fake_end", ["\n.\n", "\n.\r\n", "\r\n.\n"],
                         ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf"])
async def test_bare_lf_dot_does_not_end_data_and_refuses_the_message(
        app: App, fake_end: str) -> None:
    """The whole DATA is read up to the real CRLF.CRLF, then refused as Postfix does with
    smtpd_forbid_bare_newline = yes: queued, its bare LFs would become CRLFs and the
    fake end a line that ends DATA at the next hop."""
    reply = await send_with_smuggled(await Dialog.open(app, RELAY), fake_end)
    assert reply.startswith("550 5.5.2 Message contains a bare <LF>"), reply
    assert await queued(app) == []
    assert app.registry.get_sample_value(
        "egen_smtp_messages_total", {"outcome": "rejected", "reason": "bare_newline"}) == 1


async def test_bare_cr_dot_does_not_end_data(app: App) -> None:
    """Whatever egen thinks of a bare CR, "\\r.\\r\\n" is no end of DATA."""
    reply = await send_with_smuggled(await Dialog.open(app, RELAY), "\r.\r\n")
    assert reply[:1] in ("2", "4", "5"), reply
    rows = await queued(app)
    assert len(rows) == (1 if reply.startswith("250 ") else 0)
    assert "evil@example.com" not in [row["sender"] for row in rows]


async def test_message_with_bare_cr_is_never_a_temporary_failure(app: App) -> None:
    dialog = await Dialog.open(app, RELAY)
    await dialog.command("EHLO client.test")
    await dialog.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
    assert [(await dialog.reply())[0][:3] for _ in range(3)] == ["250", "250", "354"]
    await dialog.send(message(body="progress 10%\r20%\r30%\r\n") + b".\r\n")
    [reply] = await dialog.reply()
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    # Queued (and signed over the bytes as they are), or refused for good: not "try again".
    assert QUEUED.match(reply) or re.match(r"5\d\d 5\.6\.\d+ ", reply), reply


# -- STARTTLS command injection (CVE-2011-0411) ----------------------------------------------

@pytest.mark.parametrize("injected", [
    "RSET", "MAIL FROM:<app@example.com>", "EHLO injected.example",
    f"AUTH PLAIN {plain('app', PASSWORD)}"])
async def test_commands_pipelined_behind_starttls_are_discarded(app: App, injected: str) -> None:
    dialog = await Dialog.open(app, SUBMISSION)
    assert "250-STARTTLS" in await dialog.command("EHLO client.test")
    await dialog.send(f"STARTTLS\r\n{injected}\r\n")
    [ready] = await dialog.reply()
    assert ready.startswith("220 "), ready
    await dialog.writer.start_tls(client_tls())
    assert dialog.writer.get_extra_info("ssl_object") is not None
    # The first reply over TLS answers the first command sent over TLS.
    ehlo = await dialog.command("EHLO client.test")
    assert ehlo[0] == "250-relay.test"
    assert ehlo[-1] == "250 HELP"
    assert "250-AUTH LOGIN PLAIN" in ehlo
    # Not authenticated by an injected AUTH, no transaction opened by an injected MAIL.
    assert await dialog.one("MAIL FROM:<app@example.com>") == (
        "530 5.7.0 Authentication required")
    assert await dialog.one("NOOP") == "250 2.0.0 OK"
    assert await dialog.quit() == ["221 2.0.0 Bye"]


# -- no open relay ---------------------------------------------------------------------------

async def test_untrusted_unauthenticated_client_cannot_relay(app: App) -> None:
    dialog = await Dialog.open(app, UNTRUSTED)
    ehlo = await dialog.command("EHLO client.test")
    assert "250-STARTTLS" in ehlo
    assert not any(line.startswith("250-AUTH") for line in ehlo)   # only after TLS
    assert await dialog.one("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    # Any recipient: remote, egen's own host name, a domain egen signs for, an IP literal.
    for rcpt in ("ops@example.org", "postmaster@relay.test", "app@example.com",
                 "root@[127.0.0.1]", "postmaster"):
        reply = await dialog.one(f"RCPT TO:<{rcpt}>")
        assert reply.startswith("554 5.7.1 "), (rcpt, reply)
    assert await dialog.one("DATA") == "503 5.5.1 Error: need RCPT command"
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    # Over TLS but without AUTH: still a stranger.
    dialog = await Dialog.open(app, UNTRUSTED)
    await dialog.command("EHLO client.test")
    await dialog.starttls()
    await dialog.command("EHLO client.test")
    assert await dialog.one("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    assert (await dialog.one("RCPT TO:<ops@example.org>")).startswith("554 5.7.1 ")
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    # A legitimate message afterwards is the only thing in the queue.
    queue_id = await send_trusted(app, "legit")
    assert [row["id"] for row in await queued(app)] == [queue_id]


async def test_untrusted_client_relays_after_starttls_and_auth(app: App) -> None:
    def submit() -> tuple[dict, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port(app, UNTRUSTED), local_hostname="client.test",
                          timeout=TIMEOUT) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            client.starttls(context=client_tls())
            client.ehlo()
            assert client.has_extn("auth")
            client.login("app", PASSWORD)
            refused = client.sendmail("app@example.com", ["ops@example.org"],
                                      message(subject="authenticated"))
            return refused, client.noop()

    refused, noop = await asyncio.to_thread(submit)
    assert refused == {}
    assert noop == (250, b"2.0.0 OK")
    [row] = await queued(app)
    assert (row["sender"], row["recipients"], row["auth_user"], row["client_ip"]) == (
        "app@example.com", ["ops@example.org"], "app", "127.0.0.1")
    assert row["tls"].startswith("TLSv1.")
    assert_signed(app, bytes(row["data"]))


# -- AUTH only over TLS ----------------------------------------------------------------------

async def test_auth_refused_before_starttls_and_accepted_after(app: App) -> None:
    dialog = await Dialog.open(app, SUBMISSION)
    ehlo = await dialog.command("EHLO client.test")
    assert "250-STARTTLS" in ehlo
    assert not any("AUTH" in line for line in ehlo)
    refusals = [await dialog.one(f"AUTH PLAIN {plain('app', PASSWORD)}"),
                await dialog.one("AUTH PLAIN"),
                await dialog.one(f"AUTH LOGIN {b64('app')}")]
    assert refusals == ["538 5.7.11 Encryption required for requested authentication "
                        "mechanism"] * 3
    assert await dialog.one("MAIL FROM:<app@example.com>") == (
        "530 5.7.0 Authentication required")
    before_tls = list(dialog.seen)
    await dialog.starttls()
    ehlo = await dialog.command("EHLO client.test")
    assert "250-AUTH LOGIN PLAIN" in ehlo
    assert "250-STARTTLS" not in ehlo
    assert await dialog.one(f"AUTH PLAIN {plain('app', PASSWORD)}") == (
        "235 2.7.0 Authentication successful")
    assert await dialog.one("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    # Nothing before TLS was a success.
    assert [line for line in before_tls if line.startswith(("235", "334"))] == []


# -- implicit TLS (465-style; aiosmtpd issue #274) -------------------------------------------

@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_implicit_tls_listener_offers_and_accepts_auth(app: App, mechanism: str) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, IMPLICIT), use_tls=True,
                             tls_context=client_tls(), local_hostname="client.test",
                             timeout=TIMEOUT)
    await client.connect()
    try:
        await client.ehlo()
        assert client.supports_extension("auth")
        assert set(client.server_auth_methods) >= {"plain", "login"}
        assert not client.supports_extension("starttls")
        login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        response = await login("app", PASSWORD)
        assert (response.code, response.message) == (235, "2.7.0 Authentication successful")
        refused, reply = await client.sendmail("app@example.com", ["ops@example.org"],
                                               message(subject=f"implicit {mechanism}"))
        assert refused == {}
        match = re.fullmatch(r"2\.0\.0 Ok: queued as (\S+)", reply)
        assert match, reply
    finally:
        await client.quit()
    [row] = await queued(app)
    assert row["id"] == match.group(1)
    assert (row["auth_user"], row["recipients"]) == ("app", ["ops@example.org"])
    assert row["tls"].startswith("TLSv1.")
    assert_signed(app, bytes(row["data"]))


async def test_implicit_tls_raw_stream(app: App) -> None:
    dialog = await Dialog.open(app, IMPLICIT, implicit_tls=True)
    assert dialog.writer.get_extra_info("ssl_object") is not None
    ehlo = await dialog.command("EHLO client.test")
    assert "250-AUTH LOGIN PLAIN" in ehlo
    assert await dialog.one("MAIL FROM:<app@example.com>") == (
        "530 5.7.0 Authentication required")
    assert (await dialog.one("AUTH LOGIN")).startswith("334 ")
    assert (await dialog.one(b64("app"))).startswith("334 ")
    assert await dialog.one(b64(PASSWORD)) == "235 2.7.0 Authentication successful"
    await dialog.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
    assert [(await dialog.reply())[0][:3] for _ in range(3)] == ["250", "250", "354"]
    await dialog.send(message(subject="raw implicit") + b".\r\n")
    [reply] = await dialog.reply()
    match = QUEUED.match(reply)
    assert match, reply
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    [row] = await queued(app)
    assert (row["id"], row["auth_user"]) == (match.group(1), "app")
    assert row["tls"].startswith("TLSv1.")


# -- AUTH guessing ---------------------------------------------------------------------------

async def test_bad_auth_is_535_then_blocks_that_user_from_that_client(
        tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path, pg_url, smtp="auth_failures = 3") as app:
        dialog = await Dialog.open(app, SUBMISSION)
        await dialog.command("EHLO client.test")
        await dialog.starttls()
        await dialog.command("EHLO client.test")
        wrong_password = await dialog.one(f"AUTH PLAIN {plain('app', 'guess')}")
        unknown_user = await dialog.one(f"AUTH PLAIN {plain('nobody', PASSWORD)}")
        # No user enumeration: an unknown user reads exactly like a wrong password.
        assert wrong_password == unknown_user == (
            "535 5.7.8 Authentication credentials invalid")
        assert await dialog.one(f"AUTH PLAIN {plain('app', 'guess2')}") == unknown_user
        # The third failure for `app` (over AUTH LOGIN) reaches smtp.auth_failures ...
        assert (await dialog.one("AUTH LOGIN")).startswith("334 ")
        assert (await dialog.one(b64("app"))).startswith("334 ")
        assert await dialog.one(b64("wrong")) == "535 5.7.8 Authentication credentials invalid"
        # ... and from then on even its right password is refused, with a temporary code.
        blocked = "454 4.7.0 Too many failed AUTH attempts; try again later"
        assert await dialog.one(f"AUTH PLAIN {plain('app', PASSWORD)}") == blocked
        assert await dialog.one("MAIL FROM:<app@example.com>") == (
            "530 5.7.0 Authentication required")
        assert await dialog.quit() == ["221 2.0.0 Bye"]
        [line] = [r for r in caplog.records if r.getMessage().startswith("auth blocked")]
        assert "user=app" in _formatted(line) and "client=127.0.0.1" in _formatted(line)
        # The block is per client address and user, not per session: `app` stays
        # blocked in a new connection, while another application on the same host
        # signs in with its own right password.
        for user, expected in (("app", 454), ("alerts", 235)):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, IMPLICIT),
                                     use_tls=True, tls_context=client_tls(), timeout=TIMEOUT)
            await client.connect()
            try:
                await client.ehlo()
                if expected == 454:
                    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
                        await client.auth_plain(user, PASSWORD)
                    assert (caught.value.code, caught.value.message) == (454, blocked[4:])
                else:
                    assert (await client.auth_plain(user, PASSWORD)).code == expected
            finally:
                await client.quit()
        assert await queued(app) == []


def _formatted(record: logging.LogRecord) -> str:
    return LogfmtFormatter().format(record)


# -- rate limits -----------------------------------------------------------------------------

RATE_LIMITED = """
[smtp.rate_per_client]
per_minute = 1
burst = 2
"""


async def test_client_rate_limit_answers_451_at_mail(tmp_path: Path, pg_url: str) -> None:
    async with running(tmp_path, pg_url, smtp=RATE_LIMITED) as app:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, RELAY),
                                 local_hostname="client.test", timeout=TIMEOUT)
        await client.connect()
        try:
            for n in range(2):
                refused, _ = await client.sendmail("app@example.com", ["ops@example.org"],
                                                   message(subject=f"burst {n}"))
                assert refused == {}
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
                await client.sendmail("app@example.com", ["ops@example.org"],
                                      message(subject="one too many"))
            assert caught.value.code == 451
            assert re.fullmatch(r"4\.7\.1 Too much mail from 127\.0\.0\.1; try again in \d+s",
                                caught.value.message), caught.value.message
            assert_no_leak(f"{caught.value.code} {caught.value.message}")
        finally:
            await client.quit()
        # Per client address: a new session is limited too; a refusal takes no token.
        dialog = await Dialog.open(app, RELAY)
        await dialog.command("EHLO client.test")
        for _ in range(2):
            assert (await dialog.one("MAIL FROM:<app@example.com>")).startswith("451 4.7.1 ")
        assert await dialog.quit() == ["221 2.0.0 Bye"]
        assert [row["sender"] for row in await queued(app)] == ["app@example.com"] * 2


# -- connection cap --------------------------------------------------------------------------

async def metric(http_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{http_port}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("listener", [RELAY, IMPLICIT], ids=["plain", "implicit-tls"])
async def test_connection_over_the_cap_gets_421(tmp_path: Path, pg_url: str,
                                                listener: int) -> None:
    """The real daemon (uvloop, as `egen run` serves), so whatever the cap does wrong
    stays in its process and its log."""
    mail_config(tmp_path, pg_url, smtp="max_connections = 2")
    daemon = DaemonProcess(tmp_path / "egen.toml")
    try:
        await daemon.start()
        http_port = await daemon.http_port()
        ports = {}
        for index, (tls, auth) in {RELAY: ("none", "none"), SUBMISSION: ("starttls", "required"),
                                   IMPLICIT: ("implicit", "required")}.items():
            match = await daemon.wait_for_line(
                rf"msg=listening proto=smtp address=127\.0\.0\.1:(\d+) tls={tls} auth={auth}")
            ports[index] = int(match.group(1))
        await daemon.wait_for_line(r"msg=ready")
        first = await Dialog.connect(ports[RELAY])
        second = await Dialog.connect(ports[SUBMISSION])
        third = await Dialog.connect(ports[listener], implicit_tls=listener == IMPLICIT,
                                     greeting=False)
        assert await third.rest() == [
            "421 4.7.0 relay.test Too many connections; try again later"]
        await third.close()
        assert await metric(
            http_port, r'egen_smtp_connections_refused_total\{reason="max_connections"\}') == 1
        assert await metric(http_port, "egen_smtp_connections") == 2
        # The sessions under the cap are unaffected.
        assert await first.one("NOOP") == "250 2.0.0 OK"
        assert await second.one("NOOP") == "250 2.0.0 OK"
        assert await first.quit() == ["221 2.0.0 Bye"]
        assert await second.quit() == ["221 2.0.0 Bye"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert not [line for line in daemon.lines if "Traceback" in line or "level=error" in line]
    finally:
        await daemon.close()


# -- enhanced status codes -------------------------------------------------------------------

def assert_enhanced(lines: list[str]) -> None:
    missing = [line for line in lines
               if not ENHANCED.match(line) and not line.startswith(("354 ", "334 "))]
    assert missing == []


async def test_every_reply_after_ehlo_has_an_enhanced_code(app: App) -> None:
    # A trusted session that tries most things, right and wrong.
    relay = await Dialog.open(app, RELAY)
    await relay.command("EHLO client.test")
    start = len(relay.seen)
    for line in ["NOOP", "NOOP ignored", "RSET", "RSET now", "VRFY <ops@example.org>", "VRFY",
                 "VRFY <<>", "HELP", "HELP MAIL", "HELP BOGUS", "EXPN staff", "FOO", "FOO bar",
                 "", "x" * 2000, "MAIL", "MAIL TO:<x@example.com>", "MAIL FROM:<broken",
                 "MAIL FROM:<app@-bad-.example>", "RCPT TO:<ops@example.org>", "DATA",
                 "MAIL FROM:<app@example.com> BODY=8BITMIME", "MAIL FROM:<app@example.com>",
                 "RCPT", "RCPT TO:<ops@-bad-.example>",
                 *(f"RCPT TO:<r{n}@example.org>" for n in range(6)), "DATA now", "AUTH PLAIN"]:
        await relay.command(line)
    assert (await relay.one("DATA")).startswith("354 ")
    await relay.send(b"Subject: no From header\r\n\r\nbody\r\n.\r\n")
    await relay.reply()
    assert (await relay.one("MAIL FROM:<app@example.com> SIZE=999999999")).startswith("552 ")
    assert await relay.quit() == ["221 2.0.0 Bye"]
    replies = relay.seen[start:]
    assert len(replies) == 37
    assert {line[:3] for line in replies} >= {
        "221", "250", "252", "354", "452", "500", "501", "502", "503", "538", "550", "552"}
    assert_enhanced(replies)

    # Before EHLO (not required by RFC 2034, but egen adds the codes everywhere).
    early = await Dialog.open(app, RELAY)
    for line in ["MAIL FROM:<app@example.com>", "RCPT TO:<ops@example.org>", "DATA", "NOOP",
                 "AUTH PLAIN"]:
        await early.command(line)
    assert await early.quit() == ["221 2.0.0 Bye"]
    assert [line[:3] for line in early.seen[1:]] == ["503", "503", "503", "250", "503", "221"]
    assert_enhanced(early.seen[1:])

    # Submission with STARTTLS and AUTH, right and wrong.
    submission = await Dialog.open(app, SUBMISSION)
    await submission.command("EHLO client.test")
    start = len(submission.seen)
    await submission.command("MAIL FROM:<app@example.com>")
    await submission.command(f"AUTH PLAIN {plain('app', PASSWORD)}")
    await submission.send("STARTTLS\r\n")
    await submission.reply()            # 220: checked in its own test below
    await submission.writer.start_tls(client_tls())
    await submission.command("EHLO client.test")
    after_tls = len(submission.seen)
    for line in ["AUTH", "AUTH BOGUS", "AUTH PLAIN !!!", "AUTH PLAIN " + b64("no nul bytes"),
                 "AUTH PLAIN", "*", "AUTH LOGIN", "*", f"AUTH PLAIN {plain('app', 'nope')}",
                 f"AUTH PLAIN {plain('app', PASSWORD)}", f"AUTH PLAIN {plain('app', PASSWORD)}",
                 "MAIL FROM:<someone@example.org>", "MAIL FROM:<app@example.com>",
                 "RCPT TO:<ops@example.org>", "DATA"]:
        await submission.command(line)
    await submission.send(message(sender="spoof@example.net") + b".\r\n")
    await submission.reply()
    assert await submission.quit() == ["221 2.0.0 Bye"]
    replies = submission.seen[start:start + 2] + submission.seen[after_tls:]
    assert [line[:3] for line in replies] == [
        "530", "538", "501", "504", "501", "501", "334", "501", "334", "501", "535", "235",
        "503", "553", "250", "250", "354", "550", "221"]
    assert_enhanced(replies)


@pytest.mark.parametrize("listener", [SUBMISSION, RELAY], ids=["starttls", "no-tls"])
async def test_starttls_reply_has_an_enhanced_code(app: App, listener: int) -> None:
    dialog = await Dialog.open(app, listener)
    await dialog.command("EHLO client.test")
    reply = await dialog.one("STARTTLS")
    assert reply[:3] == ("220" if listener == SUBMISSION else "454")
    if listener == SUBMISSION:
        await dialog.writer.start_tls(client_tls())
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    assert_enhanced([reply])


# -- syntax errors are the client's, not egen's ----------------------------------------------

@pytest.mark.parametrize("command", ["MAIL FROM:<", "RCPT TO:<"])
async def test_unterminated_angle_bracket_is_a_syntax_error(
        app: App, command: str, caplog: pytest.LogCaptureFixture) -> None:
    dialog = await Dialog.open(app, RELAY)
    await dialog.command("EHLO client.test")
    if command.startswith("RCPT"):
        assert await dialog.one("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    reply = await dialog.one(command)
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    assert re.match(r"5\d\d 5\.\d\.\d+ ", reply), reply
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


# -- nothing internal leaks ------------------------------------------------------------------

MALFORMED = [
    # "MAIL FROM:<" once raised inside aiosmtpd: a clean syntax reply now.
    (b"MAIL FROM:<", ("501", "553")),
    (b"MAIL FROM:<\xff\xfe@example.com>", ("501",)),
    (b"MAIL FROM:<\x00@example.com>", ("501",)),
    (b"MAIL FROM:<app@[300.1.1.1]>", ("501",)),
    (b"MAIL FROM:<" + b"a" * 300 + b"@example.com>", ("501",)),
    (b"MAIL FROM:<app@example.com> SIZE=abc", ("501",)),
    (b"MAIL FROM:<app@example.com> BODY=WRONG", ("501",)),
    (b"MAIL FROM:<app@example.com> X=1", ("555",)),
    (b"\xff\xfe", ("500",)),
    (b"HELP \x00", ("501",)),
    (b"VRFY \xc3\x28", ("252",)),
    (b"MAIL FROM:<app@example.com> SMTPUTF8", ("250",)),
    (b"RCPT TO:<ops@example.org> NOTIFY=NEVER", ("250",)),   # DSN (RFC 3461)
    (b"RCPT TO:<ops@example.org> NOTIFY=SOMETIMES", ("501",)),
    (b"RCPT TO:<\xff@example.org>", ("501",)),
]


async def test_malformed_input_gets_clean_replies_and_the_session_survives(app: App) -> None:
    relay = await Dialog.open(app, RELAY)
    await relay.command("EHLO client.test")
    for line, codes in MALFORMED:
        await relay.send(line + b"\r\n")
        [reply] = await relay.reply()
        assert reply[:3] in codes, (line, reply)
    assert await relay.one("RSET") == "250 2.0.0 OK"
    # A message that is not a message: NUL bytes, an over-long header line.
    for data in [b"From: <app@example.com>\r\nSubject: \x00\r\n\r\nx\r\n",
                 b"From: <app@example.com>\r\nX-Long: " + b"y" * 1200 + b"\r\n\r\nx\r\n",
                 b"\r\n"]:
        await relay.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
        assert [(await relay.reply())[0][:3] for _ in range(3)] == ["250", "250", "354"]
        await relay.send(data + b".\r\n")
        [reply] = await relay.reply()
        assert reply.startswith("550 5.6.0 "), reply
    assert await relay.one("NOOP") == "250 2.0.0 OK"
    assert await relay.quit() == ["221 2.0.0 Bye"]
    # Every error reply was checked as it was read (Dialog._line); the queue stayed empty.
    assert await queued(app) == []
