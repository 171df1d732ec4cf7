"""Every SQL statement the pipeline runs, in one place.

Events reach PostgreSQL by binary COPY into staging tables; the smaller bulk
statements take column arrays and ``unnest`` them: a few round trips per batch,
whatever its size. Times travel as epoch microseconds (int8) and become
timestamptz here.
"""

from __future__ import annotations

__all__ = [
    "ADD_AGENT_ROLLUPS",
    "ADD_EVENT_ROLLUPS",
    "ADD_JOB_OUTCOMES",
    "CREATE_STAGING",
    "INSERT_AGENT_EVENTS",
    "INSERT_DEAD_LETTERS",
    "INSERT_EVENTS",
    "SELECT_PROGRESS",
    "STAGE_AGENT_EVENTS",
    "STAGE_EVENTS",
    "UPSERT_CONFIG",
    "UPSERT_PROGRESS",
]

_TS = "timestamptz 'epoch' + {} * interval '1 microsecond'"

# Each batch's events are COPYed (binary) into per-session staging tables, then
# one statement per event kind inserts the new ones into the raw table and keeps
# exactly those (the INSERT's RETURNING) in a second temp table; the rollups are
# added from that at the END of the transaction. A replayed batch inserts
# nothing and so adds nothing. TEMP tables are unlogged and private to the
# session; ON COMMIT DELETE ROWS empties them.
#
# Why at the end: rollup rows and user-set keys are shared by all workers, and
# a transaction holds their locks until it commits. Written last, right before
# COMMIT, two workers' transactions wait on each other only for that short tail.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_events (
    k text, n text, c text, u text, t int8, p bytea, sp int4, so int8, j uuid, la bool
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_agent_events (
    k text, et text, t int8, tn text, ws text, pr text, ag text, wf text, rn text, st text,
    cu float8, lm float8, p bytea, sp int4, so int8, la bool
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fresh_events (
    hour timestamptz, channel text, event_name text, user_id text, occurred_at timestamptz,
    late bool
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fresh_agent_events (
    hour timestamptz, event_type text, tenant_id text, workspace_id text, project_id text,
    agent_id text, workflow_id text, cost_usd float8, latency_ms float8, late bool
) ON COMMIT DELETE ROWS
"""
STAGE_EVENTS = ("stage_events", ("k", "n", "c", "u", "t", "p", "sp", "so", "j", "la"))
STAGE_AGENT_EVENTS = (
    "stage_agent_events",
    ("k", "et", "t", "tn", "ws", "pr", "ag", "wf", "rn", "st", "cu", "lm", "p", "sp", "so", "la"),
)

_UTC_HOUR = "(date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"

# A group's latency histogram (pipeline/core/latency.py): latency_bucket, latency_hist_of
# and hist_add are SQL functions of migrations/0008_agent_latency_histogram.sql. The sink,
# rebuild-rollups and the reconciliation all use this one expression.
_LATENCY_HIST = (
    "latency_hist_of(array_agg(latency_bucket(latency_ms)) FILTER (WHERE latency_ms IS NOT NULL))"
)

# Raw inserts need no ORDER BY: all copies of a key share a partition, so two
# workers never insert the same key (and a rare clash is retried as a deadlock).
# Returns how many rows were new, and the dedup keys of new ingestion-job events.
INSERT_EVENTS = f"""
WITH ins AS (
    INSERT INTO raw_events (dedup_key, event_name, channel, user_id, occurred_at, payload,
                            source_topic, source_partition, source_offset, ingestion_job_id,
                            late)
    SELECT k, n, c, u, {_TS.format("t")}, convert_from(p, 'UTF8')::json, $1, sp, so, j, la
    FROM stage_events
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key, event_name, channel, user_id, occurred_at, late, ingestion_job_id
), kept AS (
    INSERT INTO fresh_events (hour, channel, event_name, user_id, occurred_at, late)
    SELECT {_UTC_HOUR}, channel, event_name, user_id, occurred_at, late FROM ins
)
SELECT count(*) AS stored,
       array_agg(dedup_key) FILTER (WHERE ingestion_job_id IS NOT NULL) AS job_keys
FROM ins
"""

# The rows just inserted (fresh_events) into the rollups. Rollup rows and user-set
# keys are locked in key order (ORDER BY), the same in every worker.
ADD_EVENT_ROLLUPS = """
WITH users AS (  -- the per-hour user sets: a user counts once per rollup row, ever
    INSERT INTO rollup_channel_users (hour, channel, event_name, user_id)
    SELECT DISTINCT hour, channel, event_name, user_id FROM fresh_events ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    RETURNING hour, channel, event_name
), new_users AS (
    SELECT hour, channel, event_name, count(*) AS n FROM users GROUP BY 1, 2, 3
), sums AS (
    SELECT hour, channel, event_name, count(*) AS events, count(*) FILTER (WHERE late) AS late,
           min(occurred_at) AS first_at, max(occurred_at) AS last_at
    FROM fresh_events GROUP BY 1, 2, 3
)
INSERT INTO rollup_channel_hourly AS r (hour, channel, event_name, event_count, unique_users,
                                        late_events, first_event_at, last_event_at, revised_at)
SELECT s.hour, s.channel, s.event_name, s.events, coalesce(nu.n, 0), s.late, s.first_at,
       s.last_at, CASE WHEN s.late > 0 THEN now() END
FROM sums s LEFT JOIN new_users nu USING (hour, channel, event_name)
ORDER BY 1, 2, 3
ON CONFLICT (hour, channel, event_name) DO UPDATE SET
    event_count    = r.event_count + EXCLUDED.event_count,
    unique_users   = r.unique_users + EXCLUDED.unique_users,
    late_events    = r.late_events + EXCLUDED.late_events,
    first_event_at = least(r.first_event_at, EXCLUDED.first_event_at),
    last_event_at  = greatest(r.last_event_at, EXCLUDED.last_event_at),
    updated_at     = now(),
    revised_at     = coalesce(EXCLUDED.revised_at, r.revised_at)
"""

INSERT_AGENT_EVENTS = f"""
WITH ins AS (
    INSERT INTO raw_agent_events (dedup_key, event_type, occurred_at, tenant_id, workspace_id,
                                  project_id, agent_id, workflow_id, run_id, status, cost_usd,
                                  latency_ms, payload, source_topic, source_partition,
                                  source_offset, late)
    SELECT k, et, {_TS.format("t")}, tn, ws, pr, ag, wf, rn, st, cu, lm,
           convert_from(p, 'UTF8')::json, $1, sp, so, la
    FROM stage_agent_events
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING event_type, occurred_at, tenant_id, workspace_id, project_id, agent_id,
              workflow_id, cost_usd, latency_ms, late
), kept AS (
    INSERT INTO fresh_agent_events (hour, event_type, tenant_id, workspace_id, project_id,
                                    agent_id, workflow_id, cost_usd, latency_ms, late)
    SELECT {_UTC_HOUR}, event_type, tenant_id, workspace_id, project_id, agent_id, workflow_id,
           cost_usd, latency_ms, late
    FROM ins
)
SELECT count(*) AS stored FROM ins
"""

ADD_AGENT_ROLLUPS = f"""
INSERT INTO rollup_agent_hourly AS r (hour, tenant_id, workspace_id, project_id, agent_id,
                                      workflow_id, runs, succeeded, failed, events, cost_usd,
                                      latency_ms_sum, latency_ms_count, latency_hist, late_events,
                                      revised_at)
SELECT hour, tenant_id, workspace_id, project_id, agent_id, workflow_id,
       count(*) FILTER (WHERE event_type = 'run.started'),
       count(*) FILTER (WHERE event_type = 'run.completed'),
       count(*) FILTER (WHERE event_type = 'run.failed'),
       count(*), coalesce(sum(cost_usd), 0), coalesce(sum(latency_ms), 0),
       count(latency_ms), {_LATENCY_HIST}, count(*) FILTER (WHERE late),
       CASE WHEN bool_or(late) THEN now() END
FROM fresh_agent_events GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (hour, tenant_id, workspace_id, project_id, agent_id, workflow_id) DO UPDATE SET
    runs             = r.runs + EXCLUDED.runs,
    succeeded        = r.succeeded + EXCLUDED.succeeded,
    failed           = r.failed + EXCLUDED.failed,
    events           = r.events + EXCLUDED.events,
    cost_usd         = r.cost_usd + EXCLUDED.cost_usd,
    latency_ms_sum   = r.latency_ms_sum + EXCLUDED.latency_ms_sum,
    latency_ms_count = r.latency_ms_count + EXCLUDED.latency_ms_count,
    latency_hist     = hist_add(r.latency_hist, EXCLUDED.latency_hist),
    late_events      = r.late_events + EXCLUDED.late_events,
    updated_at       = now(),
    revised_at       = coalesce(EXCLUDED.revised_at, r.revised_at)
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (reason, field, detail, raw, source_topic, source_partition,
                          source_offset, envelope_index)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::int4[],
                     $7::int8[], $8::int4[])
ON CONFLICT (source_topic, source_partition, source_offset, envelope_index) DO NOTHING
"""

# Offsets and watermarks only move forward: a replayed batch cannot pull them back.
UPSERT_PROGRESS = f"""
INSERT INTO partition_progress AS p (topic, partition, next_offset, watermark)
SELECT $1, pa, nx, {_TS.format("wm")}
FROM unnest($2::int4[], $3::int8[], $4::int8[]) AS x(pa, nx, wm)
ORDER BY 2
ON CONFLICT (topic, partition) DO UPDATE SET
    next_offset = greatest(p.next_offset, EXCLUDED.next_offset),
    watermark   = greatest(p.watermark, EXCLUDED.watermark),
    updated_at  = now()
"""

# Each job event counts once, in its first outcome: a replay finds its row.
ADD_JOB_OUTCOMES = """
WITH fresh AS (
    INSERT INTO ingestion_job_events (job_id, seq, outcome)
    SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[]) ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING job_id, outcome
), counts AS (
    SELECT job_id,
           count(*) FILTER (WHERE outcome = 'stored') AS stored,
           count(*) FILTER (WHERE outcome = 'duplicate') AS duplicates,
           count(*) FILTER (WHERE outcome = 'dead_lettered') AS dead_lettered
    FROM fresh GROUP BY job_id
)
UPDATE ingestion_jobs j
SET stored = j.stored + c.stored, duplicates = j.duplicates + c.duplicates,
    dead_lettered = j.dead_lettered + c.dead_lettered, updated_at = now()
FROM counts c WHERE j.job_id = c.job_id
"""

SELECT_PROGRESS = """
SELECT partition, next_offset, (extract(epoch FROM watermark) * 1000000)::int8 AS watermark_us
FROM partition_progress WHERE topic = $1
"""

UPSERT_CONFIG = """
INSERT INTO pipeline_config (id, completeness_grace, partition_idle)
VALUES (true, $1 * interval '1 second', $2 * interval '1 second')
ON CONFLICT (id) DO UPDATE SET completeness_grace = EXCLUDED.completeness_grace,
                               partition_idle = EXCLUDED.partition_idle
"""

# --- Reconciliation: rollups against the raw tables (tests, demo, operators) ---

CHANNEL_ROLLUP_MISMATCHES = f"""
WITH raw AS (
    SELECT {_UTC_HOUR} AS hour, channel, event_name,
           count(*) AS event_count, count(DISTINCT user_id) AS unique_users
    FROM raw_events GROUP BY 1, 2, 3
)
SELECT hour, channel, event_name,
       r.event_count AS rollup_count, raw.event_count AS raw_count,
       r.unique_users AS rollup_users, raw.unique_users AS raw_users
FROM rollup_channel_hourly r FULL JOIN raw USING (hour, channel, event_name)
WHERE r.event_count IS DISTINCT FROM raw.event_count
   OR r.unique_users IS DISTINCT FROM raw.unique_users
ORDER BY 1, 2, 3
"""

AGENT_ROLLUP_MISMATCHES = f"""
WITH raw AS (
    SELECT {_UTC_HOUR} AS hour, tenant_id, workspace_id, project_id, agent_id, workflow_id,
           count(*) FILTER (WHERE event_type = 'run.started') AS runs,
           count(*) FILTER (WHERE event_type = 'run.completed') AS succeeded,
           count(*) FILTER (WHERE event_type = 'run.failed') AS failed,
           count(*) AS events,
           coalesce(sum(cost_usd), 0) AS cost_usd,
           coalesce(sum(latency_ms), 0) AS latency_ms_sum,
           count(latency_ms) AS latency_ms_count,
           {_LATENCY_HIST} AS latency_hist
    FROM raw_agent_events GROUP BY 1, 2, 3, 4, 5, 6
)
SELECT hour, tenant_id, workspace_id, project_id, agent_id, workflow_id,
       r.runs, raw.runs AS raw_runs, r.events, raw.events AS raw_events,
       r.latency_hist, raw.latency_hist AS raw_latency_hist
FROM rollup_agent_hourly r
FULL JOIN raw USING (hour, tenant_id, workspace_id, project_id, agent_id, workflow_id)
WHERE r.runs IS DISTINCT FROM raw.runs OR r.succeeded IS DISTINCT FROM raw.succeeded
   OR r.failed IS DISTINCT FROM raw.failed OR r.events IS DISTINCT FROM raw.events
   OR r.latency_ms_count IS DISTINCT FROM raw.latency_ms_count
   OR r.latency_hist IS DISTINCT FROM raw.latency_hist
   OR abs(r.cost_usd - raw.cost_usd) > 1e-6 OR abs(r.latency_ms_sum - raw.latency_ms_sum) > 1e-6
   OR r.hour IS NULL OR raw.hour IS NULL
ORDER BY 1, 2, 3, 4, 5, 6
"""

CHANNEL_ROLLUPS = """
SELECT hour, channel, event_name, event_count, unique_users, late_events
FROM rollup_channel_hourly ORDER BY 1, 2, 3
"""

AGENT_ROLLUPS = """
SELECT hour, tenant_id, workspace_id, project_id, agent_id, workflow_id, runs, succeeded, failed,
       events, cost_usd, latency_ms_sum, latency_ms_count, latency_hist, late_events
FROM rollup_agent_hourly ORDER BY 1, 2, 3, 4, 5, 6
"""

TOTALS = """
SELECT (SELECT count(*) FROM raw_events) AS product_events,
       (SELECT count(*) FROM raw_agent_events) AS agent_events,
       (SELECT coalesce(sum(late_events), 0) FROM rollup_channel_hourly)
     + (SELECT coalesce(sum(late_events), 0) FROM rollup_agent_hourly) AS late_events
"""

DEAD_LETTER_COUNTS = "SELECT reason, count(*) AS n FROM dead_letters GROUP BY 1 ORDER BY 1"

HOUR_COMPLETENESS = """
SELECT hour, complete, events, late_events, revised FROM hour_completeness ORDER BY hour
"""

SELECT_PROGRESS_ROWS = """
SELECT partition, next_offset, watermark, updated_at FROM partition_progress WHERE topic = $1
"""

UPSERT_WORKER_STATUS = """
INSERT INTO worker_status (worker_id, web_port, partitions, durable, idle_seconds, live, started_at,
                           lag)
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8::jsonb)
ON CONFLICT (worker_id) DO UPDATE SET
    web_port = EXCLUDED.web_port, partitions = EXCLUDED.partitions, durable = EXCLUDED.durable,
    idle_seconds = EXCLUDED.idle_seconds, live = EXCLUDED.live, lag = EXCLUDED.lag,
    heartbeat_at = now()
"""

DELETE_WORKER_STATUS = "DELETE FROM worker_status WHERE worker_id = $1"

# Workers heard from within $1 seconds; silent_s tells a stopped or stuck one apart.
SELECT_WORKERS = """
SELECT worker_id, web_port, partitions, live, lag, heartbeat_at, started_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS silent_s
FROM worker_status WHERE heartbeat_at > now() - $1 * interval '1 second' ORDER BY worker_id
"""

# --- Maintenance: rebuild rollups from the raw tables; retention ------------------

# Workers insert under ROW EXCLUSIVE: SHARE waits for their open transactions and
# holds new ones back until the rebuild commits, so no event is missed or doubled.
LOCK_FOR_REBUILD = """
LOCK TABLE raw_events, raw_agent_events IN SHARE MODE;
LOCK TABLE rollup_channel_hourly, rollup_channel_users, rollup_agent_hourly IN EXCLUSIVE MODE
"""

DELETE_ROLLUPS_IN_RANGE = """
DELETE FROM rollup_channel_users WHERE hour >= $1 AND hour < $2;
DELETE FROM rollup_channel_hourly WHERE hour >= $1 AND hour < $2;
DELETE FROM rollup_agent_hourly WHERE hour >= $1 AND hour < $2
"""

REBUILD_CHANNEL_USERS = f"""
INSERT INTO rollup_channel_users (hour, channel, event_name, user_id)
SELECT DISTINCT {_UTC_HOUR}, channel, event_name, user_id FROM raw_events
WHERE occurred_at >= $1 AND occurred_at < $2
"""

REBUILD_CHANNEL_ROLLUP = f"""
INSERT INTO rollup_channel_hourly (hour, channel, event_name, event_count, unique_users,
                                   late_events, first_event_at, last_event_at, revised_at)
SELECT {_UTC_HOUR}, channel, event_name, count(*), count(DISTINCT user_id),
       count(*) FILTER (WHERE late), min(occurred_at), max(occurred_at),
       CASE WHEN bool_or(late) THEN max(received_at) FILTER (WHERE late) END
FROM raw_events WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY 1, 2, 3
RETURNING 1
"""

REBUILD_AGENT_ROLLUP = f"""
INSERT INTO rollup_agent_hourly (hour, tenant_id, workspace_id, project_id, agent_id, workflow_id,
                                 runs, succeeded, failed, events, cost_usd, latency_ms_sum,
                                 latency_ms_count, latency_hist, late_events, revised_at)
SELECT {_UTC_HOUR}, tenant_id, workspace_id, project_id, agent_id, workflow_id,
       count(*) FILTER (WHERE event_type = 'run.started'),
       count(*) FILTER (WHERE event_type = 'run.completed'),
       count(*) FILTER (WHERE event_type = 'run.failed'),
       count(*), coalesce(sum(cost_usd), 0), coalesce(sum(latency_ms), 0), count(latency_ms),
       {_LATENCY_HIST}, count(*) FILTER (WHERE late),
       CASE WHEN bool_or(late) THEN max(received_at) FILTER (WHERE late) END
FROM raw_agent_events WHERE occurred_at >= $1 AND occurred_at < $2
GROUP BY 1, 2, 3, 4, 5, 6
RETURNING 1
"""

# Deletes at most $2 rows older than $1 per call; the command loops until none are left.
DELETE_OLD_RAW_EVENTS = """
DELETE FROM raw_events WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM raw_events WHERE occurred_at < $1 LIMIT $2))
"""
DELETE_OLD_RAW_AGENT_EVENTS = """
DELETE FROM raw_agent_events WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM raw_agent_events WHERE occurred_at < $1 LIMIT $2))
"""
DELETE_OLD_DEAD_LETTERS = """
DELETE FROM dead_letters WHERE id = ANY (ARRAY(
    SELECT id FROM dead_letters WHERE received_at < $1 LIMIT $2))
"""

DELETE_PROGRESS = "DELETE FROM partition_progress WHERE topic = $1"

SET_PROGRESS = """
INSERT INTO partition_progress AS p (topic, partition, next_offset)
SELECT $1, pa, nx FROM unnest($2::int4[], $3::int8[]) AS x(pa, nx)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""
# An ingestion job goes once nothing updated it since the cutoff: its per-event
# rows first (so a batch of jobs is never left half-deleted), then the job.
DELETE_OLD_INGESTION_JOB_EVENTS = """
DELETE FROM ingestion_job_events WHERE ctid = ANY (ARRAY(
    SELECT e.ctid FROM ingestion_job_events e JOIN ingestion_jobs j USING (job_id)
    WHERE j.updated_at < $1 LIMIT $2))
"""
DELETE_OLD_INGESTION_JOBS = """
DELETE FROM ingestion_jobs WHERE job_id = ANY (ARRAY(
    SELECT job_id FROM ingestion_jobs j WHERE updated_at < $1
    AND NOT EXISTS (SELECT 1 FROM ingestion_job_events e WHERE e.job_id = j.job_id)
    LIMIT $2))
"""

# --- Migrations (pipeline/sink/migrate.py) ------------------------------------------

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
"""
SELECT_MIGRATIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version) VALUES ($1)"
ADVISORY_LOCK = "SELECT pg_advisory_lock($1)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock($1)"

# --- Connectivity: readiness, stack up against an external DATABASE_URL -------------

PING = "SELECT 1"

# The embedded stack's database, created through psql's \gexec (CREATE DATABASE
# cannot run inside a DO block); {name} is a fixed identifier, never user input.
CREATE_DATABASE_IF_MISSING = (
    "SELECT 'CREATE DATABASE {name}' "
    "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
)

# --- The benchmark (tools/bench.py) -------------------------------------------------

COUNT_LIVE_OWNERS = """
SELECT count(*) FROM worker_status
WHERE cardinality(partitions) > 0 AND heartbeat_at > now() - interval '10 seconds'
"""
PROBE_ROLLUP_NAMES = "SELECT event_name FROM rollup_channel_hourly WHERE channel = $1"
BACKEND_PID = "SELECT pg_backend_pid()"
# A scenario's own database ({name}: generated by the benchmark, never user input).
CREATE_DATABASE = 'CREATE DATABASE "{name}"'
DROP_DATABASE = 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
# The naive baseline: one statement per event, no batching, no dedup state.
NAIVE_INSERT_EVENT = """
INSERT INTO raw_events (dedup_key, event_name, channel, user_id, occurred_at, payload,
                        source_topic, source_partition, source_offset)
VALUES ($1, $2, $3, $4, timestamptz 'epoch' + $5 * interval '1 microsecond', $6::json, $7, $8, $9)
ON CONFLICT DO NOTHING RETURNING dedup_key
"""
NAIVE_ADD_ROLLUP = """
INSERT INTO rollup_channel_hourly (hour, channel, event_name, event_count, unique_users,
                                   first_event_at, last_event_at)
VALUES (timestamptz 'epoch' + $1 * interval '1 microsecond', $2, $3, 1, 0, now(), now())
ON CONFLICT (hour, channel, event_name) DO UPDATE SET
    event_count = rollup_channel_hourly.event_count + 1
"""

# --- Dead letters: python -m pipeline dlq list|show|replay (pipeline/ops/dlq.py) -------

# $1 reasons (NULL: any), $2 received since (inclusive), $3 received until (exclusive).
_DLQ_FILTER = """($1::text[] IS NULL OR reason = ANY($1))
  AND ($2::timestamptz IS NULL OR received_at >= $2)
  AND ($3::timestamptz IS NULL OR received_at < $3)"""
_DLQ_COLUMNS = """id, received_at, reason, field, detail, source_topic, source_partition,
       source_offset, envelope_index, length(raw) AS raw_bytes, replayed_at, replayed_to,
       replay_count, replay_fixes"""

# The newest $4 dead letters of the filter (NULL: all), in id order; with their raw bytes
# when $5 (replay needs them, list does not).
DLQ_SELECT = f"""
SELECT * FROM (
    SELECT {_DLQ_COLUMNS}, CASE WHEN $5::bool THEN raw END AS raw
    FROM dead_letters WHERE {_DLQ_FILTER}
    ORDER BY id DESC LIMIT $4::int8
) newest ORDER BY id
"""

DLQ_COUNTS = f"""
SELECT reason, count(*) AS n, count(replayed_at) AS replayed
FROM dead_letters WHERE {_DLQ_FILTER} GROUP BY 1 ORDER BY 1
"""

DLQ_SELECT_IDS = f"""
SELECT {_DLQ_COLUMNS}, raw FROM dead_letters WHERE id = ANY($1::int8[]) ORDER BY id
"""

# Written only after the broker acknowledged each publish: $2 is topic/partition/offset.
DLQ_MARK_REPLAYED = """
UPDATE dead_letters d
SET replayed_at = now(), replayed_to = x.dest, replay_count = d.replay_count + 1,
    replay_fixes = x.fixes
FROM unnest($1::int8[], $2::text[], $3::text[]) AS x(id, dest, fixes)
WHERE d.id = x.id
"""

# --- Rollups for a range: python -m pipeline query (pipeline/ops/query.py) and, for the
# channel rollups, the gateway's GET /metrics (producers/gateway/queries.py takes them here) ---

# $1 from (inclusive), $2 to (exclusive) on the hour start; $3 event_name, $4 channel.
_QUERY_CHANNEL_FILTER = """hour >= $1 AND hour < $2
      AND ($3::text IS NULL OR event_name = $3) AND ($4::text IS NULL OR channel = $4)"""
_DAY = "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"

# Unique users come from the per-hour user sets: a count of distinct users per bucket,
# never a sum of hourly uniques (a user seen in two hours counts once in their day).
CHANNEL_BUCKETS = {
    group: f"""
WITH e AS (
    SELECT {expr} AS bucket, sum(event_count)::int8 AS events,
           sum(late_events)::int8 AS late_events
    FROM rollup_channel_hourly WHERE {_QUERY_CHANNEL_FILTER} GROUP BY 1
), u AS (
    SELECT {expr} AS bucket, count(DISTINCT user_id)::int8 AS unique_users
    FROM rollup_channel_users WHERE {_QUERY_CHANNEL_FILTER} GROUP BY 1
)
SELECT e.bucket, e.events, coalesce(u.unique_users, 0) AS unique_users, e.late_events
FROM e LEFT JOIN u USING (bucket) ORDER BY 1
"""
    for group, expr in {"hour": "hour", "day": _DAY, "channel": "channel"}.items()
}

CHANNEL_TOTALS = f"""
SELECT (SELECT coalesce(sum(event_count), 0)::int8
          FROM rollup_channel_hourly WHERE {_QUERY_CHANNEL_FILTER}) AS events,
       (SELECT count(DISTINCT user_id)::int8
          FROM rollup_channel_users WHERE {_QUERY_CHANNEL_FILTER}) AS unique_users,
       (SELECT coalesce(sum(late_events), 0)::int8
          FROM rollup_channel_hourly WHERE {_QUERY_CHANNEL_FILTER}) AS late_events
"""

# $1 from, $2 to; $3 tenant_id, $4 agent_id, $5 workflow_id (NULL: any).
QUERY_AGENT_BUCKETS = {
    group: f"""
SELECT {expr} AS bucket, sum(runs)::int8 AS runs, sum(succeeded)::int8 AS succeeded,
       sum(failed)::int8 AS failed, sum(events)::int8 AS events,
       sum(cost_usd)::float8 AS cost_usd, sum(latency_ms_sum)::float8 AS latency_ms_sum,
       sum(latency_ms_count)::int8 AS latency_ms_count
FROM rollup_agent_hourly
WHERE hour >= $1 AND hour < $2
  AND ($3::text IS NULL OR tenant_id = $3) AND ($4::text IS NULL OR agent_id = $4)
  AND ($5::text IS NULL OR workflow_id = $5)
GROUP BY 1 ORDER BY 1
"""
    for group, expr in {
        "hour": "hour",
        "day": _DAY,
        "tenant": "tenant_id",
        "agent": "agent_id",
        "workflow": "workflow_id",
    }.items()
}
