"""An accepted event as the events journal holds it: everything the batch writer needs to
group and store it without parsing the event again.

Normalizing and fingerprinting happen before the append (the HTTP answer can then say
what was wrong), so the writer only copies fields. The event's JSON travels as it came;
the writer zstd-compresses it for Postgres in a worker thread (zstandard releases the
GIL), which keeps that work off the event loop that answers SDKs.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import zstandard

from daemon.journal.framing import frame, split_framed

MAGIC = b"EV1"
# zstandard's (de)compressor objects must not be shared between threads (concurrent use
# crashes the process), and batches are compressed in worker threads: one per thread.
_local = threading.local()


class RecordError(ValueError):
    """A journal record that is not an event record (corrupt or from another version)."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    project_id: int
    event_id: str                 # 32 lowercase hex digits
    grouping_version: int
    fingerprint: str
    title: str
    culprit: str
    level: str
    timestamp: float              # when the client says it happened (epoch seconds)
    received_at: float            # when egen accepted it
    environment: str | None
    release: str | None
    payload: bytes                # the event's JSON
    # Facets (see daemon.events.pipeline.facets): tag values counted per issue, and the user as
    # (key, id, email, username, ip_address). Records written before facets existed
    # have none.
    tags: tuple[tuple[str, str], ...] = ()
    user: tuple[str, str | None, str | None, str | None, str | None] | None = None


def compress(data: bytes) -> bytes:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=3)
    return compressor.compress(data)


def decompress_payload(data: bytes, limit: int = 64 * 2**20) -> bytes:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(data, max_output_size=limit)


def encode(record: EventRecord) -> bytes:
    return frame(MAGIC, {
        "project_id": record.project_id, "event_id": record.event_id,
        "grouping_version": record.grouping_version, "fingerprint": record.fingerprint,
        "title": record.title, "culprit": record.culprit, "level": record.level,
        "timestamp": record.timestamp, "received_at": record.received_at,
        "environment": record.environment, "release": record.release,
        "tags": dict(record.tags), "user": record.user}, record.payload)


_FIELDS = {"project_id": int, "event_id": str, "grouping_version": int, "fingerprint": str,
           "title": str, "culprit": str, "level": str, "timestamp": float,
           "received_at": float}


def decode(data: bytes) -> EventRecord:
    header, payload = split_framed(data, MAGIC, "an event record", RecordError)
    for name, kind in _FIELDS.items():
        value = header.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = header[name] = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RecordError(f"header field {name} is missing or not {kind.__name__}")
    for name in ("environment", "release"):
        if header.get(name) is not None and not isinstance(header[name], str):
            raise RecordError(f"header field {name} is not a string")
    if not (math.isfinite(header["timestamp"]) and math.isfinite(header["received_at"])):
        raise RecordError("timestamp or received_at is not a finite number")
    header["tags"] = _tags(header.get("tags", ()))
    header["user"] = _user(header.get("user"))
    try:
        return EventRecord(**header, payload=payload)
    except TypeError as err:
        raise RecordError(f"header has unexpected fields: {err}") from None


def _tags(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):     # as encode() writes them: keys are str in JSON
        if not all(type(v) is str for v in value.values()):
            raise RecordError("header field tags holds a value that is not a string")
        return tuple(value.items())
    if not isinstance(value, list | tuple):
        raise RecordError("header field tags is not an object")
    tags = []
    for pair in value:
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)):
            raise RecordError("header field tags holds something else than [key, value]")
        tags.append((pair[0], pair[1]))
    return tuple(tags)


def _user(value: object) -> tuple[str, str | None, str | None, str | None, str | None] | None:
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 5 or not isinstance(value[0], str)
            or not all(part is None or isinstance(part, str) for part in value[1:])):
        raise RecordError("header field user is not [key, id, email, username, ip_address]")
    key, user_id, email, username, ip_address = value
    return key, user_id, email, username, ip_address
