"""Relay policy: envelope address syntax, sender patterns, trusted networks, and the exact
replies for refused relays and senders."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.mail.intake.policy import (
    Decision,
    User,
    check_header_from,
    check_mail_from,
    check_relay,
    in_networks,
    normalize_domain,
    parse_path,
    parse_sender_pattern,
    sender_allowed,
    validate_address,
)
from daemon.passwords import hash_password, parse_hash

PASSWORD = parse_hash(hash_password("dev", ln=4))


def user(*patterns: str, name: str = "dev") -> User:
    return User(name, PASSWORD, tuple(parse_sender_pattern(p) for p in patterns))


@pytest.mark.parametrize(("text", "expected"), [
    ("<alerts@example.com>", "alerts@example.com"),
    ("alerts@example.com", "alerts@example.com"),            # Postfix accepts no brackets
    (" <alerts@example.com> ", "alerts@example.com"),
    ("<first.last+tag@mail.example.com>", "first.last+tag@mail.example.com"),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~@example.com"),
    ('<"john doe"@example.com>', '"john doe"@example.com'),
    ('<"a@b"@example.com>', '"a@b"@example.com'),
    ('<"quote\\"inside"@example.com>', '"quote\\"inside"@example.com'),
    ('<""@example.com>', '""@example.com'),
    ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
    ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
    ("<@relay.example,@[192.0.2.1]:user@example.com>", "user@example.com"),
    ("<jörg@bücher.de>", "jörg@bücher.de"),
    ("<用户@例子.广告>", "用户@例子.广告"),
    ("<user@xn--bcher-kva.de>", "user@xn--bcher-kva.de"),
    ("<user@localhost>", "user@localhost"),
    ("<USER@EXAMPLE.COM>", "USER@EXAMPLE.COM"),                # returned as given
])
def test_valid_paths(text, expected):
    assert parse_path(text, allow_null=False) == expected


def test_null_path():
    assert parse_path("<>", allow_null=True) == ""
    with pytest.raises(ValueError, match="null address"):
        parse_path("<>", allow_null=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("<user@example.com", "no closing '>'"),
    ("user@example.com>", "no opening '<'"),
    ("<user>", "has no '@domain'"),
    ("<user@>", "domain after '@' is empty"),
    ("<@example.com>", "not ended by ':'"),
    ("<a@b@example.com>", "more than one '@'"),
    ("<john doe@example.com>", "contains a space, which is only allowed in a quoted"),
    ("<john..doe@example.com>", "two dots in a row"),
    ("<.john@example.com>", "starts or ends with a dot"),
    ("<john.@example.com>", "starts or ends with a dot"),
    ("<jo(hn)@example.com>", "contains '\\('"),
    ('<"unterminated@example.com>', "no closing '\"'"),
    ('<"bad\tquote"@example.com>', "quoted local part contains the character U\\+0009"),
    ('<"x"y@example.com>', "expected '@' after the quoted local part"),
    ("<user@example..com>", "empty label"),
    ("<user@example.com.>", "ends with a dot"),
    ("<user@-example.com>", "starts or ends with '-'"),
    ("<user@exa_mple.com>", "contains '_'"),
    ("<user@exa mple.com>", "contains a space"),
    ("<user@" + "a" * 64 + ".com>", "longer than 63 octets"),
    ("<" + "a" * 250 + "@example.com>", "RFC 5321 allows 254"),
    ("<user@[192.0.2.300]>", "not an IPv4 or \\[IPv6:...\\] address literal"),
    ("<user@[IPv6:nonsense]>", "address literal"),
    ("<user@[192.0.2.1>", "no closing ']'"),
    ("<us\x00er@example.com>", "U\\+0000"),
    ("<user@exam\u200bple.com>", "U\\+200B"),
    ("<us\udcffer@example.com>", "not valid UTF-8"),
])
def test_invalid_paths_say_what_is_wrong(text, expected):
    with pytest.raises(ValueError, match=expected) as info:
        parse_path(text, allow_null=True)
    assert str(info.value).isascii()    # it becomes part of a 501 reply


def test_utf8_needs_smtputf8():
    with pytest.raises(ValueError, match="SMTPUTF8"):
        parse_path("<jörg@example.com>", allow_null=False, smtputf8=False)
    with pytest.raises(ValueError, match="SMTPUTF8"):
        parse_path("<user@bücher.de>", allow_null=False, smtputf8=False)
    assert parse_path("<user@xn--bcher-kva.de>", allow_null=False, smtputf8=False)


@given(st.text(max_size=80))
def test_parse_path_only_raises_value_error(text):
    with contextlib.suppress(ValueError):
        result = parse_path(text, allow_null=True)
        assert result == "" or validate_address(result) == result


@pytest.mark.parametrize(("text", "expected"), [
    ("*", "*"),
    ("alerts@example.com", "alerts@example.com"),
    ("Alerts@Example.COM", "alerts@example.com"),
    ("*@Example.com", "*@example.com"),
    ("*@*.example.com", "*@*.example.com"),
    ("alerts@*.example.com", "alerts@*.example.com"),
    ('"John Doe"@example.com', '"john doe"@example.com'),
    ('"john"@example.com', "john@example.com"),
    ("*@bücher.de", "*@xn--bcher-kva.de"),
])
def test_sender_patterns_normalize(text, expected):
    assert parse_sender_pattern(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("@example.com", "no local part \\(write \\*@example.com"),
    ("example.com", "no '@'"),
    ("alerts @example.com", "contains a space"),
    (" alerts@example.com", "leading or trailing spaces"),
    ("a@b@example.com", "more than one '@'"),
    ("al*@example.com", "wildcard only as the whole local part"),
    ("*@*", "use '\\*' alone"),
    ("*@mail.*.example.com", "only as the first label"),
    ("*@example..com", "empty label"),
    ("*@", "domain after '@' is empty"),
    ("a..b@example.com", "two dots"),
])
def test_bad_sender_patterns_say_what_is_wrong(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_sender_pattern(text)


@pytest.mark.parametrize(("patterns", "address", "allowed"), [
    (["alerts@example.com"], "alerts@example.com", True),
    (["alerts@example.com"], "ALERTS@Example.Com", True),       # case-insensitive, like Postfix
    (["alerts@example.com"], "other@example.com", False),
    (["alerts@example.com"], "alerts@example.com.evil.net", False),
    (["alerts@example.com"], '"alerts"@example.com', True),
    (["*@example.com"], "anyone@example.com", True),
    (["*@example.com"], "anyone@sub.example.com", False),
    (["*@example.com"], "anyone@notexample.com", False),
    (["*@example.com"], "anyone@example.com.evil.net", False),
    (["*@*.example.com"], "a@sub.example.com", True),
    (["*@*.example.com"], "a@deep.sub.example.com", True),
    (["*@*.example.com"], "a@example.com", False),
    (["*@*.example.com"], "a@badexample.com", False),
    (["alerts@*.example.com"], "alerts@eu.example.com", True),
    (["alerts@*.example.com"], "billing@eu.example.com", False),
    (["*@example.com", "*@example.org"], "x@example.org", True),
    (["*@xn--bcher-kva.de"], "jörg@BÜCHER.de", True),
    (["*@bücher.de"], "x@xn--bcher-kva.de", True),
    (["*@example.com"], "", False),                             # <> is not at the domain
    (["*"], "", True),
    (["*"], "anyone@anywhere.test", True),
    ([], "alerts@example.com", False),
    (["*@example.com"], "not an address", False),
])
def test_sender_allowed(patterns, address, allowed):
    assert sender_allowed([parse_sender_pattern(p) for p in patterns], address) is allowed


@given(st.text(max_size=60))
def test_sender_allowed_never_raises(address):
    assert sender_allowed(["*@example.com", "a@*.example.org"], address) in (True, False)


def test_normalize_domain():
    assert normalize_domain("Example.COM") == "example.com"
    assert normalize_domain("BÜCHER.de") == "xn--bcher-kva.de"


NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.1.0.0/16", "fd00::/8")]


@pytest.mark.parametrize(("address", "inside"), [
    ("127.0.0.1", True),
    ("10.1.2.3", True),
    ("10.2.0.1", False),
    ("192.0.2.1", False),
    ("::ffff:127.0.0.1", True),                  # dual-stack socket, IPv4 client
    ("::ffff:10.1.9.9", True),
    ("::ffff:192.0.2.1", False),
    ("fd00::1", True),
    ("fe80::1", False),
    ("::1", False),                              # IPv6 loopback is not 127.0.0.0/8
    ("not an address", False),
    ("", False),
])
def test_in_networks(address, inside):
    assert in_networks(address, NETS) is inside


def test_in_networks_with_scoped_ipv6():
    assert in_networks("fe80::1%eth0", [ipaddress.ip_network("fe80::/10")])


def test_ipv4_mapped_network_matches_mapped_addresses():
    assert in_networks("::ffff:10.0.0.1", [ipaddress.ip_network("::ffff:10.0.0.0/104")])


def test_no_open_relay():
    refused = check_relay(authenticated_user=None, client_trusted=False)
    assert not refused.ok
    assert refused.reply() == ("554 5.7.1 Relay access denied: authenticate first or send "
                               "from a trusted network")
    assert check_relay(authenticated_user=None, client_trusted=True).ok
    assert check_relay(authenticated_user=user("*@example.com"), client_trusted=False).ok


def test_mail_from_must_match_the_users_senders():
    dev = user("*@example.com")
    assert check_mail_from(dev, "app@example.com").ok
    refused = check_mail_from(dev, "ceo@bank.example")
    assert not refused.ok
    assert refused.reply() == ("553 5.7.1 Sender address <ceo@bank.example> not allowed for "
                               "user dev (allowed: *@example.com)")
    assert not check_mail_from(dev, "").ok


def test_trusted_clients_may_use_any_sender_including_null():
    assert check_mail_from(None, "anyone@anywhere.test").ok
    assert check_mail_from(None, "").ok


def test_refusal_lists_a_bounded_number_of_patterns():
    many = user(*(f"*@d{i}.example" for i in range(12)))
    message = check_mail_from(many, "x@other.example").message
    assert "*@d4.example and 7 more)" in message
    assert "d5.example" not in message


def test_refusal_text_is_one_ascii_line():
    dev = user("a@example.com")
    reply = check_header_from(dev, ["evil\r\n250 ok@x.test"]).reply()
    assert "\r" not in reply
    assert "\n" not in reply
    reply = check_mail_from(dev, "jörg@bücher.de").reply()
    assert reply.isascii()
    assert "<j\\xf6rg@b\\xfccher.de>" in reply


def test_header_from_must_match_every_address():
    dev = user("*@example.com")
    assert check_header_from(dev, ["a@example.com", "b@EXAMPLE.com"]).ok
    refused = check_header_from(dev, ["a@example.com", "boss@bank.example"])
    assert (refused.code, refused.ok) == (550, False)
    assert refused.message == ("5.7.1 From: header address <boss@bank.example> not allowed for "
                               "user dev (allowed: *@example.com)")
    assert not check_header_from(dev, []).ok
    assert check_header_from(None, ["boss@bank.example"]).ok


def test_decision_reply():
    assert Decision(False, 451, "4.7.1 Slow down").reply() == "451 4.7.1 Slow down"


def test_sender_allowed_also_takes_patterns_as_written_in_the_config():
    raw = ["*@Example.COM", '"Alerts"@Example.org', "*@*.BÜCHER.de"]
    assert sender_allowed(raw, "x@example.com")
    assert sender_allowed(raw, "alerts@example.org")
    assert sender_allowed(raw, "x@shop.xn--bcher-kva.de")
    assert not sender_allowed(raw, "x@example.net")
