"""The official sentry-sdk, changed only in its DSN, against a running egen: what it
sends is accepted, grouped into issues and counted."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
import orjson
import sentry_sdk

from daemon.events.pipeline.record import decompress_payload
from tests.eventfixtures import base_url, dsn, events_config, issue_rows, run_sdk, stored
from tests.mailfixtures import started_app


def divide(a: int, b: int) -> float:
    return a / b


def load_order(order_id: str) -> dict[str, str]:
    orders: dict[str, dict[str, str]] = {}
    return orders[order_id]


def checkout(order_id: str) -> None:
    try:
        load_order(order_id)
    except KeyError as err:
        raise RuntimeError(f"checkout of {order_id} failed") from err


def raise_and_capture(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:
        sentry_sdk.capture_exception()


async def test_exceptions_group_into_issues_with_exact_counts(tmp_path: Path,
                                                              pg_url: str) -> None:
    async with started_app(events_config(tmp_path, pg_url)) as app:
        def errors() -> None:
            for _ in range(3):
                raise_and_capture(divide, 1, 0)
            raise_and_capture(load_order, "A-17")
            raise_and_capture(load_order, "B-99")      # same bug, another value

        await run_sdk(dsn(app), errors)
        await stored(app)
        rows = await issue_rows(app)
    by_title = {r["title"]: r for r in rows}
    assert by_title["ZeroDivisionError: division by zero"]["count"] == 3
    assert by_title["ZeroDivisionError: division by zero"]["culprit"].endswith("divide")
    [key_error] = [r for r in rows if r["title"].startswith("KeyError")]
    assert key_error["count"] == 2 and key_error["level"] == "error"
    assert len(rows) == 2 and {r["project"] for r in rows} == {"app"}


async def test_a_second_run_raises_the_count(tmp_path: Path, pg_url: str) -> None:
    async with started_app(events_config(tmp_path, pg_url)) as app:
        await run_sdk(dsn(app), lambda: raise_and_capture(divide, 1, 0))
        await run_sdk(dsn(app), lambda: raise_and_capture(divide, 2, 0))
        await stored(app)
        rows = await issue_rows(app)
    assert [(r["title"], r["count"]) for r in rows] == [
        ("ZeroDivisionError: division by zero", 2)]


async def test_chained_exceptions_messages_and_breadcrumbs(tmp_path: Path,
                                                           pg_url: str) -> None:
    async with started_app(events_config(tmp_path, pg_url)) as app:
        def mixed() -> None:
            sentry_sdk.add_breadcrumb(category="db", message="SELECT 1")
            raise_and_capture(checkout, "A-1")
            raise_and_capture(checkout, "A-2")
            sentry_sdk.capture_message("Processed 17 items in 3.2s", level="warning")
            sentry_sdk.capture_message("Processed 5 items in 0.7s", level="warning")

        await run_sdk(dsn(app), mixed)
        await stored(app)
        rows = await issue_rows(app)
        payload = await app.database.db.pool.fetchval(
            "SELECT payload FROM events e JOIN issues i ON i.id = e.issue_id "
            "WHERE i.title LIKE 'RuntimeError%' LIMIT 1")
    # One issue per bug; its title is the latest event's, as in Sentry.
    assert sorted((r["title"].split(" ")[0], r["count"]) for r in rows) == [
        ("Processed", 2), ("RuntimeError:", 2)]
    assert [r["level"] for r in rows if r["title"].startswith("Processed")] == ["warning"]

    event = orjson.loads(decompress_payload(payload))
    types = [v["type"] for v in event["exception"]["values"]]
    assert types == ["KeyError", "RuntimeError"]
    assert event["breadcrumbs"]["values"][0]["message"] == "SELECT 1"


async def test_gzip_and_brotli_bodies(tmp_path: Path, pg_url: str) -> None:
    async with started_app(events_config(tmp_path, pg_url)) as app:
        for algo in ("gzip", "br"):
            await run_sdk(dsn(app), lambda: raise_and_capture(divide, 1, 0),
                          _experiments={"transport_compression_algo": algo})
        await stored(app)
        rows = await issue_rows(app)
    assert [r["count"] for r in rows] == [2]


async def test_logging_integration_events(tmp_path: Path, pg_url: str) -> None:
    from sentry_sdk.integrations.logging import LoggingIntegration

    logger = logging.getLogger("shop.payments")

    async with started_app(events_config(tmp_path, pg_url)) as app:
        def logs() -> None:
            logger.error("payment %s declined for %d EUR", "p-1", 20)
            logger.error("payment %s declined for %d EUR", "p-2", 35)

        await run_sdk(dsn(app), logs, integrations=[LoggingIntegration(event_level="ERROR")])
        await stored(app)
        rows = await issue_rows(app)
    assert [(r["count"], r["level"]) for r in rows] == [(2, "error")]
    assert rows[0]["title"].startswith("payment p-")


UNCAUGHT = """
import sys
import sentry_sdk
sentry_sdk.init(sys.argv[1])

def handler(request):
    return 1 / request

handler(0)
"""


async def test_an_uncaught_exception_in_a_program_shows_up_in_the_api(tmp_path: Path,
                                                                      pg_url: str) -> None:
    """What an application does: init with the DSN and crash; the SDK's excepthook sends
    the event as the program exits. Read back through the operator API."""
    script = tmp_path / "crash.py"
    script.write_text(UNCAUGHT)
    async with started_app(events_config(tmp_path, pg_url)) as app:
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), dsn(app), stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            assert proc.returncode == 1 and b"ZeroDivisionError" in err
        await stored(app)
        async with aiohttp.ClientSession(headers={
                "Authorization": "Bearer test-api-token"}) as session:
            async with session.get(base_url(app) + "/api/v1/issues") as response:
                assert response.status == 200
                issues = (await response.json())["issues"]
            async with session.get(f"{base_url(app)}/api/v1/issues/{issues[0]['id']}") as r:
                detail = await r.json()
    assert [(i["title"], i["count"], i["level"]) for i in issues] == [
        ("ZeroDivisionError: division by zero", 2, "error")]
    assert issues[0]["culprit"] == "__main__ in handler"
    frames = detail["stacktrace"][-1]["frames"]
    assert [f["function"] for f in frames][-2:] == ["<module>", "handler"]
    assert len(detail["events"]) == 2
