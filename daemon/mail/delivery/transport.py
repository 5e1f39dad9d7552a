"""What a transport is to the delivery loop: something that attempts one job (one
message to some of its recipients) and says what became of each recipient.

Each route gets its transport object once, at start (routes only change with a
restart); the loop calls `deliver` on it and never asks which kind it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.mail.delivery.outcome import Outcome


@dataclass(frozen=True)
class Job:
    queue_id: str
    sender: str
    recipients: list[tuple[int, str]]     # (idx, address)
    data: bytes
    smtputf8: bool
    body_8bit: bool
    # The recipients' domain; when the transport is `per_domain`, all of them are in it.
    domain: str


class Transport(Protocol):
    # Whether a job may only hold recipients of one domain (MX hosts are per domain):
    # the loop groups a message's recipients by domain for such a transport.
    per_domain: bool

    async def deliver(self, job: Job) -> list[Outcome]:
        """One outcome per recipient of `job`; failures are outcomes, not exceptions."""
        ...
