-- Each worker reports itself every few seconds: which partitions it owns and
-- when each last made progress. `python -m pipeline status` reads it (brokers
-- do not all report group assignments), and a stuck worker is visible here.
CREATE TABLE worker_status (
    worker_id      text        PRIMARY KEY,  -- host:pid
    web_port       integer     NOT NULL,
    partitions     integer[]   NOT NULL,
    durable        jsonb       NOT NULL,     -- {"partition": next durable offset}
    idle_seconds   jsonb       NOT NULL,     -- {"partition": seconds since last progress}
    live           boolean     NOT NULL,
    started_at     timestamptz NOT NULL,
    heartbeat_at   timestamptz NOT NULL DEFAULT now()
);
