"""An event accepted but not yet digested, as the events journal holds it.

The Sentry endpoints answer once the event item is durable, before its JSON is parsed,
normalized and fingerprinted (as Sentry Relay and Bugsink do): that work is the batch
writer's (daemon.events.pipeline.digest), where it runs in batches and may use a second core.
The record keeps what the digest needs from the request: the project, when it came, the
sender's address (for a user `ip_address` of "{{auto}}") and the envelope's event id,
used when the event itself names none so that the id the SDK was told is the stored one.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.events.pipeline.record import RecordError
from daemon.journal.framing import frame, split_framed

MAGIC = b"EP1"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    project_id: int
    received_at: float
    client_ip: str | None
    event_id: str | None          # from the envelope header
    source: str
    payload: bytes                # the item's JSON, as sent


def is_pending(data: bytes) -> bool:
    return data.startswith(MAGIC)


def encode_pending(event: PendingEvent) -> bytes:
    return frame(MAGIC, {"project_id": event.project_id, "received_at": event.received_at,
                         "client_ip": event.client_ip, "event_id": event.event_id,
                         "source": event.source}, event.payload)


def decode_pending(data: bytes) -> PendingEvent:
    head, payload = split_framed(data, MAGIC, "a pending event record", RecordError)
    project_id, received = head.get("project_id"), head.get("received_at")
    if type(project_id) is not int or type(received) not in (int, float):
        raise RecordError("header lacks project_id or received_at")
    optional = {name: head.get(name) for name in ("client_ip", "event_id")}
    if any(v is not None and not isinstance(v, str) for v in optional.values()):
        raise RecordError("header field client_ip or event_id is not a string")
    source = head.get("source")
    if not isinstance(source, str):
        raise RecordError("header lacks source")
    return PendingEvent(project_id, float(received), optional["client_ip"],
                        optional["event_id"], source, payload)
