"""One stored event of an issue, and its neighbours in time (newest, newer, older,
oldest), for the event page and its raw JSON. SQL only.

Events are found through `event_ids`, which knows when an event arrived, so the lookup
reads one day partition of `events` instead of all of them.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from daemon.events.storage.queries import _MAX_BIGINT, Db, _event_data, _iso

EVENT_ID = re.compile(r"[0-9a-fA-F]{32}")

_ROW = ("SELECT event_id, issue_id, project_id, received_at, timestamp, level, "
        "environment, release, payload FROM events")


def _event(row: Any) -> dict[str, Any]:
    return {"event_id": row["event_id"].hex, "issue_id": row["issue_id"],
            "project_id": row["project_id"], "received_at": _iso(row["received_at"]),
            "timestamp": _iso(row["timestamp"]), "level": row["level"],
            "environment": row["environment"], "release": row["release"],
            "data": _event_data(row["payload"])}


async def get_event(db: Db, issue_id: int, event_id: str) -> dict[str, Any] | None:
    """The stored event `event_id` of issue `issue_id` (its JSON decoded), or None when
    there is none (never stored, or dropped by retention)."""
    if not EVENT_ID.fullmatch(event_id) or not 1 <= issue_id <= _MAX_BIGINT:
        return None
    wanted = uuid.UUID(hex=event_id)
    row = await db.fetchrow(
        _ROW + " WHERE issue_id = $1 AND event_id = $2 AND received_at = ("
        "SELECT x.received_at FROM event_ids x JOIN issues i ON i.project_id = x.project_id "
        "WHERE i.id = $1 AND x.event_id = $2)", issue_id, wanted)
    if row is None:    # the id was forgotten before its event: look for it the long way
        row = await db.fetchrow(_ROW + " WHERE issue_id = $1 AND event_id = $2",
                                issue_id, wanted)
    return None if row is None else _event(row)


_ORDER = {"newest": ("", "DESC"), "oldest": ("", "ASC"),
          "older": ("AND (received_at, event_id) < ($2, $3)", "DESC"),
          "newer": ("AND (received_at, event_id) > ($2, $3)", "ASC")}


async def neighbours(db: Db, event: dict[str, Any]) -> dict[str, str | None]:
    """The ids of the issue's newest, newer, older and oldest stored events relative to
    `event` (None where there is none, or where it is `event` itself)."""
    at = datetime.fromisoformat(event["received_at"])
    wanted = uuid.UUID(hex=event["event_id"])
    found: dict[str, str | None] = {}
    for name, (condition, direction) in _ORDER.items():
        args: list[Any] = [event["issue_id"]]
        if condition:
            args += [at, wanted]
        value = await db.fetchval(
            f"SELECT event_id FROM events WHERE issue_id = $1 {condition} "
            f"ORDER BY received_at {direction}, event_id {direction} LIMIT 1", *args)
        found[name] = value.hex if value is not None and value != wanted else None
    return found


async def latest_event(db: Db, issue_id: int) -> dict[str, Any] | None:
    if not 1 <= issue_id <= _MAX_BIGINT:
        return None
    row = await db.fetchrow(_ROW + " WHERE issue_id = $1 "
                            "ORDER BY received_at DESC, event_id DESC LIMIT 1", issue_id)
    return None if row is None else _event(row)
