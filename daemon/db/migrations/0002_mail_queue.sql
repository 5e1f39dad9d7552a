-- The mail queue: accepted messages (written by the journal flusher), their recipients
-- (the unit of delivery work, claimed by any node with FOR UPDATE SKIP LOCKED and a lease),
-- and the delivery log (one row per queue event, kept independently of the messages).

CREATE TABLE mail_messages (
    id           text PRIMARY KEY,               -- queue ID ("queued as <ID>")
    sender       text NOT NULL,                  -- MAIL FROM; '' is the null sender <>
    data         bytea NOT NULL,                 -- the message as accepted and DKIM-signed
    size         integer NOT NULL CHECK (size >= 0),
    received_at  timestamptz NOT NULL,           -- when intake answered 250
    queued_at    timestamptz NOT NULL DEFAULT now(),  -- when the flusher stored it
    client_ip    text NOT NULL,
    helo         text NOT NULL,
    auth_user    text,                           -- NULL: relayed as a trusted network
    tls          text,                           -- protocol and cipher; NULL: plaintext
    smtputf8     boolean NOT NULL,
    body_8bit    boolean NOT NULL,               -- BODY=8BITMIME: deliver only to 8BITMIME peers
    message_id   text NOT NULL,                  -- the Message-ID: header
    signed_by    text[] NOT NULL DEFAULT '{}',   -- "d=... s=... a=..." per DKIM signature
    -- RFC 3461 DSN parameters of MAIL FROM (NULL when the client gave none).
    dsn_ret      text CHECK (dsn_ret IN ('FULL', 'HDRS')),
    dsn_envid    text,
    -- Message-level delivery state: set once the delay warning DSN went out, and once
    -- every recipient reached a final status (retention removes data after that).
    warned_at    timestamptz,
    done_at      timestamptz
);

CREATE INDEX mail_messages_received ON mail_messages (received_at, id);

CREATE TABLE mail_recipients (
    message_id      text NOT NULL REFERENCES mail_messages (id) ON DELETE CASCADE,
    idx             integer NOT NULL CHECK (idx >= 0),  -- RCPT TO order
    recipient       text NOT NULL,
    domain          text NOT NULL,               -- lowercased part after the last '@'
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN (
                        'queued', 'delivering', 'delivered', 'deferred', 'bounced', 'expired')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A claim: the node (nodes.id) delivering it and until when. A lease that ran out
    -- belongs to a dead or stuck node and may be claimed again.
    lease_owner     text,
    lease_until     timestamptz,
    last_attempt_at timestamptz,
    last_code       integer,                     -- SMTP reply code of the last attempt
    last_response   text,                        -- reply text, or the local error
    -- RFC 3461 DSN parameters of RCPT TO (NULL when the client gave none).
    dsn_notify      text[],                      -- subset of NEVER, SUCCESS, FAILURE, DELAY
    dsn_orcpt       text,                        -- "rfc822;user@example.com"
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, idx),
    CHECK ((lease_owner IS NULL) = (lease_until IS NULL))
);

-- Claiming due work: WHERE status IN ('queued', 'deferred') AND next_attempt_at <= now()
-- ORDER BY next_attempt_at ... FOR UPDATE SKIP LOCKED.
CREATE INDEX mail_recipients_due ON mail_recipients (next_attempt_at)
    WHERE status IN ('queued', 'deferred');
-- Taking over work whose lease ran out (its node died mid-delivery).
CREATE INDEX mail_recipients_leased ON mail_recipients (lease_until)
    WHERE status = 'delivering';
-- Routing and per-destination concurrency.
CREATE INDEX mail_recipients_domain ON mail_recipients (domain);

-- The delivery log. No foreign key on purpose: the log outlives the message it describes
-- (deleted by an operator or by retention), so `egen mail log` can still answer "did it
-- go out, and what did the other side say?". The detail holds what the event needs to be
-- read on its own (sender and recipients for 'accepted'; host, TLS, code, response and
-- duration for an attempt).
CREATE TABLE mail_events (
    id            bigserial PRIMARY KEY,
    message_id    text NOT NULL,
    recipient_idx integer,                       -- NULL: the event is about the message
    at            timestamptz NOT NULL DEFAULT now(),
    event         text NOT NULL CHECK (event IN (
                      'accepted', 'delivered', 'deferred', 'bounced', 'expired',
                      'delay_warning', 'retry', 'deleted')),
    detail        jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX mail_events_message ON mail_events (message_id, id);
CREATE INDEX mail_events_at ON mail_events (at);

COMMENT ON TABLE mail_messages IS 'accepted mail; one row per queue ID, written by the journal flusher';
COMMENT ON TABLE mail_recipients IS 'one row per recipient of a message: the unit of delivery work';
COMMENT ON TABLE mail_events IS 'delivery log: accepted, attempt results, bounces, expiry';
