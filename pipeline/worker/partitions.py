"""Where each assigned partition stands: its baseline, seek, frontier, durable offset, watermarks.

The one home of a worker's per-partition state, read and moved by both sides
of a batch's path: preparing a batch (``prepare.py``) moves the *planned*
state (the offset guard's frontier, the planned watermarks); committing it
(``commit.py``) moves the *durable* state, only after the sink transaction
committed. A batch given up rolls the planned state back to the durable one.

* Every assigned partition has a baseline: its durable row in PostgreSQL, or
  the broker's log start when it has none (the offset rule,
  ``pipeline/core/offsets.py``).
* A partition is *positioned* once the seek to its durable offset landed, with
  that seek's epoch: runs fetched before it are stale.
* A durable offset outside the broker's log *stops* the partition
  (:class:`OutOfRange`) until an operator resets it.

The Faust dedup state is per-partition state too: it is kept here, and
forgotten with the partition. Faust-free, so it is tested without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.offsets import LogRange, OffsetGuard, Span, out_of_range
from pipeline.core.planner import BatchPlan, PartitionProgress, Run
from pipeline.worker.dedup_table import DedupState
from pipeline.worker.metrics import WorkerMetrics

__all__ = ["OutOfRange", "PartitionBook"]

log = logging.getLogger(__name__)

TP = Any  # a Kafka topic-partition with .topic and .partition (Faust's TP)


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """A partition stopped because its durable offset lies outside the broker's log."""

    partition: int
    durable: int
    log: LogRange

    def describe(self) -> str:
        return (
            f"partition {self.partition}: durable offset {self.durable} is outside the "
            f"broker's log [{self.log.start}, {self.log.end}]"
        )


class PartitionBook:
    """See the module docstring."""

    def __init__(self, dedup: DedupState, metrics: WorkerMetrics) -> None:
        self.dedup = dedup
        self._metrics = metrics
        self.guard = OffsetGuard()
        self._watermarks: dict[int, int | None] = {}  # as planned: batches in flight included
        self._durable_watermarks: dict[int, int | None] = {}
        # Per partition: the durable next offset and when it last moved (liveness).
        self.durable: dict[int, int] = {}
        self.progressed_at: dict[int, float] = {}
        # Per partition positioned at its durable offset since its assignment:
        # (the seek's epoch, where it seeked to). Runs fetched before that seek
        # (older epoch) are stale and never reach the sink.
        self._positioned: dict[int, tuple[int, int]] = {}
        # Partitions assigned but stopped: durable offset outside the broker's log.
        self.stopped: dict[int, OutOfRange] = {}
        self._probed: dict[int, int] = {}  # partition -> frontier at the last tail check

    # --- the partition's life: assigned, positioned, revoked, stopped ---------------

    def on_assigned(
        self,
        partitions: Iterable[int],
        durable: Mapping[int, tuple[int, int | None]],
        logs: Mapping[int, LogRange],
    ) -> dict[int, int]:
        """Reset per-partition state from PostgreSQL's record; return where each resumes.

        Every partition gets a baseline: its durable row, or the log start
        when it has none. A durable offset outside the broker's log (``logs``)
        stops the partition (:attr:`stopped`): it gets no start, so it is not
        read, planned or committed until an operator resets it.
        """
        self._metrics.rebalances.inc()
        now = time.monotonic()
        starts: dict[int, int] = {}
        for p in partitions:
            self._positioned.pop(p, None)
            next_offset, watermark = durable.get(p, (None, None))
            log_range = logs[p]
            baseline = log_range.start if next_offset is None else next_offset
            if out_of_range(baseline, log_range):
                self.stop(OutOfRange(p, baseline, log_range))
                continue
            self._unstop(p)
            # A partition kept since its last assignment resumes where this worker
            # planned up to (see OffsetGuard.resume_at). The durable offset itself
            # is only ever what PostgreSQL holds, or the log start.
            starts[p] = self.guard.resume_at(p, baseline)
            self.durable[p] = max(self.durable.get(p, baseline), baseline)
            durable_wm = _later(self._durable_watermarks.get(p), watermark)
            self._durable_watermarks[p] = durable_wm
            self._watermarks[p] = _later(self._watermarks.get(p), durable_wm)
            self.progressed_at[p] = now
        return starts

    def on_positioned(self, epochs: Mapping[int, int], starts: Mapping[int, int]) -> None:
        """The seeks to ``starts`` landed, as seek number ``epochs[p]`` of each partition.

        A partition revoked (or stopped) while its seek was in flight stays
        unpositioned: a rebalance can run between the assignment and the seek.
        """
        for p, epoch in epochs.items():
            if p in starts and p in self.durable and p not in self.stopped:
                self._positioned[p] = (epoch, starts[p])

    @property
    def positioned(self) -> set[int]:
        return set(self._positioned)

    def position(self, partition: int) -> tuple[int, int] | None:
        """(seek epoch, offset seeked to) of a positioned partition; None otherwise."""
        return self._positioned.get(partition)

    def on_revoked(self, partitions: Iterable[int]) -> None:
        parts = list(partitions)
        self.guard.forget(parts)
        self.dedup.forget_partitions(parts)
        for p in parts:
            self._positioned.pop(p, None)
            self._unstop(p)
            self._watermarks.pop(p, None)
            self._durable_watermarks.pop(p, None)
            self.durable.pop(p, None)
            self.progressed_at.pop(p, None)

    def stop(self, stop: OutOfRange) -> None:
        """Stop a partition whose durable offset lies outside the broker's log (said once)."""
        p = stop.partition
        again = self.stopped.get(p) == stop
        self.stopped[p] = stop
        self._positioned.pop(p, None)
        self.guard.forget([p])
        self.durable.pop(p, None)
        self._metrics.out_of_range.set(1, partition=str(p))
        if again:  # re-checked, unchanged: said once already
            return
        log.error(
            "durable offset out of range: partition stopped until an operator resets it "
            "(python -m pipeline reset-offsets --to earliest|latest)",
            extra={
                "partition": p,
                "durable_offset": stop.durable,
                "log_start": stop.log.start,
                "log_end": stop.log.end,
            },
        )

    def _unstop(self, partition: int) -> None:
        if self.stopped.pop(partition, None) is not None:
            self._metrics.out_of_range.set(0, partition=str(partition))

    def tail_probes(self, ends: Mapping[int, int]) -> list[Run]:
        """Probes for idle partitions whose frontier stays short of the fetch position.

        The last offsets of a log can hold no record a consumer sees (the
        commit or abort marker of an upstream transaction, aborted records):
        the consumer's position moves over them, but no run ever arrives to
        move the durable offset. A partition whose frontier has not moved
        since the last call and lies below ``ends`` (how far the consumer has
        fetched) gets an empty run: planning reads the stretch from the
        broker, which proves those offsets absent (or returns what is there).
        """
        probes: list[Run] = []
        for p, (epoch, _) in self._positioned.items():
            frontier, end = self.guard.frontier(p), ends.get(p)
            if frontier is None or end is None or frontier >= end:
                self._probed.pop(p, None)
                continue
            if self._probed.get(p) == frontier:
                probes.append(Run(p, (), end, epoch))
            self._probed[p] = frontier
        return probes

    def cap_commits(self, topic: str, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """Kafka offsets Faust may commit: never past what PostgreSQL holds durably."""
        capped: dict[TP, int] = {}
        for tp, offset in offsets.items():
            if tp.topic != topic:
                capped[tp] = offset
            elif (durable := self.durable.get(tp.partition)) is not None:
                capped[tp] = min(offset, durable)
        return capped

    # --- a batch planned: the planned state moves; given up: it rolls back ----------

    def planned_watermarks(self) -> dict[int, int | None]:
        """Each partition's watermark as planned so far (batches in flight included)."""
        return dict(self._watermarks)

    def advance(self, plan: BatchPlan, spans: Mapping[int, list[Span]]) -> None:
        """Each partition's next offset is the guard's frontier (the offset rule)."""
        for p, partition_spans in spans.items():
            frontier = self.guard.advance(p, partition_spans)
            progress = plan.progress.get(p)
            if progress is None:
                if frontier <= self.durable[p]:
                    continue
                # Only absent offsets (a trailing control marker) or replays: the
                # durable offset still moves over what the broker proved absent.
                progress = PartitionProgress(frontier, self._watermarks.get(p))
                plan.progress[p] = progress
            progress.next_offset = frontier
            wm = self._watermarks.get(p)
            if progress.watermark_us is not None and (wm is None or progress.watermark_us > wm):
                self._watermarks[p] = progress.watermark_us

    def rewind(self, partitions: Iterable[int]) -> None:
        """A planned batch will not commit: its partitions go back to their durable state."""
        for p in partitions:
            if p in self.durable:
                self.guard.rewind(p, self.durable[p])
                self._watermarks[p] = self._durable_watermarks.get(p)

    # --- a batch committed: the durable state moves -----------------------------------

    def made_durable(self, plan: BatchPlan) -> None:
        """The sink transaction holding ``plan`` committed: its offsets are durable now."""
        now = time.monotonic()
        m = self._metrics
        for p, progress in plan.progress.items():
            wm = self._durable_watermarks.get(p)
            if progress.watermark_us is not None and (wm is None or progress.watermark_us > wm):
                self._durable_watermarks[p] = wm = progress.watermark_us
            if progress.next_offset > self.durable.get(p, -1):
                self.durable[p] = progress.next_offset
                self.progressed_at[p] = now
            m.durable_offset.set(self.durable[p], partition=str(p))
            if wm is not None:
                m.watermark.set(wm / 1e6, partition=str(p))


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
