-- Ingestion jobs of the HTTP gateway (POST /v1/ingestions).
-- The gateway inserts the job (accepted = events in the request) before it
-- publishes; the worker's sink keeps stored / duplicates / dead_lettered exact,
-- in the same transaction as the events, through ingestion_job_events (one row
-- per job event: a replayed event finds its row and counts nothing again).

CREATE TABLE ingestion_jobs (
    job_id          uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    idempotency_key text,
    request_sha256  text        NOT NULL,
    accepted        integer     NOT NULL,
    stored          integer     NOT NULL DEFAULT 0,
    duplicates      integer     NOT NULL DEFAULT 0,
    dead_lettered   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);

CREATE TABLE ingestion_job_events (
    job_id  uuid    NOT NULL,
    seq     integer NOT NULL,
    outcome text    NOT NULL CHECK (outcome IN ('stored', 'duplicate', 'dead_lettered')),
    PRIMARY KEY (job_id, seq)
);

ALTER TABLE raw_events ADD COLUMN ingestion_job_id uuid;
CREATE INDEX raw_events_ingestion_job ON raw_events (ingestion_job_id)
    WHERE ingestion_job_id IS NOT NULL;
