"""Test MX hosts: aiosmtpd servers in the test's own loop that keep what they receive and
answer per recipient as a test tells them (accept, 4xx, 5xx, drop the connection, stall).

Several sinks can share one port on different loopback addresses (127.0.0.2, 127.0.0.3…),
as MX hosts do, because egen delivers to one configured port.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: str
    tls: bool


@dataclass
class SinkHandler:
    # recipient address -> "accept" | "4xx" | "5xx" | "drop" | "stall"
    rules: dict[str, str] = field(default_factory=dict)
    greeting_refusal: str | None = None
    messages: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        rule = self.rules.get(address, "accept")
        if rule == "4xx":
            return "451 4.2.0 Mailbox temporarily unavailable"
        if rule == "5xx":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if rule == "drop":
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 closing"
        if rule == "stall":
            self.stalled.set()
            await asyncio.Event().wait()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        self.messages.append(Received(sender, list(envelope.rcpt_tos),
                                      envelope.original_content or b"", peer,
                                      session.ssl is not None))
        self.arrived.set()
        return "250 2.0.0 Ok: stored"

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        async def enough() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.messages


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **handler: Any) -> None:
        self.host = host
        self.port = port
        self.handler = SinkHandler(**handler)
        self.server: asyncio.Server | None = None
        self.tls_context: Any = None
        self.auth: tuple[str, str] | None = None

    def _factory(self) -> SMTP:
        self.handler.connections += 1
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True, "hostname": f"sink-{self.host}"}
        if self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        if self.auth is not None:
            user, password = self.auth
            kwargs["authenticator"] = (
                lambda _server, _session, _env, _mech, data:
                _auth_result(data.login == user.encode() and data.password == password.encode()))
        return SMTP(self.handler, **kwargs)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _auth_result(ok: bool) -> Any:
    from aiosmtpd.smtp import AuthResult

    return AuthResult(success=ok)
