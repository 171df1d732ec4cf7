"""The PostgreSQL sink: one transaction per batch, an exactly-once effect.

In ONE transaction: insert raw events ``ON CONFLICT DO NOTHING``, take the rows
really inserted (``RETURNING``), aggregate only those, add the partial sums to
the rollups, store the dead letters, and move the per-partition next offset and
watermark forward. A replayed batch inserts nothing new and so adds nothing.

Transient failures (connection lost, database restarting, deadlock) are retried
here with backoff, forever, unless the caller says to abandon the batch (its
partitions were revoked or the worker stops): a failure must never escape to
Faust's ``take()``, which would ack the events anyway (DESIGN.md, traps).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from pipeline import sql
from pipeline.batch import BatchPlan
from pipeline.errors import FatalSinkError
from pipeline.events import AgentEvent, ProductEvent
from pipeline.rollup import aggregate_agents, aggregate_channels, user_rows

__all__ = ["TRANSIENT_ERRORS", "Abandoned", "Sink", "WriteResult", "load_progress"]

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
)


class Abandoned(Exception):
    """The batch was given up (revocation or shutdown); nothing of it was committed."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int  # raw rows really inserted (product + agent)
    duplicates: int  # rows the database already held
    dead_lettered: int
    attempts: int


async def load_progress(
    conn: asyncpg.Connection | asyncpg.Pool, topic: str
) -> dict[int, tuple[int, int | None]]:
    """Durable ``{partition: (next_offset, watermark_us)}`` for ``topic``."""
    rows = await conn.fetch(sql.SELECT_PROGRESS, topic)
    return {r["partition"]: (r["next_offset"], r["watermark_us"]) for r in rows}


class Sink:
    """Writes batch plans to PostgreSQL through a pool; see the module docstring."""

    def __init__(
        self, pool: Callable[[], Awaitable[asyncpg.Pool]], retry_max_seconds: float = 10.0
    ) -> None:
        self._pool = pool  # called per attempt: the pool is opened lazily, once
        self._retry_max = retry_max_seconds
        self.retrying = False  # true while a batch waits out a database failure

    async def write(
        self, plan: BatchPlan, abandon: Callable[[], bool] = lambda: False
    ) -> WriteResult:
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            # Only a batch that needs a retry is given up: on a graceful stop the
            # batch in hand still gets its attempt (and commits if it can).
            if attempt > 1 and abandon():
                self.retrying = False
                raise Abandoned()
            try:
                result = await self._write_once(plan, attempt)
                self.retrying = False
                return result
            except TRANSIENT_ERRORS as exc:
                self.retrying = True
                log.warning(
                    "sink retry", extra={"attempt": attempt, "error": repr(exc), "delay_s": delay}
                )
            except asyncpg.PostgresError as exc:
                raise FatalSinkError(
                    f"the sink cannot write ({type(exc).__name__}): {exc}"
                ) from exc
            await _sleep_unless(abandon, delay)
            delay = min(delay * 2, self._retry_max)

    async def _write_once(self, plan: BatchPlan, attempt: int) -> WriteResult:
        pool = await self._pool()
        async with pool.acquire() as conn, conn.transaction():
            product_keys = await _insert_products(conn, plan.topic, plan.products)
            agent_keys = await _insert_agents(conn, plan.topic, plan.agents)
            stored_products = [e for e in plan.products if e.dedup_key in product_keys]
            await _add_channel_rollups(conn, stored_products)
            await _add_agent_rollups(conn, [e for e in plan.agents if e.dedup_key in agent_keys])
            await _insert_dead_letters(conn, plan)
            await _add_job_outcomes(conn, plan, product_keys)
            await _advance_progress(conn, plan)
        stored = len(product_keys) + len(agent_keys)
        return WriteResult(
            stored=stored,
            duplicates=len(plan.products) + len(plan.agents) - stored,
            dead_lettered=len(plan.dead),
            attempts=attempt,
        )


async def _sleep_unless(abandon: Callable[[], bool], delay: float) -> None:
    # Sleep in short steps so a revocation is noticed within ~0.1 s.
    loop = asyncio.get_running_loop()
    until = loop.time() + delay
    while not abandon() and loop.time() < until:
        await asyncio.sleep(min(0.1, until - loop.time()))


async def _insert_products(
    conn: asyncpg.Connection, topic: str, events: Sequence[ProductEvent]
) -> set[str]:
    if not events:
        return set()
    rows = await conn.fetch(
        sql.INSERT_RAW_EVENTS,
        [e.dedup_key for e in events],
        [e.event_name for e in events],
        [e.channel for e in events],
        [e.user_id for e in events],
        [e.ts_us for e in events],
        [e.payload.decode() for e in events],
        [e.source.partition for e in events],
        [e.source.offset for e in events],
        topic,
        [e.job[0] if e.job else None for e in events],
        [e.late for e in events],
    )
    return {r[0] for r in rows}


async def _insert_agents(
    conn: asyncpg.Connection, topic: str, events: Sequence[AgentEvent]
) -> set[str]:
    if not events:
        return set()
    rows = await conn.fetch(
        sql.INSERT_RAW_AGENT_EVENTS,
        [e.dedup_key for e in events],
        [e.event_type for e in events],
        [e.ts_us for e in events],
        [e.tenant_id for e in events],
        [e.workspace_id for e in events],
        [e.project_id for e in events],
        [e.agent_id for e in events],
        [e.workflow_id for e in events],
        [e.run_id for e in events],
        [e.status for e in events],
        [e.cost_usd for e in events],
        [e.latency_ms for e in events],
        [e.payload.decode() for e in events],
        [e.source.partition for e in events],
        [e.source.offset for e in events],
        topic,
        [e.late for e in events],
    )
    return {r[0] for r in rows}


async def _add_channel_rollups(conn: asyncpg.Connection, stored: Sequence[ProductEvent]) -> None:
    if not stored:
        return
    aggs = aggregate_channels(stored)
    users = user_rows(stored)
    new_users = await conn.fetch(sql.INSERT_CHANNEL_USERS, *_columns(users, 4))
    for r in new_users:
        aggs[(r["hour_us"], r["channel"], r["event_name"])].new_users = r["new_users"]
    keys = list(aggs)
    values = list(aggs.values())
    await conn.execute(
        sql.UPSERT_CHANNEL_ROLLUP,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [a.events for a in values],
        [a.new_users for a in values],
        [a.late for a in values],
        [a.first_us for a in values],
        [a.last_us for a in values],
    )


async def _add_agent_rollups(conn: asyncpg.Connection, stored: Sequence[AgentEvent]) -> None:
    if not stored:
        return
    aggs = aggregate_agents(stored)
    keys = list(aggs)
    v = list(aggs.values())
    await conn.execute(
        sql.UPSERT_AGENT_ROLLUP,
        *_columns(keys, 6),
        [a.runs for a in v],
        [a.succeeded for a in v],
        [a.failed for a in v],
        [a.events for a in v],
        [a.cost_usd for a in v],
        [a.latency_ms_sum for a in v],
        [a.latency_ms_count for a in v],
        [a.late for a in v],
    )


async def _insert_dead_letters(conn: asyncpg.Connection, plan: BatchPlan) -> None:
    if not plan.dead:
        return
    d = plan.dead
    await conn.execute(
        sql.INSERT_DEAD_LETTERS,
        [x.reason for x in d],
        [x.field for x in d],
        [x.detail for x in d],
        [x.raw for x in d],
        [x.source.topic for x in d],
        [x.source.partition for x in d],
        [x.source.offset for x in d],
        [x.source.index for x in d],
    )


async def _add_job_outcomes(conn: asyncpg.Connection, plan: BatchPlan, inserted: set[str]) -> None:
    # One outcome per job event; a copy stored in this batch outranks its duplicates.
    best: dict[tuple[str, int], str] = {}
    decided = [*plan.job_outcomes]
    for e in plan.products:
        if e.job:
            decided.append((*e.job, "stored" if e.dedup_key in inserted else "duplicate"))
    for job_id, seq, outcome in decided:
        if _RANK[outcome] > _RANK.get(best.get((job_id, seq), ""), -1):
            best[(job_id, seq)] = outcome
    if best:
        rows = sorted((job_id, seq, outcome) for (job_id, seq), outcome in best.items())
        await conn.execute(sql.ADD_JOB_OUTCOMES, *_columns(rows, 3))


_RANK = {"duplicate": 0, "dead_lettered": 1, "stored": 2}


async def _advance_progress(conn: asyncpg.Connection, plan: BatchPlan) -> None:
    if not plan.progress:
        return
    parts = sorted(plan.progress)
    await conn.execute(
        sql.UPSERT_PROGRESS,
        plan.topic,
        parts,
        [plan.progress[p].next_offset for p in parts],
        [plan.progress[p].watermark_us for p in parts],
    )


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[row[i] for row in rows] for i in range(width)]
