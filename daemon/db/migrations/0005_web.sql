-- What the web pages show beyond an issue's row, kept up to date by the statement that
-- stores each batch of events (never computed per request): distinct users, tag value
-- counts, hourly counts and the releases seen; and the accounts and sessions of the
-- people who read them.
--
-- The per-issue tables carry no foreign keys: they are written for every batch, and
-- issues are never deleted one by one (a project's issues go with the project, and
-- retention prunes these tables by time).

ALTER TABLE issues
    ADD COLUMN user_count bigint NOT NULL DEFAULT 0 CHECK (user_count >= 0),
    -- The release of the issue's first event: the one that introduced the bug.
    ADD COLUMN first_release text,
    -- "Resolved in the next release": only an event of a release first seen after this
    -- one reopens the issue; events of this release or older ones keep it resolved.
    ADD COLUMN resolved_in_release text,
    -- An ignored issue turns unresolved again at this time, or once event_count reaches
    -- ignore_until_count, whichever comes first (both NULL: ignored for good).
    ADD COLUMN ignore_until timestamptz,
    ADD COLUMN ignore_until_count bigint;

CREATE INDEX issues_last_seen_id ON issues (last_seen DESC, id DESC);
CREATE INDEX issues_first_seen_id ON issues (first_seen DESC, id DESC);
-- The list's other orders, so the first page reads 26 index entries, not every issue.
CREATE INDEX issues_count_order ON issues (event_count DESC, last_seen DESC, id DESC);
CREATE INDEX issues_users_order ON issues (user_count DESC, last_seen DESC, id DESC);
CREATE INDEX issues_ignore_until ON issues (ignore_until) WHERE ignore_until IS NOT NULL;

-- One row per distinct user an issue affected. `user_key` is the first of id, username,
-- email and ip address the event named (as Sentry's `user` tag), so the row count is the
-- exact number of users affected.
CREATE TABLE issue_users (
    issue_id    bigint NOT NULL,
    user_key    text NOT NULL,
    user_id     text,
    email       text,
    username    text,
    ip_address  text,
    first_seen  timestamptz NOT NULL,
    PRIMARY KEY (issue_id, user_key)
);

CREATE INDEX issue_users_user_id ON issue_users (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX issue_users_email ON issue_users (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX issue_users_username ON issue_users (username) WHERE username IS NOT NULL;
CREATE INDEX issue_users_ip ON issue_users (ip_address) WHERE ip_address IS NOT NULL;

-- Events per issue and tag value (environment, release, server_name, browser, os,
-- runtime, custom tags, ...), with when each value was first and last seen; the
-- release rows say which release brought an issue back.
CREATE TABLE issue_tags (
    issue_id    bigint NOT NULL,
    key         text NOT NULL,
    value       text NOT NULL,
    events      bigint NOT NULL CHECK (events > 0),
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    PRIMARY KEY (issue_id, key, value)
);

CREATE INDEX issue_tags_key_value ON issue_tags (key, value);

-- Events per issue per hour (UTC), exact whatever the sampling of stored events: the
-- 24-hour, 14-day, 30-day and 90-day charts. Kept 90 days.
CREATE TABLE issue_hours (
    issue_id  bigint NOT NULL,
    hour      timestamptz NOT NULL,
    events    integer NOT NULL CHECK (events > 0),
    PRIMARY KEY (issue_id, hour)
);

CREATE INDEX issue_hours_hour ON issue_hours (hour);

-- Releases per project in the order they appeared: "newer" means first seen later.
CREATE TABLE releases (
    project_id  integer NOT NULL,
    version     text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    PRIMARY KEY (project_id, version)
);

CREATE INDEX releases_project_first_seen ON releases (project_id, first_seen DESC);

-- What existed before this migration, as far as the stored samples and the per-minute
-- counts tell: releases and first releases from the events kept, tag counts of
-- environment, release and level from them, hourly counts from the minutes.
INSERT INTO releases (project_id, version, first_seen, last_seen)
SELECT project_id, release, min(received_at), max(received_at)
  FROM events WHERE release IS NOT NULL GROUP BY 1, 2;

UPDATE issues i SET first_release = e.release
  FROM (SELECT DISTINCT ON (issue_id) issue_id, release FROM events
         WHERE release IS NOT NULL ORDER BY issue_id, received_at) e
 WHERE e.issue_id = i.id;

INSERT INTO issue_tags (issue_id, key, value, events, first_seen, last_seen)
SELECT issue_id, t.key, t.value, count(*), min(received_at), max(received_at)
  FROM events,
       LATERAL (VALUES ('environment', environment), ('release', release),
                       ('level', level)) AS t(key, value)
 WHERE t.value IS NOT NULL
 GROUP BY 1, 2, 3;

INSERT INTO issue_hours (issue_id, hour, events)
SELECT issue_id, date_trunc('hour', minute, 'UTC'), sum(events)
  FROM issue_minutes GROUP BY 1, 2;

-- People who may read the pages. Users named in egen.toml are synced at start
-- (from_config); the others come from `egen web user add`.
CREATE TABLE web_users (
    id                   bigserial PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    password_hash        text NOT NULL,
    admin                boolean NOT NULL DEFAULT false,
    from_config          boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    password_changed_at  timestamptz NOT NULL DEFAULT now()
);

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is kept, so
-- reading this table does not let anyone sign in.
CREATE TABLE web_sessions (
    token_hash    bytea PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES web_users (id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    address       text NOT NULL DEFAULT '',
    user_agent    text NOT NULL DEFAULT ''
);

CREATE INDEX web_sessions_user ON web_sessions (user_id);
CREATE INDEX web_sessions_last_seen ON web_sessions (last_seen_at);

-- Failed sign-ins within the rate-limit window, per account and per address, shared by
-- every node.
CREATE TABLE web_login_failures (
    at        timestamptz NOT NULL DEFAULT now(),
    username  text NOT NULL,
    address   text NOT NULL
);

CREATE INDEX web_login_failures_user ON web_login_failures (username, at);
CREATE INDEX web_login_failures_address ON web_login_failures (address, at);
CREATE INDEX web_login_failures_at ON web_login_failures (at);
