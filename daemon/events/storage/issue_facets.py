"""Reading what the batch writer keeps per issue beyond its row: tag value counts, events
per hour and per day, and the values the list page offers as filters. SQL only, shared by
the web pages and the operator API; results are plain JSON types.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.events.storage.queries import Db, _iso

# Tags shown first on an issue page, in this order; custom tags follow by name. The
# `*.name` tags exist for searching (`browser.name:Chrome`) and repeat the full ones.
TAG_ORDER = ("environment", "release", "level", "server_name", "browser", "os", "runtime",
             "device", "handled", "mechanism", "url", "transaction", "logger")
HIDDEN_TAGS = frozenset({"browser.name", "os.name", "runtime.name"})
MAX_DAYS = 90

_TAGS = """
SELECT key, value, events, first_seen, last_seen, total, distinct_values
  FROM (SELECT key, value, events, first_seen, last_seen,
               sum(events) OVER (PARTITION BY key) AS total,
               count(*) OVER (PARTITION BY key) AS distinct_values,
               row_number() OVER (PARTITION BY key ORDER BY events DESC, value) AS rank
          FROM issue_tags WHERE issue_id = $1) t
 WHERE rank <= $2
 ORDER BY key, rank
"""


def _tag_rank(key: str) -> tuple[int, str]:
    return (TAG_ORDER.index(key) if key in TAG_ORDER else len(TAG_ORDER), key)


async def tag_summary(db: Db, issue_id: int, *, top: int = 5) -> list[dict[str, Any]]:
    """Per tag key: total events, distinct values and the `top` values with their counts
    and share, the usual keys first."""
    rows = await db.fetch(_TAGS, issue_id, top)
    keys: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["key"] in HIDDEN_TAGS:
            continue
        entry = keys.setdefault(r["key"], {"key": r["key"], "total": r["total"],
                                           "distinct": r["distinct_values"], "values": []})
        entry["values"].append({"value": r["value"], "count": r["events"],
                                "share": r["events"] / r["total"] if r["total"] else 0.0,
                                "first_seen": _iso(r["first_seen"]),
                                "last_seen": _iso(r["last_seen"])})
    return [keys[k] for k in sorted(keys, key=_tag_rank)]


async def tag_values(db: Db, issue_id: int, key: str) -> list[dict[str, Any]]:
    """Every value of one tag of the issue (first seen first): the releases it was seen
    in, say, with when each began."""
    rows = await db.fetch("SELECT value, events, first_seen, last_seen FROM issue_tags "
                          "WHERE issue_id = $1 AND key = $2 ORDER BY first_seen, value",
                          issue_id, key)
    return [{"value": r["value"], "count": r["events"], "first_seen": _iso(r["first_seen"]),
             "last_seen": _iso(r["last_seen"])} for r in rows]


def _hour(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def hourly(db: Db, issue_id: int, *, hours: int = 24,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """Events per hour over the last `hours` hours, oldest first, empty hours included."""
    last = _hour(now or datetime.now(UTC))
    first = last - timedelta(hours=hours - 1)
    rows = await db.fetch("SELECT hour, events FROM issue_hours WHERE issue_id = $1 "
                          "AND hour >= $2 AND hour <= $3", issue_id, first, last)
    counts = {r["hour"]: r["events"] for r in rows}
    return [{"start": _iso(first + timedelta(hours=n)),
             "count": counts.get(first + timedelta(hours=n), 0)} for n in range(hours)]


async def daily(db: Db, issue_id: int, *, days: int = 30,
                now: datetime | None = None) -> list[dict[str, Any]]:
    """Events per UTC day over the last `days` days (at most 90), oldest first."""
    days = max(1, min(days, MAX_DAYS))
    today = _hour(now or datetime.now(UTC)).replace(hour=0)
    first = today - timedelta(days=days - 1)
    rows = await db.fetch(
        "SELECT date_trunc('day', hour, 'UTC') AS day, sum(events)::bigint AS events "
        "FROM issue_hours WHERE issue_id = $1 AND hour >= $2 GROUP BY 1", issue_id, first)
    counts = {r["day"]: r["events"] for r in rows}
    return [{"start": _iso(first + timedelta(days=n)),
             "count": counts.get(first + timedelta(days=n), 0)} for n in range(days)]


async def sparklines(db: Db, issue_ids: list[int], *, hours: int = 24,
                     now: datetime | None = None) -> dict[int, list[int]]:
    """Events per hour over the last `hours` hours for each issue (oldest first)."""
    if not issue_ids:
        return {}
    last = _hour(now or datetime.now(UTC))
    first = last - timedelta(hours=hours - 1)
    rows = await db.fetch("SELECT issue_id, hour, events FROM issue_hours "
                          "WHERE issue_id = ANY($1::bigint[]) AND hour >= $2 AND hour <= $3",
                          issue_ids, first, last)
    lines = {issue_id: [0] * hours for issue_id in issue_ids}
    for r in rows:
        lines[r["issue_id"]][int((r["hour"] - first).total_seconds() // 3600)] = r["events"]
    return lines


async def filter_choices(db: Db, project_id: int | None) -> dict[str, list[str]]:
    """The environments and releases the list page offers (newest releases first)."""
    if project_id is None:
        releases = await db.fetch("SELECT DISTINCT ON (version) version, first_seen "
                                  "FROM releases ORDER BY version, first_seen DESC")
        releases = sorted(releases, key=lambda r: r["first_seen"], reverse=True)[:100]
        environments = await db.fetch(
            "SELECT DISTINCT value FROM issue_tags WHERE key = 'environment' "
            "ORDER BY value LIMIT 100")
    else:
        releases = await db.fetch("SELECT version FROM releases WHERE project_id = $1 "
                                  "ORDER BY first_seen DESC LIMIT 100", project_id)
        environments = await db.fetch(
            "SELECT DISTINCT t.value FROM issue_tags t JOIN issues i ON i.id = t.issue_id "
            "WHERE t.key = 'environment' AND i.project_id = $1 ORDER BY 1 LIMIT 100",
            project_id)
    return {"release": [r["version"] for r in releases],
            "environment": [r["value"] for r in environments]}


async def activity(db: Db, *, hours: int = 24, now: datetime | None = None
                   ) -> dict[str, list[dict[str, Any]]]:
    """All projects' events and new issues per hour over the last `hours` hours, oldest
    first, empty hours included: the overview page's error charts."""
    last = _hour(now or datetime.now(UTC))
    first = last - timedelta(hours=hours - 1)
    events = await db.fetch("SELECT hour, sum(events)::bigint AS n FROM issue_hours "
                            "WHERE hour >= $1 GROUP BY hour", first)
    issues = await db.fetch("SELECT date_trunc('hour', first_seen, 'UTC') AS hour, "
                            "count(*) AS n FROM issues WHERE first_seen >= $1 GROUP BY 1",
                            first)
    out = {}
    for name, rows in (("events", events), ("new_issues", issues)):
        counts = {r["hour"]: r["n"] for r in rows}
        out[name] = [{"start": _iso(first + timedelta(hours=n)),
                      "count": counts.get(first + timedelta(hours=n), 0)}
                     for n in range(hours)]
    return out
