"""Delivery status notifications (RFC 3464); the DSN parameters are in dsn_params.

A DSN is the only way a sender learns what happened to mail egen accepted, so it must be
right for both readers: the person (a text part that says what failed, what the other side
answered and what to do) and the program (a message/delivery-status part that a bounce
processor parses). `build_dsn` returns the bytes; the caller queues them like any other
message, with the null envelope sender `<>` so that a DSN can never cause another DSN.

Choices made here, and why:

- Without RET, only the original's header section is returned (text/rfc822-headers), not
  the message. RFC 3461 leaves the choice to the MTA. The apps behind egen keep their own
  copy, the envelope sender is often a bounce-processing mailbox rather than the author,
  and the headers (Message-ID, Subject, To) are what identifies the message. RET=FULL
  returns the whole message (message/rfc822) unless it is larger than
  `returned_size_limit` or has lines over 998 octets or bare CRs; then the headers are
  returned and the text says so (RFC 3461 4.3 allows this).
- The original is embedded byte for byte (line endings normalized to CRLF), never parsed
  and re-serialized: a bounce should show what was sent, DKIM-Signature and all.
- 8-bit originals: if the header section holds non-ASCII (an SMTPUTF8 message), it is
  embedded as message/global-headers or message/global (RFC 6533) with 8bit encoding; an
  ASCII-header message with an 8-bit body is message/rfc822 with 8bit encoding (RFC 2046
  allows that). The DSN is then 8-bit, and the caller sends it the way the original came
  (BODY=8BITMIME, SMTPUTF8). Everything egen writes itself stays 7-bit: the text part is
  quoted-printable when it holds non-ASCII addresses, and in the message/delivery-status
  part non-ASCII addresses use the RFC 6533 "utf-8" address type with \\x{HEX} escapes,
  which is also how any other non-ASCII text in a status field is written.
- Status fields are folded here, at spaces, to 78 columns; a run without spaces longer
  than a line (seen in remote replies) is split, which adds one space when unfolded. A
  diagnostic text of any length thus yields lines within RFC 5322's 998 octets.
- Diagnostic-Code is "smtp;" for a remote SMTP reply and "X-Egen;" for egen's own
  reasons ("connection refused"), as Postfix uses X-Postfix.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import io
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message, MIMEPart
from typing import Literal, get_args

from daemon.mail.message import normalize_newlines

Action = Literal["failed", "delayed", "delivered", "expanded", "relayed"]
Ret = Literal["FULL", "HDRS"]
MAX_LINE = 998                          # RFC 5322 2.1.1, octets without CRLF
RETURNED_SIZE_LIMIT = 1024 * 1024       # RET=FULL above this returns the headers only
_FOLD = 78
_TEXT_WIDTH = 76
_ACTIONS: tuple[str, ...] = get_args(Action)
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})", re.ASCII)
_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|$)", re.ASCII)
_BARE_CR = re.compile(rb"\r(?!\n)")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


_SUBJECTS = {"failed": "Undelivered Mail Returned to Sender",
             "delayed": "Delayed Mail (still being retried)",
             "success": "Successful Mail Delivery Report"}

# RFC 3463 subject.detail, RFC 7505 for 1.10: what a status code means, for the text part.
_DETAILS = {
    "0.0": "other or undefined status",
    "1.0": "other address status", "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.4": "destination mailbox address ambiguous", "1.6": "destination mailbox has moved",
    "1.10": "recipient address has null MX",
    "2.0": "other or undefined mailbox status", "2.1": "mailbox disabled",
    "2.2": "mailbox full", "2.3": "message length exceeds administrative limit",
    "3.0": "other or undefined mail system status", "3.1": "mail system full",
    "3.4": "message too big for system",
    "4.0": "other or undefined network or routing status", "4.1": "no answer from host",
    "4.2": "bad connection", "4.3": "directory server failure", "4.4": "unable to route",
    "4.6": "routing loop detected", "4.7": "delivery time expired",
    "5.0": "other or undefined protocol status", "5.3": "too many recipients",
    "6.0": "other or undefined media error",
    "6.3": "conversion required but not supported",
    "7.0": "other or undefined security status",
    "7.1": "delivery not authorized, message refused",
    "7.26": "multiple authentication checks failed",
}
_CLASSES = {"2": "success", "4": "temporary failure", "5": "permanent failure"}


@dataclass(frozen=True)
class RecipientStatus:
    """What happened to one recipient: one per-recipient block of the DSN."""

    recipient: str                     # final recipient address
    original_recipient: str | None     # ORCPT as parse_orcpt returns it, "rfc822;addr"
    action: Action
    status: str                        # enhanced status code, "5.1.1"
    remote_mta: str | None             # "mx1.example.org", written as "dns;..."
    diagnostic: str | None             # the remote reply or egen's own reason
    last_attempt: float | None         # UNIX time
    will_retry_until: float | None     # for action="delayed"

    def __post_init__(self) -> None:
        # Checked here so a queue bug surfaces where the status is made, not as a DSN that
        # says "delivered" with a 5.x.x code.
        if self.action not in _ACTIONS:
            raise ValueError(f"action must be one of {', '.join(_ACTIONS)}, "
                             f"not {self.action!r}")
        match = _STATUS.fullmatch(self.status)
        if match is None:
            raise ValueError(f"status must be an enhanced status code like 5.1.1, "
                             f"not {self.status!r}")
        allowed = {"failed": "45", "delayed": "4"}.get(self.action, "2")
        if match[1] not in allowed:
            raise ValueError(f"status {self.status} does not fit action {self.action}")
        if not self.recipient:
            raise ValueError("recipient must not be empty")


# --- RFC 3464: the report -----------------------------------------------------------------


def _date(when: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(when, UTC))


def _field_text(text: str) -> str:
    """Text for a status field: one line of printable ASCII, runs of white space as one.

    Non-ASCII becomes \\x{HEX} (the RFC 6533 escape) so the report part stays 7-bit and a
    CR or LF from a remote reply can never start a field of its own.
    """
    out = []
    for char in text:
        point = ord(char)
        if point < 0x20 or point == 0x7F:
            out.append(" ")
        elif point < 0x80:
            out.append(char)
        else:
            out.append(f"\\x{{{point:X}}}")
    return " ".join("".join(out).split())


def _human(text: str) -> str:
    """Text from outside (replies, addresses) for the text part: printable, one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _typed_address(address: str) -> str:
    """An address with its RFC 3464 address type: rfc822 if ASCII, else RFC 6533 utf-8."""
    if address.isascii():
        return "rfc822;" + _field_text(address)
    escaped = "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
                      for c in address)
    return "utf-8;" + escaped


def _fold(name: str, value: str) -> str:
    """`value` folded at spaces so each line of "name: value" fits in 78 columns."""
    first = _FOLD - len(name) - 2            # continuation lines start with one space
    lines = [""]
    for word in value.split(" "):
        rest = word
        limit = first if len(lines) == 1 else _FOLD - 1
        sep = " " if lines[-1] else ""
        if len(lines[-1]) + len(sep) + len(rest) <= limit:
            lines[-1] += sep + rest
            continue
        if lines[-1]:
            lines.append("")
        while len(rest) > (limit := first if len(lines) == 1 else _FOLD - 1):
            lines[-1] = rest[:limit]
            rest = rest[limit:]
            lines.append("")
        lines[-1] = rest
    return "\n ".join(lines)


def _block(fields: Sequence[tuple[str, str]]) -> Message:
    """One header block of message/delivery-status, with values already folded.

    A plain (compat32) Message keeps the folded value as written; the SMTP policy writes it
    out unchanged because no line is longer than its 78 columns.
    """
    block = Message()
    for name, value in fields:
        block[name] = _fold(name, value)
    return block


def _diagnostic(text: str) -> str:
    text = _field_text(text)
    kind = "smtp" if _SMTP_REPLY.match(text) else "X-Egen"
    return f"{kind};{text}"


def _status_blocks(*, recipients: Sequence[RecipientStatus], reporting_mta: str,
                   queue_id: str, envelope_sender: str, arrival: float,
                   envid: str | None) -> list[Message]:
    message_fields: list[tuple[str, str]] = []
    if envid is not None:
        message_fields.append(("Original-Envelope-Id", _field_text(envid)))
    message_fields += [
        ("Reporting-MTA", "dns;" + _field_text(reporting_mta)),
        ("X-Egen-Queue-ID", _field_text(queue_id)),
        ("X-Egen-Sender", _typed_address(envelope_sender)),
        ("Arrival-Date", _date(arrival)),
    ]
    blocks = [_block(message_fields)]
    for rcpt in recipients:
        fields: list[tuple[str, str]] = []
        if rcpt.original_recipient is not None:
            fields.append(("Original-Recipient", _field_text(rcpt.original_recipient)))
        fields += [("Final-Recipient", _typed_address(rcpt.recipient)),
                   ("Action", rcpt.action), ("Status", rcpt.status)]
        if rcpt.remote_mta:
            fields.append(("Remote-MTA", "dns;" + _field_text(rcpt.remote_mta)))
        if rcpt.diagnostic:
            fields.append(("Diagnostic-Code", _diagnostic(rcpt.diagnostic)))
        if rcpt.last_attempt is not None:
            fields.append(("Last-Attempt-Date", _date(rcpt.last_attempt)))
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            fields.append(("Will-Retry-Until", _date(rcpt.will_retry_until)))
        blocks.append(_block(fields))
    return blocks


def _kind(recipients: Sequence[RecipientStatus]) -> str:
    """The worst outcome in the report, which names the whole notice."""
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "failed"
    if "delayed" in actions:
        return "delayed"
    return "success"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "less than a minute"


def _meaning(status: str) -> str:
    klass, _, detail = status.partition(".")
    meaning = _DETAILS.get(detail)
    return f"{_CLASSES[klass]}: {meaning}" if meaning else _CLASSES[klass]


def _advice(rcpt: RecipientStatus) -> str:
    klass, subject, detail = rcpt.status.split(".")
    if klass == "4":
        return ("The receiving side could not be reached, or kept asking to try again "
                "later, for as long as the mail system keeps messages. You can send the "
                "message again later, or reach the recipient another way.")
    if subject == "1":
        return ("The recipient address does not exist or its domain does not take mail. "
                "Check the address for typos; if it is right, ask the recipient for one "
                "that works.")
    if (subject, detail) == ("2", "2"):
        return "The recipient's mailbox is full. Try again later or tell them another way."
    if (subject, detail) in (("2", "3"), ("3", "4")):
        return "The message is too big for the receiving system. Send it smaller."
    if subject == "7":
        return ("The receiving system refused the message by policy (spam filtering or "
                "sender authentication, for example). Its reply above says why; its "
                "postmaster can say more.")
    return "The receiving system refused the message for good. Its reply above says why."


_HEADINGS = {
    "failed": "Could not be delivered:",
    "delayed": "Not delivered yet, still being retried:",
    "delivered": "Delivered:",
    "relayed": ("Handed on to a system that sends no delivery reports, so this is the last "
                "report for:"),
    "expanded": "Delivered to a list or alias, which passed it on to its members:",
}


def _explanation(*, recipients: Sequence[RecipientStatus], reporting_mta: str,
                 postmaster: str, arrival: float, now: float, returned: str) -> str:
    """The human-readable first part, in the spirit of Postfix's."""
    wrap = textwrap.TextWrapper(width=_TEXT_WIDTH, break_on_hyphens=False)
    indent = textwrap.TextWrapper(width=_TEXT_WIDTH, initial_indent=" " * 6,
                                  subsequent_indent=" " * 6, break_on_hyphens=False)
    address = textwrap.TextWrapper(width=_TEXT_WIDTH, initial_indent="  ",
                                   subsequent_indent=" " * 6, break_on_hyphens=False)
    quote = textwrap.TextWrapper(width=_TEXT_WIDTH, initial_indent=" " * 8,
                                 subsequent_indent=" " * 8, break_on_hyphens=False)
    kind = _kind(recipients)
    paragraphs = [f"This is the mail system at host {_human(reporting_mta)}."]
    if kind == "failed":
        paragraphs.append(
            "Your message could not be delivered to one or more recipients, and the mail "
            "system has given up on them. The recipients and what their mail servers "
            f"answered are listed below. {returned}")
    elif kind == "delayed":
        until = [r.will_retry_until for r in recipients if r.will_retry_until is not None]
        keep = f"until {_date(max(until))}" if until else "for a while"
        paragraphs.append(
            f"Your message has not been delivered to one or more recipients yet, after "
            f"{_duration(now - arrival)}. This is only a warning: the mail system will "
            f"keep trying {keep}, and you do not need to send the message again. If it "
            "still cannot be delivered by then, you will get another report.")
    else:
        paragraphs.append(
            "Your message was delivered as listed below. You asked for this report when "
            "sending (NOTIFY=SUCCESS); there is nothing to do.")
    body = "\n\n".join(wrap.fill(p) for p in paragraphs)

    sections = []
    for action in _ACTIONS:
        group = [r for r in recipients if r.action == action]
        if not group:
            continue
        lines = wrap.wrap(_HEADINGS[action])
        for rcpt in group:
            lines.append("")
            lines += address.wrap(f"<{_human(rcpt.recipient)}>")
            if rcpt.original_recipient is not None:
                lines += indent.wrap(
                    f"(originally addressed to {_human(rcpt.original_recipient)})")
            lines += indent.wrap(f"Status {rcpt.status} ({_meaning(rcpt.status)})")
            if rcpt.action == "failed" and rcpt.status.startswith("4."):
                lines += indent.wrap(f"Gave up after trying for {_duration(now - arrival)}.")
            if rcpt.diagnostic:
                who = f"{_human(rcpt.remote_mta)} said:" if rcpt.remote_mta else "Reason:"
                lines += indent.wrap(who)
                lines += quote.wrap(_human(rcpt.diagnostic))
            if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
                lines += indent.wrap(f"Will keep trying until {_date(rcpt.will_retry_until)}.")
        sections.append("\n".join(lines))
    body += "\n\n" + "\n\n".join(sections)

    if kind == "failed":
        advice = dict.fromkeys(_advice(r) for r in recipients if r.action == "failed")
        body += "\n\nWhat you can do:\n\n" + "\n\n".join(
            textwrap.fill(a, width=_TEXT_WIDTH, initial_indent="  ",
                          subsequent_indent="  ", break_on_hyphens=False) for a in advice)
    body += "\n\n" + wrap.fill(
        f"If you need help, write to {_human(postmaster)} and include this report.")
    return body + "\n"


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    """The header section (ending with CRLF, without the empty line) and the body."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[:end + 2], data[end + 4:]


def _has_long_line(data: bytes) -> bool:
    return any(len(line) > MAX_LINE for line in data.split(b"\r\n"))


def _returnable(data: bytes) -> bool:
    """Whether the whole message can be embedded: no line over 998 octets and no bare CR
    (receiving servers refuse bare CRs since the SMTP smuggling attacks of 2023)."""
    return not _has_long_line(data) and data.count(b"\r") == data.count(b"\r\n")


def _cap_lines(data: bytes) -> bytes:
    """Bare CRs to spaces, and header lines over 998 octets split into continuation lines
    (only a broken original has either: intake refuses such header lines)."""
    data = _BARE_CR.sub(b" ", data)
    if not _has_long_line(data):
        return data
    out = []
    for line in data.split(b"\r\n"):
        rest = line
        while len(rest) > MAX_LINE:
            out.append(rest[:MAX_LINE])
            rest = b" " + rest[MAX_LINE:]
        out.append(rest)
    return b"\r\n".join(out)


class _Generator(BytesGenerator):
    """A BytesGenerator that writes an 8-bit message/* payload back as the bytes it was.

    The original is embedded as a str payload decoded with surrogateescape, and the stock
    generator encodes message/* payloads as strict ASCII (its text/* path already restores
    the bytes). This one method is the whole difference; the 8-bit tests fail loudly if a
    Python upgrade changes it.
    """

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def _original_part(original: bytes, *, ret: Ret | None, limit: int,
                   kind: str) -> tuple[MIMEPart, bool, str]:
    """The third part, whether it is 8-bit, and a sentence saying what was attached."""
    data = normalize_newlines(original)
    header, body = _split_header(data)
    header_8bit = not header.isascii()
    full = ret == "FULL" and len(data) <= limit and _returnable(data)
    noun = {"failed": "Undelivered", "delayed": "Delayed"}.get(kind, "Delivered")
    if full:
        ctype = "message/global" if header_8bit else "message/rfc822"
        eight = header_8bit or not body.isascii()
        payload = data
        description = f"{noun} Message"
        sentence = "Your message is attached."
    else:
        ctype = "message/global-headers" if header_8bit else "text/rfc822-headers"
        eight = header_8bit
        payload = _cap_lines(header)
        description = f"{noun} Message Headers"
        sentence = "The headers of your message are attached."
        if ret == "FULL":
            sentence += " (It is too large or malformed to be returned whole.)"
    part = MIMEPart(policy=email.policy.SMTP)
    part["Content-Type"] = ctype
    part["Content-Description"] = description
    part["Content-Transfer-Encoding"] = "8bit" if eight else "7bit"
    # A str payload is written out as is: the original is embedded, not re-serialized.
    part.set_payload(payload.decode("ascii", "surrogateescape"))
    return part, eight, sentence


def build_dsn(*, original: bytes, envelope_sender: str, recipients: Sequence[RecipientStatus],
              reporting_mta: str, postmaster: str, queue_id: str, arrival: float, now: float,
              envid: str | None = None, ret: Ret | None = None, message_id_domain: str,
              returned_size_limit: int = RETURNED_SIZE_LIMIT) -> bytes:
    """A multipart/report DSN about `recipients` of `original`, to `envelope_sender`.

    The caller sends it with the null envelope sender, after checking `should_notify` for
    each recipient. Raises ValueError for the null sender (never bounce a bounce: RFC 3461
    6.2, RFC 5321 6.1) and for arguments that cannot make a valid report. The MIME
    boundary is the only thing in the result that differs between calls with equal
    arguments; the Message-ID is derived from them.
    """
    if not envelope_sender:
        raise ValueError("no DSN for the null sender <>: it would bounce a bounce")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if ret is not None and ret not in get_args(Ret):
        raise ValueError(f"ret must be FULL, HDRS or None, not {ret!r}")
    if not _DOMAIN.fullmatch(message_id_domain):
        raise ValueError(f"message_id_domain {message_id_domain!r} is not a host name")
    for name, address in (("envelope_sender", envelope_sender), ("postmaster", postmaster)):
        if "@" not in address or any(ord(c) < 0x20 or ord(c) == 0x7F
                                     or "\ud800" <= c <= "\udfff" for c in address):
            raise ValueError(f"{name} {address!r} is not a mail address")

    kind = _kind(recipients)
    original_part, eight, returned = _original_part(
        original, ret=ret, limit=returned_size_limit, kind=kind)
    utf8 = not (envelope_sender.isascii() and postmaster.isascii())
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP

    text = _explanation(recipients=recipients, reporting_mta=reporting_mta,
                        postmaster=postmaster, arrival=arrival, now=now, returned=returned)
    notice = MIMEPart(policy=policy)
    if text.isascii():
        notice.set_content(text, charset="us-ascii", cte="7bit")
    else:
        notice.set_content(text, charset="utf-8", cte="quoted-printable")
    notice["Content-Description"] = "Notification"

    report = MIMEPart(policy=policy)
    report["Content-Type"] = "message/delivery-status"
    report["Content-Description"] = "Delivery report"
    report.set_payload(_status_blocks(recipients=recipients, reporting_mta=reporting_mta,
                                      queue_id=queue_id, envelope_sender=envelope_sender,
                                      arrival=arrival, envid=envid))

    digest = hashlib.sha256(repr(
        (queue_id, now, [(r.recipient, r.action, r.status) for r in recipients])
    ).encode("utf-8", "backslashreplace")).hexdigest()[:16]
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")

    msg = EmailMessage(policy=policy)
    msg["From"] = f"Mail Delivery System <{postmaster}>"
    msg["To"] = envelope_sender
    msg["Subject"] = _SUBJECTS[kind]
    msg["Date"] = _date(now)
    msg["Message-ID"] = f"<{stamp}.{digest}.dsn@{message_id_domain}>"
    msg["Auto-Submitted"] = "auto-replied"           # RFC 3834 5
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    if eight:
        msg["Content-Transfer-Encoding"] = "8bit"
    for part in (notice, report, original_part):
        msg.attach(part)
    out = io.BytesIO()
    _Generator(out, policy=policy).flatten(msg)
    return out.getvalue()
