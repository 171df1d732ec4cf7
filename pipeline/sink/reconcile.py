"""Is everything processed, and do the rollups add up? For tests, the demo and operators.

``wait_until_processed`` polls the durable offsets (``partition_progress``) until
they reach the end offsets a publisher was acknowledged; ``reconcile`` compares
the rollup tables with a ``GROUP BY`` of the raw tables, latency histograms
included (an hour stored before migration 0008 shows as a mismatch until
``rebuild-rollups`` fills its histograms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.sink import sql
from pipeline.sink.connect import connect
from pipeline.sink.writer import load_progress

__all__ = [
    "AGENT_COUNTERS",
    "Reconciliation",
    "durable_offsets",
    "latency_histograms_as_rows",
    "reconcile",
    "rollups_as_rows",
    "wait_until_processed",
]


@dataclass
class Reconciliation:
    product_events: int
    agent_events: int
    late_events: int
    dead_letters: dict[str, int]
    channel_mismatches: list[dict[str, Any]] = field(default_factory=list)
    agent_mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.product_events + self.agent_events

    @property
    def consistent(self) -> bool:
        return not self.channel_mismatches and not self.agent_mismatches


async def wait_until_processed(
    dsn: str,
    topic: str,
    end_offsets: Mapping[int, int],
    timeout: float,
    on_progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.2,
) -> None:
    """Return once every partition's durable offset reached ``end_offsets`` (polled)."""
    target = sum(end_offsets.values())
    deadline = time.monotonic() + timeout
    conn = await connect(dsn)
    try:
        while True:
            durable = await load_progress(conn, topic)
            done = sum(min(durable.get(p, (0, None))[0], end) for p, end in end_offsets.items())
            if on_progress is not None:
                on_progress(done, target)
            if done >= target:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"processed {done} of {target} messages in {timeout:.0f}s")
            await asyncio.sleep(poll_s)
    finally:
        await conn.close()


async def durable_offsets(dsn: str, topic: str) -> dict[int, int]:
    """``{partition: next_offset}`` of ``topic``: where the workers would resume."""
    conn = await connect(dsn)
    try:
        return {p: offset for p, (offset, _) in (await load_progress(conn, topic)).items()}
    finally:
        await conn.close()


async def reconcile(dsn: str) -> Reconciliation:
    conn = await connect(dsn)
    try:
        totals = await conn.fetchrow(sql.TOTALS)
        dead = {r["reason"]: r["n"] for r in await conn.fetch(sql.DEAD_LETTER_COUNTS)}
        return Reconciliation(
            product_events=totals["product_events"],
            agent_events=totals["agent_events"],
            late_events=totals["late_events"],
            dead_letters=dead,
            channel_mismatches=[dict(r) for r in await conn.fetch(sql.CHANNEL_ROLLUP_MISMATCHES)],
            agent_mismatches=[dict(r) for r in await conn.fetch(sql.AGENT_ROLLUP_MISMATCHES)],
        )
    finally:
        await conn.close()


# The additive columns of an agent rollup row, in the order the generator's rows hold them.
AGENT_COUNTERS = (
    "runs",
    "succeeded",
    "failed",
    "events",
    "cost_usd",
    "latency_ms_sum",
    "latency_ms_count",
)


def _agent_key(r: Any) -> list[Any]:
    """An agent rollup row's key as the generator writes it: the hour, then the five ids."""
    ids = ("tenant_id", "workspace_id", "project_id", "agent_id", "workflow_id")
    return [r["hour"].isoformat(), *(r[name] for name in ids)]


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


async def rollups_as_rows(dsn: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """Both rollup tables in the generator's ``expected()`` row shape."""
    conn = await connect(dsn)
    try:
        channel = [
            [
                r["hour"].isoformat(),
                r["channel"],
                r["event_name"],
                r["event_count"],
                r["unique_users"],
            ]
            for r in await conn.fetch(sql.CHANNEL_ROLLUPS)
        ]
        agent = [
            [*_agent_key(r), *(_rounded(r[name]) for name in AGENT_COUNTERS)]
            for r in await conn.fetch(sql.AGENT_ROLLUPS)
        ]
        return channel, agent
    finally:
        await conn.close()


async def latency_histograms_as_rows(dsn: str) -> list[list[Any]]:
    """Every agent rollup row's key and ``latency_hist``, in the shape of the
    generator's ``expected()["agent_latency_histograms"]``."""
    conn = await connect(dsn)
    try:
        return [
            [*_agent_key(r), list(r["latency_hist"])] for r in await conn.fetch(sql.AGENT_ROLLUPS)
        ]
    finally:
        await conn.close()
