"""The DNS records egen tells an operator to publish. Zone lines are parsed back with
dnspython, as a nameserver loading the pasted text would, and SPF merging is checked for
the invariants that keep a domain at exactly one valid SPF record."""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import replace
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Settings, loads
from daemon.dnssetup.records import (
    REMOVED_DMARC_TAGS,
    DnsRecord,
    build_records,
    dmarc_value,
    mta_sts_id,
    mta_sts_policy,
    mx_hosts,
    organizational_domain,
    records_json,
    report_authorization,
    sending_domains,
    spf_value,
)
from daemon.dnssetup.settings import DnsSettings
from daemon.mail.dkimkeys import DkimKey, generate_key, load_key, write_private_key

KEYS = [  # domain, selector, algorithm
    ("example.com", "rsa2026", "rsa"),
    ("example.com", "ed2026", "ed25519"),
    ("Example.ORG", "s1", "rsa"),
    ("example.net", "ed1", "ed25519"),
]

DNS_TOML = """
[dns]
domains = ["example.org", "Mail.Example.info", "example.com"]
addresses = ["192.0.2.10", "2001:DB8:0:0::10"]
spf_include = ["include:_spf.example.net"]
dmarc_policy = "quarantine"
dmarc_rua = ["mailto:dmarc@example.com", "mailto:dmarc@reports.example.net"]
mx = ["10 MX1.example.com.", "20 mx2.example.com"]
mta_sts_mode = "enforce"
tls_rpt_rua = ["mailto:tlsrpt@example.com"]
"""


def config_text(dns_toml: str) -> str:
    lines = ['hostname = "relay.example.com"']
    for domain, selector, algorithm in KEYS:
        lines += ["[[dkim.keys]]", f'domain = "{domain}"', f'selector = "{selector}"',
                  f'algorithm = "{algorithm}"', f'key_file = "{selector}.pem"',
                  "generate = true"]
    return "\n".join(lines) + "\n" + dns_toml


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    for _domain, selector, algorithm in KEYS:
        write_private_key(generate_key(algorithm), path / f"{selector}.pem")
    return path


def make_settings(keydir: Path, dns_toml: str = DNS_TOML) -> Settings:
    return loads(config_text(dns_toml), source=keydir / "egen.toml")


def load_keys(cfg: Settings) -> list[DkimKey]:
    return [load_key(k.key_file, domain=k.domain, selector=k.selector) for k in cfg.dkim.keys]


@pytest.fixture(scope="module")
def full(keydir: Path) -> tuple[Settings, list[DkimKey], list[DnsRecord]]:
    cfg = make_settings(keydir)
    keys = load_keys(cfg)
    return cfg, keys, build_records(cfg, keys=keys, include_mx=True)


def by_name(records: list[DnsRecord], name: str, rtype: str = "TXT") -> list[DnsRecord]:
    return [r for r in records if r.name == name and r.type == rtype]


# --- sending domains ------------------------------------------------------------------

def test_sending_domains_are_key_domains_then_dns_domains_lowercased_once(keydir: Path):
    assert sending_domains(make_settings(keydir)) == [
        "example.com", "example.org", "example.net", "mail.example.info"]


# --- SPF ------------------------------------------------------------------------------

ADDR = ["192.0.2.10"]
INCLUDE = ["include:_spf.example.net"]


@pytest.mark.parametrize(("addresses", "include", "spf_all", "existing", "expected"), [
    (["192.0.2.10", "2001:DB8:0:0::10"], INCLUDE, "~all", None,
     "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 include:_spf.example.net ~all"),
    (["2001:db8::1"], [], "-all", None, "v=spf1 ip6:2001:db8::1 -all"),
    ([], [], "~all", None, "v=spf1 ~all"),
    # merge: keep the existing terms and -all, add ours before it
    (ADDR, INCLUDE, "~all", "v=spf1 include:_spf.google.com -all",
     "v=spf1 include:_spf.google.com ip4:192.0.2.10 include:_spf.example.net -all"),
    # +all, ?all and bare all protect nothing: replaced by spf_all
    (ADDR, [], "~all", "v=spf1 mx +all", "v=spf1 mx ip4:192.0.2.10 ~all"),
    (ADDR, [], "-all", "v=spf1 mx ?all", "v=spf1 mx ip4:192.0.2.10 -all"),
    (ADDR, [], "-all", "V=SPF1 mx ALL", "v=spf1 mx ip4:192.0.2.10 -all"),
    (ADDR, [], "-all", "v=spf1 mx ~ALL", "v=spf1 mx ip4:192.0.2.10 ~all"),
    # duplicates dropped: explicit "+", "/32" and repeated terms are the same term
    (ADDR, INCLUDE, "~all",
     "v=spf1 ip4:192.0.2.10/32 +include:_spf.example.net mx mx ~all ~all",
     "v=spf1 ip4:192.0.2.10/32 +include:_spf.example.net mx ~all"),
    # an address inside a published network is already authorized
    (["192.0.2.10", "2001:db8::10"], [], "~all", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
     "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"),
    # ...but not by a failing term
    (ADDR, [], "~all", "v=spf1 -ip4:192.0.2.0/24 -all",
     "v=spf1 -ip4:192.0.2.0/24 ip4:192.0.2.10 -all"),
    # redirect= kept only without an all term
    (ADDR, [], "~all", "v=spf1 redirect=_spf.example.net",
     "v=spf1 ip4:192.0.2.10 redirect=_spf.example.net"),
    (ADDR, [], "~all", "v=spf1 a redirect=_spf.example.net -all",
     "v=spf1 a ip4:192.0.2.10 -all"),
    # mechanisms after all are never evaluated: dropped; modifiers stay
    (ADDR, [], "~all", "v=spf1 -all a exp=explain.example.com",
     "v=spf1 ip4:192.0.2.10 exp=explain.example.com -all"),
    # no all and no redirect: spf_all is added
    (ADDR, [], "~all", "v=spf1 mx", "v=spf1 mx ip4:192.0.2.10 ~all"),
])
def test_spf_value(addresses: list[str], include: list[str], spf_all: str,
                   existing: str | None, expected: str):
    dns_settings = DnsSettings(addresses=addresses, spf_include=include,
                               spf_all=spf_all)  # type: ignore[arg-type]
    assert spf_value(dns_settings, existing) == expected


DOMAIN = st.from_regex(r"[a-z][a-z0-9]{0,6}(\.[a-z]{2,5}){1,2}", fullmatch=True)
IP4 = st.ip_addresses(v=4).map(str)
IP6 = st.ip_addresses(v=6).map(lambda ip: ip.compressed)
MECHANISM = st.one_of(
    st.sampled_from(["all", "a", "mx", "ptr", "ALL"]),
    st.builds("include:{}".format, DOMAIN), st.builds("a:{}".format, DOMAIN),
    st.builds("mx:{}/24".format, DOMAIN), st.builds("exists:{}".format, DOMAIN),
    st.builds("ip4:{}".format, IP4), st.builds("ip4:{}/{}".format, IP4, st.integers(8, 32)),
    st.builds("ip6:{}".format, IP6), st.builds("ip6:{}/{}".format, IP6, st.integers(16, 128)))
TERM = st.one_of(
    st.builds("{}{}".format, st.sampled_from(["", "+", "-", "~", "?"]), MECHANISM),
    st.builds("redirect={}".format, DOMAIN), st.builds("exp=explain.{}".format, DOMAIN))
DNS_SETTINGS = st.builds(
    DnsSettings,
    addresses=st.lists(st.one_of(IP4, IP6), max_size=3),
    spf_include=st.lists(st.builds("include:{}".format, DOMAIN), max_size=2),
    spf_all=st.sampled_from(["~all", "-all"]))


def _authorized(tokens: list[str], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for token in tokens:
        match = re.fullmatch(r"\+?ip[46]:(\S+)", token, re.IGNORECASE)
        if match and ip in ipaddress.ip_network(match[1], strict=False):
            return True
    return False


@given(dns_settings=DNS_SETTINGS, terms=st.lists(TERM, max_size=10),
       prefix=st.sampled_from(["v=spf1 ", "V=SPF1 ", ""]))
@settings(max_examples=200, deadline=None)
def test_spf_merge_keeps_one_record_shape_and_is_idempotent(
        dns_settings: DnsSettings, terms: list[str], prefix: str):
    merged = spf_value(dns_settings, prefix + " ".join(terms))
    tokens = merged.split()
    assert tokens[0] == "v=spf1"
    assert [t.lower() for t in tokens].count("v=spf1") == 1
    alls = [t for t in tokens if re.fullmatch(r"[+?~-]?all", t, re.IGNORECASE)]
    if any(t.startswith("redirect=") for t in tokens):
        assert alls == []
        assert tokens[-1].startswith("redirect=")
        assert sum(t.startswith("redirect=") for t in tokens) == 1
    else:
        assert alls == [tokens[-1]]
        assert tokens[-1] in ("~all", "-all")
    assert len({t.lower().removeprefix("+") for t in tokens}) == len(tokens)
    # egen's own addresses pass unless the old record explicitly fails them first
    failing = any(re.match(r"[-~?]ip", t) for t in tokens)
    for address in dns_settings.addresses:
        assert failing or _authorized(tokens, address)
    assert spf_value(dns_settings, merged) == merged


# --- DKIM -----------------------------------------------------------------------------

def test_dkim_records_one_per_key_rsa_split_into_255_octet_strings(full):
    _cfg, keys, records = full
    for key in keys:
        [record] = by_name(records, key.dns_name())
        assert record.value == key.dns_value()
        strings = record.strings()
        assert "".join(strings) == record.value
        assert all(len(s.encode()) <= 255 for s in strings)
        assert len(strings) == (2 if key.algorithm == "rsa" else 1)
    rsa_line = by_name(records, "rsa2026._domainkey.example.com")[0].zone_line()
    assert rsa_line.startswith("rsa2026._domainkey.example.com. 3600 IN TXT ( \"v=DKIM1; k=rsa")
    assert rsa_line.endswith('" )') and rsa_line.count('"') == 4


def test_dkim_notes_recommend_the_missing_algorithm(full):
    _cfg, _keys, records = full
    both = by_name(records, "rsa2026._domainkey.example.com")[0].note
    rsa_only = by_name(records, "s1._domainkey.example.org")[0].note
    ed_only = by_name(records, "ed1._domainkey.example.net")[0].note
    assert "RSA-2048" in both and "Add" not in both
    assert "Add an Ed25519 selector" in rsa_only and "RFC 8463" in rsa_only
    assert "Add an RSA-2048 selector" in ed_only and "Gmail" in ed_only


def test_weak_key_and_key_outside_config_and_domain_without_key(keydir: Path):
    cfg = loads('hostname = "relay.example.com"\n[dns]\ndomains = ["nokey.example"]\n',
                source=keydir / "egen.toml")
    weak = DkimKey("weak.example", "old", "rsa", generate_key("rsa", bits=1024))
    records = build_records(cfg, keys=[weak])
    assert [r.name for r in records if r.name.startswith("_dmarc.")] == [
        "_dmarc.nokey.example", "_dmarc.weak.example"]
    assert "RFC 8301" in by_name(records, "old._domainkey.weak.example")[0].note
    assert "No DKIM key" in by_name(records, "_dmarc.nokey.example")[0].note
    assert "No DKIM key" not in by_name(records, "_dmarc.weak.example")[0].note
    assert "dns.addresses is empty" in by_name(records, "nokey.example")[0].note


# --- DMARC ----------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "expected"), [
    ({}, "v=DMARC1; p=none"),
    ({"dmarc_policy": "reject", "dmarc_alignment": "relaxed"}, "v=DMARC1; p=reject"),
    ({"dmarc_policy": "quarantine", "dmarc_subdomain_policy": "reject"},
     "v=DMARC1; p=quarantine; sp=reject"),
    ({"dmarc_nonexistent_policy": "reject"}, "v=DMARC1; p=none; np=reject"),
    ({"dmarc_rua": ["mailto:a@example.com", "mailto:b@example.net!10m"]},
     "v=DMARC1; p=none; rua=mailto:a@example.com,mailto:b@example.net!10m"),
    ({"dmarc_alignment": "strict"}, "v=DMARC1; p=none; adkim=s; aspf=s"),
    ({"dmarc_testing": True}, "v=DMARC1; p=none; t=y"),
    ({"dmarc_policy": "reject", "dmarc_subdomain_policy": "quarantine",
      "dmarc_nonexistent_policy": "reject", "dmarc_rua": ["mailto:a@example.com"],
      "dmarc_alignment": "strict", "dmarc_testing": True},
     "v=DMARC1; p=reject; sp=quarantine; np=reject; rua=mailto:a@example.com; "
     "adkim=s; aspf=s; t=y"),
])
def test_dmarc_value(options: dict, expected: str):
    assert dmarc_value(DnsSettings(**options)) == expected


def test_dmarc_never_emits_removed_tags():
    policies = ["none", "quarantine", "reject"]
    for p, sp, align, testing in itertools.product(
            policies, [None, *policies], ["relaxed", "strict"], [False, True]):
        value = dmarc_value(DnsSettings(
            dmarc_policy=p, dmarc_subdomain_policy=sp, dmarc_nonexistent_policy=sp,
            dmarc_alignment=align, dmarc_testing=testing, dmarc_rua=["mailto:r@example.com"]))
        tags = [tag.split("=", 1)[0] for tag in value.split("; ")]
        assert tags[:2] == ["v", "p"]
        assert not set(tags) & set(REMOVED_DMARC_TAGS)
    assert REMOVED_DMARC_TAGS == ("pct", "rf", "ri")


def test_dmarc_record_in_build(full):
    _cfg, _keys, records = full
    [record] = by_name(records, "_dmarc.example.com")
    assert record.value == ("v=DMARC1; p=quarantine; "
                            "rua=mailto:dmarc@example.com,mailto:dmarc@reports.example.net")
    assert "p=none" in record.note and "p=reject" in record.note


# --- report authorization --------------------------------------------------------------

@pytest.mark.parametrize(("domain", "rua", "expected"), [
    ("example.com", ["mailto:dmarc@reports.example.net"],
     ["example.com._report._dmarc.reports.example.net"]),
    ("example.com", ["mailto:d@example.com"], []),
    ("example.com", ["mailto:d@reports.example.com"], []),
    ("mail.example.com", ["mailto:d@example.com"], []),
    ("Example.COM", ["mailto:d@Vendor.example!10m", "mailto:e@vendor.example"],
     ["example.com._report._dmarc.vendor.example"]),
    ("shop.example.co.uk", ["mailto:x@reports.example.co.uk"], []),
    ("shop.example.co.uk", ["mailto:x@other.co.uk"],
     ["shop.example.co.uk._report._dmarc.other.co.uk"]),
    ("example.com", ["https://reports.example.net/dmarc"], []),
])
def test_report_authorization(domain: str, rua: list[str], expected: list[str]):
    records = report_authorization(domain, rua)
    assert [r.name for r in records] == expected
    for record in records:
        assert (record.type, record.value) == ("TXT", "v=DMARC1")
        assert "not in your zone" in record.note


def test_organizational_domain():
    assert organizational_domain("a.b.example.com.") == "example.com"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("example.com.au") == "example.com.au"
    assert organizational_domain("localhost") == "localhost"


def test_report_authorization_in_build_for_each_domain(full):
    _cfg, _keys, records = full
    names = [r.name for r in records if "._report._dmarc." in r.name]
    assert names == [  # the rua domains (example.com, reports.example.net) of other orgs
        "example.com._report._dmarc.reports.example.net",
        "example.org._report._dmarc.example.com",
        "example.org._report._dmarc.reports.example.net",
        "example.net._report._dmarc.example.com",
        "mail.example.info._report._dmarc.example.com",
        "mail.example.info._report._dmarc.reports.example.net"]


# --- MX, MTA-STS, TLS-RPT --------------------------------------------------------------

MTA_STS = DnsSettings(mx=["10 MX1.example.com.", "20 mx2.example.com"], mta_sts_mode="enforce")


def test_mta_sts_policy_text_exact():
    assert mx_hosts(MTA_STS) == ["mx1.example.com", "mx2.example.com"]
    assert mta_sts_policy(MTA_STS) == ("version: STSv1\r\nmode: enforce\r\n"
                                       "mx: mx1.example.com\r\nmx: mx2.example.com\r\n"
                                       "max_age: 604800\r\n")


def test_mta_sts_id_short_alphanumeric_and_follows_the_policy():
    hosts = mx_hosts(MTA_STS)
    ident = mta_sts_id(MTA_STS, hosts)
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", ident)
    assert mta_sts_id(replace(MTA_STS), list(hosts)) == ident
    changed = [mta_sts_id(replace(MTA_STS, mta_sts_mode="testing"), hosts),
               mta_sts_id(replace(MTA_STS, mta_sts_max_age=86400), hosts),
               mta_sts_id(MTA_STS, hosts[:1])]
    assert len({ident, *changed}) == 4


def test_mx_mta_sts_and_tls_rpt_records(full, keydir: Path):
    cfg, keys, records = full
    assert [r.value for r in by_name(records, "example.com", "MX")] == [
        "10 mx1.example.com", "20 mx2.example.com"]
    [sts] = by_name(records, "_mta-sts.example.com")
    assert sts.value == f"v=STSv1; id={mta_sts_id(cfg.dns, mx_hosts(cfg.dns))}"
    assert "https://mta-sts.example.com/.well-known/mta-sts.txt" in sts.note
    [tlsrpt] = by_name(records, "_smtp._tls.example.org")
    assert tlsrpt.value == "v=TLSRPTv1; rua=mailto:tlsrpt@example.com"
    without_mx = build_records(cfg, keys=keys)
    assert not [r for r in without_mx if r.type == "MX"]
    bare = build_records(make_settings(keydir, '[dns]\naddresses = ["192.0.2.1"]\n'), keys=keys)
    assert not [r for r in bare if r.name.startswith(("_mta-sts.", "_smtp._tls."))]


# --- PTR and forward records ------------------------------------------------------------

def test_ptr_and_forward_records_once_for_all_domains(full):
    _cfg, _keys, records = full
    ptrs = [r for r in records if r.type == "PTR"]
    assert [(r.name, r.value) for r in ptrs] == [
        ("10.2.0.192.in-addr.arpa", "relay.example.com"),
        ("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
         "relay.example.com")]
    assert all("550-5.7.25" in r.note and "hosting provider" in r.note for r in ptrs)
    forward = [(r.type, r.value) for r in records if r.name == "relay.example.com"]
    assert forward == [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")]
    assert records[-4:] == [r for r in records if r.name == "relay.example.com"
                            or r.type == "PTR"]


# --- SPF in the build -------------------------------------------------------------------

def test_spf_records_fresh_and_merged(full):
    cfg, keys, records = full
    [spf] = by_name(records, "example.com")
    assert spf.value == ("v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 "
                         "include:_spf.example.net ~all")
    assert "RFC 7208" in spf.note
    merged = build_records(cfg, keys=keys,
                           existing_spf={"Example.ORG.": "v=spf1 include:_spf.google.com -all"})
    [org] = by_name(merged, "example.org")
    assert org.value == ("v=spf1 include:_spf.google.com ip4:192.0.2.10 ip6:2001:db8::10 "
                         "include:_spf.example.net -all")
    assert org.note.startswith("Replaces")
    assert by_name(merged, "example.com")[0].value == spf.value


def test_record_order_per_domain(full):
    _cfg, _keys, records = full
    kinds = [r.name for r in records if r.name.endswith("example.com")
             and not r.name.startswith("relay.")]
    assert kinds[:4] == ["example.com", "rsa2026._domainkey.example.com",
                         "ed2026._domainkey.example.com", "_dmarc.example.com"]


# --- zone-file syntax and JSON ---------------------------------------------------------

@pytest.mark.parametrize(("record", "line"), [
    (DnsRecord("example.com", "TXT", "v=spf1 -all"), 'example.com. 3600 IN TXT "v=spf1 -all"'),
    (DnsRecord("x.example.com", "TXT", "a" * 255 + "bc"),
     f'x.example.com. 3600 IN TXT ( "{"a" * 255}" "bc" )'),
    (DnsRecord("q.example.com", "TXT", 'say "hi" \\ é'),
     'q.example.com. 3600 IN TXT "say \\"hi\\" \\\\ \\195\\169"'),
    (DnsRecord("example.com", "MX", "10 mx1.example.com"),
     "example.com. 3600 IN MX 10 mx1.example.com."),
    (DnsRecord("4.3.2.1.in-addr.arpa", "PTR", "relay.example.com"),
     "4.3.2.1.in-addr.arpa. IN PTR relay.example.com."),
    (DnsRecord("relay.example.com", "AAAA", "2001:db8::1"),
     "relay.example.com. 3600 IN AAAA 2001:db8::1"),
])
def test_zone_line(record: DnsRecord, line: str):
    assert record.zone_line() == line


def test_zone_lines_parse_back_with_dnspython(full):
    _cfg, _keys, records = full
    extra = [DnsRecord("q.example.com", "TXT", 'say "hi" \\ é ' + "x" * 300)]
    text = "$ORIGIN .\n$TTL 300\n" + "\n".join(r.zone_line() for r in records + extra) + "\n"
    zone = dns.zone.from_text(text, origin=dns.name.root, relativize=False,
                              check_origin=False)
    for record in records + extra:
        rdataset = zone.get_rdataset(record.name + ".", record.type)
        assert rdataset is not None, record
        if record.type == "TXT":
            joined = [b"".join(rd.strings).decode() for rd in rdataset]
            assert joined == [record.value]
            assert [len(rd.strings) for rd in rdataset] == [len(record.strings())]
        else:
            assert record.value in [rd.to_text().rstrip(".") for rd in rdataset]
    assert zone.get_rdataset("10.2.0.192.in-addr.arpa.", "PTR").ttl == 300
    assert zone.get_rdataset("example.com.", "MX").ttl == 3600


def test_records_json(full):
    _cfg, _keys, records = full
    rows = records_json(records)
    assert len(rows) == len(records)
    assert rows[0] == {"name": records[0].name, "type": "TXT", "value": records[0].value,
                       "note": records[0].note}
    assert all(set(row) == {"name", "type", "value", "note"} for row in rows)
    assert {dns.rdatatype.from_text(row["type"]) for row in rows}
