"""The DNS records an operator must publish so that mail relayed by egen is accepted: SPF,
DKIM, DMARC (with external report authorization), MX, MTA-STS, TLS-RPT, and the reverse
and forward records of the relay's addresses.

Pure functions of the settings and the loaded keys, with no DNS queries: the CLI prints
the result and a checker compares it with what is published. Most delivery failures of a
new relay come from these records, so each one carries a note saying why it is needed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

import dns.reversename

from daemon.config import Settings
from daemon.dnssetup.settings import DnsSettings
from daemon.mail.dkimkeys import DkimKey, txt_record_strings

TTL = 3600
#: Tags RFC 9989 removed from DMARC; still honoured by some old receivers, never emitted.
REMOVED_DMARC_TAGS = ("pct", "rf", "ri")

# Second-level labels under which registrations happen one level deeper (example.co.uk).
# A small stand-in for the Public Suffix List: a miss only adds or omits one report
# authorization record, never changes the records of the domain itself.
_SHORT_PUBLIC_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au",
    "co.nz", "org.nz", "net.nz", "co.jp", "ne.jp", "or.jp", "ac.jp",
    "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "co.za", "org.za",
    "co.in", "net.in", "org.in", "com.mx", "com.tr", "co.il", "co.kr", "com.sg",
    "com.ar", "com.hk", "com.tw", "co.id", "com.my", "com.ph", "co.th",
})
_ALL = re.compile(r"[+?~-]?all", re.IGNORECASE)
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=", re.IGNORECASE)
_IP_TERM = re.compile(r"([+?~-]?)(ip4|ip6):(\S+)", re.IGNORECASE)
_SINGLETON_MODIFIERS = ("redirect", "exp")   # RFC 7208 §6: at most once each


@dataclass(frozen=True)
class DnsRecord:
    """One record: owner name (FQDN without the trailing dot), type, value (TXT: the whole
    unsplit text) and a one-sentence note on why it is needed or what to do."""

    name: str
    type: str
    value: str
    note: str = ""

    def strings(self) -> list[str]:
        """The TXT value as character-strings of at most 255 octets, all in one record."""
        return txt_record_strings(self.value) if self.type == "TXT" else [self.value]

    def zone_line(self) -> str:
        """The record in BIND zone-file syntax, ready to paste."""
        if self.type == "TXT":
            quoted = [_quote(s) for s in self.strings()]
            rdata = quoted[0] if len(quoted) == 1 else f"( {' '.join(quoted)} )"
        elif self.type in ("MX", "PTR", "CNAME", "NS"):
            rdata = self.value if self.value.endswith(".") else f"{self.value}."
        else:
            rdata = self.value
        if self.type == "PTR":  # lives in the provider's reverse zone, with its TTL
            return f"{self.name}. IN PTR {rdata}"
        return f"{self.name}. {TTL} IN {self.type} {rdata}"


def _quote(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _norm_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def sending_domains(settings: Settings) -> list[str]:
    """The DKIM keys' domains, then dns.domains: lowercased, each once, in config order."""
    return _dedupe([_norm_name(k.domain) for k in settings.dkim.keys]
                   + [_norm_name(d) for d in settings.dns.domains])


def _ip_term(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"ip{ip.version}:{ip.compressed}"


def _term_key(term: str) -> str:
    """Identity of an SPF term for deduplication: "+" is the default qualifier, and
    ip4:192.0.2.1 is ip4:192.0.2.1/32."""
    lowered = term.lower().removeprefix("+")
    match = _IP_TERM.fullmatch(lowered)
    if match:
        try:
            net = ipaddress.ip_network(match[3], strict=False)
        except ValueError:
            return lowered
        return f"{match[1]}{match[2]}:{net}"
    modifier = _MODIFIER.match(lowered)
    if modifier and modifier[1] in _SINGLETON_MODIFIERS:
        return modifier[1] + "="
    return lowered


def _covers(terms: list[str], address: str) -> bool:
    """An address already passes through a "+"-qualified ip4/ip6 term of the record."""
    ip = ipaddress.ip_address(address)
    for term in terms:
        match = _IP_TERM.fullmatch(term)
        if not match or match[1] not in ("", "+"):
            continue
        try:
            if ip in ipaddress.ip_network(match[3], strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def spf_value(dns: DnsSettings, existing: str | None = None) -> str:
    """The SPF record: the relay's addresses, the spf_include terms, then the all term.

    A domain must have exactly one v=spf1 record: with two, receivers return permerror
    and SPF fails for every message (RFC 7208 §3.2). So when `existing` (the published
    record) is given, the result is that record merged with egen's terms, meant to
    replace it: its terms are kept in order, the missing ip4/ip6/include terms are added
    before the all term, duplicates are dropped, and its all qualifier is kept unless it
    protects nothing (+all, ?all: then dns.spf_all). Mechanisms after an all term are
    never evaluated and are dropped; redirect= is kept only when there is no all term
    (an all term makes receivers ignore it).
    """
    tokens = [t for t in (existing or "").split() if t.lower() != "v=spf1"]
    mechanisms: list[str] = []
    modifiers: list[str] = []
    all_term: str | None = None
    for token in tokens:
        if _MODIFIER.match(token):
            modifiers.append(token)
        elif _ALL.fullmatch(token):
            all_term = all_term or token.lower()
        elif all_term is None:
            mechanisms.append(token)
    for address in dns.addresses:
        if not _covers(mechanisms, address):
            mechanisms.append(_ip_term(address))
    mechanisms.extend(dns.spf_include)
    if all_term is not None:
        modifiers = [m for m in modifiers if not m.lower().startswith("redirect=")]
        if all_term in ("all", "+all", "?all"):
            all_term = dns.spf_all
    elif not any(m.lower().startswith("redirect=") for m in modifiers):
        all_term = dns.spf_all
    seen: set[str] = set()
    terms = []
    for term in mechanisms + modifiers:
        key = _term_key(term)
        if key not in seen:
            seen.add(key)
            terms.append(term)
    # redirect= last when there is no all term, like all would be.
    terms.sort(key=lambda t: t.lower().startswith("redirect="))
    return " ".join(["v=spf1", *terms, *([all_term] if all_term else [])])


def dmarc_value(dns: DnsSettings) -> str:
    """The DMARC record (RFC 9989); relaxed alignment is the default and is left out."""
    tags = ["v=DMARC1", f"p={dns.dmarc_policy}"]
    if dns.dmarc_subdomain_policy:
        tags.append(f"sp={dns.dmarc_subdomain_policy}")
    if dns.dmarc_nonexistent_policy:
        tags.append(f"np={dns.dmarc_nonexistent_policy}")
    if dns.dmarc_rua:
        tags.append("rua=" + ",".join(dns.dmarc_rua))
    if dns.dmarc_alignment == "strict":
        tags += ["adkim=s", "aspf=s"]
    if dns.dmarc_testing:
        tags.append("t=y")
    return "; ".join(tags)


def organizational_domain(name: str) -> str:
    """The registered domain: the last two labels, or three under a short public suffix
    such as co.uk (a simplification of the Public Suffix List)."""
    labels = _norm_name(name).split(".")
    depth = 3 if ".".join(labels[-2:]) in _SHORT_PUBLIC_SUFFIXES else 2
    return ".".join(labels[-depth:])


def report_authorization(domain: str, rua: list[str]) -> list[DnsRecord]:
    """The records other organizations must publish to accept DMARC reports for `domain`
    (external destination verification, RFC 7489 §7.1, kept by RFC 9989)."""
    domain = _norm_name(domain)
    records = []
    seen = set()
    for uri in rua:
        if not uri.lower().startswith("mailto:") or "@" not in uri:
            continue
        target = _norm_name(uri.split("!", 1)[0].rsplit("@", 1)[1])
        if organizational_domain(target) == organizational_domain(domain) or target in seen:
            continue
        seen.add(target)
        records.append(DnsRecord(
            f"{domain}._report._dmarc.{target}", "TXT", "v=DMARC1",
            f"Published by the owner of {target}, not in your zone: without it receivers "
            f"do not send {domain}'s DMARC reports to {uri}."))
    return records


def _mx_entries(dns: DnsSettings) -> list[tuple[int, str]]:
    found = [(int(entry.split()[0]), _norm_name(entry.split()[1])) for entry in dns.mx]
    return list(dict.fromkeys(found))


def mx_hosts(dns: DnsSettings) -> list[str]:
    """The MX host names of dns.mx, in order, without preference or trailing dot."""
    return _dedupe([host for _, host in _mx_entries(dns)])


def mta_sts_policy(dns: DnsSettings, hosts: list[str] | None = None) -> str:
    """The /.well-known/mta-sts.txt file (RFC 8461 §3.2), with CRLF line endings."""
    lines = ["version: STSv1", f"mode: {dns.mta_sts_mode or 'none'}"]
    lines += [f"mx: {host}" for host in (mx_hosts(dns) if hosts is None else hosts)]
    lines.append(f"max_age: {dns.mta_sts_max_age}")
    return "".join(line + "\r\n" for line in lines)


def mta_sts_id(dns: DnsSettings, hosts: list[str]) -> str:
    """The id= of the _mta-sts record: derived from the policy text, so it changes exactly
    when the policy does and senders fetch the new one (1-32 alphanumerics)."""
    return hashlib.sha256(mta_sts_policy(dns, hosts).encode("ascii")).hexdigest()[:20]


def _spf_record(domain: str, dns: DnsSettings, existing: str | None) -> DnsRecord:
    if not dns.addresses:
        note = ("dns.addresses is empty: list the relay's public addresses, or SPF does not "
                "pass for mail egen sends.")
    elif existing:
        note = ("Replaces the published SPF record (merged with it): a domain must have "
                "exactly one v=spf1 record, two make SPF fail (RFC 7208 §3.2).")
    else:
        note = ("Authorizes egen's addresses to send for the domain; if another v=spf1 record "
                "exists, merge them into one (two make SPF fail, RFC 7208 §3.2).")
    return DnsRecord(domain, "TXT", spf_value(dns, existing), note)


def _dkim_records(domain: str, keys: list[DkimKey]) -> list[DnsRecord]:
    algorithms = {key.algorithm for key in keys}
    missing = ""
    if algorithms == {"rsa"}:
        missing = (" Add an Ed25519 selector too (RFC 8463 dual signing): some receivers "
                   "prefer Ed25519.")
    elif algorithms == {"ed25519"}:
        missing = (" Add an RSA-2048 selector too (RFC 8463 dual signing): Gmail and many "
                   "receivers verify RSA only.")
    records = []
    for key in keys:
        kind = "Ed25519" if key.algorithm == "ed25519" else f"RSA-{key.key_bits}"
        note = f"Public {kind} DKIM key for selector {key.selector}."
        if key.weak:
            note += " Under 2048 bits (RFC 8301): generate a 2048-bit key and rotate to it."
        records.append(DnsRecord(key.dns_name(), "TXT", key.dns_value(), note + missing))
    return records


def _dmarc_record(domain: str, dns: DnsSettings, has_keys: bool) -> DnsRecord:
    note = ("Start with p=none and rua, read the reports until every legitimate sender "
            "passes, then move to p=quarantine and finally p=reject.")
    if not dns.dmarc_rua:
        note += " Without dns.dmarc_rua no reports arrive to tell you when that is."
    if not has_keys:
        note += (" No DKIM key is configured for this domain: DMARC then rests on SPF alone,"
                 " which forwarding breaks.")
    return DnsRecord(f"_dmarc.{domain}", "TXT", dmarc_value(dns), note)


def _address_records(hostname: str, addresses: list[str]) -> list[DnsRecord]:
    records = []
    for text in _dedupe([ipaddress.ip_address(a).compressed for a in addresses]):
        reverse = dns.reversename.from_address(text).to_text(omit_final_dot=True)
        records.append(DnsRecord(
            reverse, "PTR", hostname,
            "Gmail rejects mail from addresses without forward-confirmed reverse DNS "
            "(550-5.7.25); the PTR is set at your hosting provider, not in your zone."))
        kind = "A" if ipaddress.ip_address(text).version == 4 else "AAAA"
        records.append(DnsRecord(
            hostname, kind, text,
            f"Makes the PTR of {text} forward-confirmed: {hostname} must resolve to it."))
    return records


def build_records(settings: Settings, *, keys: list[DkimKey],
                  existing_spf: dict[str, str] | None = None,
                  include_mx: bool = False) -> list[DnsRecord]:
    """Every record to publish, per sending domain in order, then the relay's PTR and
    A/AAAA records. `existing_spf` maps a domain to its published SPF record (merged)."""
    dns_settings = settings.dns
    published = {_norm_name(d): v for d, v in (existing_spf or {}).items()}
    domains = _dedupe(sending_domains(settings) + [key.domain for key in keys])
    hosts = mx_hosts(dns_settings)
    records: list[DnsRecord] = []
    for domain in domains:
        own_keys = [key for key in keys if key.domain == domain]
        records.append(_spf_record(domain, dns_settings, published.get(domain)))
        records += _dkim_records(domain, own_keys)
        records.append(_dmarc_record(domain, dns_settings, bool(own_keys)))
        records += report_authorization(domain, dns_settings.dmarc_rua)
        if include_mx:
            records += [DnsRecord(domain, "MX", f"{preference} {host}",
                                  "Where other servers deliver mail for the domain.")
                        for preference, host in _mx_entries(dns_settings)]
        if dns_settings.mta_sts_mode is not None:
            records.append(DnsRecord(
                f"_mta-sts.{domain}", "TXT",
                f"v=STSv1; id={mta_sts_id(dns_settings, hosts)}",
                f"Serve the MTA-STS policy at https://mta-sts.{domain}/.well-known/"
                "mta-sts.txt with a valid certificate; the id changes with the policy."))
        if dns_settings.tls_rpt_rua:
            records.append(DnsRecord(
                f"_smtp._tls.{domain}", "TXT",
                "v=TLSRPTv1; rua=" + ",".join(dns_settings.tls_rpt_rua),
                "Where senders report TLS failures delivering to the domain (RFC 8460)."))
    records += _address_records(_norm_name(settings.hostname), dns_settings.addresses)
    return records


def records_json(records: list[DnsRecord]) -> list[dict[str, str]]:
    """The records as plain objects for `--format json`."""
    return [{"name": r.name, "type": r.type, "value": r.value, "note": r.note}
            for r in records]
