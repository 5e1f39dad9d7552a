"""Relay policy: who may relay, as which senders, and what an SMTP address may look like.

Pure decisions the SMTP server asks per command (DESIGN.md contract 5: no open relay, no
spoofing). Each refusal is a `Decision` carrying the exact reply, so the text a client sees
names the rule that failed and the server has no policy wording of its own.

Address comparison is case-insensitive in the local part as well as the domain. RFC 5321
lets a receiving system treat local parts case-sensitively, but no mail system egen relays
for does, and Postfix compares sender-login maps case-insensitively too; comparing
case-sensitively would only let "Alerts@" slip past a rule written for "alerts@".
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.passwords import PasswordHash

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 5322 atext; RFC 6531 adds every non-ASCII UTF-8 character.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
MAX_PATH_OCTETS = 256  # RFC 5321 4.5.3.1.3, including the angle brackets
_SHOWN_PATTERNS = 5


def _show(char: str) -> str:
    """A character as it can be quoted in an SMTP reply (no controls reach the client)."""
    if char == " ":
        return "a space"
    return ascii(char) if char.isprintable() else f"U+{ord(char):04X}"


def _check_text(text: str, what: str, smtputf8: bool) -> None:
    for char in text:
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"{what} is not valid UTF-8")
        if not char.isascii():
            if not smtputf8:
                raise ValueError(f"{what} contains non-ASCII characters, which need SMTPUTF8")
            if unicodedata.category(char)[0] in "CZ":
                raise ValueError(f"{what} contains the character {_show(char)}")


def _check_quoted_local(local: str) -> None:
    """RFC 5321 Quoted-string: qtextSMTP and backslash pairs between double quotes."""
    i = 1
    while i < len(local) - 1:
        char = local[i]
        if char == "\\":
            if i + 1 >= len(local) - 1 or not 32 <= ord(local[i + 1]) <= 126:
                raise ValueError("backslash in the quoted local part escapes nothing printable")
            i += 2
            continue
        if char == '"':
            raise ValueError("unescaped '\"' inside the quoted local part")
        if char.isascii() and not 32 <= ord(char) <= 126:
            raise ValueError(f"the quoted local part contains the character {_show(char)}")
        i += 1


def _check_local(local: str, smtputf8: bool) -> None:
    if not local:
        raise ValueError("the local part before '@' is empty")
    _check_text(local, "the local part", smtputf8)
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise ValueError("the quoted local part has no closing '\"'")
        _check_quoted_local(local)
        return
    if local.startswith(".") or local.endswith("."):
        raise ValueError(f"the local part {local!a} starts or ends with a dot "
                         "(quote it if that is intended)")
    if ".." in local:
        raise ValueError(f"the local part {local!a} has two dots in a row "
                         "(quote it if that is intended)")
    for char in local:
        if char.isascii() and char not in _ATEXT and char != ".":
            raise ValueError(f"the local part contains {_show(char)}, which is only allowed "
                             "in a quoted local part")


def _alabel(label: str) -> str:
    """IDNA2008-style A-label of an already valid U-label (NFC, lowercased)."""
    return "xn--" + unicodedata.normalize("NFC", label.lower()).encode("punycode").decode("ascii")


def _check_domain(domain: str, smtputf8: bool) -> None:
    if not domain:
        raise ValueError("the domain after '@' is empty")
    if domain.startswith("["):
        _check_address_literal(domain)
        return
    _check_text(domain, "the domain", smtputf8)
    if domain.endswith("."):
        raise ValueError(f"the domain {domain!a} ends with a dot")
    total = 0
    for label in domain.split("."):
        if not label:
            raise ValueError(f"the domain {domain!a} has an empty label")
        ascii_label = label
        if label.isascii():
            bad = next((c for c in label if c not in _LDH), None)
            if bad is not None:
                raise ValueError(f"the domain {domain!a} contains {_show(bad)} (only letters, "
                                 "digits, '-' and '.' are allowed)")
        else:
            bad = next((c for c in label if c.isascii() and c not in _LDH), None)
            if bad is not None:
                raise ValueError(f"the domain {domain!a} contains {_show(bad)}")
            ascii_label = _alabel(label)
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"the domain label {label!a} starts or ends with '-'")
        if len(ascii_label) > 63:
            raise ValueError(f"the domain label {label[:20]!a}... is longer than 63 octets")
        total += len(ascii_label) + 1
    if total - 1 > 253:
        raise ValueError(f"the domain is longer than 253 octets ({total - 1})")


def _check_address_literal(domain: str) -> None:
    if not domain.endswith("]"):
        raise ValueError("the address literal has no closing ']'")
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise ValueError(f"{domain[:60]!a} is not an IPv4 or [IPv6:...] address literal") from None


def _split(address: str) -> tuple[str, str]:
    """local, domain of a bare address; a quoted local part may contain '@'."""
    if address.startswith('"'):
        i = 1
        while i < len(address):
            if address[i] == "\\":
                i += 2
                continue
            if address[i] == '"':
                break
            i += 1
        else:
            raise ValueError("the quoted local part has no closing '\"'")
        rest = address[i + 1:]
        if not rest.startswith("@"):
            raise ValueError("expected '@' after the quoted local part")
        return address[:i + 1], rest[1:]
    count = address.count("@")
    if count == 0:
        raise ValueError(f"{address[:100]!a} has no '@domain'")
    if count > 1:
        raise ValueError(f"{address[:100]!a} has more than one '@' "
                         "(an '@' in the local part must be quoted)")
    local, _, domain = address.partition("@")
    return local, domain


def validate_address(address: str, *, smtputf8: bool = True) -> str:
    """Check a bare mailbox (local@domain, no angle brackets) against RFC 5321/6531."""
    local, domain = _split(address)
    _check_local(local, smtputf8)
    _check_domain(domain, smtputf8)
    octets = len(address.encode("utf-8", "surrogatepass")) + 2
    if octets > MAX_PATH_OCTETS:
        raise ValueError(f"the address is {octets - 2} octets long; RFC 5321 allows "
                         f"{MAX_PATH_OCTETS - 2}")
    return address


def _strip_source_route(path: str, smtputf8: bool) -> str:
    """'@a,@b:user@c' -> 'user@c': RFC 5321 says accept and ignore source routes."""
    i = 0
    while path.startswith("@", i):
        end = i + 1
        depth = 0
        while end < len(path) and (depth or path[end] not in ",:"):
            depth += {"[": 1, "]": -1}.get(path[end], 0)
            end += 1
        if end >= len(path):
            raise ValueError("the source route is not ended by ':'")
        _check_domain(path[i + 1:end], smtputf8)
        i = end + 1
        if path[end] == ":":
            return path[i:]
    raise ValueError("the source route is not a list of @domain separated by ','")


def parse_path(text: str, *, allow_null: bool, smtputf8: bool = True) -> str:
    """The bare address of a MAIL FROM/RCPT TO argument; ValueError says what is wrong.

    Accepts what RFC 5321 (with RFC 6531 UTF-8) allows, plus a missing pair of angle
    brackets, as Postfix does. The reply code (501 5.1.7 for senders, 501 5.1.3 for
    recipients, 553 5.6.7 for UTF-8 without SMTPUTF8) is the caller's choice.
    """
    path = text.strip(" \t")
    if path.startswith("<"):
        if not path.endswith(">"):
            raise ValueError("the address has no closing '>'")
        path = path[1:-1]
    elif path.endswith(">"):
        raise ValueError("the address has no opening '<'")
    if not path:
        if allow_null:
            return ""
        raise ValueError("the null address <> is not allowed here")
    if path.startswith("@"):
        path = _strip_source_route(path, smtputf8)
    return validate_address(path, smtputf8=smtputf8)


def normalize_domain(domain: str) -> str:
    """Lowercase, with non-ASCII labels as A-labels: one spelling per domain to compare."""
    domain = domain.lower()
    if domain.isascii():
        return domain
    return ".".join(label if label.isascii() else _alabel(label) for label in domain.split("."))


def _normalize_local(local: str) -> str:
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        inner = local[1:-1].replace("\\\\", "\0").replace("\\", "").replace("\0", "\\")
        try:
            _check_local(inner, smtputf8=True)
        except ValueError:
            return local.lower()
        local = inner  # "john"@x and john@x are the same mailbox
    return local.lower()


def _normalize(address: str) -> tuple[str, str]:
    local, domain = _split(address)
    return _normalize_local(local), normalize_domain(domain)


def parse_sender_pattern(text: str) -> str:
    """Validate and normalize one `allowed_senders` entry.

    Forms: "alerts@example.com" (that address), "*@example.com" (any address at the
    domain), "*@*.example.com" (any address at any subdomain, not the domain itself; list
    both for both), and "*" alone (any sender, including <> — dangerous: the user can
    then forge any From:, so use it only for a relay of relays).
    """
    if text == "*":
        return "*"
    if not text:
        raise ValueError("the sender pattern is empty")
    if text != text.strip():
        raise ValueError(f"the sender pattern {text!r} has leading or trailing spaces")
    if any(c.isspace() for c in text) and not text.startswith('"'):
        raise ValueError(f"the sender pattern {text!r} contains a space")
    if "@" not in text:
        raise ValueError(f"the sender pattern {text!r} has no '@' (write alerts@example.com, "
                         "*@example.com or *@*.example.com)")
    if text.startswith("@"):
        raise ValueError(f"the sender pattern {text!r} has no local part (write *{text} for "
                         "any address at the domain)")
    try:
        local, domain = _split(text)
    except ValueError as err:
        raise ValueError(f"the sender pattern {text!r}: {err}") from None
    if local != "*":
        if "*" in local:
            raise ValueError(f"the sender pattern {text!r}: '*' is a wildcard only as the "
                             "whole local part (*@domain)")
        try:
            _check_local(local, smtputf8=True)
        except ValueError as err:
            raise ValueError(f"the sender pattern {text!r}: {err}") from None
    subdomains = domain.startswith("*.")
    suffix = domain[2:] if subdomains else domain
    if "*" in suffix:
        raise ValueError(f"the sender pattern {text!r}: '*' in the domain is a wildcard only "
                         "as the first label (*@*.example.com); use '*' alone for any sender")
    try:
        _check_domain(suffix, smtputf8=True)
    except ValueError as err:
        raise ValueError(f"the sender pattern {text!r}: {err}") from None
    prefix = "*." if subdomains else ""
    return f"{'*' if local == '*' else _normalize_local(local)}@{prefix}{normalize_domain(suffix)}"


def sender_allowed(patterns: Sequence[str], address: str) -> bool:
    """Does any pattern (from parse_sender_pattern) allow this bare address ("" = <>)?"""
    try:
        local, domain = _normalize(address) if address else ("", "")
    except ValueError:
        return False
    for pattern in patterns:
        if pattern == "*":
            return True
        if not address:
            continue
        plocal, _, pdomain = pattern.rpartition("@")  # pattern domains never contain '@'
        if plocal != "*" and _normalize_local(plocal) != local:
            continue
        if pdomain.startswith("*."):
            if domain.endswith("." + normalize_domain(pdomain[2:])):
                return True
        elif normalize_domain(pdomain) == domain:
            return True
    return False


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    """Is the peer address in any network? An unparsable address is never trusted.

    ::ffff:a.b.c.d (what a dual-stack socket reports for IPv4 peers) is checked as the
    IPv4 address too, so "127.0.0.0/8" covers loopback clients of a [::] listener.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c.version == net.version and c in net for c in candidates for net in networks)


@dataclass(frozen=True)
class User:
    name: str
    password: PasswordHash
    allowed_senders: tuple[str, ...]     # from parse_sender_pattern


@dataclass(frozen=True)
class Decision:
    ok: bool
    code: int
    message: str                         # enhanced status code and text

    def reply(self) -> str:
        return f"{self.code} {self.message}"


def _printable(text: str, limit: int = 200) -> str:
    """User-supplied text for a reply line: ASCII (aiosmtpd encodes replies as ASCII
    unless SMTPUTF8 is enabled), no controls, bounded length."""
    text = text if len(text) <= limit else text[:limit] + "..."
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _allowed_list(user: User) -> str:
    shown = ", ".join(user.allowed_senders[:_SHOWN_PATTERNS])
    more = len(user.allowed_senders) - _SHOWN_PATTERNS
    return shown + (f" and {more} more" if more > 0 else "")


def check_relay(*, authenticated_user: User | None, client_trusted: bool) -> Decision:
    """At RCPT: egen has no local mailboxes, so every recipient is a relay."""
    if authenticated_user is not None or client_trusted:
        return Decision(True, 250, "2.1.5 Ok")
    return Decision(False, 554, "5.7.1 Relay access denied: authenticate first or send from "
                                "a trusted network")


def check_mail_from(user: User | None, address: str) -> Decision:
    """`address` is parse_path's result; a trusted unauthenticated client may use any."""
    if user is None or sender_allowed(user.allowed_senders, address):
        return Decision(True, 250, "2.1.0 Ok")
    return Decision(False, 553, f"5.7.1 Sender address <{_printable(address)}> not allowed for "
                                f"user {_printable(user.name)} (allowed: {_allowed_list(user)})")


def check_header_from(user: User | None, from_addresses: Sequence[str]) -> Decision:
    """At end of DATA: every From: address, not only the first, or a second one spoofs."""
    if user is None:
        return Decision(True, 250, "2.6.0 Ok")
    if not from_addresses:
        return Decision(False, 550, "5.7.1 Message has no From: address to check against the "
                                    f"senders allowed for user {_printable(user.name)}")
    for address in from_addresses:
        if not sender_allowed(user.allowed_senders, address):
            return Decision(False, 550, f"5.7.1 From: header address <{_printable(address)}> "
                                        f"not allowed for user {_printable(user.name)} "
                                        f"(allowed: {_allowed_list(user)})")
    return Decision(True, 250, "2.6.0 Ok")
