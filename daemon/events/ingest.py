"""The acceptance point of the error tracker, shared by every source (Sentry endpoints,
the native endpoint, UDP): normalize, fingerprint, append to the events journal.

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
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from daemon.events.facets import facets
from daemon.events.fingerprint import GROUPING_VERSION, grouping_hash
from daemon.events.normalize import InvalidEvent, normalize_event
from daemon.events.projects import Project
from daemon.events.record import EventRecord, encode
from daemon.events.refusals import Refusals
from daemon.journal import Journal, JournalFull

YIELD_EVERY = 500
LEVEL_ORDER = {"debug": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}


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


@dataclass(frozen=True)
class Result:
    """What became of one event: its id when accepted, else the outcome and why."""

    outcome: str                  # accepted | filtered | invalid
    event_id: str | None = None
    error: str | None = None


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
        # Per project: (tokens, when). Tokens refill at rate_limit per minute up to one
        # minute's worth; a batch larger than what is left is admitted when the bucket
        # is not in debt and leaves it in debt, so a big batch costs its full size.
        self._buckets: dict[int, tuple[float, float]] = {}

    def _tokens(self, project: Project) -> tuple[float, float]:
        """(tokens in the project's bucket now, now)."""
        limit = float(project.rate_limit)
        now = time.monotonic()
        tokens, then = self._buckets.get(project.id, (limit, now))
        return min(limit, tokens + (now - then) * limit / 60.0), now

    def admit(self, project: Project, count: int, source: str) -> None:
        """Take `count` events from the project's rate limit, or refuse them all."""
        limit = project.rate_limit
        if limit <= 0 or count == 0:
            return
        tokens, now = self._tokens(project)
        if tokens < min(count, 1.0) or (count <= limit and tokens < count):
            self._buckets[project.id] = (tokens, now)
            self.metrics.outcome(source, "rate_limited").inc(count)
            wanted = min(float(count), float(limit))
            wait = max(1, math.ceil((wanted - tokens) * 60.0 / limit))
            raise Refused(f"project {project.name!r} is over its rate limit of "
                          f"{limit} events per minute", wait)
        self._buckets[project.id] = (tokens - count, now)

    def take(self, project: Project, count: int, source: str) -> int:
        """How many of `count` events the project's rate limit lets through now (the
        others are counted rate_limited). For sources that cannot be told to retry (UDP,
        GELF over TCP): what fits is stored, the excess is dropped, never the batch."""
        if project.rate_limit <= 0 or count == 0:
            return count
        tokens, now = self._tokens(project)
        allowed = min(count, max(0, math.floor(tokens)))
        self._buckets[project.id] = (tokens - allowed, now)
        if allowed < count:
            self.metrics.outcome(source, "rate_limited").inc(count - allowed)
        return allowed

    def prepare(self, project: Project, data: dict[str, Any], *, source: str,
                received: float, min_level: str | None = None,
                raw: bytes | None = None,
                client_ip: str | None = None) -> tuple[Result, bytes | None]:
        """Normalize and fingerprint one event; (result, journal record or None). `raw` is
        the JSON `data` was parsed from, kept as it is when nothing in it changed;
        `client_ip` is the sender's address (for a user `ip_address` of "{{auto}}")."""
        try:
            event = normalize_event(data, received=received)
        except InvalidEvent as err:
            self.metrics.outcome(source, "invalid").inc()
            return Result("invalid", error=str(err)), None
        if min_level is not None and LEVEL_ORDER[event.level] < LEVEL_ORDER[min_level]:
            self.metrics.outcome(source, "filtered").inc()
            return Result("filtered", event.event_id,
                          f"level {event.level} is below {min_level}"), None
        if raw is None or data.get("event_id") != event.event_id:
            raw = orjson.dumps({**data, "event_id": event.event_id})
        if len(raw) > self.max_event_size:
            self.metrics.outcome(source, "invalid").inc()
            return Result("invalid", event.event_id, f"event is larger than "
                          f"{self.max_event_size} bytes (ingest.max_event_size)"), None
        tags: tuple[tuple[str, str], ...] = ()
        user = None
        if self.with_facets:
            found = facets(event, client_ip)
            tags = found.tags
            if found.user is not None:
                u = found.user
                user = (u.key, u.id, u.email, u.username, u.ip_address)
        record = EventRecord(
            project_id=project.id, event_id=event.event_id,
            grouping_version=GROUPING_VERSION, fingerprint=grouping_hash(event),
            title=_text(event.title), culprit=_text(event.culprit or ""), level=event.level,
            timestamp=event.timestamp, received_at=received,
            environment=_opt_text(event.environment), release=_opt_text(event.release),
            payload=raw, tags=tags, user=user)
        return Result("accepted", event.event_id), encode(record)

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
            try:
                await self.journal.append_many(records)
            except JournalFull:
                self.metrics.outcome(source, "refused").inc(len(records))
                raise Refused("the events journal is full (the database is behind)",
                              self.journal_retry_after, journal_full=True) from None
            self.metrics.outcome(source, "accepted").inc(len(records))
        return results


def _text(value: str) -> str:
    """Postgres text cannot hold NUL: an accepted event must still be storable (contract 1),
    so NUL becomes U+FFFD in the columns; the payload keeps it (JSON escapes it)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)
