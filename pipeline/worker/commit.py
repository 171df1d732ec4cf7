"""A planned batch made durable: dead letters, the one sink transaction, then the state.

:meth:`Committer.commit` publishes the batch's dead letters to the DLQ topic
while the sink writes its transaction, and the transaction commits only once
the broker acknowledged every dead letter, so no offset becomes durable
before its dead letters are. Content PostgreSQL refuses is dead-lettered and
the batch goes again. Only AFTER the commit do the durable offsets and the
Faust dedup state move (``PartitionBook.made_durable``): a key marked seen
before its write is durable would turn a crash into a lost event. A batch
given up is rolled back to the durable state (:meth:`Committer.discard`).
Faust-free, so it is tested without a broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from pipeline.core.events import DeadLetter
from pipeline.core.planner import BatchPlan, quarantine, state_key
from pipeline.sink.writer import Abandoned, Sink, Unstorable, WriteResult
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.partitions import PartitionBook
from pipeline.worker.prepare import Prepared

__all__ = ["Committer", "PublishDead"]

PublishDead = Callable[[Sequence[DeadLetter], Callable[[], bool]], Awaitable[None]]


class Committer:
    """See the module docstring."""

    def __init__(
        self, sink: Sink, book: PartitionBook, publish_dead: PublishDead, metrics: WorkerMetrics
    ) -> None:
        self._sink = sink
        self._book = book
        self._publish_dead = publish_dead
        self._metrics = metrics

    @property
    def sink_retrying(self) -> bool:
        """The sink is retrying through a database outage (not a stuck worker)."""
        return self._sink.retrying

    async def commit(self, prepared: Prepared, abandon: Callable[[], bool]) -> None:
        """Dead letters to the DLQ topic and the one sink transaction, then the state.

        Raises ``sink.Abandoned`` when ``abandon()`` turned true before the
        commit; the batch is rolled back first.
        """
        plan = prepared.plan
        started = time.monotonic()
        while True:
            dlq = None
            if plan.dead:
                dlq = asyncio.ensure_future(self._publish_dead(plan.dead, abandon))
            try:
                result = await self._sink.write(plan, abandon, before_commit=dlq)
                break
            except Unstorable as refusal:
                # Content PostgreSQL refuses becomes dead letters; the batch goes again.
                quarantine(plan, refusal.refused)
            except Abandoned:
                self._metrics.abandoned.inc()
                self.discard(prepared)
                raise
            finally:
                if dlq is not None and not dlq.done():
                    dlq.cancel()
        self._metrics.sink_seconds.observe(time.monotonic() - started)
        self._book.made_durable(plan)
        self._remember(plan, prepared.first_offsets)
        self._count(plan, result, prepared.messages)

    def discard(self, prepared: Prepared) -> None:
        """Forget a planned batch that will not commit: its partitions go back to durable."""
        self._book.rewind(prepared.plan.progress)

    def _remember(self, plan: BatchPlan, first_offsets: Mapping[int, int]) -> None:
        by_partition: dict[int, list[str]] = {}
        for e in plan.events:
            by_partition.setdefault(e.source.partition, []).append(state_key(e))
        for p, keys in by_partition.items():
            self._book.dedup.remember(p, first_offsets[p], keys)

    def _count(self, plan: BatchPlan, result: WriteResult, n: int) -> None:
        m = self._metrics
        m.messages.inc(n)
        m.events_in.inc(len(plan.products) + len(plan.agents) + plan.duplicates)
        m.stored.inc(result.stored)
        m.duplicates.inc(plan.duplicates + result.duplicates)
        m.duplicates_filtered.inc(plan.duplicates)
        m.dedup_keys.set(len(self._book.dedup))
        m.count_dead_letters(d.reason for d in plan.dead)
        m.late.inc(sum(e.late for e in plan.events))
        m.batches.inc()
        m.sink_retries.inc(result.attempts - 1)
        m.batch_size.observe(n)
