"""One event made ready for the journal: normalized, fingerprinted, its facets taken.

A pure function, so that it runs the same on the request path (native endpoint, UDP,
GELF) and in the digest of events the Sentry endpoints accepted before parsing them,
in the event loop or in a worker process (daemon.events.pipeline.digest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from daemon.events.pipeline.facets import facets
from daemon.events.pipeline.fingerprint import GROUPING_VERSION, grouping_hash
from daemon.events.pipeline.model import InvalidEvent
from daemon.events.pipeline.normalize import normalize_event
from daemon.events.pipeline.record import EventRecord, encode

LEVEL_ORDER = {"debug": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}


@dataclass(frozen=True)
class Result:
    """What became of one event: its id when accepted, else the outcome and why."""

    outcome: str                  # accepted | filtered | invalid
    event_id: str | None = None
    error: str | None = None


def prepare_event(project_id: int, data: dict[str, Any], *, received: float,
                  max_event_size: int, with_facets: bool, min_level: str | None = None,
                  raw: bytes | None = None, client_ip: str | None = None
                  ) -> tuple[Result, bytes | None]:
    """(result, journal record or None). `raw` is the JSON `data` was parsed from, kept
    as it is when nothing in it changed; `client_ip` is the sender's address (for a user
    `ip_address` of "{{auto}}")."""
    try:
        event = normalize_event(data, received=received)
    except InvalidEvent as err:
        return Result("invalid", error=str(err)), None
    if min_level is not None and LEVEL_ORDER[event.level] < LEVEL_ORDER[min_level]:
        return Result("filtered", event.event_id,
                      f"level {event.level} is below {min_level}"), None
    if raw is None or data.get("event_id") != event.event_id:
        raw = orjson.dumps({**data, "event_id": event.event_id})
    if len(raw) > max_event_size:
        return Result("invalid", event.event_id, f"event is larger than {max_event_size} "
                      "bytes (ingest.max_event_size)"), None
    tags: tuple[tuple[str, str], ...] = ()
    user = None
    if with_facets:
        found = facets(event, client_ip)
        tags = found.tags
        if found.user is not None:
            u = found.user
            user = (u.key, u.id, u.email, u.username, u.ip_address)
    record = EventRecord(
        project_id=project_id, event_id=event.event_id,
        grouping_version=GROUPING_VERSION, fingerprint=grouping_hash(event),
        title=_text(event.title), culprit=_text(event.culprit or ""), level=event.level,
        timestamp=event.timestamp, received_at=received,
        environment=_opt_text(event.environment), release=_opt_text(event.release),
        payload=raw, tags=tags, user=user)
    return Result("accepted", event.event_id), encode(record)


def _text(value: str) -> str:
    """Postgres text cannot hold NUL: an accepted event must still be storable (contract 1),
    so NUL becomes U+FFFD in the columns; the payload keeps it (JSON escapes it)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)
