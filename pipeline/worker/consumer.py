"""Faust's aiokafka consumer, with every change the worker makes to it in one place.

Installed through Faust's transport (``PipelineApp._new_transport`` names
:class:`PipelineTransport`, whose ``Consumer`` is :class:`DurableConsumer`).
Written against faust-streaming |FAUST_VERSION|; :func:`check_faust_version`
refuses any other, since each override below leans on that version's internals.

What is overridden, and why:

``DurableConsumer``
  * ``seek_to_committed``: after each rebalance Faust seeks every partition
    to its Kafka-committed offset. PostgreSQL's durable offsets win: the app
    answers with them (``PipelineApp.seek_to_durable``), so Faust sets its own
    read positions from them too.
  * ``perform_seek``: one at a time. Faust calls it from recovery and from its
    fetch loop; two interleaved calls could leave a partition at the Kafka
    offset with the flow running.
  * ``on_partitions_assigned``: stops the message flow on every assignment
    (Faust does only when partitions were assigned before); recovery resumes
    it after the seek to the durable offsets.
  * ``_filter_committable_offsets``: Kafka commits never pass the durable
    offsets (Faust commits what the agent acked, which can be ahead of the
    sink, and around rebalances past events never processed).
  * ``getmany``: the events topic as runs of records, one per partition and
    fetch (``delivery.py``); other topics (changelogs) record by record.
  * ``wait_first`` and the conductor callback: cheaper per-message delivery
    for the changelog records (``eager.py``).
  * ``seek_wait``: a negative or unknown (None) offset becomes 0. Faust's table
    recovery seeks a changelog partition to "earliest - 1", which is -2 when
    the broker answers -1 for an empty partition, or None when it answers
    nothing (both seen on Tansu under SIGKILLs); aiokafka then raised and the
    worker exited. Offset 0 reads the changelog from its start, which is what
    recovery wants.

``DurableConsumerThread`` (the thread that owns aiokafka's consumer)
  * ``_create_worker_consumer``: ``isolation_level=read_committed``, so
    aborted transactions never reach the sink and control markers are skipped.
  * ``_fetch_records``: stamps each partition's drained records with the
    partition's seek epoch and the fetch position after them
    (``delivery.Fetched``), in the thread, with no ``await`` between the drain
    and the stamp.
  * ``seek_durable``: seeks in the thread, counting an epoch per partition, so
    records drained before the seek are known stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from pipeline.errors import ConfigError
from pipeline.worker import delivery, eager

__all__ = [
    "FAUST_VERSION",
    "DurableConsumer",
    "DurableConsumerThread",
    "PipelineTransport",
    "check_faust_version",
]

FAUST_VERSION = "0.15.3"
__doc__ = (__doc__ or "").replace("|FAUST_VERSION|", FAUST_VERSION)


def check_faust_version(found: str = faust.__version__) -> None:
    """Refuse a faust-streaming the overrides were not written against."""
    if found != FAUST_VERSION:
        raise ConfigError(
            f"faust-streaming {found} is installed, but the worker's consumer overrides "
            f"(pipeline/worker/consumer.py) are written for {FAUST_VERSION}: install "
            f"faust-streaming=={FAUST_VERSION} (pip install -e .), or review the overrides."
        )


class DurableConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """See the module docstring."""

    logger = faust_aiokafka.logger  # Faust's own chatter stays under faust.* (quiet)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by its Fetcher, built at start
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        # No await since the drain: the positions are those right after it.
        assignment = consumer._subscription.subscription
        assignment = assignment.assignment if assignment is not None else None
        stamped: dict[TP, delivery.Fetched] = {}
        for tp, fetched in records.items():
            if not fetched:
                continue
            position = None
            if assignment is not None and tp in assignment.tps:
                state = assignment.state_value(tp)
                position = state.position if state.has_valid_position else None
            end = fetched[-1].offset + 1
            stamped[tp] = delivery.Fetched(
                fetched, self._epochs.get(tp, 0), max(end, position or end)
            )
        return stamped

    async def seek_durable(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """Seek each partition; return its new epoch (the seek is done when this returns)."""
        epochs: dict[TP, int] = await self.call_thread(
            self._seek_durable, self._ensure_consumer(), offsets
        )
        return epochs

    async def _seek_durable(self, consumer: Any, offsets: Mapping[TP, int]) -> dict[TP, int]:
        epochs: dict[TP, int] = {}
        for tp in offsets:
            epochs[tp] = self._epochs[tp] = self._epochs.get(tp, 0) + 1
        await self._seek_wait(consumer, offsets)  # Faust's: seeks, sets its read offsets
        return epochs


class DurableConsumer(eager.EagerWaitFirst, faust_aiokafka.Consumer):
    """See the module docstring."""

    logger = faust_aiokafka.logger

    _thread: DurableConsumerThread
    app: Any  # the PipelineApp (its runtime, partition book and seek_to_durable)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callback = eager.unlocked_on_message(self.app.topics)
        self._seek_lock = asyncio.Lock()

    def _new_consumer_thread(self) -> DurableConsumerThread:
        return DurableConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        return delivery.getmany_runs(self, self.app.runtime.settings.events_topic, timeout)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        offsets = dict(await super().seek_to_committed())
        offsets.update(await self.app.seek_to_durable())
        return offsets

    async def perform_seek(self) -> None:
        async with self._seek_lock:
            await super().perform_seek()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.stop_flow()
        await super().on_partitions_assigned(assigned, generation_id)

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        committable = super()._filter_committable_offsets(tps)
        return dict(
            self.app.partitions.cap_commits(self.app.runtime.settings.events_topic, committable)
        )

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        await super().seek_wait({tp: max(offset or 0, 0) for tp, offset in partitions.items()})

    def fetch_position(self, tp: TP) -> int | None:
        """The consumer thread's fetch position for ``tp`` (read across threads: an int)."""
        consumer = self._thread._consumer
        assignment = consumer._subscription.subscription if consumer is not None else None
        if assignment is None or tp not in assignment.assignment.tps:
            return None
        state = assignment.assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None  # none while seeking

    async def seek_durable(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """Seek in the consumer's thread; the epochs let stale runs be told apart."""
        return await self._thread.seek_durable(offsets)


class PipelineTransport(faust_aiokafka.Transport):
    Consumer = DurableConsumer


def new_transport(app: faust.App) -> PipelineTransport:
    return PipelineTransport(app.conf.broker_consumer, app)
