"""Tells senders what became of their mail: recipients that bounced or expired (and
delivered ones whose RCPT asked NOTIFY=SUCCESS, and the once-per-message delay warning
when `delivery.delay_warning` is set) become one RFC 3464 notification per message,
honouring NOTIFY, ORCPT, RET and ENVID, queued (signed, retried) like any other mail with
the null sender, so a notification can never trigger another one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from daemon.logs import fields, get_logger
from daemon.mail.delivery.bounce import RecipientStatus, build_dsn
from daemon.mail.delivery.outcome import Outcome
from daemon.mail.delivery.worker import Final
from daemon.mail.dsn_params import should_notify
from daemon.mail.message import MessageRejected
from daemon.mail.queue.submit import Refused, Submitter

log = get_logger("delivery")


# Delivery status -> RFC 3464 Action.
_ACTION = {"bounced": "failed", "expired": "failed", "delivered": "delivered",
           "delayed": "delayed"}


def _status(outcome: Outcome, status: str) -> str:
    """The DSN Status of a recipient: expiry is always 4.4.7; a delay must be a 4.x.x,
    even when the remote's deferral carried an odd enhanced code."""
    if status == "expired":
        return "4.4.7"
    if status == "delayed" and not outcome.status.startswith("4."):
        return "4.0.0"
    return outcome.status


class Notifier:
    def __init__(self, submitter: Callable[[], Submitter | None], *, hostname: str,
                 postmaster: str | None, lifetime: float) -> None:
        self._submitter = submitter
        self.lifetime = lifetime
        self.hostname = hostname
        self.postmaster = postmaster or f"postmaster@{hostname}"

    async def __call__(self, finals: Sequence[Final]) -> None:
        submitter = self._submitter()
        if submitter is None:
            log.error("cannot send delivery status notifications: mail intake is not running")
            return
        now = time.time()
        for message, entries in finals:
            statuses = [
                RecipientStatus(
                    recipient=claimed.recipient, original_recipient=claimed.orcpt,
                    action=_ACTION[status],
                    status=_status(outcome, status),
                    remote_mta=outcome.remote.split("[", 1)[0] if outcome.remote else None,
                    diagnostic=f"{outcome.code} {outcome.response}" if outcome.remote else
                    outcome.response,
                    last_attempt=now,
                    will_retry_until=message.received_at.timestamp() + self.lifetime
                    if status == "delayed" else None)
                for claimed, outcome, status in entries
                if should_notify(envelope_sender=message.sender, notify=claimed.notify,
                                 action=_ACTION[status])]
            if not statuses:
                continue
            try:
                dsn = build_dsn(
                    original=message.data, envelope_sender=message.sender,
                    recipients=statuses, reporting_mta=self.hostname,
                    postmaster=self.postmaster, queue_id=message.id,
                    arrival=message.received_at.timestamp(), now=now,
                    envid=message.dsn_envid, ret=message.dsn_ret,  # type: ignore[arg-type]
                    message_id_domain=self.hostname)
                queue_id = await submitter.submit("", [message.sender], dsn)
            except (Refused, MessageRejected, ValueError) as err:
                log.error("could not queue a delivery status notification", extra=fields(
                    queue_id=message.id, sender=message.sender, error=str(err)))
                continue
            log.info("queued delivery status notification", extra=fields(
                queue_id=message.id, notification=queue_id, to=message.sender,
                recipients=len(statuses)))
