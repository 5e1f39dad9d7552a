-- Keys for the HTTP send API (POST /v3/mail/send). Each belongs to an SMTP user of
-- egen.toml and sends with that user's allowed senders. A key reads EG.<id>.<secret>:
-- the id finds the row, only a SHA-256 of the secret is kept (the secret is 256 random
-- bits, so a slow hash would add nothing), and the whole key is shown once, when made.

CREATE TABLE mail_api_keys (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{16}$'),
    user_name     text NOT NULL CHECK (user_name <> ''),
    label         text NOT NULL DEFAULT '',
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_api_keys_user ON mail_api_keys (user_name);
