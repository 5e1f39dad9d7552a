"""The delivery component: claims due recipients from the queue, hands each message to
its route's transport, and records every recipient's outcome (delivered, deferred with
the next retry time, bounced, expired), then lets the bounce hook notify the sender.

Nothing is held only in memory: a crash between claim and record leaves a lease that
runs out, and the recipients are attempted again (at-least-once, contract 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram

from daemon.config import Settings
from daemon.logs import fields, get_logger
from daemon.mail import delivery_store as store
from daemon.mail import transport_maildir
from daemon.mail.mx import MxResolver
from daemon.mail.outcome import Outcome
from daemon.mail.retry import RetryPolicy, next_attempt
from daemon.mail.routing import Router
from daemon.mail.transport_smtp import Job, SmtpTransport

log = get_logger("delivery")
maillog = get_logger("maillog")

Final = tuple[store.ClaimedMessage, list[tuple[store.Claimed, Outcome, str]]]
BounceHook = Callable[[Sequence[Final]], Awaitable[None]]
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.results = Counter("egen_delivery_results_total",
                               "Recipient delivery attempts by result.", ["result"],
                               registry=registry)
        self.latency = Histogram("egen_delivery_latency_seconds",
                                 "From acceptance to successful delivery.",
                                 buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400),
                                 registry=registry)


class DeliveryWorker:
    name = "delivery"

    def __init__(self, settings: Settings, pool: Callable[[], asyncpg.Pool],
                 owner: Callable[[], str], registry: CollectorRegistry,
                 *, on_final: BounceHook | None = None, rng: random.Random | None = None
                 ) -> None:
        self.settings = settings
        self._pool = pool
        self._owner = owner
        self.metrics = DeliveryMetrics(registry)
        self.on_final = on_final
        self.rng = rng or random.Random()
        d = settings.delivery
        self.policy = RetryPolicy(first_retry=d.first_retry, max_backoff=d.max_backoff,
                                  lifetime=d.lifetime, delay_warning=d.delay_warning)
        self.router = Router(list(settings.routes))
        self.transport = SmtpTransport(
            helo=settings.hostname, port=d.port,
            resolver=MxResolver(nameservers=d.nameservers, timeout=d.dns_timeout),
            connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
            concurrency=d.concurrency, per_destination=d.per_destination)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage = False
        self.idle = asyncio.Event()   # set whenever a claim found nothing due (tests, ops)

    def wake(self) -> None:
        """New mail was queued: look for work now instead of at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        if not self.settings.delivery.enabled:
            log.info("delivery disabled on this node (delivery.enabled = false)")
            return
        self._task = asyncio.create_task(self._run(), name="delivery")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task),
                                       self.settings.drain_timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self.transport.close()

    async def _run(self) -> None:
        d = self.settings.delivery
        while not self._stopping:
            self._wakeup.clear()
            try:
                claimed, messages = await store.claim(self._pool(), owner=self._owner(),
                                                      lease=d.lease, limit=d.batch)
            except _DB_ERRORS as err:
                if not self._outage:
                    log.warning("cannot claim delivery work; retrying", extra=fields(
                        error=f"{type(err).__name__}: {err}"))
                    self._outage = True
                await self._sleep(d.poll_interval)
                continue
            if self._outage:
                log.info("delivery claims work again")
                self._outage = False
            if not claimed:
                self.idle.set()
                await self._sleep(d.poll_interval)
                continue
            self.idle.clear()
            await self._deliver(claimed, messages)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    async def _deliver(self, claimed: list[store.Claimed],
                       messages: dict[str, store.ClaimedMessage]) -> None:
        groups: dict[tuple[str, str, str], list[store.Claimed]] = defaultdict(list)
        for item in claimed:
            route = self.router.route(item.domain)
            target = item.domain if route.settings.transport == "mx" else ""
            groups[(item.message_id, route.key, target)].append(item)
        results = await asyncio.gather(*(
            self._attempt(messages[mid], items) for (mid, _, _), items in groups.items()))
        now = datetime.now(UTC)
        rows: list[store.Result] = []
        finals: dict[str, list[tuple[store.Claimed, Outcome, str]]] = defaultdict(list)
        for items, outcomes in zip(groups.values(), results, strict=True):
            by_idx = {o.idx: o for o in outcomes}
            for item in items:
                outcome = by_idx[item.idx]
                message = messages[item.message_id]
                status, next_at = self._decide(item, message, outcome, now)
                self.metrics.results.labels(status).inc()
                if status == "delivered":
                    self.metrics.latency.observe((now - message.received_at).total_seconds())
                if status in ("bounced", "expired"):
                    finals[item.message_id].append((item, outcome, status))
                rows.append(store.Result(item.message_id, item.idx, status, next_at,
                                         outcome.code, outcome.response,
                                         {"remote": outcome.remote, "tls": outcome.tls}))
                maillog.info(status, extra=fields(
                    queue_id=item.message_id, to=item.recipient, relay=outcome.remote or "none",
                    tls=outcome.tls or "none", attempts=item.attempts + 1,
                    reply=f"{outcome.code} {outcome.response}"))
        await self._record(rows)
        if finals and self.on_final is not None:
            try:
                await self.on_final([(messages[mid], entries) for mid, entries in finals.items()])
            except Exception:
                log.exception("could not queue delivery status notifications")

    def _decide(self, item: store.Claimed, message: store.ClaimedMessage, outcome: Outcome,
                now: datetime) -> tuple[str, datetime | None]:
        if outcome.kind != "deferred":
            return outcome.kind, None
        at = next_attempt(self.policy, item.attempts + 1,
                          received_at=message.received_at.timestamp(),
                          now=now.timestamp(), rng=self.rng)
        if at is None:
            return "expired", None
        return "deferred", datetime.fromtimestamp(at, UTC)

    async def _record(self, rows: list[store.Result]) -> None:
        """Results must land: retry through a database blip (leases outlast it), and log
        loudly if they cannot (the lease expires and the recipients are tried again)."""
        delay = 0.2
        for _ in range(8):
            try:
                await store.record(self._pool(), owner=self._owner(), results=rows)
                return
            except _DB_ERRORS as err:
                log.warning("cannot record delivery results; retrying", extra=fields(
                    error=f"{type(err).__name__}: {err}", results=len(rows)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.error("delivery results not recorded; these recipients will be tried again "
                  "after their lease", extra=fields(results=len(rows)))

    async def _attempt(self, message: store.ClaimedMessage,
                       items: list[store.Claimed]) -> list[Outcome]:
        route = self.router.route(items[0].domain).settings
        job = Job(queue_id=message.id, sender=message.sender,
                  recipients=[(i.idx, i.recipient) for i in items], data=message.data,
                  smtputf8=message.smtputf8, body_8bit=message.body_8bit)
        try:
            if route.transport == "maildir":
                assert route.path is not None
                return await asyncio.to_thread(transport_maildir.deliver, route.path,
                                               message.id, job.recipients, message.data)
            if route.transport == "smarthost":
                return await self.transport.deliver_smarthost(route, job)
            return await self.transport.deliver_mx(items[0].domain, route, job)
        except Exception as err:   # a bug must not lose mail: defer and say why
            log.exception("delivery attempt failed", extra=fields(queue_id=message.id))
            return [Outcome(i.idx, "deferred", 451, f"4.3.0 local error: "
                            f"{type(err).__name__}: {err}") for i in items]
