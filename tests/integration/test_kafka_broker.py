"""A real Apache Kafka 4.x (KRaft) broker from Maven's jars, driven with aiokafka.

One single-node test (topics, produce/consume, aborted and committed transactions seen
through ``read_committed``, a clean stop and a restart on the same data folder) and one
three-node test (replication 3, ``min.insync.replicas=2``, the leader killed and
restarted). Without Java 17+ or Maven the tests fail in CI and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from pipeline.kafka_broker import (
    KAFKA_VERSION,
    POM,
    KafkaBroker,
    restart_cluster_node,
    start_kafka,
    start_kafka_cluster,
    stop_kafka_cluster,
)
from tests.conftest import require_kafka

DEADLINE = 60.0
MVN = "{http://maven.apache.org/POM/4.0.0}"


def test_pom_pins_kafka_version() -> None:
    root = ET.parse(POM).getroot()
    assert root.findtext(f"{MVN}properties/{MVN}kafka.version") == KAFKA_VERSION
    deps = {
        d.findtext(f"{MVN}artifactId"): d.findtext(f"{MVN}version")
        for d in root.iter(f"{MVN}dependency")
    }
    assert deps["kafka_2.13"] == "${kafka.version}"


def _require_kafka() -> Path:
    """The jars; called first thing in each test body, so that in CI the test itself FAILS."""
    return require_kafka()


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    return admin


async def _consume_all(
    consumer: AIOKafkaConsumer, tp: TopicPartition, upto: int
) -> list[tuple[int, bytes]]:
    """Records (offset, value) until the consumer's position reaches ``upto``."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + DEADLINE
    while await consumer.position(tp) < upto:
        assert time.monotonic() < deadline, f"position stuck at {await consumer.position(tp)}"
        batch = await consumer.getmany(tp, timeout_ms=1000)
        for record in batch.get(tp, []):
            assert record.value is not None
            got.append((record.offset, record.value))
    return got


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.fixture
async def broker_dir() -> AsyncIterator[list[KafkaBroker]]:
    """Started brokers are appended here and killed at the end, pass or fail."""
    started: list[KafkaBroker] = []
    yield started
    for broker in started:
        broker.kill()


async def _start(started: list[KafkaBroker], data: Path, log: Path) -> KafkaBroker:
    t0 = time.monotonic()
    broker = await asyncio.to_thread(start_kafka, data, log)
    print(f"broker up in {time.monotonic() - t0:.1f} s at {broker.bootstrap}")
    started.append(broker)
    return broker


@pytest.mark.integration
async def test_single_broker_transactions_and_restart(
    broker_dir: list[KafkaBroker], tmp_path: Path
) -> None:
    _require_kafka()
    data, log = tmp_path / "kafka", tmp_path / "kafka.log"
    broker = await _start(broker_dir, data, log)
    plain, txn = TopicPartition("plain", 0), TopicPartition("txn", 0)

    admin = await _admin(broker.bootstrap)
    try:
        await admin.create_topics(
            [NewTopic("plain", 1, 1), NewTopic("txn", 1, 1)], timeout_ms=15000
        )
        assert {"plain", "txn"} <= set(await admin.list_topics())
    finally:
        await admin.close()

    # plain produce and consume, with a committed group offset
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait("plain", f"p{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="g1", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([plain])
        consumer.seek(plain, 0)
        assert await consumer.end_offsets([plain]) == {plain: 5}
        got = await _consume_all(consumer, plain, 5)
        assert got == [(i, f"p{i}".encode()) for i in range(5)]
        await consumer.commit({plain: 5})
        assert await consumer.committed(plain) == 5
    finally:
        await consumer.stop()

    # an aborted and a committed transaction
    tx = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="tx-1")
    await tx.start()
    try:
        await tx.begin_transaction()
        for v in (b"a1", b"a2", b"a3"):
            await tx.send("txn", v)
        await tx.abort_transaction()
        async with tx.transaction():
            for v in (b"c1", b"c2"):
                await tx.send("txn", v)
    finally:
        await tx.stop()

    committed_reader = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, isolation_level="read_committed"
    )
    uncommitted_reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await committed_reader.start()
    await uncommitted_reader.start()
    try:
        for reader in (committed_reader, uncommitted_reader):
            reader.assign([txn])
            reader.seek(txn, 0)
        # a1 a2 a3 at 0-2, ABORT marker at 3, c1 c2 at 4-5, COMMIT marker at 6
        end = await committed_reader.end_offsets([txn])
        assert end == {txn: 7}, end
        assert await _consume_all(committed_reader, txn, 7) == [(4, b"c1"), (5, b"c2")]
        everything = await _consume_all(uncommitted_reader, txn, 7)
        assert everything == [(0, b"a1"), (1, b"a2"), (2, b"a3"), (4, b"c1"), (5, b"c2")]
    finally:
        await committed_reader.stop()
        await uncommitted_reader.stop()

    # a clean stop, then a restart on the same data folder
    t0 = time.monotonic()
    await asyncio.to_thread(broker.stop)
    print(f"broker stopped in {time.monotonic() - t0:.1f} s, exit code {broker.exit_code}")
    assert not broker.alive() and _gone(broker.pid)
    assert broker.exit_code == 143, broker.exit_code  # 128 + SIGTERM: a controlled shutdown
    assert "shut down completed" in log.read_text()

    again = await _start(broker_dir, data, log)
    admin = await _admin(again.bootstrap)
    try:
        assert {"plain", "txn"} <= set(await admin.list_topics())
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=again.bootstrap, group_id="g1", enable_auto_commit=False
    )
    await consumer.start()
    try:
        assert await consumer.committed(plain) == 5
        assert await consumer.end_offsets([plain, txn]) == {plain: 5, txn: 7}
        consumer.assign([plain])
        consumer.seek(plain, 0)
        assert len(await _consume_all(consumer, plain, 5)) == 5
    finally:
        await consumer.stop()
    await asyncio.to_thread(again.stop)
    assert _gone(again.pid)


async def _partition(admin: AIOKafkaAdminClient, topic: str) -> dict[str, Any]:
    described = await admin.describe_topics([topic])
    partitions: list[dict[str, Any]] = described[0]["partitions"]
    return partitions[0] if partitions else {}  # empty until the metadata has spread


async def _wait_isr(bootstrap: str, topic: str, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        admin = await _admin(bootstrap)
        try:
            last = await _partition(admin, topic)
        except KafkaError:
            last = {}
        finally:
            await admin.close()
        if last and last["leader"] >= 0 and len(last["isr"]) == size:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"ISR of {topic} did not reach {size}: {last}")


@pytest.mark.integration
async def test_cluster_survives_leader_kill(tmp_path: Path) -> None:
    _require_kafka()
    t0 = time.monotonic()
    cluster = await asyncio.to_thread(start_kafka_cluster, tmp_path / "cluster", 3)
    print(f"3-node cluster up in {time.monotonic() - t0:.1f} s")
    try:
        await _leader_kill_and_restart(cluster)
    finally:
        t0 = time.monotonic()
        await asyncio.to_thread(stop_kafka_cluster, cluster)
        print(f"3-node cluster stopped in {time.monotonic() - t0:.1f} s")
    assert all(_gone(n.pid) for n in cluster)
    assert [n.exit_code for n in cluster] == [143, 143, 143]


async def _leader_kill_and_restart(cluster: list[KafkaBroker]) -> None:
    """Replication 3, min ISR 2, acks=all: the leader dies, writes go on, it comes back."""
    topic, tp = "replicated", TopicPartition("replicated", 0)
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = await _admin(bootstrap)
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})],
            timeout_ms=15000,
        )
    finally:
        await admin.close()
    part = await _wait_isr(bootstrap, topic, 3)
    assert sorted(part["replicas"]) == [1, 2, 3]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=30000)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode())
        leader = part["leader"]
        node = next(n for n in cluster if n.node_id == leader)
        node.kill()
        t0 = time.monotonic()
        for i in range(10, 20):
            await producer.send_and_wait(topic, f"m{i}".encode())
            if i == 10:
                print(f"first acks=all send after the leader kill: {time.monotonic() - t0:.1f} s")
        survivors = ",".join(n.bootstrap for n in cluster if n.node_id != leader)
        after = await _wait_isr(survivors, topic, 2)
        assert after["leader"] != leader and leader not in after["isr"]

        t0 = time.monotonic()
        await asyncio.to_thread(restart_cluster_node, cluster, leader)
        print(f"node {leader} restarted in {time.monotonic() - t0:.1f} s")
        await _wait_isr(bootstrap, topic, 3)
        await producer.send_and_wait(topic, b"m20")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        assert await consumer.end_offsets([tp]) == {tp: 21}
        got = await _consume_all(consumer, tp, 21)
        assert [v for _, v in got] == [f"m{i}".encode() for i in range(21)]
    finally:
        await consumer.stop()
