"""The operator queries of the error tracker against a real Postgres: every issue filter
and sort, the error messages for bad values, an issue's events and stack trace, the
status lifecycle (regression included), project totals and the zero-filled hourly
histogram. Data goes in through the batch writer, as in production."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.db import Database
from daemon.events.pipeline.record import EventRecord
from daemon.events.storage.issue_list import list_issues
from daemon.events.storage.issue_status import set_status
from daemon.events.storage.partitions import Partitions
from daemon.events.storage.queries import (
    QueryError,
    UnknownProject,
    get_issue,
    list_projects,
    project_stats,
    stacktrace,
)
from daemon.events.storage.writer import write_batch

HOUR = 3600.0
TRACE_EVENT: dict[str, Any] = {"exception": {"values": [
    {"type": "KeyError", "value": "'user'", "module": "builtins",
     "stacktrace": {"frames": [
         {"filename": "app/db.py", "function": "load", "lineno": 7, "module": "app.db",
          "in_app": True, "context_line": "    return rows['user']"}]}},
    {"type": "LookupFailed", "value": "no user", "module": "app.errors",
     "stacktrace": {"frames": [
         {"filename": "app/views.py", "function": "index", "lineno": 12,
          "module": "app.views", "in_app": True, "context_line": "    user = load()"},
         {"abs_path": "/srv/app/db.py", "function": "wrap", "lineno": "x", "in_app": "yes",
          "pre_context": ["ignored"]}]}}]}}


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_events_database(pg_url, tmp_path)
    yield database
    await database.stop()


async def open_events_database(pg_url: str, tmp_path: Path) -> Database:
    """A migrated database with projects app (1), web (2) and one named "2" (id 3)."""
    database = Database(url=pg_url, data_dir=tmp_path / "unused", min_size=1, max_size=4)
    await database.start()
    await database.pool.execute("INSERT INTO projects (id, name) VALUES (1, 'app'), "
                                "(2, 'web'), (3, '2')")
    await database.pool.execute("INSERT INTO project_keys (key, project_id) VALUES "
                                "('appkey1', 1), ('webkey1', 2)")
    return database


def event(fingerprint: str = "f1", *, project: int = 1, received: float | None = None,
          title: str = "ZeroDivisionError: division by zero",
          culprit: str = "app.views in index", level: str = "error",
          environment: str | None = "production", release: str | None = "1.0",
          data: dict[str, Any] | None = None) -> EventRecord:
    now = time.time() if received is None else received
    event_id = uuid.uuid4().hex
    body = {"message": title} if data is None else data
    return EventRecord(project_id=project, event_id=event_id, grouping_version=1,
                       fingerprint=fingerprint, title=title, culprit=culprit, level=level,
                       timestamp=now - 1, received_at=now, environment=environment,
                       release=release,
                       payload=(orjson.dumps({**body, "event_id": event_id})))


async def store(db: Database, *events: EventRecord) -> None:
    await write_batch(db.pool, Partitions(), list(events))


async def seed(db: Database) -> dict[str, int]:
    """Four issues with distinct times, counts, levels, environments and texts; their ids
    by fingerprint."""
    now = time.time()
    await store(db,
                event("old", received=now - 10 * HOUR, title="KeyError: 'user'",
                      culprit="app.db in load", level="warning", environment="staging"),
                event("busy", received=now - 5 * HOUR),
                event("busy", received=now - 4 * HOUR),
                event("busy", received=now - 3 * HOUR),
                event("web", project=2, received=now - 2 * HOUR, title="TypeError: x is null",
                      culprit="main.js in render", level="fatal", environment=None),
                event("new", received=now - 1 * HOUR, title="Timeout: 100% of 5s used",
                      culprit="jobs.sync_users in run", level="info"))
    rows = await db.pool.fetch("SELECT fingerprint, id FROM issues")
    return {r["fingerprint"]: r["id"] for r in rows}


async def ids(**filters: Any) -> list[int]:
    pool = filters.pop("pool")
    return [issue["id"] for issue in await list_issues(pool, **filters)]


# -- list_issues ----------------------------------------------------------------------------


async def test_issues_come_back_as_json_ready_dicts(db: Database) -> None:
    issue_ids = await seed(db)
    [issue] = [i for i in await list_issues(db.pool) if i["id"] == issue_ids["busy"]]
    assert issue["project"] == "app" and issue["project_id"] == 1
    assert (issue["title"], issue["culprit"], issue["level"], issue["status"]) == (
        "ZeroDivisionError: division by zero", "app.views in index", "error", "unresolved")
    assert (issue["count"], issue["environment"], issue["release"]) == (3, "production", "1.0")
    assert issue["regressed"] is False and issue["resolved_at"] is None
    first, last = (datetime.fromisoformat(issue[k]) for k in ("first_seen", "last_seen"))
    assert first.utcoffset() == timedelta(0)
    assert abs(last - first - timedelta(hours=2)) < timedelta(milliseconds=1)
    orjson.dumps(await list_issues(db.pool))   # every value is a JSON type


async def test_every_filter_narrows_the_list(db: Database) -> None:
    i = await seed(db)
    pool = db.pool
    assert await ids(pool=pool) == [i["new"], i["web"], i["busy"], i["old"]]
    assert await ids(pool=pool, project="web") == [i["web"]]
    assert await ids(pool=pool, project="1") == [i["new"], i["busy"], i["old"]]
    assert await ids(pool=pool, project="2") == []   # a name wins over an id
    assert await ids(pool=pool, level="warning") == [i["old"]]
    assert await ids(pool=pool, environment="staging") == [i["old"]]
    assert await ids(pool=pool, text="zerodivision") == [i["busy"]]       # any case
    assert await ids(pool=pool, text="SYNC_USERS") == [i["new"]]          # the culprit
    assert await ids(pool=pool, project="app", level="error", text="division") == [i["busy"]]
    await set_status(pool, i["old"], "ignored")
    await set_status(pool, i["web"], "resolved")
    assert await ids(pool=pool, status="ignored") == [i["old"]]
    assert await ids(pool=pool, status="resolved") == [i["web"]]
    assert await ids(pool=pool, status="unresolved") == [i["new"], i["busy"]]


async def test_text_search_takes_like_wildcards_literally(db: Database) -> None:
    await store(db, event("pct", title="100% broken"), event("num", title="1000 broken"),
                event("under", title="a_b failed"), event("x", title="axb failed"),
                event("slash", title="C:\\temp missing"), event("tab", title="temp missing"))
    titles = [[issue["title"] for issue in await list_issues(db.pool, text=text)]
              for text in ("100%", "a_b", ":\\t")]
    assert titles == [["100% broken"], ["a_b failed"], ["C:\\temp missing"]]


async def test_sorts_limit_and_offset(db: Database) -> None:
    i = await seed(db)
    pool = db.pool
    assert await ids(pool=pool, sort="first_seen") == [i["new"], i["web"], i["busy"], i["old"]]
    assert (await ids(pool=pool, sort="count"))[0] == i["busy"]
    await store(db, *(event("old") for _ in range(4)))          # old: 5 events, seen now
    assert await ids(pool=pool, sort="count") == [i["old"], i["busy"], i["new"], i["web"]]
    assert await ids(pool=pool, sort="first_seen") == [i["new"], i["web"], i["busy"], i["old"]]
    assert await ids(pool=pool) == [i["old"], i["new"], i["web"], i["busy"]]
    assert await ids(pool=pool, limit=2) == [i["old"], i["new"]]
    assert await ids(pool=pool, limit=2, offset=3) == [i["busy"]]
    assert await ids(pool=pool, offset=10) == []


@pytest.mark.parametrize(("filters", "message"), [
    ({"status": "open"}, "status: must be one of unresolved, resolved, ignored"),
    ({"level": "critical"}, "level: must be one of debug, info, warning, error, fatal"),
    ({"sort": "title"}, "sort: must be one of last_seen, first_seen, count, users"),
    ({"limit": 0}, "limit: must be between 1 and 1000"),
    ({"limit": 1001}, "limit: must be between 1 and 1000"),
    ({"offset": -1}, "offset: must be 0 or more"),
    ({"offset": 2**63}, "offset: too large"),
])
async def test_bad_filter_values_say_which_and_why(db: Database, filters: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(QueryError) as caught:
        await list_issues(db.pool, **filters)
    assert str(caught.value) == message


async def test_an_unknown_project_is_named(db: Database) -> None:
    with pytest.raises(UnknownProject) as caught:
        await list_issues(db.pool, project="nope")
    assert str(caught.value) == "project: no project named 'nope'"
    with pytest.raises(UnknownProject, match=r"^project: no project named '99'$"):
        await list_issues(db.pool, project="99")
    with pytest.raises(UnknownProject, match=r"^project: no project with id 99$"):
        await project_stats(db.pool, 99)
    with pytest.raises(UnknownProject, match=r"^project: no project named '99999999999'$"):
        await project_stats(db.pool, "99999999999")


# -- one issue ------------------------------------------------------------------------------


async def test_an_issue_has_its_latest_events_and_their_trace(db: Database) -> None:
    now = time.time()
    older = event("t", received=now - 60, data={"message": "first"}, release="0.9")
    latest = event("t", received=now, data=TRACE_EVENT, environment="staging")
    await store(db, older)
    await store(db, latest)
    [issue_id] = await ids(pool=db.pool)
    issue = await get_issue(db.pool, issue_id)
    assert issue is not None
    assert (issue["id"], issue["count"], issue["environment"]) == (issue_id, 2, "staging")
    assert [e["event_id"] for e in issue["events"]] == [latest.event_id, older.event_id]
    newest = issue["events"][0]
    assert (newest["level"], newest["environment"], newest["release"]) == (
        "error", "staging", "1.0")
    assert datetime.fromisoformat(newest["received_at"]).timestamp() == pytest.approx(now)
    assert datetime.fromisoformat(newest["timestamp"]).timestamp() == pytest.approx(now - 1)
    assert newest["data"] == {**TRACE_EVENT, "event_id": latest.event_id}
    assert issue["events"][1]["data"]["message"] == "first"
    cause, top = issue["stacktrace"]
    assert (cause["type"], cause["value"], cause["module"]) == ("KeyError", "'user'",
                                                                "builtins")
    assert cause["frames"] == [{"filename": "app/db.py", "function": "load", "lineno": 7,
                                "module": "app.db", "in_app": True,
                                "context_line": "    return rows['user']"}]
    assert top["type"] == "LookupFailed"
    assert [f["function"] for f in top["frames"]] == ["index", "wrap"]
    assert top["frames"][1] == {"filename": "/srv/app/db.py", "function": "wrap",
                                "lineno": None, "module": None, "in_app": None,
                                "context_line": None}

    one = await get_issue(db.pool, issue_id, events=1)
    none = await get_issue(db.pool, issue_id, events=0)
    assert one is not None and [e["event_id"] for e in one["events"]] == [latest.event_id]
    assert none is not None and none["events"] == [] and len(none["stacktrace"]) == 2


async def test_a_missing_issue_is_none_and_bad_event_counts_are_refused(db: Database) -> None:
    assert await get_issue(db.pool, 12345) is None
    assert await get_issue(db.pool, 0) is None
    assert await get_issue(db.pool, 2**63) is None
    for bad in (-1, 1001):
        with pytest.raises(QueryError, match=r"^events: must be between 0 and 1000$"):
            await get_issue(db.pool, 1, events=bad)


def test_a_malformed_exception_gives_what_it_can() -> None:
    assert stacktrace(None) == []
    assert stacktrace({"exception": "boom"}) == []
    assert stacktrace({"exception": {"values": {"type": "X"}}}) == []
    legacy = stacktrace({"exception": [{"type": "X", "value": 3, "stacktrace": None}, "y"]})
    assert legacy == [{"type": "X", "value": None, "module": None, "frames": []}]
    odd = stacktrace({"exception": {"values": [
        {"type": "Y", "stacktrace": {"frames": [1, {"lineno": True, "function": 5}]}}]}})
    assert odd[0]["frames"] == [{"filename": None, "function": None, "lineno": None,
                                 "module": None, "in_app": None, "context_line": None}]


async def test_an_unreadable_payload_shows_no_data(db: Database) -> None:
    await store(db, event("bad"))
    await db.pool.execute("UPDATE events SET payload = '\\x00ff'::bytea")
    [issue_id] = await ids(pool=db.pool)
    issue = await get_issue(db.pool, issue_id)
    assert issue is not None
    assert issue["events"][0]["data"] is None and issue["stacktrace"] == []


# -- status ---------------------------------------------------------------------------------


async def test_resolve_ignore_and_reopen(db: Database) -> None:
    await store(db, event("f"))
    [issue_id] = await ids(pool=db.pool)
    resolved = await set_status(db.pool, issue_id, "resolved")
    assert resolved is not None and resolved["status"] == "resolved"
    assert resolved["project"] == "app" and resolved["count"] == 1
    assert resolved["resolved_at"] is not None
    again = await set_status(db.pool, issue_id, "resolved")
    assert again is not None and again["resolved_at"] == resolved["resolved_at"]
    reopened = await set_status(db.pool, issue_id, "unresolved")
    assert reopened is not None
    assert (reopened["status"], reopened["resolved_at"]) == ("unresolved", None)
    ignored = await set_status(db.pool, issue_id, "ignored")
    assert ignored is not None and ignored["status"] == "ignored"
    assert await db.pool.fetchval("SELECT status FROM issues") == "ignored"
    assert await set_status(db.pool, 999, "resolved") is None
    assert await set_status(db.pool, -1, "resolved") is None
    with pytest.raises(QueryError, match=r"^status: must be one of unresolved, resolved, "
                                         r"ignored$"):
        await set_status(db.pool, issue_id, "closed")


async def test_a_resolved_issue_with_a_new_event_shows_as_regressed(db: Database) -> None:
    await store(db, event("f"))
    [issue_id] = await ids(pool=db.pool)
    await set_status(db.pool, issue_id, "resolved")
    await store(db, event("f"))
    [issue] = await list_issues(db.pool)
    assert (issue["status"], issue["regressed"], issue["count"]) == ("unresolved", True, 2)
    assert issue["regressed_at"] is not None and issue["resolved_at"] is None
    ignored = await set_status(db.pool, issue_id, "ignored")
    assert ignored is not None and ignored["regressed"] is False
    resolved = await set_status(db.pool, issue_id, "resolved")
    assert resolved is not None and resolved["regressed_at"] is None
    reopened = await set_status(db.pool, issue_id, "unresolved")
    assert reopened is not None and reopened["regressed"] is False


# -- projects -------------------------------------------------------------------------------


async def test_project_stats_count_events_per_hour_zero_filled(db: Database) -> None:
    now = time.time()
    seeded = [now, now, now - 2 * HOUR, now - 5 * HOUR]
    await store(db, *(event("a" if t == now else "b", received=t) for t in seeded),
                event("old", received=now - 30 * HOUR),
                event("other", project=2, received=now))
    await set_status(db.pool, await db.pool.fetchval(
        "SELECT id FROM issues WHERE fingerprint = 'old'"), "resolved")
    before = datetime.now(UTC)
    stats = await project_stats(db.pool, "app")
    after = datetime.now(UTC)
    assert (stats["project"], stats["project_id"]) == ("app", 1)
    assert (stats["issues"], stats["unresolved"], stats["events"]) == (3, 2, 5)
    hours = [datetime.fromisoformat(h["hour"]) for h in stats["events_per_hour"]]
    assert len(hours) == 24
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hours))
    assert hours[-1] <= after and before < hours[-1] + timedelta(hours=1)
    assert all(h.minute == h.second == 0 and h.utcoffset() == timedelta(0) for h in hours)

    def bucket(epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, UTC).replace(minute=0, second=0, microsecond=0)

    expected = Counter(bucket(t) for t in seeded)
    counts = [h["count"] for h in stats["events_per_hour"]]
    assert counts == [expected.get(h, 0) for h in hours]
    assert sum(counts) == 4 and counts.count(0) >= 20
    assert (await project_stats(db.pool, 2))["events_per_hour"][-1]["count"] == 1
    empty = await project_stats(db.pool, "2")
    assert (empty["project_id"], empty["issues"], empty["events"]) == (3, 0, 0)
    assert [h["count"] for h in empty["events_per_hour"]] == [0] * 24


async def test_projects_list_keys_and_totals(db: Database) -> None:
    await db.pool.execute("INSERT INTO project_keys (key, project_id) VALUES ('appkey2', 1)")
    await db.pool.execute("UPDATE projects SET rate_limit = 60, min_level = 'error', "
                          "allowed_origins = '{https://a.example}', from_config = true "
                          "WHERE id = 1")
    await seed(db)
    app, web, two = await list_projects(db.pool)
    assert app == {"id": 1, "name": "app", "keys": ["appkey1", "appkey2"],
                   "from_config": True, "allowed_origins": ["https://a.example"],
                   "rate_limit": 60, "min_level": "error", "issues": 3, "unresolved": 3,
                   "events": 5}
    assert (web["name"], web["keys"], web["issues"], web["events"]) == (
        "web", ["webkey1"], 1, 1)
    assert (two["keys"], two["issues"], two["events"], two["allowed_origins"]) == (
        [], 0, 0, ["*"])
