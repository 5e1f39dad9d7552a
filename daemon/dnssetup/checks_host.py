"""The checks about the relay host and inbound transport security: forward-confirmed
reverse DNS of each relay address, and the MTA-STS and TLS-RPT announcement records.

Many receivers refuse or downgrade mail from an address without a PTR whose name resolves
back to it, and a malformed MTA-STS or TLS-RPT record is silently ignored by senders, so
the protection it was published for is not there.
"""

from __future__ import annotations

import ipaddress
import re
import time

import dns.asyncresolver
import dns.reversename

from daemon.config import Settings
from daemon.dnssetup.probe import Check, QueryFailed, could_not_query, query, txt

_STS_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_TLSRPT_URI = re.compile(r"(mailto:[^@\s,;!]+@[^@\s,;!]+(![0-9]+[kmgt]?)?|https://\S+)",
                         re.IGNORECASE)


async def ptr_check(address: str, hostname: str, config: str,
                    resolver: dns.asyncresolver.Resolver) -> Check:
    """Forward-confirmed reverse DNS: address → PTR name → the same address, and the name
    is the one egen says in HELO (`hostname`)."""
    name = f"ptr {address}"
    ip = ipaddress.ip_address(address)
    family = "A" if ip.version == 4 else "AAAA"
    hostname = hostname.lower().rstrip(".")
    reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    forward = f"{hostname} {family} {address}"
    try:
        names = [r.to_text().rstrip(".").lower() for r in await query(resolver, reverse, "PTR")]
    except QueryFailed as e:
        return could_not_query(name, e, f"{reverse} (the hosting provider's reverse zone)")
    if not names:
        return Check(name, "fail", f"no PTR record at {reverse}",
                     f"set the reverse DNS (PTR) of {address} to {hostname} where the address "
                     f"is hosted, and publish {forward}")
    confirmed: list[str] = []
    try:
        for ptr in names:
            records = await query(resolver, ptr, family)
            if any(ipaddress.ip_address(r.to_text()) == ip for r in records):
                confirmed.append(ptr)
    except QueryFailed as e:
        return could_not_query(name, e, names[0])
    if not confirmed:
        return Check(name, "fail", f"PTR {', '.join(names)} does not resolve back to "
                     f"{address}", f"publish {names[0]} {family} {address}, or set the PTR "
                     f"of {address} to {hostname} and publish {forward}")
    if hostname not in confirmed:
        return Check(name, "warn", f"{address} → {confirmed[0]} → {address}, but egen says "
                     f"HELO {hostname}", f"set hostname = \"{confirmed[0]}\" in {config}, or "
                     f"set the PTR of {address} to {hostname} and publish {forward}")
    return Check(name, "pass", f"{address} → {hostname} → {address}")


def _fields(record: str) -> list[tuple[str, str]] | None:
    """The name=value fields after the version of an MTA-STS or TLS-RPT record (RFC 8461
    §3.1, RFC 8460 §3), or None when one is malformed."""
    fields: list[tuple[str, str]] = []
    for part in record.split(";")[1:]:
        if not part.strip(" \t"):
            continue
        field_name, eq, value = part.strip(" \t").partition("=")
        if not eq or not _FIELD_NAME.fullmatch(field_name) or not value.strip():
            return None
        fields.append((field_name, value.strip()))
    return fields


async def _announcement(owner: str, version: str, resolver: dns.asyncresolver.Resolver
                        ) -> tuple[list[str], list[str]]:
    """(all TXT values at `owner`, those starting with `version`;)."""
    values = await txt(resolver, owner)
    pattern = re.compile(rf"{re.escape(version)}[ \t]*(;|$)")
    return values, [v for v in values if pattern.match(v)]


async def mta_sts_check(settings: Settings, domain: str,
                        resolver: dns.asyncresolver.Resolver) -> Check | None:
    """`_mta-sts.<domain>`: one `v=STSv1; id=<1-32 letters and digits>` record. None when
    nothing is published and the config does not ask for MTA-STS."""
    name, owner = f"mta-sts {domain}", f"_mta-sts.{domain}"
    new_id = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    fix = (f"publish one TXT record at {owner}: v=STSv1; id={new_id} (a new id whenever the "
           f"policy at https://mta-sts.{domain}/.well-known/mta-sts.txt changes)")
    try:
        values, records = await _announcement(owner, "v=STSv1", resolver)
    except QueryFailed as e:
        return could_not_query(name, e, domain)
    if not values:
        if settings.dns.mta_sts_mode is None:
            return None
        return Check(name, "fail", f"no TXT record at {owner}, but dns.mta_sts_mode is set",
                     fix)
    if len(records) != 1:
        found = " | ".join(values)
        problem = (f"{len(records)} v=STSv1 records" if records
                   else "no record starts with v=STSv1;")
        return Check(name, "fail", f"{problem}: senders ignore MTA-STS: {found}", fix)
    fields = _fields(records[0])
    ids = [value for key, value in (fields or []) if key == "id"]
    if fields is None or len(ids) != 1:
        return Check(name, "fail", f"malformed (needs exactly one id=): {records[0]}", fix)
    if not _STS_ID.fullmatch(ids[0]):
        return Check(name, "fail", f"id={ids[0]} must be 1 to 32 letters and digits "
                     f"(it has {len(ids[0])} characters): {records[0]}", fix)
    return Check(name, "pass", f"{records[0]} (the policy file itself is not checked)")


async def tls_rpt_check(settings: Settings, domain: str,
                        resolver: dns.asyncresolver.Resolver) -> Check | None:
    """`_smtp._tls.<domain>`: one `v=TLSRPTv1; rua=<mailto:…|https:…>` record. None when
    nothing is published and the config names no TLS-RPT addresses."""
    name, owner = f"tls-rpt {domain}", f"_smtp._tls.{domain}"
    rua = ",".join(settings.dns.tls_rpt_rua) or f"mailto:tlsrpt@{domain}"
    fix = f"publish one TXT record at {owner}: v=TLSRPTv1; rua={rua}"
    try:
        values, records = await _announcement(owner, "v=TLSRPTv1", resolver)
    except QueryFailed as e:
        return could_not_query(name, e, domain)
    if not values:
        if not settings.dns.tls_rpt_rua:
            return None
        return Check(name, "fail", f"no TXT record at {owner}, but dns.tls_rpt_rua is set",
                     fix)
    if len(records) != 1:
        found = " | ".join(values)
        problem = (f"{len(records)} v=TLSRPTv1 records" if records
                   else "no record starts with v=TLSRPTv1;")
        return Check(name, "fail", f"{problem}: senders send no TLS reports: {found}", fix)
    fields = _fields(records[0])
    uris = [value for key, value in (fields or []) if key == "rua"]
    if fields is None or len(uris) != 1:
        return Check(name, "fail", f"malformed (needs exactly one rua=): {records[0]}", fix)
    bad = [uri for uri in uris[0].split(",") if not _TLSRPT_URI.fullmatch(uri.strip())]
    if bad:
        return Check(name, "fail", f"rua= has {', '.join(bad)}, not mailto: or https: "
                     f"addresses: {records[0]}", fix)
    return Check(name, "pass", records[0])
