"""Bare line feeds in DATA: refused by default, read as CRLF only for trusted clients of
a listener with `bare_newline = "normalize"`, and in both cases the mail that goes out is
dot-stuffed so that no line of it ends DATA early at the next hop (an aiosmtpd sink)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.app import App
from daemon.config import ConfigError
from tests.mailfixtures import MAIL_LISTENERS, PASSWORD, mail_config, started_app
from tests.smtpsink import Sink
from tests.test_smtp_security import (  # noqa: F401  (_close_dialogs: autouse)
    QUEUED,
    RELAY,
    UNTRUSTED,
    Dialog,
    _close_dialogs,
    message,
    plain,
    queued,
    send_with_smuggled,
)

NORMALIZING = MAIL_LISTENERS.replace(
    'trusted_networks = ["127.0.0.0/8", "::1/128"]\n',
    'trusted_networks = ["127.0.0.0/8", "::1/128"]\nbare_newline = "normalize"\n').replace(
    'trusted_networks = ["192.0.2.0/24"]\n',
    'trusted_networks = ["192.0.2.0/24"]\nbare_newline = "normalize"\n')


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    sink = Sink("127.0.0.1")
    await sink.start()
    yield sink
    await sink.stop()


def to_sink(sink: Sink) -> str:
    return (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
            f'port = {sink.port}\ntls = "none"\n')


async def send(app: App, listener: int, data: bytes, *, login: bool = False) -> str:
    dialog = await Dialog.open(app, listener)
    await dialog.command("EHLO client.test")
    if login:
        await dialog.starttls()
        await dialog.command("EHLO client.test")
        assert (await dialog.one(f"AUTH PLAIN {plain('app', PASSWORD)}")).startswith("235 ")
    await dialog.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
    assert [(await dialog.reply())[0][:3] for _ in range(3)] == ["250", "250", "354"]
    await dialog.send(data + b"\r\n.\r\n")
    [reply] = await dialog.reply()
    assert await dialog.quit() == ["221 2.0.0 Bye"]
    return reply


@pytest.mark.parametrize(("listeners", "body"), [
    (MAIL_LISTENERS, "a\r\n..\r\n..hidden\r\nafter"),
    (NORMALIZING, "a\n..\n..hidden\nafter")], ids=["crlf", "normalized-lf"])
async def test_lines_starting_with_a_dot_go_out_dot_stuffed(
        tmp_path: Path, pg_url: str, sink: Sink, listeners: str, body: str) -> None:
    settings = mail_config(tmp_path, pg_url, listeners=listeners, routes=to_sink(sink),
                           delivery='poll_interval = "100ms"\n')
    async with started_app(settings) as app:
        reply = await send(app, RELAY, message(body=body))
        assert QUEUED.match(reply), reply
        [arrived] = await sink.handler.wait_for(1)
        # Had egen not stuffed the lone "." line, the sink would have ended DATA there.
        assert arrived.data.endswith(b"\r\n\r\na\r\n.\r\n.hidden\r\nafter\r\n"), arrived.data


@pytest.mark.parametrize("fake_end", ["\n.\n", "\n.\r\n", "\r\n.\n"])
async def test_normalized_bare_lf_dot_is_an_empty_line_not_an_end(
        tmp_path: Path, pg_url: str, fake_end: str) -> None:
    async with started_app(mail_config(tmp_path, pg_url, listeners=NORMALIZING)) as app:
        reply = await send_with_smuggled(await Dialog.open(app, RELAY), fake_end)
        assert QUEUED.match(reply), reply
        [row] = await queued(app)
        body = bytes(row["data"]).split(b"\r\n\r\n", 1)[1]
        assert (row["sender"], row["recipients"]) == ("app@example.com", ["ops@example.org"])
        assert body.startswith(b"first part\r\n\r\nMAIL FROM:<evil@example.com>\r\n"), body
        assert b"\n" not in body.replace(b"\r\n", b"")


async def test_normalize_is_for_trusted_networks_only(tmp_path: Path, pg_url: str) -> None:
    async with started_app(mail_config(tmp_path, pg_url, listeners=NORMALIZING)) as app:
        reply = await send(app, UNTRUSTED, message(body="one\ntwo"), login=True)
        assert reply.startswith("550 5.5.2 "), reply
        assert await queued(app) == []


def test_normalize_without_trusted_networks_is_a_config_error(
        tmp_path: Path, pg_url: str) -> None:
    listeners = ('[[smtp.listeners]]\nlisten = "127.0.0.1:0"\nauth = "required"\n'
                 'bare_newline = "normalize"\n')
    with pytest.raises(ConfigError, match="bare_newline"):
        mail_config(tmp_path, pg_url, listeners=listeners)
