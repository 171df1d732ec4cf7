"""End to end against the real broker and PostgreSQL: the invariants under load and SIGKILL.

Each test publishes a generated load (both event kinds, 4 channels, 3 hours,
10% duplicates, 2% invalid of several kinds including non-JSON bytes, 2% late)
and asserts: the raw tables hold exactly the unique valid events, the rollups
(latency histograms included) equal both the GROUP BY of the raw tables and the
generator's own expected counts, and dead_letters holds exactly the invalid ones
with the right reasons.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.settings import Settings
from pipeline.sink.reconcile import (
    latency_histograms_as_rows,
    reconcile,
    rollups_as_rows,
    wait_until_processed,
)
from producers.generate import LoadOptions, Workload, build_workload, publish_workload
from producers.publisher import Publisher, Receipt
from tests.conftest import Workers, http_get, metric_value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

COUNT = 20_000


def _load(envelope: int = 1, count: int = COUNT, seed: int = 7) -> LoadOptions:
    return LoadOptions(count=count, envelope_size=envelope, seed=seed, hours=3)


async def _publish(
    settings: Settings, opts: LoadOptions, rate: float = 0.0
) -> tuple[Workload, Receipt]:
    async with Publisher(settings) as pub:
        workload = build_workload(opts, pub.partitions)
        receipt = await publish_workload(pub, workload, rate=rate, progress=False)
    return workload, receipt


def _same_rows(actual: list[list[Any]], expected: list[list[Any]]) -> bool:
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected, strict=True):
        for x, y in zip(a, e, strict=True):
            if isinstance(y, float) and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                return False
            if not isinstance(y, float) and x != y:
                return False
    return True


async def assert_invariants(settings: Settings, workload: Workload) -> None:
    dsn = settings.require_database_url()
    expected = workload.expected()
    report = await reconcile(dsn)
    assert report.product_events == expected["product_events"]
    assert report.agent_events == expected["agent_events"]
    assert report.channel_mismatches == [], "rollup_channel_hourly != GROUP BY raw_events"
    assert report.agent_mismatches == [], "rollup_agent_hourly != GROUP BY raw_agent_events"
    channel, agent = await rollups_as_rows(dsn)
    assert channel == expected["channel_rollups"]
    assert _same_rows(agent, expected["agent_rollups"])
    histograms = await latency_histograms_as_rows(dsn)
    assert histograms == expected["agent_latency_histograms"]
    assert report.dead_letters == expected["dead_letters"]
    assert report.late_events == expected["late_events"]


async def _dlq_messages(settings: Settings, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:

        async def enough() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
            return len({_source(m) for m in got}) >= expected

        await wait_for(enough, 30, f"{expected} dead letters on {settings.dlq_topic}")
    finally:
        await consumer.stop()
    return got


async def _wait_kafka_committed(settings: Settings, end_offsets: dict[int, int]) -> None:
    group = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.app_id,
        enable_auto_commit=False,
    )
    await group.start()
    try:

        async def at_end() -> bool:
            for p, end in end_offsets.items():
                if await group.committed(TopicPartition(settings.events_topic, p)) != end:
                    return False
            return True

        await wait_for(at_end, 30, f"the group's Kafka commits reaching {end_offsets}")
    finally:
        await group.stop()


def _source(message: Any) -> bytes:
    return dict(message.headers)["dlq.source"]


async def test_load_of_single_event_messages(settings: Settings, workers: Workers) -> None:
    worker = workers.start()
    workload, receipt = await _publish(settings, _load())
    await wait_until_processed(
        settings.database_url or "", settings.events_topic, receipt.end_offsets, 180
    )
    await assert_invariants(settings, workload)
    dlq = await _dlq_messages(settings, sum(workload.invalid.values()))
    reasons = {dict(m.headers)["dlq.reason"].decode() for m in dlq}
    assert reasons == set(workload.invalid)
    # Faust, fed runs of records (delivery.py), commits the group's offsets to the end.
    await _wait_kafka_committed(settings, receipt.end_offsets)
    assert worker.proc.poll() is None, worker.tail()


async def test_load_of_envelopes_with_invalid_elements(
    settings: Settings, workers: Workers
) -> None:
    workers.start()
    workload, receipt = await _publish(settings, _load(envelope=50, seed=11))
    assert receipt.messages < receipt.events / 10, "the load must travel in envelopes"
    dsn = settings.database_url or ""
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 180)
    await assert_invariants(settings, workload)
    conn = await asyncpg.connect(dsn)
    try:
        in_envelopes = await conn.fetchval(
            "SELECT count(*) FROM dead_letters"
            " WHERE envelope_index >= 0 AND reason = 'schema_invalid'"
        )
    finally:
        await conn.close()
    assert in_envelopes == workload.invalid["schema_invalid"]


async def test_sigkill_mid_load_then_restart(settings: Settings, workers: Workers) -> None:
    first = workers.start()
    dsn = settings.database_url or ""
    opts = _load(seed=23)
    publishing = asyncio.create_task(_publish(settings, opts, rate=4_000))

    async def partly_processed() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            done = await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM partition_progress"
            )
        finally:
            await conn.close()
        return done if done >= COUNT * 0.25 else 0

    done_at_kill = await wait_for(partly_processed, 120, "a quarter of the load processed")
    first.kill()
    assert done_at_kill < COUNT, "the worker must die in the middle of the load"
    workload, receipt = await publishing
    second = workers.start()
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 180)
    await assert_invariants(settings, workload)
    assert second.proc.poll() is None, second.tail()


async def test_dedup_state_survives_a_restart_through_its_changelog(
    settings: Settings, workers: Workers
) -> None:
    """The Faust dedup table is recovered from its changelog by the next worker."""
    first = workers.start()
    events = [
        {"event_name": "view", "channel": "web", "user_id": f"u{i}", "timestamp": 1_700_000_000 + i}
        for i in range(2_000)
    ]
    dsn = settings.database_url or ""
    async with Publisher(settings) as pub:
        receipt = await pub.publish_events(events)
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 120)
    assert first.terminate() == 0
    second = workers.start()
    async with Publisher(settings) as pub:
        receipt.merge(await pub.publish_events(events))  # every one a duplicate
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 120)

    async def filtered() -> float:
        text = (await http_get(second.web_port, "/metrics"))[1].decode()
        return metric_value(text, "pipeline_duplicates_filtered_total")

    assert await wait_for(filtered, 30, "the duplicates counter") == 2_000
    report = await reconcile(dsn)
    assert report.product_events == 2_000
    assert report.consistent
    log = second.log.read_text()
    assert "dedup state recovered" in log
    assert "Missing sensor state" not in log  # no sensor is left; no warning per rebalance
