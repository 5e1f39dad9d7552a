"""The database layer against real Postgres: embedded cluster, pool, migrations, nodes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from daemon.db import Database, DatabaseError, EmbeddedPostgres, MigrationError, mask_password
from daemon.db.migrate import MIGRATION_LOCK_KEY, load_migrations, migrate
from daemon.db.nodes import heartbeat, new_node_id, register_node, unregister_node
from daemon.db.pghost import wait_gone
from tests.pgfixtures import private_tmpdir

# -- helpers ------------------------------------------------------------------------------


def _live_processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, ppid, cmdline) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = raw.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            yield int(entry.name), int(ppid), cmdline


def _cluster_processes(data_dir: Path, postmaster: int | None = None) -> list[int]:
    """Live processes that mention data_dir on their command line or are the postmaster's."""
    needle = os.fsencode(str(data_dir))
    return [
        pid for pid, ppid, cmdline in _live_processes()
        if needle in cmdline or (postmaster is not None and postmaster in (pid, ppid))
    ]


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A private data dir for tests that need their own cluster."""
    tmp = private_tmpdir()
    yield tmp / "pg"
    EmbeddedPostgres(tmp / "pg").stop()  # in case the test failed half-way
    shutil.rmtree(tmp, ignore_errors=True)


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# -- embedded Postgres --------------------------------------------------------------------


@pytest.mark.slow
async def test_embedded_start_stop_restart_keeps_data(cluster_dir: Path) -> None:
    pg = EmbeddedPostgres(cluster_dir)
    assert not pg.running
    dsn = await asyncio.to_thread(pg.start)
    assert pg.running
    assert await _fetchval(dsn, "SELECT 1") == 1
    assert await _fetchval(dsn, "SELECT current_database()") == "egen"
    assert await _fetchval(dsn, "SHOW listen_addresses") == ""
    assert await _fetchval(dsn, "SHOW fsync") == "on"
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
    await conn.close()
    assert _mode(cluster_dir) == 0o700

    postmaster = _postmaster_pid(cluster_dir)
    await asyncio.to_thread(pg.stop)
    assert not pg.running
    assert _cluster_processes(cluster_dir, postmaster) == []
    await asyncio.to_thread(pg.stop)  # idempotent

    dsn = await asyncio.to_thread(pg.start)
    assert await _fetchval(dsn, "SELECT v FROM kept") == "hello"
    await asyncio.to_thread(pg.stop)
    assert not pg.running


@pytest.mark.slow
async def test_embedded_adopts_server_left_running(cluster_dir: Path) -> None:
    first = EmbeddedPostgres(cluster_dir)
    dsn = await asyncio.to_thread(first.start)
    started = await _fetchval(dsn, "SELECT pg_postmaster_start_time()")
    postmaster = _postmaster_pid(cluster_dir)

    # egen was killed: a new process finds the server still running and uses it.
    second = EmbeddedPostgres(cluster_dir)
    dsn2 = await asyncio.to_thread(second.start)
    assert dsn2 == dsn
    assert await _fetchval(dsn2, "SELECT pg_postmaster_start_time()") == started
    assert _postmaster_pid(cluster_dir) == postmaster

    await asyncio.to_thread(second.stop)
    assert not second.running and not first.running
    assert _cluster_processes(cluster_dir, postmaster) == []
    await asyncio.to_thread(first.stop)  # nothing left to stop


@pytest.mark.slow
async def test_embedded_starts_after_cluster_was_killed(cluster_dir: Path) -> None:
    pg = EmbeddedPostgres(cluster_dir)
    dsn = await asyncio.to_thread(pg.start)
    postmaster = _postmaster_pid(cluster_dir)
    # kill -9 the whole cluster, as systemd does with egen's cgroup: postmaster.pid stays.
    victims = _cluster_processes(cluster_dir, postmaster)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for pid in victims:   # SIGKILL is delivered asynchronously: wait for the deaths
        assert await asyncio.to_thread(wait_gone, pid, 10.0)
    assert (cluster_dir / "postmaster.pid").exists()
    assert not pg.running

    # ...and the stale PID now belongs to an unrelated live process (PID reuse).
    lines = (cluster_dir / "postmaster.pid").read_text().split("\n")
    lines[0] = str(os.getpid())
    (cluster_dir / "postmaster.pid").write_text("\n".join(lines))

    dsn = await asyncio.to_thread(pg.start)
    assert await _fetchval(dsn, "SELECT 1") == 1
    assert _postmaster_pid(cluster_dir) != os.getpid()
    await asyncio.to_thread(pg.stop)
    assert not pg.running


@pytest.mark.slow
async def test_embedded_long_data_dir_uses_short_socket_dir(cluster_dir: Path) -> None:
    deep = cluster_dir.parent / ("d" * 60) / ("e" * 60) / "pg"
    deep.parent.mkdir(parents=True)
    pg = EmbeddedPostgres(deep)
    assert pg.socket_dir != deep and len(str(pg.socket_dir)) < 40
    try:
        dsn = await asyncio.to_thread(pg.start)
        assert await _fetchval(dsn, "SELECT 1") == 1
        assert _mode(pg.socket_dir) == 0o700
        assert os.stat(pg.socket_dir).st_uid == os.stat(deep).st_uid
    finally:
        await asyncio.to_thread(pg.stop)
    assert not pg.socket_dir.exists()


def test_embedded_rejects_bad_database_name(tmp_path: Path) -> None:
    from daemon.db import EmbeddedPostgresError

    with pytest.raises(EmbeddedPostgresError, match="invalid embedded database name"):
        EmbeddedPostgres(tmp_path, database='x"; DROP')


# -- migrations ---------------------------------------------------------------------------


def test_packaged_migrations_are_consecutive() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_nodes.sql"


async def test_migrate_applies_once(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        versions = [m.version for m in load_migrations()]
        assert await migrate(conn) == versions
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        assert rows[0]["name"] == "0001_nodes.sql"
        assert await conn.fetchval("SELECT to_regclass('nodes')") is not None
    finally:
        await conn.close()


async def test_concurrent_migrate_applies_exactly_once(pg_url: str, tmp_path: Path) -> None:
    source = _write(tmp_path / "m", {
        "0001_a.sql": "CREATE TABLE a (id int);",
        "0002_b.sql": "CREATE TABLE b (id int);\nINSERT INTO b VALUES (1);",
    })
    holder, c1, c2 = [await asyncpg.connect(pg_url) for _ in range(3)]
    try:
        # Hold the migration lock so both migrations are provably waiting on it.
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        tasks = [asyncio.create_task(migrate(c, source)) for c in (c1, c2)]
        waiting = """SELECT count(*) FROM pg_locks
                     WHERE locktype = 'advisory' AND NOT granted
                       AND database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())"""
        async with asyncio.timeout(10):
            while await holder.fetchval(waiting) < 2:
                pass
        await tx.commit()
        results = await asyncio.gather(*tasks)
        assert sorted(results) == [[], [1, 2]]
        rows = await c1.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
        assert await c1.fetchval("SELECT count(*) FROM b") == 1
    finally:
        for c in (holder, c1, c2):
            await c.close()


async def test_failing_migration_rolls_back_everything(pg_url: str, tmp_path: Path) -> None:
    first = _write(tmp_path / "first", {"0001_ok.sql": "CREATE TABLE ok_table (id int);"})
    second = _write(tmp_path / "second", {
        "0001_ok.sql": "CREATE TABLE ok_table (id int);",
        "0002_more.sql": "CREATE TABLE more_table (id int);",
        "0003_bad.sql": "CREATE TABLE bad_table (id int);\nSELECT * FROM no_such_table;\n",
    })
    conn = await asyncpg.connect(pg_url)
    try:
        assert await migrate(conn, first) == [1]
        with pytest.raises(MigrationError) as err:
            await migrate(conn, second)
        message = str(err.value)
        assert "0003_bad.sql" in message
        assert "no_such_table" in message and "line 2" in message
        rows = await conn.fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in rows] == [1]
        assert await conn.fetchval("SELECT to_regclass('more_table')") is None
        assert await conn.fetchval("SELECT to_regclass('bad_table')") is None
        assert await migrate(conn, first) == []  # the connection is usable again
    finally:
        await conn.close()


async def test_failing_first_migration_leaves_no_trace(pg_url: str, tmp_path: Path) -> None:
    source = _write(tmp_path / "m", {"0001_bad.sql": "CREATE TABLE t (id int;"})
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(MigrationError, match=r"0001_bad\.sql failed.*PostgresSyntaxError"):
            await migrate(conn, source)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"0001_a.sql": "", "2_b.sql": ""}, "'2_b.sql'.*does not match NNNN_name.sql"),
        ({"0001-a.sql": ""}, "does not match"),
        ({"0001_A.sql": ""}, "does not match"),
        ({"0001_a.sql.orig": ""}, "does not match"),
        ({"README": ""}, "does not match"),
        ({"0001_a.sql": "", "0003_c.sql": ""}, "0003_c.sql found where 0002 was expected"),
        ({"0002_b.sql": ""}, "0002_b.sql found where 0001 was expected"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "0001_a.sql and 0001_b.sql have the same number"),
        ({"0001_a.sql": "BEGIN;\nCREATE TABLE t ();\nCOMMIT;\n"}, "controls transactions"),
    ],
)
def test_bad_migration_sets_are_rejected(tmp_path: Path, files: dict[str, str],
                                         error: str) -> None:
    with pytest.raises(MigrationError, match=error):
        load_migrations(_write(tmp_path / "m", files))


def test_plpgsql_blocks_are_not_mistaken_for_transaction_control(tmp_path: Path) -> None:
    body = "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 1;\nEND;\n$$ LANGUAGE plpgsql;"
    assert len(load_migrations(_write(tmp_path / "m", {"0001_f.sql": body}))) == 1


async def test_rejected_set_touches_nothing(pg_url: str, tmp_path: Path) -> None:
    source = _write(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a ();", "0003_c.sql": ""})
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(MigrationError):
            await migrate(conn, source)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


# -- Database (pool) ----------------------------------------------------------------------


async def test_database_with_url(pg_url: str, tmp_path: Path) -> None:
    db = Database(url=pg_url, data_dir=tmp_path, statement_timeout=12.5)
    await db.start()
    try:
        assert await db.ping()
        pool = db.pool
        assert await pool.fetchval("SHOW application_name") == "egen"
        assert await pool.fetchval("SHOW statement_timeout") == "12500ms"
        doc = {"a": [1, 2, {"b": None}], "c": "ø"}
        assert await pool.fetchval("SELECT $1::jsonb", doc) == doc
        assert await pool.fetchval("SELECT '{\"x\": 1}'::jsonb -> 'x'") == 1
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await db.stop()
    assert not await db.ping()
    with pytest.raises(DatabaseError, match="not started"):
        _ = db.pool
    await db.stop()  # idempotent


async def test_statement_timeout_is_enforced(pg_url: str, tmp_path: Path) -> None:
    db = Database(url=pg_url, data_dir=tmp_path, statement_timeout=0.2)
    await db.start()
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await db.pool.execute("SELECT pg_sleep(5)")
        assert await db.ping()
    finally:
        await db.stop()


async def test_two_databases_starting_together_migrate_once(pg_url: str, tmp_path: Path) -> None:
    dbs = [Database(url=pg_url, data_dir=tmp_path) for _ in range(2)]
    await asyncio.gather(*(db.start() for db in dbs))
    try:
        rows = await dbs[0].pool.fetch("SELECT version FROM schema_migrations")
        assert sorted(r["version"] for r in rows) == [m.version for m in load_migrations()]
    finally:
        await asyncio.gather(*(db.stop() for db in dbs))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_database_fails_clearly(tmp_path: Path) -> None:
    port = _closed_port()
    db = Database(url=f"postgresql://egen:s3cret-pw@127.0.0.1:{port}/egen",
                  data_dir=tmp_path, connect_timeout=1)
    assert db.dsn_for_display == f"postgresql://egen:***@127.0.0.1:{port}/egen"
    started = time.monotonic()
    with pytest.raises(DatabaseError) as err:
        await db.start()
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "s3cret" not in message and "s3cret" not in repr(err.value.__cause__)
    assert f"127.0.0.1:{port}" in message and "within 1s" in message
    assert not await db.ping()


async def test_missing_database_is_not_retried(pg_url: str, tmp_path: Path) -> None:
    from tests.pgfixtures import with_database

    db = Database(url=with_database(pg_url, "egen_no_such_db"), data_dir=tmp_path,
                  connect_timeout=30)
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="InvalidCatalogNameError"):
        await db.start()
    assert time.monotonic() - started < 5


@pytest.mark.slow
async def test_database_embedded(cluster_dir: Path) -> None:
    db = Database(url=None, data_dir=cluster_dir)
    assert db.dsn_for_display == f"embedded ({cluster_dir})"
    await db.start()
    try:
        assert await db.ping()
        assert await db.pool.fetchval("SELECT current_database()") == "egen"
        postmaster = _postmaster_pid(cluster_dir)
    finally:
        await db.stop()
    assert _cluster_processes(cluster_dir, postmaster) == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://u:p%40ss@h/d?sslmode=require", "postgresql://u:***@h/d?sslmode=require"),
        ("postgresql://h/d?user=u&password=pw&x=1", "postgresql://h/d?user=u&password=***&x=1"),
    ],
)
def test_mask_password(url: str, shown: str) -> None:
    assert mask_password(url) == shown


# -- nodes --------------------------------------------------------------------------------


async def test_nodes_register_heartbeat_unregister(pg_url: str, tmp_path: Path) -> None:
    db = Database(url=pg_url, data_dir=tmp_path)
    await db.start()
    try:
        pool = db.pool
        node = new_node_id()
        host, pid, _ = node.split(":")
        assert pid == str(os.getpid())
        await register_node(pool, node, "1.2.3")
        row = await pool.fetchrow("SELECT * FROM nodes WHERE id = $1", node)
        assert (row["hostname"], row["pid"], row["version"]) == (host, os.getpid(), "1.2.3")

        await pool.execute("UPDATE nodes SET heartbeat_at = now() - interval '1 hour'")
        assert await heartbeat(pool, node)
        fresh = await pool.fetchval(
            "SELECT heartbeat_at > now() - interval '1 minute' FROM nodes WHERE id = $1",
            node)
        assert fresh

        await register_node(pool, node, "1.2.4")  # re-registering updates, no duplicate
        assert await pool.fetchval("SELECT version FROM nodes") == "1.2.4"

        await unregister_node(pool, node)
        assert await pool.fetchval("SELECT count(*) FROM nodes") == 0
        assert not await heartbeat(pool, node)
    finally:
        await db.stop()
