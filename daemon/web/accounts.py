"""The people who may read the pages: `web_users` rows, from the config (synced at
start) or from `egen web user add`. SQL only; passwords are hashed by
daemon.passwords (scrypt), the same scheme as SMTP users, and verified off the loop.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import asyncpg

from daemon.passwords import PasswordHash, hash_password, parse_hash
from daemon.typedtoml import Invalid
from daemon.web.settings import WebUserSettings, check_user_name


@functools.cache
def _dummy() -> PasswordHash:
    """Verified when the user name is unknown, so a wrong name costs what a wrong password
    does and the answer's timing does not tell which names exist."""
    return parse_hash(hash_password("egen-no-such-user"))


class AccountError(ValueError):
    """A user cannot be added, changed or removed; the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    admin: bool
    from_config: bool


def _user(row: Any) -> User:
    return User(row["id"], row["name"], row["admin"], row["from_config"])


def _check_name(name: str) -> None:
    try:
        check_user_name(name, "name")
    except Invalid as err:
        raise AccountError(f"{err.key}: {err.message}") from None


async def add_user(db: asyncpg.Pool, name: str, password: str, *, admin: bool = False
                   ) -> User:
    _check_name(name)
    if not password:
        raise AccountError("password: must not be empty")
    hashed = await asyncio.to_thread(hash_password, password)
    row = await db.fetchrow(
        "INSERT INTO web_users (name, password_hash, admin) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO NOTHING RETURNING *", name, hashed, admin)
    if row is None:
        raise AccountError(f"a user named {name!r} exists already")
    return _user(row)


async def list_users(db: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT u.id, u.name, u.admin, u.from_config, u.created_at, "
        "u.password_changed_at, count(s.token_hash) AS sessions, "
        "max(s.last_seen_at) AS last_seen FROM web_users u "
        "LEFT JOIN web_sessions s ON s.user_id = u.id GROUP BY u.id ORDER BY u.name")
    return [dict(r) for r in rows]


async def _from_config(db: asyncpg.Pool, name: str) -> bool:
    found = await db.fetchval("SELECT from_config FROM web_users WHERE name = $1", name)
    if found is None:
        raise AccountError(f"no user named {name!r}")
    return bool(found)


async def remove_user(db: asyncpg.Pool, name: str) -> None:
    """Remove a user; their sessions end with them."""
    if await _from_config(db, name):
        raise AccountError(f"user {name!r} is kept in the config ([web.users.{name}]): "
                           "remove it there")
    await db.execute("DELETE FROM web_users WHERE name = $1", name)


async def set_password(db: asyncpg.Pool, name: str, password: str) -> int:
    """A new password; every session of the user ends. The number of sessions ended."""
    if not password:
        raise AccountError("password: must not be empty")
    if await _from_config(db, name):
        raise AccountError(f"user {name!r} is kept in the config ([web.users.{name}]): "
                           "change its password_hash there")
    hashed = await asyncio.to_thread(hash_password, password)
    async with db.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE web_users SET password_hash = $2, password_changed_at = now() "
            "WHERE name = $1 RETURNING id", name, hashed)
        ended = await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id)
    return int(ended.split()[-1])


async def sync_config(db: asyncpg.Pool, users: dict[str, WebUserSettings]) -> None:
    """Make the database agree with the config's users: add and update them, and remove
    users that came from the config and are not in it any more."""
    async with db.acquire() as conn, conn.transaction():
        for name, user in users.items():
            clash = await conn.fetchval(
                "SELECT 1 FROM web_users WHERE name = $1 AND NOT from_config", name)
            if clash:
                raise ValueError(f"web user {name!r} is in the config and was also added "
                                 "with `egen web user add`; remove one of them")
            old = await conn.fetchval("SELECT password_hash FROM web_users WHERE name = $1",
                                      name)
            hashed = user.password_hash.reveal()
            await conn.execute(
                "INSERT INTO web_users (name, password_hash, admin, from_config) "
                "VALUES ($1, $2, $3, true) ON CONFLICT (name) DO UPDATE SET "
                "password_hash = excluded.password_hash, admin = excluded.admin, "
                "password_changed_at = CASE WHEN web_users.password_hash = "
                "excluded.password_hash THEN web_users.password_changed_at ELSE now() END",
                name, hashed, user.admin)
            if old is not None and old != hashed:    # a changed password ends sessions
                await conn.execute("DELETE FROM web_sessions WHERE user_id = "
                                   "(SELECT id FROM web_users WHERE name = $1)", name)
        await conn.execute("DELETE FROM web_users WHERE from_config "
                           "AND NOT name = ANY($1::text[])", list(users))


async def authenticate(db: asyncpg.Pool, name: str, password: str) -> User | None:
    """The user when `password` is theirs, else None (in the same time either way)."""
    row = await db.fetchrow("SELECT * FROM web_users WHERE name = $1", name)
    if row is None:
        await asyncio.to_thread(lambda: _dummy().verify(password))
        return None
    try:
        stored = parse_hash(row["password_hash"])
    except ValueError:
        await asyncio.to_thread(lambda: _dummy().verify(password))
        return None
    return _user(row) if await asyncio.to_thread(stored.verify, password) else None
