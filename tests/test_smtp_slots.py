"""SMTP connection bounds against real sockets: a cap per client address that leaves
other addresses (and trusted networks) served, and a short time to the first command,
both answered with 421 and counted in metrics."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from daemon.app import App
from daemon.mail.intake.server import REAP_AFTER
from tests.mailfixtures import mail_config, port, started_app
from tests.test_smtp_security import (  # noqa: F401  (_close_dialogs: autouse)
    RELAY,
    SUBMISSION,
    Dialog,
    _close_dialogs,
)


def refused(app: App, reason: str) -> float:
    return app.registry.get_sample_value("egen_smtp_connections_refused_total",
                                         {"reason": reason}) or 0.0


async def connect(app: App, listener: int, source: str = "127.0.0.1") -> Dialog:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port(app, listener)))
    reader, writer = await asyncio.open_connection(sock=sock)
    return Dialog(reader, writer)


async def test_one_client_cannot_take_every_slot(tmp_path: Path, pg_url: str) -> None:
    settings = mail_config(tmp_path, pg_url, smtp="max_connections_per_client = 3")
    async with started_app(settings) as app:
        held = [await connect(app, SUBMISSION) for _ in range(3)]
        for dialog in held:
            assert (await dialog.reply())[0].startswith("220 ")
        over = await connect(app, SUBMISSION)
        assert await over.rest() == [
            "421 4.7.0 relay.test Too many connections from 127.0.0.1; try again later"]
        assert refused(app, "max_per_client") == 1
        # Another address is served, and so is the same one on a listener that trusts it.
        other = await connect(app, SUBMISSION, source="127.0.0.2")
        trusted = await connect(app, RELAY)
        for dialog in (other, trusted):
            assert (await dialog.reply())[0].startswith("220 ")
            assert (await dialog.command("EHLO client.test"))[-1].startswith("250 ")
        assert app.smtp.slots.held_by("127.0.0.1") == 4
        # A slot given back is free again (the trusted connection held one too: exempt
        # from the cap, not from the count).
        assert await held[0].quit() == ["221 2.0.0 Bye"]
        assert await trusted.quit() == ["221 2.0.0 Bye"]
        assert app.smtp.slots.held_by("127.0.0.1") == 2
        again = await connect(app, SUBMISSION)
        assert (await again.reply())[0].startswith("220 ")
        assert refused(app, "max_per_client") == 1


async def test_a_connection_that_says_nothing_is_closed_with_421(
        tmp_path: Path, pg_url: str) -> None:
    settings = mail_config(tmp_path, pg_url, smtp='first_command_timeout = "200ms"')
    async with started_app(settings) as app:
        talking = await Dialog.open(app, RELAY)
        assert (await talking.command("EHLO client.test"))[-1].startswith("250 ")
        silent = await Dialog.open(app, RELAY)
        assert await silent.rest() == ["421 4.4.2 relay.test Error: timeout exceeded"]
        assert refused(app, "first_command_timeout") == 1
        # The shorter bound is for the first command only: `smtp.timeout` (5 minutes)
        # applies once the client has spoken, however long it then pauses.
        await asyncio.sleep(0.4)
        assert await talking.one("NOOP") == "250 2.0.0 OK"
        assert await talking.quit() == ["221 2.0.0 Bye"]
        assert refused(app, "idle_timeout") == 0


async def test_a_stalled_starttls_handshake_gives_its_slot_back(
        tmp_path: Path, pg_url: str) -> None:
    settings = mail_config(tmp_path, pg_url,
                           smtp='timeout = "300ms"\nmax_connections_per_client = 1')
    async with started_app(settings) as app:
        stalled = await connect(app, SUBMISSION)
        assert (await stalled.reply())[0].startswith("220 ")
        await stalled.command("EHLO client.test")
        assert (await stalled.one("STARTTLS")).startswith("220 ")
        # No handshake follows: the idle timeout closes the connection mid-handshake.
        assert await asyncio.wait_for(stalled.reader.read(), 10) == b""
        await asyncio.sleep(REAP_AFTER + 0.2)       # the server's own grace, then:
        assert app.smtp.slots.held_by("127.0.0.1") == 0
        again = await connect(app, SUBMISSION)
        assert (await again.reply())[0].startswith("220 ")
