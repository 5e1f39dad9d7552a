"""Ingest requests refused for their credentials, made visible to the operator.

A wrong DSN key or a project id that does not exist is the first thing that goes wrong
when an application is pointed at egen, and the SDK only ever sees a 403 it does not
print. Each refusal is counted (`egen_ingest_refused_total` by source and reason) and
logged, at most once a minute per reason, project and key, so a misconfigured
application polling every second cannot flood the log. The table of recent log lines
is bounded; when it is full it starts over, which at worst logs one line more.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from daemon.logs import fields, get_logger

log = get_logger("ingest.refused")

REASONS = {
    "missing_key": "no key sent",
    "unknown_project": "no such project",
    "wrong_key": "key not valid for the project",
    "unknown_key": "key not valid for any project",
    "origin": "origin not allowed for the project",
}
LOG_EVERY = 60.0
MAX_TRACKED = 1024


def shown_key(key: str | None) -> str:
    """Enough of a key to recognize it in the log (DSN keys are public, but short)."""
    if not key:
        return "-"
    return key if len(key) <= 8 else key[:8] + "…"


class Refusals:
    def __init__(self, registry: CollectorRegistry, *, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counter = Counter("egen_ingest_refused_total",
                               "Ingest requests refused for their credentials, by source "
                               "and reason (missing_key, unknown_project, wrong_key, "
                               "unknown_key, origin).", ["source", "reason"],
                               registry=registry)
        self.every = every
        self.clock = clock
        self._logged: dict[tuple[str, str, str], float] = {}

    def refused(self, source: str, reason: str, *, project: str | int | None,
                key: str | None, address: str | None) -> None:
        self.counter.labels(source, reason).inc()
        now = self.clock()
        seen = (reason, str(project), key or "")
        last = self._logged.get(seen)
        if last is not None and now - last < self.every:
            return
        if len(self._logged) >= MAX_TRACKED:
            self._logged.clear()
        self._logged[seen] = now
        log.warning(f"ingest refused: {REASONS[reason]}", extra=fields(
            source=source, reason=reason, project=project if project is not None else "-",
            key=shown_key(key), address=address or "-"))
