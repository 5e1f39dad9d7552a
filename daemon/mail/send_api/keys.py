"""Keys for the HTTP send API: made and removed with `egen user api-key`, kept in
Postgres, and held in memory by each node so that sending never waits for the database.

A key made after the last refresh is looked up by its id, so a key works the moment
`add` prints it. Such reads are bounded for the whole node (LOOKUPS_PER_SECOND, two at a
time), since anyone can make up ids: past the bound an id not in the copy is refused
until the next refresh, and ids found missing are remembered until then.

A key belongs to an SMTP user of egen.toml and carries nothing of its own: the user's
allowed senders and rate limit apply to it, as to that user's SMTP logins. A user taken
out of egen.toml takes its keys' power with it, without deleting their rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from daemon.db.refresher import TRANSIENT, Refresher
from daemon.ratelimit import TokenBucket

PREFIX = "EG"
_ID = re.compile(r"[A-Za-z0-9_-]{16}")
_ID_ALPHABET = string.ascii_letters + string.digits
MAX_LABEL = 200
MAX_ABSENT = 10_000          # ids remembered as missing between two refreshes
LOOKUP_TIMEOUT = 2.0
LOOKUPS_PER_SECOND = 10


class KeysUnavailable(Exception):
    """A key not in this node's copy, and the database cannot be asked about it now."""


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
    """Letters and digits only: an id starting with '-' would read as an option in
    `egen user api-key remove ID`."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


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

    def __init__(self, pool: Callable[[], asyncpg.Pool], *, refresh_every: float = 5.0,
                 lookups_per_second: float = LOOKUPS_PER_SECOND) -> None:
        self._pool = pool
        self.by_id: dict[str, ApiKey] = {}
        self._absent: set[str] = set()
        self._lookups = TokenBucket(rate=lookups_per_second, burst=2 * lookups_per_second)
        self._reading = asyncio.Semaphore(2)
        self._refresher = Refresher("send API keys", self.refresh, every=refresh_every)

    async def user_for(self, token: str) -> str | None:
        """The user a token belongs to, or None; the comparison takes the same time
        however much of the secret is right."""
        parts = split(token)
        if parts is None:
            return None
        key = self.by_id.get(parts[0])
        if (key is None and parts[0] not in self._absent
                and self._lookups.take("lookups")):
            async with self._reading:
                key = await self._look_up(parts[0])
        if key is None or not hmac.compare_digest(key.secret_sha256, _digest(parts[1])):
            return None
        return key.user_name

    async def _look_up(self, key_id: str) -> ApiKey | None:
        try:
            row = await asyncio.wait_for(self._pool().fetchrow(
                "SELECT * FROM mail_api_keys WHERE id = $1", key_id), LOOKUP_TIMEOUT)
        except TRANSIENT as err:
            raise KeysUnavailable(f"{type(err).__name__}: {err}") from None
        if row is None:
            if len(self._absent) < MAX_ABSENT:
                self._absent.add(key_id)
            return None
        key = ApiKey(**dict(row))
        self.by_id = {**self.by_id, key.id: key}
        return key

    async def refresh(self) -> None:
        keys = {key.id: key for key in await list_keys(self._pool())}
        self.by_id, self._absent = keys, set()

    async def start(self) -> None:
        await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()
