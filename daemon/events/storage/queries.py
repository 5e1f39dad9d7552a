"""What operators ask of the error tracker: which issues are open, what one issue's latest
events and stack trace look like, how busy a project is, and the status changes
(resolve, ignore, reopen) that drive the issue lifecycle.

SQL only, shared by the JSON API and the CLI so both answer the same thing. Results are
plain dicts of JSON types (times as ISO 8601 UTC strings); bad filter values raise
QueryError with a message naming the parameter, which both callers show as-is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import zstandard

from daemon.events.pipeline.record import decompress_payload

Db = asyncpg.Pool | asyncpg.Connection

STATUSES = ("unresolved", "resolved", "ignored")
LEVELS = ("debug", "info", "warning", "error", "fatal")
MAX_LIMIT = 1000
MAX_EVENTS = 1000
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1


class QueryError(ValueError):
    """A filter or argument value the query cannot use; the message names the parameter."""


class UnknownProject(QueryError):
    """The project named in a filter or path does not exist."""


_ISSUE_COLUMNS = """
SELECT i.id, p.name AS project, i.project_id, i.title, i.culprit, i.level, i.status,
       i.event_count, i.user_count, i.first_seen, i.last_seen, i.resolved_at,
       i.regressed_at, i.environment, i.release, i.first_release, i.resolved_in_release,
       i.ignore_until, i.ignore_until_count, i.last_event_id, i.short_id"""
_ISSUE = _ISSUE_COLUMNS + """
  FROM issues i JOIN projects p ON p.id = i.project_id
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def short_id(project: str, number: int | None) -> str | None:
    """What people call an issue: its project's name in capitals and its number there
    (SHOP-12), as Sentry does."""
    return None if number is None else f"{project.upper()}-{number}"


_SHORT_ID = re.compile(r"(?P<project>[A-Za-z0-9][A-Za-z0-9_-]{0,63})-(?P<number>\d{1,18})")


async def issue_id_for(pool: Db, text: str) -> int | None:
    """The issue an id or short id names ('123' or 'SHOP-12', any case); None if none.
    A project name may hold '-', so 'MY-SHOP-3' is project my-shop, issue 3."""
    text = text.strip()
    if text.isdigit() and len(text) <= 19:
        return int(text)
    found = _SHORT_ID.fullmatch(text)
    if found is None:
        return None
    return await pool.fetchval(
        "SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id "
        "WHERE p.name = lower($1) AND i.short_id = $2", found["project"],
        int(found["number"]))


def _issue(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "short_id": short_id(row["project"], row["short_id"]),
        "project": row["project"], "project_id": row["project_id"],
        "title": row["title"], "culprit": row["culprit"], "level": row["level"],
        "status": row["status"], "count": row["event_count"], "users": row["user_count"],
        "first_seen": _iso(row["first_seen"]), "last_seen": _iso(row["last_seen"]),
        "resolved_at": _iso(row["resolved_at"]), "regressed_at": _iso(row["regressed_at"]),
        "regressed": row["regressed_at"] is not None and row["status"] == "unresolved",
        "environment": row["environment"], "release": row["release"],
        "first_release": row["first_release"],
        "resolved_in_release": row["resolved_in_release"],
        "ignore_until": _iso(row["ignore_until"]),
        "ignore_until_count": row["ignore_until_count"],
        "last_event_id": row["last_event_id"].hex if row["last_event_id"] else None,
    }


def _like_pattern(text: str) -> str:
    """`text` as a substring pattern for LIKE ... ESCAPE '\\' (its % and _ match only
    themselves)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise QueryError(f"{name}: must be one of {', '.join(allowed)}")


async def project_id(db: Db, project: str | int) -> int:
    """The id of the project with this name (or, failing that, this id when it is a
    number); UnknownProject when there is none."""
    if isinstance(project, int):
        found = None
        if 1 <= project <= _MAX_INT:
            found = await db.fetchval("SELECT id FROM projects WHERE id = $1", project)
        if found is None:
            raise UnknownProject(f"project: no project with id {project}")
        return int(found)
    number = int(project) if re.fullmatch(r"[0-9]{1,10}", project) else None
    found = await db.fetchval(
        "SELECT id FROM projects WHERE name = $1 OR id = $2 ORDER BY name = $1 DESC LIMIT 1",
        project, number if number is not None and number <= _MAX_INT else None)
    if found is None:
        raise UnknownProject(f"project: no project named {project!r}")
    return int(found)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    lineno = frame.get("lineno")
    in_app = frame.get("in_app")
    return {
        "filename": _text(frame.get("filename")) or _text(frame.get("abs_path")),
        "function": _text(frame.get("function")),
        "lineno": lineno if isinstance(lineno, int) and not isinstance(lineno, bool) else None,
        "module": _text(frame.get("module")),
        "in_app": in_app if isinstance(in_app, bool) else None,
        "context_line": _text(frame.get("context_line")),
    }


def stacktrace(data: Any) -> list[dict[str, Any]]:
    """The exceptions of a Sentry event as {type, value, module, frames}, in Sentry's
    order (the last is the one raised at the top; frames run from the oldest call).
    Events are client-made JSON, so anything malformed is skipped, never trusted."""
    if not isinstance(data, dict):
        return []
    exception = data.get("exception")
    values = exception.get("values") if isinstance(exception, dict) else exception
    if not isinstance(values, list):
        return []
    found = []
    for value in values:
        if not isinstance(value, dict):
            continue
        trace = value.get("stacktrace")
        frames = trace.get("frames") if isinstance(trace, dict) else None
        found.append({
            "type": _text(value.get("type")), "value": _text(value.get("value")),
            "module": _text(value.get("module")),
            "frames": [_frame(f) for f in frames if isinstance(f, dict)]
            if isinstance(frames, list) else []})
    return found


def _event_data(payload: bytes) -> Any:
    """The stored event's JSON; None when the payload cannot be read back."""
    try:
        return orjson.loads(decompress_payload(payload))
    except (zstandard.ZstdError, orjson.JSONDecodeError):
        return None


async def get_issue(pool: Db, issue_id: int, *, events: int = 10) -> dict[str, Any] | None:
    """The issue with its latest `events` stored events (newest first, payload decoded)
    and the stack trace of the latest one; None when there is no such issue."""
    if not 0 <= events <= MAX_EVENTS:
        raise QueryError(f"events: must be between 0 and {MAX_EVENTS}")
    if not 1 <= issue_id <= _MAX_BIGINT:
        return None
    row = await pool.fetchrow(_ISSUE + " WHERE i.id = $1", issue_id)
    if row is None:
        return None
    rows = await pool.fetch(
        "SELECT event_id, received_at, timestamp, level, environment, release, payload "
        "FROM events WHERE issue_id = $1 AND project_id = $2 "
        "ORDER BY received_at DESC, timestamp DESC, event_id LIMIT $3",
        issue_id, row["project_id"], max(events, 1))
    stored = [{"event_id": r["event_id"].hex, "received_at": _iso(r["received_at"]),
               "timestamp": _iso(r["timestamp"]), "level": r["level"],
               "environment": r["environment"], "release": r["release"],
               "data": _event_data(r["payload"])} for r in rows]
    issue = _issue(row)
    issue["stacktrace"] = stacktrace(stored[0]["data"]) if stored else []
    issue["events"] = stored[:events]
    return issue


_HOURLY = """
WITH span AS (
    SELECT date_trunc('hour', now(), 'UTC') - interval '23 hours' AS first,
           date_trunc('hour', now(), 'UTC') AS last
), counts AS (
    SELECT date_trunc('hour', e.received_at, 'UTC') AS hour, count(*) AS n
      FROM event_ids e, span
     WHERE e.project_id = $1 AND e.received_at >= span.first
     GROUP BY 1
)
SELECT h.hour, coalesce(c.n, 0) AS count
  FROM span, generate_series(span.first, span.last, interval '1 hour') AS h(hour)
  LEFT JOIN counts c ON c.hour = h.hour
 ORDER BY h.hour
"""


async def project_stats(pool: Db, project: str | int) -> dict[str, Any]:
    """Issue and event totals of a project and its events per hour over the last 24
    hours (oldest first, hours without events included), counted once per distinct event
    even when sampling kept no copy of it."""
    pid = await project_id(pool, project)
    row = await pool.fetchrow(
        "SELECT p.name, count(i.id) AS issues, "
        "count(i.id) FILTER (WHERE i.status = 'unresolved') AS unresolved, "
        "coalesce(sum(i.event_count), 0)::bigint AS events "
        "FROM projects p LEFT JOIN issues i ON i.project_id = p.id "
        "WHERE p.id = $1 GROUP BY p.name", pid)
    hours = await pool.fetch(_HOURLY, pid)
    return {"project": row["name"], "project_id": pid, "issues": row["issues"],
            "unresolved": row["unresolved"], "events": row["events"],
            "events_per_hour": [{"hour": _iso(h["hour"]), "count": h["count"]}
                                for h in hours]}


async def project_names(pool: Db) -> list[dict[str, Any]]:
    """Each project's id and name (for choosers; list_projects also counts, which reads
    every issue)."""
    return [dict(r) for r in await pool.fetch("SELECT id, name FROM projects ORDER BY name")]


async def list_projects(pool: Db) -> list[dict[str, Any]]:
    """Every project in the database (the config's ones once a daemon synced them), with
    its keys oldest first and its issue and event totals."""
    rows = await pool.fetch("""
        SELECT p.id, p.name, p.from_config, p.allowed_origins, p.rate_limit, p.min_level,
               coalesce((SELECT array_agg(k.key ORDER BY k.created_at, k.key)
                           FROM project_keys k WHERE k.project_id = p.id), '{}') AS keys,
               count(i.id) AS issues,
               count(i.id) FILTER (WHERE i.status = 'unresolved') AS unresolved,
               coalesce(sum(i.event_count), 0)::bigint AS events
          FROM projects p LEFT JOIN issues i ON i.project_id = p.id
         GROUP BY p.id ORDER BY p.id""")
    return [{"id": r["id"], "name": r["name"], "keys": list(r["keys"]),
             "from_config": r["from_config"], "allowed_origins": list(r["allowed_origins"]),
             "rate_limit": r["rate_limit"], "min_level": r["min_level"],
             "issues": r["issues"], "unresolved": r["unresolved"], "events": r["events"]}
            for r in rows]
