"""`egen dns check`: query what the sending domains publish and judge it against what egen
does (its addresses, its DKIM keys, its HELO name), one verdict per thing to fix, each
with the exact record or step that fixes it.

Receivers judge mail by these records long after the deploy, and the failures are silent
(a spam folder, a DMARC report nobody reads), so the check is strict where receivers are:
an SPF record past its lookup limits is as good as none, and a question the DNS did not
answer is a failure, so a deploy gate never passes on an unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from daemon.config import Settings
from daemon.dnssetup.checks_host import mta_sts_check, ptr_check, tls_rpt_check
from daemon.dnssetup.checks_mail import dkim_check, dmarc_checks
from daemon.dnssetup.probe import Check, QueryFailed, could_not_query
from daemon.dnssetup.spf import (
    MAX_LOOKUPS,
    MAX_VOID,
    SpfSyntaxError,
    count_lookups,
    evaluate,
    parse,
    spf_records,
)
from daemon.mail.delivery.mx import parse_nameserver
from daemon.mail.dkimkeys import DkimKey

__all__ = ["Check", "checks_json", "exit_status", "render_text", "resolver_for",
           "run_checks"]

#: At this many DNS-querying terms the record still works, but one more include breaks it.
WARN_LOOKUPS = 9


def resolver_for(nameserver: str | None, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    """A resolver asking `nameserver` ("HOST[:PORT]", IPv6 in brackets), or the system's
    (resolv.conf) for None. ValueError for a malformed nameserver."""
    if nameserver is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        address, port = parse_nameserver(nameserver)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)]
    resolver.timeout = resolver.lifetime = timeout
    resolver.cache = dns.resolver.Cache()  # includes and MX hosts are asked about repeatedly
    return resolver


def sending_domains(settings: Settings, keys: list[DkimKey]) -> list[str]:
    """The DKIM keys' domains, then dns.domains: lowercased, each once, in order."""
    names = [k.domain for k in settings.dkim.keys] + [k.domain for k in keys]
    names += settings.dns.domains
    return list(dict.fromkeys(name.lower().rstrip(".") for name in names))


async def run_checks(settings: Settings, *, keys: list[DkimKey],
                     resolver: dns.asyncresolver.Resolver) -> list[Check]:
    """Every check for every sending domain, then reverse DNS of each relay address."""
    domains = sending_domains(settings, keys)
    signing = {k.domain for k in keys} | {k.domain.lower() for k in settings.dkim.keys}
    async with asyncio.TaskGroup() as group:
        per_domain = [group.create_task(_domain_checks(
            settings, domain, [k for k in keys if k.domain == domain], signing, resolver))
            for domain in domains]
        per_address = [group.create_task(ptr_check(
            address, settings.hostname, str(settings.source), resolver))
            for address in settings.dns.addresses]
    return [c for task in per_domain for c in task.result()] + [t.result() for t in per_address]


async def _domain_checks(settings: Settings, domain: str, keys: list[DkimKey],
                         signing: set[str], resolver: dns.asyncresolver.Resolver
                         ) -> list[Check]:
    checks = await spf_checks(settings, domain, resolver)
    for key in keys:
        checks.append(await dkim_check(key, resolver))
    checks += await dmarc_checks(settings, domain, signing, resolver)
    for check in (await mta_sts_check(settings, domain, resolver),
                  await tls_rpt_check(settings, domain, resolver)):
        if check is not None:
            checks.append(check)
    return checks


def exit_status(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings allowed), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def checks_json(checks: Iterable[Check]) -> list[dict[str, str]]:
    return [dataclasses.asdict(c) for c in checks]


def render_text(checks: Iterable[Check]) -> str:
    """One line per check; the fix indented under each one that did not pass."""
    lines: list[str] = []
    for check in checks:
        lines.append(f"{check.status.upper():<4}  {check.name}  {check.detail}")
        if check.fix and check.status != "pass":
            lines.append(f"      fix: {check.fix}")
    return "".join(line + "\n" for line in lines)


# -- SPF ---------------------------------------------------------------------------------

def _ip_term(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"ip{ip.version}:{ip.compressed}"


def suggested_spf(settings: Settings, published: Sequence[str] = ()) -> str:
    """The record egen's config asks for, keeping the senders of `published` records:
    their terms first (no all, no redirect), then the relay's addresses and spf_include.
    Sorted, because DNS hands records over in any order and the fix should not vary."""
    terms: list[str] = []
    for record in sorted(published):
        terms += [t for t in record.split()[1:] if t.lower().lstrip("+-~?") != "all"
                  and "=" not in t]
    terms += [_ip_term(a) for a in settings.dns.addresses] + settings.dns.spf_include
    unique = list(dict.fromkeys(t.removeprefix("+") for t in terms))
    return " ".join(["v=spf1", *unique, settings.dns.spf_all])


async def spf_checks(settings: Settings, domain: str,
                     resolver: dns.asyncresolver.Resolver) -> list[Check]:
    """The record (exactly one, parseable), each address authorized, and the limits."""
    name = f"spf {domain}"
    try:
        _any, records = await spf_records(domain, resolver)
    except QueryFailed as e:
        return [could_not_query(name, e, domain)]
    if not records:
        return [Check(name, "fail", f"no SPF record at {domain}",
                      f"publish TXT at {domain}: {suggested_spf(settings)}")]
    if len(records) > 1:
        return [Check(name, "fail", f"{len(records)} SPF records (receivers return permerror "
                      f"for all of them): {' | '.join(records)}",
                      f"replace them with one TXT record at {domain}: "
                      f"{suggested_spf(settings, records)}")]
    record = records[0]
    try:
        parse(record)
    except SpfSyntaxError as e:
        return [Check(name, "fail", f"{e} (permerror): {record}",
                      f"publish instead at {domain}: {suggested_spf(settings)}")]
    checks = [Check(name, "pass", record)]
    for address in settings.dns.addresses:
        checks.append(await _authorization(domain, record, address, resolver))
    checks.append(await _limits(domain, resolver))
    return checks


async def _authorization(domain: str, record: str, address: str,
                         resolver: dns.asyncresolver.Resolver) -> Check:
    name = f"spf {address} for {domain}"
    term = _ip_term(address)
    version, _, rest = record.partition(" ")
    with_term = f"{version} {term} {rest}".rstrip()
    verdict = await evaluate(domain, address, resolver)
    if verdict.result == "pass":
        return Check(name, "pass", f"authorized ({verdict.reason})")
    if verdict.result == "temperror":
        return Check(name, "fail", verdict.reason,
                     f"make sure the nameservers of {domain} and its includes answer")
    if verdict.result == "unknown":
        return Check(name, "warn", f"cannot tell whether {address} is authorized: "
                     f"{verdict.reason}", f"make sure the record authorizes {address}, "
                     f"e.g. publish at {domain}: {with_term}")
    if verdict.result == "permerror":
        return Check(name, "fail", f"not authorized: the record is a permerror "
                     f"({verdict.reason})", f"fix the SPF record of {domain} (see "
                     f"\"spf lookups for {domain}\"), keeping {term} in it")
    return Check(name, "fail", f"not authorized: result {verdict.result} ({verdict.reason})",
                 f"add {term} to the SPF record; publish at {domain}: {with_term}")


async def _limits(domain: str, resolver: dns.asyncresolver.Resolver) -> Check:
    name = f"spf lookups for {domain}"
    count = await count_lookups(domain, resolver)
    through = " → ".join(count.chain)
    found = f"{count.terms} DNS-querying terms, {count.void} void lookups ({through})"
    unanswered = [e for e in count.errors if e.startswith("could not query")]
    if unanswered:
        return Check(name, "fail", unanswered[0], f"make sure the nameservers of {domain} "
                     "and of the domains its SPF record includes answer, then check again")
    fixes: list[str] = []
    if count.terms > MAX_LOOKUPS:
        fixes.append(f"cut the DNS-querying terms (include, a, mx, ptr, exists, redirect) "
                     f"from {count.terms} to at most {MAX_LOOKUPS}: replace include/a/mx of "
                     f"senders you run with their ip4:/ip6: ranges, drop includes of senders "
                     f"you no longer use")
    if count.void > MAX_VOID:
        fixes.append(f"remove the terms that name nothing ({', '.join(count.void_terms)}); "
                     f"more than {MAX_VOID} such lookups are a permerror")
    if count.errors:
        fixes.append("correct what the record names: " + "; ".join(count.errors))
    if fixes:
        problems = "; ".join(count.errors)
        return Check(name, "fail", f"{found}: permerror" + (f" ({problems})" if problems
                                                            else ""), "; ".join(fixes))
    if count.terms >= WARN_LOOKUPS:
        return Check(name, "warn", f"{found}: at most {MAX_LOOKUPS} are allowed",
                     "make room before adding a sender: replace include/a/mx terms of "
                     "senders you run with their ip4:/ip6: ranges")
    return Check(name, "pass", found)
