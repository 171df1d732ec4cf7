"""The takes' way in: each take is prepared and handed to the write-behind, in order.

The path of a batch, one direction only::

    agent (app.py) → Intake → Preparer.prepare → WriteBehind.submit → Committer.commit → Sink

The agent hands a take over and goes back to Faust's ``take_events`` at once,
so Faust fills the next take while this one is prepared and written; at most
one take waits here (backpressure). Takes are acked when handed over, before
they are durable: Kafka commits are capped at the durable offsets
(``PartitionBook.cap_commits``), and a take dropped by a stop or a revocation
is read again from them. Faust-free, so it is tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from pipeline.core.planner import FetchedRun, split_runs
from pipeline.settings import Settings
from pipeline.worker.prepare import Preparer
from pipeline.worker.writebehind import WriteBehind

__all__ = ["AbandonCheck", "Intake"]

log = logging.getLogger(__name__)

# The partitions a batch covers -> "give this batch up now?" (revoked, or stopping)
AbandonCheck = Callable[[set[int]], Callable[[], bool]]


class Intake:
    """See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        preparer: Preparer,
        write_behind: WriteBehind,
        abandon_check: AbandonCheck,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._settings = settings
        self._preparer = preparer
        self._write_behind = write_behind
        self._abandon_check = abandon_check
        self._on_fatal = on_fatal
        self._queue: asyncio.Queue[Sequence[FetchedRun]] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Task[None] | None = None
        self._planning = False
        self._closed = False

    @property
    def idle(self) -> bool:
        """Nothing waits here and nothing is being planned."""
        return self._queue.empty() and not self._planning

    async def put(self, runs: Sequence[FetchedRun]) -> None:
        if self._closed:
            return  # stopping: nothing new starts (it is read again from the durable offsets)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await self._queue.put(runs)

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        s = self._settings
        try:
            while True:
                runs = await self._queue.get()
                self._planning = True
                for chunk in split_runs(runs, s.sink_lanes, s.batch_bytes):
                    prepared = await self._preparer.prepare(chunk)
                    if prepared is not None:
                        abandon = self._abandon_check(set(prepared.plan.progress))
                        await self._write_behind.submit(prepared, abandon)
                self._planning = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: stop here, a supervisor restarts the worker
            log.exception("batch intake failed")
            self._on_fatal(exc)
