"""Re-reading a small table into memory every few seconds, for lookups that must not
wait for Postgres (ingest keys, send-API keys): while the database is away the last copy
read stays in force, and the log says so once per outage, not once per attempt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg

from daemon.logs import fields, get_logger

log = get_logger("db.refresh")

TRANSIENT = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Refresher:
    def __init__(self, what: str, refresh: Callable[[], Awaitable[None]], *,
                 every: float) -> None:
        self.what = what
        self.refresh = refresh
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self.what}-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.refresh()
            except TRANSIENT as err:
                if not self._failing:
                    log.warning(f"cannot refresh {self.what}; keeping the last list",
                                extra=fields(error=f"{type(err).__name__}: {err}"))
                self._failing = True
                continue
            except Exception:       # a bug: say so, and keep refreshing
                log.exception(f"cannot refresh {self.what}; keeping the last list")
                continue
            if self._failing:
                log.info(f"{self.what} refreshed again")
                self._failing = False
