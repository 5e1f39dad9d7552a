"""Keys for the HTTP send API: made and removed with `egen user api-key`, kept in
Postgres, and held in memory by each node so that sending never waits for the database.

A key belongs to an SMTP user of egen.toml and carries nothing of its own: the user's
allowed senders and rate limit apply to it, as to that user's SMTP logins. A user taken
out of egen.toml takes its keys' power with it, without deleting their rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from daemon.db.refresher import Refresher

PREFIX = "EG"
_ID = re.compile(r"[A-Za-z0-9_-]{16}")
MAX_LABEL = 200


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_name: str
    label: str
    secret_sha256: bytes
    created_at: datetime

    def shown(self) -> str:
        """What `list` prints: enough to recognise a key, nothing to use it."""
        return f"{PREFIX}.{self.id}.…"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def split(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key; None for anything else."""
    prefix, _, rest = token.partition(".")
    key_id, _, secret = rest.partition(".")
    if prefix != PREFIX or not _ID.fullmatch(key_id) or not secret:
        return None
    return key_id, secret


def _new_id() -> str:
    while True:
        key_id = secrets.token_urlsafe(12)
        if _ID.fullmatch(key_id):       # 16 characters; token_urlsafe never adds '='
            return key_id


async def add_key(pool: asyncpg.Pool, user_name: str, label: str = "") -> tuple[ApiKey, str]:
    """A new key for `user_name` and the whole token, which is not kept anywhere."""
    if len(label) > MAX_LABEL:
        raise ValueError(f"the label is {len(label)} characters long; at most {MAX_LABEL}")
    key_id, secret = _new_id(), secrets.token_urlsafe(32)
    row = await pool.fetchrow(
        "INSERT INTO mail_api_keys (id, user_name, label, secret_sha256) "
        "VALUES ($1, $2, $3, $4) RETURNING *", key_id, user_name, label, _digest(secret))
    return ApiKey(**dict(row)), f"{PREFIX}.{key_id}.{secret}"


async def list_keys(pool: asyncpg.Pool | asyncpg.Connection,
                    user_name: str | None = None) -> list[ApiKey]:
    rows = await pool.fetch(
        "SELECT * FROM mail_api_keys WHERE $1::text IS NULL OR user_name = $1 "
        "ORDER BY user_name, created_at, id", user_name)
    return [ApiKey(**dict(row)) for row in rows]


async def remove_key(pool: asyncpg.Pool, key_id: str) -> bool:
    """Accepts the id or a whole token; True when a key was removed."""
    parts = split(key_id)
    found = await pool.fetchval("DELETE FROM mail_api_keys WHERE id = $1 RETURNING id",
                                parts[0] if parts else key_id)
    return found is not None


class ApiKeyRegistry:
    """This node's copy of the keys (see the module docstring); started after the
    database, refreshed every few seconds."""

    name = "api-keys"

    def __init__(self, pool: Callable[[], asyncpg.Pool], *, refresh_every: float = 5.0
                 ) -> None:
        self._pool = pool
        self.by_id: dict[str, ApiKey] = {}
        self._refresher = Refresher("send API keys", self.refresh, every=refresh_every)

    def user_for(self, token: str) -> str | None:
        """The user a token belongs to, or None; the comparison takes the same time
        however much of the secret is right."""
        parts = split(token)
        if parts is None:
            return None
        key = self.by_id.get(parts[0])
        if key is None or not hmac.compare_digest(key.secret_sha256, _digest(parts[1])):
            return None
        return key.user_name

    async def refresh(self) -> None:
        self.by_id = {key.id: key for key in await list_keys(self._pool())}

    async def start(self) -> None:
        await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()
