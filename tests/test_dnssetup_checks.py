"""`egen dns check`'s engine against a real DNS answerer on loopback serving good and broken
zones: each check's verdict and the fix it prints, and the report's shapes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncresolver
import pytest

from daemon.config import Settings, loads
from daemon.dnssetup.checks import (
    Check,
    checks_json,
    exit_status,
    render_text,
    resolver_for,
    run_checks,
)
from daemon.mail.dkimkeys import (
    DkimKey,
    generate_key,
    load_key,
    txt_record_strings,
    write_private_key,
)
from tests.dnsserver import DnsServer

ADDRESS = "127.0.0.5"
REVERSE = "5.0.0.127.in-addr.arpa"
HOSTNAME = "relay.example.com"


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real keys, made once: RSA 2048 and 1024, Ed25519, and a second RSA 2048."""
    folder = tmp_path_factory.mktemp("keys")
    specs = {"rsa": ("rsa", 2048), "rsa1024": ("rsa", 1024), "ed25519": ("ed25519", 2048),
             "other": ("rsa", 2048)}
    paths = {}
    for label, (algorithm, bits) in specs.items():
        paths[label] = folder / f"{label}.pem"
        write_private_key(generate_key(algorithm, bits=bits), paths[label])  # type: ignore[arg-type]
    return paths


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    dns_server = DnsServer()
    await dns_server.start()
    yield dns_server
    dns_server.stop()


@pytest.fixture
def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    return resolver_for(f"127.0.0.1:{server.port}", timeout=2.0)


def make_settings(tmp_path: Path, key_files: dict[str, Path], *, keys: str = "rsa ed25519",
                  dns: str = "") -> Settings:
    """example.com signed with the named keys (selector = key label), plus a [dns] body."""
    blocks = [f'[[dkim.keys]]\ndomain = "example.com"\nselector = "{label}"\n'
              f'algorithm = "{"ed25519" if label == "ed25519" else "rsa"}"\n'
              f'key_file = "{key_files[label]}"\n' for label in keys.split()]
    text = (f'hostname = "{HOSTNAME}"\n' + "\n".join(blocks)
            + f'\n[dns]\naddresses = ["{ADDRESS}"]\n'
            + 'dmarc_rua = ["mailto:dmarc@example.com"]\n' + dns)
    return loads(text, source=tmp_path / "egen.toml")


@functools.cache
def _load(path: Path, domain: str, selector: str) -> DkimKey:
    return load_key(path, domain=domain, selector=selector)  # RSA checks take a while


def local_keys(settings: Settings) -> list[DkimKey]:
    return [_load(k.key_file, k.domain, k.selector) for k in settings.dkim.keys]


def txt(value: str) -> str:
    """One TXT record in zone syntax, split into 255-octet strings like egen publishes."""
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for s in txt_record_strings(value))


def publish_good(server: DnsServer, keys: list[DkimKey], domain: str = "example.com") -> None:
    server.set(domain, "TXT", [txt(f"v=spf1 ip4:{ADDRESS} -all")])
    for key in keys:
        server.set(key.dns_name(), "TXT", [txt(key.dns_value())])
    server.set(f"_dmarc.{domain}", "TXT",
               [txt("v=DMARC1; p=reject; rua=mailto:dmarc@example.com")])
    server.set(f"_mta-sts.{domain}", "TXT", [txt("v=STSv1; id=20240501T120000")])
    server.set(f"_smtp._tls.{domain}", "TXT", [txt("v=TLSRPTv1; rua=mailto:tls@example.com")])
    server.set(REVERSE, "PTR", [f"{HOSTNAME}."])
    server.set(HOSTNAME, "A", [ADDRESS])


async def check_all(settings: Settings, resolver: dns.asyncresolver.Resolver
                    ) -> dict[str, Check]:
    checks = await run_checks(settings, keys=local_keys(settings), resolver=resolver)
    named = {c.name: c for c in checks}
    assert len(named) == len(checks), "check names are unique"
    return named


@pytest.fixture
async def good(server: DnsServer, tmp_path: Path, key_files: dict[str, Path]) -> Settings:
    settings = make_settings(tmp_path, key_files)
    publish_good(server, local_keys(settings))
    return settings


# -- a good domain -----------------------------------------------------------------------

async def test_good_domain_passes_everything(good, resolver):
    checks = await run_checks(good, keys=local_keys(good), resolver=resolver)
    assert [(c.name, c.status) for c in checks] == [
        ("spf example.com", "pass"),
        (f"spf {ADDRESS} for example.com", "pass"),
        ("spf lookups for example.com", "pass"),
        ("dkim rsa._domainkey.example.com", "pass"),
        ("dkim ed25519._domainkey.example.com", "pass"),
        ("dmarc example.com", "pass"),
        ("mta-sts example.com", "pass"),
        ("tls-rpt example.com", "pass"),
        (f"ptr {ADDRESS}", "pass"),
    ]
    assert exit_status(checks) == 0
    assert "0 DNS-querying terms, 0 void lookups" in checks[2].detail
    assert "2048 bits" in checks[3].detail and "ed25519" in checks[4].detail
    assert checks[-1].detail == f"{ADDRESS} → {HOSTNAME} → {ADDRESS}"


async def test_optional_records_are_only_checked_when_published_or_configured(
        server, good, resolver, tmp_path, key_files):
    server.set("_mta-sts.example.com", "TXT", [])
    server.set("_smtp._tls.example.com", "TXT", [])
    checks = await check_all(good, resolver)
    assert "mta-sts example.com" not in checks and "tls-rpt example.com" not in checks
    configured = make_settings(tmp_path, key_files, dns='mx = ["10 mx.example.com"]\n'
                               'mta_sts_mode = "testing"\ntls_rpt_rua = ["mailto:t@example.com"]\n')
    checks = await check_all(configured, resolver)
    assert checks["mta-sts example.com"].status == "fail"
    assert "publish one TXT record at _mta-sts.example.com: v=STSv1; id=" in (
        checks["mta-sts example.com"].fix)
    assert checks["tls-rpt example.com"].status == "fail"
    assert checks["tls-rpt example.com"].fix == (
        "publish one TXT record at _smtp._tls.example.com: v=TLSRPTv1; "
        "rua=mailto:t@example.com")


# -- SPF ---------------------------------------------------------------------------------

async def test_missing_spf(server, good, resolver):
    server.set("example.com", "TXT", [])
    checks = await run_checks(good, keys=local_keys(good), resolver=resolver)
    check = next(c for c in checks if c.name == "spf example.com")
    assert check.status == "fail"
    assert check.fix == f"publish TXT at example.com: v=spf1 ip4:{ADDRESS} ~all"
    assert [c.name for c in checks if c.name.startswith("spf")] == ["spf example.com"]
    assert (f"FAIL  spf example.com  no SPF record at example.com\n"
            f"      fix: publish TXT at example.com: v=spf1 ip4:{ADDRESS} ~all\n"
            ) in render_text(checks)
    assert exit_status(checks) == 1


async def test_two_spf_records(server, good, resolver):
    server.set("example.com", "TXT", ['"v=spf1 include:_spf.example.net -all"',
                                      '"v=spf1 ip4:192.0.2.1 ~all"'])
    checks = await check_all(good, resolver)
    check = checks["spf example.com"]
    assert check.status == "fail" and "2 SPF records" in check.detail
    assert check.fix == ("replace them with one TXT record at example.com: v=spf1 "
                         f"include:_spf.example.net ip4:192.0.2.1 ip4:{ADDRESS} ~all")
    assert "spf lookups for example.com" not in checks  # nothing to count in a permerror


async def test_spf_syntax_error(server, good, resolver):
    server.set("example.com", "TXT", ['"v=spf1 ip4:127.0.0.5 inlcude:_spf.example.net -all"'])
    check = (await check_all(good, resolver))["spf example.com"]
    assert check.status == "fail" and "'inlcude:_spf.example.net'" in check.detail
    assert f"v=spf1 ip4:{ADDRESS} ~all" in check.fix


async def test_spf_that_does_not_authorize_the_address(server, good, resolver):
    server.set("example.com", "TXT", ['"v=spf1 ip4:192.0.2.1 -all"'])
    check = (await check_all(good, resolver))[f"spf {ADDRESS} for example.com"]
    assert check.status == "fail" and "not authorized: result fail" in check.detail
    assert check.fix == (f"add ip4:{ADDRESS} to the SPF record; publish at example.com: "
                         f"v=spf1 ip4:{ADDRESS} ip4:192.0.2.1 -all")


async def test_spf_with_a_macro_cannot_be_judged(server, good, resolver):
    server.set("example.com", "TXT", ['"v=spf1 exists:%{i}._spf.example.com -all"'])
    check = (await check_all(good, resolver))[f"spf {ADDRESS} for example.com"]
    assert check.status == "warn" and "uses a macro" in check.detail
    assert f"v=spf1 ip4:{ADDRESS} exists:%{{i}}._spf.example.com -all" in check.fix


async def test_spf_over_the_lookup_limit_through_nested_includes(server, good, resolver):
    server.set("example.com", "TXT", [f'"v=spf1 ip4:{ADDRESS} include:inc1.example.com -all"'])
    for i in range(1, 5):
        host = f"inc{i}.example.com"
        more = f" include:inc{i + 1}.example.com" if i < 4 else ""
        server.set(host, "TXT", [f'"v=spf1 a mx{more} ~all"'])
        server.set(host, "A", ["192.0.2.10"])
        server.set(host, "MX", [f"10 {host}."])
    checks = await check_all(good, resolver)
    check = checks["spf lookups for example.com"]
    assert check.status == "fail"
    assert check.detail.startswith("12 DNS-querying terms, 0 void lookups (example.com → "
                                   "inc1.example.com → inc2.example.com")
    assert "at most 10" in check.fix and "ip4:/ip6: ranges" in check.fix
    # The address is matched before the limit, so it is authorized all the same.
    assert checks[f"spf {ADDRESS} for example.com"].status == "pass"


async def test_spf_near_the_lookup_limit_warns(server, good, resolver):
    terms = " ".join(f"a:h{i}.example.com" for i in range(9))
    server.set("example.com", "TXT", [f'"v=spf1 ip4:{ADDRESS} {terms} -all"'])
    for i in range(9):
        server.set(f"h{i}.example.com", "A", ["192.0.2.20"])
    check = (await check_all(good, resolver))["spf lookups for example.com"]
    assert check.status == "warn" and check.detail.startswith("9 DNS-querying terms")
    assert "make room before adding a sender" in check.fix


async def test_spf_with_three_void_lookups(server, good, resolver):
    server.set("example.com", "TXT", [f'"v=spf1 ip4:{ADDRESS} a:gone1.example.com '
                                      'mx:gone2.example.com include:gone3.example.com -all"'])
    check = (await check_all(good, resolver))["spf lookups for example.com"]
    assert check.status == "fail" and "3 void lookups" in check.detail
    assert ("remove the terms that name nothing (a:gone1.example.com, mx:gone2.example.com, "
            "include:gone3.example.com)") in check.fix
    assert ("correct what the record names: gone3.example.com has no SPF records (named by "
            "include:gone3.example.com in example.com)") in check.fix


# -- DKIM --------------------------------------------------------------------------------

async def test_dkim_problems(server, good, resolver):
    keys = {k.selector: k for k in local_keys(good)}
    rsa, ed = keys["rsa"], keys["ed25519"]
    value = rsa.dns_value()
    middle = len(value) // 2
    cases = {
        "split into two records": [f'"{value[:middle]}"', f'"{value[middle:]}"'],
        "p= cut short": [txt(value[:-40])],
        "quotes inside the value": [txt(value[:middle] + '" "' + value[middle:])],
    }
    for what, records in cases.items():
        server.set(rsa.dns_name(), "TXT", records)
        check = (await check_all(good, resolver_for(f"127.0.0.1:{server.port}")))[
            "dkim rsa._domainkey.example.com"]
        assert check.status == "fail", what
        assert check.fix == f"publish one TXT record at {rsa.dns_name()}: {value}", what
    server.set(rsa.dns_name(), "TXT", [txt(value[:-40])])
    checks = await check_all(good, resolver_for(f"127.0.0.1:{server.port}"))
    assert "p= is cut short" in checks["dkim rsa._domainkey.example.com"].detail
    server.set(rsa.dns_name(), "TXT", [txt(value.replace("k=rsa", "k=ed25519"))])
    server.set(ed.dns_name(), "TXT", [])
    checks = await check_all(good, resolver_for(f"127.0.0.1:{server.port}"))
    assert "k=ed25519, but the local key is rsa" in checks[
        "dkim rsa._domainkey.example.com"].detail
    missing = checks["dkim ed25519._domainkey.example.com"]
    assert (missing.status, missing.detail) == ("fail", "no DKIM key record")
    assert missing.fix.endswith(ed.dns_value())


async def test_dkim_key_that_is_not_the_local_key(server, good, resolver, key_files):
    other = load_key(key_files["other"], domain="example.com", selector="rsa")
    server.set(other.dns_name(), "TXT", [txt(other.dns_value())])
    check = (await check_all(good, resolver))["dkim rsa._domainkey.example.com"]
    assert check.status == "fail"
    assert check.detail == f"p= does not match the local key {key_files['rsa']}"
    assert check.fix.endswith(local_keys(good)[0].dns_value())


async def test_dkim_1024_bit_key_warns(server, resolver, tmp_path, key_files):
    settings = make_settings(tmp_path, key_files, keys="rsa1024")
    publish_good(server, local_keys(settings))
    checks = await check_all(settings, resolver)
    check = checks["dkim rsa1024._domainkey.example.com"]
    assert check.status == "warn" and "1024 bits" in check.detail
    assert "create a 2048-bit key under a new selector" in check.fix
    assert exit_status(list(checks.values())) == 0


# -- DMARC -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    ("v=DMARC1; p=quarentine; rua=mailto:dmarc@example.com", "fail",
     "p=quarentine is not none, quarantine or reject",
     "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=rejetc; sp=bogus; rua=mailto:dmarc@example.com", "fail",
     "p=rejetc is not none, quarantine or reject; sp=bogus is not none",
     "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=reject; pct=100; rua=mailto:dmarc@example.com", "warn",
     "pct= was removed by RFC 9989 and is ignored",
     "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; rua=mailto:dmarc@example.com", "fail", "p= is missing",
     "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=reject; pct=50; rua=mailto:dmarc@example.com", "warn",
     "pct= was removed by RFC 9989 and is ignored; use t=y for a partial rollout",
     "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=reject; ri=3600; rf=afrf; rua=mailto:dmarc@example.com", "warn",
     "ri= was removed", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=reject; adkim=x", "fail", "adkim=x is not r or s", "v=DMARC1; p=reject"),
    ("v=DMARC1; p=reject; rua=mailto:dmarc@example.com; polcy=reject", "warn",
     "unknown tag polcy= (a typo?)", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=none", "warn", "you get no reports",
     "v=DMARC1; p=none; rua=mailto:dmarc@example.com"),
    ("v=DMARC1; p=none; p=reject", "fail", "tag p= appears twice",
     "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"),
])
async def test_dmarc_record_problems(server, resolver, tmp_path, key_files,
                                     case: tuple[str, str, str, str]):
    record, status, found, fix = case
    # The config's policy fills a missing p=; a typo is read as the policy it resembles.
    settings = make_settings(tmp_path, key_files, dns='dmarc_policy = "quarantine"\n')
    publish_good(server, local_keys(settings))
    server.set("_dmarc.example.com", "TXT", [txt(record)])
    check = (await check_all(settings, resolver))["dmarc example.com"]
    assert check.status == status
    assert found in check.detail
    assert ("partial rollout" in check.detail) == ("pct=50" in record)
    assert check.fix.endswith(f"at _dmarc.example.com: {fix}")


async def test_dmarc_report_address_not_in_the_config(server, resolver, tmp_path, key_files):
    settings = make_settings(tmp_path, key_files)
    settings = dataclasses.replace(settings, dns=dataclasses.replace(settings.dns,
                                                                     dmarc_rua=[]))
    publish_good(server, local_keys(settings))
    server.set("_dmarc.example.com", "TXT", ['"v=DMARC1; p=none"'])
    check = (await check_all(settings, resolver))["dmarc example.com"]
    assert check.status == "warn"
    assert check.fix == ("publish instead at _dmarc.example.com: v=DMARC1; p=none; "
                         "rua=mailto:dmarc-reports@example.com (rua= must be a mailbox that "
                         "reads the reports; dns.dmarc_rua sets it)")
    server.set("_dmarc.example.com", "TXT", [])
    check = (await check_all(settings, resolver_for(f"127.0.0.1:{server.port}")))[
        "dmarc example.com"]
    assert check.fix.endswith("v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com (rua= "
                              "must be a mailbox that reads the reports; dns.dmarc_rua sets it)")


async def test_dmarc_missing_or_twice(server, good, resolver):
    server.set("_dmarc.example.com", "TXT", [])
    check = (await check_all(good, resolver))["dmarc example.com"]
    assert check.status == "fail" and check.detail == "no DMARC record at _dmarc.example.com"
    assert check.fix == ("publish TXT at _dmarc.example.com: v=DMARC1; p=none; "
                         "rua=mailto:dmarc@example.com")
    server.set("_dmarc.example.com", "TXT", ['"v=DMARC1; p=none; rua=mailto:a@example.com"',
                                             '"v=DMARC1; p=reject"', '"unrelated"'])
    check = (await check_all(good, resolver_for(f"127.0.0.1:{server.port}")))[
        "dmarc example.com"]
    assert check.status == "fail" and "2 DMARC records" in check.detail
    assert check.fix.startswith("replace them with one TXT record at _dmarc.example.com: "
                                "v=DMARC1; p=none")


async def test_dmarc_of_a_subdomain_is_inherited_and_alignment_is_judged(
        server, resolver, tmp_path, key_files):
    settings = make_settings(tmp_path, key_files, dns='domains = ["news.example.com", '
                             '"example.org"]\n')
    publish_good(server, local_keys(settings))
    publish_good(server, [], domain="news.example.com")
    publish_good(server, [], domain="example.org")
    server.set("_dmarc.news.example.com", "TXT", [])
    checks = await check_all(settings, resolver)
    check = checks["dmarc news.example.com"]
    assert check.status == "pass" and "inherited from _dmarc.example.com" in check.detail
    assert "d=example.com is aligned" in check.detail
    unsigned = checks["dmarc example.org"]
    assert unsigned.status == "warn" and "no DKIM key signs mail from example.org" in (
        unsigned.detail)
    assert "add a [[dkim.keys]] entry for example.org" in unsigned.fix
    server.set("_dmarc.example.com", "TXT", [txt("v=DMARC1; p=reject; adkim=s; "
                                                 "rua=mailto:dmarc@example.com")])
    checks = await check_all(settings, resolver_for(f"127.0.0.1:{server.port}"))
    assert checks["dmarc example.com"].status == "pass"  # d= is the From domain itself
    strict = checks["dmarc news.example.com"]
    assert strict.status == "warn" and "adkim=s, but egen signs mail from news.example.com " \
        "with d=example.com" in strict.detail
    assert strict.fix == "use adkim=r, or add a [[dkim.keys]] entry for news.example.com"


async def test_external_rua_needs_its_authorization_record(server, good, resolver):
    server.set("_dmarc.example.com", "TXT", [txt(
        "v=DMARC1; p=reject; rua=mailto:dmarc@example.com,mailto:x@reports.example.net!10m,"
        "mailto:y@sub.example.com")])
    checks = await check_all(good, resolver)
    assert [name for name in checks if name.startswith("dmarc rua")] == [
        "dmarc rua at reports.example.net for example.com"]  # same-organization ones need none
    check = checks["dmarc rua at reports.example.net for example.com"]
    assert check.status == "fail"
    assert check.fix == ("reports.example.net must publish TXT at "
                         "example.com._report._dmarc.reports.example.net: v=DMARC1 (or remove "
                         "mailto:x@reports.example.net from rua=)")
    server.set("example.com._report._dmarc.reports.example.net", "TXT", ['"v=DMARC1"'])
    checks = await check_all(good, resolver_for(f"127.0.0.1:{server.port}"))
    assert checks["dmarc rua at reports.example.net for example.com"].status == "pass"
    assert exit_status(list(checks.values())) == 0


# -- reverse DNS -------------------------------------------------------------------------

async def test_missing_ptr(server, good, resolver):
    server.set(REVERSE, "PTR", [])
    check = (await check_all(good, resolver))[f"ptr {ADDRESS}"]
    assert check.status == "fail" and check.detail == f"no PTR record at {REVERSE}"
    assert check.fix == (f"set the reverse DNS (PTR) of {ADDRESS} to {HOSTNAME} where the "
                         f"address is hosted, and publish {HOSTNAME} A {ADDRESS}")


async def test_ptr_that_does_not_resolve_back(server, good, resolver):
    server.set(REVERSE, "PTR", ["host.hoster.example."])
    server.set("host.hoster.example", "A", ["192.0.2.77"])
    check = (await check_all(good, resolver))[f"ptr {ADDRESS}"]
    assert check.status == "fail"
    assert check.detail == f"PTR host.hoster.example does not resolve back to {ADDRESS}"
    assert check.fix.startswith(f"publish host.hoster.example A {ADDRESS}, or set the PTR")


async def test_ptr_name_other_than_the_hostname(server, good, resolver):
    server.set(REVERSE, "PTR", ["mail.other.example."])
    server.set("mail.other.example", "A", [ADDRESS])
    check = (await check_all(good, resolver))[f"ptr {ADDRESS}"]
    assert check.status == "warn" and f"egen says HELO {HOSTNAME}" in check.detail
    assert check.fix.startswith(f'set hostname = "mail.other.example" in {good.source}')


# -- MTA-STS and TLS-RPT -----------------------------------------------------------------

@pytest.mark.parametrize(("record", "found"), [
    ("v=STSv1; id=" + "a" * 33, "must be 1 to 32 letters and digits (it has 33"),
    ("v=STSv1; id=2024-05-01", "must be 1 to 32 letters and digits"),
    ("v=STSv1;", "needs exactly one id="),
    ("v=STSv1; id=1; id=2", "needs exactly one id="),
    ("v=STSv2; id=1", "no record starts with v=STSv1"),
])
async def test_mta_sts_malformed(server, good, resolver, record: str, found: str):
    server.set("_mta-sts.example.com", "TXT", [txt(record)])
    check = (await check_all(good, resolver))["mta-sts example.com"]
    assert check.status == "fail" and found in check.detail
    assert check.fix.startswith("publish one TXT record at _mta-sts.example.com: v=STSv1; id=")


async def test_tls_rpt_with_several_addresses(server, good, resolver):
    record = "v=TLSRPTv1;rua=mailto:tls@example.com, https://tls.example.net/report?key=1"
    server.set("_smtp._tls.example.com", "TXT", [txt(record)])
    check = (await check_all(good, resolver))["tls-rpt example.com"]
    assert (check.status, check.detail) == ("pass", record)


@pytest.mark.parametrize(("record", "found"), [
    ("v=TLSRPTv1; rua=tls@example.com", "rua= has tls@example.com, not mailto: or https:"),
    ("v=TLSRPTv1", "needs exactly one rua="),
    ("v=TLSRPTv1 rua=mailto:tls@example.com", "no record starts with v=TLSRPTv1"),
])
async def test_tls_rpt_malformed(server, good, resolver, record: str, found: str):
    server.set("_smtp._tls.example.com", "TXT", [txt(record)])
    check = (await check_all(good, resolver))["tls-rpt example.com"]
    assert check.status == "fail" and found in check.detail
    assert check.fix == ("publish one TXT record at _smtp._tls.example.com: v=TLSRPTv1; "
                         "rua=mailto:tlsrpt@example.com")


# -- unanswered questions ----------------------------------------------------------------

async def test_servfail_fails_with_could_not_query(server, good, resolver):
    server.servfail.update({"_dmarc.example.com", REVERSE, "example.com"})
    checks = await check_all(good, resolver)
    for name in ("dmarc example.com", f"ptr {ADDRESS}", "spf example.com"):
        assert checks[name].status == "fail", name
        assert checks[name].detail.startswith("could not query: "), name
        assert "nameservers" in checks[name].fix
    assert "SERVFAIL" in checks["spf example.com"].detail
    assert exit_status(list(checks.values())) == 1


async def test_timeout_fails_with_could_not_query(server, good):
    server.stall.add("_smtp._tls.example.com")
    quick = resolver_for(f"127.0.0.1:{server.port}", timeout=0.2)
    check = (await check_all(good, quick))["tls-rpt example.com"]
    assert check.status == "fail"
    assert check.detail == "could not query: TXT _smtp._tls.example.com: timed out"


# -- the report --------------------------------------------------------------------------

def test_exit_status_render_text_and_json():
    checks = [Check("spf example.com", "pass", "v=spf1 -all"),
              Check("dkim s._domainkey.example.com", "warn", "1024 bits", "make a new key"),
              Check("ptr 127.0.0.5", "fail", "no PTR record", "set the PTR")]
    assert exit_status(checks[:2]) == 0
    assert exit_status(checks) == 1
    assert exit_status([]) == 0
    assert render_text(checks) == (
        "PASS  spf example.com  v=spf1 -all\n"
        "WARN  dkim s._domainkey.example.com  1024 bits\n"
        "      fix: make a new key\n"
        "FAIL  ptr 127.0.0.5  no PTR record\n"
        "      fix: set the PTR\n")
    assert checks_json(checks)[2] == {"name": "ptr 127.0.0.5", "status": "fail",
                                      "detail": "no PTR record", "fix": "set the PTR"}
    assert [set(d) for d in checks_json(checks)] == [{"name", "status", "detail", "fix"}] * 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        checks[0].status = "fail"  # type: ignore[misc]


def test_resolver_for():
    resolver = resolver_for("[::1]:5353", timeout=1.5)
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [("::1", 5353)]  # type: ignore[union-attr]
    assert resolver.lifetime == resolver.timeout == 1.5
    assert resolver_for("127.0.0.1").nameservers[0].port == 53  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not an IP address"):
        resolver_for("dns.example:53")
    if Path("/etc/resolv.conf").exists():
        assert resolver_for(None).nameservers  # the system's; nothing is asked
