"""One MIME message per personalization of a v3 mail send request.

Built with the stdlib `email` package (EmailMessage with the SMTP policy), which already
knows RFC 2047 for non-ASCII names and subjects, RFC 2231 for file names, and how to nest
multipart/mixed, alternative and related. Bodies are quoted-printable and attachments
base64, so the whole message is 7-bit: it needs neither 8BITMIME nor SMTPUTF8 from any
server on its way, and DKIM signs bytes no relay has a reason to re-encode.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
from email.header import Header
from email.message import EmailMessage

from daemon.mail.send_api.model import Address, FieldError, SendRequest, SendRequestInvalid

# Address fields are written pre-folded (see _address_field) and must not be refolded.
_POLICY = email.policy.SMTP.clone(refold_source="none")


def _mailbox(address: Address) -> str:
    if not address.name:
        return address.email
    plain = email.utils.formataddr((address.name, address.email))
    if address.name.isascii() and len(plain) <= 70:
        return plain
    phrase = Header(address.name, "utf-8", maxlinelen=76).encode(linesep="\n ")
    return f"{phrase}\n <{address.email}>"


def _address_field(addresses: tuple[Address, ...]) -> str:
    """One mailbox per line. The stdlib's own folding of an address list whose display
    names need RFC 2047 can encode the comma between two addresses as `=?utf-8?q?=2C?=`,
    which merges them for every reader (seen with Python 3.11); folding at the commas
    ourselves never asks it to. Each line stays under 78 octets but for a long address,
    which RFC 5322 allows up to its 998-octet line limit."""
    return ",\n ".join(_mailbox(a) for a in addresses)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _headers(request: SendRequest, index: int) -> list[tuple[str, str, str]]:
    """(name, value, field path): the personalization's replace the request's by name."""
    p = request.personalizations[index]
    own = {name.lower() for name, _ in p.headers}
    return ([(n, v, f"headers.{n}") for n, v in request.headers if n.lower() not in own]
            + [(n, v, f"personalizations.{index}.headers.{n}") for n, v in p.headers])


def _body(message: EmailMessage, request: SendRequest) -> None:
    first, *others = request.contents
    message.set_content(_lines(first[1]), subtype=first[0].partition("/")[2],
                        cte="quoted-printable")
    for kind, text in others:
        message.add_alternative(_lines(text), subtype=kind.partition("/")[2],
                                cte="quoted-printable")
    html = next((part for part in message.iter_parts()
                 if part.get_content_type() == "text/html"), None)
    if html is None and message.get_content_type() == "text/html":
        html = message
    # Inline parts go into the html part's multipart/related before any attachment
    # turns the message into multipart/mixed; afterwards the html part is out of reach.
    inline = [html is not None and a.disposition == "inline" for a in request.attachments]
    for pass_inline in (True, False):
        for attachment, is_inline in zip(request.attachments, inline, strict=True):
            if is_inline != pass_inline:
                continue
            maintype, _, subtype = attachment.type.partition("/")
            cid = f"<{attachment.content_id}>" if attachment.content_id else None
            if is_inline and html is not None:
                html.add_related(attachment.content, maintype, subtype, cid=cid,
                                 filename=attachment.filename, disposition="inline")
            else:
                message.add_attachment(attachment.content, maintype, subtype, cid=cid,
                                       filename=attachment.filename,
                                       disposition=attachment.disposition)

def build(request: SendRequest, index: int, sender: Address, subject: str) -> bytes:
    """The message with CRLF line ends; Message-ID and Date are left to the queue's
    `prepare`, as for mail that came over SMTP. A header value the stdlib cannot parse
    (a Date: that is no date, a Message-ID that is no msg-id) is a SendRequestInvalid
    naming the header."""
    p = request.personalizations[index]
    message = EmailMessage(policy=_POLICY)
    message.set_raw("From", _address_field((sender,)))
    message.set_raw("To", _address_field(p.to))
    if p.cc:
        message.set_raw("Cc", _address_field(p.cc))
    if request.reply_to:
        message.set_raw("Reply-To", _address_field(request.reply_to))
    message["Subject"] = subject
    errors = []
    for name, value, where in _headers(request, index):
        try:
            message[name] = value
        except (ValueError, TypeError, IndexError, email.errors.MessageError) as err:
            errors.append(FieldError(f"cannot be written as a {name} header: {err}", where))
            continue
        # The stdlib records a value it cannot parse as a defect, and may then write the
        # field empty (Date:): refuse rather than send something else than was asked.
        defects = getattr(message.get_all(name, [])[-1], "defects", ())
        if defects:
            errors.append(FieldError(f"is not a valid {name} header: {defects[0]}", where))
    if errors:
        raise SendRequestInvalid(errors)
    _body(message, request)
    try:
        return message.as_bytes(policy=_POLICY)
    except (ValueError, TypeError, IndexError, email.errors.MessageError) as err:
        raise SendRequestInvalid([FieldError(f"the message cannot be written: {err}",
                                             "headers")]) from None
