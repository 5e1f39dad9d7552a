"""The asyncpg pool egen shares: connects (to `database.url` or the embedded cluster),
migrates, and answers readiness probes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson

from daemon.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from daemon.db.migrate import MigrationError, migrate
from daemon.logs import fields, get_logger
from daemon.urlmask import mask_url_password

if TYPE_CHECKING:
    from daemon.config import DatabaseSettings

log = get_logger("db")

_CLOSE_TIMEOUT = 10.0
_MAX_BACKOFF = 2.0

# Worth another try while connect_timeout lasts: the server is down, starting, full, or
# the network dropped us (SQLSTATE class 08). Anything else (bad password, no such
# database, malformed URL) will not fix itself.
_RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
)


class DatabaseError(Exception):
    """The database could not be started, reached or migrated. The message is safe to show
    (no password); the embedded or migration error, if any, is its __cause__."""


# What a request that reads or writes Postgres may meet while the database is away: the
# pool is closed or being replaced, Postgres restarts, refuses connections, cancels the
# statement (statement_timeout) or the network drops. Worth answering 503, not 500.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    DatabaseError,
    OSError,
    TimeoutError,
)


def _secrets_in(url: str) -> list[str]:
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [unquote(v) for v in re.findall(r"(?i)(?:^|&)password=([^&]*)", parts.query)]
    except ValueError:
        pass
    return [s for s in found if s]


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog"
        )


class Database:
    """Owns the pool (and the embedded cluster when there is no URL)."""

    def __init__(
        self,
        *,
        url: str | None,
        data_dir: Path,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        owns_embedded: bool = True,
    ) -> None:
        """`owns_embedded`: the daemon stops the embedded server on exit even when it
        adopted one a killed predecessor left running; an operator verb (False) stops it
        only if it started it, so it never pulls the database from under a running daemon."""
        self._url = url
        self._data_dir = data_dir
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._pool: asyncpg.Pool | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._owns_embedded = owns_embedded

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseError("database is not started")
        return self._pool

    @property
    def dsn_for_display(self) -> str:
        if self._url is None:
            return f"embedded ({self._data_dir})"
        return mask_url_password(self._url)

    async def start(self) -> None:
        """Start the embedded cluster if needed, connect, apply migrations."""
        if self._pool is not None:
            return
        try:
            dsn = self._url
            if dsn is None:
                self._embedded = EmbeddedPostgres(self._data_dir)
                try:
                    dsn = await asyncio.to_thread(self._embedded.start)
                except EmbeddedPostgresError as exc:
                    raise DatabaseError(str(exc)) from exc
            self._pool = await self._connect(dsn)
            try:
                async with self._pool.acquire() as conn:
                    applied = await migrate(conn)
            except MigrationError as exc:
                raise DatabaseError(str(exc)) from exc
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise DatabaseError(
                    f"applying migrations on {self.dsn_for_display} failed: {self._scrub(exc)}"
                ) from None
        except BaseException:
            try:
                await self.stop()
            except Exception as exc:  # keep the original error; this one is secondary
                log.error("cleanup after failed database start failed",
                          extra=fields(error=self._scrub(exc)))
            raise
        log.info("database ready", extra=fields(
            database=self.dsn_for_display, migrations_applied=applied))

    async def stop(self) -> None:
        """Close the pool (waiting at most a few seconds), then stop the embedded cluster."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=_CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("database pool did not close in time, terminating connections",
                            extra=fields(timeout=_CLOSE_TIMEOUT))
                pool.terminate()
        embedded, self._embedded = self._embedded, None
        if embedded is not None and (self._owns_embedded or not embedded.adopted):
            try:
                await asyncio.to_thread(embedded.stop)
            except EmbeddedPostgresError as exc:
                raise DatabaseError(str(exc)) from exc

    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - a probe's budget
        """SELECT 1 within `timeout`; False on any failure (for /readyz)."""
        pool = self._pool
        if pool is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                return await pool.fetchval("SELECT 1") == 1
        except Exception as exc:
            log.debug("database ping failed", extra=fields(error=self._scrub(exc)))
            return False

    async def _connect(self, dsn: str) -> asyncpg.Pool:
        """Create the pool, retrying with backoff until connect_timeout has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        delay = 0.1
        attempts = 0
        while True:
            attempts += 1
            try:
                return await asyncpg.create_pool(
                    dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=max(deadline - loop.time(), 0.5),
                    init=_init_connection,
                    server_settings={
                        "application_name": "egen",
                        "statement_timeout": str(int(self._statement_timeout * 1000)),
                    },
                )
            except _RETRYABLE as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DatabaseError(
                        f"cannot connect to Postgres at {self.dsn_for_display} within "
                        f"{self._connect_timeout:g}s ({attempts} attempts): {self._scrub(exc)}"
                    ) from None
                log.info("postgres not reachable yet, retrying", extra=fields(
                    database=self.dsn_for_display, error=self._scrub(exc), attempt=attempts))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _MAX_BACKOFF)
            except Exception as exc:
                raise DatabaseError(
                    f"cannot connect to Postgres at {self.dsn_for_display}: {self._scrub(exc)}"
                ) from None

    def _scrub(self, exc: BaseException) -> str:
        """'ExcClass: message' with any password from the URL blanked out."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in _secrets_in(self._url or ""):
            text = text.replace(secret, "***")
        return text


def database_for(db: DatabaseSettings, state_dir: Path, *,
                 owns_embedded: bool = True) -> Database:
    """The database the `[database]` section describes (the embedded cluster under
    `state_dir` when it names no URL); operator verbs pass owns_embedded=False."""
    return Database(
        url=db.url.reveal() if db.url is not None else None,
        data_dir=state_dir / "postgres",
        min_size=db.pool_min_size if owns_embedded else 0,
        max_size=db.pool_max_size if owns_embedded else 2,
        connect_timeout=db.connect_timeout, statement_timeout=db.statement_timeout,
        owns_embedded=owns_embedded)
