"""MX resolution (RFC 5321 §5) against a real DNS answerer on loopback, through dnspython's
real resolver: ordering, fallbacks, null MX, failure classes, and the TTL cache."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.mail.delivery.mx import (
    DnsPermanentError,
    DnsTemporaryError,
    MxHost,
    MxResolver,
    parse_nameserver,
)
from tests.dnsserver import DnsServer


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    server.stop()


def resolver(server: DnsServer, **kwargs) -> MxResolver:
    kwargs.setdefault("timeout", 2.0)
    return MxResolver(nameservers=[f"127.0.0.1:{server.port}"], **kwargs)


def names(hosts: list[MxHost]) -> list[str]:
    return [host.name for host in hosts]


# -- selection ---------------------------------------------------------------------------

async def test_preference_order_and_addresses(dns: DnsServer):
    dns.set("example.com", "MX", ["20 mx2.example.com.", "10 mx1.example.com.",
                                  "30 mx3.example.com."])
    dns.set("mx1.example.com", "A", ["192.0.2.1"])
    dns.set("mx1.example.com", "AAAA", ["2001:db8::1"])
    dns.set("mx2.example.com", "A", ["192.0.2.2"])
    dns.set("mx3.example.com", "AAAA", ["2001:db8::3"])
    hosts = await resolver(dns).resolve("example.com")
    assert hosts == [
        MxHost("mx1.example.com", 10, ("192.0.2.1", "2001:db8::1")),
        MxHost("mx2.example.com", 20, ("192.0.2.2",)),
        MxHost("mx3.example.com", 30, ("2001:db8::3",)),
    ]
    first = (await resolver(dns, prefer_ipv6=True).resolve("example.com"))[0]
    assert first.addresses == ("2001:db8::1", "192.0.2.1")


async def test_random_order_among_equal_preferences(dns: DnsServer):
    dns.set("example.com", "MX", ["10 a.example.com.", "10 b.example.com.",
                                  "20 c.example.com."])
    for host in "abc":
        dns.set(f"{host}.example.com", "A", ["192.0.2.1"])
    seen = set()
    for seed in range(12):  # a fresh resolver per seed: nothing cached between them
        seen.add(tuple(names(await resolver(dns, rng=random.Random(seed)).resolve(
            "example.com"))))
    assert seen == {("a.example.com", "b.example.com", "c.example.com"),
                    ("b.example.com", "a.example.com", "c.example.com")}
    # The shuffle also happens on cached answers, so one long-lived resolver spreads load.
    shared = resolver(dns, rng=random.Random(1))
    orders = {tuple(names(await shared.resolve("example.com"))) for _ in range(12)}
    assert len(orders) == 2
    assert dns.count("example.com", "MX") == 13


async def test_random_address_order_within_each_family(dns: DnsServer):
    dns.set("multi.example", "A", ["192.0.2.1", "192.0.2.2"])
    dns.set("multi.example", "AAAA", ["2001:db8::1", "2001:db8::2"])
    r = resolver(dns, rng=random.Random(3))
    orders = {(await r.resolve("multi.example"))[0].addresses for _ in range(16)}
    assert len(orders) == 4  # 2 orders of IPv4 times 2 of IPv6, IPv4 always first
    assert all(set(order[:2]) == {"192.0.2.1", "192.0.2.2"} for order in orders)


async def test_same_host_twice_is_tried_once_at_its_best_preference(dns: DnsServer):
    dns.set("example.com", "MX", ["30 mx.example.com.", "10 mx.example.com."])
    dns.set("mx.example.com", "A", ["192.0.2.1"])
    assert await resolver(dns).resolve("example.com") == [
        MxHost("mx.example.com", 10, ("192.0.2.1",))]


async def test_implicit_mx_from_a_and_aaaa(dns: DnsServer):
    dns.set("example.org", "A", ["192.0.2.7"])
    dns.set("example.org", "AAAA", ["2001:db8::7"])
    dns.set("v6only.example.org", "AAAA", ["2001:db8::8"])
    r = resolver(dns)
    assert await r.resolve("example.org") == [
        MxHost("example.org", 0, ("192.0.2.7", "2001:db8::7"))]
    assert await r.resolve("v6only.example.org") == [
        MxHost("v6only.example.org", 0, ("2001:db8::8",))]


async def test_no_mx_and_no_address_is_permanent(dns: DnsServer):
    dns.set("example.org", "TXT", ['"v=spf1 -all"'])
    with pytest.raises(DnsPermanentError, match=r"example\.org has no MX and no A/AAAA"):
        await resolver(dns).resolve("example.org")


async def test_idn_domain_is_looked_up_in_idna_form(dns: DnsServer):
    dns.set("xn--bcher-kva.example", "MX", ["10 mx.xn--bcher-kva.example."])
    dns.set("mx.xn--bcher-kva.example", "A", ["192.0.2.9"])
    hosts = await resolver(dns).resolve("Bücher.example")
    assert hosts == [MxHost("mx.xn--bcher-kva.example", 10, ("192.0.2.9",))]


@pytest.mark.parametrize("domain", ["", ".", "a..b", "x" * 64 + ".com"])
async def test_invalid_domain_is_permanent(dns: DnsServer, domain: str):
    with pytest.raises(DnsPermanentError, match="not a valid domain name"):
        await resolver(dns).resolve(domain)
    assert not dns.queries


async def test_many_mx_records_arrive_over_tcp(dns: DnsServer):
    """More than fits a 512-byte UDP answer: the server truncates, dnspython retries on TCP."""
    dns.set("big.example", "MX", [f"{i} mx{i:02d}.some-long-label-for-size.big.example."
                                  for i in range(40)])
    dns.set("mx07.some-long-label-for-size.big.example", "A", ["192.0.2.7"])
    hosts = await resolver(dns).resolve("big.example")
    assert hosts == [MxHost("mx07.some-long-label-for-size.big.example", 7, ("192.0.2.7",))]


# -- null MX and CNAMEs ------------------------------------------------------------------

async def test_null_mx_is_permanent(dns: DnsServer):
    dns.set("nomail.example", "MX", ["0 ."])
    dns.set("nomail.example", "A", ["192.0.2.1"])  # must not be used as an implicit MX
    null_mx = r"nomail\.example publishes a null MX \(RFC 7505\): it accepts no mail"
    with pytest.raises(DnsPermanentError, match=null_mx) as info:
        await resolver(dns).resolve("nomail.example")
    assert info.value.null_mx
    assert dns.count("nomail.example", "A") == 0
    with pytest.raises(DnsPermanentError) as info:
        await resolver(dns).resolve("nowhere.example")
    assert not info.value.null_mx


async def test_null_mx_beside_real_hosts_is_skipped(dns: DnsServer):
    dns.set("odd.example", "MX", ["0 .", "10 mx.odd.example."])
    dns.set("mx.odd.example", "A", ["192.0.2.1"])
    assert names(await resolver(dns).resolve("odd.example")) == ["mx.odd.example"]


async def test_cname_to_mx_target_and_for_the_domain(dns: DnsServer):
    dns.set("example.com", "MX", ["10 mail.example.com."])
    dns.set("mail.example.com", "CNAME", ["real.hosting.example."])
    dns.set("real.hosting.example", "A", ["192.0.2.5"])
    dns.set("alias.example", "CNAME", ["example.com."])
    r = resolver(dns)
    expected = [MxHost("mail.example.com", 10, ("192.0.2.5",))]
    assert await r.resolve("example.com") == expected
    assert await r.resolve("alias.example") == expected


async def test_cname_to_nowhere_is_permanent(dns: DnsServer):
    dns.set("dangling.example", "CNAME", ["gone.example."])
    with pytest.raises(DnsPermanentError, match="NXDOMAIN"):
        await resolver(dns).resolve("dangling.example")


# -- failure classes ---------------------------------------------------------------------

async def test_nxdomain_is_permanent(dns: DnsServer):
    with pytest.raises(DnsPermanentError, match=r"nowhere.example does not exist \(NXDOMAIN\)"):
        await resolver(dns).resolve("nowhere.example")


async def test_servfail_is_temporary_and_not_cached(dns: DnsServer):
    dns.set("example.com", "MX", ["10 mx.example.com."])
    dns.set("mx.example.com", "A", ["192.0.2.1"])
    dns.servfail.add("example.com")
    r = resolver(dns)
    with pytest.raises(DnsTemporaryError, match=r"MX lookup for example\.com"):
        await r.resolve("example.com")
    dns.servfail.clear()
    assert names(await r.resolve("example.com")) == ["mx.example.com"]


async def test_stall_is_temporary_within_the_timeout(dns: DnsServer):
    dns.stall.add("slow.example")
    start = time.monotonic()
    with pytest.raises(DnsTemporaryError, match=r"timed out after 0\.3s"):
        await resolver(dns, timeout=0.3).resolve("slow.example")
    assert time.monotonic() - start < 1.0


async def test_mx_hosts_without_addresses_are_skipped(dns: DnsServer):
    dns.set("example.com", "MX", ["10 gone.example.com.", "20 empty.example.com.",
                                  "30 slow.example.com.", "40 ok.example.com."])
    dns.set("empty.example.com", "TXT", ['"no address here"'])
    dns.stall.add("slow.example.com")
    dns.set("ok.example.com", "A", ["192.0.2.4"])
    hosts = await resolver(dns, timeout=0.3).resolve("example.com")
    assert hosts == [MxHost("ok.example.com", 40, ("192.0.2.4",))]


async def test_no_mx_host_with_an_address(dns: DnsServer):
    dns.set("example.com", "MX", ["10 gone.example.com.", "20 empty.example.com."])
    dns.set("empty.example.com", "TXT", ['"no address here"'])
    r = resolver(dns)
    with pytest.raises(DnsPermanentError,
                       match=r"none of the MX hosts of example.com \(gone.example.com, "
                             r"empty.example.com\) has an address"):
        await r.resolve("example.com")
    dns.set("example.com", "MX", ["10 gone.example.com.", "20 broken.example.com."])
    dns.servfail.add("broken.example.com")
    r = resolver(dns)
    with pytest.raises(DnsTemporaryError, match=r"no address for any MX host of example\.com"):
        await r.resolve("example.com")


# -- cache -------------------------------------------------------------------------------

async def test_positive_answers_are_cached_for_their_ttl(dns: DnsServer):
    dns.set("example.com", "MX", ["10 mx.example.com."], ttl=600)
    dns.set("mx.example.com", "CNAME", ["real.example.com."], ttl=100)
    dns.set("real.example.com", "A", ["192.0.2.1"], ttl=3600)
    clock = Clock()
    r = resolver(dns, clock=clock)
    first = await r.resolve("example.com")
    assert dns.count("example.com", "MX") == 1 and dns.count("mx.example.com", "A") == 1
    clock.now += 99
    assert await r.resolve("example.com") == first
    assert dns.count("example.com", "MX") == 1 and dns.count("mx.example.com", "A") == 1
    clock.now += 2  # past the CNAME's 100 s (the chain's shortest TTL), not the MX's 600 s
    await r.resolve("example.com")
    assert dns.count("example.com", "MX") == 1 and dns.count("mx.example.com", "A") == 2
    dns.set("mx.example.com", "A", ["192.0.2.2"], ttl=60)
    clock.now += 600
    assert (await r.resolve("example.com"))[0].addresses == ("192.0.2.2",)
    assert dns.count("example.com", "MX") == 2


async def test_negative_answers_are_cached_with_the_soa_minimum(dns: DnsServer):
    dns.negative_ttl = 120
    dns.set("implicit.example", "A", ["192.0.2.1"])
    clock = Clock()
    r = resolver(dns, clock=clock)
    for _ in range(2):
        with pytest.raises(DnsPermanentError):
            await r.resolve("nowhere.example")
        await r.resolve("implicit.example")  # NODATA for MX, cached too
    assert dns.count("nowhere.example", "MX") == 1
    assert dns.count("implicit.example", "MX") == 1
    clock.now += 121
    dns.set("nowhere.example", "MX", ["10 implicit.example."])
    assert names(await r.resolve("nowhere.example")) == ["implicit.example"]


async def test_negative_ttl_without_soa_is_five_minutes(dns: DnsServer):
    dns.negative_ttl = None
    clock = Clock()
    r = resolver(dns, clock=clock)
    for step in (0, 299, 2):
        clock.now += step
        with pytest.raises(DnsPermanentError):
            await r.resolve("nowhere.example")
    assert dns.count("nowhere.example", "MX") == 2


async def test_cache_is_bounded(dns: DnsServer):
    for name in ("a.example", "b.example", "c.example"):
        dns.set(name, "MX", ["0 ."])
    r = resolver(dns, cache_size=2)
    for name in ("a.example", "b.example", "a.example", "c.example", "a.example", "b.example"):
        with pytest.raises(DnsPermanentError):
            await r.resolve(name)
    # a stays fresh by use; c's arrival evicts b, the least recently used.
    assert [dns.count(n, "MX") for n in ("a.example", "b.example", "c.example")] == [1, 2, 1]
    with pytest.raises(ValueError, match="cache_size"):
        MxResolver(nameservers=["127.0.0.1"], cache_size=-1)


async def test_cache_size_zero_disables_caching(dns: DnsServer):
    dns.set("a.example", "MX", ["0 ."])
    r = resolver(dns, cache_size=0)
    for _ in range(2):
        with pytest.raises(DnsPermanentError):
            await r.resolve("a.example")
    assert dns.count("a.example", "MX") == 2


# -- nameserver strings ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.53", ("192.0.2.53", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    (" 127.0.0.1:5353 ", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("2001:DB8::53", ("2001:db8::53", 53)),
    ("[::1]", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
    ("[2001:db8::1]:53", ("2001:db8::1", 53)),
])
def test_parse_nameserver(text: str, expected: tuple[str, int]):
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not an IP address"),
    ("dns.example", "is not an IP address"),
    ("dns.example:53", "is not an IP address"),
    ("1.2.3", "is not an IP address"),
    ("[::1", "unbalanced brackets"),
    ("[::1]5353", "unbalanced brackets"),
    ("[dns.example]:53", "is not an IP address"),
    ("127.0.0.1:", "port must be a number from 1 to 65535"),
    ("127.0.0.1:0", "port must be a number from 1 to 65535"),
    ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
    ("127.0.0.1:x53", "port must be a number from 1 to 65535"),
    ("[::1]:-1", "port must be a number from 1 to 65535"),
])
def test_bad_nameserver_strings(text: str, message: str):
    with pytest.raises(ValueError, match=message) as info:
        parse_nameserver(text)
    assert repr(text) in str(info.value)
    with pytest.raises(ValueError, match=message):
        MxResolver(nameservers=["127.0.0.1", text])


async def test_ipv6_nameserver_with_port_is_used():
    """The brackets form reaches dnspython with its port."""
    server = DnsServer({("example.com", "MX"): ["0 ."]}, host="::1")
    try:
        await server.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with pytest.raises(DnsPermanentError, match="null MX"):
            await MxResolver(nameservers=[f"[::1]:{server.port}"]).resolve("example.com")
        assert server.count("example.com", "MX") == 1
    finally:
        server.stop()


# -- property ----------------------------------------------------------------------------

POOL = ["h.test", "mx1.h.test", "mx2.h.test", "other.test", "x.other.test"]
rrsets = st.fixed_dictionaries({}, optional={
    "MX": st.lists(st.tuples(st.integers(0, 3), st.sampled_from([*POOL, "."])),
                   min_size=1, max_size=4).map(
        lambda rs: [f"{p} {t}{'' if t == '.' else '.'}" for p, t in rs]),
    "A": st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=3),
    "AAAA": st.lists(st.ip_addresses(v=6).map(str), min_size=1, max_size=3),
    "CNAME": st.sampled_from(POOL).map(lambda t: [f"{t}."]),
    "TXT": st.just(['"x"']),
})
zones = st.dictionaries(st.sampled_from(POOL), st.tuples(rrsets, st.booleans()), max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zone=zones, domain=st.one_of(st.sampled_from(POOL), st.text(max_size=20)),
       ttl=st.sampled_from([0, 1, 300]))
async def test_resolve_returns_hosts_or_one_of_the_dns_errors(zone, domain: str, ttl: int):
    server = DnsServer()
    for name, (sets, servfail) in zone.items():
        for rdtype, texts in sets.items():
            server.set(name, rdtype, texts, ttl=ttl)
        if servfail:
            server.servfail.add(name)
    await server.start()
    try:
        r = resolver(server, timeout=1.0, rng=random.Random(0))
        for _ in range(2):  # the second time through the cache
            try:
                hosts = await r.resolve(domain)
            except (DnsPermanentError, DnsTemporaryError) as e:
                assert str(e)
                continue
            assert isinstance(hosts, list) and hosts
            assert all(isinstance(h, MxHost) and h.addresses for h in hosts)
            assert [h.preference for h in hosts] == sorted(h.preference for h in hosts)
    finally:
        server.stop()
