"""The broker's log, read outside the consumer group: its range, and stretches of it.

Two questions the worker asks the broker itself, with a small group-less
consumer (``read_committed``, like the worker's):

* :meth:`BrokerLog.ranges`: each partition's log ``[start, end)``, checked on
  every assignment against the durable offsets (``offsets.out_of_range``).
  The end is the high watermark of a real fetch response, never ListOffsets
  (Tansu answers ListOffsets "latest" short when a batch holds several records).
* :meth:`BrokerLog.read`: the records of a stretch a batch skipped (a hole),
  and how far the read proved the stretch: the fetch position moves over
  control markers and aborted records, which no read_committed consumer sees,
  so every offset below it that returned no record is absent. That closes the
  hole without seeking Faust's consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import OffsetOutOfRangeError

from pipeline.core.offsets import LogRange
from pipeline.core.planner import RawMessage
from pipeline.settings import Settings

__all__ = ["BrokerLog"]

log = logging.getLogger(__name__)


class BrokerLog:
    def __init__(self, settings: Settings, timeout_s: float = 15.0) -> None:
        self._settings = settings
        self._timeout = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def read(
        self, topic: str, partition: int, start: int, end: int
    ) -> tuple[list[RawMessage], int]:
        """Records in ``[start, end)`` and the offset up to which the read proved it.

        Every offset in ``[start, reached)`` is among the records returned or
        absent from the log (below its start, a control marker, an aborted or
        compacted record).
        """
        if end <= start:
            return [], start
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            log_start = (await consumer.beginning_offsets([tp]))[tp]
            position = max(start, log_start)
            consumer.seek(tp, position)
            got: list[RawMessage] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            while position < end and loop.time() < deadline:
                try:
                    records = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
                except OffsetOutOfRangeError:
                    break  # the log does not reach ``position``: nothing more is proven
                got.extend(
                    RawMessage(topic, partition, m.offset, m.value)
                    for m in records
                    if start <= m.offset < end
                )
                position = max(position, await consumer.position(tp))
            reached = min(position, end)
            if reached < end:
                log.error(
                    "offsets not available from the broker",
                    extra={"partition": partition, "from": reached, "to": end},
                )
            return got, reached

    async def ranges(
        self, topic: str, partitions: Iterable[int], near: Mapping[int, int] | None = None
    ) -> dict[int, LogRange]:
        """Each partition's log ``[start, end)``; ``near`` says where to fetch (durable offsets)."""
        near = near or {}
        async with self._lock:
            consumer = await self._ensure()
            tps = [TopicPartition(topic, p) for p in partitions]
            if not tps:
                return {}
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                # One record before the durable offset: a short fetch; out of the
                # log, aiokafka's reset fetches from the start, which also tells.
                consumer.seek(tp, max(starts[tp], near.get(tp.partition, 0) - 1))
            ends = await self._highwaters(consumer, tps)
            return {tp.partition: LogRange(starts[tp], ends[tp]) for tp in tps}

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (0: the broker does not know it)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            **self._settings.kafka_security.aiokafka_kwargs(),
        )
        await admin.start()
        try:
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return (
            len(described[0]["partitions"]) if described and not described[0]["error_code"] else 0
        )

    async def _highwaters(
        self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        ends: dict[TopicPartition, int] = {}
        while len(ends) < len(tps):
            if loop.time() > deadline:
                missing = sorted(tp.partition for tp in tps if tp not in ends)
                raise TimeoutError(f"no fetch answer for partitions {missing} of the broker's log")
            try:
                await consumer.getmany(*tps, timeout_ms=300, max_records=1)
            except OffsetOutOfRangeError:
                # Past the log's end (a log that came back shorter): the end is
                # the high watermark of a fetch from the start.
                await consumer.seek_to_beginning(*(tp for tp in tps if tp not in ends))
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    ends[tp] = hw
        return ends

    async def _ensure(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",
                isolation_level="read_committed",
                **self._settings.kafka_security.aiokafka_kwargs(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
