"""The syntax of SPF records (RFC 7208 §4.5, §4.6, §5, §6): which TXT values are SPF
records, and their terms. A record that does not parse is a permerror for every receiver,
so this is checked before anything is looked up; kept apart from the evaluation in spf.py
because parsing needs no DNS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
#: Terms that make a receiver query DNS; the redirect modifier counts too (§4.6.4).
QUERYING = frozenset({"include", "a", "mx", "ptr", "exists"})

_VERSION = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)")
_DIRECTIVE = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)")
_DUAL_CIDR = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?$")
_DOMAIN = re.compile(r"[^\s.]+(\.[^\s.]+)+\.?")


class SpfSyntaxError(ValueError):
    """The record cannot be parsed: receivers return permerror for it."""


@dataclass(frozen=True)
class Term:
    """One mechanism as written (`text`), with `target` its domain-spec or address ("" when
    the mechanism takes the current domain) and the optional CIDR lengths of a and mx."""

    text: str
    qualifier: str
    mechanism: str
    target: str = ""
    cidr4: int | None = None
    cidr6: int | None = None

    @property
    def macro(self) -> bool:
        return "%" in self.target


@dataclass(frozen=True)
class SpfRecord:
    terms: tuple[Term, ...]
    redirect: str | None = None
    exp: str | None = None

    @property
    def follows_redirect(self) -> bool:
        """redirect= is ignored when the record has an all mechanism (§6.1)."""
        return self.redirect is not None and all(t.mechanism != "all" for t in self.terms)


def is_spf(text: str) -> bool:
    """A TXT value that is an SPF record: exactly "v=spf1" then a space or nothing (§4.5)."""
    return _VERSION.match(text) is not None


def parse(text: str) -> SpfRecord:
    """The terms of one record; SpfSyntaxError for anything a receiver would reject."""
    if not is_spf(text):
        raise SpfSyntaxError(f"{text[:40]!r} does not start with v=spf1")
    terms: list[Term] = []
    modifiers: dict[str, str] = {}
    for word in text.split()[1:]:
        modifier = _MODIFIER.fullmatch(word)
        if modifier is None:
            terms.append(_term(word))
            continue
        name, value = modifier[1].lower(), modifier[2]
        if name in ("redirect", "exp"):  # other modifiers are ignored (§6)
            if name in modifiers:
                raise SpfSyntaxError(f"{name}= appears twice")
            if not _DOMAIN.fullmatch(value):
                raise SpfSyntaxError(f"{word!r}: {value!r} is not a domain name")
            modifiers[name] = value.rstrip(".")
    return SpfRecord(tuple(terms), modifiers.get("redirect"), modifiers.get("exp"))


def _term(word: str) -> Term:
    match = _DIRECTIVE.fullmatch(word)
    mechanism = match[2].lower() if match else ""
    if match is None or mechanism not in MECHANISMS:
        raise SpfSyntaxError(f"{word!r} is not an SPF mechanism")
    qualifier, rest = match[1] or "+", match[3]
    if mechanism == "all":
        if rest:
            raise SpfSyntaxError(f"{word!r}: all takes no argument")
        return Term(word, qualifier, mechanism)
    if mechanism in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(rest[1:], strict=False)
        except ValueError:
            network = None
        if not rest.startswith(":") or network is None or network.version != int(
                mechanism[2]):
            raise SpfSyntaxError(f"{word!r}: not an {mechanism.upper()} address or network")
        return Term(word, qualifier, mechanism, rest[1:])
    cidr4 = cidr6 = None
    if mechanism in ("a", "mx"):
        cidrs = _DUAL_CIDR.search(rest)
        assert cidrs is not None  # the pattern matches the empty string
        cidr4, cidr6 = (int(n) if n else None for n in cidrs.groups())
        if (cidr4 or 0) > 32 or (cidr6 or 0) > 128:
            raise SpfSyntaxError(f"{word!r}: CIDR length out of range")
        rest = rest[:cidrs.start()]
    if (rest or mechanism in ("include", "exists")) and (
            not rest.startswith(":") or not _DOMAIN.fullmatch(rest[1:])):
        raise SpfSyntaxError(f"{word!r}: {mechanism} needs :domain")
    return Term(word, qualifier, mechanism, rest[1:].rstrip("."), cidr4, cidr6)

