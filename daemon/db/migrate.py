"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied once each, in order, at start.

All pending migrations run in one transaction under a Postgres advisory lock, so several egen
processes starting together serialize: the first applies, the others find nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from daemon.logs import fields, get_logger

log = get_logger("db")

# Fixed key for pg_advisory_xact_lock: the bytes "egen-mig" as a signed 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"egen-mig", "big", signed=True)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A migration that commits on its own would break the all-or-nothing guarantee.
_TX_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\s*;", re.IGNORECASE | re.MULTILINE
)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration file is misnamed, misnumbered or failed; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "0001_nodes.sql"
    sql: str


def default_source() -> Traversable:
    return files("daemon.db") / "migrations"


def load_migrations(source: Traversable | Path | None = None) -> list[Migration]:
    """Read and check every migration file; raises MigrationError on any naming problem."""
    source = default_source() if source is None else source
    found: dict[int, Migration] = {}
    for entry in source.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue  # editor droppings, __pycache__
        m = _FILE_NAME.match(entry.name)
        if m is None:
            raise MigrationError(
                f"migration file {entry.name!r} in {source} does not match NNNN_name.sql "
                "(four digits, underscore, lowercase name)"
            )
        version = int(m[1])
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name} and {entry.name} have the same number"
            )
        sql = entry.read_text(encoding="utf-8")
        if _TX_CONTROL.search(sql):
            raise MigrationError(
                f"migration {entry.name} controls transactions itself (BEGIN/COMMIT); "
                "remove that: every migration already runs in one transaction"
            )
        found[version] = Migration(version, entry.name, sql)
    ordered = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration numbers must run 0001, 0002, ... without gaps: "
                f"{migration.name} found where {expected:04d} was expected"
            )
    return ordered


def _describe(exc: asyncpg.PostgresError, sql: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    position = getattr(exc, "position", None)
    if position:
        with_line = sql[: int(position) - 1].count("\n") + 1
        text += f" (line {with_line})"
    return text


async def migrate(
    conn: asyncpg.Connection, source: Traversable | Path | None = None
) -> list[int]:
    """Apply the missing migrations; returns the versions applied (empty if none)."""
    migrations = load_migrations(source)
    applied: list[int] = []
    async with conn.transaction():
        # Waiting for the lock or a long migration must not hit the pool's statement_timeout.
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute("SET LOCAL client_min_messages = warning")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        known = {m.version for m in migrations}
        if unknown := sorted(done - known):
            log.warning("database has migrations this egen does not know (newer egen?)",
                        extra=fields(versions=unknown))
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.name} failed, nothing was applied: "
                    f"{_describe(exc, migration.sql)}"
                ) from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version, migration.name,
            )
            applied.append(migration.version)
    for migration in migrations:
        if migration.version in applied:
            log.info("applied migration",
                     extra=fields(version=migration.version, name=migration.name))
    return applied
