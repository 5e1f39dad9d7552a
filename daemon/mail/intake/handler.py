"""The SMTP handler: aiosmtpd calls these hooks per command; each answers from policy,
and DATA ends with the signed message durable in the journal before `250`.

Never relays inside DATA: accepting means "on disk", delivery happens elsewhere. Every
message ends in exactly one counted outcome (accepted or rejected with a reason), and
every outcome is one line in the mail log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import LoginPassword, Session
from prometheus_client import CollectorRegistry, Counter

from daemon.logs import fields, get_logger
from daemon.mail.dkim import KeyRing
from daemon.mail.intake.policy import (
    Decision,
    User,
    check_header_from,
    check_mail_from,
    check_relay,
    in_networks,
    parse_path,
)
from daemon.mail.intake.smtpd import EgenSMTP
from daemon.mail.message import MessageRejected, prepare, protocol_name, received_header
from daemon.mail.queue import envelope as queue_record
from daemon.mail.queue.submit import DsnRequest, Origin, Refused, Submitter
from daemon.mail.settings import ListenerSettings, SmtpSettings
from daemon.ratelimit import FailureLimiter, TokenBucket

log = get_logger("smtp")
maillog = get_logger("maillog")


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("egen_smtp_messages_total",
                                "Messages by outcome (accepted, or rejected with a reason).",
                                ["outcome", "reason"], registry=registry)
        self.recipients = Counter("egen_smtp_recipients_total", "Recipients accepted.",
                                  registry=registry)
        self.auth = Counter("egen_smtp_auth_total", "AUTH attempts by result.", ["result"],
                            registry=registry)
        self.bytes = Counter("egen_smtp_accepted_bytes_total", "Bytes of accepted mail.",
                             registry=registry)


def client_address(host: str) -> str:
    """The address a client is known by: IPv4-mapped IPv6 as plain IPv4."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass
class IntakeContext:
    """What every listener's handler shares; replaced wholesale on SIGHUP. Signing and
    queueing are the submitter's; the rest is the listeners' policy."""

    smtp: SmtpSettings
    users: Mapping[str, User]
    submitter: Submitter
    metrics: IntakeMetrics
    client_rate: TokenBucket
    user_rate: TokenBucket
    auth_failures: FailureLimiter

    @property
    def hostname(self) -> str:
        return self.submitter.hostname

    @property
    def keyring(self) -> KeyRing:
        return self.submitter.keyring


class CredentialCache:
    """Remembers a keyed digest of each user's last good password, so a client that
    connects per message costs one scrypt per password change, not one per message.
    The key lives only in this process; the digest is useless outside it."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._known: dict[str, bytes] = {}

    def _digest(self, name: str, password: bytes) -> bytes:
        return hashlib.blake2b(name.encode() + b"\0" + password, key=self._key).digest()

    def hit(self, name: str, password: bytes) -> bool:
        known = self._known.get(name)
        return known is not None and hmac.compare_digest(known, self._digest(name, password))

    def remember(self, name: str, password: bytes) -> None:
        self._known[name] = self._digest(name, password)

    def clear(self) -> None:
        self._known.clear()


class IntakeHandler:
    """aiosmtpd handler for one listener; finds hooks by exact name (handle_*)."""

    def __init__(self, listener: ListenerSettings, context: IntakeContext,
                 credentials: CredentialCache) -> None:
        self.listener = listener
        self.networks = listener.networks
        self.context = context
        self.credentials = credentials

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def client_ip(session: Session) -> str:
        """The client's address (IPv4-mapped IPv6 unwrapped), worked out once per session."""
        known: str | None = getattr(session, "egen_client_ip", None)
        if known is not None:
            return known
        session.egen_client_ip = IntakeHandler._parse_peer(session)  # type: ignore[attr-defined]
        return session.egen_client_ip  # type: ignore[attr-defined]

    @staticmethod
    def _parse_peer(session: Session) -> str:
        peer = session.peer
        return client_address(peer[0] if isinstance(peer, tuple) else str(peer))

    def trusted(self, session: Session) -> bool:
        known: bool | None = getattr(session, "egen_trusted", None)
        if known is None:
            known = in_networks(self.client_ip(session), self.networks)
            session.egen_trusted = known  # type: ignore[attr-defined]
        return known

    @staticmethod
    def user(session: Session) -> User | None:
        return session.auth_data if session.authenticated else None

    def reject(self, session: Session, reason: str, reply: str, **extra: Any) -> str:
        self.context.metrics.messages.labels("rejected", reason).inc()
        maillog.info("rejected", extra=fields(
            client=self.client_ip(session), reason=reason, reply=reply, **extra))
        return reply

    def bare_newline_refusal(self, session: Session) -> str | None:
        """None when this client's bare LFs may be read as CRLF, else the refusal.

        A bare LF is where SMTP smuggling starts: "\\n.\\n" ends DATA for some
        servers and not for others, so a message that carries one means different
        things to egen and to the next hop."""
        if self.listener.bare_newline == "normalize" and self.trusted(session):
            return None
        return self.reject(session, "bare_newline",
                           "550 5.5.2 Message contains a bare <LF> (a line end without "
                           "<CR>); SMTP requires <CR><LF>")

    # -- hooks ------------------------------------------------------------------------

    async def handle_EHLO(self, server: EgenSMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        kept = [line for line in responses if line.strip() != "250-AUTH"]
        last = kept.pop()  # "250 HELP"
        return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN", last]

    async def authenticate(self, server: EgenSMTP, session: Session,
                           credentials: LoginPassword) -> tuple[str, User | None]:
        ctx = self.context
        ip = self.client_ip(session)
        name = credentials.login.decode("utf-8", "replace")
        # Failures count per (address, user): one application with a stale password
        # must not lock out every other application on its host.
        limited = f"{ip}\x00{name[:256]}"
        if ctx.auth_failures.blocked(limited):
            ctx.metrics.auth.labels("blocked").inc()
            return "454 4.7.0 Too many failed AUTH attempts; try again later", None
        user = ctx.users.get(name)
        ok = False
        if user is not None:
            if self.credentials.hit(name, credentials.password):
                ok = True
            else:
                password = credentials.password.decode("utf-8", "surrogateescape")
                ok = await asyncio.to_thread(user.password.verify, password)
                if ok:
                    self.credentials.remember(name, credentials.password)
        if not ok:
            ctx.metrics.auth.labels("failed").inc()
            log.warning("auth failed", extra=fields(client=ip, user=name))
            if ctx.auth_failures.failure(limited):
                log.warning("auth blocked: too many failures", extra=fields(
                    client=ip, user=name, failures=ctx.auth_failures.max_failures,
                    seconds=round(ctx.auth_failures.block)))
            return "535 5.7.8 Authentication credentials invalid", None
        ctx.auth_failures.success(limited)
        ctx.metrics.auth.labels("ok").inc()
        return "235 2.7.0 Authentication successful", user

    async def handle_MAIL(self, server: EgenSMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        ctx = self.context
        user = self.user(session)
        trusted = self.trusted(session)
        if self.listener.auth == "required" and user is None and not trusted:
            return self.reject(session, "auth_required",
                               "530 5.7.0 Authentication required")
        try:
            sender = parse_path(address, allow_null=True, smtputf8=envelope.smtp_utf8)
        except ValueError as err:
            return self.reject(session, "bad_sender", f"501 5.1.7 Bad sender address: {err}")
        decision = check_mail_from(user, sender)
        if not decision.ok:
            return self.reject(session, "sender_not_allowed", decision.reply(), sender=sender,
                               user=user.name if user else None)
        ip = self.client_ip(session)
        if not ctx.client_rate.take(ip):
            wait = ctx.client_rate.retry_after(ip)
            return self.reject(session, "rate_client",
                               f"451 4.7.1 Too much mail from {ip}; try again in {wait:.0f}s")
        if user is not None and not ctx.user_rate.take(user.name):
            wait = ctx.user_rate.retry_after(user.name)
            return self.reject(session, "rate_user", f"451 4.7.1 Too much mail from user "
                               f"{user.name}; try again in {wait:.0f}s")
        envelope.mail_from = sender or "<>"   # aiosmtpd treats "" as "no MAIL yet"
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: EgenSMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        decision: Decision = check_relay(authenticated_user=self.user(session),
                                         client_trusted=self.trusted(session))
        if not decision.ok:
            return self.reject(session, "relay_denied", decision.reply(), rcpt=address)
        limit = self.context.smtp.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return f"452 4.5.3 Too many recipients (at most {limit} per message)"
        try:
            recipient = parse_path(address, allow_null=False, smtputf8=envelope.smtp_utf8)
        except ValueError as err:
            return f"501 5.1.3 Bad recipient address: {err}"
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: EgenSMTP, session: Session,
                          envelope: SmtpEnvelope) -> str:
        ctx = self.context
        user = self.user(session)
        ip = self.client_ip(session)
        queue_id = queue_record.new_queue_id()
        now = time.time()
        tls = server.tls_description()
        received = received_header(
            helo=session.host_name or "unknown", client_ip=ip, client_rdns=None,
            hostname=ctx.hostname, queue_id=queue_id,
            protocol=protocol_name(esmtp=session.extended_smtp, tls=tls is not None,
                                   auth=user is not None, smtputf8=envelope.smtp_utf8),
            tls=tls, auth_user=user.name if user else None,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None, now=now)
        raw = envelope.original_content or b""
        try:
            prepared = prepare(raw, received=received, hostname=ctx.hostname, now=now)
        except MessageRejected as err:
            return self.reject(session, "bad_message", f"{err.code} {err.message}",
                               queue_id=queue_id)
        decision = check_header_from(user, prepared.from_addresses)
        if not decision.ok:
            return self.reject(session, "from_not_allowed", decision.reply(),
                               queue_id=queue_id)
        origin = Origin(client_ip=ip, helo=session.host_name or "",
                        auth_user=user.name if user else None, tls=tls,
                        smtputf8=envelope.smtp_utf8,
                        body_8bit="BODY=8BITMIME" in envelope.mail_options)
        try:
            sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
            # Shielded: a client that hangs up while the append is in flight does not
            # withdraw it, so the accept must still be counted and logged.
            per_rcpt = getattr(envelope, "dsn_rcpt", [])
            dsn = DsnRequest(
                ret=getattr(envelope, "dsn_ret", None), envid=getattr(envelope, "dsn_envid", None),
                notify=tuple(n for n, _ in per_rcpt), orcpt=tuple(o for _, o in per_rcpt))
            queueing = asyncio.ensure_future(ctx.submitter.sign_and_queue(
                queue_id=queue_id, sender=sender or "", recipients=envelope.rcpt_tos,
                prepared=prepared, origin=origin, now=now, dsn=dsn))
            try:
                await asyncio.shield(queueing)
            except asyncio.CancelledError:
                queueing.add_done_callback(self._unanswered(session, queue_id))
                raise
        except Refused as refused:
            return self.reject(session, refused.reason, refused.reply, queue_id=queue_id)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _unanswered(self, session: Session, queue_id: str) -> Any:
        """Account for a queueing whose client hung up before the answer: a refusal is
        still counted and logged once (an accept logs itself)."""
        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if isinstance(error, Refused):
                self.reject(session, error.reason, error.reply, queue_id=queue_id)
            elif error is not None:
                log.error("queueing failed after the client left", exc_info=error,
                          extra=fields(queue_id=queue_id))
        return done

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp session error", exc_info=error)
        self.context.metrics.messages.labels("rejected", "internal_error").inc()
        return "451 4.3.0 Internal error; try again later"

