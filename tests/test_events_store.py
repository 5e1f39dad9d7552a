"""The event batch writer against a real Postgres: dedup, issue upserts, regression,
two nodes adding to one issue, partitions, poison records."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from daemon.db import Database
from daemon.events.pipeline.record import EventRecord, RecordError, decode, encode
from daemon.events.storage import partitions as parts
from daemon.events.storage.writer import event_store, write_batch
from daemon.journal.consumer import PoisonRecord
from daemon.journal.log import Position, Record


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(url=pg_url, data_dir=tmp_path / "unused", min_size=1, max_size=4)
    await database.start()
    await database.pool.execute("INSERT INTO projects (id, name) VALUES (1, 'app'), (2, 'web')")
    yield database
    await database.stop()


def event(fingerprint: str = "f1", *, project: int = 1, event_id: str | None = None,
          received: float | None = None, title: str = "ZeroDivisionError: division by zero",
          level: str = "error") -> EventRecord:
    now = time.time() if received is None else received
    return EventRecord(project_id=project, event_id=event_id or uuid.uuid4().hex,
                       grouping_version=1, fingerprint=fingerprint, title=title,
                       culprit="app.views in index", level=level, timestamp=now - 1,
                       received_at=now, environment="production", release="1.0",
                       payload=(orjson.dumps({"message": title})))


async def issues(db: Database) -> list[dict[str, object]]:
    rows = await db.pool.fetch("SELECT project_id, fingerprint, event_count, status, "
                               "regressed_at IS NOT NULL AS regressed FROM issues "
                               "ORDER BY project_id, fingerprint")
    return [dict(r) for r in rows]


async def test_a_batch_groups_events_into_issues(db: Database) -> None:
    new, changes = await write_batch(db.pool, parts.Partitions(), [
        event("f1"), event("f1"), event("f2"), event("f1", project=2)])
    assert new == 4
    assert sorted((c.project_id, c.event_count, c.created) for c in changes) == [
        (1, 1, True), (1, 2, True), (2, 1, True)]
    assert await issues(db) == [
        {"project_id": 1, "fingerprint": "f1", "event_count": 2, "status": "unresolved",
         "regressed": False},
        {"project_id": 1, "fingerprint": "f2", "event_count": 1, "status": "unresolved",
         "regressed": False},
        {"project_id": 2, "fingerprint": "f1", "event_count": 1, "status": "unresolved",
         "regressed": False}]
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 4


async def test_a_retried_event_id_is_stored_and_counted_once(db: Database) -> None:
    first = event("f1")
    partitions = parts.Partitions()
    await write_batch(db.pool, partitions, [first, first])      # twice in one batch
    new, changes = await write_batch(db.pool, partitions, [first])  # and a replay
    assert new == 0 and changes == []
    assert (await issues(db))[0]["event_count"] == 1
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 1
    # The same id in another project is another event.
    other = event("f1", project=2, event_id=first.event_id)
    assert (await write_batch(db.pool, partitions, [other]))[0] == 1


async def test_a_resolved_issue_that_gets_an_event_regresses(db: Database) -> None:
    partitions = parts.Partitions()
    await write_batch(db.pool, partitions, [event("f1")])
    await db.pool.execute("UPDATE issues SET status = 'resolved', resolved_at = now()")
    _, [change] = await write_batch(db.pool, partitions, [event("f1")])
    assert change.regressed and not change.created and change.event_count == 2
    [row] = await issues(db)
    assert row["status"] == "unresolved" and row["regressed"]
    _, [again] = await write_batch(db.pool, partitions, [event("f1")])
    assert not again.regressed                     # only the event that reopened it


async def test_ignored_issues_stay_ignored(db: Database) -> None:
    partitions = parts.Partitions()
    await write_batch(db.pool, partitions, [event("f1")])
    await db.pool.execute("UPDATE issues SET status = 'ignored'")
    await write_batch(db.pool, partitions, [event("f1")])
    assert (await issues(db))[0]["status"] == "ignored"


async def test_two_nodes_add_to_one_issue(db: Database) -> None:
    """Two writers (separate partition caches, as on two nodes) storing the same bug at
    once end with one issue whose count is the sum."""
    batches = [[event("same") for _ in range(50)] for _ in range(8)]
    nodes = [parts.Partitions(), parts.Partitions()]
    await asyncio.gather(*(write_batch(db.pool, nodes[i % 2], batch)
                           for i, batch in enumerate(batches)))
    [row] = await issues(db)
    assert row["event_count"] == 400
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 400


async def test_events_go_to_day_partitions_which_retention_drops(db: Database) -> None:
    day = 86400.0
    now = time.time()
    partitions = parts.Partitions()
    await write_batch(db.pool, partitions, [event("old", received=now - 40 * day),
                                            event("new", received=now)])
    days = await parts.existing_days(db.pool)
    assert parts.day_of(now) in days and parts.day_of(now - 40 * day) in days
    dropped = await parts.drop_before(db.pool, parts.day_of(now - 30 * day))
    assert dropped == [parts.day_of(now - 40 * day)]
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 1
    partitions.forget(dropped)
    await write_batch(db.pool, partitions, [event("old", received=now - 40 * day)])
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 2


def test_records_round_trip_and_bad_ones_say_why() -> None:
    record = event("f1")
    assert decode(encode(record)) == record
    data = encode(record)
    for bad, reason in [(b"XX1" + data[3:], "bad magic"),
                        (data[:3] + b"\xff\xff\xff\xff" + data[7:], "runs past"),
                        (data[:7] + b"}" + data[8:], "not JSON")]:
        with pytest.raises(RecordError, match=reason):
            decode(bad)


async def test_an_unstorable_record_is_poison(db: Database) -> None:
    store = event_store(lambda: db.pool, parts.Partitions())
    good = Record(Position(1, 10), encode(event("f1")))
    bad = Record(Position(1, 20), b"garbage")
    with pytest.raises(PoisonRecord, match="bad magic") as caught:
        await store([good, bad])
    assert caught.value.position == Position(1, 20)
    nul = Record(Position(1, 30), encode(event("f\x00")))
    with pytest.raises(PoisonRecord, match="NUL"):
        await store([nul])
    await store([good])
    assert (await issues(db))[0]["event_count"] == 1


async def test_retention_trims_samples_but_keeps_counts(db: Database) -> None:
    from datetime import UTC, datetime

    from daemon.events.settings import IngestSettings
    from daemon.events.storage.retention import enforce

    day = 86400.0
    now = time.time()
    partitions = parts.Partitions()
    batch = [event("busy", received=now - i) for i in range(7)]
    await write_batch(db.pool, partitions, [*batch, event("old", received=now - 45 * day)])
    settings = IngestSettings(retention_days=30, max_events_per_issue=3)
    removed = await enforce(db.pool, partitions, settings, now=datetime.fromtimestamp(now, UTC))
    assert removed == {"partitions": 1, "event_ids": 1, "events": 4}
    kept = await db.pool.fetch("SELECT event_id FROM events ORDER BY received_at DESC")
    assert [r["event_id"].hex for r in kept] == [e.event_id for e in batch[:3]]
    counts = {r["fingerprint"]: r["event_count"] for r in await issues(db)}
    assert counts == {"busy": 7, "old": 1}
    again = await enforce(db.pool, partitions, settings, now=datetime.fromtimestamp(now, UTC))
    assert again == {"partitions": 0, "event_ids": 0, "events": 0}


def test_compression_from_many_threads_at_once() -> None:
    """Batches are compressed in worker threads, several at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from daemon.events.pipeline.record import compress, decompress_payload

    payloads = [orjson.dumps({"n": n, "text": "x" * (n % 5000)}) for n in range(2000)]
    with ThreadPoolExecutor(8) as pool:
        packed = list(pool.map(compress, payloads))
        unpacked = list(pool.map(decompress_payload, packed))
    assert unpacked == payloads


async def test_a_partition_dropped_elsewhere_is_retried_not_skipped(db: Database) -> None:
    from daemon.events.storage.writer import MissingPartition

    partitions = parts.Partitions()
    store = event_store(lambda: db.pool, partitions)
    await store([Record(Position(1, 10), encode(event("f1")))])
    await db.pool.execute(f"DROP TABLE {parts.partition_name(parts.day_of(time.time()))}")
    record = Record(Position(1, 20), encode(event("f1")))
    with pytest.raises(MissingPartition):
        await store([record])          # the consumer retries this batch
    await store([record])              # and the retry creates the partition again
    assert await db.pool.fetchval("SELECT count(*) FROM events") == 1


async def test_retention_creates_tomorrows_partition(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    from daemon.events.settings import IngestSettings
    from daemon.events.storage.retention import enforce

    now = datetime.now(UTC)
    await enforce(db.pool, parts.Partitions(), IngestSettings(), now=now)
    days = await parts.existing_days(db.pool)
    assert {now.date(), (now + timedelta(days=1)).date()} <= days


async def short_ids(db: Database) -> dict[tuple[int, str], int]:
    rows = await db.pool.fetch("SELECT project_id, fingerprint, short_id FROM issues")
    return {(r["project_id"], r["fingerprint"]): r["short_id"] for r in rows}


async def test_issues_are_numbered_per_project_without_gaps(db: Database) -> None:
    """The upsert skips id sequence values each time it finds an issue already there;
    the numbers people see do not."""
    for batch in ([event("a"), event("a"), event("b")], [event("a"), event("b")],
                  [event("c"), event("a", project=2)], [event("c"), event("d")]):
        await write_batch(db.pool, parts.Partitions(), batch)
    ids = [r["id"] for r in await db.pool.fetch("SELECT id FROM issues ORDER BY id")]
    assert ids != list(range(1, len(ids) + 1))          # the gaps this is about
    assert await short_ids(db) == {(1, "a"): 1, (1, "b"): 2, (1, "c"): 3, (1, "d"): 4,
                                   (2, "a"): 1}
    assert await db.pool.fetchval("SELECT issue_counter FROM projects WHERE id = 1") == 4


async def test_concurrent_writers_number_new_issues_once_each(db: Database) -> None:
    batches = [[event(f"bug{(i * 7 + n) % 30}") for n in range(10)] for i in range(8)]
    nodes = [parts.Partitions(), parts.Partitions()]
    await asyncio.gather(*(write_batch(db.pool, nodes[i % 2], batch)
                           for i, batch in enumerate(batches)))
    numbers = sorted((await short_ids(db)).values())
    assert numbers == list(range(1, len(numbers) + 1))


async def test_an_issue_left_unnumbered_is_numbered_by_the_next_batch(db: Database) -> None:
    await write_batch(db.pool, parts.Partitions(), [event("a"), event("b")])
    await db.pool.execute("UPDATE issues SET short_id = NULL WHERE fingerprint = 'b'")
    await db.pool.execute("UPDATE projects SET issue_counter = 1 WHERE id = 1")
    await write_batch(db.pool, parts.Partitions(), [event("c")])
    assert sorted((await short_ids(db)).values()) == [1, 2, 3]
