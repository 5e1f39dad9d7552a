"""Where to deliver a domain's mail: MX lookup and host selection per RFC 5321 §5.

dnspython does the DNS (transport, retries over TCP, CNAME chains, IDNA encoding). What is
ours is the mail-specific policy on top of it: preference order with a random order among
equal preferences (so load spreads over equal MX hosts), the implicit MX when a domain has
none, RFC 7505 null MX, sorting every failure into "defer" (DnsTemporaryError) or "bounce"
(DnsPermanentError), and a bounded TTL cache of positive and negative answers, because a
queue run asks about the same few domains thousands of times. dnspython's own cache is off:
it keys on wall time, caches nothing negative for NXDOMAIN, and is not bounded the same way.

Temporary failures are never cached: the next attempt asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver

from daemon.logs import fields, get_logger

log = get_logger("mail.mx")

MAX_TTL = 86_400  # like unbound's cache-max-ttl: a day-long stale MX would hurt more than help
MAX_NEGATIVE_TTL = 3_600  # RFC 2308 §5 suggests 1-3 hours; new domains should not wait long
DEFAULT_NEGATIVE_TTL = 300  # RFC 2308 answers without an SOA (dnspython uses the same)

_MX = dns.rdatatype.MX
_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA


class DnsTemporaryError(Exception):
    """Timeouts, SERVFAIL, no answer from any nameserver: the caller defers and retries."""


class DnsPermanentError(Exception):
    """NXDOMAIN, null MX, no MX and no address: the caller bounces; the message says which.

    `null_mx` lets the caller pick RFC 7505's own status (556 5.1.10) without parsing text.
    """

    def __init__(self, message: str, *, null_mx: bool = False) -> None:
        super().__init__(message)
        self.null_mx = null_mx


@dataclass(frozen=True)
class MxHost:
    """One host to try: an MX target, or the domain itself when it has no MX (preference 0).

    `name` is the ASCII (IDNA) form without the final dot; `addresses` are IPv4 then IPv6
    (IPv6 first if the resolver prefers it), in random order within each family.
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class _Answer:
    """One lookup's outcome as cached: its records, or a negative answer (none of them)."""

    records: tuple[dns.rdata.Rdata, ...]
    nxdomain: bool = False


def parse_nameserver(text: str) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:5353", "::1" or "[::1]:5353" → (address, port); else ValueError.

    A bare IPv6 address takes port 53: "::1:53" is the address ::1:53, so ports on IPv6
    need the brackets.
    """
    hint = 'write an IP address with an optional port: "1.2.3.4", "1.2.3.4:5353", "[::1]:5353"'
    host, port = text.strip(), "53"
    if host.startswith("["):
        close = host.find("]")
        rest = host[close + 1:]
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: unbalanced brackets; {hint}")
        host, port = host[1:close], rest[1:] if rest else "53"
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r} is not an IP address; {hint}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"nameserver {text!r}: port must be a number from 1 to 65535")
    return str(address), int(port)


def _domain_name(domain: str) -> dns.name.Name:
    try:
        name = dns.name.from_text(domain.strip())
    except (dns.exception.DNSException, UnicodeError, ValueError) as e:
        raise DnsPermanentError(f"{domain!r} is not a valid domain name: {e}") from None
    if len(name) < 2:  # "", "." and "@" all parse as the root
        raise DnsPermanentError(f"{domain!r} is not a valid domain name")
    return name


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _negative_ttl(error: dns.resolver.NXDOMAIN) -> int:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) from the NXDOMAIN response, else 5 minutes."""
    for response in error.responses().values():
        try:
            return response.resolve_chaining().minimum_ttl
        except dns.exception.DNSException:
            break
    return DEFAULT_NEGATIVE_TTL


class MxResolver:
    """Resolves a mail domain to the ordered hosts to try; one per daemon, shared by all."""

    def __init__(self, *, nameservers: Sequence[str] = (), timeout: float = 5.0,
                 cache_size: int = 10_000, prefer_ipv6: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (no cache) or more, not {cache_size}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        parsed = [parse_nameserver(text) for text in nameservers]  # before any I/O
        self._resolver = dns.asyncresolver.Resolver(configure=not parsed)
        if parsed:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                          for address, port in parsed]
        # Per attempt and in total, so a silent nameserver costs `timeout`, not retries of it.
        self._resolver.timeout = self._resolver.lifetime = timeout
        self._resolver.cache = None
        self.timeout = timeout
        self.prefer_ipv6 = prefer_ipv6
        self.cache_size = cache_size
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: OrderedDict[tuple[dns.name.Name, int], tuple[float, _Answer]] = (
            OrderedDict())

    async def resolve(self, domain: str) -> list[MxHost]:
        """The hosts to try for `domain`, in order; raises one of the two DNS errors."""
        name = _domain_name(domain)
        shown = _text(name)
        mx = await self._lookup(name, _MX)
        if mx.nxdomain:
            raise DnsPermanentError(f"{shown} does not exist (NXDOMAIN)")
        if not mx.records:  # RFC 5321 §5.1: no MX, so the domain is its own implicit MX
            addresses, error = await self._addresses(name)
            if addresses:
                return [MxHost(shown, 0, addresses)]
            if error is not None:
                raise error
            raise DnsPermanentError(f"{shown} has no MX and no A/AAAA records")
        records = [(r.preference, r.exchange) for r in mx.records]  # type: ignore[attr-defined]
        if all(exchange == dns.name.root for _, exchange in records):
            raise DnsPermanentError(
                f"{shown} publishes a null MX (RFC 7505): it accepts no mail", null_mx=True)
        # Best preference per host; a "." mixed in with real hosts is skipped (RFC 7505 §3).
        best: dict[dns.name.Name, int] = {}
        for preference, exchange in sorted(records, key=lambda record: record[0]):
            if exchange != dns.name.root:
                best.setdefault(exchange, preference)
        order = list(best.items())
        self._rng.shuffle(order)
        order.sort(key=lambda item: item[1])  # stable: equal preferences keep the shuffle
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._addresses(host)) for host, _ in order]
        hosts: list[MxHost] = []
        errors: list[DnsTemporaryError] = []
        for (host, preference), task in zip(order, tasks, strict=True):
            addresses, error = task.result()
            if addresses:
                hosts.append(MxHost(_text(host), preference, addresses))
            elif error is not None:
                errors.append(error)
        if hosts:
            return hosts
        names = ", ".join(_text(host) for host, _ in order)
        if errors:
            raise DnsTemporaryError(
                f"no address for any MX host of {shown} ({names}) yet: {errors[0]}")
        raise DnsPermanentError(f"none of the MX hosts of {shown} ({names}) has an address")

    async def _addresses(self, name: dns.name.Name
                         ) -> tuple[tuple[str, ...], DnsTemporaryError | None]:
        """A and AAAA of one host, looked up together; a temporary failure of either is
        returned (not raised) so one flaky host does not hide the others."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._try_lookup(name, rdtype)) for rdtype in (_A, _AAAA)]
        results = [task.result() for task in tasks]
        if self.prefer_ipv6:
            results.reverse()
        addresses: list[str] = []
        for result in results:
            if isinstance(result, _Answer):
                # Random order within a family, like Postfix's smtp_randomize_addresses;
                # sorted first so a seeded rng gives a repeatable order.
                family = sorted(rdata.address for rdata in result.records)  # type: ignore[attr-defined]
                self._rng.shuffle(family)
                addresses += family
        errors = [result for result in results if isinstance(result, DnsTemporaryError)]
        return tuple(addresses), errors[0] if errors else None

    async def _try_lookup(self, name: dns.name.Name, rdtype: int
                          ) -> _Answer | DnsTemporaryError:
        try:
            return await self._lookup(name, rdtype)
        except DnsTemporaryError as e:
            return e

    async def _lookup(self, name: dns.name.Name, rdtype: int) -> _Answer:
        """One query through the cache; raises DnsTemporaryError, never caches one."""
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            if self._clock() < cached[0]:
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        what = f"{dns.rdatatype.to_text(rdtype)} lookup for {_text(name)}"
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN as e:
            result, ttl = _Answer((), nxdomain=True), min(_negative_ttl(e), MAX_NEGATIVE_TTL)
        except dns.exception.Timeout:
            raise self._temporary(what, f"timed out after {self.timeout:g}s") from None
        except dns.resolver.NoNameservers as e:
            raise self._temporary(what, f"no nameserver answered: {e}") from None
        except (dns.exception.DNSException, OSError) as e:
            raise self._temporary(what, f"failed: {e}") from None
        else:
            ttl = answer.chaining_result.minimum_ttl  # includes the CNAMEs on the way
            if answer.rrset is None:
                result, ttl = _Answer(()), min(ttl, MAX_NEGATIVE_TTL)
            else:
                result, ttl = _Answer(tuple(answer.rrset)), min(ttl, MAX_TTL)
        if ttl > 0 and self.cache_size > 0:
            self._cache[key] = (self._clock() + ttl, result)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    def _temporary(what: str, reason: str) -> DnsTemporaryError:
        log.debug("dns lookup failed", extra=fields(lookup=what, reason=reason))
        return DnsTemporaryError(f"{what} {reason}")
