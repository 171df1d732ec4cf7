"""A real Apache Kafka 4.x (KRaft) broker from Maven's jars, driven with aiokafka.

One single-node test (topics, produce/consume, aborted and committed transactions seen
through ``read_committed``, a clean stop and a restart on the same data folder). The
three-node cluster is exercised under the pipeline in ``test_kafka_scenarios.py`` (the
leader killed mid-load, its leadership moved, the node restarted into the ISR).
Without Java 17+ or Maven the tests fail in CI and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.ops.kafka_broker import KafkaBroker, start_kafka
from pipeline.ops.kafka_jars import KAFKA_VERSION, POM
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
