"""The digest of events accepted unread: the worker process and the event loop give the
same records, a worker that dies costs nothing but a fallback, and no payload breaks it."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from daemon.events.pipeline.digest import Digester, digest_batch
from daemon.events.pipeline.pending import PendingEvent, encode_pending
from daemon.events.pipeline.record import decode
from daemon.journal.log import Position, Record


def pending(payload: bytes, event_id: str | None = None) -> bytes:
    return encode_pending(PendingEvent(1, 1_700_000_000.0, "192.0.2.7", event_id,
                                       "sentry", payload))


def event(n: int) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "level": "error", "platform": "python",
            "user": {"ip_address": "{{auto}}"}, "tags": {"n": str(n % 3)},
            "exception": {"values": [{"type": "KeyError", "value": f"'k{n % 5}'",
                                      "stacktrace": {"frames": [
                                          {"filename": "app.py", "function": f"f{n % 4}",
                                           "lineno": n, "in_app": True}]}}]}}


def batch() -> list[Record]:
    payloads = [orjson.dumps(event(n)) for n in range(80)]
    payloads[10] = b"{not json"
    payloads[20] = b'{"level": "loud"}'
    return [Record(Position(0, i), pending(p)) for i, p in enumerate(payloads)]


def shown(records: list[Record]) -> list[tuple[Any, ...]]:
    out = []
    for r in records:
        e = decode(r.payload)
        out.append((r.position, e.event_id, e.fingerprint, e.title, e.tags, e.user))
    return out


@pytest.fixture
async def pooled() -> Any:
    digester = Digester(CollectorRegistry(), max_event_size=2**20, with_facets=True,
                        workers=1, pool_threshold=1)
    yield digester
    await digester.stop()


async def test_the_worker_and_the_loop_digest_alike(pooled: Digester) -> None:
    inline = Digester(CollectorRegistry(), max_event_size=2**20, with_facets=True, workers=0)
    records = batch()
    by_pool = await pooled.digest(records)
    assert pooled._pool is not None                 # the batch did go to the worker
    assert shown(by_pool) == shown(await inline.digest(records))
    assert len(by_pool) == 78
    assert decode(by_pool[0].payload).user is not None
    for digester in (pooled, inline):
        assert digester.invalid.labels("1")._value.get() == 2


async def test_a_worker_that_dies_is_replaced_and_its_batch_digested_anyway(
        pooled: Digester) -> None:
    await pooled.digest(batch()[:2])
    assert pooled._pool is not None
    for pid in list(pooled._pool._processes):       # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
    assert len(await pooled.digest(batch())) == 78
    assert len(await pooled.digest(batch())) == 78      # a new worker


async def test_records_that_are_no_pending_events_pass_through(pooled: Digester) -> None:
    other = [Record(Position(0, 1), b"EV1 whatever")]
    assert await pooled.digest(other) == other


def test_the_envelope_id_goes_to_an_event_that_has_none() -> None:
    [(outcome, record, _, _)] = digest_batch(
        [pending(b'{"message": "hi"}', "ab" * 16)], 2**20, True)
    assert outcome == "accepted" and isinstance(record, bytes)
    assert decode(record).event_id == "ab" * 16


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                              | st.text(max_size=20),
                              lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.sampled_from(
                                  ["message", "level", "exception", "values", "tags",
                                   "user", "event_id", "timestamp", "x"]), inner, max_size=5),
                              max_leaves=20).map(orjson.dumps)))
def test_no_payload_breaks_the_digest(payload: bytes) -> None:
    [(outcome, value, project_id, _)] = digest_batch([pending(payload)], 2**20, True)
    assert outcome in ("accepted", "invalid") and project_id == 1
    assert isinstance(value, bytes) if outcome == "accepted" else isinstance(value, str)
