"""The worker's connections: the PostgreSQL pool, the DLQ producer, the broker-log reader.

Opened lazily, once (Faust seeks before its services start). Faust-free: the
benchmark's reference loop (``reference.py``) uses the same connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import asyncpg

from pipeline.core.offsets import LogRange
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.writer import TRANSIENT_ERRORS, load_progress
from pipeline.worker.brokerlog import BrokerLog
from pipeline.worker.deadletters import DeadLetterPublisher

__all__ = ["Runtime"]

log = logging.getLogger(__name__)


class Runtime:
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self.dlq = DeadLetterPublisher(settings)
        self.broker_log = BrokerLog(settings)

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
                log.warning(
                    "durable offsets unreachable, retrying",
                    extra={"error": repr(exc), "setting": "DATABASE_URL"},
                )
                await asyncio.sleep(0.5)

    async def assignment_state(
        self, partitions: Iterable[int]
    ) -> tuple[dict[int, tuple[int, int | None]], dict[int, LogRange]]:
        """For newly assigned partitions: PostgreSQL's durable offsets and the broker's logs."""
        durable = await self.durable_progress(deadline_s=60.0)
        near = {p: offset for p, (offset, _) in durable.items()}
        logs = await self.broker_log.ranges(self.settings.events_topic, partitions, near)
        return durable, logs

    async def close(self) -> None:
        await self.dlq.close()
        await self.broker_log.close()
        if self._pool is not None:
            await self._pool.close()
