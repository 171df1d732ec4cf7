"""The PostgreSQL sink: one transaction per batch, an exactly-once effect.

In ONE transaction: COPY the batch's events into staging tables, insert them
into the raw tables ``ON CONFLICT DO NOTHING`` and keep the rows really
inserted (``RETURNING``, ``sql.INSERT_EVENTS``), store the dead letters, move
the per-partition next offset and watermark forward, and last add the kept
rows to the rollups and user sets (``sql.ADD_EVENT_ROLLUPS``), rows every
worker writes, so their locks are held only for the transaction's tail. A
replayed batch inserts nothing new and so adds nothing.

A row PostgreSQL refuses for its content (a data exception, SQLSTATE class
22, or a program limit, class 54) never stops the worker: the batch's events
are tried one by one inside a transaction that is rolled back, and the ones
refused come back in :class:`Unstorable`, to be dead-lettered as
``unstorable``. Only a refusal no single event explains is fatal.

Transient failures (connection lost, database restarting, deadlock) are retried
here with backoff, forever, unless the caller says to abandon the batch (its
partitions were revoked or the worker stops): a failure must never escape to
Faust's ``take()``, which would ack the events anyway (docs/design.md, "The Faust seam").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pipeline.core.events import AgentEvent, Event, ProductEvent
from pipeline.core.planner import BatchPlan
from pipeline.errors import FatalSinkError
from pipeline.sink import sql

__all__ = ["TRANSIENT_ERRORS", "Abandoned", "Sink", "Unstorable", "WriteResult", "load_progress"]

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


# What an event's content can make PostgreSQL refuse.
CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
)


class Abandoned(Exception):
    """The batch was given up (revocation or shutdown); nothing of it was committed."""


class Unstorable(Exception):
    """PostgreSQL refused these events of the batch for their content; nothing was committed."""

    def __init__(self, refused: list[tuple[Event, str]]) -> None:
        super().__init__(f"{len(refused)} events refused by PostgreSQL")
        self.refused = refused


class _Undo(Exception):
    """Rolls a trial write back."""


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
        self,
        plan: BatchPlan,
        abandon: Callable[[], bool] = lambda: False,
        before_commit: asyncio.Future[None] | None = None,
    ) -> WriteResult:
        """Write ``plan`` in one transaction; ``before_commit`` is awaited before it commits.

        ``before_commit`` (a task: it may be awaited again by a retry) runs
        alongside the writes; its failure rolls the transaction back.
        """
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
                result = await self._attempt(plan, attempt, before_commit)
                self.retrying = False
                return result
            except TRANSIENT_ERRORS as exc:
                self.retrying = True
                log.warning(
                    "sink retry",
                    extra={
                        "attempt": attempt,
                        "error": repr(exc),
                        "delay_s": delay,
                        "setting": "DATABASE_URL",
                    },
                )
            except asyncpg.PostgresError as exc:
                raise FatalSinkError(
                    f"the sink cannot write ({type(exc).__name__}): {exc}"
                ) from exc
            await _sleep_unless(abandon, delay)
            delay = min(delay * 2, self._retry_max)

    async def _attempt(
        self, plan: BatchPlan, attempt: int, before_commit: asyncio.Future[None] | None
    ) -> WriteResult:
        try:
            return await self._write_once(plan, attempt, before_commit)
        except CONTENT_ERRORS as exc:
            refused = await self._isolate(plan)
            if not refused:
                raise FatalSinkError(
                    f"the sink cannot write ({type(exc).__name__}), and no single event"
                    f" of the batch explains it: {exc}"
                ) from exc
            self.retrying = False
            log.warning(
                "PostgreSQL refused events for their content; dead-lettering them",
                extra={"refused": len(refused), "error": str(exc)},
            )
            raise Unstorable(refused) from exc

    async def _isolate(self, plan: BatchPlan) -> list[tuple[Event, str]]:
        """The events PostgreSQL refuses, each tried alone; nothing is kept."""
        refused: list[tuple[Event, str]] = []
        pool = await self._pool()
        async with pool.acquire() as conn:
            outer = conn.transaction()
            await outer.start()
            try:
                await conn.execute(sql.CREATE_STAGING)
                for event in plan.events:
                    try:
                        async with conn.transaction():  # a savepoint per event
                            if isinstance(event, ProductEvent):
                                await _insert_products(conn, plan.topic, [event])
                            else:
                                await _insert_agents(conn, plan.topic, [event])
                            raise _Undo
                    except _Undo:
                        pass
                    except CONTENT_ERRORS as exc:
                        why = f"PostgreSQL refused it ({type(exc).__name__}): {exc}"
                        refused.append((event, why))
            finally:
                await outer.rollback()
        return refused

    async def _write_once(
        self, plan: BatchPlan, attempt: int, before_commit: asyncio.Future[None] | None
    ) -> WriteResult:
        pool = await self._pool()
        async with pool.acquire() as conn, conn.transaction():
            if plan.products or plan.agents:
                await conn.execute(sql.CREATE_STAGING)
            stored_products, job_keys = await _insert_products(conn, plan.topic, plan.products)
            stored_agents = await _insert_agents(conn, plan.topic, plan.agents)
            await _insert_dead_letters(conn, plan)
            await _advance_progress(conn, plan)
            if before_commit is not None:
                await before_commit
            # Rows other workers write too, last: their locks are held until COMMIT.
            if stored_products:
                await conn.execute(sql.ADD_EVENT_ROLLUPS)
            if stored_agents:
                await conn.execute(sql.ADD_AGENT_ROLLUPS)
            await _add_job_outcomes(conn, plan, job_keys)
        stored = stored_products + stored_agents
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


async def _stage(
    conn: asyncpg.Connection, staging: tuple[str, tuple[str, ...]], records: list[tuple[Any, ...]]
) -> None:
    """COPY (binary) ``records`` into one of the session's staging tables (``sql.STAGE_*``)."""
    table, columns = staging
    await conn.copy_records_to_table(table, columns=columns, records=records)


async def _insert_products(
    conn: asyncpg.Connection, topic: str, events: Sequence[ProductEvent]
) -> tuple[int, set[str]]:
    """Stage, insert and keep the new ones: (how many new, new job keys)."""
    if not events:
        return 0, set()
    await _stage(
        conn,
        sql.STAGE_EVENTS,
        [
            (
                e.dedup_key,
                e.event_name,
                e.channel,
                e.user_id,
                e.ts_us,
                e.payload,
                e.source.partition,
                e.source.offset,
                e.job[0] if e.job else None,
                e.late,
            )
            for e in events
        ],
    )
    row = await conn.fetchrow(sql.INSERT_EVENTS, topic)
    return row["stored"], set(row["job_keys"] or ())


async def _insert_agents(conn: asyncpg.Connection, topic: str, events: Sequence[AgentEvent]) -> int:
    """Stage, insert and keep the new ones: how many were new."""
    if not events:
        return 0
    await _stage(
        conn,
        sql.STAGE_AGENT_EVENTS,
        [
            (
                e.dedup_key,
                e.event_type,
                e.ts_us,
                e.tenant_id,
                e.workspace_id,
                e.project_id,
                e.agent_id,
                e.workflow_id,
                e.run_id,
                e.status,
                e.cost_usd,
                e.latency_ms,
                e.payload,
                e.source.partition,
                e.source.offset,
                e.late,
            )
            for e in events
        ],
    )
    stored: int = await conn.fetchval(sql.INSERT_AGENT_EVENTS, topic)
    return stored


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
