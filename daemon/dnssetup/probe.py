"""The common ground of `egen dns check`: the verdict one check produces, and DNS queries
that keep "nothing is published" (NXDOMAIN, no answer) apart from "could not ask"
(timeout, SERVFAIL). The first is a finding about the zone; the second is an unknown, and
a deploy gate must never pass on an unknown, so it is raised and becomes a failed check.

Also the tag=value lists that DKIM key records and DMARC records share (RFC 6376 §3.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver

Status = Literal["pass", "warn", "fail"]

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Check:
    """One verdict: `name` says what was checked ("spf example.com"), `detail` what was
    found, `fix` the exact step to take (empty when there is nothing to do)."""

    name: str
    status: Status
    detail: str
    fix: str = ""


class QueryFailed(Exception):
    """The question could not be answered (timeout, SERVFAIL, refused, network error)."""


def could_not_query(name: str, error: QueryFailed, where: str) -> Check:
    """The failed check for an unanswered question, pointing at the nameservers."""
    return Check(name, "fail", f"could not query: {error}",
                 f"make sure the nameservers for {where} answer, then check again")


async def query(resolver: dns.asyncresolver.Resolver, name: str,
                rdtype: str) -> list[dns.rdata.Rdata]:
    """The records of `rdtype` at `name`; [] when the name does not exist or has none
    (what RFC 7208 calls a void lookup). Raises QueryFailed when no answer came, and
    ValueError for a name that is not a domain name."""
    try:
        qname = dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError) as e:
        raise ValueError(f"{name!r} is not a valid domain name: {e}") from None
    what = f"{rdtype} {qname.to_text(omit_final_dot=True)}"
    try:
        answer = await resolver.resolve(qname, dns.rdatatype.from_text(rdtype),
                                        raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.Timeout:
        raise QueryFailed(f"{what}: timed out") from None
    except dns.resolver.NoNameservers:
        raise QueryFailed(f"{what}: no nameserver answered (SERVFAIL or refused)") from None
    except (dns.exception.DNSException, OSError) as e:
        raise QueryFailed(f"{what}: {e}") from None
    return list(answer.rrset) if answer.rrset is not None else []


async def txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """Each TXT record at `name` as one string: its character-strings concatenated without
    separators, as SPF, DKIM and DMARC all read them."""
    records = await query(resolver, name, "TXT")
    return [b"".join(r.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
            for r in records]


def parse_tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2) in order; ValueError on a malformed or repeated tag.
    Tag names keep their case; values are stripped of surrounding whitespace."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not _TAG_NAME.fullmatch(name):
            raise ValueError(f"{part.strip()!r} is not tag=value")
        if name in tags:
            raise ValueError(f"tag {name}= appears twice")
        tags[name] = value.strip()
    return tags


def parent_domains(domain: str) -> list[str]:
    """`domain` and its parents down to two labels: a.b.example.com → [a.b.example.com,
    b.example.com, example.com]."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]
