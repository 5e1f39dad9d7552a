"""GELF over TCP, as Docker's gelf driver (`gelf-address=tcp://…`) and graypy's TCP
handler send it: uncompressed GELF JSON frames, each ended by a NUL byte.

Frames join the same queue and decoding as the UDP listener's datagrams. Unlike UDP,
TCP can push back: while the queue is full, the connection is not read, so the
sender's socket buffer fills and it waits instead of losing lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from daemon.logs import fields, get_logger

if TYPE_CHECKING:
    from daemon.events.settings import DatagramListenerSettings

log = get_logger("events.gelf_tcp")

MAX_FRAME = 8 * 2**20
MAX_CONNECTIONS = 1000       # per listener; each may buffer up to MAX_FRAME
# per source address, so one host cannot hold every slot (Postfix's
# smtpd_client_connection_count_limit has the same default)
MAX_PER_SOURCE = 50


class TcpListener(Protocol):
    """The per-listener state a GELF TCP server reads and keeps its connections in."""

    settings: DatagramListenerSettings
    label: str
    closed: bool
    connections: set[asyncio.StreamWriter]
    per_source: dict[str, int]    # open connections by source address


L = TypeVar("L", bound=TcpListener)


class FrameSink(Protocol[L]):
    """Where frames go: the owner of the listeners (the UDP ingest), which queues and
    decodes them as it does datagrams."""

    def source_allowed(self, listener: L, addr: Any) -> bool: ...

    def note_rejected(self, listener: L, reason: str) -> None: ...

    def full(self, listener: L) -> bool: ...

    def received(self, listener: L, data: bytes, addr: Any) -> None: ...

    async def wait_until(self, done: Callable[[], bool]) -> None: ...


async def serve(owner: FrameSink[L], listener: L) -> asyncio.Server:
    address = listener.settings.listen

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if isinstance(peer, tuple) else str(peer)
        if (len(listener.connections) >= MAX_CONNECTIONS or listener.closed
                or listener.per_source.get(source, 0) >= MAX_PER_SOURCE):
            owner.note_rejected(listener, "connections")
            writer.close()
            return
        listener.connections.add(writer)
        listener.per_source[source] = listener.per_source.get(source, 0) + 1
        try:
            await _frames(owner, listener, reader, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            owner.note_rejected(listener, "too_large")
            log.warning("gelf frame over the limit; connection closed", extra=fields(
                listener=listener.label, peer=str(peer), limit=MAX_FRAME))
        finally:
            listener.connections.discard(writer)
            if listener.per_source[source] <= 1:
                del listener.per_source[source]
            else:
                listener.per_source[source] -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(connection, address.host, address.port,
                                      limit=MAX_FRAME)


async def _frames(owner: FrameSink[L], listener: L, reader: asyncio.StreamReader,
                  peer: Any) -> None:
    if not owner.source_allowed(listener, peer):
        owner.note_rejected(listener, "source")
        return
    while not listener.closed:
        try:
            frame = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as end:
            if end.partial.strip():
                owner.received(listener, end.partial, peer)   # a last frame without NUL
            return
        frame = frame[:-1]
        if frame.strip():
            while owner.full(listener) and not listener.closed:
                await owner.wait_until(lambda: not owner.full(listener) or listener.closed)
            owner.received(listener, frame, peer)
