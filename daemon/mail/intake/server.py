"""The SMTP intake component: one asyncio server per configured listener, all in
egen's own loop (never aiosmtpd's threaded Controller), with connection bounds (see
daemon.mail.intake.slots), a drain on stop, and SIGHUP reload of certificates, users and
DKIM keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.journal.log import Journal
from daemon.logs import fields, get_logger
from daemon.mail.dkim import DkimError, DkimKey, KeyRing, generate_key, load_key
from daemon.mail.dkimkeys import write_private_key
from daemon.mail.intake.handler import (
    CredentialCache,
    IntakeContext,
    IntakeHandler,
    IntakeMetrics,
    client_address,
)
from daemon.mail.intake.policy import User, in_networks, parse_sender_pattern
from daemon.mail.intake.slots import ConnectionSlots
from daemon.mail.intake.smtpd import EgenSMTP
from daemon.mail.intake.tls import TlsError, ensure_self_signed, load_into, server_context
from daemon.mail.queue.submit import Submitter
from daemon.mail.settings import DkimSettings, ListenerSettings, SmtpSettings
from daemon.passwords import parse_hash
from daemon.ratelimit import FailureLimiter, TokenBucket
from daemon.units import HostPort

log = get_logger("smtp")
REAP_AFTER = 0.5        # seconds after a timeout's close for connection_lost to come


class SmtpStartError(Exception):
    pass


def load_keyring(dkim: DkimSettings) -> KeyRing:
    """Every configured DKIM key, generated first where `generate = true` asks for it."""
    keys: list[DkimKey] = []
    for entry in dkim.keys:
        if entry.generate and not entry.key_file.exists():
            entry.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_key(generate_key(entry.algorithm), entry.key_file)
            log.info("generated dkim key", extra=fields(
                domain=entry.domain, selector=entry.selector, file=str(entry.key_file)))
        key = load_key(entry.key_file, domain=entry.domain, selector=entry.selector)
        if key.algorithm != entry.algorithm:
            raise DkimError(f"{entry.key_file}: holds an {key.algorithm} key, but the config "
                            f"says algorithm = \"{entry.algorithm}\"")
        if key.weak:
            log.warning("weak dkim key; use 2048 bits", extra=fields(
                domain=key.domain, selector=key.selector, bits=key.key_bits))
        if key.loose_permissions:
            log.warning("dkim key file is readable by others; chmod 600 it",
                        extra=fields(file=str(entry.key_file)))
        keys.append(key)
    return KeyRing(keys)


def load_users(smtp: SmtpSettings) -> dict[str, User]:
    return {name: User(name=name, password=parse_hash(user.password_hash.reveal()),
                       allowed_senders=tuple(parse_sender_pattern(p)
                                             for p in user.allowed_senders))
            for name, user in smtp.users.items()}


@dataclass(frozen=True)
class SmtpSections:
    """The config sections SMTP intake runs with (what reload() replaces)."""

    smtp: SmtpSettings
    dkim: DkimSettings


class SmtpServer:
    name = "smtp"
    # What reload() applies, to new sessions; listeners and the host name need a restart.
    RELOADS = ("smtp.max_message_size", "smtp.max_recipients", "smtp.max_connections",
               "smtp.max_connections_per_client", "smtp.timeout", "smtp.first_command_timeout",
               "smtp.tls_cert", "smtp.tls_key", "smtp.users", "smtp.rate_per_user",
               "smtp.rate_per_client", "smtp.auth_failures", "smtp.auth_block", "dkim")

    def __init__(self, smtp: SmtpSettings, dkim: DkimSettings, journal: Journal,
                 registry: CollectorRegistry, *, hostname: str, state_dir: Path,
                 drain_timeout: float, sign_threads: int = 2) -> None:
        self.settings = SmtpSections(smtp=smtp, dkim=dkim)
        # Not reloadable: fixed at start.
        self.hostname = hostname
        self.state_dir = state_dir
        self.drain_timeout = drain_timeout
        self.journal = journal
        self.metrics = IntakeMetrics(registry)
        self.sign_pool = ThreadPoolExecutor(max_workers=sign_threads,
                                            thread_name_prefix="dkim-sign")
        self.credentials = CredentialCache()
        self.slots = ConnectionSlots(registry)
        self.tls_context: ssl.SSLContext | None = None
        self.context: IntakeContext | None = None
        self.addresses: list[HostPort] = []
        self._servers: list[asyncio.Server] = []
        self._sessions: set[EgenSMTP] = set()
        # One handler per listener (it keeps no per-connection state); rebuilt when a
        # reload brings a new context.
        self._handlers: dict[int, IntakeHandler] = {}
        self._in_data = 0
        self._no_data = asyncio.Event()
        self._no_data.set()

    def data_started(self) -> None:
        self._in_data += 1
        self._no_data.clear()

    def data_finished(self) -> None:
        self._in_data -= 1
        if self._in_data == 0:
            self._no_data.set()

    @property
    def submitter(self) -> Submitter | None:
        """The current signing and queueing path (new keys after a reload), for egen's
        own mail; None before start."""
        return self.context.submitter if self.context is not None else None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        smtp = self.settings.smtp
        try:
            # Built even without listeners: egen's own mail (bounces) is signed with it.
            self.context = await asyncio.to_thread(self._build_context, smtp,
                                                   self.settings.dkim)
            if any(listener.tls != "none" for listener in smtp.listeners):
                cert, key = await asyncio.to_thread(self._cert_paths, smtp)
                self.tls_context = await asyncio.to_thread(server_context, cert, key)
        except (DkimError, TlsError, ValueError, OSError) as err:
            raise SmtpStartError(str(err)) from None
        loop = asyncio.get_running_loop()
        for listener in smtp.listeners:
            server = await loop.create_server(
                lambda listener=listener: self._protocol(listener),
                listener.listen.host, listener.listen.port, reuse_address=True,
                ssl=self.tls_context if listener.tls == "implicit" else None,
                # before the handshake no session exists to time out: bound it too
                ssl_handshake_timeout=smtp.first_command_timeout
                if listener.tls == "implicit" else None)
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound = HostPort(host, port)
                self.addresses.append(bound)
                log.info("listening", extra=fields(
                    proto="smtp", address=str(bound), tls=listener.tls, auth=listener.auth))

    def _build_context(self, smtp: SmtpSettings, dkim: DkimSettings) -> IntakeContext:
        previous = self.context
        if previous is None:
            client_rate = TokenBucket(rate=smtp.rate_per_client.per_minute / 60,
                                      burst=smtp.rate_per_client.burst)
            user_rate = TokenBucket(rate=smtp.rate_per_user.per_minute / 60,
                                    burst=smtp.rate_per_user.burst)
            auth_failures = FailureLimiter(max_failures=smtp.auth_failures,
                                           block=smtp.auth_block)
        else:
            # A reload keeps what every client and user has used and every AUTH block
            # running; only the limits change.
            client_rate, user_rate = previous.client_rate, previous.user_rate
            auth_failures = previous.auth_failures
        submitter = Submitter(
            hostname=self.hostname, keyring=load_keyring(dkim),
            refuse_unsigned=dkim.unsigned == "refuse", journal=self.journal,
            executor=self.sign_pool, metrics=self.metrics)
        return IntakeContext(
            smtp=smtp, users=load_users(smtp), submitter=submitter, metrics=self.metrics,
            client_rate=client_rate, user_rate=user_rate, auth_failures=auth_failures)

    def _retune(self, smtp: SmtpSettings) -> None:
        assert self.context is not None
        ctx = self.context
        ctx.client_rate.retune(rate=smtp.rate_per_client.per_minute / 60,
                               burst=smtp.rate_per_client.burst)
        ctx.user_rate.retune(rate=smtp.rate_per_user.per_minute / 60,
                             burst=smtp.rate_per_user.burst)
        ctx.auth_failures.retune(max_failures=smtp.auth_failures, block=smtp.auth_block)

    def _cert_paths(self, smtp: SmtpSettings) -> tuple[Path, Path]:
        if smtp.tls_cert is not None and smtp.tls_key is not None:
            return smtp.tls_cert, smtp.tls_key
        return ensure_self_signed(self.state_dir / "tls", self.hostname)

    def _protocol(self, listener: ListenerSettings) -> asyncio.Protocol:
        assert self.context is not None
        smtp = self.settings.smtp
        if len(self._sessions) >= smtp.max_connections:
            self.slots.refused.labels("max_connections").inc()
            return _Refuse(f"421 4.7.0 {self.hostname} Too many connections; "
                           f"try again later\r\n")
        handler = self._handlers.get(id(listener))
        if handler is None or handler.context is not self.context:
            handler = self._handlers[id(listener)] = IntakeHandler(listener, self.context,
                                                                   self.credentials)
        session = _TrackedSMTP(
            self, handler, allow_auth=listener.auth != "none",
            data_size_limit=smtp.max_message_size, enable_SMTPUTF8=True,
            decode_data=False, hostname=self.hostname, ident="egen ESMTP",
            tls_context=self.tls_context if listener.tls == "starttls" else None,
            require_starttls=listener.require_tls, timeout=smtp.timeout,
            auth_require_tls=not listener.allow_plaintext_auth,
            # without it, aiosmtpd looks the loop up under warnings.catch_warnings() for
            # every connection, which costs more than the rest of its setup
            loop=asyncio.get_running_loop())
        return session

    async def stop(self) -> None:
        """Stop listening, let messages in DATA finish, then close idle sessions."""
        for server in self._servers:
            server.close()
        if self._in_data:
            log.info("waiting for messages in transfer", extra=fields(count=self._in_data))
            try:
                await asyncio.wait_for(self._no_data.wait(), self.drain_timeout)
            except TimeoutError:
                log.warning("messages still in transfer at drain timeout; their clients "
                            "were not answered and will retry", extra=fields(
                                count=self._in_data))
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self.addresses = []
        self.sign_pool.shutdown(wait=False, cancel_futures=True)

    async def reload(self, smtp: SmtpSettings, dkim: DkimSettings) -> None:
        """New users, keys, limits and certificate for new sessions (RELOADS); the
        limiters keep their state, and listeners (and the host name) stay as they are."""
        try:
            context = await asyncio.to_thread(self._build_context, smtp, dkim)
            if self.tls_context is not None:
                cert, key = await asyncio.to_thread(self._cert_paths, smtp)
                await asyncio.to_thread(load_into, self.tls_context, cert, key)
        except (DkimError, TlsError, ValueError, OSError) as err:
            log.error("smtp reload failed; keeping the previous keys and certificate",
                      extra=fields(error=str(err)))
            return
        # Only what RELOADS names: listeners and the rest stay as they were at start.
        self.settings = SmtpSections(
            dkim=dkim, smtp=dataclasses.replace(smtp, listeners=self.settings.smtp.listeners))
        self.context = context
        self._retune(smtp)
        self.credentials.clear()
        log.info("smtp reloaded", extra=fields(users=len(context.users),
                                               dkim_domains=",".join(context.keyring.domains)))


class _TrackedSMTP(EgenSMTP):
    """Knows its server, so open sessions can be counted, capped per client, drained
    and closed; and says 421 when it times out, as Postfix does, instead of hanging up
    without a word."""

    def __init__(self, owner: SmtpServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.client: str | None = None       # set once this connection holds a slot
        self.awaiting_first_command = False
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:           # the TLS transport after STARTTLS
            super().connection_made(transport)
            return
        owner, smtp = self.owner, self.owner.settings.smtp
        peer = transport.get_extra_info("peername")
        client = client_address(peer[0] if isinstance(peer, tuple) else str(peer))
        handler: IntakeHandler = self.event_handler
        if not owner.slots.admit(client, limit=smtp.max_connections_per_client,
                                 exempt=in_networks(client, handler.networks)):
            log.warning("connection refused", extra=fields(
                client=client, reason="max_connections_per_client",
                held=owner.slots.held_by(client)))
            _Refuse(f"421 4.7.0 {owner.hostname} Too many connections from "
                    f"{client}; try again later\r\n").connection_made(transport)
            return
        self.client = client
        self.started = True
        owner._sessions.add(self)
        owner.slots.open.set(len(owner._sessions))
        super().connection_made(transport)
        self._reset_timeout(smtp.first_command_timeout)
        self.awaiting_first_command = True

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None:        # aiosmtpd's reset after each valid command
            self.awaiting_first_command = False
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        reason = "first_command_timeout" if self.awaiting_first_command else "idle_timeout"
        self.owner.slots.refused.labels(reason).inc()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(  # type: ignore[attr-defined]
                f"421 4.4.2 {self.owner.hostname} Error: timeout "
                "exceeded\r\n".encode())
        super()._timeout_cb()
        # Closed in the middle of a STARTTLS handshake, the connection never reaches
        # connection_lost (asyncio's TLS layer swallows it): end it here if so.
        self.loop.call_later(REAP_AFTER, self._reap)

    def _reap(self) -> None:
        if self.client is not None:
            self.connection_lost(None)

    def _release(self) -> None:
        if self.client is None:
            return
        self.owner.slots.release(self.client)
        self.client = None
        self.owner._sessions.discard(self)
        self.owner.slots.open.set(len(self.owner._sessions))

    def connection_lost(self, error: Exception | None) -> None:
        if not self.started:            # refused in connection_made: never started
            return
        self._release()
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        self.owner.data_started()
        try:
            await super().smtp_DATA(arg)
        finally:
            self.owner.data_finished()


class _Refuse(asyncio.Protocol):
    """Answers 421 and hangs up: the cheapest thing to do over the connection cap."""

    def __init__(self, reply: str) -> None:
        self.reply = reply.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.WriteTransport subclasses; they do write.
        transport.write(self.reply)  # type: ignore[attr-defined]
        transport.close()
