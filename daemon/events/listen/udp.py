"""UDP listeners for log shippers and applications that cannot wait for an HTTP round
trip: Docker's gelf and syslog drivers, GELF handlers, syslog forwarders, JSON emitters.

`datagram_received` only checks the sender and queues the datagram (bounded: a flood
drops datagrams, counted, instead of growing memory); a drain task decodes what is
queued in batches and makes each batch durable with one journal append, so one fsync
serves hundreds of datagrams and the loop never does per-datagram I/O. There is no one
to push back on over UDP: when the journal is full, datagrams are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from daemon.events.formats.udp_decode import DatagramDecoder, Rejected
from daemon.events.listen import gelf_tcp
from daemon.events.pipeline.ingest import Ingestor
from daemon.events.projects import Project, ProjectRegistry
from daemon.events.settings import DatagramListenerSettings
from daemon.journal.log import JournalFull
from daemon.logs import fields, get_logger

log = get_logger("events.udp")

BATCH = 1000                 # datagrams decoded per journal append
QUEUE_LIMIT = 50_000         # datagrams waiting per listener before new ones are dropped
QUEUE_BYTES = 64 * 2**20     # and bytes waiting per listener
BATCH_BYTES = 8 * 2**20      # bytes decoded per journal append
SLICE = 0.002                # seconds of decoding between two turns of the loop
RECEIVE_BUFFER = 8 * 2**20
MAX_DATAGRAM_MESSAGE = 8 * 2**20   # a reassembled or decompressed GELF message


class UdpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.datagrams = Counter(
            "egen_udp_datagrams_total",
            "Datagrams by listener and outcome: received, chunk (a GELF chunk kept until "
            "its message is complete), accepted, filtered (below min_level), invalid (not "
            "a usable event), rejected (see egen_udp_rejected_total), dropped (queue or "
            "journal full, or over the project's rate limit).", ["listener", "outcome"],
            registry=registry)
        self.rejected = Counter(
            "egen_udp_rejected_total",
            "Datagrams rejected, by listener and reason: source (not in allowed_sources), "
            "format, parse, chunk, too_large, expired (incomplete GELF messages), "
            "connections (a GELF TCP listener at its connection limit, in all or for "
            "one source), queue_full, journal_full, rate_limited (the project's "
            "rate_limit).", ["listener", "reason"], registry=registry)


@dataclass
class _Listener:
    settings: DatagramListenerSettings
    label: str
    decoder: DatagramDecoder
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    pending: deque[tuple[bytes, Any, float]] = field(default_factory=deque)
    allowed: dict[str, bool] = field(default_factory=dict)
    transport: asyncio.DatagramTransport | None = None
    server: asyncio.Server | None = None        # GELF over TCP instead of UDP
    closed: bool = False
    pending_bytes: int = 0
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    per_source: dict[str, int] = field(default_factory=dict)    # open TCP connections
    drain: asyncio.Task[None] | None = None
    project: Project | None = None
    expired_seen: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpIngest, listener: _Listener) -> None:
        self.owner = owner
        self.listener = listener

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.received(self.listener, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("udp socket error", extra=fields(listener=self.listener.label,
                                                     error=str(exc)))


class UdpIngest:
    name = "udp"

    def __init__(self, listeners: list[DatagramListenerSettings], ingestor: Ingestor,
                 projects: ProjectRegistry, registry: CollectorRegistry, *,
                 tcp: list[DatagramListenerSettings] | None = None,
                 queue_limit: int = QUEUE_LIMIT) -> None:
        self.ingestor = ingestor
        self.projects = projects
        self.metrics = UdpMetrics(registry)
        self.queue_limit = queue_limit
        self.listeners = [
            _Listener(s, str(s.listen), DatagramDecoder(
                list(s.formats), max_message_size=MAX_DATAGRAM_MESSAGE), s.networks)
            for s in listeners]
        self.tcp_listeners = [
            _Listener(s, str(s.listen), DatagramDecoder(
                list(s.formats), max_message_size=MAX_DATAGRAM_MESSAGE), s.networks)
            for s in tcp or []]
        self.addresses: list[tuple[str, int]] = []
        self.tcp_addresses: list[tuple[str, int]] = []
        self._count: dict[tuple[str, str, str], Any] = {}
        # Datagrams that reached their outcome (rejected at once, or decoded and stored),
        # and an event set whenever that number grows: tests and drains wait on it.
        self.handled = 0
        self.accepted = 0
        self._progress = asyncio.Event()

    def _handled(self, count: int) -> None:
        self.handled += count
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_handled(self, count: int) -> None:
        """Return once `count` datagrams in all have reached their outcome."""
        await self.wait_until(lambda: self.handled >= count)

    async def wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self._progress.wait()

    def _inc(self, kind: str, listener: _Listener, value: str, amount: int = 1) -> None:
        key = (kind, listener.label, value)
        child = self._count.get(key)
        if child is None:
            metric = self.metrics.datagrams if kind == "outcome" else self.metrics.rejected
            child = self._count[key] = metric.labels(listener.label, value)
        child.inc(amount)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i, listener in enumerate(self.listeners):
            self._bind_project(listener, f"ingest.udp[{i}]")
            address = listener.settings.listen
            transport, _ = await loop.create_datagram_endpoint(
                lambda listener=listener: _Protocol(self, listener),
                local_addr=(address.host, address.port))
            listener.transport = transport
            _grow_receive_buffer(transport)
            self.addresses.append(self._listening(listener, "udp",
                                                  transport.get_extra_info("sockname")))
        for i, listener in enumerate(self.tcp_listeners):
            self._bind_project(listener, f"ingest.tcp[{i}]")
            listener.server = await gelf_tcp.serve(self, listener)
            self.tcp_addresses.append(self._listening(
                listener, "tcp", listener.server.sockets[0].getsockname()))

    def _bind_project(self, listener: _Listener, where: str) -> None:
        listener.project = self._project(listener)
        if listener.project is None:
            raise ValueError(f"{where}.project: no project named "
                             f"{listener.settings.project!r}")

    def _listening(self, listener: _Listener, proto: str, sockname: Any) -> tuple[str, int]:
        host, port = sockname[:2]
        address = listener.settings.listen
        listener.label = f"{proto}:{address.host}:{address.port}" if proto == "tcp" \
            else f"{address.host}:{address.port}"
        assert listener.project is not None
        log.info("listening", extra=fields(proto=proto, address=f"{host}:{port}",
                                           project=listener.project.name))
        return host, port

    def _project(self, listener: _Listener) -> Project | None:
        return next((p for p in self.projects.by_id.values()
                     if p.name == listener.settings.project), None)

    async def stop(self) -> None:
        every = [*self.listeners, *self.tcp_listeners]
        for listener in every:
            listener.closed = True
            if listener.transport is not None:
                listener.transport.close()
            if listener.server is not None:
                listener.server.close()
            for writer in list(listener.connections):
                writer.close()
        await asyncio.gather(*(lst.drain for lst in every if lst.drain),
                             return_exceptions=True)
        self.addresses = []
        self.tcp_addresses = []

    def full(self, listener: _Listener) -> bool:
        return (len(listener.pending) >= self.queue_limit
                or listener.pending_bytes >= QUEUE_BYTES)

    # -- the receive path: cheap, no parsing ----------------------------------------------

    def received(self, listener: _Listener, data: bytes, addr: Any) -> None:
        if listener.closed:
            return
        self._inc("outcome", listener, "received")
        if listener.transport is not None and not self.source_allowed(listener, addr):
            self.note_rejected(listener, "source")
            return
        if self.full(listener):
            self._inc("outcome", listener, "dropped")
            self._inc("reason", listener, "queue_full")
            self._handled(1)
            return
        listener.pending.append((data, addr, time.time()))
        listener.pending_bytes += len(data)
        if listener.drain is None:
            listener.drain = asyncio.get_running_loop().create_task(self._drain(listener))

    def note_rejected(self, listener: _Listener, reason: str) -> None:
        self._inc("outcome", listener, "rejected")
        self._inc("reason", listener, reason)
        self._handled(1)

    def source_allowed(self, listener: _Listener, addr: Any) -> bool:
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        allowed = listener.allowed.get(host)
        return self._allowed(listener, host) if allowed is None else allowed

    def _allowed(self, listener: _Listener, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            allowed = False
        else:
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            allowed = any(ip in network for network in listener.networks)
        if len(listener.allowed) >= 4096:
            listener.allowed.clear()
        listener.allowed[host] = allowed
        return allowed

    # -- the drain task: decode in batches, one journal append each ---------------------

    async def _drain(self, listener: _Listener) -> None:
        try:
            while listener.pending:
                count = self._batch_size(listener)
                records = await self._decode_batch(listener, count)
                if records:
                    await self._append(listener, records)
                self._handled(count)
                if not records:
                    await asyncio.sleep(0)      # let the socket deliver more first
        except Exception:
            log.exception("udp drain failed", extra=fields(listener=listener.label))
        finally:
            listener.drain = None
            if listener.pending and not listener.closed:
                listener.drain = asyncio.get_running_loop().create_task(
                    self._drain(listener))

    @staticmethod
    def _batch_size(listener: _Listener) -> int:
        """Up to BATCH datagrams, and no more than BATCH_BYTES of them (at least one)."""
        count = size = 0
        for data, _, _ in listener.pending:
            if count == BATCH or (count and size + len(data) > BATCH_BYTES):
                break
            count += 1
            size += len(data)
        return count

    async def _decode_batch(self, listener: _Listener, count: int) -> list[bytes]:
        """Decode `count` queued datagrams into journal records. Every SLICE seconds the
        loop gets a turn, so the socket is read while a batch is decoded: a burst waits
        in the queue (bounded, counted when full) instead of overflowing the kernel's
        receive buffer, which holds far fewer datagrams than a batch takes to decode."""
        project = self._project(listener) or listener.project
        assert project is not None
        records = []
        turn = time.monotonic() + SLICE
        for _ in range(count):
            if time.monotonic() >= turn:
                await asyncio.sleep(0)
                turn = time.monotonic() + SLICE
            data, addr, received = listener.pending.popleft()
            listener.pending_bytes -= len(data)
            try:
                event = listener.decoder.decode(data, addr, received)
                if event is None:
                    self._inc("outcome", listener, "chunk")
                    continue
                result, record = self.ingestor.prepare(
                    project, event, source="udp", received=received,
                    min_level=listener.settings.min_level or project.min_level)
            except Rejected as err:
                self._inc("outcome", listener, "rejected")
                self._inc("reason", listener, err.reason)
                continue
            except Exception:    # a bug must cost this datagram, not the batch
                log.exception("cannot decode a datagram", extra=fields(
                    listener=listener.label))
                self._inc("outcome", listener, "invalid")
                continue
            if record is None:
                self._inc("outcome", listener, result.outcome)
                continue
            records.append(record)
        allowed = self.ingestor.take(project, len(records), "udp")
        if allowed < len(records):
            self._inc("outcome", listener, "dropped", len(records) - allowed)
            self._inc("reason", listener, "rate_limited", len(records) - allowed)
            del records[allowed:]
        expired = listener.decoder.assembler.expired
        if expired > listener.expired_seen:
            self._inc("reason", listener, "expired", expired - listener.expired_seen)
            listener.expired_seen = expired
        return records

    async def _append(self, listener: _Listener, records: list[bytes]) -> None:
        try:
            await self.ingestor.journal.append_many(records)
        except JournalFull:
            self._inc("outcome", listener, "dropped", len(records))
            self._inc("reason", listener, "journal_full", len(records))
            self.ingestor.metrics.outcome("udp", "refused").inc(len(records))
            return
        self.accepted += len(records)
        self._inc("outcome", listener, "accepted", len(records))
        self.ingestor.metrics.outcome("udp", "accepted").inc(len(records))


def _grow_receive_buffer(transport: asyncio.DatagramTransport) -> None:
    """Ask for an 8 MiB socket buffer (the kernel caps it at net.core.rmem_max): bursts
    wait in the kernel instead of being dropped there while a batch is decoded, as
    Graylog advises for its UDP inputs."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
