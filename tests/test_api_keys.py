"""The send API's key cache against a real Postgres behind a proxy that can cut it: a key
works the moment it is made, known keys keep working while the database is away, and
wrong keys do not turn into one query per request."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from daemon.mail.api_keys import ApiKeyRegistry, KeysUnavailable, add_key, remove_key
from tests.mail_webfixtures import mail_web_app
from tests.test_app import proxied


async def test_new_keys_work_at_once_and_known_ones_survive_an_outage(
        tmp_path: Path, pg_url: str) -> None:
    async with mail_web_app(tmp_path, pg_url) as (app, _):
        direct = app.database.db.pool
        _, old = await add_key(direct, "app", "before start")
        proxy, _ = proxied(pg_url, 0)
        await proxy.start()
        _, url = proxied(pg_url, proxy.port)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        keys = ApiKeyRegistry(lambda: pool, refresh_every=3600)
        try:
            await keys.start()
            _, new = await add_key(direct, "alerts", "made after the last refresh")
            assert await keys.user_for(old) == "app"
            assert await keys.user_for(new) == "alerts"
            wrong = "EG.AAAAAAAAAAAAAAAA.secret"
            assert await keys.user_for(wrong) is None
            assert await keys.user_for(new[:-1] + "x") is None

            proxy.cut()
            assert await keys.user_for(old) == "app"
            assert await keys.user_for(new) == "alerts"
            assert await keys.user_for(wrong) is None      # remembered: no query needed
            with pytest.raises(KeysUnavailable):
                await keys.user_for("EG.BBBBBBBBBBBBBBBB.secret")
            proxy.restore()

            assert await remove_key(direct, new)
            await keys.refresh()
            assert await keys.user_for(new) is None
            assert await keys.user_for(old) == "app"
        finally:
            await keys.stop()
            await pool.close()
            await proxy.stop()
