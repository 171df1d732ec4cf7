"""The gateway's way to Kafka: acknowledged publishes or a :class:`PublishError`, never a drop.

One long-lived producer (acks=all) per process, started in the background and
restarted until the broker answers, so the gateway serves 503s instead of
refusing to start while the broker is away. Concurrent single events share
one record batch per partition (see :class:`GatewayPublisher`); bulk requests
go out in envelopes of at most ``envelope_events`` events and
``MAX_MESSAGE_BYTES``, grouped per partition by dedup key as the publisher
library does. Every publish returns a :class:`Receipt` (end offsets per
partition) so tests and the benchmark can wait for the worker. A publish
that fails or times out is a :class:`PublishError`, which the app answers
with a 503: a retry is safe, the worker de-duplicates by key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiokafka.errors import KafkaError

from pipeline.errors import PublishError
from pipeline.settings import Settings
from producers.gateway.http import HttpError, error
from producers.gateway.ingest import Prepared
from producers.gateway.settings import GatewaySettings
from producers.gateway.telemetry import GatewayMetrics
from producers.keyhash import partition_for
from producers.publisher import Publisher, Receipt

__all__ = ["Broker", "GatewayPublisher", "envelope_records"]

log = logging.getLogger(__name__)


_Waiting = tuple[bytes, bytes, "asyncio.Future[int]"]


def _fail(items: list[_Waiting], error: PublishError) -> None:
    for _, _, waiter in items:
        if not waiter.done():
            waiter.set_exception(error)


class GatewayPublisher(Publisher):
    """The publisher library plus a one-event path for concurrent single posts.

    ``publish_one`` does not call ``send()`` per event (aiokafka's per-message
    path costs more than the rest of a request). Per partition one record batch
    is in flight at a time: events that arrive meanwhile wait in a list and
    leave together as the next batch (``send_batch``) once it is acknowledged,
    so batches grow with the load and no timer adds latency. Each waiter learns
    its own offset.
    """

    def __init__(self, settings: Settings, linger_ms: int = 0) -> None:
        super().__init__(settings, linger_ms=linger_ms)
        self._waiting: dict[int, list[_Waiting]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}

    async def publish_one(self, key: str, value: bytes) -> Receipt:
        kb = key.encode()
        partition = partition_for(kb, self.partitions)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(partition, []).append((kb, value, waiter))
        if partition not in self._senders:
            self._senders[partition] = asyncio.create_task(self._drain(partition))
        offset = await waiter
        return Receipt(messages=1, events=1, end_offsets={partition: offset + 1})

    async def _drain(self, partition: int) -> None:
        try:
            while items := self._waiting.pop(partition, None):
                await self._send(partition, items)
        finally:
            del self._senders[partition]

    async def _send(self, partition: int, items: list[_Waiting]) -> None:
        producer = self._producer
        i = 0
        while i < len(items):
            batch = producer.create_batch()
            j = i
            while j < len(items):
                if batch.append(key=items[j][0], value=items[j][1], timestamp=None) is None:
                    break
                j += 1
            if j == i:  # cannot happen (a first record always fits), but never spin
                _fail(items[i:], PublishError("a message does not fit in a record batch"))
                return
            chunk, i = items[i:j], j
            try:
                fut = await producer.send_batch(batch, self.topic, partition=partition)
                base = (await fut).offset
            except Exception as exc:  # any failure: no waiter may be left hanging
                _fail(chunk, PublishError(f"the broker did not acknowledge the publish: {exc!r}"))
                continue
            for n, (_, _, waiter) in enumerate(chunk):
                if not waiter.done():
                    waiter.set_result(base + n)

    async def stop(self) -> None:
        """Let the single-event senders finish, then flush and stop the producer."""
        if self._senders:
            await asyncio.gather(*self._senders.values(), return_exceptions=True)
        await super().stop()

    async def ping(self) -> None:
        """A metadata round trip to the cluster; raises when no broker answers."""
        try:
            await self._producer.client.fetch_all_metadata()
        except (KafkaError, OSError) as exc:
            raise PublishError(f"the broker does not answer: {exc!r}") from exc


def envelope_records(
    events: Sequence[Prepared], partitions: int, max_events: int, max_bytes: int
) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` records: per partition, JSON-array envelopes.

    An envelope holds at most ``max_events`` events and ``max_bytes`` bytes, and
    is keyed by its first event (all of its events hash to its partition). A
    lone event travels as itself, not as an array of one.
    """
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in events:
        kb = key.encode()
        by_partition.setdefault(partition_for(kb, partitions), []).append((kb, value))
    records: list[tuple[int, bytes, bytes]] = []
    for partition, items in by_partition.items():
        chunk: list[tuple[bytes, bytes]] = []
        size = 1
        for kb, value in items:
            if chunk and (len(chunk) >= max_events or size + len(value) + 1 > max_bytes):
                records.append(_envelope(partition, chunk))
                chunk, size = [], 1
            chunk.append((kb, value))
            size += len(value) + 1
        if chunk:
            records.append(_envelope(partition, chunk))
    return records


def _envelope(partition: int, chunk: list[tuple[bytes, bytes]]) -> tuple[int, bytes, bytes]:
    if len(chunk) == 1:
        return partition, chunk[0][0], chunk[0][1]
    return partition, chunk[0][0], b"[" + b",".join(v for _, v in chunk) + b"]"


class Broker:
    """The producer's life: connect (retrying in the background), publish, flush on stop."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> None:
        self._settings = settings
        self._publisher: GatewayPublisher | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Bytes of events handed to the producer and not yet acknowledged or failed:
        # a caller that gave up (timeout) still holds its bytes until then.
        self.pending_bytes = 0
        self._metrics = metrics or GatewayMetrics()
        self._metrics.max_pending_bytes.set(settings.max_pending_bytes)
        self._metrics.watch_broker(lambda: self.pending_bytes, lambda: self.ready)

    @property
    def ready(self) -> bool:
        return self._publisher is not None

    async def start(self) -> None:
        """Connect once now; if the broker is away, keep trying in the background."""
        if not await self._connect_once():
            self._connecting = asyncio.create_task(self._keep_connecting())

    async def stop(self) -> None:
        """Flush and stop the producer: everything sent so far is acknowledged or failed."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await publisher.stop()

    async def _connect_once(self) -> bool:
        s = self._settings
        publisher = GatewayPublisher(s.pipeline, linger_ms=s.linger_ms)
        try:
            await publisher.start()
        except PublishError as exc:
            log.warning("broker unreachable, retrying", extra={"error": str(exc)})
            await publisher.stop()
            return False
        self._publisher = publisher
        log.info("broker connected", extra={"partitions": publisher.partitions})
        return True

    async def _keep_connecting(self) -> None:
        delay = 0.5
        while not await self._connect_once():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _require(self) -> GatewayPublisher:
        if self._publisher is None:
            self._metrics.failed.inc()
            raise PublishError(
                f"not connected to Kafka at {self._settings.pipeline.kafka_bootstrap_servers}"
            )
        return self._publisher

    async def publish_one(self, event: Prepared) -> Receipt:
        publisher = self._require()
        return await self._bounded(
            len(event.value), 1, lambda: publisher.publish_one(event.key, event.value)
        )

    async def publish_many(self, events: Sequence[Prepared]) -> Receipt:
        publisher = self._require()
        s = self._settings
        records = envelope_records(
            events, publisher.partitions, s.envelope_events, s.pipeline.max_message_bytes
        )
        size = sum(len(value) for _, _, value in records)
        receipt = await self._bounded(size, len(events), lambda: publisher.publish_records(records))
        receipt.events = len(events)
        return receipt

    async def ping(self, timeout: float) -> None:
        publisher = self._require()
        try:
            await asyncio.wait_for(publisher.ping(), timeout)
        except TimeoutError:
            raise PublishError("the broker did not answer in time") from None

    async def _bounded(
        self, size: int, events: int, publish: Callable[[], Coroutine[Any, Any, Receipt]]
    ) -> Receipt:
        """Publish within the pending-bytes budget and the publish timeout.

        Over budget: 503 at once (the broker is slower than the callers). A
        timed-out publish keeps running (and holding its bytes) until the
        producer acknowledges or fails it: the budget stays true.
        """
        s = self._settings
        metrics = self._metrics
        if self.pending_bytes and self.pending_bytes + size > s.max_pending_bytes:
            metrics.queue_full.inc()
            raise HttpError(
                503,
                [
                    error(
                        None,
                        "the gateway's publish queue is full (GATEWAY_MAX_PENDING_BYTES):"
                        " the broker is slow; retry",
                    )
                ],
                headers={"Retry-After": str(s.retry_after_seconds)},
            )
        task = asyncio.ensure_future(publish())
        self.pending_bytes += size
        task.add_done_callback(lambda t: self._settled(t, size))
        timeout = s.publish_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                receipt = await asyncio.shield(task)
        except TimeoutError:
            metrics.failed.inc()
            raise PublishError(
                f"the broker did not acknowledge within {timeout:g} s"
                " (GATEWAY_PUBLISH_TIMEOUT_SECONDS)"
            ) from None
        except Exception:  # the publish failed (PublishError): the caller answers 503
            metrics.failed.inc()
            raise
        metrics.acknowledged.inc()
        metrics.events_acknowledged.inc(events)
        return receipt

    def _settled(self, task: asyncio.Future[Receipt], size: int) -> None:
        self.pending_bytes -= size
        if not task.cancelled():
            task.exception()  # retrieved: a caller that timed out no longer awaits it
