"""The acceptance point of the error tracker, shared by every source: normalize,
fingerprint, append to the events journal (the native endpoint, UDP, GELF), or append
the event items unread for the digest to do that work (the Sentry endpoints: see
daemon.events.pipeline.pending and daemon.events.pipeline.digest).

Like Sentry's Relay, every item that arrives ends in exactly one counted outcome:
accepted, filtered (below the source's minimum level), rate_limited, invalid(reason) or
refused (the journal is full). What is accepted is durable when `accept` returns
(contract 1); Postgres is the batch writer's business, so a database outage never turns
into an error for the SDK.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from daemon.events.listen.refusals import Refusals
from daemon.events.pipeline.pending import PendingEvent, encode_pending
from daemon.events.pipeline.prepare import LEVEL_ORDER, Result, prepare_event
from daemon.events.projects import Project
from daemon.journal.log import Journal, JournalFull
from daemon.ratelimit import TokenBucket

YIELD_EVERY = 500
__all__ = ["LEVEL_ORDER", "Ingestor", "Refused", "Result"]


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter("egen_events_outcomes_total",
                                "Events received, by source and outcome (accepted, "
                                "filtered, rate_limited, invalid, refused).",
                                ["source", "outcome"], registry=registry)
        self.items = Counter("egen_events_envelope_items_total",
                             "Sentry envelope items received, by type (only 'event' items "
                             "are stored).", ["type"], registry=registry)
        # labels() takes a lock and hashes its arguments: the children are kept at hand,
        # as every event counts at least once (labels are few and fixed).
        self._children: dict[tuple[str, ...], Any] = {}

    def outcome(self, source: str, outcome: str) -> Any:
        key = (source, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.outcomes.labels(source, outcome)
        return child

    def item(self, item_type: str) -> Any:
        key = ("item", item_type)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.items.labels(item_type)
        return child


class Refused(Exception):
    """Nothing was stored: the journal is full or the project is over its rate limit.
    `retry_after` is whole seconds, as the SDKs' Retry-After wants it."""

    def __init__(self, reason: str, retry_after: int, *, journal_full: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.journal_full = journal_full


class Ingestor:
    def __init__(self, journal: Journal, registry: CollectorRegistry, *,
                 max_event_size: int, journal_retry_after: int = 10,
                 with_facets: bool = True) -> None:
        self.journal = journal
        self.with_facets = with_facets
        self.metrics = IngestMetrics(registry)
        self.refusals = Refusals(registry)
        self.max_event_size = max_event_size
        self.journal_retry_after = journal_retry_after
        # Per project id: tokens refill at rate_limit per minute up to one minute's
        # worth; a batch larger than what is left is admitted when the bucket is not in
        # debt and leaves it in debt, so a big batch costs its full size. Projects are
        # configured, not made up by senders: the table's bound is only a backstop.
        self._buckets = TokenBucket(per=60.0, max_keys=1_000_000)

    def admit(self, project: Project, count: int, source: str) -> None:
        """Take `count` events from the project's rate limit, or refuse them all."""
        limit = project.rate_limit
        if limit <= 0 or count == 0:
            return
        wait = self._buckets.charge(project.id, count, rate=float(limit), burst=float(limit))
        if wait is not None:
            self.metrics.outcome(source, "rate_limited").inc(count)
            raise Refused(f"project {project.name!r} is over its rate limit of "
                          f"{limit} events per minute", max(1, math.ceil(wait)))

    def take(self, project: Project, count: int, source: str) -> int:
        """How many of `count` events the project's rate limit lets through now (the
        others are counted rate_limited). For sources that cannot be told to retry (UDP,
        GELF over TCP): what fits is stored, the excess is dropped, never the batch."""
        limit = project.rate_limit
        if limit <= 0 or count == 0:
            return count
        allowed = self._buckets.take_upto(project.id, count, rate=float(limit),
                                          burst=float(limit))
        if allowed < count:
            self.metrics.outcome(source, "rate_limited").inc(count - allowed)
        return allowed

    def prepare(self, project: Project, data: dict[str, Any], *, source: str,
                received: float, min_level: str | None = None,
                raw: bytes | None = None,
                client_ip: str | None = None) -> tuple[Result, bytes | None]:
        """Normalize and fingerprint one event (see daemon.events.pipeline.prepare), counting
        what is not accepted."""
        result, record = prepare_event(
            project.id, data, received=received, max_event_size=self.max_event_size,
            with_facets=self.with_facets, min_level=min_level, raw=raw, client_ip=client_ip)
        if record is None:
            self.metrics.outcome(source, result.outcome).inc()
        return result, record

    async def accept(self, project: Project, events: Sequence[dict[str, Any]], *,
                     source: str, min_level: str | None = None,
                     raws: Sequence[bytes] | None = None,
                     client_ip: str | None = None) -> list[Result]:
        """Make the events durable (all of them in one journal append); one Result each.
        `raws`, when given, are the JSON texts the events were parsed from. Raises Refused
        when nothing could be stored."""
        received = time.time()
        results: list[Result] = []
        records: list[bytes] = []
        for i, data in enumerate(events):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)      # a big batch must not freeze the loop
            result, record = self.prepare(project, data, source=source, received=received,
                                          min_level=min_level,
                                          raw=raws[i] if raws is not None else None,
                                          client_ip=client_ip)
            results.append(result)
            if record is not None:
                records.append(record)
        if records:
            await self._append(records, source)
        return results

    async def accept_pending(self, project: Project, payloads: Sequence[bytes], *,
                             source: str, event_id: str | None,
                             client_ip: str | None) -> None:
        """Make event items durable before their JSON is read (daemon.events.pipeline.pending);
        what the digest then finds wrong is counted there. Raises Refused when the
        journal is full."""
        received = time.time()
        # The envelope's event id goes with its first event only (an envelope has one);
        # two events given one id would be stored as one.
        records = [encode_pending(PendingEvent(project.id, received, client_ip,
                                               event_id if i == 0 else None, source, payload))
                   for i, payload in enumerate(payloads)]
        await self._append(records, source)

    async def _append(self, records: list[bytes], source: str) -> None:
        """One journal append, counted accepted, or Refused when the journal is full."""
        try:
            await self.journal.append_many(records)
        except JournalFull:
            self.metrics.outcome(source, "refused").inc(len(records))
            raise Refused("the events journal is full (the database is behind)",
                          self.journal_retry_after, journal_full=True) from None
        self.metrics.outcome(source, "accepted").inc(len(records))
