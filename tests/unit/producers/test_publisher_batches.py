"""The publisher's synchronous halves: records from events, batches from records."""

from __future__ import annotations

import gc
from typing import Any

import orjson
import pytest

from pipeline.errors import PublishError
from producers.keyhash import partition_for
from producers.keys import event_key
from producers.publisher import READY_BATCHES, _encode, _fill_batches


def events(n: int) -> list[dict[str, Any]]:
    return [
        {"event_name": "view", "channel": "web", "user_id": f"u{i}", "timestamp": 1_700_000_000 + i}
        for i in range(n)
    ]


@pytest.mark.parametrize("envelope", [1, 7])
def test_encode_keys_each_event_and_keeps_partition_order(envelope: int) -> None:
    evs = events(100)
    records = _encode(evs, envelope, 6)
    decoded: list[tuple[int, dict[str, Any]]] = []
    for partition, key, value in records:
        doc = orjson.loads(value)
        items = doc if isinstance(doc, list) else [doc]
        assert len(items) <= envelope
        # the message key is the first event's key; every event belongs to that partition
        assert key == (event_key(items[0]) or "").encode()
        for item in items:
            assert partition_for((event_key(item) or "").encode(), 6) == partition
            decoded.append((partition, item))
    assert sorted(e["user_id"] for _, e in decoded) == sorted(e["user_id"] for e in evs)
    for p in range(6):
        mine = [e["timestamp"] for q, e in decoded if q == p]
        assert mine == sorted(mine)  # publish order within a partition


def test_encode_restores_the_gc_state() -> None:
    assert gc.isenabled()
    _encode(events(10), 1, 3)
    assert gc.isenabled()
    gc.disable()
    try:
        _encode(events(10), 1, 3)
        assert not gc.isenabled()
    finally:
        gc.enable()


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: list[bytes] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: None) -> object | None:
        if len(value) > 100 or len(self.values) >= self.capacity:
            return None
        self.values.append(value)
        return object()


class FakeProducer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)


def test_fill_batches_returns_full_batches_in_order_then_the_rest() -> None:
    records = iter([(i % 2, b"k", f"v{i}".encode()) for i in range(50)])
    filling: dict[int, Any] = {}
    sent: list[tuple[int, list[bytes], int]] = []
    rounds = 0
    while True:
        ready, exhausted = _fill_batches(FakeProducer(2), records, filling)  # type: ignore[arg-type]
        rounds += 1
        assert len(ready) <= READY_BATCHES or exhausted
        sent.extend((p, b.values, n) for p, b, n in ready)
        if exhausted:
            break
    assert rounds > 1
    assert all(len(values) == n for _, values, n in sent)
    for p in (0, 1):
        got = [v for q, values, _ in sent if q == p for v in values]
        assert got == [f"v{i}".encode() for i in range(p, 50, 2)]


def test_a_record_larger_than_a_batch_is_refused() -> None:
    records = iter([(0, b"k", b"x" * 101)])
    with pytest.raises(PublishError, match="exceeds the batch limit"):
        _fill_batches(FakeProducer(2), records, {})  # type: ignore[arg-type]
    assert gc.isenabled()
