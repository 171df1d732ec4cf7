-- Core tables of the event pipeline. Column meanings: README.md, "Tables".

-- Every accepted product event, once per dedup key.
CREATE TABLE raw_events (
    dedup_key        text        PRIMARY KEY,
    event_name       text        NOT NULL,
    channel          text        NOT NULL,
    user_id          text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    payload          jsonb       NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);
CREATE INDEX raw_events_occurred_at ON raw_events (occurred_at);

-- Every accepted AI-agent run event, once per event_id.
CREATE TABLE raw_agent_events (
    dedup_key        text        PRIMARY KEY,  -- the event_id, lower case
    event_type       text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    tenant_id        text        NOT NULL,
    workspace_id     text        NOT NULL,
    project_id       text        NOT NULL,
    agent_id         text        NOT NULL,
    workflow_id      text        NOT NULL,
    run_id           text        NOT NULL,
    status           text        NOT NULL,
    cost_usd         double precision,
    latency_ms       double precision,
    payload          jsonb       NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);
CREATE INDEX raw_agent_events_occurred_at ON raw_agent_events (occurred_at);

-- Hourly product-event rollups. Workers ADD their partial sums; never overwrite.
CREATE TABLE rollup_channel_hourly (
    hour           timestamptz NOT NULL,
    channel        text        NOT NULL,
    event_name     text        NOT NULL,
    event_count    bigint      NOT NULL,
    unique_users   bigint      NOT NULL,
    late_events    bigint      NOT NULL DEFAULT 0,
    first_event_at timestamptz NOT NULL,
    last_event_at  timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    revised_at     timestamptz,
    PRIMARY KEY (hour, channel, event_name)
);

-- The per-hour user sets behind unique_users: a user counts once per row key,
-- whichever worker saw it first. Also answers distinct users over longer spans.
CREATE TABLE rollup_channel_users (
    hour       timestamptz NOT NULL,
    channel    text        NOT NULL,
    event_name text        NOT NULL,
    user_id    text        NOT NULL,
    PRIMARY KEY (hour, channel, event_name, user_id)
);

-- Hourly agent-run rollups, per tenant/workspace/project/agent/workflow.
CREATE TABLE rollup_agent_hourly (
    hour             timestamptz      NOT NULL,
    tenant_id        text             NOT NULL,
    workspace_id     text             NOT NULL,
    project_id       text             NOT NULL,
    agent_id         text             NOT NULL,
    workflow_id      text             NOT NULL,
    runs             bigint           NOT NULL,
    succeeded        bigint           NOT NULL,
    failed           bigint           NOT NULL,
    events           bigint           NOT NULL,
    cost_usd         double precision NOT NULL,
    latency_ms_sum   double precision NOT NULL,
    latency_ms_count bigint           NOT NULL,
    late_events      bigint           NOT NULL DEFAULT 0,
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    revised_at       timestamptz,
    PRIMARY KEY (hour, tenant_id, workspace_id, project_id, agent_id, workflow_id)
);

-- Messages (or envelope elements) that could not be accepted.
CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    reason           text        NOT NULL,
    field            text,
    detail           text        NOT NULL,
    raw              bytea       NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    envelope_index   integer     NOT NULL,  -- -1: the whole message
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset, envelope_index)
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);

-- Per partition: the next offset the sink made durable (written in the same
-- transaction as the events; wins over Kafka's committed offset on assignment)
-- and the watermark, the largest event time stored from that partition.
CREATE TABLE partition_progress (
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    watermark      timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Completeness knobs, written by `migrate` and by each worker at start.
CREATE TABLE pipeline_config (
    id                 boolean  PRIMARY KEY DEFAULT true CHECK (id),
    completeness_grace interval NOT NULL DEFAULT interval '5 minutes',
    partition_idle     interval NOT NULL DEFAULT interval '5 minutes'
);
INSERT INTO pipeline_config DEFAULT VALUES;

-- Per hour: is it complete? An hour is complete when the low watermark (the
-- smallest watermark among partitions active within partition_idle; when all
-- are idle, the largest) has passed hour end + completeness_grace. An idle
-- partition therefore never holds completeness back forever. late_events > 0
-- means events arrived after the hour had been complete: the hour was revised.
CREATE VIEW hour_completeness AS
WITH cfg AS (
    SELECT completeness_grace AS grace, partition_idle AS idle FROM pipeline_config
), marks AS (
    SELECT p.watermark, p.updated_at > now() - cfg.idle AS active
    FROM partition_progress p, cfg
    WHERE p.watermark IS NOT NULL
), low AS (
    SELECT coalesce(min(watermark) FILTER (WHERE active), max(watermark)) AS low_watermark
    FROM marks
), hours AS (
    SELECT hour, sum(event_count) AS events, sum(late_events) AS late_events,
           max(revised_at) AS revised_at
    FROM rollup_channel_hourly GROUP BY hour
    UNION ALL
    SELECT hour, sum(events), sum(late_events), max(revised_at)
    FROM rollup_agent_hourly GROUP BY hour
)
SELECT h.hour,
       h.hour + interval '1 hour' AS hour_end,
       coalesce(h.hour + interval '1 hour' + cfg.grace <= low.low_watermark, false) AS complete,
       sum(h.events)::bigint AS events,
       sum(h.late_events)::bigint AS late_events,
       sum(h.late_events) > 0 AS revised,
       max(h.revised_at) AS revised_at,
       low.low_watermark
FROM hours h, cfg, low
GROUP BY h.hour, cfg.grace, low.low_watermark;
