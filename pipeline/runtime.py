"""The worker's connections: the PostgreSQL pool, the DLQ producer, the refetch consumer.

Opened lazily, once (Faust seeks before its services start). Faust-free: the
benchmark's reference loop (``reference.py``) uses the same connections.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from pipeline import sql
from pipeline.deadletters import DeadLetterPublisher
from pipeline.refetch import Refetcher
from pipeline.settings import Settings
from pipeline.sink import TRANSIENT_ERRORS, load_progress

__all__ = ["Runtime"]

log = logging.getLogger(__name__)


class Runtime:
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self.dlq = DeadLetterPublisher(settings)
        self.refetcher = Refetcher(settings)

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                s = self.settings
                self._pool = await asyncpg.create_pool(
                    s.require_database_url(),
                    min_size=1,
                    max_size=s.sink_lanes + 1,  # a transaction per lane, and offset reads
                    command_timeout=60,
                )
                await self._pool.execute(
                    sql.UPSERT_CONFIG, s.completeness_grace_seconds, s.partition_idle_seconds
                )
            return self._pool

    async def durable_progress(self, deadline_s: float) -> dict[int, tuple[int, int | None]]:
        """Read PostgreSQL's offsets, retrying transient errors until ``deadline_s``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s
        while True:
            try:
                return await load_progress(await self.pool(), self.settings.events_topic)
            except TRANSIENT_ERRORS as exc:
                if loop.time() > until:
                    raise
                log.warning("durable offsets unreachable, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.dlq.close()
        await self.refetcher.close()
        if self._pool is not None:
            await self._pool.close()
