"""The operator API over real HTTP and a real Postgres: bearer auth (off, missing, wrong,
right), every route, the JSON error answers (400 with the parameter named, 404) and 503
when the database is away, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from daemon.db import Database
from daemon.typedtoml import Secret
from daemon.web.api import OperatorApi
from tests.test_events_queries import TRACE_EVENT, event, open_events_database, seed, store

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_events_database(pg_url, tmp_path)
    yield database
    await database.stop()


@contextlib.asynccontextmanager
async def listening(pool: Callable[[], asyncpg.Pool], token: str | None = TOKEN,
                    read_token: str | None = None) -> AsyncIterator[int]:
    """The API on a free port of 127.0.0.1 (yielded)."""
    app = web.Application()
    OperatorApi(pool, Secret(token) if token is not None else None,
                Secret(read_token) if read_token is not None else None).mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve(pool: Callable[[], asyncpg.Pool], token: str | None = TOKEN,
                read_token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """The API, and a client session rooted at it."""
    async with (listening(pool, token, read_token) as port,
                aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client):
        yield client


@pytest.fixture
async def api(db: Database) -> AsyncIterator[aiohttp.ClientSession]:
    async with serve(lambda: db.pool) as client:
        yield client


async def call(client: aiohttp.ClientSession, method: str, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with client.request(method, path, headers=AUTH if headers is None else headers
                              ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


ROUTES = [("GET", "/api/v1/issues"), ("GET", "/api/v1/issues/1"),
          ("POST", "/api/v1/issues/1/resolve"), ("POST", "/api/v1/issues/1/ignore"),
          ("POST", "/api/v1/issues/1/reopen"), ("GET", "/api/v1/projects"),
          ("GET", "/api/v1/projects/app/stats")]


# -- auth -----------------------------------------------------------------------------------


async def test_without_a_token_the_api_is_off(db: Database) -> None:
    async with serve(lambda: db.pool, token=None) as client:
        for method, path in ROUTES:
            assert await call(client, method, path) == (
                403, {"detail": "the operator API is off: set ingest.api_token"})


async def test_a_missing_or_wrong_token_is_refused(api: aiohttp.ClientSession) -> None:
    missing = {"detail": "missing bearer token: send 'Authorization: Bearer "
                         "<ingest.api_token>'"}
    wrong = {"detail": "wrong bearer token"}
    for method, path in ROUTES:
        for headers, answer in [({}, missing), ({"Authorization": f"Basic {TOKEN}"}, missing),
                                ({"Authorization": "Bearer "}, missing),
                                ({"Authorization": "Bearer nope"}, wrong),
                                ({"Authorization": f"Bearer {TOKEN}x"}, wrong),
                                ({"Authorization": "Bearer s\u00e9cret"}, wrong)]:
            async with api.request(method, path, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert await response.json() == answer
    status, _ = await call(api, "GET", "/api/v1/issues",
                           headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


async def test_a_token_that_is_not_utf8_is_just_wrong(db: Database) -> None:
    async with listening(lambda: db.pool) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/v1/projects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer s\xffcret\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert answer.endswith(b'{"detail":"wrong bearer token"}')


# -- issues ---------------------------------------------------------------------------------


async def test_issue_list_with_filters(db: Database, api: aiohttp.ClientSession) -> None:
    i = await seed(db)

    async def listed(query: str) -> list[int]:
        status, body = await call(api, "GET", f"/api/v1/issues{query}")
        assert status == 200, body
        return [issue["id"] for issue in body["issues"]]

    assert await listed("") == [i["new"], i["web"], i["busy"], i["old"]]
    await call(api, "POST", f"/api/v1/issues/{i['old']}/ignore")
    assert await listed("?status=unresolved") == [i["new"], i["web"], i["busy"]]
    assert await listed("?status=ignored") == [i["old"]]
    assert await listed("?status=all&project=app&sort=first_seen") == [
        i["new"], i["busy"], i["old"]]
    assert await listed("?level=fatal") == [i["web"]]
    assert await listed("?environment=staging") == [i["old"]]
    assert await listed("?q=KEYERROR") == [i["old"]]
    assert await listed("?sort=count&limit=1") == [i["busy"]]
    assert await listed("?limit=2&offset=1") == [i["web"], i["busy"]]
    assert await listed("?project=1&status=") == [i["new"], i["busy"], i["old"]]
    _, body = await call(api, "GET", "/api/v1/issues?project=web")
    assert {k: body["issues"][0][k] for k in ("project", "title", "level", "count")} == {
        "project": "web", "title": "TypeError: x is null", "level": "fatal", "count": 1}


@pytest.mark.parametrize(("query", "detail"), [
    ("status=open", "status: must be one of unresolved, resolved, ignored"),
    ("level=x", "level: must be one of debug, info, warning, error, fatal"),
    ("sort=title", "sort: must be one of last_seen, first_seen, count, users"),
    ("limit=0", "limit: must be between 1 and 1000"),
    ("limit=x", "limit: not an integer: 'x'"),
    ("limit=1.5", "limit: not an integer: '1.5'"),
    ("offset=-1", "offset: must be 0 or more"),
    ("offset=", "offset: not an integer: ''"),
    ("project=nope", "project: no project named 'nope'"),
])
async def test_bad_list_parameters_are_400(api: aiohttp.ClientSession, query: str,
                                           detail: str) -> None:
    assert await call(api, "GET", f"/api/v1/issues?{query}") == (400, {"detail": detail})


async def test_one_issue_with_events_and_trace(db: Database,
                                               api: aiohttp.ClientSession) -> None:
    await store(db, event("t", data={"message": "older"}))
    latest = event("t", data=TRACE_EVENT)
    await store(db, latest)
    issue_id = await db.pool.fetchval("SELECT id FROM issues")
    status, issue = await call(api, "GET", f"/api/v1/issues/{issue_id}")
    assert status == 200
    assert (issue["id"], issue["count"], len(issue["events"])) == (issue_id, 2, 2)
    assert issue["events"][0]["event_id"] == latest.event_id
    assert issue["events"][0]["data"]["exception"] == TRACE_EVENT["exception"]
    assert [e["type"] for e in issue["stacktrace"]] == ["KeyError", "LookupFailed"]
    assert issue["stacktrace"][1]["frames"][0]["context_line"] == "    user = load()"
    _, one = await call(api, "GET", f"/api/v1/issues/{issue_id}?events=1")
    assert [e["event_id"] for e in one["events"]] == [latest.event_id]
    assert await call(api, "GET", f"/api/v1/issues/{issue_id}?events=5000") == (
        400, {"detail": "events: must be between 0 and 1000"})
    assert await call(api, "GET", f"/api/v1/issues/{issue_id}?events=all") == (
        400, {"detail": "events: not an integer: 'all'"})
    assert await call(api, "GET", "/api/v1/issues/424242") == (
        404, {"detail": "no issue with id 424242"})
    assert await call(api, "GET", "/api/v1/issues/abc") == (
        400, {"detail": "id: not an issue id or short id (SHOP-12): 'abc'"})
    assert await call(api, "GET", f"/api/v1/issues/{'9' * 30}") == (
        400, {"detail": f"id: not an issue id or short id (SHOP-12): '{'9' * 30}'"})
    # The short id people say names the same issue, in any case.
    assert issue["short_id"] == "APP-1"
    for name in ("APP-1", "app-1"):
        status, same = await call(api, "GET", f"/api/v1/issues/{name}?events=0")
        assert (status, same["id"]) == (200, issue_id), name
    assert await call(api, "GET", "/api/v1/issues/APP-2") == (
        404, {"detail": "no issue 'APP-2'"})
    assert await call(api, "GET", f"/api/v1/issues/{2**63}") == (
        404, {"detail": f"no issue with id {2**63}"})


async def test_status_changes(db: Database, api: aiohttp.ClientSession) -> None:
    await store(db, event("f"))
    issue_id = await db.pool.fetchval("SELECT id FROM issues")
    for action, status in [("resolve", "resolved"), ("ignore", "ignored"),
                           ("reopen", "unresolved")]:
        code, issue = await call(api, "POST", f"/api/v1/issues/{issue_id}/{action}")
        assert (code, issue["id"], issue["status"]) == (200, issue_id, status)
        assert await db.pool.fetchval("SELECT status FROM issues") == status
    assert await call(api, "POST", "/api/v1/issues/77/resolve") == (
        404, {"detail": "no issue with id 77"})
    assert await call(api, "POST", "/api/v1/issues/x/ignore") == (
        400, {"detail": "id: not an issue id or short id (SHOP-12): 'x'"})
    code, issue = await call(api, "POST", "/api/v1/issues/APP-1/resolve")
    assert (code, issue["id"], issue["status"]) == (200, issue_id, "resolved")
    async with api.get(f"/api/v1/issues/{issue_id}/resolve", headers=AUTH) as response:
        assert response.status == 405


# -- projects -------------------------------------------------------------------------------


async def test_projects_and_their_stats(db: Database, api: aiohttp.ClientSession) -> None:
    await seed(db)
    status, body = await call(api, "GET", "/api/v1/projects")
    assert status == 200
    assert [(p["name"], p["keys"], p["issues"], p["events"]) for p in body["projects"]] == [
        ("app", ["appkey1"], 3, 5), ("web", ["webkey1"], 1, 1), ("2", [], 0, 0)]
    for ref in ("app", "1"):
        status, stats = await call(api, "GET", f"/api/v1/projects/{ref}/stats")
        assert status == 200
        assert (stats["project"], stats["issues"], stats["unresolved"], stats["events"]) == (
            "app", 3, 3, 5)
        assert len(stats["events_per_hour"]) == 24
        assert sum(h["count"] for h in stats["events_per_hour"]) == 5
    assert await call(api, "GET", "/api/v1/projects/nope/stats") == (
        404, {"detail": "project: no project named 'nope'"})


async def test_the_read_only_token_reads_with_keys_masked_and_changes_nothing(
        db: Database) -> None:
    await seed(db)
    read = {"Authorization": "Bearer dashboard-only"}
    async with serve(lambda: db.pool, read_token="dashboard-only") as api:
        status, body = await call(api, "GET", "/api/v1/projects", read)
        assert status == 200
        assert [(p["name"], p["keys"]) for p in body["projects"]] == [
            ("app", ["appk…"]), ("web", ["webk…"]), ("2", [])]
        assert "appkey1" not in str(body)
        status, issues = await call(api, "GET", "/api/v1/issues", read)
        assert status == 200 and issues["issues"]
        issue = issues["issues"][0]
        assert await call(api, "POST", f"/api/v1/issues/{issue['id']}/resolve", read) == (
            403, {"detail": "the read-only token (ingest.api_read_token) cannot change "
                            "anything; use ingest.api_token"})
        assert (await call(api, "GET", f"/api/v1/issues/{issue['id']}", read))[1][
            "status"] == issue["status"]
        status, body = await call(api, "GET", "/api/v1/projects")      # the full token
        assert [p["keys"] for p in body["projects"]][:2] == [["appkey1"], ["webkey1"]]


async def test_the_ingest_route_is_left_to_its_own_module(api: aiohttp.ClientSession) -> None:
    async with api.post("/api/v1/events", headers=AUTH) as response:
        assert response.status == 404


# -- the database away ----------------------------------------------------------------------


async def test_a_stopped_database_answers_503(pg_url: str, tmp_path: Path) -> None:
    database = await open_events_database(pg_url, tmp_path)
    closed = database.pool
    await database.stop()
    unavailable = (503, {"detail": "database unavailable"})
    async with serve(lambda: closed) as client:
        for method, path in ROUTES:
            assert await call(client, method, path) == unavailable
    async with serve(lambda: database.pool) as client:      # no pool at all any more
        assert await call(client, "GET", "/api/v1/issues") == unavailable


async def test_an_unreachable_server_answers_503() -> None:
    with socket.socket() as sock:           # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = await asyncpg.create_pool(f"postgresql://egen@127.0.0.1:{port}/egen", min_size=0,
                                     max_size=1)
    try:
        async with serve(lambda: pool) as client:
            assert await call(client, "GET", "/api/v1/projects") == (
                503, {"detail": "database unavailable"})
    finally:
        await pool.close()
