"""The App in the test's own loop: start order, health/readiness/metrics, reload, and a
bounded stop that still shuts storage down when a component hangs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import pytest

from daemon import config
from daemon.app import App
from daemon.journal.log import JournalFull
from tests.tcpproxy import TcpProxy


def settings_for(tmp_path: Path, database_url: str, extra: str = "") -> config.Settings:
    path = tmp_path / "egen.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nhostname = "test.invalid"\n'
                    f'[database]\nurl = "{database_url}"\nconnect_timeout = "5s"\n'
                    f'[http]\nlisten = ["127.0.0.1:0"]\n{extra}')
    return config.load(path, environ={})


async def get(app: App, path: str) -> tuple[int, dict | str]:
    address = app.http.addresses[0]
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{address}{path}") as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


@pytest.fixture
async def started(tmp_path: Path, pg_url: str) -> AsyncIterator[App]:
    app = App(settings_for(tmp_path, pg_url))
    await app.start()
    yield app
    await app.stop()


async def test_health_ready_and_metrics(started: App) -> None:
    assert await get(started, "/healthz") == (200, {"status": "ok"})
    status, body = await get(started, "/readyz")
    assert status == 200
    assert body == {"status": "ready", "checks": {
        "database": {"ok": True, "detail": "ok"}, "journal": {"ok": True, "detail": "ok"}}}
    status, text = await get(started, "/metrics")
    assert status == 200
    assert isinstance(text, str)
    assert 'egen_build_info{version="' in text
    assert "process_resident_memory_bytes" in text


async def test_node_registered_while_running(tmp_path: Path, pg_url: str) -> None:
    app = App(settings_for(tmp_path, pg_url))
    await app.start()
    pool = app.database.db.pool
    assert await pool.fetchval("SELECT count(*) FROM nodes WHERE id = $1",
                               app.database.node_id) == 1
    await app.stop()
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 0
    finally:
        await conn.close()


async def test_port_is_closed_after_stop(tmp_path: Path, pg_url: str) -> None:
    app = App(settings_for(tmp_path, pg_url))
    await app.start()
    address = app.http.addresses[0]
    await app.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection(address.host, address.port)


async def test_readyz_fails_while_a_journal_is_full(tmp_path: Path, pg_url: str) -> None:
    app = App(settings_for(tmp_path, pg_url,
                           '[journal]\nmax_size = "8KiB"\nsegment_size = "4KiB"\n'))
    journal = app.journals.get("test")
    await app.start()
    try:
        with pytest.raises(JournalFull):
            for _ in range(100):
                await journal.append(b"x" * 1000)
        status, body = await get(app, "/readyz")
        assert status == 503
        assert isinstance(body, dict)
        assert body["checks"]["journal"] == {"ok": False, "detail": "full: test"}
        assert body["checks"]["database"]["ok"] is True
        status, text = await get(app, "/metrics")
        assert 'egen_journal_full_rejections_total{journal="test"} 1.0' in str(text)
    finally:
        await app.stop()


def proxied(url: str, proxy_port: int) -> tuple[TcpProxy, str]:
    """A proxy in front of the test Postgres and the URL that goes through it."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    port = parts.port or 5432
    if "host" in query and query["host"][0].startswith("/"):
        proxy = TcpProxy(upstream_path=f"{query['host'][0]}/.s.PGSQL.{port}")
    else:
        proxy = TcpProxy(upstream_host=parts.hostname, upstream_port=port)
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}" if parts.password else user
    other = "&".join(f"{k}={v[0]}" for k, v in query.items() if k not in ("host", "port"))
    return proxy, urlunsplit(("postgresql", f"{auth}@127.0.0.1:{proxy_port}", parts.path,
                              other, ""))


async def test_readyz_follows_the_database(tmp_path: Path, pg_url: str) -> None:
    proxy, _ = proxied(pg_url, 0)
    await proxy.start()
    _, url = proxied(pg_url, proxy.port)
    app = App(settings_for(tmp_path, url))
    await app.start()
    try:
        assert (await get(app, "/readyz"))[0] == 200
        proxy.cut()
        status, body = await get(app, "/readyz")
        assert status == 503
        assert isinstance(body, dict)
        assert body["checks"]["database"]["ok"] is False
        proxy.restore()
        status, body = await get(app, "/readyz")
        assert status == 200, body
    finally:
        await app.stop()
        await proxy.stop()


async def test_reload_applies_a_valid_file_and_keeps_settings_on_a_bad_one(
        tmp_path: Path, pg_url: str) -> None:
    settings = settings_for(tmp_path, pg_url)
    app = App(settings)
    seen: list[config.Settings] = []

    async def hook(new: config.Settings) -> None:
        seen.append(new)

    app.on_reload(hook)
    settings.source.write_text(settings.source.read_text() + '[log]\nlevel = "debug"\n')
    assert await app.reload() is True
    assert app.settings.log.level == "debug"
    assert [s.log.level for s in seen] == ["debug"]

    settings.source.write_text(settings.source.read_text() + "drain_timeout = 3\n")
    assert await app.reload() is False
    assert app.settings.log.level == "debug"
    assert len(seen) == 1


class HangingComponent:
    """Stands for a component whose drain never finishes."""

    name = "hanging"

    def __init__(self) -> None:
        self.stop_called = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stop_called.set()
        await asyncio.Event().wait()


async def test_stop_is_bounded_and_still_closes_storage(tmp_path: Path, pg_url: str) -> None:
    app = App(settings_for(tmp_path, pg_url))
    hanging = HangingComponent()
    app.components.append(hanging)
    app.last_chance = 2.0
    await app.start()
    pool = app.database.db.pool
    await app.stop(budget=0.2)
    assert hanging.stop_called.is_set()
    assert pool.is_closing()
    assert app.http.addresses == []
