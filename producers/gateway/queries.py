"""Every SQL statement the gateway runs, in one place (the worker's are in pipeline/sink/sql.py).

The gateway writes only ``ingestion_jobs`` rows (before publishing a job) and
otherwise reads: the rollup tables for the metrics API, the job counts the
sink keeps, ``raw_events`` of one job for its results, the failed runs in
``raw_agent_events``, and for the live page the workers' reports
(``worker_status``), ``dead_letters`` and ``hour_completeness``. Filters are
parameters (``$n::text IS NULL OR column = $n``); nothing a client sends is
ever spliced into the text.
"""

from __future__ import annotations

from pipeline.sink import sql

__all__ = [
    "AGENT_OVERVIEW",
    "INSERT_JOB",
    "JOB_RESULTS",
    "LIVE_AGENT_HOURLY",
    "LIVE_CHANNEL_HOURLY",
    "LIVE_COMPLETENESS",
    "LIVE_DEAD_LETTERS",
    "LIVE_PARTITIONS",
    "LIVE_WORKERS",
    "METRICS_BUCKETS",
    "METRICS_TOTALS",
    "PING",
    "RUN_FAILURES",
    "SELECT_JOB",
    "SELECT_JOB_BY_KEY",
]

PING = "SELECT 1"

# --- Ingestion jobs (table from migrations/0002_ingestion_jobs.sql) ---

# A NULL idempotency key never conflicts: every request without one is a new job.
INSERT_JOB = """
INSERT INTO ingestion_jobs (job_id, tenant_id, idempotency_key, request_sha256, accepted)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING job_id
"""

SELECT_JOB_BY_KEY = """
SELECT job_id, request_sha256, accepted
FROM ingestion_jobs WHERE tenant_id = $1 AND idempotency_key = $2
"""

SELECT_JOB = """
SELECT job_id, tenant_id, accepted, stored, duplicates, dead_lettered, created_at, updated_at
FROM ingestion_jobs WHERE job_id = $1
"""

JOB_RESULTS = """
SELECT event_name, count(*) AS events, min(occurred_at) AS first_event_at,
       max(occurred_at) AS last_event_at
FROM raw_events WHERE ingestion_job_id = $1
GROUP BY event_name ORDER BY event_name
"""

# --- GET /metrics: product-event rollups ---

# The same read as `python -m pipeline query`, so one statement serves both (pipeline/sink/sql.py):
# $1 from (inclusive), $2 to (exclusive) on the hour start; $3 event_name, $4 channel. Unique
# users always come from the user sets (rollup_channel_users): a user seen in two hours, or on
# two channels, or under two event names counts once per bucket.
METRICS_BUCKETS = sql.CHANNEL_BUCKETS
METRICS_TOTALS = sql.CHANNEL_TOTALS

# --- GET /v1/metrics/overview: agent-run rollups ---

# $1 from (inclusive), $2 to (exclusive) on the hour start; $3..$7 the filters; $8 the
# API key's tenants (NULL: every tenant).
_AGENT_FILTER = """hour >= $1 AND hour < $2
      AND ($3::text IS NULL OR tenant_id = $3) AND ($4::text IS NULL OR workspace_id = $4)
      AND ($5::text IS NULL OR project_id = $5) AND ($6::text IS NULL OR agent_id = $6)
      AND ($7::text IS NULL OR workflow_id = $7)
      AND ($8::text[] IS NULL OR tenant_id = ANY($8))"""

# The window's latency histogram is the bucket-by-bucket sum of its rows' (migration
# 0008): every row's array is dense from subscript 1, so the sums cover 1..the longest
# without a gap, and array_agg in subscript order is again a histogram.
AGENT_OVERVIEW = f"""
WITH picked AS (
    SELECT runs, succeeded, failed, events, cost_usd, latency_ms_sum, latency_ms_count,
           latency_hist
    FROM rollup_agent_hourly WHERE {_AGENT_FILTER}
), hist AS (
    SELECT u.i, sum(u.n)::int8 AS n
    FROM picked, unnest(picked.latency_hist) WITH ORDINALITY AS u(n, i)
    GROUP BY u.i
)
SELECT coalesce(sum(runs), 0)::int8 AS runs,
       coalesce(sum(succeeded), 0)::int8 AS succeeded,
       coalesce(sum(failed), 0)::int8 AS failed,
       coalesce(sum(events), 0)::int8 AS events,
       coalesce(sum(cost_usd), 0)::float8 AS cost_usd,
       coalesce(sum(latency_ms_sum), 0)::float8 AS latency_ms_sum,
       coalesce(sum(latency_ms_count), 0)::int8 AS latency_ms_count,
       (SELECT coalesce(array_agg(n ORDER BY i), '{{}}') FROM hist) AS latency_hist
FROM picked
"""

# --- GET /v1/runs/failures: the newest failed runs (index raw_agent_events_failed) ---

# The same window and filters on the event time as the overview on the hour start
# (an event's hour starts in [from, to) exactly when the event lies in it); $9 limit.
# run.error is what the contract's own example of a failed run carries (verbatim json).
RUN_FAILURES = """
SELECT dedup_key, run_id, occurred_at, tenant_id, workspace_id, project_id, agent_id,
       workflow_id, status, latency_ms, cost_usd, payload -> 'run' -> 'error' AS error
FROM raw_agent_events
WHERE event_type = 'run.failed' AND occurred_at >= $1 AND occurred_at < $2
  AND ($3::text IS NULL OR tenant_id = $3) AND ($4::text IS NULL OR workspace_id = $4)
  AND ($5::text IS NULL OR project_id = $5) AND ($6::text IS NULL OR agent_id = $6)
  AND ($7::text IS NULL OR workflow_id = $7)
  AND ($8::text[] IS NULL OR tenant_id = ANY($8))  -- the API key's tenants
ORDER BY occurred_at DESC, dedup_key DESC
LIMIT $9
"""

# --- GET /v1/live: the live page's snapshot. $1 from, $2 to (hour starts) ---

# Per hour, the $3 series (channel, event_name) with the most events in the window;
# the others are summed into one row per hour with NULL channel and event_name.
# `series` is how many series the window holds in all.
LIVE_CHANNEL_HOURLY = """
WITH r AS (
    SELECT hour, channel, event_name, event_count, late_events
    FROM rollup_channel_hourly WHERE hour >= $1 AND hour < $2
), ranked AS (
    SELECT channel, event_name,
           row_number() OVER (ORDER BY sum(event_count) DESC, channel, event_name) AS rank
    FROM r GROUP BY channel, event_name
)
SELECT r.hour,
       CASE WHEN k.rank <= $3 THEN r.channel END AS channel,
       CASE WHEN k.rank <= $3 THEN r.event_name END AS event_name,
       sum(r.event_count)::int8 AS events,
       sum(r.late_events)::int8 AS late_events,
       (SELECT count(*) FROM ranked)::int8 AS series
FROM r JOIN ranked k USING (channel, event_name)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

LIVE_AGENT_HOURLY = """
SELECT hour, sum(runs)::int8 AS runs, sum(succeeded)::int8 AS succeeded,
       sum(failed)::int8 AS failed, sum(events)::int8 AS events
FROM rollup_agent_hourly WHERE hour >= $1 AND hour < $2
GROUP BY hour ORDER BY hour
"""

LIVE_COMPLETENESS = """
SELECT hour, complete, events, late_events, revised, low_watermark
FROM hour_completeness WHERE hour >= $1 AND hour < $2 ORDER BY hour
"""

# Dead letters received in [$1, $2), counted per reason and interval of $3 seconds
# (interval starts in unix seconds). The reasons are walked through the index on
# (reason, received_at) one at a time (a loose index scan), so the range on
# received_at is an index range per reason rather than a scan of every dead letter.
LIVE_DEAD_LETTERS = """
WITH RECURSIVE reasons AS (
    (SELECT reason FROM dead_letters ORDER BY reason LIMIT 1)
    UNION ALL
    SELECT (SELECT d.reason FROM dead_letters d WHERE d.reason > r.reason
            ORDER BY d.reason LIMIT 1)
    FROM reasons r WHERE r.reason IS NOT NULL
)
SELECT r.reason,
       (floor(extract(epoch FROM d.received_at) / $3::int8)::int8 * $3::int8) AS start_s,
       count(*)::int8 AS n
FROM reasons r
JOIN dead_letters d ON d.reason = r.reason AND d.received_at >= $1 AND d.received_at < $2
GROUP BY 1, 2 ORDER BY 1, 2
"""

# Workers heard from within $1 seconds (every worker reports each 5 s); `silent_s`
# tells one that stopped reporting apart, as `python -m pipeline status` does.
LIVE_WORKERS = """
SELECT worker_id, partitions, live, lag, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS silent_s
FROM worker_status WHERE heartbeat_at > now() - $1 * interval '1 second'
ORDER BY worker_id
"""

# Every partition of the topic $1 that ever stored something (it may have no live owner).
LIVE_PARTITIONS = """
SELECT partition FROM partition_progress WHERE topic = $1 ORDER BY partition
"""
