"""The acceptance point: an fsync'd, group-committed, append-only log with a consumer checkpoint.

SMTP answers 250 and HTTP 2xx only after `Journal.append` returned, and it returns only after
the record's bytes and the segment's size are on stable storage (fdatasync; a new segment
file is also made durable in its directory before anything in it is acknowledged). A
`kill -9` or power loss therefore loses nothing acknowledged: every frame carries a CRC, so
on the next `open()` a torn or zero-filled tail is recognised and cut off, and the consumer
restarts from the last durable checkpoint. Checkpoints are written before segments are
deleted, so a crash in between only replays (at-least-once), never loses.

Hand-written because no well-kept Python library offers this combination: an append-only
log whose writes are group-committed (one fdatasync shared by every append that arrived
while the previous one ran), CRC-framed for crash recovery, capped by unconsumed bytes, and
read by one consumer with a durable checkpoint. SQLite/LMDB would do fsyncs per transaction
from the event loop thread and hold the data in a format we cannot truncate by hand; Kafka-
like logs are separate services. The format itself lives in `daemon.journal.format`.

All disk I/O runs in worker threads; the event loop only plans groups and resolves futures.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.journal import format as fmt
from daemon.journal.checkpoint import CheckpointFile
from daemon.journal.records import Position, Record
from daemon.logs import fields, get_logger
from daemon.waiting import wait_set

__all__ = ["Journal", "JournalClosed", "JournalError", "JournalFull", "JournalMetrics",
           "Position", "Record"]

log = get_logger("journal")


class JournalError(Exception):
    pass


class JournalFull(JournalError):
    pass


class JournalClosed(JournalError):
    pass


class JournalMetrics:
    """One set of collectors shared by every journal in the process, labelled by name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["journal"], registry=registry)

        self.appends = counter("egen_journal_appends_total", "Records made durable.")
        self.appended_bytes = counter(
            "egen_journal_appended_bytes_total", "Bytes made durable, frame headers included.")
        self.fsyncs = counter("egen_journal_fsyncs_total", "fdatasync calls on segments.")
        self.full_rejections = counter(
            "egen_journal_full_rejections_total", "Appends refused because of journal.max_size.")
        self.corrupt = counter(
            "egen_journal_corrupt_total", "Torn or corrupt records found (and dropped).")
        self.group_size = Histogram(
            "egen_journal_group_commit_size", "Records made durable per group commit.",
            ["journal"], registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.commit_seconds = Histogram(
            "egen_journal_commit_seconds", "Time to write and fdatasync one group.",
            ["journal"], registry=registry)
        self.unconsumed = Gauge(
            "egen_journal_unconsumed_bytes", "Bytes after the checkpoint, in flight included.",
            ["journal"], registry=registry)


@dataclass
class _Pending:
    frames: list[tuple[bytes, bytes]]    # (header, payload)
    size: int
    future: asyncio.Future[Position]


class Journal:
    """One directory of segments with one writer task and one consumer."""

    def __init__(self, directory: Path, *, name: str, max_size: int,
                 segment_size: int = 64 * 2**20, metrics: JournalMetrics | None = None) -> None:
        if max_size <= 0 or segment_size <= 0:
            raise ValueError("max_size and segment_size must be positive")
        self._dir = Path(directory)
        self._name = name
        self._max_size = max_size
        self._segment_size = segment_size
        m = metrics or JournalMetrics(CollectorRegistry())
        self._m_appends = m.appends.labels(name)
        self._m_bytes = m.appended_bytes.labels(name)
        self._m_fsyncs = m.fsyncs.labels(name)
        self._m_full = m.full_rejections.labels(name)
        self._m_corrupt = m.corrupt.labels(name)
        self._m_group = m.group_size.labels(name)
        self._m_commit = m.commit_seconds.labels(name)
        self._m_unconsumed = m.unconsumed.labels(name)
        # Durable state, only changed on the loop after the disk work succeeded.
        self._segments: dict[int, int] = {}      # segment -> durable end, ascending
        self._active = 0
        self._fd = -1
        self._checkpoint = Position(0, 0)      # the consumer's progress
        self._checkpoints = CheckpointFile(
            self._dir, name,
            lambda: None if self._closed or self._broken else self._checkpoint)
        self._cursor = Position(0, 0)
        self._durable_unconsumed = 0
        self._inflight = 0
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._data = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._opened = self._closing = self._closed = False
        self._broken: BaseException | None = None
        self._refused = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def unconsumed_bytes(self) -> int:
        return self._durable_unconsumed + self._inflight

    @property
    def durable_end(self) -> Position:
        """Where the durable records end now (what a consumer has caught up with once its
        checkpoint reaches it)."""
        return Position(self._active, self._segments[self._active])

    @property
    def full(self) -> bool:
        """At the cap, or an append was refused and no checkpoint has freed space since:
        what readiness probes and protocols should report as "cannot accept now"."""
        return self._refused or self.unconsumed_bytes >= self._max_size

    async def open(self) -> None:
        """Recover: validate every record, cut a torn tail, drop what the checkpoint covers."""
        if self._opened:
            raise JournalError(f"journal {self._name!r} is already open")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._recover)
        self._fd = await loop.run_in_executor(None, self._open_active)
        self._cursor = self._checkpoint
        self._durable_unconsumed = self._count_unconsumed()
        self._m_unconsumed.set(self.unconsumed_bytes)
        self._opened = True
        self._writer = asyncio.create_task(self._write_loop(), name=f"journal-{self._name}")
        log.info("journal opened", extra=fields(
            journal=self._name, dir=str(self._dir), segments=len(self._segments),
            unconsumed_bytes=self.unconsumed_bytes))

    def _recover(self) -> None:
        """Runs in a worker thread before the journal is shared with anyone."""
        created = not self._dir.exists()
        self._dir.mkdir(parents=True, exist_ok=True)
        if created:
            fmt.fsync_dir(self._dir.parent)
        ids = fmt.list_segments(self._dir)
        for i, segment in enumerate(ids):
            path = self._dir / fmt.segment_name(segment)
            scan = fmt.scan_segment(path)
            self._segments[segment] = scan.valid_end
            if scan.problem is None:
                continue
            self._m_corrupt.inc()
            info = fields(journal=self._name, segment=segment, offset=scan.valid_end,
                          dropped_bytes=scan.file_size - scan.valid_end, reason=scan.problem)
            if i == len(ids) - 1:
                log.warning("journal tail truncated", extra=info)
                fmt.truncate_file(path, scan.valid_end)
            else:
                log.error("corrupt record in sealed journal segment; skipping its rest",
                          extra=info)
        found = fmt.read_checkpoint(self._dir)
        oldest = Position(ids[0] if ids else 0, 0)
        if isinstance(found, str):
            log.warning("journal checkpoint unreadable; replaying from the oldest segment",
                        extra=fields(journal=self._name, reason=found, segment=oldest.segment))
            found = None
        self._checkpoint = self._checkpoints.written = Position(*found) if found else oldest
        cp = self._checkpoint
        consumed = [s for s, end in self._segments.items()
                    if s < cp.segment or (s == cp.segment and s != ids[-1] and cp.offset >= end)]
        fmt.remove_segments(self._dir, consumed)
        for segment in consumed:
            del self._segments[segment]
        last = max(self._segments, default=None)
        # Never append at or below the checkpoint: the reader would skip those records.
        if last is None:
            self._active = cp.segment + 1 if found else cp.segment
            self._segments[self._active] = 0
        elif last < cp.segment or (last == cp.segment and self._segments[last] < cp.offset):
            self._active = max(last, cp.segment) + 1
            self._segments[self._active] = 0
        else:
            self._active = last

    def _open_active(self) -> int:
        path = self._dir / fmt.segment_name(self._active)
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if new:
            fmt.fsync_dir(self._dir)
        return fd

    def _count_unconsumed(self) -> int:
        cp = self._checkpoint
        return sum(max(0, end - cp.offset) if s == cp.segment else end
                   for s, end in self._segments.items() if s >= cp.segment)

    async def append(self, payload: bytes) -> Position:
        return await self.append_many([payload])

    async def append_many(self, payloads: Sequence[bytes]) -> Position:
        """All records or none: one cap check, one group, the last record's position."""
        if not payloads:
            raise ValueError("append_many needs at least one payload")
        frames = []
        for payload in payloads:
            data = payload if isinstance(payload, bytes) else bytes(payload)
            if not data:
                raise ValueError("journal payload must not be empty")
            if len(data) > fmt.MAX_PAYLOAD:
                raise ValueError(f"journal payload of {len(data)} bytes exceeds the "
                                 f"{fmt.MAX_PAYLOAD}-byte maximum")
            frames.append((fmt.frame_header(data), data))
        self._check_usable()
        size = sum(fmt.HEADER_SIZE + len(p) for _, p in frames)
        if self.unconsumed_bytes + size > self._max_size:
            self._m_full.inc()
            self._refused = True
            raise JournalFull(
                f"journal {self._name!r} is full ({self.unconsumed_bytes} of {self._max_size}"
                f" bytes unconsumed, {size} more needed; raise journal.max_size or restore"
                f" the consumer)")
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(frames, size, future))
        self._inflight += size
        self._m_unconsumed.set(self.unconsumed_bytes)
        self._wake.set()
        return await future

    def _check_usable(self) -> None:
        if self._closing:
            raise JournalClosed(f"journal {self._name!r} is closed")
        if not self._opened:
            raise JournalError(f"journal {self._name!r} is not open")
        if self._broken is not None:
            raise JournalError(f"journal {self._name!r} is unusable after a failed write "
                               f"({self._broken}); restart egen") from self._broken
        if self._writer is None or self._writer.done():
            raise JournalError(f"journal {self._name!r} writer has stopped; restart egen")

    async def _write_loop(self) -> None:
        """The single writer: whatever queued up while the last group was syncing is next."""
        group: list[_Pending] = []
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                group, self._pending = self._pending, []
                await self._commit(group)
                group = []
        except asyncio.CancelledError:
            self._fail([*group, *self._pending], JournalClosed(f"journal {self._name!r} stopped"))
            raise
        except Exception as exc:
            log.exception("journal writer failed", extra=fields(journal=self._name))
            self._broken = exc
            self._fail([*group, *self._pending], JournalError(
                f"journal {self._name!r} writer failed: {exc!r}"))
        finally:
            self._pending = []

    async def _commit(self, group: list[_Pending]) -> None:
        plan: list[tuple[int, int, list[bytes]]] = []   # (segment, start, chunks)
        segment, size = self._active, self._segments[self._active]
        ends: dict[int, int] = {}
        positions = []
        for pending in group:
            for header, payload in pending.frames:
                length = fmt.HEADER_SIZE + len(payload)
                if size > 0 and size + length > self._segment_size:
                    segment, size = segment + 1, 0
                if not plan or plan[-1][0] != segment:
                    plan.append((segment, size, []))
                plan[-1][2].extend((header, payload))
                size += length
                ends[segment] = size
            positions.append(Position(segment, size))
        loop = asyncio.get_running_loop()
        started = loop.time()
        done = await loop.run_in_executor(
            None, fmt.write_group, self._dir, self._fd, self._active,
            self._segments[self._active], plan)
        if done.error is not None:
            log.error("journal write failed; group rejected", extra=fields(
                journal=self._name, segment=segment, records=len(positions),
                error=str(done.error)))
            self._fail(group, JournalError(f"journal {self._name!r} write failed: {done.error}"))
            if done.broken is not None:
                self._broken = done.broken
                log.error("journal unusable until restart: could not undo a failed write",
                          extra=fields(journal=self._name, error=str(done.broken)))
            return
        self._m_commit.observe(loop.time() - started)
        self._fd, self._active = done.fd, segment
        self._segments.update(ends)
        records = sum(len(p.frames) for p in group)
        written = sum(p.size for p in group)
        self._inflight -= written
        self._durable_unconsumed += written
        self._m_appends.inc(records)
        self._m_bytes.inc(written)
        self._m_fsyncs.inc(done.fsyncs)
        self._m_group.observe(records)
        self._m_unconsumed.set(self.unconsumed_bytes)
        for pending, position in zip(group, positions, strict=True):
            if not pending.future.done():
                pending.future.set_result(position)
        self._data.set()

    def _fail(self, group: list[_Pending], exc: Exception) -> None:
        for pending in group:
            self._inflight -= pending.size
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._m_unconsumed.set(self.unconsumed_bytes)

    async def read(self, *, max_records: int = 1000, max_bytes: int = 4 * 2**20,
                   timeout: float | None = None,  # noqa: ASYNC109 (the interface)
                   ) -> list[Record]:
        """Durable records after the reader cursor; [] only when `timeout` passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closing:
                raise JournalClosed(f"journal {self._name!r} is closed")
            if not self._opened:
                raise JournalError(f"journal {self._name!r} is not open")
            self._data.clear()
            self._cursor = self._normalize(self._cursor)
            if self._cursor < Position(self._active, self._segments[self._active]):
                records = await self._read_batch(max(1, max_records), max_bytes)
                if records:
                    return records
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            if not await wait_set(self._data, remaining):
                return []

    async def _read_batch(self, max_records: int, max_bytes: int) -> list[Record]:
        cursor = self._cursor
        spans = [fmt.Span(s, cursor.offset if s == cursor.segment else 0, end)
                 for s, end in self._segments.items() if s >= cursor.segment]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, fmt.read_spans, self._dir, spans, max_records, max_bytes)
        except FileNotFoundError:
            if self._cursor == cursor:
                raise
            return []
        if self._cursor != cursor:      # rewound or checkpointed meanwhile: re-plan
            return []
        if result.problem:
            # Bit rot after open: skip to the end of the durable part of that segment.
            self._m_corrupt.inc()
            end = next(s.end for s in spans if s.segment == result.segment)
            log.error("corrupt journal record while reading; skipping rest of segment",
                      extra=fields(journal=self._name, segment=result.segment,
                                   offset=result.offset, dropped_bytes=end - result.offset,
                                   reason=result.problem))
            self._cursor = Position(result.segment, end)
        else:
            self._cursor = Position(result.segment, result.offset)
        return [Record(Position(s, o), p) for s, o, p in result.records]

    def _normalize(self, cursor: Position) -> Position:
        """Move a cursor off the end of a sealed (or deleted, or skipped) segment."""
        for segment, end in self._segments.items():
            if segment < cursor.segment:
                continue
            if segment > cursor.segment:
                return Position(segment, 0)
            if segment == self._active or cursor.offset < end:
                return cursor
        return cursor

    def rewind(self) -> None:
        self._cursor = self._checkpoint

    async def checkpoint(self, position: Position) -> None:
        """Take the consumer's progress; persist it, then delete segments it wholly covers.

        The file is written at once when a segment can go, else within CHECKPOINT_EVERY
        (daemon.journal.checkpoint); close() writes the last position."""
        async with self._checkpoints.lock:
            if self._closed:
                raise JournalClosed(f"journal {self._name!r} is closed")
            if position < self._checkpoint or position <= self._checkpoints.written:
                return
            if position > Position(self._active, self._segments[self._active]):
                raise ValueError(f"checkpoint {position} is past the durable end of journal "
                                 f"{self._name!r}")
            self._checkpoint = position
            self._cursor = max(self._cursor, position)
            self._durable_unconsumed = self._count_unconsumed()
            self._refused = False
            self._m_unconsumed.set(self.unconsumed_bytes)
            consumed = [s for s, end in self._segments.items() if s != self._active and (
                s < position.segment or (s == position.segment and position.offset >= end))]
            if not await self._checkpoints.save(position, at_once=bool(consumed)) or not consumed:
                return
            for segment in consumed:    # only once the file says they are consumed
                self._segments.pop(segment, None)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, fmt.remove_segments, self._dir, consumed)
            except OSError as exc:   # harmless: open() removes segments the checkpoint covers
                log.warning("could not delete consumed journal segments", extra=fields(
                    journal=self._name, segments=consumed, error=str(exc)))

    async def close(self) -> None:
        """Let appends already accepted finish; everything after fails with JournalClosed."""
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        self._wake.set()
        self._data.set()
        try:
            if self._writer is not None:
                await self._writer
        finally:
            try:
                await self._checkpoints.flush()
            finally:
                async with self._checkpoints.lock:
                    try:
                        if self._checkpoint > self._checkpoints.written and self._broken is None:
                            await self._checkpoints.write(self._checkpoint)
                    except OSError as exc:   # the next open replays from the older one
                        log.warning("could not write the last checkpoint", extra=fields(
                            journal=self._name, error=str(exc)))
                    finally:
                        self._closed = True
                        if self._fd >= 0:
                            os.close(self._fd)
                            self._fd = -1
                self._closed_event.set()
        log.info("journal closed", extra=fields(journal=self._name,
                                                unconsumed_bytes=self.unconsumed_bytes))
