"""The issue list as every reader asks for it (the web page, the operator API, `egen
issues list`): filters, the search language of daemon.events.storage.search, four orders, and
keyset pagination, so page 500 of a big list costs what page 1 does.

Tag, release, environment and user filters read the per-issue facet tables through their
indexes (`issue_id IN (SELECT ... WHERE key = ... AND value = ...)`); release and
environment also match the issue's own columns, so they work with `ingest.facets` off.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson

from daemon.events.storage import search as searching
from daemon.events.storage.queries import (
    _ISSUE,
    _MAX_BIGINT,
    LEVELS,
    MAX_LIMIT,
    STATUSES,
    Db,
    QueryError,
    _issue,
    _like_pattern,
    _one_of,
    project_id,
)

# Each order, and the columns a cursor holds to continue it (all descending, id last so
# that rows with equal keys keep one order).
SORTS = {"last_seen": ("i.last_seen", "i.id"),
         "first_seen": ("i.first_seen", "i.id"),
         "count": ("i.event_count", "i.last_seen", "i.id"),
         "users": ("i.user_count", "i.last_seen", "i.id")}
_CURSOR_KEYS = {"i.last_seen": "last_seen", "i.first_seen": "first_seen",
                "i.event_count": "count", "i.user_count": "users", "i.id": "id"}
NEW_FOR = "24 hours"          # an issue first seen this recently is "new"


class _Sql:
    def __init__(self) -> None:
        self.where: list[str] = []
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def encode_cursor(row: dict[str, Any], sort: str) -> str:
    """The cursor that continues the list after `row` (an issue as list_issues gives)."""
    values = [row[_CURSOR_KEYS[column]] for column in SORTS[sort]]
    return base64.urlsafe_b64encode(orjson.dumps([sort, *values])).decode().rstrip("=")


def _decode_cursor(text: str, sort: str) -> list[Any]:
    problem = QueryError("after: not a cursor of this list (start again from the first page)")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise problem from None
    columns = SORTS[sort]
    if not isinstance(data, list) or len(data) != len(columns) + 1 or data[0] != sort:
        raise problem
    values: list[Any] = []
    for column, value in zip(columns, data[1:], strict=True):
        if column in ("i.last_seen", "i.first_seen"):
            try:
                values.append(datetime.fromisoformat(value))
            except (TypeError, ValueError):
                raise problem from None
        elif isinstance(value, int) and not isinstance(value, bool) and \
                0 <= value <= _MAX_BIGINT:
            values.append(value)
        else:
            raise problem
    return values


def _is(sql: _Sql, value: str) -> str:
    if value in STATUSES:
        return f"i.status = {sql.param(value)}"
    if value == "regressed":
        return "(i.regressed_at IS NOT NULL AND i.status = 'unresolved')"
    return f"i.first_seen > now() - interval '{NEW_FOR}'"


def _column_or_tag(sql: _Sql, column: str, key: str, value: str) -> str:
    v = sql.param(value)
    extra = f" OR i.first_release = {v}" if column == "release" else ""
    # Correlated, so each candidate issue costs one primary-key probe of issue_tags; an
    # uncorrelated IN under OR would collect every issue with a common value first.
    return (f"(i.{column} = {v}{extra} OR EXISTS (SELECT 1 FROM issue_tags t "
            f"WHERE t.issue_id = i.id AND t.key = {sql.param(key)} AND t.value = {v}))")


def _filter(sql: _Sql, item: searching.Filter) -> str:
    if item.key == "is":
        return _is(sql, item.value)
    if item.key == "level":
        if item.value not in LEVELS:
            raise QueryError(f"q: level:{item.value}: must be one of {', '.join(LEVELS)}")
        return f"i.level = {sql.param(item.value)}"
    if item.key in ("release", "environment"):
        return _column_or_tag(sql, item.key, item.key, item.value)
    if item.key in searching.USER_FIELDS:
        column = searching.USER_FIELDS[item.key]
        if column == "email":
            return (f"i.id IN (SELECT issue_id FROM issue_users "
                    f"WHERE lower(email) = lower({sql.param(item.value)}))")
        return (f"i.id IN (SELECT issue_id FROM issue_users "
                f"WHERE {column} = {sql.param(item.value)})")
    return (f"i.id IN (SELECT issue_id FROM issue_tags WHERE key = {sql.param(item.key)} "
            f"AND value = {sql.param(item.value)})")


async def list_issues(pool: Db, *, project: str | int | None = None,
                      status: str | None = None, level: str | None = None,
                      environment: str | None = None, release: str | None = None,
                      text: str | None = None, query: str | None = None,
                      sort: str = "last_seen", limit: int = 100, offset: int = 0,
                      after: str | None = None) -> list[dict[str, Any]]:
    """Issues matching every filter given (None: no filter) in the order `sort` names,
    newest (or most frequent, or most users) first. `text` matches title and culprit
    literally; `query` is the search language. `after` is a cursor from encode_cursor
    (keyset pagination); `offset` remains for the operator API."""
    if status is not None:
        _one_of("status", status, STATUSES)
    if level is not None:
        _one_of("level", level, LEVELS)
    if sort not in SORTS:
        raise QueryError(f"sort: must be one of {', '.join(SORTS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit: must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= _MAX_BIGINT:
        raise QueryError("offset: must be 0 or more" if offset < 0 else "offset: too large")
    try:
        parsed = searching.parse(query or "")
    except searching.SearchError as err:
        raise QueryError(str(err)) from None
    sql = _Sql()
    where = sql.where
    if project is not None:
        where.append(f"i.project_id = {sql.param(await project_id(pool, project))}")
    if status is not None:
        where.append(f"i.status = {sql.param(status)}")
    if level is not None:
        where.append(f"i.level = {sql.param(level)}")
    if environment is not None:
        where.append(_column_or_tag(sql, "environment", "environment", environment))
    if release is not None:
        where.append(_column_or_tag(sql, "release", "release", release))
    for word in ([text] if text else []) + list(parsed.words):
        pattern = sql.param(_like_pattern(word))
        where.append(f"(i.title ILIKE {pattern} ESCAPE '\\' "
                     f"OR i.culprit ILIKE {pattern} ESCAPE '\\')")
    for item in parsed.filters:
        condition = _filter(sql, item)
        where.append(f"NOT coalesce({condition}, false)" if item.negated else condition)
    columns = SORTS[sort]
    if after is not None:
        values = _decode_cursor(after, sort)
        where.append(f"({', '.join(columns)}) < ({', '.join(sql.param(v) for v in values)})")
    statement = _ISSUE + (f" WHERE {' AND '.join(where)}" if where else "")
    statement += f" ORDER BY {', '.join(f'{c} DESC' for c in columns)}"
    statement += f" LIMIT {sql.param(limit)} OFFSET {sql.param(offset)}"
    return [_issue(row) for row in await pool.fetch(statement, *sql.params)]
