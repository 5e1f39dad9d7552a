"""An accepted message as it travels from SMTP intake through the journal to the queue.

The journal record is a small binary frame, not JSON with the message inside: the signed
message bytes go in raw (no base64 growth, no copy through a JSON encoder), and only the
envelope is JSON. Layout (daemon.journal.framing): b"EM1" | u32 envelope length |
envelope JSON | message bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

from daemon.journal.framing import frame, split_framed

_MAGIC = b"EM1"
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: IDs never spell words


class EnvelopeError(ValueError):
    """A journal record that is not a mail envelope this version understands."""


# IDs need uniqueness, not secrecy: a generator seeded once from the OS per process
# avoids a getrandom() system call per message, which showed up in profiles.
_random = random.Random(os.urandom(32))


def new_queue_id() -> str:
    """A 14-character random ID, unique across nodes without coordination (~69 bits)."""
    return _queue_id(_random.getrandbits(70))


def queue_id_for(seed: str) -> str:
    """The queue ID of mail egen writes for `seed` (an alert send): queueing it twice, as
    a retry after a crash may, stores it once (the queue skips IDs it holds)."""
    return _queue_id(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:9]) >> 2)


def _queue_id(n: int) -> str:
    chars = []
    for _ in range(14):
        n, digit = divmod(n, 31)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    sender: str                      # MAIL FROM address; "" for the null sender <>
    recipients: tuple[str, ...]
    received_at: float               # UNIX time the message was accepted
    client_ip: str
    helo: str
    auth_user: str | None
    tls: str | None                  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; None for plaintext
    smtputf8: bool
    body_8bit: bool                  # BODY=8BITMIME was given
    message_id: str
    signed_by: tuple[str, ...]       # "d=example.com s=sel a=rsa-sha256" per DKIM signature
    size: int                        # length of the message bytes
    # RFC 3461 DSN parameters: RET and ENVID of MAIL FROM; NOTIFY (comma-separated) and
    # ORCPT of each RCPT TO, in recipient order (None where the client gave none).
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    dsn_notify: tuple[str | None, ...] = ()
    dsn_orcpt: tuple[str | None, ...] = ()

    def header(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id, "sender": self.sender,
            "recipients": list(self.recipients), "received_at": self.received_at,
            "client_ip": self.client_ip, "helo": self.helo, "auth_user": self.auth_user,
            "tls": self.tls, "smtputf8": self.smtputf8, "body_8bit": self.body_8bit,
            "message_id": self.message_id, "signed_by": list(self.signed_by),
            "size": self.size, "dsn_ret": self.dsn_ret, "dsn_envid": self.dsn_envid,
            "dsn_notify": list(self.dsn_notify), "dsn_orcpt": list(self.dsn_orcpt),
        }


def encode(envelope: Envelope, message: bytes) -> bytes:
    return frame(_MAGIC, envelope.header(), message)


def decode(record: bytes) -> tuple[Envelope, bytes]:
    """Inverse of `encode`; EnvelopeError names what is wrong with a bad record."""
    if not record.startswith(_MAGIC):   # the first bytes say what else it might be
        raise EnvelopeError(f"not a mail record (starts with {record[:3]!r})")
    doc, message = split_framed(record, _MAGIC, "a mail record", EnvelopeError)
    try:
        envelope = Envelope(
            queue_id=str(doc["queue_id"]), sender=str(doc["sender"]),
            recipients=tuple(str(r) for r in doc["recipients"]),
            received_at=float(doc["received_at"]), client_ip=str(doc["client_ip"]),
            helo=str(doc["helo"]), auth_user=doc["auth_user"], tls=doc["tls"],
            smtputf8=bool(doc["smtputf8"]), body_8bit=bool(doc["body_8bit"]),
            message_id=str(doc["message_id"]),
            signed_by=tuple(str(s) for s in doc["signed_by"]), size=int(doc["size"]),
            dsn_ret=doc.get("dsn_ret"), dsn_envid=doc.get("dsn_envid"),
            dsn_notify=tuple(doc.get("dsn_notify") or ()),
            dsn_orcpt=tuple(doc.get("dsn_orcpt") or ()))
    except (KeyError, TypeError, ValueError) as err:
        raise EnvelopeError(f"mail record envelope is malformed: {err}") from None
    if envelope.size != len(message):
        raise EnvelopeError(f"mail record says {envelope.size} bytes but holds {len(message)}")
    if not envelope.recipients:
        raise EnvelopeError("mail record has no recipients")
    return envelope, message
