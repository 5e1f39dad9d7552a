"""Pytest plugin: a real Postgres server per test session and a fresh database per test.

`EGEN_TEST_DATABASE_URL` (a superuser URL) selects an existing server; otherwise an
embedded cluster is started in a temporary directory and removed at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from daemon.db.embedded import EmbeddedPostgres


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def private_tmpdir() -> Path:
    """A temporary directory a dropped-privilege postgres user can traverse (not list)."""
    path = Path(tempfile.mkdtemp(prefix="egen-test-"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A superuser URL to the session's Postgres server."""
    url = os.environ.get("EGEN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    tmp = private_tmpdir()
    server = EmbeddedPostgres(tmp / "pg", database="postgres")
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest_asyncio.fixture
async def pg_url(pg_server_url: str) -> AsyncIterator[str]:
    """A URL to a fresh, empty database, dropped after the test."""
    name = f"egen_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_server_url, name)
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
