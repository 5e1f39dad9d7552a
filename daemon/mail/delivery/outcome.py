"""What one delivery attempt did for one recipient: the only thing transports return and
the only thing the delivery loop needs to decide between delivered, retry and bounce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["delivered", "deferred", "bounced"]


@dataclass(frozen=True)
class Outcome:
    idx: int                     # the recipient's index in its message
    kind: Kind
    code: int                    # SMTP reply code, or a local equivalent (250, 451, 550)
    response: str                # reply text with enhanced status code, or the local error
    remote: str | None = None    # "mx1.example.org[192.0.2.1]:25", or the maildir path
    tls: str | None = None       # "TLSv1.3 TLS_AES_256_GCM_SHA384" when the hop was encrypted
    # Whether the peer's certificate was verified. Delivery to MX hosts encrypts
    # opportunistically (Postfix's `may`), so it is False whenever `tls` is set today.
    tls_verified: bool = False

    @property
    def status(self) -> str:
        """The enhanced status code for DSNs ("5.1.1"), derived when the reply had none."""
        first = self.response.split(" ", 1)[0]
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return first
        return {"delivered": "2.0.0", "deferred": "4.0.0", "bounced": "5.0.0"}[self.kind]


def from_reply(idx: int, code: int, text: str, *, remote: str | None,
               tls: str | None) -> Outcome:
    kind: Kind = "delivered" if 200 <= code < 300 else "bounced" if code >= 500 else "deferred"
    return Outcome(idx, kind, code, text, remote, tls)


def deferred_all(indexes: list[int], reason: str, *, remote: str | None = None,
                 code: int = 451) -> list[Outcome]:
    return [Outcome(i, "deferred", code, reason, remote) for i in indexes]


def bounced_all(indexes: list[int], reason: str, *, remote: str | None = None,
                code: int = 550) -> list[Outcome]:
    return [Outcome(i, "bounced", code, reason, remote) for i in indexes]
