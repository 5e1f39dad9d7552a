"""SPF (RFC 7208) as far as `egen dns check` needs it: does a domain's record authorize the
relay's addresses, and does it stay within the limits past which receivers stop reading it
(10 DNS-querying terms and 2 void lookups, §4.6.4, counted through includes and redirects)?
Both are failures a sender only learns about from bounces and DMARC reports otherwise.

Hand-written because no well-kept SPF library speaks dnspython's async resolver: pyspf is
synchronous and unmaintained, and the other evaluators are bound to their own DNS code.
It judges a record for an address, not a message: macros (%{...}) need a sender and a HELO
name, so a term that uses one makes the answer "unknown" rather than a guess. The syntax
lives in spf_record.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import dns.asyncresolver
import dns.reversename

from daemon.dnssetup.probe import QueryFailed, query, txt
from daemon.dnssetup.spf_record import (
    MECHANISMS,
    QUERYING,
    SpfRecord,
    SpfSyntaxError,
    Term,
    is_spf,
    parse,
)

__all__ = ["MAX_LOOKUPS", "MAX_VOID", "MECHANISMS", "QUERYING", "LookupCount", "SpfRecord",
           "SpfSyntaxError", "Term", "Verdict", "authorizes", "count_lookups", "evaluate",
           "is_spf", "parse", "spf_records"]

T = TypeVar("T")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror",
                 "unknown"]

QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MAX_LOOKUPS = 10
MAX_VOID = 2
#: MX hosts (or PTR names) one mechanism may look at (§4.6.4).
MAX_NAMES = 10
#: Counting goes on past the limit, to say by how much it is exceeded, up to this (which
#: also bounds how deep includes are followed: each one is a term).
HARD_CAP = 60


@dataclass
class LookupCount:
    """DNS-querying terms and void lookups through includes and redirects; `chain`: the
    records read (and terms not followed); `errors`: what else makes the record a permerror
    or unknowable; `void_terms`: the terms that looked up names with nothing there."""

    terms: int
    void: int
    chain: list[str]
    errors: list[str]
    void_terms: list[str] = field(default_factory=list)

    @property
    def over_limit(self) -> bool:
        return self.terms > MAX_LOOKUPS or self.void > MAX_VOID


@dataclass(frozen=True)
class Verdict:
    """What check_host() would return for the address, and why."""

    result: Result
    reason: str


async def spf_records(domain: str, resolver: dns.asyncresolver.Resolver) -> tuple[bool, list[str]]:
    """(whether `domain` has any TXT record, its SPF records). QueryFailed, ValueError."""
    values = await txt(resolver, domain)
    return bool(values), [v for v in values if is_spf(v)]


# -- counting ----------------------------------------------------------------------------


async def count_lookups(domain: str, resolver: dns.asyncresolver.Resolver) -> LookupCount:
    """Count what a receiver would query for `domain`'s SPF record, whatever the client."""
    counter = _Counter(resolver)
    await counter.domain(domain.lower().rstrip("."), ())
    return LookupCount(counter.terms, counter.void, counter.chain, counter.errors,
                       counter.void_terms)


class _Counter:
    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver
        self.terms = self.void = 0
        self.chain: list[str] = []
        self.errors: list[str] = []
        self.void_terms: list[str] = []

    async def domain(self, domain: str, stack: tuple[str, ...], via: str = "") -> None:
        if domain in stack:
            self.errors.append(f"loop: {' → '.join([*stack, domain])}")
            return
        self.chain.append(domain)
        try:
            any_txt, records = await spf_records(domain, self.resolver)
        except (QueryFailed, ValueError) as e:
            self.errors.append(f"could not query: {e}" if isinstance(e, QueryFailed) else str(e))
            return
        if not any_txt and stack:
            self._void(via, domain)
        if len(records) != 1:
            named = f" (named by {via} in {stack[-1]})" if stack else ""
            self.errors.append(f"{domain} has {len(records) or 'no'} SPF records{named}")
            return
        try:
            record = parse(records[0])
        except SpfSyntaxError as e:
            self.errors.append(f"{domain}: {e}")
            return
        stack = (*stack, domain)
        for term in record.terms:
            if term.mechanism in QUERYING:
                if self.terms >= HARD_CAP:
                    stopped = f"stopped counting at {HARD_CAP} lookups"
                    self.errors += [] if stopped in self.errors else [stopped]
                    return
                self.terms += 1
                await self.term(domain, term, stack)
        if record.follows_redirect and self.terms < HARD_CAP:
            assert record.redirect is not None
            self.terms += 1
            if "%" in record.redirect:
                self.chain.append(f"redirect={record.redirect} (macro: not followed)")
            else:
                await self.domain(record.redirect.lower(), stack, f"redirect={record.redirect}")

    async def term(self, domain: str, term: Term, stack: tuple[str, ...]) -> None:
        target = (term.target or domain).lower()
        if term.macro:
            if term.mechanism == "include":
                self.chain.append(f"{term.text} (macro: not followed)")
            return
        try:
            if term.mechanism == "include":
                await self.domain(target, stack, term.text)
            elif term.mechanism == "a":
                if not (await query(self.resolver, target, "A")
                        or await query(self.resolver, target, "AAAA")):
                    self._void(term.text, target)
            elif term.mechanism == "mx":
                hosts = await query(self.resolver, target, "MX")
                if not hosts:
                    self._void(term.text, target)
                elif len(hosts) > MAX_NAMES:
                    self.errors.append(f"{term.text} in {domain}: {target} has {len(hosts)} MX "
                                       f"hosts; more than {MAX_NAMES} is a permerror")
            elif term.mechanism == "exists" and not await query(self.resolver, target, "A"):
                self._void(term.text, target)
        except QueryFailed as e:
            self.errors.append(f"could not query: {e}")
        except ValueError as e:
            self.errors.append(f"{term.text} in {domain}: {e}")

    def _void(self, term: str, target: str) -> None:
        self.void += 1
        self.void_terms.append(term if target in term else f"{term} ({target})")


# -- evaluation --------------------------------------------------------------------------


async def authorizes(domain: str, ip: str, resolver: dns.asyncresolver.Resolver
                     ) -> bool | None:
    """True when `domain`'s SPF gives `ip` a pass; None when that cannot be known (DNS
    failure, a macro on the way); False otherwise, a permerror included."""
    verdict = await evaluate(domain, ip, resolver)
    if verdict.result in ("temperror", "unknown"):
        return None
    return verdict.result == "pass"


async def evaluate(domain: str, ip: str, resolver: dns.asyncresolver.Resolver) -> Verdict:
    """check_host() for an address (§4), without a sender or HELO name to expand macros."""
    address: IpAddress = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    evaluator = _Evaluator(resolver, address)
    try:
        return await evaluator.check_host(domain.lower().rstrip("."), ())
    except _Stop as stop:
        return stop.verdict


class _Stop(Exception):
    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.verdict = Verdict(result, reason)


class _Evaluator:
    def __init__(self, resolver: dns.asyncresolver.Resolver, ip: IpAddress) -> None:
        self.resolver = resolver
        self.ip = ip
        self.terms = self.void = 0

    async def check_host(self, domain: str, stack: tuple[str, ...]) -> Verdict:
        if domain in stack:
            raise _Stop("permerror", f"loop: {' → '.join([*stack, domain])}")
        _any, records = await self._ask(spf_records(domain, self.resolver))
        if not records:
            return Verdict("none", f"{domain} has no SPF record")
        if len(records) > 1:
            raise _Stop("permerror", f"{domain} has {len(records)} SPF records")
        try:
            record = parse(records[0])
        except SpfSyntaxError as e:
            raise _Stop("permerror", f"{domain}: {e}") from None
        stack = (*stack, domain)
        for term in record.terms:
            if term.mechanism in QUERYING:
                self._count(term.text)
            if await self._matches(domain, term, stack):
                return Verdict(QUALIFIERS[term.qualifier], f"{term.text} in {domain} matches")
        if record.follows_redirect:
            assert record.redirect is not None
            self._count(f"redirect={record.redirect}")
            if "%" in record.redirect:
                raise _Stop("unknown", f"redirect={record.redirect} in {domain} uses a macro")
            verdict = await self.check_host(record.redirect.lower(), stack)
            if verdict.result == "none":
                raise _Stop("permerror", f"redirect={record.redirect}: {verdict.reason}")
            return verdict
        return Verdict("neutral", f"no term in {domain} matches {self.ip}")

    def _count(self, term: str) -> None:
        self.terms += 1
        if self.terms > MAX_LOOKUPS:
            raise _Stop("permerror", f"more than {MAX_LOOKUPS} DNS lookups (at {term})")

    @staticmethod
    async def _ask(question: Awaitable[T]) -> T:
        try:
            return await question
        except QueryFailed as e:
            raise _Stop("temperror", f"could not query: {e}") from None
        except ValueError as e:  # not a domain name
            raise _Stop("permerror", str(e)) from None

    async def _lookup(self, name: str, rdtype: str, *, void: bool = True) -> list[str]:
        records = await self._ask(query(self.resolver, name, rdtype))
        if not records and void:
            self.void += 1
            if self.void > MAX_VOID:
                raise _Stop("permerror", f"more than {MAX_VOID} void lookups (at {name})")
        return [r.to_text() for r in records]

    def _in(self, addresses: list[str], term: Term) -> bool:
        cidr = term.cidr4 if self.ip.version == 4 else term.cidr6
        return any(self.ip in ipaddress.ip_network(f"{a}/{cidr}" if cidr is not None else a,
                                                   strict=False) for a in addresses)

    async def _matches(self, domain: str, term: Term, stack: tuple[str, ...]) -> bool:
        mechanism, family = term.mechanism, "A" if self.ip.version == 4 else "AAAA"
        if mechanism == "all":
            return True
        if mechanism in ("ip4", "ip6"):
            network = ipaddress.ip_network(term.target, strict=False)
            return network.version == self.ip.version and self.ip in network
        if term.macro:
            raise _Stop("unknown", f"{term.text} in {domain} uses a macro")
        target = (term.target or domain).lower()
        if mechanism == "a":
            return self._in(await self._lookup(target, family), term)
        if mechanism == "mx":
            hosts = await self._lookup(target, "MX")
            if len(hosts) > MAX_NAMES:
                raise _Stop("permerror", f"{term.text}: more than {MAX_NAMES} MX hosts")
            for host in hosts:
                exchange = host.split()[1].rstrip(".")
                if exchange and self._in(await self._lookup(exchange, family, void=False), term):
                    return True
            return False
        if mechanism == "exists":
            return bool(await self._lookup(target, "A"))
        if mechanism == "ptr":
            return await self._ptr(target)
        verdict = await self.check_host(target, stack)  # include
        if verdict.result == "none":
            raise _Stop("permerror", f"{term.text} in {domain}: {verdict.reason}")
        return verdict.result == "pass"

    async def _ptr(self, target: str) -> bool:
        """The deprecated ptr mechanism (§5.5): a validated reverse name under `target`."""
        reverse = dns.reversename.from_address(str(self.ip)).to_text()
        family = "A" if self.ip.version == 4 else "AAAA"
        names = [n.rstrip(".").lower() for n in await self._lookup(reverse, "PTR")]
        for name in names[:MAX_NAMES]:
            if (name == target or name.endswith("." + target)) and str(self.ip) in (
                    await self._lookup(name, family, void=False)):
                return True
        return False
