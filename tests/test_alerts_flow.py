"""The alert pipeline against a real Postgres with a controllable clock: triggers written
with the batch, spike thresholds, critical issues, per-issue limits, digests, per-channel
rate limits, and idempotency across a journal replay and a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from daemon import config
from daemon.alerts import store as alert_store
from daemon.alerts.service import AlertService
from daemon.db import Database
from daemon.events.pipeline.record import EventRecord, encode
from daemon.events.projects import ProjectRegistry
from daemon.events.storage.partitions import Partitions
from daemon.events.storage.writer import event_store
from daemon.journal.log import Position, Record

START = 1_800_000_000.0      # a fixed "now", on a minute boundary

RULES = """
[alerts]
digest_window = "{digest}"
per_issue_interval = "{per_issue}"

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
max_per_hour = {per_hour}

[[alerts.rules]]
project = "app"
on = ["new", "regressed"]
channels = ["hook"]

[[alerts.rules]]
project = "*"
on = ["spike"]
spike_events = 3
spike_window = "5m"
channels = ["hook"]

[[alerts.rules]]
project = "app"
on = ["critical"]
critical_types = ["DatabaseError"]
critical_repeat = "1h"
channels = ["hook"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def settings_for(tmp_path: Path, *, digest: str = "0s", per_issue: str = "30m",
                 per_hour: int = 30) -> config.Settings:
    return config.loads(f'state_dir = "{tmp_path}"\n'
                        + RULES.format(digest=digest, per_issue=per_issue, per_hour=per_hour),
                        source=tmp_path / "egen.toml")


class World:
    def __init__(self, db: Database, settings: config.Settings) -> None:
        self.db = db
        self.clock = Clock()
        self.projects = ProjectRegistry([], lambda: db.pool)
        self.service = self.new_service(settings)
        self.store = event_store(lambda: db.pool, Partitions(),
                                 on_stored=self.service.on_stored)
        self.offset = 0

    def new_service(self, settings: config.Settings) -> AlertService:
        return AlertService(settings.alerts, hostname=settings.hostname,
                            base_url=settings.base_url, pool=lambda: self.db.pool,
                            owner=lambda: "node-a",
                            projects=self.projects, mail=lambda: None,
                            registry=CollectorRegistry(), clock=self.clock)

    def records(self, *events: EventRecord) -> list[Record]:
        found = []
        for e in events:
            self.offset += 10
            found.append(Record(Position(1, self.offset), encode(e)))
        return found

    async def ingest(self, *events: EventRecord) -> list[Record]:
        records = self.records(*events)
        await self.store(records)
        return records

    async def step(self) -> None:
        """What the service's loop does on a wake-up, minus the delivery."""
        await self.service.evaluate()
        await self.service.dispatch()

    async def sends(self) -> list[dict[str, Any]]:
        rows = await self.db.pool.fetch("SELECT id, channel, alerts, body FROM alert_sends "
                                        "ORDER BY id")
        return [{**dict(r), "body": orjson.loads(r["body"])} for r in rows]

    async def notifications(self) -> list[tuple[str, str]]:
        rows = await self.db.pool.fetch(
            "SELECT t.kind, n.state FROM alert_notifications n JOIN alert_triggers t "
            "ON t.id = n.trigger_id ORDER BY n.id")
        return [(r["kind"], r["state"]) for r in rows]


def event(fingerprint: str, at: float, *, title: str = "ValueError: bad input",
          level: str = "error", project: int = 1) -> EventRecord:
    return EventRecord(project_id=project, event_id=uuid.uuid4().hex, grouping_version=1,
                       fingerprint=fingerprint, title=title, culprit="app.views in index",
                       level=level, timestamp=at, received_at=at, environment="production",
                       release="1.0", payload=orjson.dumps({"message": title}))


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(url=pg_url, data_dir=tmp_path / "unused", min_size=1, max_size=4)
    await database.start()
    await database.pool.execute("INSERT INTO projects (id, name) VALUES (1, 'app'), "
                                "(2, 'web')")
    yield database
    await database.stop()


async def world_of(db: Database, settings: config.Settings) -> World:
    world = World(db, settings)
    await world.projects.refresh()
    return world


def kinds(send: dict[str, Any]) -> list[str]:
    return [a["kind"] for a in send["body"]["alerts"]]


async def test_a_new_issue_is_alerted_once_even_when_its_batch_is_replayed(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path))
    records = await world.ingest(event("f1", START))
    await world.store(records)              # the journal replayed after a crash
    await world.step()
    await world.step()
    [send] = await world.sends()
    assert kinds(send) == ["new"]
    assert send["body"]["alerts"][0]["issue"]["title"] == "ValueError: bad input"
    # Another project's new issue matches no new-issue rule.
    await world.ingest(event("w1", START, project=2))
    await world.step()
    assert len(await world.sends()) == 1


async def test_a_trigger_written_before_a_crash_is_sent_by_the_next_process(
        db: Database, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    world = await world_of(db, settings)
    await world.ingest(event("f1", START))   # committed; the process dies before alerting
    restarted = world.new_service(settings)
    await restarted.evaluate()
    await restarted.dispatch()
    await restarted.evaluate()
    await restarted.dispatch()
    assert [kinds(s) for s in await world.sends()] == [["new"]]


async def test_a_regression_is_alerted_and_a_second_within_the_interval_suppressed(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path, per_issue="30m"))
    await world.ingest(event("f1", START))
    await world.step()
    issue_id = await db.pool.fetchval("SELECT id FROM issues")
    for minutes in (1, 2):
        world.clock.now = START + minutes * 60
        await db.pool.execute("UPDATE issues SET status = 'resolved', regressed_at = NULL "
                              "WHERE id = $1", issue_id)
        await world.ingest(event("f1", world.clock.now))
        await world.step()
    assert await world.notifications() == [("new", "sent"), ("regressed", "suppressed"),
                                           ("regressed", "suppressed")]
    # Past the interval, the next regression is news again.
    world.clock.now = START + 45 * 60
    await db.pool.execute("UPDATE issues SET status = 'resolved', regressed_at = NULL "
                          "WHERE id = $1", issue_id)
    await world.ingest(event("f1", world.clock.now))
    await world.step()
    assert [kinds(s) for s in await world.sends()] == [["new"], ["regressed"]]


async def test_spikes_count_events_in_the_window_only(db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path, per_issue="0s"))
    # Three events (not more than the threshold of 3), spread over the window.
    for minute in range(3):
        world.clock.now = START + minute * 60
        await world.ingest(event("f1", world.clock.now))
    await world.step()
    assert [kinds(s) for s in await world.sends()] == [["new"]]
    # Ten minutes on, the old events are out of the window: three more are no spike.
    world.clock.now = START + 600
    await world.ingest(*(event("f1", world.clock.now) for _ in range(3)))
    await world.step()
    assert len(await world.sends()) == 1
    # The fourth in the window is.
    await world.ingest(event("f1", world.clock.now))
    await world.step()
    sends = await world.sends()
    assert kinds(sends[-1]) == ["spike"]
    assert sends[-1]["body"]["alerts"][0]["detail"].startswith("4 events in the last 5m")
    # A spike that goes on is alerted once per window, not at every batch.
    await world.ingest(event("f1", world.clock.now + 10))
    await world.step()
    assert len(await world.sends()) == 2
    world.clock.now += 300
    await world.ingest(*(event("f1", world.clock.now) for _ in range(4)))
    await world.step()
    assert [kinds(s) for s in await world.sends()][-1] == ["spike"]
    assert len(await world.sends()) == 3


async def test_critical_issues_alert_by_exception_type_and_repeat_hourly(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path, per_issue="0s"))
    critical = "psycopg.errors.DatabaseError: server closed the connection"
    await world.ingest(event("db", START, title=critical))
    await world.ingest(event("other", START, title="DatabaseErrorish: not this one"))
    await world.step()
    [send] = await world.sends()
    assert sorted(kinds(send)) == ["critical", "new", "new"]
    world.clock.now = START + 600
    await world.ingest(event("db", world.clock.now, title=critical))
    await world.step()
    assert len(await world.sends()) == 1          # same hour: no second critical alert
    world.clock.now = START + 3600
    await world.ingest(event("db", world.clock.now, title=critical))
    await world.step()
    assert kinds((await world.sends())[-1]) == ["critical"]


async def test_alerts_within_the_digest_window_fold_into_one_message(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path, digest="10m"))
    await world.ingest(event("a", START))
    await world.step()
    assert len(await world.sends()) == 1          # the first goes out at once
    for n, fingerprint in enumerate(("b", "c", "d")):
        world.clock.now = START + 60 * (n + 1)
        await world.ingest(event(fingerprint, world.clock.now))
        await world.step()
    assert len(await world.sends()) == 1          # held: the window is not over
    world.clock.now = START + 600
    await world.step()
    sends = await world.sends()
    assert len(sends) == 2 and sends[1]["alerts"] == 3
    assert sends[1]["body"]["digest"] is True and kinds(sends[1]) == ["new"] * 3


async def test_a_channel_over_its_hourly_limit_waits_and_loses_nothing(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path, per_hour=2))
    for n, fingerprint in enumerate(("a", "b", "c", "d")):
        world.clock.now = START + n
        await world.ingest(event(fingerprint, world.clock.now))
        await world.step()
    assert [s["alerts"] for s in await world.sends()] == [1, 1]
    world.clock.now = START + 3599
    await world.step()
    assert len(await world.sends()) == 2
    world.clock.now = START + 3601                # the first send left the hour
    await world.step()
    assert [s["alerts"] for s in await world.sends()] == [1, 1, 2]


async def test_ignored_issues_are_not_alerted(db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path))
    await world.ingest(event("f1", START))
    await db.pool.execute("UPDATE issues SET status = 'ignored'")
    await world.step()
    assert await world.sends() == [] and await world.notifications() == []


async def test_a_send_held_by_a_dead_node_is_retried_after_its_lease(
        db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path))
    await world.ingest(event("f1", START))
    await world.step()
    [claimed] = await alert_store.claim_sends(db.pool, owner="dead-node", now=START,
                                              lease=60)
    assert await alert_store.claim_sends(db.pool, owner="node-a", now=START + 59,
                                         lease=60) == []
    [again] = await alert_store.claim_sends(db.pool, owner="node-a", now=START + 61,
                                            lease=60)
    assert again.id == claimed.id and again.attempts == 2
    # The dead node's late report is not taken for the live node's.
    await alert_store.finish(db.pool, claimed, owner="dead-node", now=START + 62, ok=True,
                             detail="late", duration=0.1, retry_at=None)
    assert await db.pool.fetchval("SELECT state FROM alert_sends") == "pending"


async def test_history_past_keep_is_pruned(db: Database, tmp_path: Path) -> None:
    world = await world_of(db, settings_for(tmp_path))
    await world.ingest(event("f1", time.time()))
    await world.step()
    now = time.time() + 40 * 86400
    await alert_store.prune(db.pool, now=now, keep=30 * 86400)
    counts = await db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM alert_triggers) AS t, "
        "(SELECT count(*) FROM alert_notifications) AS n, "
        "(SELECT count(*) FROM issue_minutes) AS m")
    assert dict(counts) == {"t": 0, "n": 0, "m": 0}
