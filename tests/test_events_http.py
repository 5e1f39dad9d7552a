"""The Sentry-compatible and native ingest endpoints against a running egen, with bad
input of every kind: each gets a precise error and stores nothing."""

from __future__ import annotations

import base64
import gzip
import io
import uuid
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from daemon.app import App
from daemon.events.listen.refusals import Refusals
from daemon.metrics import render
from tests.eventfixtures import base_url, events_config, issue_rows, stored
from tests.mailfixtures import started_app
from tests.test_app import proxied

AUTH = {"X-Sentry-Auth": "Sentry sentry_key=appkey01, sentry_version=7"}


def envelope(*events: dict[str, Any], header: dict[str, Any] | None = None,
             extra_items: bytes = b"") -> bytes:
    if header is None:       # as the SDKs write it: the event's id in the envelope header
        header = {"event_id": events[0]["event_id"]} if events and "event_id" in events[0] else {}
    parts = [orjson.dumps(header)]
    for event in events:
        payload = orjson.dumps(event)
        parts += [orjson.dumps({"type": "event", "length": len(payload)}), payload]
    return b"\n".join(parts) + b"\n" + extra_items


def error_event(value: str = "division by zero", **more: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "level": "error", "platform": "python",
            "exception": {"values": [{"type": "ZeroDivisionError", "value": value,
                                      "stacktrace": {"frames": [
                                          {"filename": "app/views.py", "function": "index",
                                           "module": "app.views", "lineno": 10,
                                           "in_app": True}]}}]}, **more}


async def post(app: App, path: str, body: bytes, headers: dict[str, str] | None = None
               ) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
            base_url(app) + path, data=io.BytesIO(body), headers=headers or {}) as response:
        text = await response.read()
        return (response.status, orjson.loads(text) if text else None,
                dict(response.headers))


@pytest.fixture
async def app(tmp_path: Path, pg_url: str) -> Any:
    async with started_app(events_config(tmp_path, pg_url)) as running:
        yield running


async def count_events(app: App) -> int:
    await stored(app)
    return await app.database.db.pool.fetchval("SELECT count(*) FROM events")


async def test_accepted_event_answers_its_id_and_switches_off_other_categories(
        app: App) -> None:
    event = error_event()
    status, body, headers = await post(app, "/api/1/envelope/", envelope(event), AUTH)
    assert status == 200 and body == {"id": event["event_id"]}
    limits = headers["X-Sentry-Rate-Limits"]
    assert "transaction" in limits and "session" in limits and "error" not in limits
    assert await count_events(app) == 1


@pytest.mark.parametrize(("headers", "path", "status", "detail"), [
    ({}, "/api/1/envelope/", 401, "missing authorization"),
    ({"X-Sentry-Auth": "Sentry sentry_key=wrongkey"}, "/api/1/envelope/", 403,
     "not valid for project 1"),
    ({"X-Sentry-Auth": "Sentry sentry_key=webkey01"}, "/api/1/envelope/", 403,
     "not valid for project 1"),
    (AUTH, "/api/99/envelope/", 403, "there is no project 99"),
])
async def test_wrong_key_or_project_is_refused_and_nothing_stored(
        app: App, headers: dict[str, str], path: str, status: int, detail: str) -> None:
    got, body, _ = await post(app, path, envelope(error_event()), headers)
    assert got == status and detail in body["detail"]
    assert await count_events(app) == 0


async def test_refusals_are_counted_and_logged_once_a_minute_per_key_and_project(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    wrong = {"X-Sentry-Auth": "Sentry sentry_key=wrongkey"}
    for _ in range(3):
        assert (await post(app, "/api/1/envelope/", envelope(error_event()), wrong))[0] == 403
    assert (await post(app, "/api/99/envelope/", envelope(error_event()), AUTH))[0] == 403
    async with aiohttp.ClientSession() as client, client.post(
            base_url(app) + "/api/v1/events", data=b'{"message": "x"}',
            headers={"Authorization": "Bearer nobodys"}) as response:
        assert response.status == 403
    lines = [r for r in caplog.records if r.name == "egen.ingest.refused"]
    assert [r.getMessage() for r in lines] == [
        "ingest refused: key not valid for the project", "ingest refused: no such project",
        "ingest refused: key not valid for any project"]
    metrics = render(app.registry).decode()
    for source, reason, count in (("sentry", "wrong_key", 3), ("sentry", "unknown_project", 1),
                                  ("native", "unknown_key", 1)):
        assert (f'egen_ingest_refused_total{{reason="{reason}",source="{source}"}} '
                f'{float(count)}') in metrics, (source, reason)


async def test_key_from_query_and_from_the_envelope_dsn(app: App) -> None:
    status, _, _ = await post(app, "/api/1/envelope/?sentry_key=appkey01",
                              envelope(error_event()))
    assert status == 200
    dsn = "http://appkey01@example.invalid/1"
    status, _, _ = await post(app, "/api/1/envelope/",
                              envelope(error_event(), header={"dsn": dsn}))
    assert status == 200
    assert await count_events(app) == 2


async def test_path_prefix_behind_a_reverse_proxy(app: App) -> None:
    status, _, _ = await post(app, "/errors/sentry/api/1/envelope/",
                              envelope(error_event()), AUTH)
    assert status == 200 and await count_events(app) == 1


@pytest.mark.parametrize(("body", "headers", "status", "detail"), [
    (b"not json\n", {}, 400, "malformed envelope: envelope header"),
    (b'{}\n{"type":"event","length":50}\n{}', {}, 400, "exceeds"),
    (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "cannot decode the body"),
    (b"x", {"Content-Encoding": "compress"}, 400, "unsupported Content-Encoding"),
])
async def test_malformed_bodies_get_precise_errors(app: App, body: bytes,
                                                   headers: dict[str, str], status: int,
                                                   detail: str) -> None:
    got, answer, _ = await post(app, "/api/1/envelope/", body, {**AUTH, **headers})
    assert got == status and detail in answer["detail"], answer
    assert await count_events(app) == 0


@pytest.mark.parametrize(("item", "reason"), [
    (b'{"broken": ', "not JSON"), (b"[1,2]", "not a JSON object"),
    (b'{"level": "loud"}', "level")])
async def test_an_event_found_invalid_after_it_was_accepted_is_counted_and_logged(
        app: App, caplog: pytest.LogCaptureFixture, item: bytes, reason: str) -> None:
    """The answer comes before the event is read (the digest reads it): a bad event is
    acknowledged, then left out, counted for its project and logged with the reason,
    and the good event of the same batch is stored."""
    good = error_event()
    body = (envelope(header={}) + b'{"type":"event","length":%d}\n' % len(item) + item
            + b"\n")
    assert (await post(app, "/api/1/envelope/", body, AUTH))[:2] == (200, {})
    assert (await post(app, "/api/1/envelope/", envelope(good), AUTH))[0] == 200
    assert await count_events(app) == 1
    assert app.registry.get_sample_value("egen_events_invalid_after_accept_total",
                                         {"project": "app"}) == 1
    [line] = [r for r in caplog.records if r.getMessage().startswith("accepted event is")]
    assert reason in line.__dict__["egen_fields"]["error"]
    assert line.__dict__["egen_fields"]["project"] == "app"


async def test_oversize_body_and_decompression_bomb_get_413(tmp_path: Path,
                                                            pg_url: str) -> None:
    config = events_config(tmp_path, pg_url,
                           ingest='max_body_size = "64KiB"\nmax_event_size = "8KiB"\n')
    async with started_app(config) as app:
        big = envelope(error_event("x" * 100_000))
        status, body, _ = await post(app, "/api/1/envelope/", big, AUTH)
        assert status == 413 and "max_body_size" in body["detail"]
        bomb = gzip.compress(b"{}\n" + b" " * 50_000_000)
        status, body, _ = await post(app, "/api/1/envelope/", bomb,
                                     {**AUTH, "Content-Encoding": "gzip"})
        assert status == 413 and "decompressed body exceeds" in body["detail"]
        status, body, _ = await post(app, "/api/1/envelope/",
                                     envelope(error_event("y" * 20_000)), AUTH)
        assert status == 413 and "max_event_size" in body["detail"]
        assert await count_events(app) == 0


async def test_duplicate_event_id_is_stored_and_counted_once(app: App) -> None:
    event = error_event()
    for _ in range(3):
        status, _, _ = await post(app, "/api/1/envelope/", envelope(event), AUTH)
        assert status == 200
    assert await count_events(app) == 1
    assert [r["count"] for r in await issue_rows(app)] == [1]


async def test_other_item_types_are_accepted_not_stored(app: App) -> None:
    items = (b'{"type":"session"}\n{"sid":"x","status":"ok"}\n'
             b'{"type":"client_report"}\n{"discarded_events":[]}\n'
             b'{"type":"attachment","length":3,"filename":"a.bin"}\nabc\n'
             b'{"type":"brand_new_thing"}\n{}\n')
    status, _, _ = await post(app, "/api/1/envelope/", envelope(error_event(),
                                                                extra_items=items), AUTH)
    assert status == 200 and await count_events(app) == 1
    status, body, _ = await post(app, "/api/1/envelope/",
                                 b'{}\n{"type":"transaction"}\n{}\n', AUTH)
    assert status == 200 and body == {} and await count_events(app) == 1


async def test_legacy_store_endpoint(app: App) -> None:
    raw = orjson.dumps(error_event())
    for body in (raw, base64.b64encode(zlib.compress(raw))):
        status, _, _ = await post(app, "/api/1/store/", body, AUTH)
        assert status == 200
    status, answer, _ = await post(app, "/api/1/store/", b"%%%", AUTH)
    assert status == 400 and "store body" in answer["detail"]
    assert await count_events(app) == 1                 # the same event_id twice


async def test_cors_preflight_and_origins(app: App) -> None:
    url = base_url(app) + "/api/2/envelope/"
    async with aiohttp.ClientSession() as session:
        async with session.options(url, headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == \
                "https://app.example.com"
            assert "x-sentry-auth" in response.headers["Access-Control-Allow-Headers"]
        async with session.options(url, headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    status, body, _ = await post(app, "/api/2/envelope/?sentry_key=webkey01",
                                 envelope(error_event()), {"Origin": "https://evil.example"})
    assert status == 403 and "origin" in body["detail"]
    status, _, headers = await post(app, "/api/2/envelope/?sentry_key=webkey01",
                                    envelope(error_event()),
                                    {"Origin": "https://app.example.com"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_project_rate_limit_speaks_the_sdk_language(app: App) -> None:
    web = {"X-Sentry-Auth": "Sentry sentry_key=webkey01"}
    statuses = []
    for _ in range(7):
        status, _, headers = await post(app, "/api/2/envelope/", envelope(error_event()), web)
        statuses.append(status)
    assert statuses == [200] * 5 + [429] * 2
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-Sentry-Rate-Limits"].endswith("::project")
    assert await count_events(app) == 5


async def test_events_are_accepted_while_postgres_is_away(tmp_path: Path,
                                                          pg_url: str) -> None:
    proxy, _ = proxied(pg_url, 0)
    await proxy.start()
    _, url = proxied(pg_url, proxy.port)
    try:
        async with started_app(events_config(tmp_path, url)) as app:
            proxy.cut()
            for _ in range(3):
                status, _, _ = await post(app, "/api/1/envelope/", envelope(error_event()),
                                          AUTH)
                assert status == 200
            proxy.restore()
            assert await count_events(app) == 3
    finally:
        await proxy.stop()


async def test_two_nodes_sharing_a_database_count_one_bug_once(tmp_path: Path,
                                                               pg_url: str) -> None:
    """How egen scales out: two nodes, each with its own journal, one database."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with started_app(events_config(tmp_path / "a", pg_url)) as a, \
            started_app(events_config(tmp_path / "b", pg_url)) as b:
        for node in (a, b, a, b, b):
            status, _, _ = await post(node, "/api/1/envelope/", envelope(error_event()), AUTH)
            assert status == 200
        await stored(a)
        await stored(b)
        rows = await issue_rows(a)
    assert [(r["title"], r["count"]) for r in rows] == [
        ("ZeroDivisionError: division by zero", 5)]


async def test_a_full_journal_answers_429_and_the_shipper_endpoint_503(tmp_path: Path,
                                                                       pg_url: str) -> None:
    proxy, _ = proxied(pg_url, 0)
    await proxy.start()
    _, url = proxied(pg_url, proxy.port)
    config = events_config(tmp_path, url, extra='[journal]\nmax_size = "8KiB"\n'
                                                'segment_size = "4KiB"\n')
    try:
        async with started_app(config) as app:
            proxy.cut()
            statuses = []
            for _ in range(12):
                status, body, headers = await post(
                    app, "/api/1/envelope/", envelope(error_event("z" * 1500)), AUTH)
                statuses.append(status)
            assert statuses[0] == 200 and statuses[-1] == 429
            assert "journal is full" in body["detail"]
            assert int(headers["Retry-After"]) >= 1
            assert headers["X-Sentry-Rate-Limits"].endswith("::organization")
            status, _, headers = await post(app, "/api/v1/events",
                                            orjson.dumps({"message": "m" * 5000,
                                                          "level": "error"}),
                                            {"Authorization": "Bearer appkey01"})
            assert status == 503 and int(headers["Retry-After"]) >= 1
            proxy.restore()
            accepted = statuses.count(200)
            assert await count_events(app) == accepted
    finally:
        await proxy.stop()


async def test_nul_characters_are_stored_not_lost(app: App) -> None:
    """An event answered 200 must reach Postgres, even with NUL in its title."""
    event = error_event(environment="pr\u0000od")
    event["exception"]["values"][0]["type"] = "Zero\u0000Error"
    status, _, _ = await post(app, "/api/1/envelope/", envelope(event), AUTH)
    assert status == 200
    assert await count_events(app) == 1
    [row] = await issue_rows(app)
    assert row["title"].startswith("Zero\ufffdError")


async def test_control_characters_in_an_error_still_get_an_answer(app: App) -> None:
    status, body, headers = await post(app, "/api/1/store/",
                                       orjson.dumps({"tags": {"a\nb": {}}}), AUTH)
    assert status == 400 and "tags" in body["detail"]
    assert "\n" not in headers["X-Sentry-Error"]


async def test_sighup_applies_rotated_keys(tmp_path: Path, pg_url: str) -> None:
    settings = events_config(tmp_path, pg_url)
    async with started_app(settings) as app:
        source = settings.source
        source.write_text(source.read_text().replace('keys = ["appkey01"]',
                                                     'keys = ["appkey02"]'))
        assert await app.reload()
        old, _, _ = await post(app, "/api/1/envelope/", envelope(error_event()), AUTH)
        new, _, _ = await post(app, "/api/1/envelope/", envelope(error_event()),
                               {"X-Sentry-Auth": "Sentry sentry_key=appkey02"})
        assert (old, new) == (403, 200)


def test_a_refusal_is_logged_again_after_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    refusals = Refusals(CollectorRegistry(), every=60.0, clock=lambda: now[0])
    for step in (0.0, 30.0, 31.0, 1.0):
        now[0] += step
        refusals.refused("sentry", "wrong_key", project=1, key="k1", address="192.0.2.1")
    refusals.refused("sentry", "wrong_key", project=1, key="k2", address="192.0.2.1")
    lines = [r for r in caplog.records if r.name == "egen.ingest.refused"]
    assert len(lines) == 3          # k1 at 0 s and at 61 s, k2 once
