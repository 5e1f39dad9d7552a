"""The parameters of the DSN extension (RFC 3461) and its rule for who gets a report.

Apart from the report builder (daemon.mail.delivery.bounce), and beside both intake and
delivery, because SMTP intake needs these at MAIL and RCPT time, long before any report
exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

MAX_ENVID = 100                         # RFC 3461 4.4, in its xtext form
MAX_ORCPT = 500                         # RFC 3461 4.2, in its xtext form
NOTIFY_KEYWORDS = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")     # RFC 5322 atext
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
# RFC 6533 utf-8-addr-xtext / utf-8-addr-unitext: QCHAR, non-ASCII, or \x{HEXPOINT}.
_UTF8_ADDR = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]|[^\x00-\x9f\ud800-\udfff]"
    r"|\\x\{([0-9A-Fa-f]{2,6})\})+")
_UTF8_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
# Which NOTIFY condition (RFC 3461 4.1) asks for a DSN with this action. "expired" is not a
# DSN action (an expired recipient is reported as "failed", status 4.4.7) but the queue
# speaks of it, so it is accepted here.
_CONDITION = {"failed": "FAILURE", "expired": "FAILURE", "delayed": "DELAY",
              "delivered": "SUCCESS", "relayed": "SUCCESS", "expanded": "SUCCESS"}


def parse_notify(value: str) -> tuple[str, ...]:
    """The NOTIFY= parameter of RCPT TO as keywords: "success,FAILURE" -> (SUCCESS, FAILURE)."""
    return _check_notify(value.split(","))


def _check_notify(notify: Iterable[str]) -> tuple[str, ...]:
    keywords = tuple(dict.fromkeys(word.upper() for word in notify))
    if not keywords:
        raise ValueError("NOTIFY needs NEVER or one or more of SUCCESS, FAILURE, DELAY")
    for word in keywords:
        if word not in NOTIFY_KEYWORDS:
            raise ValueError(f"NOTIFY keyword {word!a} is not one of "
                             f"{', '.join(NOTIFY_KEYWORDS)}")
    if "NEVER" in keywords and len(keywords) > 1:
        raise ValueError("NOTIFY=NEVER cannot be combined with other keywords")
    return keywords


def should_notify(*, envelope_sender: str, notify: Sequence[str] | None, action: str) -> bool:
    """Whether a recipient's outcome earns a DSN to the envelope sender (RFC 3461 4.1).

    Never for the null sender: that is a bounce or an auto-reply, and answering it is how
    bounce loops start (RFC 5321 6.1). NOTIFY=NEVER: never. With NOTIFY, exactly the
    listed conditions (FAILURE covers failed and expired recipients, DELAY delayed ones,
    SUCCESS delivered, relayed and expanded ones). Without NOTIFY, RFC 3461's default:
    failures and delays, never success. `notify` is what parse_notify returned; other
    values raise ValueError, as does an unknown action.
    """
    try:
        condition = _CONDITION[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}") from None
    if not envelope_sender:
        return False
    if notify is None:
        return condition in ("FAILURE", "DELAY")
    return condition in _check_notify(notify)


def _xtext_decode(value: str, what: str) -> str:
    """RFC 3461 4 xtext -> text. Lower-case hex after "+" is accepted (be liberal)."""
    if not _XTEXT.fullmatch(value):
        bad = next((c for c in value if not 0x21 <= ord(c) <= 0x7E or c == "="), "+")
        shown = "a '+' not followed by two hex digits" if bad == "+" else repr(bad)
        raise ValueError(f"{what} is not valid xtext: it contains {shown}")
    decoded = _HEXCHAR.sub(lambda m: chr(int(m[1], 16)), value)
    for char in decoded:
        if not 0x20 <= ord(char) <= 0x7E:
            raise ValueError(f"{what} encodes the character U+{ord(char):04X}; only "
                             "printable US-ASCII is allowed")
    return decoded


def parse_envid(value: str) -> str:
    """The ENVID= parameter of MAIL FROM (RFC 3461 4.4), xtext-decoded."""
    if not value:
        raise ValueError("ENVID must not be empty")
    if len(value) > MAX_ENVID:
        raise ValueError(f"ENVID is {len(value)} characters long; at most {MAX_ENVID} "
                         "are allowed")
    return _xtext_decode(value, "ENVID")


def parse_orcpt(value: str) -> str:
    """The ORCPT= parameter of RCPT TO (RFC 3461 4.2) as the DSN's Original-Recipient wants it.

    "rfc822;a+2Bb@x" -> "rfc822;a+b@x". The RFC 6533 "utf-8" address type has its own
    escapes (\\x{HEX}) instead of xtext; it is validated and returned as given.
    """
    if len(value) > MAX_ORCPT:
        raise ValueError(f"ORCPT is {len(value)} characters long; at most {MAX_ORCPT} "
                         "are allowed")
    addr_type, sep, address = value.partition(";")
    if not sep or not _ADDR_TYPE.fullmatch(addr_type):
        raise ValueError("ORCPT must be an address type, ';' and an address, like "
                         "rfc822;user@example.com")
    if not address:
        raise ValueError("ORCPT has no address after the ';'")
    if addr_type.lower() == "utf-8":
        match = _UTF8_ADDR.fullmatch(address)
        if match is None or not all(_valid_code_point(m[1])
                                    for m in _UTF8_ESCAPE.finditer(address)):
            raise ValueError("ORCPT utf-8 address is not valid RFC 6533 utf-8-addr-xtext "
                             "or utf-8-addr-unitext")
        return value
    return f"{addr_type};{_xtext_decode(address, 'ORCPT')}"


def _valid_code_point(hexpoint: str) -> bool:
    point = int(hexpoint, 16)
    return point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF
