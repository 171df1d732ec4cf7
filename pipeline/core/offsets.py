"""The offset rule, and the guard that enforces it per partition. Pure: no I/O.

The rule: the durable offset of a partition moves from ``d`` to ``o + 1`` only
if every offset in ``[d, o]`` was stored, dead-lettered, or proven absent by
the broker. Proof of absence is a :class:`Span`: a stretch of the log that a
fetch read through, so each offset in it is either among the records that
fetch returned or is not in the log as this consumer may read it (a
transaction's control marker, an aborted record, a compacted one, or below
the log start).

Every assigned partition has a baseline (:meth:`OffsetGuard.assign`): its
durable row in PostgreSQL, or the broker's log start when it has none. There
is no unguarded partition. From the baseline on, the guard keeps the
*frontier*: the offset up to which the batches planned so far cover the log
without a hole. A batch that starts past the frontier, or skips offsets
inside, holds the frontier at the first offset it lacks: the worker reads
that hole from the broker (``refetch.py``) before planning, and if the
broker could not prove it either, the durable offset stays there.

A durable offset must lie inside the partition's log ``[log start, log
end]``: :func:`out_of_range` says when it does not (the topic was recreated,
a memory-only broker restarted empty, retention passed a stopped group, an
unclean election truncated the log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LogRange",
    "OffsetGuard",
    "Span",
    "frontier_of",
    "holes_of",
    "out_of_range",
    "spans_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Span:
    """``[start, end)`` of one partition: every offset in it was read or proven absent."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class LogRange:
    """What the broker holds of a partition: offsets ``[start, end)``."""

    start: int
    end: int


def out_of_range(durable: int, log: LogRange) -> bool:
    """A durable offset the partition's log cannot continue from.

    Below the log start, events were deleted before they were stored; above
    the log end, the log is not the one the offset was recorded against.
    Filtering "below durable" would then drop every new event silently.
    """
    return durable < log.start or durable > log.end


def frontier_of(start: int, spans: Iterable[Span]) -> int:
    """How far ``spans`` cover the log from ``start`` without a hole."""
    frontier = start
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > frontier:
            break
        frontier = max(frontier, span.end)
    return frontier


def holes_of(start: int, spans: Iterable[Span]) -> list[Span]:
    """The stretches from ``start`` up to the last span's end that ``spans`` leave uncovered."""
    holes: list[Span] = []
    covered = start
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > covered:
            holes.append(Span(covered, span.start))
        covered = max(covered, span.end)
    return holes


def spans_of(offsets: Iterable[int]) -> list[Span]:
    """Runs of consecutive ``offsets`` as spans (each record covers its own offset)."""
    spans: list[Span] = []
    for o in sorted(set(offsets)):
        if spans and spans[-1].end == o:
            spans[-1] = Span(spans[-1].start, o + 1)
        else:
            spans.append(Span(o, o + 1))
    return spans


class OffsetGuard:
    """Per assigned partition: the frontier of the batches planned so far."""

    def __init__(self) -> None:
        self._frontier: dict[int, int] = {}
        self._held: dict[int, int] = {}  # partition -> the hole it is held at (logged once)
        self.gaps_seen = 0

    def assign(self, partition: int, baseline: int) -> None:
        """Guard ``partition`` from ``baseline`` (its durable offset, or the log start)."""
        self._frontier[partition] = baseline
        self._held.pop(partition, None)

    def resume_at(self, partition: int, baseline: int) -> int:
        """Where a (re)assigned partition resumes; guards it from there.

        A partition this worker kept since its last assignment resumes at the
        later of its planned frontier and the baseline: Faust may seek twice
        around one rebalance, and the second read of the database can predate
        a batch this worker committed in between. Should a batch in flight be
        given up, :meth:`rewind` takes the frontier back to the durable offset
        and the next batch finds the hole.
        """
        start = max(self._frontier.get(partition, baseline), baseline)
        self.assign(partition, start)
        return start

    def rewind(self, partition: int, durable: int) -> None:
        """A planned batch will not commit: the frontier goes back to ``durable``."""
        if partition in self._frontier:
            self._frontier[partition] = durable
            self._held.pop(partition, None)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._frontier.pop(p, None)
            self._held.pop(p, None)

    def frontier(self, partition: int) -> int | None:
        return self._frontier.get(partition)

    def holes(self, partition: int, spans: Iterable[Span]) -> list[Span]:
        """What a batch with ``spans`` lacks from the frontier up to its last offset."""
        frontier = self._frontier.get(partition)
        return [] if frontier is None else holes_of(frontier, spans)

    def advance(self, partition: int, spans: Iterable[Span]) -> int:
        """Move the frontier over ``spans``; return it (the batch's next offset).

        A batch that leaves a hole stops the frontier there: the durable
        offset stays at the hole (logged once per hole) while the records
        past it are still written (the sink is idempotent).
        """
        frontier = self._frontier[partition]
        spans = list(spans)
        moved = frontier_of(frontier, spans)
        if any(s.end > moved for s in spans):
            if self._held.get(partition) != moved:
                self._held[partition] = moved
                self.gaps_seen += 1
                log.error("offset gap", extra={"partition": partition, "held_at": moved})
        else:
            self._held.pop(partition, None)
        self._frontier[partition] = moved
        return moved

    def held(self) -> dict[int, int]:
        """Partitions held at a hole: ``{partition: offset}``."""
        return dict(self._held)
