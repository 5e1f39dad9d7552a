"""Signed-in browsers: `web_sessions` rows. SQL only.

The cookie carries a random token; the table keeps only its SHA-256, so a copy of the
database signs nobody in. A session ends when idle for `session_idle`, at the latest
`session_lifetime` after sign-in, at sign-out, and when its user's password changes or
the user is removed. Each carries its own CSRF token for the forms it is shown.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

# last_seen_at is written at most this often per session (not on every page view).
TOUCH_EVERY = 60.0


@dataclass(frozen=True)
class Session:
    token_hash: bytes
    user_id: int
    user: str
    admin: bool
    csrf_token: str


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


async def create(db: asyncpg.Pool, user_id: int, *, address: str, user_agent: str) -> str:
    """A new session for the user; the token for the cookie."""
    token = secrets.token_urlsafe(32)
    await db.execute(
        "INSERT INTO web_sessions (token_hash, user_id, csrf_token, address, user_agent) "
        "VALUES ($1, $2, $3, $4, $5)", token_hash(token), user_id, secrets.token_urlsafe(32),
        address[:64], user_agent[:512])
    return token


_LOOKUP = """
WITH found AS (
    SELECT s.token_hash, s.user_id, u.name, u.admin, s.csrf_token, s.last_seen_at
      FROM web_sessions s JOIN web_users u ON u.id = s.user_id
     WHERE s.token_hash = $1
       AND s.created_at > now() - make_interval(secs => $2)
       AND s.last_seen_at > now() - make_interval(secs => $3)
), touched AS (
    UPDATE web_sessions s SET last_seen_at = now() FROM found f
     WHERE s.token_hash = f.token_hash
       AND f.last_seen_at < now() - make_interval(secs => $4)
)
SELECT * FROM found
"""


async def lookup(db: asyncpg.Pool, token: str, *, idle: float, lifetime: float
                 ) -> Session | None:
    """The live session the cookie's token opens, or None; refreshes its idle clock."""
    if not token or len(token) > 128:
        return None
    row = await db.fetchrow(_LOOKUP, token_hash(token), lifetime, idle, TOUCH_EVERY)
    if row is None:
        return None
    return Session(row["token_hash"], row["user_id"], row["name"], row["admin"],
                   row["csrf_token"])


async def end(db: asyncpg.Pool, session: Session) -> None:
    await db.execute("DELETE FROM web_sessions WHERE token_hash = $1", session.token_hash)


async def prune(db: asyncpg.Pool, *, idle: float, lifetime: float) -> int:
    """Forget sessions that can no longer be used; how many."""
    done = await db.execute(
        "DELETE FROM web_sessions WHERE created_at <= now() - make_interval(secs => $1) "
        "OR last_seen_at <= now() - make_interval(secs => $2)", lifetime, idle)
    return int(done.split()[-1])
