"""The hourly rollups of a set of events, in Python: the reference model.

The sink computes these partial sums inside PostgreSQL, from the rows its
INSERT really inserted (``sql.INSERT_EVENTS`` keeps them, ``sql.ADD_EVENT_ROLLUPS``
and ``sql.ADD_AGENT_ROLLUPS`` add them), in the same transaction. This module
states the same arithmetic plainly; the tests check the generator's expected
rollups and the SQL against it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.core import latency
from pipeline.core.events import AgentEvent, ProductEvent

__all__ = [
    "AgentAgg",
    "AgentKey",
    "ChannelAgg",
    "ChannelKey",
    "aggregate_agents",
    "aggregate_channels",
    "user_rows",
]

ChannelKey = tuple[int, str, str]  # hour_us, channel, event_name
AgentKey = tuple[
    int, str, str, str, str, str
]  # hour_us, tenant, workspace, project, agent, workflow


@dataclass(slots=True)
class ChannelAgg:
    events: int = 0
    late: int = 0
    first_us: int = 0
    last_us: int = 0
    new_users: int = 0  # filled from the sink's per-hour user set: exact uniques


@dataclass(slots=True)
class AgentAgg:
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    events: int = 0
    late: int = 0
    cost_usd: float = 0.0
    latency_ms_sum: float = 0.0
    latency_ms_count: int = 0
    # Per latency bucket (pipeline/core/latency.py), trailing zeros trimmed: latency_hist.
    latency_hist: list[int] = field(default_factory=list)


_RUN_COUNTERS = {"run.started": "runs", "run.completed": "succeeded", "run.failed": "failed"}


def aggregate_channels(events: Iterable[ProductEvent]) -> dict[ChannelKey, ChannelAgg]:
    out: dict[ChannelKey, ChannelAgg] = {}
    for e in events:
        key = (e.hour_us, e.channel, e.event_name)
        agg = out.get(key)
        if agg is None:
            agg = out[key] = ChannelAgg(first_us=e.ts_us, last_us=e.ts_us)
        agg.events += 1
        agg.late += e.late
        agg.first_us = min(agg.first_us, e.ts_us)
        agg.last_us = max(agg.last_us, e.ts_us)
    return dict(sorted(out.items()))


def user_rows(events: Iterable[ProductEvent]) -> list[tuple[int, str, str, str]]:
    """Distinct (hour, channel, event_name, user_id), sorted: the per-hour user sets."""
    return sorted({(e.hour_us, e.channel, e.event_name, e.user_id) for e in events})


def aggregate_agents(events: Iterable[AgentEvent]) -> dict[AgentKey, AgentAgg]:
    out: dict[AgentKey, AgentAgg] = {}
    for e in events:
        key = (e.hour_us, e.tenant_id, e.workspace_id, e.project_id, e.agent_id, e.workflow_id)
        agg = out.get(key)
        if agg is None:
            agg = out[key] = AgentAgg()
        agg.events += 1
        agg.late += e.late
        counter = _RUN_COUNTERS.get(e.event_type)
        if counter is not None:
            setattr(agg, counter, getattr(agg, counter) + 1)
        if e.cost_usd is not None:
            agg.cost_usd += e.cost_usd
        if e.latency_ms is not None:
            agg.latency_ms_sum += e.latency_ms
            agg.latency_ms_count += 1
            agg.latency_hist = latency.merge(agg.latency_hist, latency.histogram([e.latency_ms]))
    return dict(sorted(out.items()))
