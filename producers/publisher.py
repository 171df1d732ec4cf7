"""Async publisher library: batched, acks=all, keyed by dedup key, envelopes per partition.

Every event's Kafka key is its dedup key, so all copies of an event land on one
partition (DESIGN.md). With ``envelope_size > 1`` the events bound for one
partition are grouped into JSON-array messages (batch envelopes) whose key is
their first event's key: every event in an envelope hashes to the envelope's
partition. Records go out with ``send_batch`` per partition, not one ``send()``
per event. A publish returns only after the broker acknowledged every record.

    async with Publisher(settings) as pub:
        receipt = await pub.publish_events(events, envelope_size=100)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
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
        by_partition: dict[int, list[tuple[bytes, Mapping[str, Any]]]] = {}
        for event in events:
            key = (event_key(event) or "").encode()
            by_partition.setdefault(partition_for(key, self._partitions), []).append((key, event))
        records: list[tuple[int, bytes, bytes]] = []
        for partition, items in by_partition.items():
            if envelope_size <= 1:
                records.extend((partition, k, orjson.dumps(e)) for k, e in items)
                continue
            for start in range(0, len(items), envelope_size):
                chunk = items[start : start + envelope_size]
                records.append((partition, chunk[0][0], orjson.dumps([e for _, e in chunk])))
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
        batches: dict[int, Any] = {}
        counts: dict[int, int] = {}
        pending: list[tuple[int, int, asyncio.Future[Any]]] = []

        async def flush(partition: int) -> None:
            batch = batches.pop(partition)
            fut = await producer.send_batch(batch, self.topic, partition=partition)
            pending.append((partition, counts.pop(partition), fut))

        try:
            for partition, key, value in records:
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                    counts[partition] = 0
                if batch.append(key=key or None, value=value, timestamp=None) is None:
                    await flush(partition)
                    batch = batches[partition] = producer.create_batch()
                    counts[partition] = 0
                    if batch.append(key=key or None, value=value, timestamp=None) is None:
                        raise PublishError(
                            f"a message of {len(value)} bytes exceeds the batch limit"
                        )
                counts[partition] += 1
            for partition in list(batches):
                await flush(partition)
            metas = await asyncio.gather(*(f for _, _, f in pending))
        except KafkaError as exc:
            raise PublishError(f"the broker did not acknowledge the publish: {exc!r}") from exc
        receipt = Receipt()
        for (partition, count, _), meta in zip(pending, metas, strict=True):
            receipt.messages += count
            end = meta.offset + count
            receipt.end_offsets[partition] = max(receipt.end_offsets.get(partition, 0), end)
        return receipt
