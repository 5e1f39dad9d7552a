"""The journal consumer with real journals: Postgres outages through a proxy that cuts the
connection (contract 2), poison records, bounded stop, drained(), metrics and backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.journal.consumer import JournalConsumer, PoisonRecord
from daemon.journal.log import Journal, Record
from daemon.mail.queue.flusher import mail_store
from tests.test_app import proxied
from tests.test_mail_queue import (
    assert_stored_exactly,
    mail_records,
    open_database,
    open_journal,
    queue_counts,
)


class LogWatch(logging.Handler):
    """Collects egen.consumer records; `when(predicate)` is an event set once it holds."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waits: list[tuple[object, asyncio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for predicate, event in self._waits:
            if predicate(self.records):  # type: ignore[operator]
                event.set()

    def when(self, predicate: object) -> asyncio.Event:
        event = asyncio.Event()
        if predicate(self.records):  # type: ignore[operator]
            event.set()
        self._waits.append((predicate, event))
        return event

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@contextmanager
def watch_logs() -> Iterator[LogWatch]:
    logger = logging.getLogger("egen.consumer")
    handler, level = LogWatch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def sample(registry: CollectorRegistry, name: str, consumer: str = "mail") -> float:
    value = registry.get_sample_value(name, {"consumer": consumer})
    return 0.0 if value is None else value


FAILED = "storing journal records failed; they stay in the journal and are retried with backoff"


def failures_logged(n: int) -> object:
    """Predicate: the outage warning plus n - 1 "still failing" retries were logged."""
    return lambda records: sum(r.getMessage() in (FAILED, "storing still failing")
                               for r in records) >= n


# -- contract 2: Postgres blips -------------------------------------------------------------


async def test_postgres_outage_is_buffered_by_the_journal_and_stored_once(
        pg_url: str, tmp_path: Path) -> None:
    proxy, _ = proxied(pg_url, 0)
    await proxy.start()
    _, url = proxied(pg_url, proxy.port)
    db = await open_database(url, tmp_path, connect_timeout=5.0)
    journal = await open_journal(tmp_path / "journal")
    registry = CollectorRegistry()
    consumer = JournalConsumer(journal, mail_store(db.pool), name="mail", max_records=10,
                               min_backoff=0.02, max_backoff=0.1, registry=registry)
    mails = mail_records(90)
    try:
        with watch_logs() as logs:
            await consumer.start()
            for _, _, payload in mails[:20]:
                await journal.append(payload)
            await consumer.drained()
            assert await queue_counts(db.pool) == (20, sum(
                len(e.recipients) for e, _, _ in mails[:20]), 20)

            proxy.cut()
            outage = logs.when(failures_logged(1))
            for _, _, payload in mails[20:50]:      # appends do not need Postgres
                await journal.append(payload)
            await outage.wait()
            retried = logs.when(failures_logged(4))
            for _, _, payload in mails[50:90]:
                await journal.append(payload)
            await retried.wait()
            assert journal.unconsumed_bytes > 0
            assert sample(registry, "egen_consumer_failing") == 1

            proxy.restore()
            await consumer.drained()
            assert journal.unconsumed_bytes == 0
            await assert_stored_exactly(db.pool, mails)
            assert sample(registry, "egen_consumer_store_failures_total") >= 4
            assert sample(registry, "egen_consumer_outages_total") == 1
            assert sample(registry, "egen_consumer_failing") == 0
            assert sample(registry, "egen_consumer_records_total") == 90
            assert logs.messages(logging.WARNING) == [FAILED]
            assert logs.messages(logging.INFO) == ["storing journal records again"]
            [recovered] = [r for r in logs.records if r.levelno == logging.INFO]
            assert recovered.egen_fields["failures"] >= 4  # type: ignore[attr-defined]
    finally:
        await consumer.stop()
        await journal.close()
        await db.stop()
        await proxy.stop()


# -- poison records -------------------------------------------------------------------------


async def test_poison_records_are_skipped_and_counted(pg_url: str, tmp_path: Path) -> None:
    db = await open_database(pg_url, tmp_path)
    journal = await open_journal(tmp_path / "journal")
    registry = CollectorRegistry()
    consumer = JournalConsumer(journal, mail_store(db.pool), name="mail", registry=registry)
    mails = mail_records(4)
    good = [p for _, _, p in mails]
    truncated = good[0][:40]
    try:
        with watch_logs() as logs:
            await consumer.start()
            await journal.append_many([good[0], b"garbage, not a mail record", good[1],
                                       truncated, good[2]])
            await consumer.drained()
            assert journal.unconsumed_bytes == 0
            await assert_stored_exactly(db.pool, mails[:3])
            assert sample(registry, "egen_consumer_poison_records_total") == 2
            assert sample(registry, "egen_consumer_records_total") == 3
            assert sample(registry, "egen_consumer_store_failures_total") == 0
            errors = [r for r in logs.records if r.levelno == logging.ERROR]
            assert [r.getMessage() for r in errors] == [
                "skipping a journal record that cannot be stored"] * 2
            reasons = [r.egen_fields["reason"] for r in errors]  # type: ignore[attr-defined]
            assert reasons[0] == "not a mail record (starts with b'gar')"
            assert "exceeds the record" in reasons[1]
            # Not stuck: what comes next is stored too.
            await journal.append(good[3])
            await consumer.drained()
            await assert_stored_exactly(db.pool, mails)
    finally:
        await consumer.stop()
        await journal.close()
        await db.stop()


async def test_a_batch_of_only_poison_is_checkpointed(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    calls: list[list[bytes]] = []

    async def store(records: list[Record]) -> None:
        calls.append([r.payload for r in records])
        for record in records:
            if record.payload.startswith(b"bad"):
                raise PoisonRecord(record.position, "bad")

    consumer = JournalConsumer(journal, store, name="t")
    await consumer.start()
    try:
        await journal.append_many([b"bad 1", b"bad 2"])
        await consumer.drained()
        assert journal.unconsumed_bytes == 0
        assert calls == [[b"bad 1", b"bad 2"], [b"bad 2"]]
    finally:
        await consumer.stop()
        await journal.close()


# -- stop, restart, drained ---------------------------------------------------------------


async def test_stop_lets_the_batch_in_flight_finish(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    entered, release = asyncio.Event(), asyncio.Event()
    stored: list[bytes] = []

    async def store(records: list[Record]) -> None:
        entered.set()
        await release.wait()
        stored.extend(r.payload for r in records)

    consumer = JournalConsumer(journal, store, name="t", stop_timeout=30)
    await consumer.start()
    await journal.append_many([b"one", b"two", b"three"])
    await entered.wait()
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0)          # one turn: stop() runs up to waiting for the batch
    assert not stopping.done()
    release.set()
    await stopping
    assert stored == [b"one", b"two", b"three"]
    assert journal.unconsumed_bytes == 0          # checkpointed before stopping
    await journal.close()


async def test_stop_abandons_a_stuck_batch_which_stays_in_the_journal(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    entered, never = asyncio.Event(), asyncio.Event()
    cancelled: list[bool] = []

    async def stuck(records: list[Record]) -> None:
        entered.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    payloads = [f"record {i}".encode() for i in range(5)]
    first = JournalConsumer(journal, stuck, name="t", stop_timeout=0.05)
    await first.start()
    await journal.append_many(payloads)
    await entered.wait()
    await first.stop()
    assert cancelled == [True]
    assert journal.unconsumed_bytes > 0
    with pytest.raises(RuntimeError, match="not running"):
        await first.drained()

    # The same journal object, a new consumer: every record comes again, none is lost.
    stored: list[bytes] = []

    async def store(records: list[Record]) -> None:
        stored.extend(r.payload for r in records)

    second = JournalConsumer(journal, store, name="t")
    await second.start()
    try:
        await second.drained()
        assert stored == payloads
    finally:
        await second.stop()
        await journal.close()


async def test_stopped_during_an_outage_the_batch_is_replayed_after_reopen(
        tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    failing = asyncio.Event()

    async def down(records: list[Record]) -> None:
        failing.set()
        raise ConnectionRefusedError("postgres is down")

    consumer = JournalConsumer(journal, down, name="t", min_backoff=10, max_backoff=10)
    await consumer.start()
    await journal.append_many([b"a", b"b"])
    await failing.wait()
    await consumer.stop()           # in backoff: stops at once
    await journal.close()

    journal = await open_journal(tmp_path / "journal")
    stored: list[bytes] = []

    async def store(records: list[Record]) -> None:
        stored.extend(r.payload for r in records)

    consumer = JournalConsumer(journal, store, name="t")
    await consumer.start()
    try:
        await consumer.drained()
        assert stored == [b"a", b"b"]
    finally:
        await consumer.stop()
        await journal.close()


async def test_a_failing_store_is_retried_with_the_same_batch(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    registry = CollectorRegistry()
    calls: list[list[bytes]] = []

    async def flaky(records: list[Record]) -> None:
        calls.append([r.payload for r in records])
        if len(calls) <= 3:
            raise TimeoutError("statement timed out")

    consumer = JournalConsumer(journal, flaky, name="t", registry=registry,
                               min_backoff=0.001, max_backoff=0.002)
    with watch_logs() as logs:
        await consumer.start()
        try:
            await journal.append_many([b"x", b"y"])
            await consumer.drained()
        finally:
            await consumer.stop()
    assert calls == [[b"x", b"y"]] * 4
    assert sample(registry, "egen_consumer_store_failures_total", "t") == 3
    assert sample(registry, "egen_consumer_batches_total", "t") == 1
    assert logs.messages(logging.WARNING) == [FAILED]
    [warning] = [r for r in logs.records if r.levelno == logging.WARNING]
    assert warning.exc_info is None            # an expected failure: no traceback
    assert journal.unconsumed_bytes == 0
    await journal.close()


async def test_an_unexpected_error_is_logged_with_its_traceback(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    calls = 0

    async def buggy(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("bug")

    consumer = JournalConsumer(journal, buggy, name="t", min_backoff=0.001, max_backoff=0.002)
    with watch_logs() as logs:
        await consumer.start()
        try:
            await journal.append(b"x")
            await consumer.drained()
        finally:
            await consumer.stop()
    [warning] = [r for r in logs.records if r.levelno == logging.WARNING]
    assert warning.exc_info is not None and warning.exc_info[0] is KeyError
    await journal.close()


async def test_drained_on_an_empty_journal_returns_at_once(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")

    async def store(records: list[Record]) -> None:
        raise AssertionError("nothing to store")

    consumer = JournalConsumer(journal, store, name="t")
    await consumer.drained()                     # not even started: nothing to wait for
    await consumer.start()
    await consumer.drained()
    await consumer.stop()
    await journal.close()


async def test_drained_waits_for_what_was_durable_when_called(tmp_path: Path) -> None:
    journal = await open_journal(tmp_path / "journal")
    stored: list[bytes] = []
    gate = asyncio.Event()

    async def store(records: list[Record]) -> None:
        await gate.wait()
        stored.extend(r.payload for r in records)

    consumer = JournalConsumer(journal, store, name="t", max_records=2)
    await consumer.start()
    try:
        await journal.append_many([b"1", b"2", b"3", b"4", b"5"])
        waiting = asyncio.create_task(consumer.drained())
        gate.set()
        await waiting
        assert stored == [b"1", b"2", b"3", b"4", b"5"]
        assert journal.unconsumed_bytes == 0
    finally:
        await consumer.stop()
        await journal.close()


async def test_two_consumers_share_one_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    journals = [await open_journal(tmp_path / name) for name in ("a", "b")]

    async def store(records: list[Record]) -> None:
        return None

    consumers = [JournalConsumer(j, store, name=n, registry=registry)
                 for j, n in zip(journals, ("a", "b"), strict=True)]
    for c in consumers:
        await c.start()
    await journals[0].append_many([b"1", b"2"])
    await journals[1].append(b"3")
    for c in consumers:
        await c.drained()
        await c.stop()
    assert sample(registry, "egen_consumer_records_total", "a") == 2
    assert sample(registry, "egen_consumer_records_total", "b") == 1
    for j in journals:
        await j.close()


@pytest.mark.parametrize(("attempt", "low", "high"), [
    (1, 0.1, 0.2), (2, 0.2, 0.4), (3, 0.4, 0.8), (5, 1.6, 3.2), (6, 2.5, 5.0), (500, 2.5, 5.0)])
def test_backoff_grows_exponentially_with_jitter_and_a_cap(
        tmp_path: Path, attempt: int, low: float, high: float) -> None:
    consumer = JournalConsumer(Journal(tmp_path, name="t", max_size=1), _never, name="t",
                               min_backoff=0.2, max_backoff=5.0)
    delays = {consumer._backoff(attempt) for _ in range(200)}
    assert all(low <= d <= high for d in delays)
    assert len(delays) > 1                       # jittered


async def _never(records: list[Record]) -> None:
    raise AssertionError("not called")


def test_invalid_settings_are_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path, name="t", max_size=1)
    with pytest.raises(ValueError, match="min_backoff"):
        JournalConsumer(journal, _never, name="t", min_backoff=1, max_backoff=0.5)
    with pytest.raises(ValueError, match="max_records"):
        JournalConsumer(journal, _never, name="t", max_records=0)

