"""The alerts component: after each committed batch of events it looks for spiking and
critical issues; in its own loop it turns triggers into notifications, folds each
channel's notifications into one message (a digest when several wait), and delivers the
messages with retries.

Three steps, each a short transaction over the alert tables, so any node can run any step
and a restart resumes where the last one stopped. Storm control happens in the middle
step: per issue and channel (`per_issue_interval`), and per channel (`digest_window`
after each message, `max_per_hour`): alerts that have to wait are not dropped, they go
out together in the channel's next message.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter

from daemon.alerts import compose, rules, store
from daemon.alerts.delivery import Result, post, queue_mail
from daemon.alerts.render import Alert
from daemon.alerts.settings import AlertSettings, ChannelSettings
from daemon.events.projects import ProjectRegistry
from daemon.events.storage.writer import IssueChange
from daemon.logs import fields, get_logger
from daemon.mail.queue.submit import Submitter
from daemon.waiting import wait_set

log = get_logger("alerts")

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# Alerts folded into one message at most; more wait for the channel's next one.
DIGEST_LIMIT = 100
LEASE = 120.0
PRUNE_EVERY = 3600.0


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter(
            "egen_alert_notifications_total", "Alerts for a channel, by whether they were "
            "kept or suppressed by the per-issue limit.", ["state"], registry=registry)
        self.attempts = Counter(
            "egen_alert_send_attempts_total", "Attempts to deliver alert messages, by "
            "channel type and result (sent, retry, failed).", ["type", "result"],
            registry=registry)


class AlertService:
    name = "alerts"

    def __init__(self, settings: AlertSettings, *, hostname: str, base_url: str,
                 pool: Callable[[], asyncpg.Pool],
                 owner: Callable[[], str], projects: ProjectRegistry,
                 mail: Callable[[], Submitter | None], registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.hostname = hostname
        self.base_url = base_url
        self._pool = pool
        self._owner = owner
        self.projects = projects
        self._mail = mail
        self.clock = clock
        self.metrics = AlertMetrics(registry)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pruned_at = 0.0
        # Delivery attempts this process finished, for whoever waits on them (tests).
        self.attempts_done = 0
        self._attempted = asyncio.Event()

    @property
    def config(self) -> AlertSettings:
        return self.settings

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def reload(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()

    def _project_name(self, project_id: int) -> str | None:
        project = self.projects.get(project_id)
        return project.name if project is not None else None

    async def on_stored(self, changes: list[IssueChange]) -> None:
        """Called once a batch is committed: spikes and critical issues become triggers
        (new and regressed ones were written with the batch)."""
        now = self.clock()
        config = self.config
        rows = rules.critical_triggers(config.rules, changes, self._project_name, now)
        for check in rules.spike_checks(config.rules, changes, self._project_name):
            counts = await store.recent_events(self._pool(), [c.id for c in check.issues],
                                               window=check.rule.spike_window, now=now)
            rows.extend(rules.spike_triggers(check, counts, now))
        await store.add_triggers(self._pool(), rows, now)
        if rows or any(c.created or c.regressed for c in changes):
            self.wake()

    async def _run(self) -> None:
        while True:
            await wait_set(self._wakeup, self.config.poll_interval)
            self._wakeup.clear()
            try:
                await self.run_once()
            except _DB_ERRORS as err:   # Postgres may blip: the next round catches up
                log.warning("alert round failed", extra=fields(
                    error=f"{type(err).__name__}: {err}"))
            except Exception:
                log.exception("alert round failed")

    async def run_once(self) -> None:
        """One round of every step (what the loop does on each wake-up or poll)."""
        await self.evaluate()
        await self.dispatch()
        await self.deliver()
        now = self.clock()
        if now - self._pruned_at >= PRUNE_EVERY:
            await store.prune(self._pool(), now=now, keep=self.config.keep)
            self._pruned_at = now

    async def evaluate(self) -> None:
        config = self.config
        while True:
            made = await store.evaluate(
                self._pool(), now=self.clock(), per_issue_interval=config.per_issue_interval,
                channels_for=lambda t: [c for c in rules.channels_for(config.rules, t)
                                        if config.channel(c) is not None])
            if not made:
                return
            self.metrics.notifications.labels("pending").inc(made)

    async def dispatch(self) -> None:
        """Give each channel with waiting alerts its next message, when its limits allow."""
        for name in await store.channels_with_pending(self._pool()):
            channel = self.config.channel(name)
            if channel is not None:
                await self._dispatch(channel)

    async def _dispatch(self, channel: ChannelSettings) -> None:
        now = self.clock()
        async with self._pool().acquire() as conn, conn.transaction():
            if not await store.lock_channel(conn, channel.name):
                return
            free = await store.channel_free_at(
                conn, channel.name, now=now, digest_window=self.config.digest_window,
                max_per_hour=channel.max_per_hour)
            if free > now:
                return
            waiting = await store.pending(conn, channel.name, DIGEST_LIMIT)
            if not waiting:
                return
            issues = await compose.summaries(conn, self.base_url, [p.issue_id for p in waiting])
            alerts = [Alert(p.kind, issues[p.issue_id], p.detail)  # type: ignore[arg-type]
                      for p in waiting if p.issue_id in issues]
            if not alerts:
                return
            body = compose.body(channel, alerts, now=now, hostname=self.hostname,
                                sender=compose.sender(self.settings, self.hostname),
                                delivery_id=uuid.uuid4().hex)
            send_id = await store.add_send(conn, channel.name, body, now=now,
                                           notifications=[p.id for p in waiting],
                                           alerts=len(alerts))
        log.info("alert message ready", extra=fields(channel=channel.name, send=send_id,
                                                     alerts=len(alerts)))

    async def deliver(self) -> None:
        while True:
            sends = await store.claim_sends(self._pool(), owner=self._owner(),
                                            now=self.clock(), lease=LEASE)
            if not sends:
                return
            await asyncio.gather(*(self._deliver(send) for send in sends))

    async def _deliver(self, send: store.Send) -> None:
        config = self.config
        channel = config.channel(send.channel)
        started = time.monotonic()
        if channel is None:
            result = Result(False, f"channel {send.channel!r} is no longer configured",
                            retry=False)
        elif channel.type == "email":
            result = await queue_mail(
                self._mail(), sender=compose.sender(self.settings, self.hostname),
                recipients=list(channel.to), body=send.body,
                seed=f"alert-send:{send.id}:{send.created_at.isoformat()}")
        else:
            assert self._session is not None and channel.url is not None
            result = await post(
                self._session, channel.url.reveal(), send.body,
                secret=channel.secret.reveal() if channel.secret else None,
                delivery_id=f"{send.id}-{int(send.created_at.timestamp())}",
                timestamp=int(self.clock()), limit=config.webhook_timeout)
        now = self.clock()
        retry_at = None
        if not result.ok and result.retry and send.attempts < config.max_attempts:
            retry_at = now + store.backoff(send.attempts, first=config.retry_first,
                                           most=config.retry_max)
        outcome = "sent" if result.ok else "retry" if retry_at is not None else "failed"
        self.metrics.attempts.labels(channel.type if channel else "unknown", outcome).inc()
        (log.info if result.ok else log.warning)("alert " + outcome, extra=fields(
            channel=send.channel, send=send.id, attempt=send.attempts, result=result.detail))
        await store.finish(self._pool(), send, owner=self._owner(), now=now, ok=result.ok,
                           detail=result.detail, duration=time.monotonic() - started,
                           retry_at=retry_at)
        self.attempts_done += 1
        self._attempted.set()

    async def wait_attempts(self, count: int) -> None:
        """Until this process has finished `count` delivery attempts in all."""
        while self.attempts_done < count:
            self._attempted.clear()
            await self._attempted.wait()
