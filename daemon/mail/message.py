"""What happens to a message's bytes between DATA and DKIM signing, whichever way it
came (SMTP, the send API, a bounce or an alert egen writes itself).

DKIM signs the exact bytes egen sends, and a relay must not alter what the application
wrote, so nothing here parses and re-serializes a message: the header section is scanned
on the raw bytes, header lines are only prepended (Received:), appended (Message-ID:,
Date:) or removed (Bcc:), and the body is passed through byte for byte. The stdlib
`email` package is used only to read field values (the From: addresses).

Line endings are normalized in exactly one place, `normalize_newlines`, at the top of
`prepare`: a bare LF becomes CRLF (aiosmtpd hands over bare LFs inside lines as they
came), and the message ends with CRLF. This must happen before signing, because the
receiving MTA sees CRLF on the wire either way; bare CRs in the body are left alone.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import functools
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from daemon.mail.intake.policy import normalize_domain, validate_address

MAX_HOPS = 50                    # Received: fields; more means a mail loop (Postfix's default)
MAX_FROM_LENGTH = 2000           # the stdlib address parser is quadratic on hostile input
MAX_HEADER_SIZE = 1024 * 1024    # Postfix's header_size_limit is 100 KiB; be generous
_LONE_LF = re.compile(rb"(?<!\r)\n")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_TOLERATED_DEFECTS = (
    email.errors.ObsoleteHeaderDefect,        # "John Q. Public" and other RFC 822 leftovers
    email.errors.NonASCIILocalPartDefect,     # SMTPUTF8 (RFC 6532) local parts
)
_PROTOCOLS = frozenset(
    f"{base}{suffix}" for base in ("SMTP", "ESMTP", "UTF8SMTP") for suffix in ("", "S", "A", "SA")
    if not (base == "SMTP" and suffix)) | {"HTTP", "HTTPS"}   # the send API


class MessageRejected(Exception):
    """The message cannot be accepted as it is; `code message` is the SMTP reply."""

    def __init__(self, message: str, code: int = 550) -> None:
        # The text often quotes the client's own bytes; a reply line must stay one line of
        # ASCII whatever they were.
        message = "".join(c if c.isprintable() else "?" for c in message)
        message = message.encode("ascii", "backslashreplace").decode("ascii")
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message

    def reply(self) -> str:
        return f"{self.code} {self.message}"


@dataclass(frozen=True)
class PreparedMessage:
    data: bytes = field(repr=False)    # what is signed, queued and sent; CRLF line endings
    from_addresses: tuple[str, ...]
    from_domain: str                   # first From: domain, lowercase A-labels, for DKIM
    message_id: str                    # the Message-ID field value, e.g. "<abc@host>"
    size: int


@dataclass
class _Field:
    name: str                          # as written, e.g. "Subject"
    start: int                         # offset of the first line
    end: int                           # offset after the CRLF of the last continuation line
    line: int                          # 1-based line number of the first line


def normalize_newlines(raw: bytes) -> bytes:
    """Bare LF -> CRLF, and a final CRLF; CRLF-only input is returned as is (no copy)."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raw = _LONE_LF.sub(b"\r\n", raw)
    if raw and not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


def _reject(text: str) -> MessageRejected:
    return MessageRejected(f"5.6.0 {text}")


def _snippet(line: bytes) -> str:
    """A bounded, ASCII-only quote of client bytes for a reply (replies may be ASCII only)."""
    text = line[:60].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return ascii(text + ("..." if len(line) > 60 else ""))


def _scan_header(data: bytes, max_line: int) -> tuple[list[_Field], int]:
    """The header fields and the offset of the empty line (len(data) if there is none)."""
    fields: list[_Field] = []
    pos = 0
    number = 1
    while pos < len(data):
        if pos > MAX_HEADER_SIZE:
            raise _reject(f"Header section is larger than {MAX_HEADER_SIZE} octets")
        eol = data.find(b"\r\n", pos)  # never -1: normalize_newlines ends data with CRLF
        line = data[pos:eol]
        if not line:
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise _reject("Line 1 starts with white space, but there is no header field "
                              "for it to continue")
            fields[-1].end = eol + 2
        else:
            colon = line.find(b":")
            name = line[:colon].rstrip(b" \t") if colon > 0 else b""
            if not _FIELD_NAME.fullmatch(name):
                raise _reject(f"Line {number} ({_snippet(line)}) is not a header field "
                              "(Name: value), and no empty line separates header and body")
            fields.append(_Field(name.decode("ascii"), pos, eol + 2, number))
        if len(line) > max_line:
            raise _reject(f"Header line {number} ({fields[-1].name}:) is {len(line)} octets "
                          f"long; the limit is {max_line}")
        if b"\r" in line:
            raise _reject(f"Header line {number} ({fields[-1].name}:) contains a bare CR")
        pos = eol + 2
        number += 1
    return fields, len(data)


def _value(data: bytes, hf: _Field) -> str:
    """The field body, unfolded and decoded (UTF-8 already checked)."""
    raw = data[hf.start:hf.end - 2].decode("utf-8")
    return raw.split(":", 1)[1].replace("\r\n", "").strip()


# The From: forms nearly every application writes ("a@b", "Name <a@b>", '"Name" <a@b>'),
# recognised without the stdlib's full RFC 5322 parser, which costs a noticeable share
# of the event loop per message. Anything else takes the full parser below.
_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+"
_SIMPLE_FROM = re.compile(
    rf'^[ \t]*(?:({_ADDR})|(?:"[^"\\\r\n]*"|[A-Za-z0-9 _-]*)[ \t]*<({_ADDR})>)[ \t]*$')


def _from_addresses(value: str) -> tuple[str, ...]:
    simple = _SIMPLE_FROM.match(value)
    if simple:
        address = simple.group(1) or simple.group(2)
        try:
            validate_address(address)
        except ValueError:
            pass   # let the full parser give the precise reason
        else:
            return (address,)
    if not value:
        raise _reject("From: header is empty")
    if len(value) > MAX_FROM_LENGTH:
        raise _reject(f"From: header is {len(value)} characters long; egen accepts at most "
                      f"{MAX_FROM_LENGTH}")
    try:
        header = email.policy.SMTP.header_factory("From", value)
        defects = [d for d in header.defects if not isinstance(d, _TOLERATED_DEFECTS)]
        addresses = [(a.username, a.domain, a.addr_spec) for a in header.addresses]
    # The stdlib parser raises IndexError, RecursionError and more on hostile input; any
    # failure of it means the same thing to the client.
    except Exception:
        raise _reject(f"From: header {_snippet(value.encode())} could not be parsed as an "
                      "address list") from None
    if defects:
        raise _reject(f"From: header could not be parsed: {defects[0]}")
    if not addresses:
        raise _reject("From: header has no address")
    for username, domain, addr_spec in addresses:
        if not username or not domain:
            raise _reject(f"From: header address {addr_spec!a} needs a local part and a domain")
        try:
            validate_address(addr_spec)
        except ValueError as err:
            raise _reject(f"From: header address {addr_spec!a} is not valid: {err}") from None
    return tuple(addr_spec for _, _, addr_spec in addresses)


def _rfc5322_date(now: float) -> str:
    return _date_of_second(int(now))


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    """Dates have second resolution: formatted once per second, not once per message."""
    return email.utils.format_datetime(datetime.fromtimestamp(second, UTC))


def prepare(raw: bytes, *, received: bytes, hostname: str, now: float | None = None,
            max_header_line: int = 998) -> PreparedMessage:
    """Check a message from DATA and make it ready to sign; MessageRejected says why not.

    `received` is the complete Received: field (see `received_header`), put on top.
    """
    now = time.time() if now is None else now
    data = normalize_newlines(raw)
    if not data.strip(b"\r\n"):
        raise _reject("Message is empty")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise _reject(f"Message contains a NUL byte at line {line}")
    fields, header_end = _scan_header(data, max_header_line)
    by_name: dict[str, list[_Field]] = {}
    for hf in fields:
        try:
            data[hf.start:hf.end].decode("utf-8")
        except UnicodeDecodeError as err:
            line = hf.line + data.count(b"\n", hf.start, hf.start + err.start)
            raise _reject(f"Header field {hf.name}: (line {line}) is not valid UTF-8") from None
        by_name.setdefault(hf.name.lower(), []).append(hf)
    hops = len(by_name.get("received", ()))
    if hops >= MAX_HOPS:
        raise MessageRejected(f"5.4.6 Too many hops ({hops} Received: header fields): "
                              "is there a mail loop?", 554)
    froms = by_name.get("from", [])
    if not froms:
        raise _reject("Message has no From: header")
    if len(froms) > 1:
        lines = ", ".join(str(f.line) for f in froms)
        raise _reject(f"Message has {len(froms)} From: headers (lines {lines}); RFC 5322 "
                      "allows exactly one")
    from_addresses = _from_addresses(_value(data, froms[0]))

    added: list[bytes] = []
    ids = by_name.get("message-id")
    if ids:
        message_id = _value(data, ids[0])
    else:
        message_id = f"<{secrets.token_hex(16)}@{normalize_domain(hostname)}>"
        added.append(f"Message-ID: {message_id}\r\n".encode("ascii"))
    if "date" not in by_name:
        added.append(f"Date: {_rfc5322_date(now)}\r\n".encode("ascii"))

    if not received.endswith(b"\r\n"):
        received += b"\r\n"
    parts = [received]
    pos = 0
    bccs = sorted(by_name.get("bcc", []) + by_name.get("resent-bcc", []), key=lambda f: f.start)
    for hf in bccs:
        parts.append(data[pos:hf.start])
        pos = hf.end
    parts.extend((data[pos:header_end], *added, data[header_end:]))
    final = b"".join(parts)
    domain = from_addresses[0].rpartition("@")[2]
    return PreparedMessage(final, from_addresses, normalize_domain(domain), message_id,
                           len(final))


def protocol_name(*, esmtp: bool, tls: bool, auth: bool, smtputf8: bool = False) -> str:
    """The `with` keyword of Received: (RFC 3848, RFC 6531): ESMTP, ESMTPSA, UTF8SMTPSA..."""
    base = "UTF8SMTP" if smtputf8 else "ESMTP" if esmtp else "SMTP"
    suffix = ("S" if tls else "") + ("A" if auth else "")
    return base if base == "SMTP" else base + suffix


def _clean(text: str, limit: int = 255, *, allow_utf8: bool = False) -> str:
    """Client-supplied text for a header comment: no controls, parentheses or CR/LF."""
    out = "".join(
        c if (c.isascii() and 33 <= ord(c) <= 126 and c not in "()\\;")
        or (allow_utf8 and not c.isascii() and c.isprintable()) else "?"
        for c in text[:limit])
    return out or "unknown"


def _client_literal(client_ip: str) -> str:
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return "[unknown]"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"[{ip.ipv4_mapped}]"
        return f"[IPv6:{ip}]"
    return f"[{ip}]"


def received_header(*, helo: str, client_ip: str, client_rdns: str | None, hostname: str,
                    queue_id: str, protocol: str, tls: str | None, auth_user: str | None,
                    recipient: str | None, now: float) -> bytes:
    """A Received: field in RFC 5321 4.4 form, laid out like Postfix's.

    Names the authenticated user (so abuse can be traced to an account) but nothing
    secret. Pass `recipient` only for single-recipient messages, or the field would tell
    each recipient who else got a copy.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown Received: protocol {protocol!r}")
    lines = [f"Received: from {_clean(helo)} ({_clean(client_rdns or 'unknown')} "
             f"{_client_literal(client_ip)})"]
    if tls:
        version, _, cipher = tls.partition(" ")
        lines.append(f"(using {_clean(version, 40)}"
                     + (f" with cipher {_clean(cipher, 100)})" if cipher else ")"))
    if auth_user is not None:
        lines.append(f"(Authenticated sender: {_clean(auth_user, allow_utf8=True)})")
    lines.append(f"by {_clean(hostname)} (egen) with {protocol} id {_clean(queue_id, 64)}")
    if recipient is not None and len(recipient.encode("utf-8", "replace")) <= 900:
        clean = "".join(c if c.isprintable() else "?" for c in recipient)
        lines.append(f"for <{clean}>; {_rfc5322_date(now)}")
    else:
        lines[-1] += f"; {_rfc5322_date(now)}"
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")
