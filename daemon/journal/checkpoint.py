"""The checkpoint file of a journal: where the consumer's progress becomes durable.

Apart from the log (daemon.journal.log) because it has its own rhythm. Under load a
consumer batch holds a few records, and two fsyncs per batch (the file, its directory)
competed with the appends' own; so the file is written at once only when the caller needs
it (segments are about to be deleted), else at most every CHECKPOINT_EVERY seconds, with a
deferred write that follows within that time even when no batch comes after it. A crash
therefore replays at most CHECKPOINT_EVERY of the consumer's progress, records already
stored, which the idempotent stores absorb. A quiet node must not keep a stale file: a
replay long after would bring back mail an operator deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

from daemon.journal import format as fmt
from daemon.journal.records import Position
from daemon.logs import fields, get_logger
from daemon.waiting import wait_set

log = get_logger("journal")

# Longest the checkpoint file lags the consumer's progress.
CHECKPOINT_EVERY = 0.1


class CheckpointFile:
    """Writes of one journal's checkpoint file; `lock` is held by whoever changes the
    journal's checkpoint, and by the deferred write."""

    def __init__(self, directory: Path, name: str,
                 pending: Callable[[], Position | None]) -> None:
        """`pending()`: the position the file should say now, or None when nothing may
        be written any more (the journal is closed or broken)."""
        self._dir = directory
        self._name = name
        self._pending = pending
        self.lock = asyncio.Lock()
        self.written = Position(0, 0)           # what the file says
        self._written_at = -math.inf            # loop time it was last written
        self._writing: asyncio.Future[None] | None = None
        self.deferred: asyncio.Task[None] | None = None
        self._now = asyncio.Event()

    async def save(self, position: Position, *, at_once: bool) -> bool:
        """Under `lock`: write `position` at once when `at_once` or due, else make sure a
        deferred write follows; True when it was written now."""
        due = self._written_at + CHECKPOINT_EVERY - asyncio.get_running_loop().time()
        if at_once or due <= 0:
            await self.write(position)
            return True
        if self.deferred is None or self.deferred.done():
            self.deferred = asyncio.create_task(self._write_later(due),
                                                name=f"checkpoint-{self._name}")
        return False

    async def write(self, position: Position) -> None:
        """Under `lock`. A write cancelled in its thread still finishes there, and the
        next one waits for it, so two never race on the temporary file."""
        loop = asyncio.get_running_loop()
        if self._writing is not None:
            await asyncio.wait([self._writing])
        self._writing = loop.run_in_executor(
            None, fmt.write_checkpoint, self._dir, position.segment, position.offset)
        await asyncio.shield(self._writing)
        self.written = position
        self._written_at = loop.time()

    async def _write_later(self, delay: float) -> None:
        """Never cancelled (flush() wakes it instead)."""
        await wait_set(self._now, delay)
        async with self.lock:
            position = self._pending()
            if position is None or position <= self.written:
                return
            try:
                await self.write(position)
            except OSError as exc:   # the next checkpoint or close() tries again
                log.warning("could not write the journal checkpoint", extra=fields(
                    journal=self._name, error=str(exc)))

    async def flush(self) -> None:
        """The deferred write done now, for close(); then the caller writes what is left
        under `lock`."""
        if self.deferred is not None:
            self._now.set()
            await asyncio.shield(self.deferred)
