"""The send API's key cache against a real Postgres behind a proxy that can cut it: a key
works the moment it is made, known keys keep working while the database is away, and
wrong keys do not turn into one query per request."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from daemon.mail.send_api.keys import ApiKeyRegistry, KeysUnavailable, add_key, remove_key
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


async def test_made_up_ids_cannot_turn_into_a_query_each(tmp_path: Path, pg_url: str) -> None:
    async with mail_web_app(tmp_path, pg_url) as (app, _):
        direct = app.database.db.pool
        keys = ApiKeyRegistry(lambda: direct, refresh_every=3600, lookups_per_second=0.5)
        await keys.start()
        try:
            for n in range(200):
                assert await keys.user_for(f"EG.{n:016d}.secret") is None
            assert len(keys._absent) == 1             # one read: the burst of 2 x 0.5
            # Past the bound even a real new key waits for the next refresh ...
            _, new = await add_key(direct, "app", "made during a flood")
            assert await keys.user_for(new) is None
            await keys.refresh()
            assert await keys.user_for(new) == "app"    # ... and works after it
        finally:
            await keys.stop()
