"""Delivery over SMTP (aiosmtplib): to a domain's MX hosts in RFC 5321 §5 order, or to a
route's smarthost, with opportunistic STARTTLS, connection reuse and bounded concurrency.

Connection-level failures (refused, timeout, a 4xx/5xx greeting, TLS failure) move on to
the next address or MX host; once a transaction runs, its replies decide each recipient.
Opportunistic TLS does not verify certificates (as Postfix's `may` level: encryption
against passive eavesdropping); `require_tls` refuses plaintext instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter, defaultdict

import aiosmtplib
from prometheus_client import Gauge

from daemon.logs import fields, get_logger
from daemon.mail.delivery.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from daemon.mail.delivery.outcome import Outcome, bounced_all, deferred_all, from_reply
from daemon.mail.delivery.routing import RouteSettings
from daemon.mail.delivery.transport import Job

__all__ = ["Job", "MxTransport", "SmarthostTransport", "SmtpTransport"]

log = get_logger("delivery")

_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, aiosmtplib.SMTPException, ssl.SSLError)


class _HopFailed(Exception):
    """This address could not take a transaction; try the next one."""


class _Stale(Exception):
    """A reused connection turned out dead before its transaction began (the server closed
    it while idle): the transaction is tried once more on a new connection."""


class MxTransport:
    """A route's Transport to the MX hosts of the job's domain."""

    per_domain = True

    def __init__(self, route: RouteSettings, smtp: SmtpTransport) -> None:
        self.route = route
        self.smtp = smtp

    async def deliver(self, job: Job) -> list[Outcome]:
        return await self.smtp.deliver_mx(job.domain, self.route, job)


class SmarthostTransport:
    """A route's Transport to its smarthost."""

    per_domain = False

    def __init__(self, route: RouteSettings, smtp: SmtpTransport) -> None:
        self.route = route
        self.smtp = smtp

    async def deliver(self, job: Job) -> list[Outcome]:
        return await self.smtp.deliver_smarthost(self.route, job)


class SmtpTransport:
    """The outgoing SMTP connections MX and smarthost routes share. Connections are kept
    per destination (address, port, transport, user) for `keepalive` seconds and reused
    without a probe when the last transaction on them ended cleanly (a failed one leaves
    an RSET for the next use): a reused connection that is found dead at MAIL costs one
    new connection, not a deferral. `connections`, when given, is a gauge with a
    `destination` label (the host name) counting open connections; a label is removed
    once its count drops to zero. Idle connections count against `concurrency` too (the
    oldest is closed to make room), so there are never more open connections, nor
    labels, than that."""

    def __init__(self, *, helo: str, port: int, resolver: MxResolver, connect_timeout: float,
                 command_timeout: float, concurrency: int, per_destination: int,
                 keepalive: float = 30.0, connections: Gauge | None = None) -> None:
        self.helo = helo
        self.port = port
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.keepalive = keepalive
        self.per_destination = per_destination
        self.concurrency = concurrency
        self._total = asyncio.Semaphore(concurrency)
        self._per_host: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = defaultdict(int)
        # key -> idle connections: (client, idle since, clean: no RSET needed first)
        self._idle: dict[str, list[tuple[aiosmtplib.SMTP, float, bool]]] = {}
        self._labels: dict[aiosmtplib.SMTP, str] = {}     # every open connection's label
        self._open: Counter[str] = Counter()
        self._gauge = connections
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def open_connections(self) -> dict[str, int]:
        """Open connections per destination host (idle ones included)."""
        return dict(self._open)

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
            # The destination's slot first: waiting for a busy destination must not hold
            # one of the slots other destinations need.
            async with semaphore, self._total:
                reuse = True
                while True:
                    client, reused = await self._client(key, address, port, name, route,
                                                        implicit=implicit, reuse=reuse)
                    try:
                        return await self._transaction(client, key, name=name,
                                                       address=address, port=port, job=job,
                                                       reused=reused)
                    except _Stale:
                        reuse = False
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                self._per_host.pop(key, None)

    async def _client(self, key: str, address: str, port: int, name: str,
                      route: RouteSettings, *, implicit: bool, reuse: bool
                      ) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection to the destination and whether it is a reused one."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key, []) if reuse else []
        while idle:
            client, since, clean = idle.pop()
            if not idle:
                del self._idle[key]
            if not client.is_connected or loop.time() - since >= self.keepalive:
                self._close(client)
                continue
            if not clean:
                try:  # the last transaction failed half way: reset the server's envelope
                    await client.rset()
                except _CONNECTION_ERRORS:
                    self._close(client)
                    continue
            return client, True
        if len(self._labels) >= self.concurrency:
            self._close_oldest_idle()     # idle ones count too: at most `concurrency` open
        where = f"{name}[{address}]:{port}"
        client = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=self.helo,
                                 timeout=self.command_timeout, use_tls=implicit,
                                 start_tls=False, tls_context=self._tls if implicit else None)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout)
            self._opened(client, name)
            await client.ehlo()
            if not implicit and route.tls != "none" and client.supports_extension("starttls"):
                await client.starttls(tls_context=self._tls)
            elif route.require_tls and not implicit:
                self._close(client)
                raise _HopFailed(f"{where}: TLS required but STARTTLS not offered")
            if route.username is not None and route.password is not None:
                await client.login(route.username, route.password.reveal())
        except _HopFailed:
            raise
        except aiosmtplib.SMTPAuthenticationError as err:
            self._close(client)
            raise _HopFailed(f"{where}: authentication failed: {err.code} {err.message}") \
                from None
        except _CONNECTION_ERRORS as err:
            self._close(client)
            raise _HopFailed(f"{where}: {type(err).__name__}: {err}") from None
        except BaseException:
            self._close(client)
            raise
        return client, False

    async def _transaction(self, client: aiosmtplib.SMTP, key: str, *, name: str,
                           address: str, port: int, job: Job, reused: bool) -> list[Outcome]:
        remote = f"{name}[{address}]:{port}"
        tls = _tls_of(client)
        indexes = [i for i, _ in job.recipients]
        if job.smtputf8 and not client.supports_extension("smtputf8"):
            self._release(key, client, clean=True)
            return bounced_all(indexes, f"5.6.7 {remote} does not support SMTPUTF8, which "
                               "this message needs", remote=remote)
        try:
            return await self._send(client, key, job, remote=remote, tls=tls, reused=reused)
        except _Stale:
            self._close(client)
            raise
        except _CONNECTION_ERRORS as err:
            self._close(client)
            return deferred_all(indexes, f"4.4.2 {remote}: lost connection: "
                                f"{type(err).__name__}: {err}", remote=remote)
        except BaseException:
            self._close(client)   # in an unknown state: never back to the idle list
            raise

    async def _send(self, client: aiosmtplib.SMTP, key: str, job: Job, *, remote: str,
                    tls: str | None, reused: bool) -> list[Outcome]:
        """MAIL, RCPT per distinct address, DATA: the commands aiosmtplib's sendmail sends,
        without its per-call address parsing (the queue holds addresses intake checked)."""
        encoding = "utf-8" if job.smtputf8 else "ascii"
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(job.data)}".encode())
        if job.smtputf8:
            options.append(b"SMTPUTF8")
        if job.body_8bit and client.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        by_address: dict[str, list[int]] = defaultdict(list)
        for idx, rcpt in job.recipients:
            by_address[rcpt].append(idx)

        def each(replies: dict[str, tuple[int, str]]) -> list[Outcome]:
            return [from_reply(i, *replies[rcpt], remote=remote, tls=tls)
                    for rcpt, idxs in by_address.items() for i in idxs]

        try:
            reply = await client.execute_command(
                b"MAIL", b"FROM:<" + job.sender.encode(encoding) + b">", *options)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            if reused:      # closed by the server while idle (a timeout is no such sign)
                raise _Stale from None
            raise
        if reply.code == 421 and reused:
            raise _Stale
        if reply.code != 250:
            self._release(key, client, clean=False)
            return each(dict.fromkeys(by_address, (reply.code, reply.message)))
        replies: dict[str, tuple[int, str]] = {}
        for rcpt in by_address:
            answer = await client.execute_command(b"RCPT",
                                                  b"TO:<" + rcpt.encode(encoding) + b">")
            replies[rcpt] = (answer.code, answer.message)
        accepted = [r for r, (code, _) in replies.items() if code in (250, 251)]
        if not accepted:
            self._release(key, client, clean=False)
            return each(replies)
        try:
            done = await client.data(job.data)
        except aiosmtplib.SMTPResponseException as err:
            self._release(key, client, clean=False)
            answer = (err.code, err.message)
        else:
            self._release(key, client, clean=True)
            answer = (done.code, done.message)
        return each({r: answer if r in accepted else replies[r] for r in replies})

    def _release(self, key: str, client: aiosmtplib.SMTP, *, clean: bool) -> None:
        if client.is_connected:
            self._idle.setdefault(key, []).append(
                (client, asyncio.get_running_loop().time(), clean))
        else:
            self._close(client)

    def _opened(self, client: aiosmtplib.SMTP, label: str) -> None:
        self._labels[client] = label
        self._open[label] += 1
        if self._gauge is not None:
            self._gauge.labels(label).set(self._open[label])

    def _close(self, client: aiosmtplib.SMTP) -> None:
        client.close()
        label = self._labels.pop(client, None)
        if label is None:
            return
        self._open[label] -= 1
        if self._open[label] <= 0:
            del self._open[label]
            if self._gauge is not None:
                with contextlib.suppress(KeyError):
                    self._gauge.remove(label)
        elif self._gauge is not None:
            self._gauge.labels(label).set(self._open[label])

    def _close_oldest_idle(self) -> None:
        oldest: tuple[float, str] | None = None
        for key, clients in self._idle.items():
            since = clients[0][1]     # appended in time order: the first is the oldest
            if oldest is None or since < oldest[0]:
                oldest = (since, key)
        if oldest is not None:
            clients = self._idle[oldest[1]]
            client, _, _ = clients.pop(0)
            if not clients:
                del self._idle[oldest[1]]
            self._close(client)

    def prune(self) -> None:
        """Close idle connections past `keepalive` or dropped by the server (the delivery
        loop calls this now and then, so idle connections do not linger)."""
        now = asyncio.get_running_loop().time()
        for key in list(self._idle):
            keep = []
            for client, since, clean in self._idle[key]:
                if client.is_connected and now - since < self.keepalive:
                    keep.append((client, since, clean))
                else:
                    self._close(client)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for clients in idle.values():
            for client, _, _ in clients:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await asyncio.wait_for(client.quit(), 2.0)
                self._close(client)
        log.debug("smtp transport closed", extra=fields())


def _tls_of(client: aiosmtplib.SMTP) -> str | None:
    transport = client.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()
