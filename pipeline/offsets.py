"""Durable offsets: what the sink recorded in PostgreSQL is where a partition resumes.

Faust has been seen to commit Kafka offsets past events it never processed
(rebalance windows, BROKER_NOTES.md). So on every assignment the worker seeks
each partition to the ``next_offset`` that the sink committed in PostgreSQL, in
the same transaction as the events (no record: from the beginning). While
running, :class:`OffsetGuard` checks that each partition's batches continue
exactly where the durable offset stands; on a gap it holds the durable offset
back and asks for one seek to the first missing offset. Pure: no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from pipeline.batch import BatchPlan

__all__ = ["OffsetGuard"]

log = logging.getLogger(__name__)


class OffsetGuard:
    def __init__(self) -> None:
        self._expected: dict[int, int] = {}
        self._pending_seek: dict[int, int] = {}
        self.gaps_seen = 0

    def reset(self, partition: int, next_offset: int | None) -> None:
        """Set the durable start of a (re)assigned partition."""
        self._pending_seek.pop(partition, None)
        if next_offset is None:
            self._expected.pop(partition, None)
        else:
            self._expected[partition] = next_offset

    def resume_at(self, partition: int, durable: int | None) -> int:
        """Where a partition resumes after a seek; also resets the guard there.

        A partition this worker kept since its last assignment (not forgotten)
        resumes at the later of its own committed offset and the database's
        record: Faust may seek twice around one rebalance, and the second read of
        the database can predate a batch this worker committed in between.
        """
        own = self._expected.get(partition)
        start = max(own if own is not None else 0, durable or 0)
        self.reset(partition, start if (own is not None or durable is not None) else None)
        return start

    def holes(self, offsets: Mapping[int, Iterable[int]]) -> dict[int, list[int]]:
        """Per partition, the offsets from the durable one up to the batch's last that it lacks."""
        out: dict[int, list[int]] = {}
        for partition, offs in offsets.items():
            expected = self._expected.get(partition)
            if expected is None:
                continue
            have = {o for o in offs if o >= expected}
            if have:
                missing = [o for o in range(expected, max(have)) if o not in have]
                if missing:
                    out[partition] = missing
        return out

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._expected.pop(p, None)
            self._pending_seek.pop(p, None)

    def check(self, plan: BatchPlan, first_offsets: dict[int, int]) -> dict[int, int]:
        """Hold back offsets past a gap; return ``{partition: offset}`` to seek to.

        ``first_offsets`` is the smallest offset the batch holds per partition.
        """
        seeks: dict[int, int] = {}
        for partition, progress in plan.progress.items():
            expected = self._expected.get(partition)
            first = first_offsets[partition]
            offsets = plan.offsets.get(partition)
            if expected is None:
                self._pending_seek.pop(partition, None)
                continue
            if offsets is not None:
                # Offsets below ``expected`` are replays (harmless); those from it
                # on must run without a hole, or the durable offset stops at it.
                hold = _first_missing(offsets, expected)
                ok = hold >= progress.next_offset
            else:
                hold = expected
                ok = first <= expected and progress.contiguous
            if ok:
                self._pending_seek.pop(partition, None)
                continue
            progress.next_offset = min(progress.next_offset, hold)
            if self._pending_seek.get(partition) != hold:
                self.gaps_seen += 1
                log.error(
                    "offset gap", extra={"partition": partition, "expected": hold, "got": first}
                )
                self._pending_seek[partition] = hold
                seeks[partition] = hold
        return seeks

    def advance(self, plan: BatchPlan) -> None:
        """The next batch continues where ``plan`` ends (after :meth:`check` held gaps back)."""
        for partition, progress in plan.progress.items():
            known = self._expected.get(partition, progress.next_offset)
            self._expected[partition] = max(known, progress.next_offset)


def _first_missing(offsets: Iterable[int], start: int) -> int:
    """The first offset from ``start`` on that ``offsets`` lacks."""
    nxt = start
    for o in sorted({o for o in offsets if o >= start}):
        if o != nxt:
            break
        nxt += 1
    return nxt
