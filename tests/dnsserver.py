"""A small DNS answerer for tests: real UDP and TCP on loopback, in the test's own loop.

It answers like a recursive resolver would (CNAME chains chased, SOA in the authority
section of negative answers), so the code under test talks to it through dnspython's real
resolver instead of a mock. Names can be made to SERVFAIL or to stall (never answer), and
every question is counted so tests can assert what a cache saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

DEFAULT_TTL = 300
MAX_CHAIN = 12

# A record set is its rdata texts, or (texts, ttl).
Records = Mapping[tuple[str, str], Sequence[str] | tuple[Sequence[str], int]]


def _name(text: str | dns.name.Name) -> dns.name.Name:
    return text if isinstance(text, dns.name.Name) else dns.name.from_text(text)


def _key(name: str | dns.name.Name) -> str:
    return _name(name).to_text(omit_final_dot=True).lower()


class DnsServer:
    """Serves `records` keyed by (name, rdtype) on one UDP and one TCP port (same number)
    of `host` (127.0.0.1, or ::1 to test IPv6 nameserver addresses).

    `negative_ttl` is the SOA minimum (and SOA TTL) put in negative answers; None sends
    negative answers without an SOA.
    """

    def __init__(self, records: Records | None = None, *, negative_ttl: int | None = 300,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.negative_ttl = negative_ttl
        self.servfail: set[str] = set()
        self.stall: set[str] = set()
        self.queries: Counter[tuple[str, str]] = Counter()
        self._rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        for (name, rdtype), spec in (records or {}).items():
            if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], int):
                self.set(name, rdtype, spec[0], ttl=spec[1])
            else:
                self.set(name, rdtype, spec)  # type: ignore[arg-type]

    # -- zone contents -----------------------------------------------------------------

    def set(self, name: str, rdtype: str, texts: Iterable[str], *, ttl: int = DEFAULT_TTL) -> None:
        """Replace the record set; an empty `texts` removes it."""
        key = (_name(name), dns.rdatatype.from_text(rdtype))
        texts = list(texts)
        if not texts:
            self._rrsets.pop(key, None)
            return
        self._rrsets[key] = dns.rrset.from_text_list(key[0], ttl, "IN", rdtype, texts)

    def clear(self) -> None:
        self._rrsets.clear()
        self.servfail.clear()
        self.stall.clear()
        self.queries.clear()

    def count(self, name: str, rdtype: str) -> int:
        """How many questions for (name, rdtype) arrived, over UDP and TCP together."""
        return self.queries[(_key(name), rdtype.upper())]

    def _exists(self, name: dns.name.Name) -> bool:
        """A name exists if it owns records or is an ancestor of one (empty non-terminal)."""
        return any(owner.is_subdomain(name) for owner, _ in self._rrsets)

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        if self.negative_ttl is None:
            return None
        apex = name.split(min(3, len(name)))[1] if len(name) > 1 else name
        text = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {self.negative_ttl}"
        return dns.rrset.from_text(apex, self.negative_ttl, "IN", "SOA", text)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to `query`, or None to stay silent (a stalled name)."""
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        self.queries[(_key(question.name), dns.rdatatype.to_text(question.rdtype))] += 1
        response = dns.message.make_response(query, recursion_available=True)
        name = question.name
        for _ in range(MAX_CHAIN):
            if _key(name) in self.stall:
                return None
            if _key(name) in self.servfail:
                response.answer.clear()
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            found = self._rrsets.get((name, question.rdtype))
            if found is not None:
                response.answer.append(found)
                return response
            cname = self._rrsets.get((name, dns.rdatatype.CNAME))
            if cname is None or question.rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            name = cname[0].target  # type: ignore[attr-defined]
        else:
            return response  # chain too long: hand back what we have, as resolvers do
        if not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = self._soa(name)
        if soa is not None:
            response.authority.append(soa)
        return response

    # -- transports --------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # UDP and TCP must share a port number; retry if TCP's is taken
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._handle_tcp, self.host, port)
            except OSError:
                transport.close()
                continue
            self._transport = transport  # type: ignore[assignment]
            self.port = port
            return
        raise RuntimeError("could not bind UDP and TCP on the same port")

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()

    async def _handle_tcp(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                try:
                    query = dns.message.from_wire(await reader.readexactly(length))
                except dns.exception.DNSException:
                    break
                response = self.answer(query)
                if response is not None:
                    writer.write(response.to_wire(prepend_length=True))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        response = self.server.answer(query)
        if response is None or self.transport is None:
            return
        limit = query.payload if query.edns >= 0 else 512
        # Too big for UDP: send what fits with TC set, and the client retries over TCP.
        self.transport.sendto(response.to_wire(max_size=limit, prefer_truncation=True), addr)
