"""The journal against real files: round trips, crashes, torn tails, caps, group commit."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from daemon.journal import checkpoint as checkpoint_file
from daemon.journal import format as journal_format
from daemon.journal.format import HEADER_SIZE, MAX_PAYLOAD, frame_header, read_checkpoint
from daemon.journal.log import (
    Journal,
    JournalClosed,
    JournalFull,
    JournalMetrics,
    Position,
    Record,
)
from tests.journal_child import payload_for

CHILD = Path(__file__).with_name("journal_child.py")
REPO = Path(__file__).resolve().parent.parent


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


async def opened(directory: Path, **kwargs) -> Journal:
    kwargs.setdefault("name", "test")
    kwargs.setdefault("max_size", 2**30)
    journal = Journal(directory, **kwargs)
    await journal.open()
    return journal


async def read_all(journal: Journal, **kwargs) -> list[Record]:
    out: list[Record] = []
    while batch := await journal.read(timeout=0, **kwargs):
        out.extend(batch)
    return out


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """The `egen` logger may not propagate, so listen on egen.journal itself."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("egen.journal")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def messages(records: list[logging.LogRecord], level: int) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == level]


def sample(registry: CollectorRegistry, name: str, journal: str = "test") -> float:
    value = registry.get_sample_value(name, {"journal": journal})
    return 0.0 if value is None else value


async def test_round_trip_rotation_checkpoint_and_reopen(tmp_path: Path) -> None:
    payloads = [bytes([i % 251]) * (1 + (i * 37) % 300) for i in range(60)]
    journal = await opened(tmp_path, segment_size=1024)
    positions = [await journal.append(p) for p in payloads]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert len(segment_files(tmp_path)) > 5
    records = await read_all(journal)
    assert [r.payload for r in records] == payloads
    assert [r.position for r in records] == positions

    cut = positions[39]
    await journal.checkpoint(cut)
    remaining = segment_files(tmp_path)
    assert all(int(name[:16], 16) >= cut.segment for name in remaining)
    assert f"{positions[0].segment:016x}.seg" not in remaining
    await journal.close()

    journal = await opened(tmp_path, segment_size=1024)
    assert [r.payload for r in await read_all(journal)] == payloads[40:]
    later = await journal.append(b"after reopen")
    assert later > positions[-1]
    assert [r.payload for r in await read_all(journal)] == [b"after reopen"]
    await journal.close()


async def test_read_limits_rewind_and_checkpoint_rules(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    for i in range(10):
        await journal.append(b"x" * 100 + bytes([i]))
    first = await journal.read(max_records=3, timeout=0)
    assert len(first) == 3
    second = await journal.read(max_bytes=250, timeout=0)
    assert len(second) == 2
    big = await journal.append(b"B" * 5000)
    journal.rewind()
    assert await journal.read(max_records=3, timeout=0) == first
    await journal.checkpoint(first[-1].position)
    await journal.checkpoint(first[-1].position)            # idempotent
    await journal.checkpoint(first[0].position)             # older: ignored
    rest = await read_all(journal, max_bytes=10)            # one record per batch at least
    assert len(rest) == 8 and rest[-1].position == big
    journal.rewind()
    assert len(await read_all(journal)) == 8
    with pytest.raises(ValueError, match="past the durable end"):
        await journal.checkpoint(Position(big.segment, big.offset + 1))
    await journal.close()
    journal = await opened(tmp_path)
    assert len(await read_all(journal)) == 8
    await journal.close()


async def test_payload_validation(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        await journal.append(b"")
    with pytest.raises(ValueError, match="maximum"):
        await journal.append(bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="empty"):
        await journal.append_many([b"ok", b""])
    assert journal.unconsumed_bytes == 0
    await journal.close()


@pytest.mark.slow
async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acked: list[str] = []
    rng = random.Random(7)
    for round_ in range(4):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(tmp_path), str(round_), "32",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO)
        assert proc.stdout is not None
        want, seen = rng.randrange(200, 2000), 0
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
        while seen < want:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.endswith(b"\n"), line
            acked.append(line.decode().strip())
            seen += 1
        proc.send_signal(signal.SIGKILL)
        rest, err = await proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        # Lines printed before the kill landed were acknowledged too.
        acked.extend(x for x in rest.decode().split("\n")[:-1])

        journal = await opened(tmp_path, name="crash", segment_size=64 * 1024)
        records = await read_all(journal)
        await journal.close()
        found: dict[str, int] = {}
        last_k: dict[str, int] = {}
        for index, record in enumerate(records):
            ident = record.payload.split(b":", 1)[0].decode()
            assert record.payload == payload_for(ident), f"corrupt payload for {ident}"
            assert ident not in found, f"{ident} twice"
            found[ident] = index
            worker, k = ident.rsplit("-", 1)
            assert last_k.get(worker, -1) < int(k), f"{ident} out of order"
            last_k[worker] = int(k)
        missing = [ident for ident in acked if ident not in found]
        assert not missing, f"acknowledged but lost: {missing[:5]}"
        assert [r.position for r in records] == sorted(r.position for r in records)


async def _journal_with(tmp_path: Path, payloads: list[bytes], **kwargs) -> list[Position]:
    journal = await opened(tmp_path, **kwargs)
    positions = [await journal.append(p) for p in payloads]
    await journal.close()
    return positions


@pytest.mark.parametrize("tail", [
    pytest.param(lambda: (frame_header(b"y" * 40) + b"y" * 40)[:30], id="half-frame"),
    pytest.param(lambda: bytes(random.Random(1).randrange(256) for _ in range(77)), id="garbage"),
    pytest.param(lambda: bytes(4096), id="zeros"),
    pytest.param(lambda: frame_header(b"z" * 40)[:5], id="half-header"),
])
async def test_torn_tail_is_truncated_with_warning(tmp_path: Path, tail) -> None:
    payloads = [b"one", b"two" * 50, b"three"]
    positions = await _journal_with(tmp_path, payloads)
    segment = tmp_path / segment_files(tmp_path)[-1]
    with segment.open("ab") as f:
        f.write(tail())
    registry = CollectorRegistry()
    with captured_logs() as logs:
        journal = await opened(tmp_path, metrics=JournalMetrics(registry))
    assert "journal tail truncated" in messages(logs, logging.WARNING)
    assert sample(registry, "egen_journal_corrupt_total") == 1
    assert segment.stat().st_size == positions[-1].offset
    assert [r.payload for r in await read_all(journal)] == payloads
    await journal.append(b"four")
    await journal.close()
    with captured_logs() as logs:
        journal = await opened(tmp_path)
    assert not messages(logs, logging.WARNING)
    assert [r.payload for r in await read_all(journal)] == [*payloads, b"four"]
    await journal.close()


async def test_corrupt_byte_mid_last_segment_keeps_the_records_before(tmp_path: Path) -> None:
    payloads = [f"record {i}".encode() * 10 for i in range(10)]
    positions = await _journal_with(tmp_path, payloads)
    segment = tmp_path / segment_files(tmp_path)[-1]
    data = bytearray(segment.read_bytes())
    data[positions[4].offset + HEADER_SIZE + 3] ^= 0x40     # inside record 5's payload
    segment.write_bytes(bytes(data))
    with captured_logs() as logs:
        journal = await opened(tmp_path)
    assert "journal tail truncated" in messages(logs, logging.WARNING)
    assert [r.payload for r in await read_all(journal)] == payloads[:5]
    assert segment.stat().st_size == positions[4].offset
    await journal.append(b"next")
    assert [r.payload for r in await read_all(journal)] == [b"next"]
    await journal.close()


async def test_corrupt_sealed_segment_is_skipped_and_later_ones_read(tmp_path: Path) -> None:
    payloads = [bytes([65 + i]) * 300 for i in range(12)]
    positions = await _journal_with(tmp_path, payloads, segment_size=1000)
    first_segment = [i for i, p in enumerate(positions) if p.segment == positions[0].segment]
    assert len(first_segment) >= 2 and positions[-1].segment > positions[0].segment
    path = tmp_path / segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[positions[0].offset + 1] ^= 0xFF                   # magic of the second record
    path.write_bytes(bytes(data))
    registry = CollectorRegistry()
    with captured_logs() as logs:
        journal = await opened(tmp_path, metrics=JournalMetrics(registry))
    assert any("sealed" in m for m in messages(logs, logging.ERROR))
    assert sample(registry, "egen_journal_corrupt_total") == 1
    got = [r.payload for r in await read_all(journal)]
    assert got == [payloads[0], *payloads[len(first_segment):]]
    assert path.stat().st_size == len(data)                 # sealed data is not destroyed
    await journal.close()


async def test_corrupt_checkpoint_replays_from_oldest_segment(tmp_path: Path) -> None:
    payloads = [b"a" * 400, b"b" * 400, b"c" * 400, b"d" * 400]
    journal = await opened(tmp_path, segment_size=1000)
    positions = [await journal.append(p) for p in payloads]
    await journal.checkpoint(positions[2])                  # deletes the first segment
    await journal.close()
    checkpoint = tmp_path / "checkpoint"
    data = bytearray(checkpoint.read_bytes())
    data[9] ^= 1
    checkpoint.write_bytes(bytes(data))
    with captured_logs() as logs:
        journal = await opened(tmp_path, segment_size=1000)
    assert any("checkpoint" in m for m in messages(logs, logging.WARNING))
    replayed = [r.payload for r in await read_all(journal)]
    assert replayed[-1] == payloads[3] and payloads[2] in replayed
    await journal.checkpoint(positions[3])
    await journal.close()
    journal = await opened(tmp_path, segment_size=1000)
    assert await read_all(journal) == []
    await journal.close()


async def test_cap_rejects_then_checkpoint_frees_space(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    record = b"p" * (100 - HEADER_SIZE)                      # 100 bytes on disk
    journal = await opened(tmp_path, name="events", max_size=1000,
                           metrics=JournalMetrics(registry))
    positions = [await journal.append(record) for _ in range(10)]
    assert journal.full and journal.unconsumed_bytes == 1000
    with pytest.raises(JournalFull, match=r"journal 'events' is full .*journal\.max_size"):
        await journal.append(b"x")
    assert sample(registry, "egen_journal_full_rejections_total", "events") == 1
    assert sample(registry, "egen_journal_unconsumed_bytes", "events") == 1000

    await journal.checkpoint(positions[2])
    assert journal.unconsumed_bytes == 700 and not journal.full
    with pytest.raises(JournalFull):
        await journal.append_many([record] * 4)             # 400 > 300 free: none of them
    assert journal.unconsumed_bytes == 700
    last = await journal.append_many([record] * 3)
    assert journal.full
    records = await read_all(journal)
    assert len(records) == 10 and records[-1].position == last
    await journal.close()


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    journal = await opened(tmp_path, metrics=JournalMetrics(registry), segment_size=64 * 1024)
    payloads = [f"event {i}".encode() * 20 for i in range(500)]
    positions = await asyncio.gather(*(journal.append(p) for p in payloads))
    assert len(set(positions)) == 500
    fsyncs = sample(registry, "egen_journal_fsyncs_total")
    assert 1 <= fsyncs <= 50, fsyncs
    assert sample(registry, "egen_journal_appends_total") == 500
    await journal.close()
    journal = await opened(tmp_path)
    by_position = sorted(zip(positions, payloads, strict=True))
    assert [r.payload for r in await read_all(journal)] == [p for _, p in by_position]
    await journal.close()


async def test_read_waits_and_is_woken_by_append(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    assert await journal.read(timeout=0.05) == []
    reader = asyncio.create_task(journal.read())
    done, _ = await asyncio.wait({reader}, timeout=0.05)
    assert not done                                         # really waiting, not returning []
    await journal.append(b"wake up")
    records = await asyncio.wait_for(reader, 5)
    assert [r.payload for r in records] == [b"wake up"]
    blocked = asyncio.create_task(journal.read())
    done, _ = await asyncio.wait({blocked}, timeout=0.05)
    assert not done
    await journal.close()
    with pytest.raises(JournalClosed):
        await asyncio.wait_for(blocked, 5)


async def test_close_finishes_in_flight_and_rejects_later(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    tasks = [asyncio.create_task(journal.append(b"in flight %d" % i)) for i in range(50)]
    await asyncio.sleep(0)                  # one loop pass: every task has enqueued its record
    assert journal.unconsumed_bytes > 0
    await journal.close()
    positions = [t.result() for t in tasks]
    assert positions == sorted(positions)
    with pytest.raises(JournalClosed):
        await journal.append(b"late")
    with pytest.raises(JournalClosed):
        await journal.read(timeout=0)
    with pytest.raises(JournalClosed):
        await journal.checkpoint(positions[0])
    await journal.close()                   # idempotent
    journal = await opened(tmp_path)
    assert len(await read_all(journal)) == 50
    await journal.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 3000), st.sampled_from([1, 1024, 1025, 1012, 1013])),
                min_size=1, max_size=25))
def test_property_round_trip(sizes: list[int]) -> None:
    payloads = [bytes([i % 256]) * size for i, size in enumerate(sizes)]

    async def scenario(directory: Path) -> list[bytes]:
        journal = await opened(directory, segment_size=1024)
        half = len(payloads) // 2
        for p in payloads[:half]:
            await journal.append(p)
        if payloads[half:]:
            await journal.append_many(payloads[half:])
        await journal.close()
        journal = await opened(directory, segment_size=1024)
        got = [r.payload for r in await read_all(journal, max_bytes=2048)]
        await journal.close()
        return got

    with tempfile.TemporaryDirectory() as directory:
        assert asyncio.run(scenario(Path(directory))) == payloads


async def test_checkpoint_file_lags_by_at_most_checkpoint_every(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Under load the file is written once per CHECKPOINT_EVERY, not per batch; a reopen
    after a crash replays what it does not cover (the stores are idempotent), and close()
    writes the last position."""
    monkeypatch.setattr(checkpoint_file, "CHECKPOINT_EVERY", 3600.0)   # nothing due by time
    journal = await opened(tmp_path)
    positions = [await journal.append(b"r%d" % i) for i in range(3)]
    await journal.checkpoint(positions[0])         # the first one is written at once
    assert read_checkpoint(tmp_path) == (positions[0].segment, positions[0].offset)
    await journal.checkpoint(positions[1])         # taken, but not yet due on disk
    assert read_checkpoint(tmp_path) == (positions[0].segment, positions[0].offset)
    assert journal.unconsumed_bytes == positions[2].offset - positions[1].offset
    assert [r.payload for r in await read_all(journal)] == [b"r2"]

    crashed = await opened(tmp_path)               # what a restart now would replay
    assert [r.payload for r in await read_all(crashed)] == [b"r1", b"r2"]
    await crashed.close()

    await journal.checkpoint(positions[2])
    await journal.close()
    assert read_checkpoint(tmp_path) == (positions[2].segment, positions[2].offset)
    reopened = await opened(tmp_path)
    assert await read_all(reopened) == []
    await reopened.close()


async def test_a_deferred_checkpoint_is_written_without_another_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a burst the journal goes quiet: the last position still reaches the file
    within CHECKPOINT_EVERY, so a crash long after replays nothing (a replay would bring
    back mail an operator deleted meanwhile)."""
    monkeypatch.setattr(checkpoint_file, "CHECKPOINT_EVERY", 0.05)
    journal = await opened(tmp_path)
    positions = [await journal.append(b"r%d" % i) for i in range(2)]
    await journal.checkpoint(positions[0])
    await journal.checkpoint(positions[1])             # deferred: the last was just now
    assert read_checkpoint(tmp_path) == (positions[0].segment, positions[0].offset)
    deferred = journal._checkpoints.deferred
    assert deferred is not None
    await asyncio.wait_for(asyncio.shield(deferred), 5)
    assert read_checkpoint(tmp_path) == (positions[1].segment, positions[1].offset)
    await journal.close()


async def test_a_failed_checkpoint_write_is_retried(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer retries a checkpoint whose write failed with the same position; that
    must write the file, not count as done because the position was taken before."""
    journal = await opened(tmp_path)
    position = await journal.append(b"r")
    real, failed = journal_format.write_checkpoint, []

    def broken(*args: object) -> None:
        failed.append(args)
        raise OSError("disk full")

    monkeypatch.setattr(journal_format, "write_checkpoint", broken)
    with pytest.raises(OSError):
        await journal.checkpoint(position)
    monkeypatch.setattr(journal_format, "write_checkpoint", real)
    await journal.checkpoint(position)
    assert failed and read_checkpoint(tmp_path) == (position.segment, position.offset)
    await journal.close()
