"""Async publisher library: batched, acks=all, keyed by dedup key, envelopes per partition.

Every event's Kafka key is its dedup key, so all copies of an event land on one
partition (docs/design.md). With ``envelope_size > 1`` the events bound for one
partition are grouped into JSON-array messages (batch envelopes) whose key is
their first event's key: every event in an envelope hashes to the envelope's
partition. Records go out with ``send_batch`` per partition, not one ``send()``
per event. A publish returns only after the broker acknowledged every record.

    async with Publisher(settings) as pub:
        receipt = await pub.publish_events(events, envelope_size=100)
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.errors import PublishError
from pipeline.settings import Settings
from producers.keyhash import partition_for
from producers.keys import event_key

__all__ = ["Publisher", "Receipt", "partition_for"]

MAX_BATCH_BYTES = 1_000_000


@dataclass
class Receipt:
    """What the broker acknowledged: counts and, per partition, the end offset."""

    messages: int = 0
    events: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Receipt) -> None:
        self.messages += other.messages
        self.events += other.events
        for p, end in other.end_offsets.items():
            self.end_offsets[p] = max(self.end_offsets.get(p, 0), end)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off for a block with no await in it, then as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _encode(
    events: Sequence[Mapping[str, Any]], envelope_size: int, partitions: int
) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` records: events keyed by dedup key, singly or in envelopes.

    Runs with the cyclic GC paused (it holds no await): a caller's load of
    10^5 event dicts made each collection walk them all, which cost about 3 µs
    per event here; what this creates is freed by reference counting.
    """
    with _gc_paused():
        keys = [(event_key(event) or "").encode() for event in events]
        by_partition: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_partition.setdefault(partition_for(key, partitions), []).append(i)
        records: list[tuple[int, bytes, bytes]] = []
        for partition, index in by_partition.items():
            if envelope_size <= 1:
                records.extend((partition, keys[i], orjson.dumps(events[i])) for i in index)
                continue
            for start in range(0, len(index), envelope_size):
                chunk = index[start : start + envelope_size]
                value = orjson.dumps([events[i] for i in chunk])
                records.append((partition, keys[chunk[0]], value))
        return records


_Filling = tuple[Any, int]  # an aiokafka batch being filled, and how many records it holds
READY_BATCHES = 8  # full batches sent at a time: bounds what one call holds in memory


def _fill_batches(
    producer: AIOKafkaProducer,
    records: Iterator[tuple[int, bytes, bytes]],
    filling: dict[int, _Filling],
) -> tuple[list[tuple[int, Any, int]], bool]:
    """Append records to per-partition batches until READY_BATCHES are full.

    Returns the full ``(partition, batch, count)`` batches and whether the
    records ran out (then every open batch is returned too). No await inside,
    so the cyclic GC is paused, as in :func:`_encode`.
    """
    ready: list[tuple[int, Any, int]] = []
    with _gc_paused():
        for partition, key, value in records:
            batch, count = filling.get(partition) or (producer.create_batch(), 0)
            if batch.append(key=key or None, value=value, timestamp=None) is None:
                ready.append((partition, batch, count))
                batch, count = producer.create_batch(), 0
                if batch.append(key=key or None, value=value, timestamp=None) is None:
                    raise PublishError(f"a message of {len(value)} bytes exceeds the batch limit")
            filling[partition] = (batch, count + 1)
            if len(ready) >= READY_BATCHES:
                return ready, False
        ready.extend((partition, batch, count) for partition, (batch, count) in filling.items())
        filling.clear()
        return ready, True


class Publisher:
    def __init__(self, settings: Settings, topic: str | None = None, linger_ms: int = 5) -> None:
        self._settings = settings
        self.topic = topic or settings.events_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=settings.max_message_bytes * 2 + 65_536,
            request_timeout_ms=30_000,
            **settings.kafka_security.aiokafka_kwargs(),
        )
        self._partitions = 0

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._producer.start()
            parts = await self._producer.partitions_for(self.topic)
        except (KafkaError, OSError) as exc:
            await self._producer.stop()  # else aiokafka warns "Unclosed AIOKafkaProducer"
            raise PublishError(
                f"cannot reach Kafka at {self._settings.kafka_bootstrap_servers}: {exc}. "
                "Check KAFKA_BOOTSTRAP_SERVERS (or run `python -m pipeline stack up`)."
            ) from None
        self._partitions = len(parts)

    async def stop(self) -> None:
        await self._producer.stop()

    @property
    def partitions(self) -> int:
        return self._partitions

    async def publish_events(
        self, events: Sequence[Mapping[str, Any]], envelope_size: int = 1
    ) -> Receipt:
        """Publish events keyed by dedup key, singly or grouped in envelopes."""
        records = _encode(events, envelope_size, self._partitions)
        receipt = await self.publish_records(records)
        receipt.events = len(events)
        return receipt

    async def publish_raw(self, values: Iterable[tuple[bytes | None, bytes]]) -> Receipt:
        """Publish arbitrary ``(key, value)`` bytes, partitioned like Kafka would."""
        n = self._partitions
        records = [
            (partition_for(k, n) if k else i % n, k or b"", v) for i, (k, v) in enumerate(values)
        ]
        return await self.publish_records(records)

    async def publish_records(self, records: Iterable[tuple[int, bytes, bytes]]) -> Receipt:
        """Send ``(partition, key, value)`` records in per-partition batches; wait for acks."""
        producer = self._producer
        records = iter(records)
        filling: dict[int, _Filling] = {}
        pending: list[tuple[int, int, asyncio.Future[Any]]] = []
        try:
            while True:
                ready, exhausted = _fill_batches(producer, records, filling)
                for partition, batch, count in ready:
                    fut = await producer.send_batch(batch, self.topic, partition=partition)
                    pending.append((partition, count, fut))
                if exhausted:
                    break
            metas = await asyncio.gather(*(f for _, _, f in pending))
        except KafkaError as exc:
            raise PublishError(f"the broker did not acknowledge the publish: {exc!r}") from exc
        receipt = Receipt()
        for (partition, count, _), meta in zip(pending, metas, strict=True):
            receipt.messages += count
            end = meta.offset + count
            receipt.end_offsets[partition] = max(receipt.end_offsets.get(partition, 0), end)
        return receipt
