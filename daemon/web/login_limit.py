"""The sign-in rate limit: failed attempts per user name and per address within a sliding
window, kept in Postgres so every node counts the same failures. SQL only.

While a name or an address is over its limit, every attempt is refused, the right
password included (or guessing would simply go on); the block lifts as the oldest
failures leave the window, so nobody is locked out for longer than the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Limits:
    window: float
    per_account: int
    per_address: int


_STATE = """
SELECT (SELECT count(*) FROM web_login_failures
         WHERE username = $1 AND at > now() - make_interval(secs => $3)) AS account,
       (SELECT min(at) FROM (SELECT at FROM web_login_failures
         WHERE username = $1 AND at > now() - make_interval(secs => $3)
         ORDER BY at DESC LIMIT $4) a) AS account_oldest,
       (SELECT count(*) FROM web_login_failures
         WHERE address = $2 AND at > now() - make_interval(secs => $3)) AS address,
       (SELECT min(at) FROM (SELECT at FROM web_login_failures
         WHERE address = $2 AND at > now() - make_interval(secs => $3)
         ORDER BY at DESC LIMIT $5) a) AS address_oldest,
       now() AS now
"""


async def blocked_for(db: asyncpg.Pool, limits: Limits, username: str,
                      address: str) -> float:
    """Seconds until `username` may try again from `address`; 0 when it may now."""
    row = await db.fetchrow(_STATE, username, address, limits.window, limits.per_account,
                            limits.per_address)
    waits = [0.0]
    for count, oldest, limit in ((row["account"], row["account_oldest"], limits.per_account),
                                 (row["address"], row["address_oldest"], limits.per_address)):
        if count >= limit and oldest is not None:
            # Free again once the failure that made it `limit` leaves the window.
            waits.append(limits.window - (row["now"] - oldest).total_seconds())
    return max(waits)


async def record_failure(db: asyncpg.Pool, limits: Limits, username: str,
                         address: str) -> None:
    """Count a failure, and forget those that left the window: guessing from many
    addresses cannot grow the table beyond one window's worth of attempts."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO web_login_failures (username, address) "
                           "VALUES ($1, $2)", username[:256], address[:64])
        await conn.execute(_PRUNE, limits.window)


async def clear(db: asyncpg.Pool, username: str, address: str) -> None:
    """A successful sign-in forgets that name's failures from that address."""
    await db.execute("DELETE FROM web_login_failures WHERE username = $1 AND address = $2",
                     username, address)


_PRUNE = "DELETE FROM web_login_failures WHERE at <= now() - make_interval(secs => $1)"
