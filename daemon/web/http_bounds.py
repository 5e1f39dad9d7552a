"""Bounds on slow and greedy HTTP clients, which aiohttp leaves open.

aiohttp closes a connection that sends nothing for its keep-alive time, but a client
that sends its request head one byte a second, or a body slower still, holds the
connection as long as it likes, and any one address may open as many as it likes.
Here a connection has `http.header_timeout` to deliver each request head and
`http.body_timeout` for the body once the head is in; past either it gets `408` and is
closed. One address holds at most `http.max_connections_per_client` connections; the
next one gets `503` and is closed. Each refusal is counted by reason.

Hand-written as a subclass of aiohttp's connection protocol because aiohttp has no
setting for any of these (its handler_args cover line and field sizes only).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter

from daemon.client_slots import ClientSlots
from daemon.logs import fields, get_logger

log = get_logger("http")


def _raw(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


_TOO_MANY = _raw("503 Service Unavailable", "too many connections from this address\n",
                 "Retry-After: 5\r\n")
_TIMEOUT = _raw("408 Request Timeout", "the request head took too long\n")


class HttpBounds(ClientSlots):
    def __init__(self, registry: CollectorRegistry, *, header_timeout: float,
                 body_timeout: float, max_per_client: int) -> None:
        super().__init__(Counter(
            "egen_http_connections_refused_total",
            "HTTP connections refused or closed by a bound: max_per_client, "
            "header_timeout, body_timeout.", ["reason"], registry=registry))
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_per_client = max_per_client


class BoundedServer:
    """Stands in for aiohttp's `web.Server` as the listeners' protocol factory; all else
    (shutdown, the connection registry) is the real server's."""

    def __init__(self, server: web.Server, bounds: HttpBounds) -> None:
        self._server = server
        self._bounds = bounds

    def __call__(self) -> RequestHandler:
        server = self._server
        return _BoundedHandler(server, self._bounds, loop=server._loop, **server._kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _BoundedHandler(RequestHandler):
    def __init__(self, manager: web.Server, bounds: HttpBounds, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds = bounds
        self._client: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body: Any = None             # the payload being received, if any
        self._expired = False              # the body timed out: read nothing more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self._bounds.admit(client, limit=self._bounds.max_per_client):
            log.warning("connection refused", extra=fields(
                client=client, reason="max_connections_per_client",
                held=self._bounds.held_by(client)))
            transport.write(_TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        self._client = client
        super().connection_made(transport)
        self._arm("header", self._bounds.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._expired:
            return
        if self._timer is None and self._body is None and self._current_request is None:
            # The first bytes of the next request on a kept-alive connection.
            self._arm("header", self._bounds.header_timeout)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:            # a request head is complete
            self._disarm()
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._body = payload
                self._arm("body", self._bounds.body_timeout)
        elif self._body is not None and self._body.is_eof():
            self._body = None
            self._disarm()

    def _arm(self, what: str, after: float) -> None:
        self._disarm()
        self._timer = self._loop.call_later(after, self._expire, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, what: str) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._bounds.refused.labels(f"{what}_timeout").inc()
        if what == "body" and self._current_request is not None and self._body is not None:
            # The handler waits in its read: let that read fail with 408, so the handler
            # answers and aiohttp closes as it does for any error of its own, instead
            # of a reset that it logs as an error of egen's.
            self._body.set_exception(web.HTTPRequestTimeout(
                text="the request body took too long\n"))
            # Ended too, so that aiohttp does not linger reading it after the answer;
            # whatever the client still sends is dropped (see data_received).
            self._body.feed_eof()
            self._body = None
            self._expired = True
            self.close()            # no further requests on this connection
            self._timer = self._loop.call_later(5.0, transport.close)
            return
        if what == "header":
            transport.write(_TIMEOUT)  # type: ignore[attr-defined]
        # else the handler answered without reading the body, and aiohttp is draining
        # it: a second answer would be one the client never asked for.
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._client is None:        # refused in connection_made: never started
            return
        self._bounds.release(self._client)
        self._client = None
        super().connection_lost(exc)
