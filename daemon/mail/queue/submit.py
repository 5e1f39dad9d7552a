"""The one way into the mail queue: sign a prepared message and append it, with its
envelope, to the mail journal. A `Submitter` holds only what that takes (key ring,
signing threads, journal, counters, host name); SMTP intake and the send API use it
after their policy checks, and egen's own mail (bounces, alerts) calls
`Submitter.submit`, so that mail is signed, queued, retried and logged exactly like an
application's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

from prometheus_client import Counter

from daemon.journal.log import Journal, JournalError, JournalFull
from daemon.logs import fields, get_logger
from daemon.mail.dkim import DkimError, DkimMessageError, KeyRing
from daemon.mail.message import PreparedMessage, prepare
from daemon.mail.queue import envelope as queue_record

log = get_logger("smtp")
maillog = get_logger("maillog")


class Refused(Exception):
    """The message was not queued; `reply` is the SMTP answer, `reason` the counted one."""

    def __init__(self, reason: str, reply: str) -> None:
        super().__init__(reply)
        self.reason = reason
        self.reply = reply


@dataclass(frozen=True)
class Origin:
    client_ip: str
    helo: str
    auth_user: str | None
    tls: str | None
    smtputf8: bool
    body_8bit: bool


@dataclass(frozen=True)
class DsnRequest:
    """RFC 3461 parameters the client gave: RET/ENVID, and NOTIFY/ORCPT per recipient."""

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str | None, ...] = ()
    orcpt: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Signed:
    """A message signed and ready for the journal, with its queue record."""

    record: queue_record.Envelope
    message: bytes
    origin: Origin


class SubmitMetrics(Protocol):
    """The counters a submission moves (IntakeMetrics has them)."""

    messages: Counter       # labels: outcome, reason
    recipients: Counter
    bytes: Counter


@dataclass(frozen=True)
class Submitter:
    """Signing and queueing, and nothing of a listener's policy; rebuilt (with the new
    key ring) on every reload, so callers ask for the current one each time."""

    hostname: str
    keyring: KeyRing
    refuse_unsigned: bool
    journal: Journal
    executor: Executor          # where DKIM signing runs
    metrics: SubmitMetrics

    async def sign(self, *, queue_id: str, sender: str, recipients: Sequence[str],
                   prepared: PreparedMessage, origin: Origin, now: float,
                   dsn: DsnRequest | None = None) -> Signed:
        """DKIM signatures on top and the queue record; raises Refused."""
        signer = self.keyring.signer_for(prepared.from_domain)
        if signer is None and self.refuse_unsigned:
            raise Refused("no_dkim_key", f"550 5.7.1 No DKIM key for {prepared.from_domain}; "
                          "refusing to relay unsigned mail")
        signatures = b""
        if signer is not None:
            loop = asyncio.get_running_loop()
            try:
                signatures = await loop.run_in_executor(self.executor, signer.sign,
                                                        prepared.data)
            except DkimMessageError as err:
                raise Refused("bad_message", f"550 5.6.0 Message cannot be signed as sent: "
                              f"{err}") from None
            except DkimError as err:
                log.error("dkim signing failed", extra=fields(queue_id=queue_id, error=str(err)))
                raise Refused("dkim_failed", "451 4.3.0 Could not sign the message; try again "
                              "later") from None
        message = signatures + prepared.data
        record = queue_record.Envelope(
            queue_id=queue_id, sender=sender, recipients=tuple(recipients), received_at=now,
            client_ip=origin.client_ip, helo=origin.helo, auth_user=origin.auth_user,
            tls=origin.tls, smtputf8=origin.smtputf8, body_8bit=origin.body_8bit,
            message_id=prepared.message_id, signed_by=signed_by(signatures), size=len(message),
            dsn_ret=dsn.ret if dsn else None, dsn_envid=dsn.envid if dsn else None,
            dsn_notify=dsn.notify if dsn else (), dsn_orcpt=dsn.orcpt if dsn else ())
        return Signed(record, message, origin)

    async def queue(self, signed: Sequence[Signed]) -> None:
        """Durable when it returns, all of `signed` or (raising Refused) none of it."""
        try:
            await self.journal.append_many([queue_record.encode(s.record, s.message)
                                            for s in signed])
        except JournalFull:
            raise Refused("queue_full", "451 4.3.0 Queue full; try again later") from None
        except JournalError as err:
            log.error("journal append failed", extra=fields(
                queue_id=",".join(s.record.queue_id for s in signed), error=str(err)))
            raise Refused("journal_error", "451 4.3.0 Temporary local problem; try again "
                          "later") from None
        for item in signed:
            record, origin = item.record, item.origin
            self.metrics.messages.labels("accepted", "").inc()
            self.metrics.recipients.inc(len(record.recipients))
            self.metrics.bytes.inc(len(item.message))
            maillog.info("accepted", extra=fields(
                queue_id=record.queue_id, sender=record.sender or "<>",
                nrcpt=len(record.recipients), size=record.size, client=origin.client_ip,
                user=record.auth_user or "-", tls=origin.tls or "none",
                message_id=record.message_id, dkim=";".join(record.signed_by) or "none"))

    async def sign_and_queue(self, *, queue_id: str, sender: str, recipients: Sequence[str],
                             prepared: PreparedMessage, origin: Origin, now: float,
                             dsn: DsnRequest | None = None) -> queue_record.Envelope:
        """Durable when it returns; raises Refused (nothing stored) otherwise."""
        signed = await self.sign(queue_id=queue_id, sender=sender, recipients=recipients,
                                 prepared=prepared, origin=origin, now=now, dsn=dsn)
        await self.queue([signed])
        return signed.record

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes, *,
                     queue_id: str | None = None) -> str:
        """Queue mail egen itself writes (bounces, alerts); returns the queue ID. A fixed
        `queue_id` makes a repeated submission of the same mail a no-op in the queue.
        Raises Refused, or MessageRejected/ValueError for a message `prepare` refuses."""
        queue_id = queue_id or queue_record.new_queue_id()
        now = time.time()
        received = (f"Received: by {self.hostname} (egen) id {queue_id};\r\n"
                    f"\t{formatdate(now)}\r\n").encode()
        prepared = prepare(message, received=received, hostname=self.hostname, now=now)
        eight_bit = any(b > 127 for b in prepared.data)
        await self.sign_and_queue(queue_id=queue_id, sender=sender, recipients=recipients,
                                  prepared=prepared, now=now,
                                  origin=Origin(client_ip="127.0.0.1", helo=self.hostname,
                                                auth_user=None, tls=None, smtputf8=False,
                                                body_8bit=eight_bit))
        return queue_id


def signed_by(signatures: bytes) -> tuple[str, ...]:
    """'d=example.com s=sel a=rsa-sha256' per DKIM-Signature header, for the queue."""
    found = []
    for header in signatures.split(b"\r\nDKIM-Signature:"):
        tags = {}
        for part in header.replace(b"\r\n", b"").split(b";"):
            key, _, value = part.strip().partition(b"=")
            tags[key.strip().lower()] = value.strip()
        if b"d" in tags:
            found.append(f"d={tags[b'd'].decode()} s={tags.get(b's', b'').decode()} "
                         f"a={tags.get(b'a', b'').decode()}")
    return tuple(found)
