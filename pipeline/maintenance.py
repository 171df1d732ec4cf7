"""Operator commands on the tables: rebuild rollups from the raw tables; retention.

``rebuild-rollups --from A --to B`` recomputes every rollup row of the UTC hours
in [A, B) from the raw tables, in one transaction that holds new worker writes
back until it commits: idempotent, safe while workers run.

``retention --days N`` deletes raw events (by event time) and dead letters (by
arrival) older than N days, in small batches, without touching the rollups.
Keep exactly-once for replays older than that with MAX_EVENT_AGE_SECONDS below
N days: a purged event that is re-published is otherwise stored and counted again.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from pipeline import sql
from pipeline.errors import ConfigError
from pipeline.timeparse import parse_timestamp, us_to_datetime

__all__ = ["parse_hour", "rebuild_rollups", "apply_retention", "reset_offsets", "RebuildResult"]


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
    conn = await asyncpg.connect(dsn)
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
    conn = await asyncpg.connect(dsn)
    deleted: dict[str, int] = {}
    try:
        for table, statement in (
            ("raw_events", sql.DELETE_OLD_RAW_EVENTS),
            ("raw_agent_events", sql.DELETE_OLD_RAW_AGENT_EVENTS),
            ("dead_letters", sql.DELETE_OLD_DEAD_LETTERS),
        ):
            total = 0
            while True:
                status = await conn.execute(statement, cutoff, batch)
                n = int(status.split()[-1])
                total += n
                print(f"\r{table}: deleted {total}", end="", file=sys.stderr, flush=True)
                if n < batch:
                    break
                await asyncio.sleep(0)  # one short transaction per batch
            print(file=sys.stderr)
            deleted[table] = total
    finally:
        await conn.close()
    return deleted


async def reset_offsets(dsn: str, topic: str, offset: int, partition: int | None) -> int:
    """Move the durable offsets back (a replay): workers resume there on their next assignment.

    Re-processing is safe by design: replayed events are found in the raw tables
    and add nothing. Restart the workers (or scale them) to trigger the seek.
    """
    if offset < 0:
        raise ConfigError("--to-offset must be 0 or more")
    conn = await asyncpg.connect(dsn)
    try:
        status = await conn.execute(sql.RESET_PROGRESS, topic, offset, partition)
    finally:
        await conn.close()
    return int(status.split()[-1])
