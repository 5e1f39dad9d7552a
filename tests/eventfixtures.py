"""Helpers for error-ingest tests: an egen with projects, and the real sentry-sdk
pointed at it (in a thread, as applications run it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sentry_sdk

from daemon import config
from daemon.app import App
from tests.mailfixtures import mail_config

PROJECTS = """
[ingest]
api_token = "test-api-token"
{ingest}
[[projects]]
name = "app"
id = 1
keys = ["appkey01"]

[[projects]]
name = "web"
id = 2
keys = ["webkey01"]
allowed_origins = ["https://app.example.com"]
rate_limit = 5
"""


def events_config(tmp_path: Path, pg_url: str, extra: str = "", *,
                  ingest: str = "") -> config.Settings:
    return mail_config(tmp_path, pg_url, extra=PROJECTS.format(ingest=ingest) + extra)


def base_url(app: App) -> str:
    address = app.http.addresses[0]
    return f"http://{address.host}:{address.port}"


def dsn(app: App, key: str = "appkey01", project: int = 1, prefix: str = "") -> str:
    address = app.http.addresses[0]
    return f"http://{key}@{address.host}:{address.port}{prefix}/{project}"


async def run_sdk(dsn: str, action: Callable[[], Any], **options: Any) -> None:
    """Run `action` with a sentry-sdk client of its own (no global init, no default
    integrations that would report egen's own logs), then flush it."""
    def work() -> None:
        client = sentry_sdk.Client(dsn=dsn, default_integrations=False, **options)
        try:
            with sentry_sdk.isolation_scope() as scope:
                scope.set_client(client)
                action()
            client.flush(timeout=10)
        finally:
            client.close(timeout=10)

    await asyncio.to_thread(work)


async def stored(app: App) -> None:
    """Wait until everything accepted is in Postgres."""
    await app.events_flusher.drained()


async def issue_rows(app: App) -> list[dict[str, Any]]:
    rows = await app.database.db.pool.fetch(
        "SELECT i.id, p.name AS project, i.title, i.culprit, i.level, i.status, "
        "i.event_count AS count FROM issues i JOIN projects p ON p.id = i.project_id "
        "ORDER BY i.id")
    return [dict(r) for r in rows]
