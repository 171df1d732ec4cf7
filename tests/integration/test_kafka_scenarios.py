"""Scenarios only a real Apache Kafka allows, through the whole pipeline, checked exactly.

* An upstream transactional producer commits some transactions and aborts
  others, interleaved with plain producers: only committed events are stored,
  and no partition stalls on the offsets that control markers and aborted
  records take (the worker reads ``read_committed``; the fetch position proves
  those offsets absent).
* A three-node KRaft cluster (replication 3, ``min.insync.replicas`` 2,
  ``acks=all``): the leader of a busy partition is SIGKILLed mid-load (its
  leadership moves, it leaves the ISR) and restarted (it rejoins the ISR);
  nothing acknowledged is lost, nothing double-counted; every node exits
  cleanly at the end.
* ``stack down`` / ``stack up`` on Apache Kafka: the log and the group's
  offsets are kept, and the restarted worker resumes at its durable offsets
  (no replay beyond the last batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from pipeline.ops.kafka_broker import (
    KafkaBroker,
    cluster_bootstrap,
    restart_cluster_node,
    start_kafka_cluster,
    stop_kafka_cluster,
)
from pipeline.ops.runner import start_worker
from pipeline.ops.stack import stack_down, stack_up
from pipeline.settings import Settings
from pipeline.sink.reconcile import reconcile, wait_until_processed
from pipeline.sink.writer import load_progress
from pipeline.topics import required_topics
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher
from tests.chaos.chaoslib import PublishLog, publish_workload_chunks, read_topic
from tests.conftest import Workers, require_kafka
from tests.integration.test_end_to_end import assert_invariants

pytestmark = pytest.mark.integration

PARTITIONS = 6


def _event(i: int, tag: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{tag}-{i}",
            "event_name": "purchase",
            "channel": "web",
            "user_id": f"u{i % 50}",
            "timestamp": "2026-12-01T10:00:00Z",
        }
    )


ON_KAFKA = pytest.mark.parametrize("broker_kind", ["kafka"], indirect=True)


@ON_KAFKA
async def test_aborted_transactions_are_never_stored_and_never_stall(
    settings: Settings, workers: Workers
) -> None:
    s = settings
    kafka_broker = s.kafka_bootstrap_servers
    workers.start()

    rng = random.Random(17)
    committed: set[str] = set()
    txn = AIOKafkaProducer(bootstrap_servers=kafka_broker, transactional_id=f"txn-{uuid.uuid4()}")
    plain = AIOKafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    await txn.start()
    await plain.start()
    try:
        i = 0
        for round_no in range(40):
            commit = rng.random() < 0.6
            async with txn.transaction() if commit else _aborting(txn):
                for _ in range(rng.randint(1, 12)):
                    key = f"t{i}".encode()
                    await txn.send(s.events_topic, _event(i, "t"), key=key)
                    if commit:
                        committed.add(f"t-{i}")
                    i += 1
            # Plain producers write between the transactions, on the same partitions.
            for _ in range(rng.randint(0, 5)):
                key = f"p{i}".encode()
                await plain.send_and_wait(s.events_topic, _event(i, "p"), key=key)
                committed.add(f"p-{i}")
                i += 1
            if round_no == 20:
                await asyncio.sleep(0.5)  # let a batch commit between transactions
        # Let the worker catch up, then end every partition's log in an aborted
        # transaction: no record after it, so only the tail probe can prove
        # those offsets absent (a worker without one stalls here every time).
        await asyncio.sleep(3.0)
        async with _aborting(txn):
            for p in range(s.events_partitions):
                await txn.send(s.events_topic, _event(i, "t"), key=b"tail", partition=p)
                i += 1
    finally:
        await txn.stop()
        await plain.stop()

    # Every partition's durable offset must reach its log end: a stall on a
    # control marker or an aborted record would never get there.
    consumer_ends = await _log_ends(s)
    await wait_until_processed(s.require_database_url(), s.events_topic, consumer_ends, 90)
    conn = await asyncpg.connect(s.require_database_url())
    try:
        rows = await conn.fetch("SELECT dedup_key FROM raw_events")
        stored = {r["dedup_key"] for r in rows}
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
    finally:
        await conn.close()
    assert stored == committed
    assert dead == 0
    report = await reconcile(s.require_database_url())
    assert report.channel_mismatches == []


class _aborting:
    """``async with``: a transaction that is begun and then aborted."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def __aenter__(self) -> None:
        await self._producer.begin_transaction()

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.abort_transaction()


async def _log_ends(s: Settings) -> dict[int, int]:
    from pipeline.worker.brokerlog import BrokerLog

    broker_log = BrokerLog(s)
    try:
        logs = await broker_log.ranges(s.events_topic, range(s.events_partitions))
    finally:
        await broker_log.close()
    return {p: r.end for p, r in logs.items()}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[KafkaBroker]]:
    require_kafka()
    nodes = await asyncio.to_thread(start_kafka_cluster, tmp_path / "cluster", 3)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(stop_kafka_cluster, nodes)
    assert not any(n.alive() for n in nodes), "a cluster node outlived its stop"
    assert [n.exit_code for n in nodes] == [143, 143, 143]  # clean SIGTERM exits


async def _wait_partition(
    admin: AIOKafkaAdminClient,
    topic: str,
    partition: int,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll the topic's metadata until ``partition`` satisfies ``done`` (leader, ISR)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(KafkaError):
            described = await admin.describe_topics([topic])
            found = [p for p in described[0]["partitions"] if p["partition"] == partition]
            last = found[0] if found else {}
            if last and done(last):
                return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"partition {partition} of {topic} never got there: {last}")


@ON_KAFKA
async def test_leader_killed_mid_load_loses_nothing_acknowledged(
    cluster: list[KafkaBroker], settings: Settings, workers: Workers
) -> None:
    bootstrap = cluster_bootstrap(cluster)
    s = replace(
        settings,
        kafka_bootstrap_servers=bootstrap,
        broker_profile="kafka",
        topic_replication=3,
        events_topic=f"events-{uuid.uuid4().hex[:8]}",
    )
    s = replace(s, dlq_topic=f"{s.events_topic}.dlq")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, n, 3, topic_configs={"min.insync.replicas": "2"})
                for t, n in required_topics(s).items()
            ]
        )
        workers.settings = s
        for _ in range(2):
            workers.start()
        workload = build_workload(LoadOptions(count=12_000, seed=33, hours=2), PARTITIONS)
        log = PublishLog()
        publishing = asyncio.create_task(
            publish_workload_chunks(s, workload, rate=3_000, retry_for=60.0, log=log)
        )
        await asyncio.sleep(2.0)
        busy = 0  # every partition takes load; partition 0's leader goes
        described = await admin.describe_topics([s.events_topic])
        leader = next(p["leader"] for p in described[0]["partitions"] if p["partition"] == busy)
        victim = next(n for n in cluster if n.node_id == leader)
        await asyncio.to_thread(victim.kill)
        assert not victim.alive(), "the killed leader still runs"
        moved = await _wait_partition(
            admin, s.events_topic, busy, lambda p: p["leader"] not in (-1, leader)
        )
        assert leader not in moved["isr"], moved
        await asyncio.sleep(2.0)
        await asyncio.to_thread(restart_cluster_node, cluster, leader)
        await _wait_partition(admin, s.events_topic, busy, lambda p: len(p["isr"]) == 3)
        await publishing
    finally:
        await admin.close()
    final = log.receipt.end_offsets
    await wait_until_processed(s.require_database_url(), s.events_topic, final, 120)
    # A chunk the broker did not acknowledge in time is published again, so the
    # log may hold a bad message twice: each copy is a message of its own and
    # must be dead-lettered once. Count the copies the log really holds.
    values = Counter(await read_topic(bootstrap, s.events_topic, final))
    planned = Counter(
        v for b in workload.batches for m in b if (v := m.value) in workload.invalid_values
    )
    short = [v[:40] for v, n in planned.items() if values[v] < n]
    assert not short, f"acknowledged bad messages missing from the log: {short[:5]}"
    workload.invalid = Counter()
    for value, reason in workload.invalid_values.items():
        workload.invalid[reason] += values[value]
    await assert_invariants(s, workload)


async def test_stack_down_up_on_kafka_resumes_at_the_durable_offsets(tmp_path: Path) -> None:
    require_kafka()
    state = tmp_path / "stack"
    try:
        first = await stack_up(Settings(), state, broker="kafka")
        s = Settings(
            kafka_bootstrap_servers=first.bootstrap_servers,
            database_url=first.database_url,
            broker_profile="kafka",
            session_timeout_seconds=10.0,
            data_dir=str(tmp_path / "worker"),
            batch_seconds=0.2,
            log_level="INFO",
        )
        before = await _publish(s, seed=41)
        worker = start_worker(s, tmp_path / "worker-1.log")
        await wait_until_processed(s.require_database_url(), s.events_topic, before[1], 90)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        durable = await _durable(s)
        stack_down(state)

        second = await stack_up(Settings(), state, broker="kafka")
        assert second.notices == ()  # the log is kept: no offsets to forget
        s = replace(
            s,
            kafka_bootstrap_servers=second.bootstrap_servers,
            database_url=second.database_url,
        )
        assert await _durable(s) == durable
        log2 = tmp_path / "worker-2.log"
        worker = start_worker(s, log2)
        after = await _publish(s, seed=42)
        await wait_until_processed(s.require_database_url(), s.events_topic, after[1], 90)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        seeks = [  # the worker says where each partition resumes when it joins
            orjson.loads(line)
            for line in log2.read_text().splitlines()
            if '"msg":"joined consumer group"' in line
        ]
        assert seeks, log2.read_text()[-2000:]
        first_seek = {int(p): o for p, o in seeks[0]["partitions"].items()}
        assert first_seek == durable  # resumed where it was: nothing replayed
        report = await reconcile(s.require_database_url())
        expected = before[0], after[0]
        assert report.product_events == sum(e["product_events"] for e in expected)
        assert report.agent_events == sum(e["agent_events"] for e in expected)
        assert report.channel_mismatches == [] and report.agent_mismatches == []
    finally:
        stack_down(state)


async def _publish(s: Settings, seed: int) -> tuple[dict[str, Any], dict[int, int]]:
    async with Publisher(s) as pub:
        workload = build_workload(LoadOptions(count=3000, seed=seed, hours=1), pub.partitions)
        receipt = await publish_workload(pub, workload, progress=False)
    return workload.expected(), dict(receipt.end_offsets)


async def _durable(s: Settings) -> dict[int, int]:
    conn = await asyncpg.connect(s.require_database_url())
    try:
        return {p: v[0] for p, v in (await load_progress(conn, s.events_topic)).items()}
    finally:
        await conn.close()
