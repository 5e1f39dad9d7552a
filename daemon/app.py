"""Wiring and lifecycle: builds the components from settings, starts them in order,
stops them in reverse, and turns signals into drain (SIGTERM/SIGINT) and reload (SIGHUP).

No protocol or storage logic lives here: every component has `start()` and `stop()`
(and optionally `reload(settings)`), and the app only sequences them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from daemon import __version__, sdnotify
from daemon.alerts.relay_reports import RelayReporter
from daemon.alerts.service import AlertService
from daemon.config import ConfigError, Settings, load
from daemon.db import nodes
from daemon.db.pool import database_for
from daemon.events.listen.gelf_http import GelfHttpEndpoint
from daemon.events.listen.native import NativeEndpoint
from daemon.events.listen.sentry import SentryEndpoints
from daemon.events.listen.udp import UdpIngest
from daemon.events.pipeline import facets
from daemon.events.pipeline.digest import Digester
from daemon.events.pipeline.ingest import Ingestor
from daemon.events.projects import ProjectRegistry
from daemon.events.storage.partitions import Partitions
from daemon.events.storage.retention import Retention
from daemon.events.storage.writer import event_store
from daemon.journal.consumer import JournalConsumer
from daemon.journal.log import Journal, JournalMetrics, Record
from daemon.logs import fields, get_logger, setup_logging
from daemon.mail.delivery.notify import Notifier
from daemon.mail.delivery.worker import DeliveryWorker
from daemon.mail.intake.server import SmtpServer
from daemon.mail.queue.flusher import mail_store
from daemon.mail.send_api.endpoint import SendApi
from daemon.mail.send_api.keys import ApiKeyRegistry
from daemon.metrics import new_registry
from daemon.reload_scope import changed_keys, effective, needing_restart
from daemon.web.api import OperatorApi
from daemon.web.server import HttpServer
from daemon.web.ui import WebUi

log = get_logger("app")

# Seconds each remaining component still gets once the drain timeout has passed.
LAST_CHANCE = 5.0


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Journals:
    """Every journal of this process, opened before the components that append to them."""

    settings: Settings
    metrics: JournalMetrics
    name: str = "journals"
    opened: dict[str, Journal] = field(default_factory=dict)

    def get(self, name: str) -> Journal:
        if name not in self.opened:
            self.opened[name] = Journal(
                self.settings.state_dir / "journal" / name, name=name,
                max_size=self.settings.journal.max_size,
                segment_size=self.settings.journal.segment_size, metrics=self.metrics)
        return self.opened[name]

    async def start(self) -> None:
        for journal in self.opened.values():
            await journal.open()

    async def stop(self) -> None:
        for journal in self.opened.values():
            await journal.close()

    async def readiness(self) -> tuple[bool, str]:
        full = [j.name for j in self.opened.values() if j.full]
        return (not full, f"full: {', '.join(full)}" if full else "ok")


class DatabaseComponent:
    """The pool plus this process's row in `nodes`, refreshed while it runs."""

    name = "database"

    def __init__(self, settings: Settings, heartbeat_every: float = 30.0) -> None:
        self.db = database_for(settings.database, settings.state_dir)
        self.node_id = nodes.new_node_id()
        self.heartbeat_every = heartbeat_every
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.db.start()
        await nodes.register_node(self.db.pool, self.node_id, __version__)
        self._heartbeat = asyncio.create_task(self._beat(), name="node-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                if not await nodes.heartbeat(self.db.pool, self.node_id):
                    await nodes.register_node(self.db.pool, self.node_id, __version__)
            except Exception as err:  # Postgres may blip; the next beat tries again
                log.warning("node heartbeat failed", extra=fields(error=str(err)))

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        try:
            await nodes.unregister_node(self.db.pool, self.node_id)
        except Exception as err:
            log.warning("could not unregister node", extra=fields(error=str(err)))
        await self.db.stop()

    async def readiness(self) -> tuple[bool, str]:
        ok = await self.db.ping()
        return ok, "ok" if ok else "database unreachable"


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._started: list[Component] = []
        self._warm_up: asyncio.Future[None] | None = None
        self.last_chance = LAST_CHANCE
        self._stop_requested = asyncio.Event()
        self._reload_hooks: list[Callable[[Settings], Awaitable[None]]] = []
        self._reloadable: list[str] = ["log"]     # reload() itself sets up logging again
        self._started_with = settings
        self.registry = new_registry()
        self.database = DatabaseComponent(settings)
        self.journals = Journals(settings, JournalMetrics(self.registry))
        http = settings.http
        self.http = HttpServer(http.listen, self.registry, shutdown_grace=http.shutdown_grace,
                               header_timeout=http.header_timeout,
                               body_timeout=http.body_timeout,
                               max_connections_per_client=http.max_connections_per_client)
        mail_journal = self.journals.get("mail")
        self.mail_flusher = JournalConsumer(mail_journal, self._store_mail, name="mail",
                                            registry=self.registry)
        self.smtp = SmtpServer(settings.smtp, settings.dkim, mail_journal, self.registry,
                               hostname=settings.hostname, state_dir=settings.state_dir,
                               drain_timeout=settings.drain_timeout)
        events_journal = self.journals.get("events")
        self.projects = ProjectRegistry(list(settings.projects), lambda: self.database.db.pool)
        self.ingestor = Ingestor(events_journal, self.registry,
                                 max_event_size=settings.ingest.max_event_size,
                                 with_facets=settings.ingest.facets)
        self.alerts = AlertService(settings.alerts, hostname=settings.hostname,
                                   base_url=settings.base_url,
                                   pool=lambda: self.database.db.pool,
                                   owner=lambda: self.database.node_id, projects=self.projects,
                                   mail=lambda: self.smtp.submitter, registry=self.registry)
        self.relay_reports = RelayReporter(lambda: self.settings.alerts, settings.hostname,
                                           lambda: self.database.db.pool, self.projects,
                                           self.ingestor)
        self.delivery = DeliveryWorker(
            settings.delivery, settings.routes, lambda: self.database.db.pool,
            lambda: self.database.node_id, self.registry, hostname=settings.hostname,
            drain_timeout=settings.drain_timeout,
            on_final=Notifier(lambda: self.smtp.submitter, hostname=settings.hostname,
                              postmaster=settings.delivery.postmaster,
                              lifetime=settings.delivery.lifetime),
            on_report=self.relay_reports)
        partitions = Partitions()
        self.digester = Digester(self.registry, max_event_size=settings.ingest.max_event_size,
                                 with_facets=settings.ingest.facets,
                                 workers=settings.ingest.digest_workers,
                                 project_name=self._project_name)
        self.events_flusher = JournalConsumer(
            events_journal, event_store(lambda: self.database.db.pool, partitions,
                                        on_stored=self.alerts.on_stored,
                                        with_facets=settings.ingest.facets,
                                        digest=self.digester.digest),
            name="events", registry=self.registry, max_records=2000)
        self.retention = Retention(lambda: self.database.db.pool, partitions, settings.ingest)
        SentryEndpoints(self.ingestor, self.projects, settings.ingest).mount(self.http.app)
        NativeEndpoint(self.ingestor, self.projects, settings.ingest).mount(self.http.app)
        GelfHttpEndpoint(self.ingestor, self.projects, settings.ingest).mount(self.http.app)
        OperatorApi(lambda: self.database.db.pool, settings.ingest.api_token,
                    settings.ingest.api_read_token).mount(self.http.app)
        self.web = WebUi(settings.web, lambda: self.database.db.pool,
                         ingest=lambda: settings.ingest,   # [ingest] needs a restart
                         listen=lambda: (self.http.addresses or settings.http.listen)[0],
                         projects_changed=self.projects.refresh)
        self.web.mount(self.http.app)
        self.api_keys = ApiKeyRegistry(lambda: self.database.db.pool)
        SendApi(self.api_keys, lambda: self.smtp.context, self.registry).mount(self.http.app)
        self.udp = UdpIngest(list(settings.ingest.udp), self.ingestor, self.projects,
                             self.registry, tcp=list(settings.ingest.tcp))
        self.http.add_readiness_check("database", self.database.readiness)
        self.http.add_readiness_check("journal", self.journals.readiness)
        self.on_reload(lambda new: self.smtp.reload(new.smtp, new.dkim), SmtpServer.RELOADS)
        self.on_reload(lambda new: self.projects.reload(new.projects), ("projects",))
        self.on_reload(lambda new: self.alerts.reload(new.alerts), ("alerts",))
        self.on_reload(lambda new: self.web.reload(new.web), tuple(
            f"web.{f.name}" for f in dataclasses.fields(settings.web) if f.name != "enabled"))
        # Order matters: storage first, listeners last, so nothing is accepted that
        # cannot be made durable; stop() walks it backwards.
        self.components: list[Component] = [
            self.database, self.journals, self.projects, self.api_keys, self.web,
            self.relay_reports, self.mail_flusher, self.digester, self.events_flusher,
            self.retention, self.smtp, self.alerts, self.delivery, self.udp, self.http]

    def _project_name(self, project_id: int) -> str | None:
        project = self.projects.get(project_id)
        return project.name if project is not None else None

    async def _store_mail(self, records: list[Record]) -> None:
        await mail_store(self.database.db.pool)(records)
        self.delivery.wake()

    def on_reload(self, hook: Callable[[Settings], Awaitable[None]],
                  keys: tuple[str, ...] = ()) -> None:
        """`keys`: the dotted config keys (or prefixes) the hook applies."""
        self._reload_hooks.append(hook)
        self._reloadable.extend(keys)

    async def start(self) -> None:
        for section, values in effective(self.settings).items():
            log.info("config", extra=fields(section=section, **values))
        if self.settings.ingest.facets:
            # ua-parser's rules take a moment to load: in a thread, before a browser
            # event needs them on the loop.
            self._warm_up = asyncio.get_running_loop().run_in_executor(None, facets.warm_up)
        for component in self.components:
            log.info("starting", extra=fields(component=component.name))
            await component.start()
            self._started.append(component)

    async def stop(self, budget: float | None = None) -> None:
        """Stop in reverse order within `budget` seconds overall. A component that overruns is
        abandoned, but every later one still gets a short, bounded chance to stop, so the
        embedded Postgres is never left running."""
        loop = asyncio.get_running_loop()
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
            self._warm_up = None
        deadline = None if budget is None else loop.time() + budget
        while self._started:
            component = self._started.pop()
            log.info("stopping", extra=fields(component=component.name))
            left = None if deadline is None else max(deadline - loop.time(), self.last_chance)
            try:
                await asyncio.wait_for(component.stop(), left)
            except TimeoutError:
                log.error("component did not stop in time",
                          extra=fields(component=component.name, waited=left))
            except Exception:
                log.exception("component failed to stop cleanly",
                              extra=fields(component=component.name))

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def reload(self) -> bool:
        """Re-read the config file; keep running on the old settings if it is invalid."""
        try:
            new = await asyncio.to_thread(load, self.settings.source)
        except ConfigError as err:
            for line in err.lines():
                log.error("reload rejected", extra=fields(problem=line))
            return False
        changed = changed_keys(self.settings, new)
        # Against what runs since start: a change still waiting for a restart is named
        # again on every reload, and one taken back is not.
        pending = needing_restart(changed_keys(self._started_with, new), self._reloadable)
        if new.log != self.settings.log:
            setup_logging(new.log.level, new.log.format)
        for hook in self._reload_hooks:
            await hook(new)
        for key in pending:
            log.warning("config change needs a restart; the old value stays in effect",
                        extra=fields(key=key))
        self.settings = new
        log.info("reloaded", extra=fields(config=str(new.source),
                                          changed=",".join(changed) or "-"))
        return True

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain within `drain_timeout`, return 0."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        watchdog: asyncio.Task[None] | None = None
        try:
            try:
                await self.start()
            except Exception as err:
                log.error("start failed", extra=fields(error=f"{type(err).__name__}: {err}"))
                await self.stop()
                return 1
            sdnotify.notify(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")
            log.info("ready", extra=fields(version=__version__, pid=os.getpid()))
            interval = sdnotify.watchdog_interval()
            if interval:
                watchdog = asyncio.create_task(self._watchdog(interval), name="sd-watchdog")
            await self._stop_requested.wait()
            sdnotify.notify("STOPPING=1\nSTATUS=draining")
            log.info("draining", extra=fields(timeout=self.settings.drain_timeout))
            await self.stop(self.settings.drain_timeout)
            log.info("stopped")
            return 0
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
