"""producers.keyhash and envelope_records: Kafka's partitioner, bounded envelopes."""

from __future__ import annotations

import os
import random

import orjson
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from producers.gateway.ingest import Prepared
from producers.gateway.publish import envelope_records
from producers.keyhash import murmur2, partition_for, py_murmur2


def test_murmur2_matches_aiokafka_on_every_length() -> None:
    rnd = random.Random(5)
    for _ in range(3000):
        data = os.urandom(rnd.randrange(0, 70))
        assert murmur2(data) == py_murmur2(data) == aiokafka_murmur2(data)
    for key in (b"", b"a", b"ab", b"abc", b"h:0123456789abcdef"):
        assert partition_for(key, 6) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 6


def _events(n: int, size: int = 0) -> list[Prepared]:
    return [
        Prepared(f"key-{i}", orjson.dumps({"event_id": f"key-{i}", "pad": "x" * size}))
        for i in range(n)
    ]


def test_envelopes_group_by_partition_and_respect_both_limits() -> None:
    events = _events(500, size=100)
    records = envelope_records(events, partitions=6, max_events=40, max_bytes=2000)
    seen: list[str] = []
    for partition, key, value in records:
        assert len(value) <= 2000
        doc = orjson.loads(value)
        items = doc if isinstance(doc, list) else [doc]
        assert len(items) <= 40
        assert key == items[0]["event_id"].encode()
        for item in items:
            assert partition_for(item["event_id"].encode(), 6) == partition
        seen.extend(item["event_id"] for item in items)
    assert sorted(seen) == sorted(e.key for e in events)


def test_a_lone_event_travels_as_itself() -> None:
    [(_, _, value)] = envelope_records(_events(1), partitions=1, max_events=100, max_bytes=10**6)
    assert orjson.loads(value)["event_id"] == "key-0"
    big = _events(3, size=5000)
    records = envelope_records(big, partitions=1, max_events=100, max_bytes=6000)
    assert [orjson.loads(v)["event_id"] for _, _, v in records] == ["key-0", "key-1", "key-2"]
