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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Announcement:
    """What MTA-STS and TLS-RPT records share: one TXT record at `owner` starting with
    `version`, holding exactly one `tag=`; `configured` says whether the config asks for
    it (when nothing is published and it does not, there is nothing to check)."""

    name: str
    owner: str
    version: str
    tag: str
    configured: bool
    setting: str          # the config key that asks for it, for the message
    ignored: str          # what senders do with a broken record
    fix: str


async def _one_record(spec: _Announcement, resolver: dns.asyncresolver.Resolver
                      ) -> Check | tuple[str, str] | None:
    """The single record and its tag's value, or the failing Check (None: not asked for,
    nothing published)."""
    try:
        values = await txt(resolver, spec.owner)
    except QueryFailed as e:
        return could_not_query(spec.name, e, spec.name.split()[-1])
    pattern = re.compile(rf"{re.escape(spec.version)}[ \t]*(;|$)")
    records = [v for v in values if pattern.match(v)]
    if not values:
        if not spec.configured:
            return None
        return Check(spec.name, "fail", f"no TXT record at {spec.owner}, but {spec.setting} "
                     "is set", spec.fix)
    if len(records) != 1:
        found = " | ".join(values)
        problem = (f"{len(records)} {spec.version} records" if records
                   else f"no record starts with {spec.version};")
        return Check(spec.name, "fail", f"{problem}: {spec.ignored}: {found}", spec.fix)
    fields = _fields(records[0])
    found_values = [value for key, value in (fields or []) if key == spec.tag]
    if fields is None or len(found_values) != 1:
        return Check(spec.name, "fail", f"malformed (needs exactly one {spec.tag}=): "
                     f"{records[0]}", spec.fix)
    return records[0], found_values[0]


async def mta_sts_check(settings: Settings, domain: str,
                        resolver: dns.asyncresolver.Resolver) -> Check | None:
    """`_mta-sts.<domain>`: one `v=STSv1; id=<1-32 letters and digits>` record. None when
    nothing is published and the config does not ask for MTA-STS."""
    name, owner = f"mta-sts {domain}", f"_mta-sts.{domain}"
    new_id = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    fix = (f"publish one TXT record at {owner}: v=STSv1; id={new_id} (a new id whenever the "
           f"policy at https://mta-sts.{domain}/.well-known/mta-sts.txt changes)")
    found = await _one_record(_Announcement(
        name, owner, "v=STSv1", "id", settings.dns.mta_sts_mode is not None,
        "dns.mta_sts_mode", "senders ignore MTA-STS", fix), resolver)
    if not isinstance(found, tuple):
        return found
    record, sts_id = found
    if not _STS_ID.fullmatch(sts_id):
        return Check(name, "fail", f"id={sts_id} must be 1 to 32 letters and digits "
                     f"(it has {len(sts_id)} characters): {record}", fix)
    return Check(name, "pass", f"{record} (the policy file itself is not checked)")


async def tls_rpt_check(settings: Settings, domain: str,
                        resolver: dns.asyncresolver.Resolver) -> Check | None:
    """`_smtp._tls.<domain>`: one `v=TLSRPTv1; rua=<mailto:…|https:…>` record. None when
    nothing is published and the config names no TLS-RPT addresses."""
    name, owner = f"tls-rpt {domain}", f"_smtp._tls.{domain}"
    rua = ",".join(settings.dns.tls_rpt_rua) or f"mailto:tlsrpt@{domain}"
    fix = f"publish one TXT record at {owner}: v=TLSRPTv1; rua={rua}"
    found = await _one_record(_Announcement(
        name, owner, "v=TLSRPTv1", "rua", bool(settings.dns.tls_rpt_rua),
        "dns.tls_rpt_rua", "senders send no TLS reports", fix), resolver)
    if not isinstance(found, tuple):
        return found
    record, uris = found
    bad = [uri for uri in uris.split(",") if not _TLSRPT_URI.fullmatch(uri.strip())]
    if bad:
        return Check(name, "fail", f"rua= has {', '.join(bad)}, not mailto: or https: "
                     f"addresses: {record}", fix)
    return Check(name, "pass", record)
