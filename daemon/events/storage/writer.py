"""Writes batches of accepted events into Postgres: one transaction per batch, with COPY
into a staging table and one statement that deduplicates event ids, upserts each issue
once (counts, first/last seen, regression) and inserts the events, together with the
per-minute counts spike rules read and the new and regressed issues alerts start from
(in the same transaction, so an alert can never be lost to a crash or sent for an event
that was not stored).

Idempotent, as a journal consumer's store must be: a replayed batch finds its event ids
taken and changes nothing. Nodes sharing the database add to the same issue rows (the
upsert adds counts), which is how two nodes receiving one bug end with one issue whose
count is the sum. Knows the tables, nothing of HTTP or Sentry.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson

from daemon.events.pipeline.record import EventRecord, RecordError, compress, decode
from daemon.events.storage.partitions import Partitions, day_of
from daemon.journal.consumer import PoisonRecord
from daemon.journal.log import Record
from daemon.journal.poison import DATA_ERRORS, find_poison
from daemon.logs import fields, get_logger

log = get_logger("events.store")

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS event_batch (
    n integer, project_id integer, event_id uuid, grouping_version smallint,
    fingerprint text, title text, culprit text, level text, ts timestamptz,
    received_at timestamptz, environment text, release text, payload bytea,
    tags text, user_key text, user_id text, user_email text,
    user_name text, user_ip text
) ON COMMIT DELETE ROWS
"""
_COLUMNS = ("n", "project_id", "event_id", "grouping_version", "fingerprint", "title",
            "culprit", "level", "ts", "received_at", "environment", "release", "payload")
# Tags go as one JSON object per event: Postgres takes them apart, as egen's loop is
# the busier side of an ingest burst (binary COPY of two text arrays cost it more).
_FACET_COLUMNS = ("tags", "user_key", "user_id", "user_email",
                  "user_name", "user_ip")

# A resolved issue reopens on an event, unless it was resolved "in the next release":
# then only an event of a release first seen after that one reopens it (a release new
# to the database counts as newer). The batch's releases per issue come from `agg`.
_REGRESSES = """(i.resolved_in_release IS NULL OR EXISTS (
        SELECT 1 FROM agg a, unnest(a.releases) AS v(version)
         WHERE a.project_id = i.project_id AND a.grouping_version = i.grouping_version
           AND a.fingerprint = i.fingerprint AND v.version <> i.resolved_in_release
           AND coalesce((SELECT r.first_seen FROM releases r
                          WHERE r.project_id = i.project_id AND r.version = v.version),
                        'infinity')
             > coalesce((SELECT r.first_seen FROM releases r
                          WHERE r.project_id = i.project_id
                            AND r.version = i.resolved_in_release), '-infinity')))"""
# An ignored issue comes back once its date has passed or its event count is reached.
_UNIGNORED = """((i.ignore_until IS NOT NULL AND i.ignore_until <= now())
        OR (i.ignore_until_count IS NOT NULL
            AND i.event_count + excluded.event_count >= i.ignore_until_count))"""
_REOPEN = f"i.status = 'resolved' AND {_REGRESSES}"
_UNIGNORE = f"i.status = 'ignored' AND {_UNIGNORED}"

# Within one statement every CTE sees the tables as they were before it, so each step
# passes on what it did through RETURNING. Issues are upserted in a fixed order, so two
# nodes' batches lock shared issue rows in the same order and cannot deadlock on them;
# the per-issue rows that follow are written in key order for the same reason.
_ISSUES = f"""
WITH fresh AS (
    INSERT INTO event_ids (project_id, event_id, received_at)
    SELECT DISTINCT ON (project_id, event_id) project_id, event_id, received_at
      FROM event_batch ORDER BY project_id, event_id, n
    ON CONFLICT DO NOTHING
    RETURNING project_id, event_id
), b AS (
    SELECT DISTINCT ON (e.project_id, e.event_id) e.*
      FROM event_batch e JOIN fresh USING (project_id, event_id)
     ORDER BY e.project_id, e.event_id, e.n
), agg AS (
    SELECT project_id, grouping_version, fingerprint, count(*) AS events,
           min(received_at) AS first_seen, max(received_at) AS last_seen,
           (array_agg(title ORDER BY n DESC))[1] AS title,
           (array_agg(culprit ORDER BY n DESC))[1] AS culprit,
           (array_agg(level ORDER BY n DESC))[1] AS level,
           (array_agg(event_id ORDER BY n DESC))[1] AS last_event_id,
           (array_agg(environment ORDER BY n DESC))[1] AS environment,
           (array_agg(release ORDER BY n DESC))[1] AS release,
           (array_agg(release ORDER BY n) FILTER (WHERE release IS NOT NULL))[1]
               AS first_release,
           coalesce(array_agg(DISTINCT release) FILTER (WHERE release IS NOT NULL), '{{}}')
               AS releases
      FROM b GROUP BY project_id, grouping_version, fingerprint
), up AS (
    INSERT INTO issues AS i (project_id, grouping_version, fingerprint, title, culprit, level,
                             first_seen, last_seen, event_count, last_event_id, environment,
                             release, first_release)
    SELECT project_id, grouping_version, fingerprint, title, culprit, level, first_seen,
           last_seen, events, last_event_id, environment, release, first_release
      FROM agg ORDER BY project_id, grouping_version, fingerprint
    ON CONFLICT (project_id, grouping_version, fingerprint) DO UPDATE SET
        event_count = i.event_count + excluded.event_count,
        first_seen = least(i.first_seen, excluded.first_seen),
        last_seen = greatest(i.last_seen, excluded.last_seen),
        title = excluded.title, culprit = excluded.culprit, level = excluded.level,
        last_event_id = excluded.last_event_id, environment = excluded.environment,
        release = excluded.release,
        first_release = coalesce(i.first_release, excluded.first_release),
        status = CASE WHEN {_REOPEN} THEN 'unresolved'
                      WHEN {_UNIGNORE} THEN 'unresolved' ELSE i.status END,
        resolved_at = CASE WHEN {_REOPEN} THEN NULL ELSE i.resolved_at END,
        resolved_in_release = CASE WHEN {_REOPEN} THEN NULL ELSE i.resolved_in_release END,
        regressed_at = CASE WHEN {_REOPEN} THEN now() ELSE i.regressed_at END,
        ignore_until = CASE WHEN {_UNIGNORE} THEN NULL ELSE i.ignore_until END,
        ignore_until_count = CASE WHEN {_UNIGNORE} THEN NULL ELSE i.ignore_until_count END
    RETURNING i.id, i.project_id, i.grouping_version, i.fingerprint, i.title, i.level,
              i.event_count, i.regressed_at, (xmax = 0) AS created,
              (i.regressed_at IS NOT NULL AND i.regressed_at = now()) AS regressed
), stored AS (
    INSERT INTO events (project_id, event_id, issue_id, received_at, timestamp, level,
                        environment, release, payload)
    SELECT b.project_id, b.event_id, up.id, b.received_at, b.ts, b.level, b.environment,
           b.release, b.payload
      FROM b JOIN up USING (project_id, grouping_version, fingerprint)
), minutes AS (
    INSERT INTO issue_minutes AS m (issue_id, minute, events)
    SELECT up.id, date_trunc('minute', b.received_at), count(*)
      FROM b JOIN up USING (project_id, grouping_version, fingerprint)
     GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (issue_id, minute) DO UPDATE SET events = m.events + excluded.events
), project_releases AS (
    INSERT INTO releases AS r (project_id, version, first_seen, last_seen)
    SELECT project_id, release, min(received_at), max(received_at)
      FROM b WHERE release IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (project_id, version) DO UPDATE SET
        first_seen = least(r.first_seen, excluded.first_seen),
        last_seen = greatest(r.last_seen, excluded.last_seen)
), triggers AS (
    INSERT INTO alert_triggers (project_id, issue_id, kind, dedup)
    SELECT project_id, id, CASE WHEN created THEN 'new' ELSE 'regressed' END,
           CASE WHEN created THEN '' ELSE regressed_at::text END
      FROM up WHERE created OR regressed
    ON CONFLICT DO NOTHING
)"""

_FACETS = """, hours AS (
    INSERT INTO issue_hours AS h (issue_id, hour, events)
    SELECT up.id, date_trunc('hour', b.received_at, 'UTC'), count(*)
      FROM b JOIN up USING (project_id, grouping_version, fingerprint)
     GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (issue_id, hour) DO UPDATE SET events = h.events + excluded.events
), tags AS (
    INSERT INTO issue_tags AS t (issue_id, key, value, events, first_seen, last_seen)
    SELECT up.id, tag.key, tag.value, count(*), min(b.received_at), max(b.received_at)
      FROM b JOIN up USING (project_id, grouping_version, fingerprint)
     CROSS JOIN LATERAL jsonb_each_text(b.tags::jsonb) AS tag(key, value)
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (issue_id, key, value) DO UPDATE SET events = t.events + excluded.events,
        first_seen = least(t.first_seen, excluded.first_seen),
        last_seen = greatest(t.last_seen, excluded.last_seen)
), users AS (
    INSERT INTO issue_users (issue_id, user_key, user_id, email, username, ip_address,
                             first_seen)
    SELECT DISTINCT ON (up.id, b.user_key) up.id, b.user_key, b.user_id, b.user_email,
           b.user_name, b.user_ip, b.received_at
      FROM b JOIN up USING (project_id, grouping_version, fingerprint)
     WHERE b.user_key IS NOT NULL
     ORDER BY up.id, b.user_key, b.n
    ON CONFLICT DO NOTHING
    RETURNING issue_id
), user_counts AS (
    SELECT issue_id, count(*) AS n FROM users GROUP BY 1
)
SELECT up.*, (SELECT count(*) FROM b) AS new_events, coalesce(uc.n, 0) AS new_users
  FROM up LEFT JOIN user_counts uc ON uc.issue_id = up.id
"""
_PLAIN = """
SELECT up.*, (SELECT count(*) FROM b) AS new_events, 0 AS new_users FROM up
"""
_WRITE = {True: _ISSUES + _FACETS, False: _ISSUES + _PLAIN}
# Users are counted in a second statement: a statement cannot update the issue row its
# own upsert wrote. The upsert holds those rows' locks until the commit.
_ADD_USERS = """
UPDATE issues SET user_count = user_count + x.n
  FROM unnest($1::bigint[], $2::bigint[]) AS x(id, n) WHERE issues.id = x.id
"""

# The issues a batch created take the next numbers of their project's counter (the
# project row's lock orders concurrent batches); any a failed batch left unnumbered
# are numbered along.
_NUMBER = """
WITH new AS (
    SELECT id, project_id, row_number() OVER (PARTITION BY project_id ORDER BY id) AS n
      FROM issues WHERE project_id = ANY($1::int[]) AND short_id IS NULL
), bumped AS (
    UPDATE projects p SET issue_counter = p.issue_counter + c.n
      FROM (SELECT project_id, count(*) AS n FROM new GROUP BY 1) c
     WHERE p.id = c.project_id
    RETURNING p.id, p.issue_counter - c.n AS base
)
UPDATE issues i SET short_id = b.base + new.n
  FROM new JOIN bumped b ON b.id = new.project_id
 WHERE i.id = new.id
"""


class MissingPartition(Exception):
    """A day partition vanished under this node; the batch is retried, not skipped."""


@dataclass(frozen=True)
class IssueChange:
    """An issue a batch touched: what alert rules look at once the batch is committed."""

    id: int
    project_id: int
    title: str
    level: str
    event_count: int
    created: bool          # the batch opened it
    regressed: bool        # it was resolved, and the batch brought a new event


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _rows(records: Sequence[EventRecord], with_facets: bool) -> list[tuple[object, ...]]:
    """COPY rows, with each event's JSON compressed (run in a thread)."""
    rows = []
    for n, r in enumerate(records):
        row: tuple[object, ...] = (
            n, r.project_id, uuid.UUID(hex=r.event_id), r.grouping_version, r.fingerprint,
            r.title, r.culprit, r.level, _time(r.timestamp), _time(r.received_at),
            r.environment, r.release, compress(r.payload))
        if with_facets:
            user = r.user or (None, None, None, None, None)
            row += (orjson.dumps(dict(r.tags)).decode(), *user)
        rows.append(row)
    return rows


async def write_batch(pool: asyncpg.Pool, partitions: Partitions,
                      records: Sequence[EventRecord], *, with_facets: bool = True
                      ) -> tuple[int, list[IssueChange]]:
    """Store the events (payloads as plain JSON) and, `with_facets`, their issues' users,
    tag counts and hourly counts; (events new to the database, issues touched)."""
    if not records:
        return 0, []
    rows = await asyncio.to_thread(_rows, records, with_facets)
    columns = _COLUMNS + _FACET_COLUMNS if with_facets else _COLUMNS
    async with pool.acquire() as conn:
        await partitions.ensure(conn, {day_of(r.received_at) for r in records})
        async with conn.transaction():
            await conn.execute(_STAGING)
            await conn.copy_records_to_table("event_batch", records=rows, columns=columns)
            try:
                issues = await conn.fetch(_WRITE[with_facets])
            except asyncpg.CheckViolationError as err:
                if "no partition" not in str(err):
                    raise
                # A partition this node believed in was dropped elsewhere: not the
                # data's fault. Forget, and let the consumer retry the batch.
                partitions.forget_all()
                raise MissingPartition(str(err)) from None
            users = [(r["id"], r["new_users"]) for r in issues if r["new_users"]]
            if users:
                await conn.execute(_ADD_USERS, [i for i, _ in users], [n for _, n in users])
            created = sorted({r["project_id"] for r in issues if r["created"]})
            if created:
                await conn.execute(_NUMBER, created)
    new = issues[0]["new_events"] if issues else 0
    return new, [IssueChange(r["id"], r["project_id"], r["title"], r["level"],
                             r["event_count"], r["created"], r["regressed"]) for r in issues]


def _check(record: EventRecord) -> None:
    """Values Postgres would refuse on every retry (they are poison, not an outage)."""
    try:
        uuid.UUID(hex=record.event_id)
        _time(record.timestamp)
        _time(record.received_at)
    except (ValueError, OverflowError, OSError) as err:
        raise RecordError(f"event {record.event_id!r}: {err}") from None
    texts = [record.fingerprint, record.title, record.culprit, record.level,
             record.environment or "", record.release or ""]
    for pair in record.tags:
        texts += pair
    if record.user is not None:
        texts += [text or "" for text in record.user]
    if "\x00" in "".join(texts):
        raise RecordError(f"event {record.event_id}: NUL character in a text field")


OnStored = Callable[[list[IssueChange]], Awaitable[None]]
Digest = Callable[[list[Record]], Awaitable[list[Record]]]


def event_store(pool: Callable[[], asyncpg.Pool], partitions: Partitions,
                on_stored: OnStored | None = None, *, with_facets: bool = True,
                digest: Digest | None = None) -> Callable[[list[Record]], Awaitable[None]]:
    """The events journal consumer's store function; `digest` turns the records of
    events accepted unread into event records first (daemon.events.pipeline.digest)."""
    async def store(records: list[Record]) -> None:
        if digest is not None:
            records = await digest(records)
        events = []
        for record in records:
            try:
                event = decode(record.payload)
                _check(event)
            except RecordError as err:
                raise PoisonRecord(record.position, str(err)) from None
            events.append(event)
        try:
            _, changes = await write_batch(pool(), partitions, events,
                                           with_facets=with_facets)
        except DATA_ERRORS as err:
            await _find_poison(pool(), partitions, events, records, err,
                               with_facets=with_facets)
            raise
        if on_stored is not None and changes:
            try:
                await on_stored(changes)
            except Exception:
                log.exception("issue change hook failed")

    return store


async def _find_poison(pool: asyncpg.Pool, partitions: Partitions,
                       events: Sequence[EventRecord], records: Sequence[Record],
                       batch_error: Exception, *, with_facets: bool) -> None:
    def refused(count: int, error: Exception) -> None:
        log.warning("event batch refused; retrying it event by event", extra=fields(
            events=count, error=f"{type(error).__name__}: {error}"))

    async def write(batch: Sequence[EventRecord]) -> object:
        return await write_batch(pool, partitions, batch, with_facets=with_facets)

    await find_poison(write, events, [record.position for record in records], batch_error,
                      describe=lambda event: f"event {event.event_id}", on_refused=refused)
