-- One row per running egen process, so operators (and later features such as leases on
-- delivery work) can see which processes share this database and whether they are alive.
CREATE TABLE nodes (
    id           text PRIMARY KEY,              -- "<hostname>:<pid>:<random>"
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,                 -- egen version the process runs
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE nodes IS 'egen processes sharing this database; stale heartbeat_at = dead node';
