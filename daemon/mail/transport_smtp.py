"""Delivery over SMTP (aiosmtplib): to a domain's MX hosts in RFC 5321 §5 order, or to a
route's smarthost, with opportunistic STARTTLS, connection reuse and bounded concurrency.

Connection-level failures (refused, timeout, a 4xx/5xx greeting, TLS failure) move on to
the next address or MX host; once a transaction runs, its replies decide each recipient.
Opportunistic TLS does not verify certificates (as Postfix's `may` level: encryption
against passive eavesdropping); `require_tls` refuses plaintext instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from dataclasses import dataclass, field

import aiosmtplib

from daemon.logs import fields, get_logger
from daemon.mail.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from daemon.mail.outcome import Outcome, bounced_all, deferred_all, from_reply
from daemon.mail.routing import RouteSettings

log = get_logger("delivery")

_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, aiosmtplib.SMTPException, ssl.SSLError)


class _HopFailed(Exception):
    """This address could not take a transaction; try the next one."""


@dataclass(frozen=True)
class Job:
    queue_id: str
    sender: str
    recipients: list[tuple[int, str]]     # (idx, address)
    data: bytes
    smtputf8: bool
    body_8bit: bool


@dataclass
class _Idle:
    clients: list[tuple[aiosmtplib.SMTP, float]] = field(default_factory=list)


class SmtpTransport:
    def __init__(self, *, helo: str, port: int, resolver: MxResolver, connect_timeout: float,
                 command_timeout: float, concurrency: int, per_destination: int,
                 keepalive: float = 30.0) -> None:
        self.helo = helo
        self.port = port
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive = keepalive
        self.per_destination = per_destination
        self._total = asyncio.Semaphore(concurrency)
        self._per_host: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = defaultdict(int)
        self._idle: dict[str, _Idle] = defaultdict(_Idle)
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    async def deliver_mx(self, domain: str, route: RouteSettings, job: Job) -> list[Outcome]:
        indexes = [i for i, _ in job.recipients]
        try:
            hosts = await self.resolver.resolve(domain)
        except DnsPermanentError as err:
            return bounced_all(indexes, f"{'5.1.10' if err.null_mx else '5.1.2'} {err}",
                               code=556 if err.null_mx else 550)
        except DnsTemporaryError as err:
            return deferred_all(indexes, f"4.4.3 {err}")
        failures: list[str] = []
        for host in hosts:
            for address in host.addresses:
                try:
                    return await self._deliver_to(address, self.port, host.name, route, job,
                                                  implicit=False)
                except _HopFailed as err:
                    failures.append(str(err))
        return deferred_all(indexes, "4.4.1 " + ("; ".join(failures[-3:]) or
                                                 f"no usable MX host for {domain}"))

    async def deliver_smarthost(self, route: RouteSettings, job: Job) -> list[Outcome]:
        assert route.host is not None
        try:
            return await self._deliver_to(route.host, route.port, route.host, route, job,
                                          implicit=route.tls == "implicit")
        except _HopFailed as err:
            return deferred_all([i for i, _ in job.recipients], f"4.4.1 {err}")

    async def _deliver_to(self, address: str, port: int, name: str, route: RouteSettings,
                          job: Job, *, implicit: bool) -> list[Outcome]:
        key = f"{address}:{port}:{route.transport}:{route.username}"
        semaphore = self._per_host.setdefault(key, asyncio.Semaphore(self.per_destination))
        self._users[key] += 1
        try:
            async with self._total, semaphore:
                client = await self._client(key, address, port, name, route, implicit=implicit)
                outcomes = await self._transaction(client, key, name=name, address=address,
                                                   port=port, job=job)
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                self._per_host.pop(key, None)
        return outcomes

    async def _client(self, key: str, address: str, port: int, name: str,
                      route: RouteSettings, *, implicit: bool) -> aiosmtplib.SMTP:
        loop = asyncio.get_running_loop()
        idle = self._idle[key].clients
        while idle:
            client, since = idle.pop()
            if not idle:
                del self._idle[key]
            if client.is_connected and loop.time() - since < self.keepalive:
                try:  # the server may have dropped an idle connection meanwhile
                    await client.rset()
                except _CONNECTION_ERRORS:
                    client.close()
                    continue
                return client
            client.close()
        where = f"{name}[{address}]:{port}"
        client = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=self.helo,
                                 timeout=self.command_timeout, use_tls=implicit,
                                 start_tls=False, tls_context=self._tls if implicit else None)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout)
            await client.ehlo()
            if not implicit and route.tls != "none" and client.supports_extension("starttls"):
                await client.starttls(tls_context=self._tls)
            elif route.require_tls and not implicit:
                client.close()
                raise _HopFailed(f"{where}: TLS required but STARTTLS not offered")
            if route.username is not None and route.password is not None:
                await client.login(route.username, route.password.reveal())
        except _HopFailed:
            raise
        except aiosmtplib.SMTPAuthenticationError as err:
            client.close()
            raise _HopFailed(f"{where}: authentication failed: {err.code} {err.message}") \
                from None
        except _CONNECTION_ERRORS as err:
            client.close()
            raise _HopFailed(f"{where}: {type(err).__name__}: {err}") from None
        return client

    async def _transaction(self, client: aiosmtplib.SMTP, key: str, *, name: str,
                           address: str, port: int, job: Job) -> list[Outcome]:
        remote = f"{name}[{address}]:{port}"
        tls = _tls_of(client)
        indexes = [i for i, _ in job.recipients]
        options = []
        if job.smtputf8:
            if not client.supports_extension("smtputf8"):
                self._release(key, client)
                return bounced_all(indexes, f"5.6.7 {remote} does not support SMTPUTF8, which "
                                   "this message needs", remote=remote)
            options.append("SMTPUTF8")
        if job.body_8bit and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        by_address: dict[str, list[int]] = defaultdict(list)
        for idx, rcpt in job.recipients:
            by_address[rcpt].append(idx)
        try:
            refused, reply = await client.sendmail(job.sender, list(by_address), job.data,
                                                   mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as err:
            self._release(key, client)
            return [from_reply(i, r.code, r.message, remote=remote, tls=tls)
                    for r in err.recipients for i in by_address.get(r.recipient, [])]
        except aiosmtplib.SMTPResponseException as err:
            self._release(key, client)
            return [from_reply(i, err.code, err.message, remote=remote, tls=tls)
                    for i in indexes]
        except _CONNECTION_ERRORS as err:
            client.close()
            return deferred_all(indexes, f"4.4.2 {remote}: lost connection: "
                                f"{type(err).__name__}: {err}", remote=remote)
        self._release(key, client)
        outcomes = []
        for rcpt, idxs in by_address.items():
            for idx in idxs:
                if rcpt in refused:
                    answer = refused[rcpt]
                    outcomes.append(from_reply(idx, answer.code, answer.message, remote=remote,
                                               tls=tls))
                else:
                    outcomes.append(from_reply(idx, 250, reply, remote=remote, tls=tls))
        return outcomes

    def _release(self, key: str, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle[key].clients.append((client, asyncio.get_running_loop().time()))
        else:
            client.close()

    async def close(self) -> None:
        for idle in self._idle.values():
            for client, _ in idle.clients:
                try:
                    await asyncio.wait_for(client.quit(), 2.0)
                except _CONNECTION_ERRORS:
                    client.close()
        self._idle.clear()
        log.debug("smtp transport closed", extra=fields())


def _tls_of(client: aiosmtplib.SMTP) -> str | None:
    transport = client.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()
