-- The error tracker: projects and their ingest keys, issues (events grouped by
-- fingerprint) and the events themselves, partitioned by day of arrival so retention
-- drops whole partitions instead of deleting rows.

CREATE TABLE projects (
    id              integer PRIMARY KEY CHECK (id > 0),    -- the number in the DSN
    name            text NOT NULL UNIQUE,
    from_config     boolean NOT NULL DEFAULT false,        -- kept in egen.toml, not only here
    allowed_origins text[] NOT NULL DEFAULT '{*}',
    rate_limit      integer NOT NULL DEFAULT 0 CHECK (rate_limit >= 0),  -- events/minute
    min_level       text NOT NULL DEFAULT 'warning'
                    CHECK (min_level IN ('debug', 'info', 'warning', 'error', 'fatal')),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_keys (
    key         text PRIMARY KEY,                          -- the user part of the DSN
    project_id  integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE issues (
    id               bigserial PRIMARY KEY,
    project_id       integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- The grouping rules that produced the fingerprint: a later version can look up
    -- issues by their old fingerprints instead of splitting every issue.
    grouping_version smallint NOT NULL,
    fingerprint      text NOT NULL,
    title            text NOT NULL,
    culprit          text NOT NULL DEFAULT '',
    level            text NOT NULL,
    status           text NOT NULL DEFAULT 'unresolved'
                     CHECK (status IN ('unresolved', 'resolved', 'ignored')),
    resolved_at      timestamptz,
    regressed_at     timestamptz,        -- the last time a resolved issue got an event
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    event_count      bigint NOT NULL CHECK (event_count >= 0),  -- exact, even when
                                                                 -- samples are dropped
    last_event_id    uuid,
    environment      text,               -- of the last event
    release          text,               -- of the last event
    UNIQUE (project_id, grouping_version, fingerprint)
);

CREATE INDEX issues_project_last_seen ON issues (project_id, last_seen DESC);
CREATE INDEX issues_last_seen ON issues (last_seen DESC);

CREATE TABLE events (
    project_id   integer NOT NULL,
    event_id     uuid NOT NULL,
    issue_id     bigint NOT NULL,
    received_at  timestamptz NOT NULL,   -- when egen accepted it (the partition key)
    timestamp    timestamptz NOT NULL,   -- when the client says it happened
    level        text NOT NULL,
    environment  text,
    release      text,
    payload      bytea NOT NULL          -- the event's JSON, zstd-compressed
) PARTITION BY RANGE (received_at);

CREATE INDEX events_issue ON events (issue_id, received_at DESC);

-- Event ids seen per project, so an SDK's retry of an event is stored and counted once.
-- Apart from events because a unique index on a partitioned table must include the
-- partition key, and a retry arrives at a different time.
CREATE TABLE event_ids (
    project_id   integer NOT NULL,
    event_id     uuid NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (project_id, event_id)
);

CREATE INDEX event_ids_received ON event_ids (received_at);

COMMENT ON TABLE issues IS 'events grouped by fingerprint; counts are exact';
COMMENT ON TABLE events IS 'stored event samples, one partition per day (events_YYYYMMDD)';
COMMENT ON TABLE event_ids IS 'dedup of SDK retries; pruned with event retention';
