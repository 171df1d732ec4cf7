"""Committing planned batches behind the planning: in order per partition, several at once.

The worker plans the next batch while earlier ones commit. Up to ``lanes``
batches commit at the same time, each in its own transaction, as long as no
two of them share a partition: a partition's batches still commit strictly in
the order they were planned, so its durable offset only ever moves over
events that are stored. Faust-free, so it is tested without a broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pipeline.errors import FatalSinkError
from pipeline.sink.writer import Abandoned
from pipeline.worker.commit import Committer
from pipeline.worker.prepare import Prepared

__all__ = ["WriteBehind"]

log = logging.getLogger(__name__)

OnFatal = Callable[[BaseException], None]


class WriteBehind:
    """Commits prepared batches; see the module docstring.

    When a batch is given up (its partitions were revoked, or the worker
    stops), a batch planned behind it on one of its partitions is discarded
    too: both roll back to the durable state and are read again. Batches
    planned after that roll-back find the gap themselves (the offset guard
    sees the hole), so only the batch already waiting needs discarding.
    """

    def __init__(self, committer: Committer, on_fatal: OnFatal, lanes: int = 1) -> None:
        self._committer = committer
        self._on_fatal = on_fatal
        self._lanes = max(1, lanes)
        self._flight: dict[asyncio.Task[bool], frozenset[int]] = {}

    @property
    def in_flight(self) -> int:
        """Commits still running (finished ones stay listed until the next submit reads them)."""
        return sum(not task.done() for task in self._flight)

    async def submit(self, prepared: Prepared, abandon: Callable[[], bool]) -> None:
        """Start committing ``prepared`` once its partitions and a lane are free."""
        partitions = frozenset(prepared.plan.progress)
        behind_given_up = False
        while True:
            ahead = [t for t, p in self._flight.items() if p & partitions]
            if ahead:
                # Batches planned before this one on its partitions: all must land.
                await asyncio.wait(ahead)
                for task in ahead:
                    self._flight.pop(task, None)
                    behind_given_up |= not task.result()
                continue
            if len(self._flight) < self._lanes:
                break
            # Every lane busy with other partitions: whichever finishes first. Its
            # outcome does not concern this batch, and the next batch is planned
            # after it finished (after any roll-back it caused).
            done, _ = await asyncio.wait(list(self._flight), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._flight.pop(task, None)
        if behind_given_up:
            self._committer.discard(prepared)
            log.warning(
                "batch discarded behind an abandoned one", extra={"messages": prepared.messages}
            )
            return
        self._flight[asyncio.create_task(self._commit(prepared, abandon))] = partitions

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for every batch in flight; False when one was given up (or is still running)."""
        if not self._flight:
            return True
        tasks = list(self._flight)
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in done:
            self._flight.pop(task, None)
        return not pending and all(task.result() for task in done)

    async def _commit(self, prepared: Prepared, abandon: Callable[[], bool]) -> bool:
        try:
            await self._committer.commit(prepared, abandon)
        except Abandoned:
            # the take acked these already; the durable offsets in PostgreSQL
            # make the next owner (or this worker, after its seek) re-read them.
            log.warning("batch abandoned", extra={"messages": prepared.messages})
            return False
        except FatalSinkError as exc:
            self._on_fatal(exc)
            raise
        if prepared.seeks:
            # Holes the refetch could not close: the durable offset stays at
            # them, /health/live turns unhealthy, and a restart re-reads them.
            log.error("offsets still missing after a refetch", extra={"seeks": prepared.seeks})
        return True
