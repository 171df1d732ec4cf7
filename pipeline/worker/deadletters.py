"""Publish dead letters to the DLQ topic: the original bytes, the why in headers.

Published before the sink transaction commits, so a crash can only repeat a
dead letter on the topic, never lose one (the ``dead_letters`` table is
de-duplicated by source position). Uses its own batched aiokafka producer: a
poison flood must not crawl through Faust's one-record-per-request producer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.core.events import DeadLetter
from pipeline.settings import Settings
from pipeline.sink.writer import Abandoned

__all__ = ["DeadLetterPublisher", "dlq_headers"]

log = logging.getLogger(__name__)


def dlq_headers(d: DeadLetter, original_size: int) -> list[tuple[str, bytes]]:
    s = d.source
    headers = [
        ("dlq.reason", d.reason.encode()),
        ("dlq.detail", d.detail.encode()[:1024]),
        ("dlq.source", f"{s.topic}/{s.partition}/{s.offset}/{s.index}".encode()),
    ]
    if d.field:
        headers.append(("dlq.field", d.field.encode()))
    if original_size > len(d.raw):
        headers.append(("dlq.truncated_from", str(original_size).encode()))
    return headers


class DeadLetterPublisher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        # Leave room for headers: the broker refuses messages above its limit.
        self._max_value = settings.max_message_bytes - 16_384

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                acks="all",
                linger_ms=5,
                max_request_size=self._settings.max_message_bytes + 65_536,
                **self._settings.kafka_security.aiokafka_kwargs(),
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def publish(self, dead: Sequence[DeadLetter], abandon: Callable[[], bool]) -> None:
        delay = 0.1
        while True:
            try:
                await self._send_all(dead)
                return
            except (KafkaError, OSError) as exc:
                log.warning("dlq publish retry", extra={"error": repr(exc), "delay_s": delay})
            if abandon():  # only a retry is given up (see Sink.write)
                raise Abandoned()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _send_all(self, dead: Sequence[DeadLetter]) -> None:
        producer = await self._ensure()
        futures = []
        for d in dead:
            value = d.raw[: self._max_value]
            futures.append(
                await producer.send(
                    self._settings.dlq_topic,
                    value=value,
                    partition=d.source.partition % self._settings.events_partitions,
                    headers=dlq_headers(d, len(d.raw)),
                )
            )
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
