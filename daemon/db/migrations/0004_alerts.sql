-- Alerts: what happened to issues (triggers), who is to be told (notifications), and the
-- messages that tell them (sends), with every delivery attempt logged.

-- Events per issue per minute, kept exact whatever the sampling of stored events: spike
-- rules sum them over their window. Written by the same statement that counts the events.
CREATE TABLE issue_minutes (
    issue_id  bigint NOT NULL,
    minute    timestamptz NOT NULL,
    events    integer NOT NULL CHECK (events > 0),
    PRIMARY KEY (issue_id, minute)
);

CREATE INDEX issue_minutes_minute ON issue_minutes (minute);

-- Something an alert rule may care about happened to an issue. New and regressed issues
-- are written in the transaction that stored the events (so a crash cannot lose them and
-- a replayed journal, finding its events stored, writes none again); spikes and critical
-- issues right after it. `dedup` makes each one happen once: '' for a new issue, the
-- regression time, the spike window, the critical repeat period.
CREATE TABLE alert_triggers (
    id            bigserial PRIMARY KEY,
    project_id    integer NOT NULL,
    issue_id      bigint NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('new', 'regressed', 'spike', 'critical')),
    dedup         text NOT NULL DEFAULT '',
    detail        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    evaluated_at  timestamptz,
    UNIQUE (issue_id, kind, dedup)
);

CREATE INDEX alert_triggers_pending ON alert_triggers (id) WHERE evaluated_at IS NULL;
CREATE INDEX alert_triggers_created ON alert_triggers (created_at);

-- A trigger matched a rule with this channel. Pending ones are folded into the channel's
-- next send; suppressed ones hit the per-issue rate limit and are kept to answer "why was
-- I not told?".
CREATE TABLE alert_notifications (
    id          bigserial PRIMARY KEY,
    trigger_id  bigint NOT NULL REFERENCES alert_triggers (id) ON DELETE CASCADE,
    channel     text NOT NULL,
    issue_id    bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'sent', 'suppressed')),
    send_id     bigint,
    UNIQUE (trigger_id, channel)
);

CREATE INDEX alert_notifications_pending ON alert_notifications (channel, created_at)
    WHERE state = 'pending';
CREATE INDEX alert_notifications_issue ON alert_notifications (issue_id, channel, created_at);

-- One message to one channel: a single alert or a digest. The body is rendered once, so a
-- retry sends exactly what the first attempt did.
CREATE TABLE alert_sends (
    id               bigserial PRIMARY KEY,
    channel          text NOT NULL,
    created_at       timestamptz NOT NULL,
    alerts           integer NOT NULL CHECK (alerts > 0),
    test             boolean NOT NULL DEFAULT false,    -- `egen alerts test`
    body             bytea NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_owner      text,
    lease_until      timestamptz,
    finished_at      timestamptz,
    result           text               -- the queue ID, the HTTP status, the last error
);

CREATE INDEX alert_sends_due ON alert_sends (next_attempt_at) WHERE state = 'pending';
CREATE INDEX alert_sends_channel ON alert_sends (channel, created_at);

CREATE TABLE alert_attempts (
    send_id       bigint NOT NULL REFERENCES alert_sends (id) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL,
    duration_ms   integer NOT NULL,
    ok            boolean NOT NULL,
    detail        text NOT NULL
);

CREATE INDEX alert_attempts_send ON alert_attempts (send_id, attempted_at);
