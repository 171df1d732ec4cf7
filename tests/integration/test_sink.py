"""The sink against real PostgreSQL: one transaction per batch, replays add nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from pipeline.core import latency
from pipeline.core.limits import EventLimits
from pipeline.core.offsets import LogRange
from pipeline.core.planner import UNSTORABLE, RawMessage, plan_batch, quarantine
from pipeline.ops.maintenance import (
    OffsetReset,
    apply_offset_reset,
    apply_retention,
    rebuild_rollups,
)
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.reconcile import reconcile
from pipeline.sink.writer import Abandoned, Sink, Unstorable, load_progress
from tests.rollup_model import aggregate_agents

pytestmark = pytest.mark.integration

NOW_US = 1_700_010_000 * 1_000_000


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


def _sink(pool: asyncpg.Pool) -> Sink:
    async def get() -> asyncpg.Pool:
        return pool

    return Sink(get)


def _msg(offset: int, doc: object, partition: int = 0) -> RawMessage:
    return RawMessage("events", partition, offset, orjson.dumps(doc))


def _event(i: int, **extra: object) -> dict[str, object]:
    return {
        "event_name": "view",
        "channel": "web",
        "user_id": f"u{i % 3}",
        "timestamp": 1_700_000_000 + i,
        **extra,
    }


async def test_a_replayed_batch_adds_nothing(pool: asyncpg.Pool, database: str) -> None:
    messages = [_msg(i, _event(i)) for i in range(10)] + [RawMessage("events", 0, 10, b"{bad")]
    plan = plan_batch(messages, EventLimits(), NOW_US, {})
    sink = _sink(pool)
    first = await sink.write(plan)
    again = await sink.write(plan_batch(messages, EventLimits(), NOW_US, {}))
    assert (first.stored, first.duplicates, first.dead_lettered) == (10, 0, 1)
    assert (again.stored, again.duplicates) == (0, 10)
    row = await pool.fetchrow("SELECT event_count, unique_users FROM rollup_channel_hourly")
    assert tuple(row) == (10, 3)
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 1
    assert await pool.fetchval("SELECT next_offset FROM partition_progress") == 11
    report = await reconcile(database)
    assert report.consistent


async def test_the_commit_waits_for_before_commit_and_rolls_back_when_it_fails(
    pool: asyncpg.Pool,
) -> None:
    # The worker passes its DLQ publish here: no offset may become durable first.
    sink = _sink(pool)
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    plan = plan_batch(
        [_msg(0, _event(0)), RawMessage("events", 0, 1, b"{bad")], EventLimits(), NOW_US, {}
    )
    writing = asyncio.create_task(sink.write(plan, before_commit=gate))
    await asyncio.sleep(0.3)
    assert not writing.done()
    assert await pool.fetchval("SELECT count(*) FROM partition_progress") == 0
    gate.set_result(None)
    assert (await writing).stored == 1
    assert await pool.fetchval("SELECT next_offset FROM partition_progress") == 2

    failed: asyncio.Future[None] = loop.create_future()
    failed.set_exception(Abandoned())
    later = plan_batch([_msg(2, _event(2))], EventLimits(), NOW_US, {})
    with pytest.raises(Abandoned):
        await sink.write(later, before_commit=failed)
    assert await pool.fetchval("SELECT next_offset FROM partition_progress") == 2
    assert await pool.fetchval("SELECT count(*) FROM raw_events") == 1


async def test_offsets_and_watermarks_never_move_back(pool: asyncpg.Pool) -> None:
    sink = _sink(pool)
    await sink.write(plan_batch([_msg(50, _event(50))], EventLimits(), NOW_US, {}))
    await sink.write(plan_batch([_msg(7, _event(7))], EventLimits(), NOW_US, {}))
    row = await pool.fetchrow("SELECT next_offset, watermark FROM partition_progress")
    assert row["next_offset"] == 51
    assert row["watermark"].timestamp() == 1_700_000_050


async def test_ingestion_job_counts_are_exact_under_replay(pool: asyncpg.Pool) -> None:
    job = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO ingestion_jobs (job_id, tenant_id, request_sha256, accepted)"
        " VALUES ($1, 't1', 'x', 4)",
        uuid.UUID(job),
    )

    def job_event(seq: int, ts: float) -> dict[str, object]:
        return {
            "event_id": f"{job}:{seq}",
            "event_name": "sync",
            "channel": "ingestion",
            "user_id": "t1",
            "timestamp": ts,
            "_ingestion": {"job_id": job, "seq": seq},
        }

    future = NOW_US / 1e6 + 86_400  # refused as too_far_in_future
    messages = [
        _msg(0, job_event(0, 1_700_000_000)),
        _msg(1, job_event(1, 1_700_000_001)),
        _msg(2, job_event(1, 1_700_000_001)),  # the same job event sent twice
        _msg(3, job_event(2, future)),
    ]
    sink = _sink(pool)
    for _ in range(2):  # the second pass is a replay: it must count nothing
        await sink.write(plan_batch(messages, EventLimits(), NOW_US, {}))
    row = await pool.fetchrow(
        "SELECT stored, duplicates, dead_lettered FROM ingestion_jobs WHERE job_id = $1",
        uuid.UUID(job),
    )
    assert tuple(row) == (2, 0, 1)
    stored_for_job = await pool.fetchval(
        "SELECT count(*) FROM raw_events WHERE ingestion_job_id = $1", uuid.UUID(job)
    )
    assert stored_for_job == 2


async def test_rebuild_rollups_reproduces_what_the_sink_added(
    pool: asyncpg.Pool, database: str
) -> None:
    sink = _sink(pool)
    messages = [_msg(i, _event(i * 700)) for i in range(30)]  # spans several hours
    await sink.write(plan_batch(messages, EventLimits(), NOW_US, {}))
    before = [tuple(r) for r in await pool.fetch(sql.CHANNEL_ROLLUPS)]
    users_before = await pool.fetchval("SELECT count(*) FROM rollup_channel_users")
    await pool.execute("UPDATE rollup_channel_hourly SET event_count = event_count + 99")
    start = datetime(2023, 11, 14, tzinfo=UTC)
    end = datetime(2023, 11, 16, tzinfo=UTC)
    for _ in range(2):  # idempotent
        result = await rebuild_rollups(database, start, end)
    assert result.channel_rows == len(before)
    assert [tuple(r) for r in await pool.fetch(sql.CHANNEL_ROLLUPS)] == before
    assert await pool.fetchval("SELECT count(*) FROM rollup_channel_users") == users_before
    assert (await reconcile(database)).consistent


async def test_retention_deletes_old_raw_rows_and_keeps_rollups(
    pool: asyncpg.Pool, database: str
) -> None:
    sink = _sink(pool)
    old = [_msg(i, _event(i)) for i in range(5)]  # 2023: older than a day
    now = time.time()
    fresh = [_msg(5 + i, _event(i, timestamp=now - 60)) for i in range(3)]
    await sink.write(plan_batch(old + fresh, EventLimits(), int(now * 1e6), {}))
    rollups = await pool.fetchval("SELECT sum(event_count) FROM rollup_channel_hourly")
    deleted = await apply_retention(database, days=1, batch=2)
    assert deleted["raw_events"] == 5
    assert await pool.fetchval("SELECT count(*) FROM raw_events") == 3
    assert await pool.fetchval("SELECT sum(event_count) FROM rollup_channel_hourly") == rollups


async def test_retention_prunes_old_ingestion_jobs_and_their_events(
    pool: asyncpg.Pool, database: str
) -> None:
    jobs = [uuid.uuid4() for _ in range(3)]
    for n, job in enumerate(jobs):  # two finished 2 and 3 days ago, one just now
        await pool.execute(
            "INSERT INTO ingestion_jobs (job_id, tenant_id, idempotency_key, request_sha256,"
            " accepted, stored, updated_at) VALUES ($1, 't', $2, 'x', 3, 3,"
            " now() - make_interval(days => $3))",
            job,
            f"key-{n}",
            (3, 2, 0)[n],
        )
        await pool.executemany(
            "INSERT INTO ingestion_job_events (job_id, seq, outcome) VALUES ($1, $2, 'stored')",
            [(job, seq) for seq in range(3)],
        )
    deleted = await apply_retention(database, days=1, batch=2)
    assert (deleted["ingestion_job_events"], deleted["ingestion_jobs"]) == (6, 2)
    assert await pool.fetchval("SELECT array_agg(job_id) FROM ingestion_jobs") == [jobs[2]]
    assert await pool.fetchval("SELECT count(*) FROM ingestion_job_events") == 3


async def test_a_replay_after_reset_offsets_adds_nothing(pool: asyncpg.Pool, database: str) -> None:
    sink = _sink(pool)
    messages = [_msg(i, _event(i)) for i in range(12)]
    await sink.write(plan_batch(messages, EventLimits(), NOW_US, {}))
    rollups = [tuple(r) for r in await pool.fetch(sql.CHANNEL_ROLLUPS)]
    settings = Settings(database_url=database, events_topic="events")
    await apply_offset_reset(settings, [OffsetReset(0, 12, LogRange(0, 12), 0)])
    durable = await load_progress(pool, "events")
    assert durable[0][0] == 0
    result = await sink.write(plan_batch(messages, EventLimits(), NOW_US, {}))  # the replay
    assert result.stored == 0
    assert [tuple(r) for r in await pool.fetch(sql.CHANNEL_ROLLUPS)] == rollups
    assert (await load_progress(pool, "events"))[0][0] == 12


async def test_an_event_postgresql_refuses_comes_back_alone_and_nothing_is_kept(
    pool: asyncpg.Pool, database: str
) -> None:
    # Validation keeps such content out; the sink must still never exit over it.
    messages = [_msg(i, _event(i)) for i in range(4)]
    plan = plan_batch(messages, EventLimits(), NOW_US, {})
    plan.products[2] = dataclasses.replace(plan.products[2], payload=b'{"broken": ')
    sink = _sink(pool)
    with pytest.raises(Unstorable) as refusal:
        await sink.write(plan)
    ((event, why),) = refusal.value.refused
    assert event.source.offset == 2
    assert "InvalidTextRepresentation" in why or "json" in why.lower()
    assert await pool.fetchval("SELECT count(*) FROM raw_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM partition_progress") == 0
    quarantine(plan, refusal.value.refused)
    result = await sink.write(plan)
    assert (result.stored, result.dead_lettered) == (3, 1)
    row = await pool.fetchrow("SELECT reason, raw, source_offset FROM dead_letters")
    assert tuple(row) == (UNSTORABLE, b'{"broken": ', 2)
    assert await pool.fetchval("SELECT sum(event_count) FROM rollup_channel_hourly") == 3
    assert await pool.fetchval("SELECT next_offset FROM partition_progress") == 4
    assert (await reconcile(database)).consistent


# --- agent latency histograms (migration 0008, pipeline/core/latency.py) ---


def _agent_event(
    i: int, ts: float, latency_ms: float | None, agent: str = "a1", **changes: object
) -> dict[str, object]:
    run: dict[str, object] = {
        "run_id": f"run-{i}",
        "agent_id": agent,
        "workflow_id": "wf",
        "status": "succeeded",
        "cost_usd": 0.25,
    }
    if latency_ms is not None:
        run["latency_ms"] = latency_ms
    return {
        "event_version": "v0",
        "event_id": str(uuid.UUID(int=i)),
        "event_type": "run.completed",
        "occurred_at": datetime.fromtimestamp(ts, UTC).isoformat(),
        "tenant": {"tenant_id": "acme", "workspace_id": "ws", "project_id": "p"},
        "run": run,
        "trace": {"trace_id": "t", "span_id": "s"},
        **changes,
    }


def _latencies(rng: random.Random, n: int) -> list[float]:
    """``n`` latencies from 0 to hours (one overflows), in eighths of a millisecond, so
    that their sums are exact whatever the order of addition."""
    spread = [round(rng.lognormvariate(7, 2.5) * 8) / 8 for _ in range(max(0, n - 4))]
    return spread + [0.0, 0.03125, 1.0, 1e9][:n]


def _agent_batch(first: int, latencies: list[float | None]) -> list[RawMessage]:
    """Events over two hours and two agents, one message each (offset = event number)."""
    return [
        _msg(
            first + k,
            _agent_event(first + k, 1_700_000_000 + (k % 2) * 3600 + k, ms, f"a{k % 3 % 2 + 1}"),
        )
        for k, ms in enumerate(latencies)
    ]


async def _histograms(pool: asyncpg.Pool) -> dict[tuple[object, ...], list[int]]:
    return {tuple(r)[:6]: list(r["latency_hist"]) for r in await pool.fetch(sql.AGENT_ROLLUPS)}


def _model(plans: list[object]) -> dict[tuple[object, ...], list[int]]:
    agents = [e for p in plans for e in p.agents]  # type: ignore[attr-defined]
    return {
        (datetime.fromtimestamp(k[0] / 1e6, UTC), *k[1:]): a.latency_hist
        for k, a in aggregate_agents(agents).items()
    }


async def test_sql_buckets_and_histograms_equal_the_python_ones(pool: asyncpg.Pool) -> None:
    """latency_bucket (PostgreSQL width_bucket) is bisect_right on the same doubles."""
    rng = random.Random(17)
    values = [0.0, -0.0, 5e-324, 1e308, *(10 ** rng.uniform(-3, 9) for _ in range(2000))]
    for b in latency.BOUNDARIES:
        values += [b, math.nextafter(b, 0.0), math.nextafter(b, math.inf)]
    got = await pool.fetchval(
        "SELECT array_agg(latency_bucket(v) ORDER BY i)"
        " FROM unnest($1::float8[]) WITH ORDINALITY AS u(v, i)",
        values,
    )
    assert got == [latency.bucket_index(v) for v in values]
    for _ in range(40):
        a, b = _latencies(rng, rng.randrange(0, 30)), _latencies(rng, rng.randrange(0, 30))
        ha, hb = latency.histogram(a), latency.histogram(b)
        row = await pool.fetchrow(
            "SELECT latency_hist_of(ARRAY(SELECT latency_bucket(v) FROM unnest($1::float8[]) v))"
            " AS ha, hist_add($2::int8[], $3::int8[]) AS ab,"
            " hist_add($3::int8[], $2::int8[]) AS ba",
            a,
            ha,
            hb,
        )
        assert (row["ha"], row["ab"], row["ba"]) == (
            ha,
            latency.merge(ha, hb),
            latency.merge(ha, hb),
        )
    row = await pool.fetchrow(
        "SELECT hist_add(NULL, '{2}') AS a, hist_add('{0,1}', NULL) AS b,"
        " hist_add('{}', '{}') AS c, latency_hist_of(NULL) AS d, latency_hist_of('{}') AS e"
    )
    assert tuple(row) == ([2], [0, 1], [], [], [])


async def test_latency_histograms_add_up_across_batches_and_a_replay_adds_nothing(
    pool: asyncpg.Pool, database: str
) -> None:
    rng = random.Random(3)
    first = _agent_batch(0, [*_latencies(rng, 40), None, None])
    second = _agent_batch(100, _latencies(rng, 60))
    sink = _sink(pool)
    plan1 = plan_batch(first, EventLimits(), NOW_US, {})
    await sink.write(plan1)
    after_one = await _histograms(pool)
    assert after_one == _model([plan1]) and len(after_one) == 4
    plan2 = plan_batch(second, EventLimits(), NOW_US, {})
    await sink.write(plan2)
    both = await _histograms(pool)
    assert both == _model([plan1, plan2])
    for key, hist in both.items():  # every sample in exactly one bucket: added, not replaced
        assert hist == latency.merge(after_one[key], _model([plan2])[key])
    replay = await sink.write(plan_batch(first, EventLimits(), NOW_US, {}))
    assert replay.stored == 0
    assert await _histograms(pool) == both
    counts = {tuple(r)[:6]: r["latency_ms_count"] for r in await pool.fetch(sql.AGENT_ROLLUPS)}
    assert {k: latency.total(h) for k, h in both.items()} == counts
    assert (await reconcile(database)).consistent


async def test_rebuild_rollups_recreates_identical_histograms(
    pool: asyncpg.Pool, database: str
) -> None:
    rng = random.Random(11)
    sink = _sink(pool)
    for first in (0, 100, 200):
        await sink.write(
            plan_batch(_agent_batch(first, _latencies(rng, 50)), EventLimits(), NOW_US, {})
        )
    before = [tuple(r) for r in await pool.fetch(sql.AGENT_ROLLUPS)]
    assert all(r[13] for r in before), "every row has samples"
    # An hour stored before migration 0008: its histogram is empty, the reconciliation says so.
    await pool.execute("UPDATE rollup_agent_hourly SET latency_hist = '{}'")
    mismatches = (await reconcile(database)).agent_mismatches
    assert len(mismatches) == len(before)
    assert all(m["latency_hist"] == [] and m["raw_latency_hist"] for m in mismatches)
    start = datetime(2023, 11, 14, tzinfo=UTC)
    end = datetime(2023, 11, 16, tzinfo=UTC)
    for _ in range(2):  # idempotent
        result = await rebuild_rollups(database, start, end)
    assert result.agent_rows == len(before)
    assert [tuple(r) for r in await pool.fetch(sql.AGENT_ROLLUPS)] == before
    assert (await reconcile(database)).consistent
