"""Slow and greedy HTTP clients against a real egen: a request head or body that takes
too long gets 408 and the connection closes, one address cannot hold more than its share
of connections, and ordinary keep-alive clients notice none of it."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from daemon.app import App
from tests.test_app import settings_for

BOUNDS = 'header_timeout = "300ms"\nbody_timeout = "300ms"\nmax_connections_per_client = 3\n'


@pytest.fixture
async def app(tmp_path: Path, pg_url: str) -> AsyncIterator[App]:
    app = App(settings_for(tmp_path, pg_url, BOUNDS))
    await app.start()
    yield app
    await app.stop()


def refused(app: App, reason: str) -> float:
    return app.registry.get_sample_value("egen_http_connections_refused_total",
                                         {"reason": reason}) or 0.0


async def connect(app: App, source: str = "127.0.0.1"
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = app.http.addresses[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, (address.host, address.port))
    return await asyncio.open_connection(sock=sock)


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), 10)


async def test_a_request_head_sent_a_byte_at_a_time_gets_408(app: App) -> None:
    reader, writer = await connect(app)
    head = b"GET /healthz HTTP/1.1\r\nHost: egen\r\nX-Slow: " + b"a" * 200

    async def trickle() -> None:
        # The slow client under test: each byte well inside the timeout, the head not.
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(trickle())
    try:
        reply = await answer(reader)
    finally:
        sending.cancel()
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
    assert refused(app, "header_timeout") == 1


async def test_a_body_that_never_arrives_gets_408(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await connect(app)
    writer.write(b"POST /api/1/envelope/ HTTP/1.1\r\nHost: egen\r\n"
                 b"Content-Type: application/x-sentry-envelope\r\nContent-Length: 5000\r\n"
                 b"\r\n{\"dsn\":")
    await writer.drain()
    reply = await answer(reader)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
    assert b"body took too long" in reply
    assert refused(app, "body_timeout") == 1
    # A bound doing its work is no error of egen's (nor of aiohttp's).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_one_address_cannot_hold_every_connection(app: App) -> None:
    held = [await connect(app) for _ in range(3)]
    reader, writer = await connect(app)
    reply = await answer(reader)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply
    assert b"Retry-After: 5" in reply
    assert refused(app, "max_per_client") == 1
    reader, writer = await connect(app, source="127.0.0.2")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: egen\r\nConnection: close\r\n\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()
    for _, w in held:
        w.close()


async def test_keep_alive_clients_are_unaffected(app: App) -> None:
    address = app.http.addresses[0]
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):
            async with session.get(f"http://{address}/healthz") as response:
                assert response.status == 200
            # Idle on the kept-alive connection for longer than the head timeout: that
            # bound starts with the next request's first byte, not with the last answer.
            await asyncio.sleep(0.5)
        async with session.post(f"http://{address}/api/v1/events", data=b"x" * 100_000,
                                headers={"Authorization": "Bearer nokey"}) as response:
            assert response.status in (401, 403)
    assert refused(app, "header_timeout") == refused(app, "body_timeout") == 0
