"""``python -m pipeline query``: the rollups of a time range, without psql.

Product events (``rollup_channel_hourly``) by hour, day or channel, with
``--channel`` and ``--event-name`` filters; unique users are counted from the
per-hour user sets (``rollup_channel_users``): distinct users per bucket, never
a sum of hourly uniques. ``--agents``: the agent rollups (runs, succeeded,
failed, success rate, cost, average latency) by hour, day, tenant, agent or
workflow, with ``--tenant``, ``--agent``, ``--workflow``. The range covers the
hours whose start lies in ``[--from, --to)``; by default the last 24 hours, the
current one included. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from pipeline.core.timeparse import us_to_datetime
from pipeline.core.window import HOUR_US, hour_start_us
from pipeline.errors import ConfigError
from pipeline.ops.textable import format_table
from pipeline.ops.timearg import parse_time_option
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.connect import connect
from pipeline.sink.reconcile import AGENT_COUNTERS

__all__ = ["AGENT_GROUPS", "CHANNEL_GROUPS", "QuerySpec", "parse_query", "run_query"]

CHANNEL_GROUPS = ("hour", "day", "channel")
AGENT_GROUPS = ("hour", "day", "tenant", "agent", "workflow")


@dataclass(frozen=True)
class QuerySpec:
    from_us: int
    to_us: int
    group_by: str = "hour"
    agents: bool = False
    channel: str | None = None
    event_name: str | None = None
    tenant: str | None = None
    agent: str | None = None
    workflow: str | None = None


def parse_query(
    now_us: int,
    start: str | None = None,
    end: str | None = None,
    group_by: str | None = None,
    agents: bool = False,
    channel: str | None = None,
    event_name: str | None = None,
    tenant: str | None = None,
    agent: str | None = None,
    workflow: str | None = None,
) -> QuerySpec:
    """The options as a :class:`QuerySpec`; ConfigError naming the option that is wrong."""
    for option, value in (
        ("--channel", channel),
        ("--event-name", event_name),
        ("--tenant", tenant),
        ("--agent", agent),
        ("--workflow", workflow),
    ):
        if value is not None and (not value or "\x00" in value):
            raise ConfigError(f"{option}: give a name (not empty)")
    if agents:
        for option, value in (("--channel", channel), ("--event-name", event_name)):
            if value is not None:
                raise ConfigError(
                    f"{option} filters product events; --agents shows agent runs "
                    "(filter those with --tenant, --agent, --workflow)"
                )
    else:
        for option, value in (("--tenant", tenant), ("--agent", agent), ("--workflow", workflow)):
            if value is not None:
                raise ConfigError(f"{option} filters agent runs: add --agents")
    groups = AGENT_GROUPS if agents else CHANNEL_GROUPS
    group = group_by or "hour"
    if group not in groups:
        kind = "with --agents" if agents else "for product events (--agents: agent runs)"
        raise ConfigError(f"--group-by {group!r}: one of {', '.join(groups)} {kind}")
    to_us = hour_start_us(now_us) + HOUR_US if end is None else parse_time_option(end, "--to", 0)
    from_us = to_us - 24 * HOUR_US if start is None else parse_time_option(start, "--from", 0)
    if from_us >= to_us:
        raise ConfigError(
            f"--to ({_iso(us_to_datetime(to_us))}) must be later than "
            f"--from ({_iso(us_to_datetime(from_us))})"
        )
    return QuerySpec(from_us, to_us, group, agents, channel, event_name, tenant, agent, workflow)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _bucket(value: Any, group: str) -> str:
    if group == "hour":
        return _iso(value)
    if group == "day":
        return str(value.strftime("%Y-%m-%d"))
    return str(value)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


async def query_rollups(dsn: str, q: QuerySpec) -> dict[str, Any]:
    """The query's result as one JSON-ready object (what ``--json`` prints)."""
    start, end = us_to_datetime(q.from_us), us_to_datetime(q.to_us)
    conn = await connect(dsn)
    try:
        if q.agents:
            args: tuple[Any, ...] = (start, end, q.tenant, q.agent, q.workflow)
            rows = await conn.fetch(sql.QUERY_AGENT_BUCKETS[q.group_by], *args)
            totals: dict[str, Any] | None = None
        else:
            args = (start, end, q.event_name, q.channel)
            rows = await conn.fetch(sql.CHANNEL_BUCKETS[q.group_by], *args)
            totals = dict(await conn.fetchrow(sql.CHANNEL_TOTALS, *args))
    finally:
        await conn.close()
    doc: dict[str, Any] = {
        "table": "rollup_agent_hourly" if q.agents else "rollup_channel_hourly",
        "from": _iso(start),
        "to": _iso(end),
        "group_by": q.group_by,
    }
    if q.agents:
        buckets = [_agent_row(_bucket(r["bucket"], q.group_by), dict(r)) for r in rows]
        sums = {name: sum(dict(r)[name] for r in rows) for name in AGENT_COUNTERS}
        doc["filters"] = {"tenant_id": q.tenant, "agent_id": q.agent, "workflow_id": q.workflow}
        doc["totals"] = {k: v for k, v in _agent_row("", sums).items() if k != "bucket"}
    else:
        assert totals is not None
        buckets = [
            {
                "bucket": _bucket(r["bucket"], q.group_by),
                "events": r["events"],
                "unique_users": r["unique_users"],
                "late_events": r["late_events"],
            }
            for r in rows
        ]
        doc["filters"] = {"channel": q.channel, "event_name": q.event_name}
        doc["totals"] = totals
    doc["buckets"] = buckets
    return doc


def _agent_row(bucket: str, r: dict[str, Any]) -> dict[str, Any]:
    finished = r["succeeded"] + r["failed"]
    samples = r["latency_ms_count"]
    return {
        "bucket": bucket,
        "runs": r["runs"],
        "succeeded": r["succeeded"],
        "failed": r["failed"],
        "events": r["events"],
        # Of the runs that finished (succeeded + failed); null when none did.
        "success_rate": _rate(r["succeeded"], finished),
        "cost_usd": round(r["cost_usd"], 6),
        "avg_latency_ms": round(r["latency_ms_sum"] / samples, 3) if samples else None,
        "latency_samples": samples,
    }


def run_query(settings: Settings, q: QuerySpec, as_json: bool) -> int:
    doc = asyncio.run(query_rollups(settings.require_database_url(), q))
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    head = "hour (UTC)" if q.group_by == "hour" else q.group_by
    filters = ", ".join(f"{k}={v}" for k, v in doc["filters"].items() if v is not None)
    print(
        f"{doc['table']}: hours starting in [{doc['from']}, {doc['to']}), by {q.group_by}"
        + (f", {filters}" if filters else "")
    )
    t = doc["totals"]
    if q.agents:
        print(
            format_table(
                [head, "runs", "succeeded", "failed", "success rate", "cost usd", "avg latency ms"],
                [_agent_cells(b, q.group_by) for b in doc["buckets"]],
            )
        )
        print(
            f"total: {t['runs']} runs, {t['succeeded']} succeeded, {t['failed']} failed, "
            f"success rate {_percent(t['success_rate'])}, cost {t['cost_usd']:.4f} usd, "
            f"avg latency {_ms(t['avg_latency_ms'])} ms"
        )
    else:
        print(
            format_table(
                [head, "events", "unique users", "late"],
                [
                    [
                        _cell(b["bucket"], q.group_by),
                        b["events"],
                        b["unique_users"],
                        b["late_events"],
                    ]
                    for b in doc["buckets"]
                ],
            )
        )
        print(
            f"total: {t['events']} events, {t['unique_users']} unique users "
            f"(distinct over the range), {t['late_events']} late"
        )
    return 0


def _cell(bucket: str, group: str) -> str:
    """An hour as ``2026-11-21 10:00`` in the table (JSON keeps RFC 3339)."""
    return bucket.replace("T", " ")[:16] if group == "hour" else bucket


def _agent_cells(b: dict[str, Any], group: str) -> list[object]:
    return [
        _cell(b["bucket"], group),
        b["runs"],
        b["succeeded"],
        b["failed"],
        _percent(b["success_rate"]),
        f"{b['cost_usd']:.4f}",
        _ms(b["avg_latency_ms"]),
    ]


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
