"""`POST /api/v1/events` with what log shippers send: one object, arrays, NDJSON,
concatenated objects, compressed, with bad lines mixed in, and a 10 MB batch."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from daemon.app import App
from tests.eventfixtures import events_config, issue_rows, stored
from tests.mailfixtures import started_app
from tests.test_events_http import post

KEY = {"Authorization": "Bearer appkey01"}
PATH = "/api/v1/events"


@pytest.fixture
async def app(tmp_path: Path, pg_url: str) -> Any:
    async with started_app(events_config(tmp_path, pg_url)) as running:
        yield running


def line(n: int, level: str = "error", **more: Any) -> dict[str, Any]:
    return {"message": f"payment {n} declined", "level": level,
            "logger": "shop.payments", **more}


async def count(app: App) -> int:
    await stored(app)
    return await app.database.db.pool.fetchval("SELECT count(*) FROM events")


@pytest.mark.parametrize("framing", ["object", "array", "ndjson", "ndjson_no_newline",
                                     "concatenated"])
async def test_each_shipper_framing(app: App, framing: str) -> None:
    records = [line(1), line(2), line(3)]
    body = {
        "object": orjson.dumps(records[0]),
        "array": orjson.dumps(records),
        "ndjson": b"\n".join(orjson.dumps(r) for r in records) + b"\n",
        "ndjson_no_newline": b"\n".join(orjson.dumps(r) for r in records),
        "concatenated": b"".join(orjson.dumps(r) for r in records),
    }[framing]
    status, answer, _ = await post(app, PATH, body, KEY)
    want = 1 if framing == "object" else 3
    assert status == 200 and answer["accepted"] == want and answer["problems"] == []
    assert await count(app) == want
    # Different numbers in the message: one issue.
    assert [r["count"] for r in await issue_rows(app)] == [want]


async def test_bad_lines_are_reported_and_good_ones_kept(app: App) -> None:
    body = b"\n".join([orjson.dumps(line(1)), b"{not json", orjson.dumps({"foo": 1}),
                       orjson.dumps(line(2, level="debug")), orjson.dumps(line(3))])
    status, answer, _ = await post(app, PATH, body, {"X-Egen-Key": "appkey01"})
    assert status == 200
    assert (answer["accepted"], answer["filtered"], answer["invalid"]) == (2, 1, 2)
    assert [p["index"] for p in answer["problems"]] == [1, 2]
    assert answer["problems"][0]["error"].startswith("line 2: invalid JSON")
    assert answer["problems"][1]["error"].startswith("record 2: record has no message")
    assert await count(app) == 2


@pytest.mark.parametrize(("headers", "body", "status", "detail"), [
    ({}, b"{}", 401, "missing project key"),
    ({"Authorization": "Bearer nope"}, b"{}", 403, "not valid"),
    (KEY, b"", 400, "body"),
    (KEY, b"garbage", 400, "no JSON object"),
])
async def test_refusals(app: App, headers: dict[str, str], body: bytes, status: int,
                        detail: str) -> None:
    got, answer, _ = await post(app, PATH, body, headers)
    assert got == status and detail in answer["detail"]
    assert await count(app) == 0


async def test_compressed_bodies(app: App) -> None:
    body = orjson.dumps([line(1), line(2)])
    for encoding, data in (("gzip", gzip.compress(body)),
                           ("zstd", zstandard.ZstdCompressor().compress(body))):
        status, answer, _ = await post(app, PATH, data, {**KEY, "Content-Encoding": encoding})
        assert status == 200 and answer["accepted"] == 2, answer
    assert await count(app) == 4


async def test_a_traceback_in_a_log_line_groups_by_frames(app: App) -> None:
    trace = ('Traceback (most recent call last):\n'
             '  File "/srv/app/shop/pay.py", line {n}, in charge\n'
             '    total = amount / rate\n'
             'ZeroDivisionError: division by zero')
    body = b"\n".join(orjson.dumps({"message": "charge failed", "level": "error",
                                    "stack_trace": trace.format(n=n)}) for n in (10, 42))
    status, answer, _ = await post(app, PATH, body, KEY)
    assert status == 200 and answer["accepted"] == 2
    await stored(app)
    [issue] = await issue_rows(app)
    assert issue["count"] == 2 and issue["title"].startswith("ZeroDivisionError")


async def test_a_ten_megabyte_batch(app: App) -> None:
    padding = "x" * 200
    body = b"\n".join(orjson.dumps(line(n, detail=padding)) for n in range(40_000))
    assert len(body) > 10_000_000
    status, answer, _ = await post(app, PATH, body, KEY)
    assert status == 200 and answer["accepted"] == 40_000
    assert await count(app) == 40_000


async def test_a_big_batch_costs_its_full_size_in_the_rate_limit(app: App) -> None:
    """Project "web" allows 5 events a minute: a batch of 20 goes in once, and the debt
    it leaves keeps the next events out for the minutes it represents."""
    web = {"Authorization": "Bearer webkey01"}
    batch = b"\n".join(orjson.dumps(line(n)) for n in range(20))
    status, answer, _ = await post(app, PATH, batch, web)
    assert status == 200 and answer["accepted"] == 20
    status, _, headers = await post(app, PATH, orjson.dumps(line(99)), web)
    assert status == 429
    assert int(headers["Retry-After"]) >= (20 - 5 + 1) * 60 // 5
