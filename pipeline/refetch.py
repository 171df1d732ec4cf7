"""Read specific offsets of a partition straight from Kafka, outside the consumer group.

When a batch skips offsets that are not yet durable (Faust has been seen to
hand out messages past such a hole around rebalances), the worker reads the
missing offsets itself with this small group-less consumer and writes them with
the batch. That closes the hole without seeking Faust's consumer, whose read
position cannot be moved back reliably while messages are in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.batch import RawMessage
from pipeline.settings import Settings

__all__ = ["Refetcher"]

log = logging.getLogger(__name__)


class Refetcher:
    def __init__(self, settings: Settings, timeout_s: float = 15.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def fetch(self, topic: str, partition: int, offsets: Sequence[int]) -> list[RawMessage]:
        """The messages at ``offsets`` that the broker still holds, in offset order."""
        if not offsets:
            return []
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, min(offsets))
            want, last = set(offsets), max(offsets)
            got: dict[int, RawMessage] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            position = min(offsets)
            while position <= last and loop.time() < deadline:
                records = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
                for m in records:
                    position = m.offset + 1
                    if m.offset in want:
                        got[m.offset] = RawMessage(topic, partition, m.offset, m.value)
                highwater = consumer.highwater(tp)
                if not records and highwater is not None and highwater <= position:
                    break  # nothing more to read
            if len(got) < len(want):
                log.error(
                    "offsets not available from the broker",
                    extra={"partition": partition, "missing": len(want) - len(got)},
                )
            return [got[o] for o in sorted(got)]

    async def _ensure(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self._settings.kafka_security.aiokafka_kwargs(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
