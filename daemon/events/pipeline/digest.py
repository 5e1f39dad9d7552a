"""The digest of events the Sentry endpoints accepted unread (daemon.events.pipeline.pending):
parse, normalize, fingerprint and take facets, in the batch writer, before storing.

Small batches are digested in the event loop; a batch of `pool_threshold` or more goes
to one worker process, so that under load the parsing runs on a second core instead of
competing with the requests the loop answers. An event that turns out to be invalid was
already acknowledged: it is not stored, it is counted per project in
`egen_events_invalid_after_accept_total{project}` and logged once a minute per project
with the reason, and it never holds up the rest of the batch. A worker that dies is
replaced and its batch digested in the loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import orjson
from prometheus_client import CollectorRegistry, Counter

from daemon.events.pipeline.facets import warm_up
from daemon.events.pipeline.pending import decode_pending, is_pending
from daemon.events.pipeline.prepare import prepare_event
from daemon.journal.log import Record
from daemon.logs import fields, get_logger

log = get_logger("ingest.digest")

LOG_EVERY = 60.0
POOL_THRESHOLD = 64
# Outcome of one pending record: ("accepted", event record) or (outcome, reason), with
# the project id and client address the log line needs.
Digested = tuple[str, bytes | str, int, str | None]


def digest_one(data: bytes, *, max_event_size: int, with_facets: bool) -> Digested:
    pending = decode_pending(data)
    try:
        event = orjson.loads(pending.payload)
    except orjson.JSONDecodeError as err:
        return "invalid", f"not JSON: {err}", pending.project_id, pending.client_ip
    if not isinstance(event, dict):
        return ("invalid", "not a JSON object", pending.project_id, pending.client_ip)
    raw: bytes | None = pending.payload
    if "event_id" not in event and pending.event_id is not None:
        event["event_id"] = pending.event_id          # the id the SDK was answered
        raw = None
    result, record = prepare_event(pending.project_id, event, received=pending.received_at,
                                   max_event_size=max_event_size, with_facets=with_facets,
                                   raw=raw, client_ip=pending.client_ip)
    if record is None:
        return result.outcome, result.error or "", pending.project_id, pending.client_ip
    return "accepted", record, pending.project_id, pending.client_ip


def digest_batch(batch: list[bytes], max_event_size: int, with_facets: bool) -> list[Digested]:
    """In the worker process: every record's outcome; a record that breaks the digest
    is invalid, never the batch."""
    out: list[Digested] = []
    for data in batch:
        try:
            out.append(digest_one(data, max_event_size=max_event_size,
                                  with_facets=with_facets))
        except Exception as err:     # a bug or a corrupt record: that event only
            out.append(("invalid", f"cannot digest: {type(err).__name__}: {err}", 0, None))
    return out


class Digester:
    name = "digest"

    def __init__(self, registry: CollectorRegistry, *, max_event_size: int,
                 with_facets: bool, workers: int = 1, pool_threshold: int = POOL_THRESHOLD,
                 project_name: Callable[[int], str | None] = lambda _: None) -> None:
        self.max_event_size = max_event_size
        self.with_facets = with_facets
        self.workers = workers
        self.pool_threshold = pool_threshold
        self.project_name = project_name
        self.invalid = Counter("egen_events_invalid_after_accept_total",
                               "Events accepted unread (Sentry envelopes) that the digest "
                               "found invalid, by project; acknowledged, not stored.",
                               ["project"], registry=registry)
        self._pool: Executor | None = None
        self._logged: dict[str, float] = {}

    async def start(self) -> None:
        pass                         # the worker starts with the first big batch

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> Executor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=warm_up,
                mp_context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def digest(self, records: list[Record]) -> list[Record]:
        """The batch with its pending records turned into event records (the invalid
        ones left out and counted); other records pass through unchanged."""
        pending = [i for i, r in enumerate(records) if is_pending(r.payload)]
        if not pending:
            return records
        batch = [records[i].payload for i in pending]
        outcomes = await self._run(batch)
        out = list(records)
        dropped = set()
        for i, (outcome, value, project_id, client_ip) in zip(pending, outcomes, strict=True):
            if outcome == "accepted":
                assert isinstance(value, bytes)
                out[i] = Record(records[i].position, value)
            else:
                dropped.add(i)
                self._count(outcome, str(value), project_id, client_ip)
        return [r for i, r in enumerate(out) if i not in dropped]

    async def _run(self, batch: list[bytes]) -> list[Digested]:
        if self.workers > 0 and len(batch) >= self.pool_threshold:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._executor(), digest_batch, batch,
                                                  self.max_event_size, self.with_facets)
            except BrokenProcessPool:
                log.error("digest worker died; digesting the batch in the loop")
                self._pool = None
        out = []
        for n, data in enumerate(batch):
            if n and n % 200 == 0:
                await asyncio.sleep(0)       # a big batch must not freeze the loop
            out.extend(digest_batch([data], self.max_event_size, self.with_facets))
        return out

    def _count(self, outcome: str, reason: str, project_id: int, client_ip: str | None
               ) -> None:
        # Counted apart from egen_events_outcomes_total, where the event already counts
        # as accepted: it was acknowledged, and every event has one outcome there.
        project = self.project_name(project_id) or str(project_id)
        self.invalid.labels(project).inc()
        now = time.monotonic()
        last = self._logged.get(project)
        if last is not None and now - last < LOG_EVERY:
            return
        if len(self._logged) > 1024:
            self._logged.clear()
        self._logged[project] = now
        log.warning("accepted event is invalid; not stored", extra=fields(
            project=project, address=client_ip or "-", error=reason[:500]))

