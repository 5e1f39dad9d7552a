"""The store function that moves accepted mail from the journal into the queue tables.

Run by a JournalConsumer: each batch of journal records becomes one INSERT statement (one
transaction). Replays are harmless (queue IDs already stored are skipped). A record that
can never be stored becomes a PoisonRecord: one that does not decode, and one Postgres
refuses for its content (found by retrying that batch message by message).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from daemon.journal.consumer import PoisonRecord
from daemon.journal.log import Position, Record
from daemon.journal.poison import DATA_ERRORS, find_poison
from daemon.logs import fields, get_logger
from daemon.mail.queue.envelope import Envelope, EnvelopeError, decode
from daemon.mail.queue.store import Unstorable, check_storable, insert_messages

log = get_logger("mail.flusher")


def mail_store(pool: asyncpg.Pool) -> Callable[[list[Record]], Awaitable[None]]:
    async def store(records: list[Record]) -> None:
        messages: list[tuple[Envelope, bytes]] = []
        positions: list[Position] = []
        for record in records:
            try:
                envelope, data = decode(record.payload)
                check_storable(envelope)
            except (EnvelopeError, Unstorable) as err:
                raise PoisonRecord(record.position, str(err)) from None
            messages.append((envelope, data))
            positions.append(record.position)
        try:
            inserted = await insert_messages(pool, messages)
        except DATA_ERRORS as err:
            await _find_poison(pool, messages, positions, err)
            raise   # each message alone went in: not the data after all, retry the batch
        if len(inserted) < len(messages):
            log.info("skipped messages already in the queue (journal replay)",
                     extra=fields(stored=len(inserted), skipped=len(messages) - len(inserted)))

    return store


async def _find_poison(pool: asyncpg.Pool, messages: Sequence[tuple[Envelope, bytes]],
                       positions: Sequence[Position], batch_error: Exception) -> None:
    """Insert one message at a time (idempotent, so the ones that go in stay in) and raise
    PoisonRecord for the first one Postgres refuses."""
    def refused(count: int, error: Exception) -> None:
        log.warning("queue insert refused a batch; retrying it message by message",
                    extra=fields(messages=count, error=f"{type(error).__name__}: {error}"))

    async def insert(batch: Sequence[tuple[Envelope, bytes]]) -> object:
        return await insert_messages(pool, batch)

    await find_poison(insert, messages, positions, batch_error,
                      describe=lambda message: f"queue ID {message[0].queue_id}",
                      on_refused=refused)
