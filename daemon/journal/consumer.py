"""Drains one journal into a storage function in batches: the half of contract 2 that
catches up after Postgres comes back.

At-least-once: a batch is checkpointed only after the store function returned, so a crash,
a stop or an outage replays it, and store functions must be idempotent. While storing
fails the journal is the buffer (intake keeps appending until the journal's cap); the
consumer retries the same batch with exponential backoff and jitter, and logs the outage
once when it begins and once when it ends. A record that can never be stored (the store
function raises PoisonRecord) is logged, counted and skipped, so it cannot block the
journal forever. Knows nothing of what the records mean.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from weakref import WeakKeyDictionary

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.journal.log import Journal, JournalClosed, Position, Record
from daemon.logs import fields, get_logger

log = get_logger("consumer")

Store = Callable[[list[Record]], Awaitable[None]]

# Failures expected while Postgres or the network blips: logged without a traceback.
_EXPECTED: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError, asyncpg.QueryCanceledError,
)


class PoisonRecord(Exception):
    """Raised by a store function for a record that can never be stored. It must be raised
    before anything of the batch is committed, or the store must be idempotent (it is
    called again with the rest of the batch)."""

    def __init__(self, position: Position, reason: str) -> None:
        super().__init__(f"record ending at {position.segment}:{position.offset} "
                         f"cannot be stored: {reason}")
        self.position = position
        self.reason = reason


class ConsumerMetrics:
    """The consumer collectors of one registry, labelled by consumer name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["consumer"], registry=registry)

        self.batches = counter("egen_consumer_batches_total", "Batches stored and checkpointed.")
        self.records = counter("egen_consumer_records_total", "Records stored.")
        self.failures = counter("egen_consumer_store_failures_total",
                                "Failed attempts to store a batch (each retry counts).")
        self.outages = counter("egen_consumer_outages_total",
                               "Periods during which storing failed until it succeeded again.")
        self.poison = counter("egen_consumer_poison_records_total",
                              "Records skipped because they can never be stored.")
        self.failing = Gauge("egen_consumer_failing",
                             "1 while storing fails and the journal is the buffer, else 0.",
                             ["consumer"], registry=registry)
        self.store_seconds = Histogram("egen_consumer_store_seconds",
                                       "Time to store one batch (successful attempts).",
                                       ["consumer"], registry=registry)


_METRICS: WeakKeyDictionary[CollectorRegistry, ConsumerMetrics] = WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> ConsumerMetrics:
    """One ConsumerMetrics per registry, so several consumers can share it."""
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = ConsumerMetrics(registry)
    return metrics


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class JournalConsumer:
    """One drain task: read a batch, store it, checkpoint it; retry while storing fails."""

    def __init__(self, journal: Journal, store: Store, *, name: str,
                 max_records: int = 500, max_bytes: int = 8 * 2**20, idle_wait: float = 1.0,
                 min_backoff: float = 0.2, max_backoff: float = 30.0,
                 registry: CollectorRegistry | None = None,
                 store_timeout: float = 60.0, stop_timeout: float = 5.0) -> None:
        """`store_timeout` bounds one store call (a stalled connection is a failure like any
        other); `stop_timeout` is how long stop() lets a batch in flight finish."""
        if max_records < 1 or max_bytes < 1 or min_backoff <= 0 or max_backoff < min_backoff:
            raise ValueError("max_records and max_bytes must be positive and "
                             "0 < min_backoff <= max_backoff")
        self.name = name
        self._journal = journal
        self._store = store
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._idle_wait = idle_wait
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._store_timeout = store_timeout
        self._stop_timeout = stop_timeout
        m = _metrics_for(registry if registry is not None else CollectorRegistry())
        self._m_batches = m.batches.labels(name)
        self._m_records = m.records.labels(name)
        self._m_failures = m.failures.labels(name)
        self._m_outages = m.outages.labels(name)
        self._m_poison = m.poison.labels(name)
        self._m_failing = m.failing.labels(name)
        self._m_store_seconds = m.store_seconds.labels(name)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._storing = False                       # a store or checkpoint is in flight
        # Last checkpoint this consumer gave the journal (which writes the file within
        # CHECKPOINT_EVERY of it).
        self._checkpointed: Position | None = None
        self._progress = asyncio.Event()            # replaced after every set()
        self._outage_started: float | None = None
        self._outage_failures = 0

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"consumer {self.name!r} is already running")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        """Let a batch in flight finish within stop_timeout, then stop. Whatever was not
        stored stays in the journal (from its checkpoint) for the next start."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        if self._storing:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._stop_timeout)
            except TimeoutError:
                log.warning("batch in flight did not finish in time; it stays in the journal",
                            extra=fields(consumer=self.name, timeout=self._stop_timeout))
            except Exception:
                pass  # _run logs its own failures; gather below collects the result
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._task = None

    async def drained(self) -> None:
        """Return once every record that was durable in the journal when called is
        checkpointed. Raises RuntimeError if the consumer stops before that."""
        if self._journal.unconsumed_bytes == 0:
            return
        target = self._journal.durable_end
        while not self._reached(target):
            if self._task is None or self._task.done():
                raise RuntimeError(f"consumer {self.name!r} is not running")
            await self._progress.wait()

    def _reached(self, target: Position) -> bool:
        if self._journal.unconsumed_bytes == 0:
            return True
        return self._checkpointed is not None and self._checkpointed >= target

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _run(self) -> None:
        read_failures = 0
        try:
            while not self._stopping:
                try:
                    records = await self._journal.read(
                        max_records=self._max_records, max_bytes=self._max_bytes,
                        timeout=self._idle_wait)
                except JournalClosed:
                    raise
                except Exception as exc:
                    read_failures += 1
                    log.error("reading the journal failed; retrying", exc_info=True,
                              extra=fields(consumer=self.name, error=_describe(exc)))
                    self._journal.rewind()
                    await asyncio.sleep(self._backoff(read_failures))
                    continue
                read_failures = 0
                if records:
                    await self._consume(records)
        except JournalClosed:
            log.info("journal closed; consumer stops", extra=fields(consumer=self.name))
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("consumer failed", extra=fields(consumer=self.name))
            raise
        finally:
            # Not stored means not consumed: a later consumer of this journal object reads
            # the same records again from the checkpoint.
            self._journal.rewind()
            self._notify()

    async def _consume(self, records: list[Record]) -> None:
        """Store one batch (minus poison records) and checkpoint it, retrying until it
        succeeds or the consumer stops."""
        pending = list(records)
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            self._storing = True
            started = loop.time()
            try:
                if pending:
                    async with asyncio.timeout(self._store_timeout):
                        await self._store(pending)
                    self._m_store_seconds.observe(loop.time() - started)
                await self._journal.checkpoint(records[-1].position)
            except PoisonRecord as poison:
                if self._skip(pending, poison):
                    continue
                error: Exception = RuntimeError(
                    f"store function raised PoisonRecord for a record not in the batch: "
                    f"{poison}")
            except JournalClosed:
                raise
            except Exception as exc:
                error = exc
            else:
                self._stored(len(pending), records[-1].position)
                return
            finally:
                self._storing = False
            self._journal.rewind()
            self._failed(error)
            if self._stopping:
                return
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    def _skip(self, pending: list[Record], poison: PoisonRecord) -> bool:
        for i, record in enumerate(pending):
            if record.position == poison.position:
                del pending[i]
                self._m_poison.inc()
                log.error("skipping a journal record that cannot be stored", extra=fields(
                    consumer=self.name, segment=poison.position.segment,
                    offset=poison.position.offset, bytes=len(record.payload),
                    reason=poison.reason))
                return True
        return False

    def _failed(self, exc: Exception) -> None:
        self._m_failures.inc()
        self._outage_failures += 1
        if self._outage_started is not None:
            log.debug("storing still failing", extra=fields(
                consumer=self.name, failures=self._outage_failures, error=_describe(exc)))
            return
        self._outage_started = asyncio.get_running_loop().time()
        self._m_outages.inc()
        self._m_failing.set(1)
        log.warning("storing journal records failed; they stay in the journal and are "
                    "retried with backoff", exc_info=None if isinstance(exc, _EXPECTED) else exc,
                    extra=fields(consumer=self.name, error=_describe(exc),
                                 unconsumed_bytes=self._journal.unconsumed_bytes))

    def _stored(self, count: int, position: Position) -> None:
        self._m_batches.inc()
        self._m_records.inc(count)
        self._checkpointed = position
        if self._outage_started is not None:
            seconds = asyncio.get_running_loop().time() - self._outage_started
            log.info("storing journal records again", extra=fields(
                consumer=self.name, failures=self._outage_failures,
                outage_seconds=round(seconds, 3)))
            self._outage_started = None
            self._outage_failures = 0
            self._m_failing.set(0)
        self._notify()

    def _backoff(self, attempt: int) -> float:
        """Exponential from min_backoff, capped at max_backoff, with jitter in [1/2, 1]."""
        delay = min(self._max_backoff, self._min_backoff * 2 ** min(attempt - 1, 30))
        return delay * random.uniform(0.5, 1.0)
