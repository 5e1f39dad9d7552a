"""The `nodes` table: one row per running egen process sharing the database."""

from __future__ import annotations

import os
import secrets
import socket

import asyncpg


def new_node_id() -> str:
    """A fresh id for this process: "<hostname>:<pid>:<random>"."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def register_node(pool: asyncpg.Pool, node_id: str, version: str) -> None:
    """Announce this process (hostname and pid are this process's own)."""
    await pool.execute(
        """
        INSERT INTO nodes (id, hostname, pid, version) VALUES ($1, $2, $3, $4)
        ON CONFLICT (id) DO UPDATE
            SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, version = EXCLUDED.version,
                started_at = now(), heartbeat_at = now()
        """,
        node_id, socket.gethostname(), os.getpid(), version,
    )


async def heartbeat(pool: asyncpg.Pool, node_id: str) -> bool:
    """Mark the node alive now. False if its row is gone (e.g. pruned as dead): re-register."""
    status = await pool.execute("UPDATE nodes SET heartbeat_at = now() WHERE id = $1",
                                node_id)
    return status == "UPDATE 1"


async def unregister_node(pool: asyncpg.Pool, node_id: str) -> None:
    await pool.execute("DELETE FROM nodes WHERE id = $1", node_id)


async def list_nodes(pool: asyncpg.Pool) -> list[dict[str, object]]:
    """Every registered process, newest heartbeat first, with seconds since it."""
    rows = await pool.fetch(
        """
        SELECT id, hostname, pid, version, started_at, heartbeat_at,
               extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
        FROM nodes ORDER BY heartbeat_at DESC, id
        """)
    return [dict(row) for row in rows]
