-- Agent latency percentiles (GET /v1/metrics/overview: p50, p95, p99) and the index
-- behind GET /v1/runs/failures. Column meanings: README.md, "Tables"; the buckets,
-- the percentile estimate and its error: pipeline/core/latency.py.
--
-- rollup_agent_hourly.latency_hist counts the run.latency_ms values of a row per
-- log-spaced bucket: int8[], bucket i at subscript i + 1, trailing zero buckets
-- trimmed ('{}' = no sample). It is a counter like the others: the sink ADDS its
-- batch's partial histogram in the same upsert (hist_add), so replays add nothing
-- and several workers stay exact. Hours stored before this migration keep an empty
-- histogram until `python -m pipeline rebuild-rollups --from .. --to ..` recomputes
-- them from raw_agent_events.

-- The bucket of a latency (ms): how many boundaries are <= it, 0 (underflow, below
-- the first) to 257 (overflow, from the last). The boundaries are 2^(k/8) ms for
-- k = -40..216 with 6 significant digits, one doubling per line; they must equal
-- pipeline.core.latency.BOUNDARIES (tests/unit/core/test_latency.py checks it).
CREATE FUNCTION latency_bucket(ms float8) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT width_bucket(ms, '{
    0.03125, 0.0340784, 0.0371627, 0.0405262, 0.0441942, 0.0481941, 0.052556, 0.0573128,
    0.0625, 0.0681567, 0.0743254, 0.0810525, 0.0883883, 0.0963882, 0.105112, 0.114626,
    0.125, 0.136313, 0.148651, 0.162105, 0.176777, 0.192776, 0.210224, 0.229251,
    0.25, 0.272627, 0.297302, 0.32421, 0.353553, 0.385553, 0.420448, 0.458502,
    0.5, 0.545254, 0.594604, 0.64842, 0.707107, 0.771105, 0.840896, 0.917004,
    1, 1.09051, 1.18921, 1.29684, 1.41421, 1.54221, 1.68179, 1.83401,
    2, 2.18102, 2.37841, 2.59368, 2.82843, 3.08442, 3.36359, 3.66802,
    4, 4.36203, 4.75683, 5.18736, 5.65685, 6.16884, 6.72717, 7.33603,
    8, 8.72406, 9.51366, 10.3747, 11.3137, 12.3377, 13.4543, 14.6721,
    16, 17.4481, 19.0273, 20.7494, 22.6274, 24.6754, 26.9087, 29.3441,
    32, 34.8962, 38.0546, 41.4989, 45.2548, 49.3507, 53.8174, 58.6883,
    64, 69.7925, 76.1093, 82.9977, 90.5097, 98.7015, 107.635, 117.377,
    128, 139.585, 152.219, 165.995, 181.019, 197.403, 215.269, 234.753,
    256, 279.17, 304.437, 331.991, 362.039, 394.806, 430.539, 469.506,
    512, 558.34, 608.874, 663.982, 724.077, 789.612, 861.078, 939.012,
    1024, 1116.68, 1217.75, 1327.96, 1448.15, 1579.22, 1722.16, 1878.02,
    2048, 2233.36, 2435.5, 2655.93, 2896.31, 3158.45, 3444.31, 3756.05,
    4096, 4466.72, 4870.99, 5311.85, 5792.62, 6316.9, 6888.62, 7512.1,
    8192, 8933.44, 9741.98, 10623.7, 11585.2, 12633.8, 13777.2, 15024.2,
    16384, 17866.9, 19484, 21247.4, 23170.5, 25267.6, 27554.5, 30048.4,
    32768, 35733.8, 38967.9, 42494.8, 46341, 50535.2, 55109, 60096.8,
    65536, 71467.5, 77935.9, 84989.7, 92681.9, 101070, 110218, 120194,
    131072, 142935, 155872, 169979, 185364, 202141, 220436, 240387,
    262144, 285870, 311744, 339959, 370728, 404281, 440872, 480774,
    524288, 571740, 623487, 679917, 741455, 808563, 881744, 961548,
    1048580, 1143480, 1246970, 1359830, 1482910, 1617130, 1763490, 1923100,
    2097150, 2286960, 2493950, 2719670, 2965820, 3234250, 3526980, 3846190,
    4194300, 4573920, 4987900, 5439340, 5931640, 6468500, 7053950, 7692390,
    8388610, 9147840, 9975790, 10878700, 11863300, 12937000, 14107900, 15384800,
    16777200, 18295700, 19951600, 21757400, 23726600, 25874000, 28215800, 30769500,
    33554400, 36591400, 39903200, 43514700, 47453100, 51748000, 56431600, 61539100,
    67108900, 73182700, 79806300, 87029400, 94906300, 103496000, 112863000, 123078000,
    134218000
}'::float8[]) $$;

-- The histogram of a list of bucket numbers (latency_bucket), trimmed:
-- latency_hist_of(array_agg(latency_bucket(latency_ms)) FILTER (WHERE latency_ms IS NOT NULL)).
-- PL/pgSQL on purpose, here and in hist_add: its array element assignment works in
-- place, where a SQL function's unnest/array_agg cost the sink 50-250 µs per row (ten
-- times the whole agent upsert without histograms).
CREATE FUNCTION latency_hist_of(buckets integer[]) RETURNS int8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    hist int8[] := '{}';
    b integer;
BEGIN
    IF buckets IS NULL THEN
        RETURN hist;
    END IF;
    FOREACH b IN ARRAY buckets LOOP
        IF b IS NOT NULL THEN
            IF b >= cardinality(hist) THEN
                hist := hist || array_fill(0::int8, ARRAY[b + 1 - cardinality(hist)]);
            END IF;
            hist[b + 1] := hist[b + 1] + 1;
        END IF;
    END LOOP;
    RETURN hist;
END
$$;

-- Two histograms added elementwise (the longer one's length): the histogram of both
-- samples. Work in proportion to the second one's non-zero buckets (a batch's few):
-- array_remove lists their counts in order, array_position finds each one's bucket.
CREATE FUNCTION hist_add(a int8[], b int8[]) RETURNS int8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    hist int8[] := coalesce(a, '{}');
    pos integer := 0;
    n int8;
BEGIN
    IF b IS NULL OR cardinality(b) = 0 THEN
        RETURN hist;
    END IF;
    IF cardinality(b) > cardinality(hist) THEN
        hist := hist || array_fill(0::int8, ARRAY[cardinality(b) - cardinality(hist)]);
    END IF;
    FOREACH n IN ARRAY array_remove(b, 0::int8) LOOP
        pos := array_position(b, n, pos + 1);
        hist[pos] := hist[pos] + n;
    END LOOP;
    RETURN hist;
END
$$;

ALTER TABLE rollup_agent_hourly ADD COLUMN latency_hist int8[] NOT NULL DEFAULT '{}';
-- A row with a histogram is 1-2 KB, so a full page leaves no room for the next version
-- of a row, and every upsert became a non-HOT update with a new primary-key entry (6%
-- HOT updates instead of 85%; the sink's agent upsert 4.6 instead of 1.7 ms a batch).
-- Half-empty pages keep the upserts HOT (99%) at the cost of a twice larger table.
ALTER TABLE rollup_agent_hourly SET (fillfactor = 50);

-- GET /v1/runs/failures: the newest failed runs first, ties broken by the dedup key.
CREATE INDEX raw_agent_events_failed ON raw_agent_events (occurred_at, dedup_key)
    WHERE event_type = 'run.failed';
