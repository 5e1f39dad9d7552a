"""The SPF evaluator (RFC 7208) against a real DNS answerer on loopback: parsing, counting
DNS-querying terms and void lookups through includes and redirects, and whether a record
authorizes an address."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.asyncresolver
import pytest

from daemon.dnssetup.checks import resolver_for
from daemon.dnssetup.spf import (
    SpfSyntaxError,
    Term,
    authorizes,
    count_lookups,
    evaluate,
    is_spf,
    parse,
)
from tests.dnsserver import DnsServer


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    dns_server = DnsServer()
    await dns_server.start()
    yield dns_server
    dns_server.stop()


@pytest.fixture
def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    return resolver_for(f"127.0.0.1:{server.port}", timeout=2.0)


def spf(server: DnsServer, name: str, record: str) -> None:
    server.set(name, "TXT", [f'"{record}"'])


def include_chain(server: DnsServer, depth: int, *, top: str = "example.com") -> None:
    """top includes inc1, which has a, mx and includes inc2, ... down to inc<depth>:
    1 + 3 * depth - 1 DNS-querying terms, none of them void."""
    spf(server, top, "v=spf1 include:inc1.example.com -all")
    for i in range(1, depth + 1):
        host = f"inc{i}.example.com"
        more = f" include:inc{i + 1}.example.com" if i < depth else ""
        spf(server, host, f"v=spf1 a mx{more} ~all")
        server.set(host, "A", ["192.0.2.10"])
        server.set(host, "MX", [f"10 {host}."])


# -- parsing -----------------------------------------------------------------------------

def test_parse_terms_and_modifiers():
    record = parse("v=spf1 -ip4:192.0.2.0/24 a mx:mx.example.com/28//64 ip6:2001:db8::/32 "
                   "?include:_spf.example.net exists:%{i}.x.example.com ~all "
                   "redirect=other.example.com exp=explain.example.com custom=ignored")
    assert [t.mechanism for t in record.terms] == ["ip4", "a", "mx", "ip6", "include",
                                                   "exists", "all"]
    assert record.terms[0] == Term("-ip4:192.0.2.0/24", "-", "ip4", "192.0.2.0/24")
    assert record.terms[2] == Term("mx:mx.example.com/28//64", "+", "mx", "mx.example.com",
                                   28, 64)
    assert record.terms[4].qualifier == "?" and record.terms[4].target == "_spf.example.net"
    assert record.terms[5].macro and not record.terms[4].macro
    assert (record.redirect, record.exp) == ("other.example.com", "explain.example.com")
    assert not record.follows_redirect  # ignored beside an all mechanism (§6.1)
    assert parse("V=SPF1 redirect=b.example.com").follows_redirect


@pytest.mark.parametrize("text", ["v=spf1", "v=spf1 ", "V=Spf1 -all", "v=spf1 -all"])
def test_is_spf(text: str):
    assert is_spf(text)


@pytest.mark.parametrize("text", ["v=spf10 -all", "spf1 -all", "v=spf2.0/pra", "x v=spf1"])
def test_is_not_spf(text: str):
    assert not is_spf(text)


@pytest.mark.parametrize(("record", "message"), [
    ("v=spf1 ip4:192.0.2.1/33", "not an IP4"),
    ("v=spf1 ip4:2001:db8::1", "not an IP4"),
    ("v=spf1 ip6:192.0.2.1", "not an IP6"),
    ("v=spf1 include", "include needs :domain"),
    ("v=spf1 include:nodot", "include needs :domain"),
    ("v=spf1 exists:", "exists needs :domain"),
    ("v=spf1 a/33", "CIDR length out of range"),
    ("v=spf1 mx//129", "CIDR length out of range"),
    ("v=spf1 all:example.com", "all takes no argument"),
    ("v=spf1 allow", "not an SPF mechanism"),
    ("v=spf1 redirect=a.example.com redirect=b.example.com", "redirect= appears twice"),
    ("v=spf1 redirect=", "not a domain name"),
    ("v=spf2 -all", "does not start with v=spf1"),
])
def test_parse_rejects(record: str, message: str):
    with pytest.raises(SpfSyntaxError, match=message):
        parse(record)


# -- counting ----------------------------------------------------------------------------

async def test_count_through_nested_includes_past_the_limit(server, resolver):
    include_chain(server, 4)
    count = await count_lookups("example.com", resolver)
    assert count.terms == 12  # include + 3 x (a, mx, include) + a, mx
    assert count.void == 0
    assert count.chain == ["example.com", "inc1.example.com", "inc2.example.com",
                           "inc3.example.com", "inc4.example.com"]
    assert count.errors == []
    assert count.over_limit


async def test_count_at_exactly_the_limit_is_within_it(server, resolver):
    include_chain(server, 3)
    spf(server, "inc3.example.com", "v=spf1 a ~all")
    count = await count_lookups("example.com", resolver)
    assert (count.terms, count.void, count.over_limit) == (8, 0, False)
    spf(server, "inc3.example.com", "v=spf1 a mx a:inc1.example.com ~all")
    count = await count_lookups("example.com", resolver_for(f"127.0.0.1:{server.port}"))
    assert (count.terms, count.over_limit) == (10, False)


async def test_count_void_lookups(server, resolver):
    spf(server, "example.com", "v=spf1 a:nx1.example.com mx:nx2.example.com "
                               "exists:nx3.example.com ip4:127.0.0.5 -all")
    server.set("example.com", "A", ["192.0.2.1"])
    count = await count_lookups("example.com", resolver)
    assert (count.terms, count.void) == (3, 3)
    assert count.void_terms == ["a:nx1.example.com", "mx:nx2.example.com",
                                "exists:nx3.example.com"]
    assert count.over_limit
    server.set("nx1.example.com", "AAAA", ["2001:db8::1"])  # an address of either family
    assert (await count_lookups("example.com", resolver_for(
        f"127.0.0.1:{server.port}"))).void == 2


async def test_count_follows_redirect_unless_there_is_all(server, resolver):
    spf(server, "example.com", "v=spf1 mx redirect=_spf.example.net")
    server.set("example.com", "MX", ["10 mx.example.com."])
    spf(server, "_spf.example.net", "v=spf1 a:out.example.net ip4:192.0.2.0/24 -all")
    server.set("out.example.net", "A", ["192.0.2.3"])
    count = await count_lookups("example.com", resolver)
    assert (count.terms, count.void, count.chain) == (3, 0, ["example.com",
                                                             "_spf.example.net"])
    spf(server, "example.com", "v=spf1 mx -all redirect=_spf.example.net")
    count = await count_lookups("example.com", resolver_for(f"127.0.0.1:{server.port}"))
    assert (count.terms, count.chain) == (1, ["example.com"])


async def test_count_stops_at_a_loop(server, resolver):
    spf(server, "a.example.com", "v=spf1 include:b.example.com -all")
    spf(server, "b.example.com", "v=spf1 include:a.example.com -all")
    count = await count_lookups("a.example.com", resolver)
    assert count.errors == ["loop: a.example.com → b.example.com → a.example.com"]
    assert count.terms == 2


async def test_count_has_a_hard_cap(server, resolver):
    for i in range(80):
        spf(server, f"d{i}.example.com", f"v=spf1 include:d{i + 1}.example.com "
                                         f"include:d{i + 1}.example.com -all")
    count = await count_lookups("d0.example.com", resolver)
    assert count.over_limit
    assert count.terms == 60
    assert count.errors == ["stopped counting at 60 lookups"]


async def test_count_reports_missing_and_duplicate_included_records(server, resolver):
    spf(server, "example.com", "v=spf1 include:gone.example.com include:twice.example.com "
                               "include:nospf.example.com ~all")
    server.set("twice.example.com", "TXT", ['"v=spf1 -all"', '"v=spf1 ~all"'])
    server.set("nospf.example.com", "TXT", ['"google-site-verification=x"'])
    count = await count_lookups("example.com", resolver)
    assert count.terms == 3
    assert count.void == 1  # gone.example.com has no TXT at all; nospf has one
    assert count.errors == [
        "gone.example.com has no SPF records (named by include:gone.example.com in "
        "example.com)",
        "twice.example.com has 2 SPF records (named by include:twice.example.com in "
        "example.com)",
        "nospf.example.com has no SPF records (named by include:nospf.example.com in "
        "example.com)"]


async def test_count_notes_macros_and_big_mx_sets(server, resolver):
    spf(server, "example.com", "v=spf1 include:%{d}.spf.example.net exists:%{i}.e.example.net "
                               "mx:many.example.com ptr -all")
    server.set("many.example.com", "MX", [f"{i} mx{i}.example.com." for i in range(11)])
    count = await count_lookups("example.com", resolver)
    assert count.terms == 4
    assert "include:%{d}.spf.example.net (macro: not followed)" in count.chain
    assert count.errors == ["mx:many.example.com in example.com: many.example.com has 11 MX "
                            "hosts; more than 10 is a permerror"]


async def test_count_reports_unanswered_queries(server, resolver):
    spf(server, "example.com", "v=spf1 include:broken.example.net -all")
    server.servfail.add("broken.example.net")
    count = await count_lookups("example.com", resolver)
    assert len(count.errors) == 1
    assert count.errors[0].startswith("could not query: TXT broken.example.net")


# -- authorization -----------------------------------------------------------------------

@pytest.mark.parametrize(("record", "ip", "expected"), [
    ("v=spf1 ip4:127.0.0.5 -all", "127.0.0.5", True),
    ("v=spf1 ip4:127.0.0.0/24 -all", "127.0.0.5", True),
    ("v=spf1 ip4:127.0.1.0/24 -all", "127.0.0.5", False),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::5", True),
    ("v=spf1 ip6:2001:db8::/32 -all", "127.0.0.5", False),
    ("v=spf1 ip4:127.0.0.5 -all", "::ffff:127.0.0.5", True),
    ("v=spf1 -all ip4:127.0.0.5", "127.0.0.5", False),  # the first match decides
    ("v=spf1 ~ip4:127.0.0.5 +all", "127.0.0.5", False),
    ("v=spf1 +all", "192.0.2.99", True),
    ("v=spf1 ip4:192.0.2.1", "127.0.0.5", False),  # neutral
])
async def test_authorizes_by_address(server, resolver, record: str, ip: str, expected: bool):
    spf(server, "example.com", record)
    assert await authorizes("example.com", ip, resolver) is expected


async def test_authorizes_through_a_and_mx(server, resolver):
    spf(server, "example.com", "v=spf1 a mx:mail.example.net/24 a:v6.example.com//64 -all")
    server.set("example.com", "A", ["192.0.2.1"])
    server.set("mail.example.net", "MX", ["10 mx1.example.net.", "20 mx2.example.net."])
    server.set("mx2.example.net", "A", ["198.51.100.7"])
    server.set("v6.example.com", "AAAA", ["2001:db8:1::1"])
    assert await authorizes("example.com", "192.0.2.1", resolver) is True
    assert await authorizes("example.com", "198.51.100.200", resolver) is True  # the /24
    assert await authorizes("example.com", "2001:db8:1::ffff", resolver) is True
    assert await authorizes("example.com", "203.0.113.1", resolver) is False


async def test_include_matches_only_on_pass(server, resolver):
    spf(server, "example.com", "v=spf1 include:_spf.example.net ip4:127.0.0.5 -all")
    spf(server, "_spf.example.net", "v=spf1 ip4:192.0.2.0/24 -all")
    assert await authorizes("example.com", "192.0.2.44", resolver) is True
    # The include's -all is "no match" for the includer, so evaluation goes on.
    verdict = await evaluate("example.com", "127.0.0.5", resolver)
    assert verdict.result == "pass" and "ip4:127.0.0.5" in verdict.reason
    assert (await evaluate("example.com", "203.0.113.1", resolver)).result == "fail"


async def test_include_of_nothing_is_a_permerror(server, resolver):
    spf(server, "example.com", "v=spf1 include:gone.example.net ip4:127.0.0.5 -all")
    verdict = await evaluate("example.com", "127.0.0.5", resolver)
    assert verdict.result == "permerror" and "gone.example.net" in verdict.reason
    assert await authorizes("example.com", "127.0.0.5", resolver) is False


async def test_redirect_and_softfail(server, resolver):
    spf(server, "example.com", "v=spf1 redirect=_spf.example.com")
    spf(server, "_spf.example.com", "v=spf1 ip4:127.0.0.5 ~all")
    assert await authorizes("example.com", "127.0.0.5", resolver) is True
    assert (await evaluate("example.com", "192.0.2.1", resolver)).result == "softfail"
    spf(server, "example.com", "v=spf1 redirect=gone.example.com")
    fresh = resolver_for(f"127.0.0.1:{server.port}")
    assert (await evaluate("example.com", "127.0.0.5", fresh)).result == "permerror"


async def test_exists_and_ptr(server, resolver):
    spf(server, "example.com", "v=spf1 exists:allow.example.com -all")
    server.set("allow.example.com", "A", ["127.0.0.2"])
    assert await authorizes("example.com", "203.0.113.9", resolver) is True
    spf(server, "ptr.example", "v=spf1 ptr:example.com -all")
    server.set("9.113.0.203.in-addr.arpa", "PTR", ["host.example.com."])
    server.set("host.example.com", "A", ["203.0.113.9"])
    server.set("8.113.0.203.in-addr.arpa", "PTR", ["forged.example.com."])
    assert await authorizes("ptr.example", "203.0.113.9", resolver) is True
    assert await authorizes("ptr.example", "203.0.113.8", resolver) is False  # not validated


async def test_limits_apply_while_evaluating(server, resolver):
    include_chain(server, 4)
    spf(server, "example.com", "v=spf1 ip4:127.0.0.5 include:inc1.example.com -all")
    # A match before the limit is reached is a pass, as receivers evaluate lazily...
    assert await authorizes("example.com", "127.0.0.5", resolver) is True
    # ...but an address that needs the whole tree meets the limit first.
    verdict = await evaluate("example.com", "203.0.113.1", resolver)
    assert verdict.result == "permerror" and "more than 10 DNS lookups" in verdict.reason
    spf(server, "void.example", "v=spf1 a:nx1.void.example a:nx2.void.example "
                                "a:nx3.void.example ip4:127.0.0.5 -all")
    verdict = await evaluate("void.example", "127.0.0.5", resolver)
    assert verdict.result == "permerror" and "void lookups" in verdict.reason


async def test_loops_are_permerrors(server, resolver):
    spf(server, "a.example.com", "v=spf1 include:b.example.com -all")
    spf(server, "b.example.com", "v=spf1 redirect=a.example.com")
    verdict = await evaluate("a.example.com", "127.0.0.5", resolver)
    assert verdict.result == "permerror" and verdict.reason.startswith("loop:")


async def test_undeterminable_is_none(server, resolver):
    spf(server, "example.com", "v=spf1 exists:%{i}._spf.example.com -all")
    assert await authorizes("example.com", "127.0.0.5", resolver) is None
    assert (await evaluate("example.com", "127.0.0.5", resolver)).result == "unknown"
    spf(server, "flaky.example", "v=spf1 include:broken.example.net -all")
    server.servfail.add("broken.example.net")
    assert await authorizes("flaky.example", "127.0.0.5", resolver) is None
    # The macro is never reached when an earlier term matches.
    spf(server, "early.example", "v=spf1 ip4:127.0.0.5 exists:%{i}.x.example -all")
    assert await authorizes("early.example", "127.0.0.5", resolver) is True


async def test_no_record_or_two_records_do_not_authorize(server, resolver):
    assert (await evaluate("none.example", "127.0.0.5", resolver)).result == "none"
    assert await authorizes("none.example", "127.0.0.5", resolver) is False
    server.set("two.example", "TXT", ['"v=spf1 ip4:127.0.0.5 -all"', '"v=spf1 -all"'])
    assert (await evaluate("two.example", "127.0.0.5", resolver)).result == "permerror"
