"""Status changes of issues, the lifecycle people drive from the pages, the operator API
and the CLI: resolve (optionally "in the next release"), ignore (for good, until a date,
or until N more events), reopen; one issue or many at once.

What happens afterwards belongs to the batch writer (daemon.events.storage.writer): an event
reopens a resolved issue as regressed (with "next release": only an event of a newer
release), and brings an ignored one back once its date or count is reached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.events.storage.queries import (
    _ISSUE_COLUMNS,
    _MAX_BIGINT,
    STATUSES,
    Db,
    QueryError,
    _issue,
    _one_of,
)

MAX_IGNORE_EVENTS = 10**9
MAX_BULK = 1000

_SET_STATUS = _ISSUE_COLUMNS.replace("SELECT", "WITH changed AS (" + """
    UPDATE issues SET
        status = $2::text,
        -- Resolving twice keeps the first time; reopening forgets it.
        resolved_at = CASE WHEN $2 = 'resolved' THEN coalesce(resolved_at, now())
                           WHEN $2 = 'unresolved' THEN NULL ELSE resolved_at END,
        -- A resolved issue is no regression any more; the next event makes it one again.
        regressed_at = CASE WHEN $2 = 'resolved' THEN NULL ELSE regressed_at END,
        resolved_in_release = CASE WHEN $2 = 'resolved' AND $3 THEN (
            SELECT r.version FROM releases r WHERE r.project_id = issues.project_id
             ORDER BY r.first_seen DESC, r.version DESC LIMIT 1) END,
        ignore_until = CASE WHEN $2 = 'ignored' THEN $4::timestamptz END,
        ignore_until_count = CASE WHEN $2 = 'ignored' AND $5::bigint IS NOT NULL
                                  THEN event_count + $5 END
     WHERE id = ANY($1::bigint[])
       -- "The next release" needs a release to come after.
       AND (NOT $3 OR EXISTS (SELECT 1 FROM releases r
                               WHERE r.project_id = issues.project_id))
    RETURNING *
)
SELECT""", 1) + """
  FROM changed i JOIN projects p ON p.id = i.project_id ORDER BY i.id
"""


def _check(status: str, ignore_until: datetime | None, ignore_events: int | None) -> None:
    _one_of("status", status, STATUSES)
    if status != "ignored" and (ignore_until is not None or ignore_events is not None):
        raise QueryError("until, events: only an ignored issue waits for a date or a count")
    if ignore_until is not None:
        if ignore_until.tzinfo is None:
            raise QueryError("until: needs a time zone (e.g. 2026-12-31T00:00:00Z)")
        if ignore_until <= datetime.now(UTC):
            raise QueryError("until: must lie in the future")
    if ignore_events is not None and not 1 <= ignore_events <= MAX_IGNORE_EVENTS:
        raise QueryError(f"events: must be between 1 and {MAX_IGNORE_EVENTS}")


async def set_statuses(pool: Db, issue_ids: list[int], status: str, *,
                       in_next_release: bool = False, ignore_until: datetime | None = None,
                       ignore_events: int | None = None) -> list[dict[str, Any]]:
    """Change the status of every issue in `issue_ids` that exists; the changed issues.

    `in_next_release` (with "resolved"): only an event of a release first seen after the
    project's latest one reopens the issue; issues of projects without releases are
    left as they are. `ignore_until` / `ignore_events` (with
    "ignored"): it comes back at that time, or after that many more events."""
    _check(status, ignore_until, ignore_events)
    if in_next_release and status != "resolved":
        raise QueryError("in: next_release goes with resolve only")
    if len(issue_ids) > MAX_BULK:
        raise QueryError(f"id: at most {MAX_BULK} issues at once")
    ids = [i for i in issue_ids if 1 <= i <= _MAX_BIGINT]
    if not ids:
        return []
    rows = await pool.fetch(_SET_STATUS, ids, status, in_next_release, ignore_until,
                            ignore_events)
    return [_issue(row) for row in rows]


async def set_status(pool: Db, issue_id: int, status: str, *, in_next_release: bool = False,
                     ignore_until: datetime | None = None,
                     ignore_events: int | None = None) -> dict[str, Any] | None:
    """One issue's status change (see set_statuses); None when there is no such issue."""
    changed = await set_statuses(pool, [issue_id], status, in_next_release=in_next_release,
                                 ignore_until=ignore_until, ignore_events=ignore_events)
    if changed:
        return changed[0]
    if in_next_release and 1 <= issue_id <= _MAX_BIGINT and await pool.fetchval(
            "SELECT 1 FROM issues WHERE id = $1", issue_id):
        raise QueryError("in: the project has seen no release yet, so there is no next "
                         "one; resolve the issue instead")
    return None
