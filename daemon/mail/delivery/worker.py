"""The delivery component: claims due recipients from the queue, hands each message to
its route's transport, and records every recipient's outcome (delivered, deferred with
the next retry time, bounced, expired), then lets the bounce hook notify the sender.

Nothing is held only in memory: a crash between claim and record leaves a lease that
runs out, and the recipients are attempted again (at-least-once, contract 6).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.logs import fields, get_logger
from daemon.mail.delivery import store
from daemon.mail.delivery.maildir import MaildirTransport
from daemon.mail.delivery.mx import MxResolver
from daemon.mail.delivery.outcome import Outcome
from daemon.mail.delivery.retry import RetryPolicy, next_attempt
from daemon.mail.delivery.routing import Route, Router, RouteSettings
from daemon.mail.delivery.smtp import MxTransport, SmarthostTransport, SmtpTransport
from daemon.mail.delivery.transport import Job, Transport
from daemon.mail.settings import DeliverySettings
from daemon.waiting import wait_set

log = get_logger("delivery")
maillog = get_logger("maillog")

Final = tuple[store.ClaimedMessage, list[tuple[store.Claimed, Outcome, str]]]
BounceHook = Callable[[Sequence[Final]], Awaitable[None]]
# A recipient that did not get its mail this time: (message, recipient, outcome, status
# bounced | expired | deferred), for the relay's own failure reports.
Report = tuple[store.ClaimedMessage, store.Claimed, Outcome, str]
ReportHook = Callable[[Sequence[Report]], Awaitable[None]]
# One group's results, its finals (to notify senders of) and its reports.
Group = tuple[list[store.Result], list[Final], list[Report]]
T = TypeVar("T")
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _maildir(route: RouteSettings, smtp: SmtpTransport) -> Transport:
    assert route.path is not None       # RouteSettings.check: a maildir route needs path
    return MaildirTransport(route.path)


# A route's `transport` -> how its Transport is made (SMTP ones share the connections).
TRANSPORTS: dict[str, Callable[[RouteSettings, SmtpTransport], Transport]] = {
    "mx": MxTransport, "smarthost": SmarthostTransport, "maildir": _maildir}


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.results = Counter("egen_delivery_results_total",
                               "Recipient delivery attempts by result.", ["result"],
                               registry=registry)
        self.latency = Histogram("egen_delivery_latency_seconds",
                                 "From acceptance to successful delivery.",
                                 buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400),
                                 registry=registry)
        self.queue = Gauge("egen_delivery_queue_recipients",
                           "Recipients waiting in the queue (shared by all nodes) by status: "
                           "queued, deferred, delivering; refreshed every few seconds by "
                           "each delivering node.", ["status"], registry=registry)
        self.connections = Gauge("egen_delivery_connections",
                                 "Open outgoing SMTP connections by destination host (idle "
                                 "ones kept for reuse included; hosts with none are not "
                                 "listed).", ["destination"], registry=registry)
        self.in_flight = Gauge("egen_delivery_in_flight_recipients",
                               "Recipients this node has claimed and not yet recorded.",
                               registry=registry)


class DeliveryWorker:
    """A loop that claims due work (up to `delivery.batch` recipients in flight), delivers
    each (message, route) group of a claim concurrently, and records the claim's results
    in one statement once its groups are done. Under load, work queued meanwhile makes the
    next claim bigger, so claims and records stay few per message. A group still running
    after `linger` seconds (a slow or stalled destination) goes on by itself and records
    its results when it ends, together with any others ending then: it holds up its own
    recipients, not the next claim."""

    name = "delivery"
    # How often the queue gauges are refreshed (and idle connections pruned), seconds.
    gauge_interval = 5.0
    # How long a claim waits for its slowest groups before the loop moves on, seconds.
    linger = 1.0

    def __init__(self, settings: DeliverySettings, routes: Sequence[RouteSettings],
                 pool: Callable[[], asyncpg.Pool], owner: Callable[[], str],
                 registry: CollectorRegistry, *, hostname: str, drain_timeout: float,
                 on_final: BounceHook | None = None, on_report: ReportHook | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.drain_timeout = drain_timeout
        self._pool = pool
        self._owner = owner
        self.metrics = DeliveryMetrics(registry)
        self.on_final = on_final
        self.on_report = on_report
        self.rng = rng or random.Random()
        d = settings
        self.policy = RetryPolicy(first_retry=d.first_retry, max_backoff=d.max_backoff,
                                  lifetime=d.lifetime)
        self.router = Router(list(routes))
        self._routes: dict[str, Route] = {}
        self.transport = SmtpTransport(
            helo=hostname, port=d.port,
            resolver=MxResolver(nameservers=d.nameservers, timeout=d.dns_timeout),
            connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
            concurrency=d.concurrency, per_destination=d.per_destination,
            connections=self.metrics.connections)
        # One per route, by Route.index.
        self._transports: list[Transport] = [
            TRANSPORTS[r.transport](r, self.transport) for r in self.router.routes]
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage = False
        self._in_flight = 0                          # claimed, not yet recorded
        self._groups: set[asyncio.Task[Any]] = set()
        self._done: list[Group] = []
        self._flushing = False
        self._gauges_at = -math.inf
        # Set when a claim found nothing due and every claimed recipient is recorded.
        self.idle = asyncio.Event()

    def wake(self) -> None:
        """New mail was queued: look for work now instead of at the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        if not self.settings.enabled:
            log.info("delivery disabled on this node (delivery.enabled = false)")
            return
        self._task = asyncio.create_task(self._run(), name="delivery")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.drain_timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self.transport.close()

    async def _run(self) -> None:
        d = self.settings
        # Claim again only for a worthwhile batch, unless nothing is in flight.
        least = max(1, d.batch // 10)
        try:
            while not self._stopping:
                await self._refresh_gauges()
                room = d.batch - self._in_flight
                if room < least and self._in_flight:
                    self._wakeup.clear()
                    await self._sleep(d.poll_interval)   # woken when results are recorded
                    continue
                self._wakeup.clear()
                try:
                    claimed, messages = await store.claim(self._pool(), owner=self._owner(),
                                                          lease=d.lease, limit=room)
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
                    if not self._in_flight:
                        self.idle.set()
                    await self._sleep(d.poll_interval)
                    continue
                self.idle.clear()
                groups = self._dispatch(claimed, messages)
                done, slow = await asyncio.wait(groups, timeout=self.linger)
                self._done.extend(task.result() for task in done)
                for task in slow:
                    self._spawn(self._late(task))
                await self._flush()
        except asyncio.CancelledError:      # stop() ran out of time: abandon the attempts
            for task in list(self._groups):
                task.cancel()
            raise
        finally:
            # Draining: the groups still running end and record (cancelled, if stop()
            # gives up on them: gather passes the cancellation on).
            await asyncio.gather(*self._groups, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        await wait_set(self._wakeup, seconds)

    async def _refresh_gauges(self) -> None:
        """Queue sizes for the gauges (one query at most every gauge_interval), and idle
        connections closed when they are past their keepalive."""
        now = asyncio.get_running_loop().time()
        if now - self._gauges_at < self.gauge_interval:
            return
        self._gauges_at = now
        self.transport.prune()
        self.metrics.in_flight.set(self._in_flight)
        try:
            # Each half is answered from its partial index (see the 0002 migration).
            rows = await self._pool().fetch(
                "SELECT status, count(*) FROM mail_recipients "
                "WHERE status IN ('queued', 'deferred') GROUP BY status "
                "UNION ALL SELECT 'delivering', count(*) FROM mail_recipients "
                "WHERE status = 'delivering'")
        except _DB_ERRORS:
            return      # the claim reports the outage
        counts = {row[0]: row[1] for row in rows}
        for status in ("queued", "deferred", "delivering"):
            self.metrics.queue.labels(status).set(counts.get(status, 0))

    def route(self, domain: str) -> Route:
        """The route of a recipient domain (memoized: routes only change with a restart)."""
        found = self._routes.get(domain)
        if found is None:
            if len(self._routes) >= 10000:
                self._routes.clear()
            found = self._routes[domain] = self.router.route(domain)
        return found

    def _dispatch(self, claimed: list[store.Claimed],
                  messages: dict[str, store.ClaimedMessage]) -> list[asyncio.Task[Group]]:
        """One task per (message, route, MX domain) group."""
        groups: dict[tuple[str, str, str], list[store.Claimed]] = defaultdict(list)
        for item in claimed:
            route = self.route(item.domain)
            target = item.domain if self._transports[route.index].per_domain else ""
            groups[(item.message_id, route.key, target)].append(item)
        self._in_flight += len(claimed)
        self.metrics.in_flight.set(self._in_flight)
        return [self._spawn(self._deliver(messages[mid], items))
                for (mid, _, _), items in groups.items()]

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._groups.add(task)
        task.add_done_callback(self._groups.discard)
        return task

    async def _late(self, task: asyncio.Task[Group]) -> None:
        """A slow group: record its results when it ends."""
        self._done.append(await task)
        await self._flush()

    async def _deliver(self, message: store.ClaimedMessage,
                       items: list[store.Claimed]) -> Group:
        """Attempt one group; its results (to record) and final failures (to notify)."""
        try:
            return await self._deliver_group(message, items)
        except Exception:    # a bug: the lease runs out and the recipients are tried again
            log.exception("delivery failed", extra=fields(queue_id=message.id))
            self._in_flight -= len(items)
            return [], [], []

    async def _deliver_group(self, message: store.ClaimedMessage,
                             items: list[store.Claimed]) -> Group:
        outcomes = await self._attempt(message, items)
        now = datetime.now(UTC)
        by_idx = {o.idx: o for o in outcomes}
        rows: list[store.Result] = []
        finals: list[tuple[store.Claimed, Outcome, str]] = []
        reports: list[Report] = []
        for item in items:
            outcome = by_idx[item.idx]
            status, next_at = self._decide(item, message, outcome, now)
            self.metrics.results.labels(status).inc()
            if status == "delivered":
                self.metrics.latency.observe((now - message.received_at).total_seconds())
            if status in ("bounced", "expired") or (
                    status == "delivered" and item.notify and "SUCCESS" in item.notify):
                finals.append((item, outcome, status))
            elif status == "deferred" and self._warning_due(message, now):
                finals.append((item, outcome, "delayed"))
            if status != "delivered":
                reports.append((message, item, outcome, status))
            rows.append(store.Result(item.message_id, item.idx, status, next_at,
                                     outcome.code, outcome.response,
                                     _attempt_detail(outcome)))
            maillog.info(status, extra=fields(
                queue_id=item.message_id, to=item.recipient, relay=outcome.remote or "none",
                tls=outcome.tls or "none", attempts=item.attempts + 1,
                reply=f"{outcome.code} {outcome.response}"))
        return rows, [(message, finals)] if finals else [], reports

    async def _flush(self) -> None:
        """Record the finished groups' results in one statement. One caller at a time
        records; it goes on with whatever other groups finished meanwhile until none is
        left, while those callers just leave their results to it (a group commit)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._done:
                done, self._done = self._done, []
                rows = [row for group_rows, _, _ in done for row in group_rows]
                reports = [report for _, _, group_reports in done for report in group_reports]
                finals: dict[str, Final] = {}      # one notification per message
                for _, group_finals, _ in done:
                    for message, entries in group_finals:
                        finals.setdefault(message.id, (message, []))[1].extend(entries)
                try:
                    await self._record(rows)
                finally:
                    self._in_flight -= len(rows)
                    self.metrics.in_flight.set(self._in_flight)
                    self._wakeup.set()      # room for the next claim
                await self._claim_warnings(finals)
                if finals and self.on_final is not None:
                    try:
                        await self.on_final(list(finals.values()))
                    except Exception:
                        log.exception("could not queue delivery status notifications")
                if reports and self.on_report is not None:
                    try:
                        await self.on_report(reports)
                    except Exception:
                        log.exception("could not report delivery failures")
        finally:
            self._flushing = False

    def _warning_due(self, message: store.ClaimedMessage, now: datetime) -> bool:
        after = self.settings.delay_warning
        return (after > 0 and not message.warned
                and (now - message.received_at).total_seconds() >= after)

    async def _claim_warnings(self, finals: dict[str, Final]) -> None:
        """Keep the delay warnings this node may send: one per message, ever, across nodes.
        A warning not claimed now (another node sent it, or the database is away) is
        dropped from the notices; a database blip only postpones it to the next deferral."""
        warnings = {mid: [claimed.idx for claimed, _, status in entries if status == "delayed"]
                    for mid, (_, entries) in finals.items()}
        warnings = {mid: idxs for mid, idxs in warnings.items() if idxs}
        if not warnings:
            return
        try:
            ours = await store.mark_warned(self._pool(), warnings)
        except _DB_ERRORS as err:
            log.warning("cannot record delay warnings; they wait for the next attempt",
                        extra=fields(error=f"{type(err).__name__}: {err}"))
            ours = set()
        for mid in warnings:
            if mid in ours:
                continue
            message, entries = finals[mid]
            kept = [entry for entry in entries if entry[2] != "delayed"]
            if kept:
                finals[mid] = (message, kept)
            else:
                del finals[mid]

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
        transport = self._transports[self.route(items[0].domain).index]
        job = Job(queue_id=message.id, sender=message.sender,
                  recipients=[(i.idx, i.recipient) for i in items], data=message.data,
                  smtputf8=message.smtputf8, body_8bit=message.body_8bit,
                  domain=items[0].domain)
        try:
            return await transport.deliver(job)
        except Exception as err:   # a bug must not lose mail: defer and say why
            log.exception("delivery attempt failed", extra=fields(queue_id=message.id))
            return [Outcome(i.idx, "deferred", 451, f"4.3.0 local error: "
                            f"{type(err).__name__}: {err}") for i in items]


def _attempt_detail(outcome: Outcome) -> dict[str, Any]:
    detail: dict[str, Any] = {"remote": outcome.remote, "tls": outcome.tls}
    if outcome.tls is not None:
        detail["tls_verified"] = outcome.tls_verified
    return detail
