"""What the verb modules share: loading the config, running work against the database,
and argument types. Apart from daemon.cli.dispatch so the noun modules (queue, mail,
issues) can use it without importing the command that imports them."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from daemon.config import Settings, load, resolve_path

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")


def load_settings(args: argparse.Namespace) -> Settings:
    return load(resolve_path(getattr(args, "config", None)))


def with_database(args: argparse.Namespace,
                  work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run one operator verb against the config's database (the embedded one included:
    it is adopted if the daemon runs it, else started for the verb and stopped after)."""
    import uvloop

    from daemon.db.pool import database_for
    from daemon.logs import setup_logging

    settings = load_settings(args)
    setup_logging("warning", settings.log.format)

    async def main() -> T:
        db = database_for(settings.database, settings.state_dir, owns_embedded=False)
        await db.start()
        try:
            return await work(db.pool)
        finally:
            await db.stop()

    return uvloop.run(main())


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value
