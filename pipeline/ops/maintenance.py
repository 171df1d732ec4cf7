"""Operator commands on the tables: rebuild rollups from the raw tables; retention.

``rebuild-rollups --from A --to B`` recomputes every rollup row of the UTC hours
in [A, B) from the raw tables, in one transaction that holds new worker writes
back until it commits: idempotent, safe while workers run.

``retention --days N`` deletes raw events (by event time), dead letters (by
arrival) and the gateway's ingestion jobs (by their last update) older than N
days, in small batches, without touching the rollups. A pruned job's status is
gone (404) and its Idempotency-Key may be used again.
Keep exactly-once for replays older than that with MAX_EVENT_AGE_SECONDS below
N days: a purged event that is re-published is otherwise stored and counted again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.console import Progress
from pipeline.core.offsets import LogRange, out_of_range
from pipeline.core.timeparse import parse_timestamp, us_to_datetime
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.connect import connect
from pipeline.worker.brokerlog import BrokerLog

__all__ = [
    "OffsetReset",
    "RebuildResult",
    "apply_offset_reset",
    "apply_retention",
    "parse_hour",
    "plan_offset_reset",
    "rebuild_rollups",
]


@dataclass(frozen=True)
class RebuildResult:
    start: datetime
    end: datetime
    channel_rows: int
    agent_rows: int


def parse_hour(text: str, name: str) -> datetime:
    """RFC 3339 or unix seconds, floored to the UTC hour."""
    try:
        value: object = float(text) if text.replace(".", "", 1).isdigit() else text
        us = parse_timestamp(value)
    except ValueError as exc:
        raise ConfigError(f"{name} {text!r} {exc}") from None
    return us_to_datetime(us - us % 3_600_000_000)


async def rebuild_rollups(dsn: str, start: datetime, end: datetime) -> RebuildResult:
    if end <= start:
        raise ConfigError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(sql.LOCK_FOR_REBUILD)
            for statement in sql.DELETE_ROLLUPS_IN_RANGE.strip().split(";"):
                await conn.execute(statement, start, end)
            await conn.execute(sql.REBUILD_CHANNEL_USERS, start, end)
            channel = len(await conn.fetch(sql.REBUILD_CHANNEL_ROLLUP, start, end))
            agent = len(await conn.fetch(sql.REBUILD_AGENT_ROLLUP, start, end))
    finally:
        await conn.close()
    return RebuildResult(start, end, channel, agent)


async def apply_retention(dsn: str, days: int, batch: int = 20_000) -> dict[str, int]:
    if days < 1:
        raise ConfigError("--days must be at least 1")
    cutoff = datetime.now(UTC) - timedelta(days=days)
    conn = await connect(dsn)
    deleted: dict[str, int] = {}
    try:
        for table, statement in (
            ("raw_events", sql.DELETE_OLD_RAW_EVENTS),
            ("raw_agent_events", sql.DELETE_OLD_RAW_AGENT_EVENTS),
            ("dead_letters", sql.DELETE_OLD_DEAD_LETTERS),
            ("ingestion_job_events", sql.DELETE_OLD_INGESTION_JOB_EVENTS),
            ("ingestion_jobs", sql.DELETE_OLD_INGESTION_JOBS),
        ):
            total = 0
            bar = Progress()
            while True:
                status = await conn.execute(statement, cutoff, batch)
                n = int(status.split()[-1])
                total += n
                bar.update(f"{table}: deleted {total}")
                if n < batch:
                    break
                await asyncio.sleep(0)  # one short transaction per batch
            bar.close()
            deleted[table] = total
    finally:
        await conn.close()
    return deleted


@dataclass(frozen=True)
class OffsetReset:
    """One partition's durable offset: where it is, the broker's log, where it goes."""

    partition: int
    durable: int | None
    log: LogRange
    target: int

    @property
    def out_of_range(self) -> bool:
        return self.durable is not None and out_of_range(self.durable, self.log)


async def plan_offset_reset(
    settings: Settings, to: str, partition: int | None = None
) -> list[OffsetReset]:
    """Where each partition's durable offset would go: ``to`` is earliest, latest or a number.

    ``earliest`` replays the broker's whole log (safe: replayed events add
    nothing); ``latest`` skips what the log holds now, so say so to whoever
    asks. Partitions are checked against the topic's.
    """
    topic = settings.events_topic
    broker_log = BrokerLog(settings)
    try:
        count = await broker_log.partition_count(topic)
        if partition is not None and not 0 <= partition < count:
            raise ConfigError(
                f"--partition {partition}: topic {topic} has partitions 0..{count - 1}"
            )
        partitions = list(range(count)) if partition is None else [partition]
        conn = await connect(settings.require_database_url())
        try:
            durable = {
                r["partition"]: r["next_offset"]
                for r in await conn.fetch(sql.SELECT_PROGRESS_ROWS, topic)
            }
        finally:
            await conn.close()
        logs = await broker_log.ranges(topic, partitions, durable)
    finally:
        await broker_log.close()
    return [OffsetReset(p, durable.get(p), logs[p], _target(to, logs[p])) for p in partitions]


def _target(to: str, log: LogRange) -> int:
    if to == "earliest":
        return log.start
    if to == "latest":
        return log.end
    try:
        offset = int(to)
    except ValueError:
        raise ConfigError(f"--to {to!r}: say earliest, latest or an offset (0 or more)") from None
    if offset < 0:
        raise ConfigError(f"--to {to!r}: an offset must be 0 or more")
    return min(max(offset, log.start), log.end)


async def apply_offset_reset(settings: Settings, resets: list[OffsetReset]) -> None:
    """Write the planned offsets; workers pick them up within seconds (stopped partitions)
    or at their next assignment."""
    conn = await connect(settings.require_database_url())
    try:
        await conn.execute(
            sql.SET_PROGRESS,
            settings.events_topic,
            [r.partition for r in resets],
            [r.target for r in resets],
        )
    finally:
        await conn.close()
