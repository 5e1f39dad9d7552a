"""The relay reports its own trouble to the error tracker: every bounce and expiry, and
deferrals of mail older than `alerts.relay_deferred_after`, become events of a built-in
project. Their fingerprint is (what happened, destination domain, reply code), so "mail to
example.org has been refused with 550 since this morning" is one issue with a count and
first/last seen, and alert rules work on it like on any application's errors.

Deferrals of young mail are left out: greylisting and a peer's short outage defer nearly
every first attempt somewhere, and would bury the failures that matter.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from daemon.alerts.settings import AlertSettings
from daemon.events.pipeline.ingest import Ingestor, Refused
from daemon.events.projects import Project, ProjectRegistry, add_project
from daemon.logs import fields, get_logger
from daemon.mail.delivery.worker import Report

log = get_logger("alerts.relay")

_LEVEL = {"bounced": "error", "expired": "error", "deferred": "warning"}


def event_for(report: Report, *, hostname: str, now: float) -> dict[str, Any]:
    message, recipient, outcome, status = report
    domain = recipient.domain
    reply = f"{outcome.code} {outcome.response}".strip()
    return {
        "event_id": uuid.uuid4().hex,
        "timestamp": now,
        "level": _LEVEL[status],
        "logger": "egen.delivery",
        "platform": "other",
        "server_name": hostname,
        "message": {"formatted": f"Mail to {domain} {status}: {reply[:300]}"},
        "fingerprint": ["egen-relay", status, domain, str(outcome.code)],
        "tags": {"domain": domain, "status": status, "code": str(outcome.code),
                 "enhanced_status": outcome.status, "relay": outcome.remote or "none"},
        "extra": {"queue_id": message.id, "recipient": recipient.recipient,
                  "sender": message.sender or "<>", "attempts": recipient.attempts + 1,
                  "queued_for_seconds": round(now - message.received_at.timestamp()),
                  "reply": reply, "tls": outcome.tls},
    }


class RelayReporter:
    """The delivery worker's `on_report` hook, and the component that makes sure the
    built-in project exists."""

    name = "relay-reports"

    def __init__(self, settings: Callable[[], AlertSettings], hostname: str,
                 pool: Callable[[], asyncpg.Pool], projects: ProjectRegistry,
                 ingestor: Ingestor, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self.hostname = hostname
        self._pool = pool
        self.projects = projects
        self.ingestor = ingestor
        self.clock = clock

    async def start(self) -> None:
        await self.ensure_project()

    async def stop(self) -> None:
        pass

    async def ensure_project(self) -> None:
        name = self._settings().relay_project
        if not name or self._project(name) is not None:
            return
        try:
            await add_project(self._pool(), name)
            log.info("created the relay's own project", extra=fields(project=name))
        except ValueError:
            pass          # another node made it meanwhile
        await self.projects.refresh()

    def _project(self, name: str) -> Project | None:
        return next((p for p in self.projects.by_id.values() if p.name == name), None)

    async def __call__(self, reports: Sequence[Report]) -> None:
        settings = self._settings()
        if not settings.relay_project:
            return
        now = self.clock()
        wanted = [r for r in reports if r[3] != "deferred"
                  or now - r[0].received_at.timestamp() >= settings.relay_deferred_after]
        if not wanted:
            return
        project = self._project(settings.relay_project)
        if project is None:
            log.warning("the relay's project is missing; delivery failures not reported",
                        extra=fields(project=settings.relay_project, failures=len(wanted)))
            return
        events = [event_for(r, hostname=self.hostname, now=now) for r in wanted]
        try:
            await self.ingestor.accept(project, events, source="relay")
        except Refused as err:
            log.warning("delivery failures not reported", extra=fields(
                failures=len(events), error=err.reason))
