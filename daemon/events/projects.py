"""Which projects exist and which keys open them, as every ingest request asks.

Projects come from two places: egen.toml (synced into the database at start, so the
database has one list to join issues against) and `egen project add` (database only).
Each node keeps the whole list in memory and re-reads it every few seconds, so a project
added on one node is open on every node shortly after, and an ingest request never
waits for Postgres: while it is away, the last list read stays in force.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from daemon.db.pool import DatabaseError
from daemon.db.refresher import Refresher
from daemon.events.settings import ProjectSettings, check_key, check_name
from daemon.logs import fields, get_logger
from daemon.typedtoml import Invalid

log = get_logger("events.projects")


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    keys: frozenset[str]
    allowed_origins: tuple[str, ...]
    rate_limit: int          # events per minute; 0: none
    min_level: str
    from_config: bool = False

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin in self.allowed_origins


def from_settings(project: ProjectSettings) -> Project:
    return Project(project.id, project.name, frozenset(project.keys),
                   tuple(project.allowed_origins), project.rate_limit, project.min_level,
                   from_config=True)


async def sync_config(pool: asyncpg.Pool, projects: list[ProjectSettings]) -> None:
    """Make the database agree with the config's projects (their keys included); projects
    added with `egen project add` are left alone."""
    async with pool.acquire() as conn, conn.transaction():
        for p in projects:
            clash = await conn.fetchval(
                "SELECT id FROM projects WHERE name = $1 AND id <> $2", p.name, p.id)
            if clash is not None:
                raise ValueError(f"project {p.name!r} has id {clash} in the database but "
                                 f"{p.id} in the config; ids are part of every DSN and "
                                 "cannot change")
            taken = await conn.fetchval(
                "SELECT name FROM projects WHERE id = $1 AND NOT from_config", p.id)
            if taken is not None:
                raise ValueError(f"project id {p.id} of {p.name!r} in the config belongs to "
                                 f"project {taken!r}, added with `egen project add`; give "
                                 "the config's project another id")
            await conn.execute(
                """
                INSERT INTO projects (id, name, from_config, allowed_origins, rate_limit,
                                      min_level)
                VALUES ($1, $2, true, $3, $4, $5)
                ON CONFLICT (id) DO UPDATE SET name = excluded.name, from_config = true,
                    allowed_origins = excluded.allowed_origins,
                    rate_limit = excluded.rate_limit, min_level = excluded.min_level
                """, p.id, p.name, p.allowed_origins, p.rate_limit, p.min_level)
            await conn.execute("DELETE FROM project_keys WHERE project_id = $1 "
                               "AND NOT key = ANY($2::text[])", p.id, p.keys)
            for key in p.keys:
                owner = await conn.fetchval(
                    "INSERT INTO project_keys (key, project_id) VALUES ($1, $2) "
                    "ON CONFLICT (key) DO UPDATE SET key = excluded.key "
                    "RETURNING project_id", key, p.id)
                if owner != p.id:
                    raise ValueError(f"key {key!r} of project {p.name!r} already belongs "
                                     f"to project id {owner} in the database")


async def load_all(pool: asyncpg.Pool | asyncpg.Connection) -> dict[int, Project]:
    rows = await pool.fetch(
        "SELECT p.id, p.name, p.allowed_origins, p.rate_limit, p.min_level, p.from_config, "
        "coalesce(array_agg(k.key ORDER BY k.created_at) FILTER (WHERE k.key IS NOT NULL), "
        "'{}') AS keys FROM projects p LEFT JOIN project_keys k ON k.project_id = p.id "
        "GROUP BY p.id ORDER BY p.id")
    return {r["id"]: Project(r["id"], r["name"], frozenset(r["keys"]),
                             tuple(r["allowed_origins"]), r["rate_limit"], r["min_level"],
                             r["from_config"]) for r in rows}


async def add_project(pool: asyncpg.Pool, name: str, *, project_id: int | None = None,
                      key: str | None = None) -> Project:
    """`egen project add`: a new project with a fresh key (or the given one)."""
    try:
        check_name(name, "name")
        if key is not None:
            check_key(key, "key")
    except Invalid as err:
        raise ValueError(f"{err.key}: {err.message}") from None
    key = key or secrets.token_hex(16)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE projects IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT 1 FROM projects WHERE name = $1", name):
            raise ValueError(f"a project named {name!r} exists already")
        if project_id is None:
            project_id = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM projects")
        elif await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id):
            raise ValueError(f"project id {project_id} is taken")
        if await conn.fetchval("SELECT 1 FROM project_keys WHERE key = $1", key):
            raise ValueError("that key belongs to another project")
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $2)", project_id, name)
        await conn.execute("INSERT INTO project_keys (key, project_id) VALUES ($1, $2)",
                           key, project_id)
        return (await load_all(conn))[project_id]


def _keys_of(projects: dict[int, Project]) -> dict[str, Project]:
    return {key: project for project in projects.values() for key in project.keys}


class ProjectRegistry:
    """The in-memory project list of this node (see the module docstring)."""

    name = "projects"

    def __init__(self, configured: list[ProjectSettings], pool: Callable[[], asyncpg.Pool],
                 *, refresh_every: float = 5.0) -> None:
        self._configured = configured
        self._pool = pool
        # Until the database answers, the config's projects are open.
        self.by_id: dict[int, Project] = {p.id: from_settings(p) for p in configured}
        self.by_key: dict[str, Project] = _keys_of(self.by_id)
        self._refresher = Refresher("projects", self.refresh, every=refresh_every)

    def get(self, project_id: int) -> Project | None:
        return self.by_id.get(project_id)

    def for_key(self, key: str) -> Project | None:
        return self.by_key.get(key)

    async def start(self) -> None:
        await sync_config(self._pool(), self._configured)
        await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def reload(self, projects: Sequence[ProjectSettings]) -> None:
        """SIGHUP: the config's projects as they are now (a key removed from egen.toml
        stops working at once, not at the next restart)."""
        try:
            await sync_config(self._pool(), list(projects))
            self._configured = list(projects)
            await self.refresh()
        except (ValueError, DatabaseError, asyncpg.PostgresError, asyncpg.InterfaceError,
                OSError, TimeoutError) as err:
            log.error("projects reload failed; keeping the previous projects",
                      extra=fields(error=f"{type(err).__name__}: {err}"))

    async def refresh(self) -> None:
        self.by_id = await load_all(self._pool())
        self.by_key = _keys_of(self.by_id)


async def add_key(pool: asyncpg.Pool, project_id: int, key: str | None = None) -> str:
    """A new key for a project kept in the database (the config's projects get their keys
    from egen.toml, which would take a key added here away again at the next start)."""
    if key is not None:
        try:
            check_key(key, "key")
        except Invalid as err:
            raise ValueError(f"{err.key}: {err.message}") from None
    key = key or secrets.token_hex(16)
    async with pool.acquire() as conn, conn.transaction():
        from_config = await conn.fetchval("SELECT from_config FROM projects WHERE id = $1",
                                          project_id)
        if from_config is None:
            raise ValueError(f"no project with id {project_id}")
        if from_config:
            raise ValueError("this project is kept in egen.toml: add the key to its "
                             "`keys` there and reload")
        owner = await conn.fetchval(
            "INSERT INTO project_keys (key, project_id) VALUES ($1, $2) "
            "ON CONFLICT (key) DO NOTHING RETURNING project_id", key, project_id)
        if owner is None:
            raise ValueError("that key belongs to a project already")
    return key
