"""What a journal consumer's store function does when Postgres refuses a batch for its
content: write the batch's records one at a time (the writes are idempotent, so the ones
that go in stay in) and name the first one refused as a PoisonRecord. Shared by the mail
flusher and the events store; each side brings its own write, wording and logging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from daemon.journal.consumer import PoisonRecord
from daemon.journal.log import Position

T = TypeVar("T")

# Errors about the data, not the connection: retrying the same rows cannot help.
DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError)


async def find_poison(write: Callable[[Sequence[T]], Awaitable[object]], items: Sequence[T],
                      positions: Sequence[Position], batch_error: Exception, *,
                      describe: Callable[[T], str],
                      on_refused: Callable[[int, Exception], None] | None = None) -> None:
    """After `batch_error` (one of DATA_ERRORS) refused `items` as one batch: `write` them
    one at a time and raise PoisonRecord, at the item's position, for the first one
    refused (its reason starts with `describe(item)`). Returns when every item went in
    alone: the batch was not refused for its data after all, and the caller re-raises
    `batch_error` so the consumer retries. `on_refused(len(items), batch_error)` is called
    first, for the caller's log line."""
    if on_refused is not None:
        on_refused(len(items), batch_error)
    for item, position in zip(items, positions, strict=True):
        try:
            await write([item])
        except DATA_ERRORS as err:
            raise PoisonRecord(position, f"{describe(item)}: Postgres refused it: "
                                         f"{type(err).__name__}: {err}") from None
