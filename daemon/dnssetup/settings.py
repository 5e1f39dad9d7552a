"""The `[dns]` section of egen.toml: what egen cannot know by itself about the sending
domains' DNS (the relay's public addresses, the DMARC policy and report addresses, MX and
MTA-STS). The sending domains are those of `[[dkim.keys]]` plus `dns.domains`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from daemon.typedtoml import Invalid

Policy = Literal["none", "quarantine", "reject"]
_REPORT_URI = re.compile(r"mailto:[^@\s,;!]+@[^@\s,;!]+(![0-9]+[kmgt]?)?", re.IGNORECASE)
_HOST = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\.?",
                   re.IGNORECASE)


@dataclass(frozen=True)
class DnsSettings:
    # Sending domains beyond the ones with DKIM keys.
    domains: list[str] = field(default_factory=list)
    # The relay's public addresses: SPF must authorize them and each needs a PTR whose
    # name resolves back to it (forward-confirmed reverse DNS).
    addresses: list[str] = field(default_factory=list)
    # Other senders of these domains, as SPF terms ("include:_spf.google.com").
    spf_include: list[str] = field(default_factory=list)
    # "~all" (softfail) to start with; "-all" once every sender is listed.
    spf_all: Literal["~all", "-all"] = "~all"
    # DMARC (RFC 9989): start with p=none and reports, then quarantine, then reject.
    dmarc_policy: Policy = "none"
    dmarc_subdomain_policy: Policy | None = None        # sp=
    dmarc_nonexistent_policy: Policy | None = None      # np=
    dmarc_rua: list[str] = field(default_factory=list)  # "mailto:dmarc@example.com"
    dmarc_testing: bool = False                         # t=y
    dmarc_alignment: Literal["relaxed", "strict"] = "relaxed"   # adkim= and aspf=
    # MX records to publish ("10 mx1.example.com"); empty: none (mail is only sent).
    mx: list[str] = field(default_factory=list)
    # MTA-STS for inbound mail (needs mx): mode and policy lifetime in seconds.
    mta_sts_mode: Literal["testing", "enforce", "none"] | None = None
    mta_sts_max_age: int = 604800
    # TLS-RPT report addresses ("mailto:tlsrpt@example.com").
    tls_rpt_rua: list[str] = field(default_factory=list)

    def check(self) -> None:
        for i, domain in enumerate(self.domains):
            if not _HOST.fullmatch(domain) or domain.startswith("*."):
                raise Invalid(f"domains[{i}]", f"{domain!r} is not a domain name")
        for i, text in enumerate(self.addresses):
            try:
                ipaddress.ip_address(text)
            except ValueError:
                raise Invalid(f"addresses[{i}]", f"{text!r} is not an IP address") from None
        for i, term in enumerate(self.spf_include):
            if not re.fullmatch(r"[+?~-]?(include:|a:?|mx:?|ip4:|ip6:|exists:)\S*", term):
                raise Invalid(f"spf_include[{i}]", f"{term!r} is not an SPF term (e.g. "
                              "\"include:_spf.example.net\" or \"ip4:192.0.2.0/24\")")
        for key in ("dmarc_rua", "tls_rpt_rua"):
            for i, uri in enumerate(getattr(self, key)):
                if not _REPORT_URI.fullmatch(uri) and not (
                        key == "tls_rpt_rua" and uri.startswith("https://")):
                    raise Invalid(f"{key}[{i}]", f"{uri!r} is not a report address (use "
                                  "\"mailto:reports@example.com\")")
        for i, entry in enumerate(self.mx):
            parts = entry.split()
            if len(parts) != 2 or not parts[0].isdigit() or not _HOST.fullmatch(parts[1]):
                raise Invalid(f"mx[{i}]", f"{entry!r} is not \"PREFERENCE HOST\" "
                              "(e.g. \"10 mx1.example.com\")")
        if self.mta_sts_mode is not None and not self.mx:
            raise Invalid("mta_sts_mode", "needs dns.mx: the policy lists the MX hosts")
        if not 86400 <= self.mta_sts_max_age <= 31557600:
            raise Invalid("mta_sts_max_age", "must be between 86400 (1 day) and 31557600 "
                          "(1 year) seconds (RFC 8461)")
