"""The analysts' read API (``GET /metrics``, ``/v1/metrics/overview``, ``/v1/runs/failures``).

``GET /metrics`` sums ``rollup_channel_hourly`` over the hours whose start lies
in ``[from, to)`` and takes unique users from ``rollup_channel_users`` (a count
of distinct users per bucket, never a sum of hourly uniques).
``GET /v1/metrics/overview`` sums ``rollup_agent_hourly`` over the last
``window_hours`` UTC hours, the current one included; its latency percentiles
come from the rows' summed latency histograms (``pipeline/core/latency.py``:
nearest-rank, within 4.43% of the exact value). ``GET /v1/runs/failures`` lists
the newest ``run.failed`` events of the same window and filters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from pipeline.core import latency
from pipeline.core.timeparse import parse_rfc3339, parse_timestamp, us_to_datetime
from pipeline.core.window import HOUR_US, hour_start_us
from producers.gateway import queries
from producers.gateway.http import HttpError, error

__all__ = [
    "AGENT_FILTERS",
    "DEFAULT_FAILURES",
    "MAX_FAILURES",
    "MAX_SPAN_HOURS",
    "PERCENTILES",
    "FailuresQuery",
    "MetricsQuery",
    "OverviewQuery",
    "agent_overview",
    "channel_metrics",
    "parse_failures_query",
    "parse_metrics_query",
    "parse_overview_query",
    "run_failures",
]

GROUPS = ("hour", "day", "channel")
MAX_SPAN_HOURS = 366 * 24
AGENT_FILTERS = ("tenant_id", "workspace_id", "project_id", "agent_id", "workflow_id")
PERCENTILES = (50, 95, 99)
DEFAULT_FAILURES, MAX_FAILURES = 50, 500
_NUMBER = re.compile(r"\d{1,15}(\.\d{1,9})?\Z")


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    from_us: int
    to_us: int
    group_by: str = "hour"
    event_name: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class OverviewQuery:
    window_hours: int
    from_us: int
    to_us: int
    filters: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class FailuresQuery:
    window: OverviewQuery
    limit: int


def parse_metrics_query(query: Mapping[str, str], now_us: int) -> MetricsQuery:
    """``event_name``, ``channel``, ``from``, ``to``, ``group_by``; 400 naming each bad one.

    Defaults: ``to`` = the end of the current UTC hour, ``from`` = 24 hours before ``to``,
    ``group_by`` = hour.
    """
    errors: list[dict[str, Any]] = []
    event_name = _text(query, "event_name", 128, errors)
    channel = _text(query, "channel", 64, errors)
    group_by = query.get("group_by", "hour")
    if group_by not in GROUPS:
        errors.append(error("group_by", f"must be one of {', '.join(GROUPS)}"))
    to_us = _time(query, "to", errors)
    from_us = _time(query, "from", errors)
    if not errors:
        to_us = hour_start_us(now_us) + HOUR_US if to_us is None else to_us
        from_us = to_us - 24 * HOUR_US if from_us is None else from_us
        if from_us >= to_us:
            errors.append(error("to", "must be later than from"))
        elif to_us - from_us > MAX_SPAN_HOURS * HOUR_US:
            errors.append(error("from", f"from..to may span at most {MAX_SPAN_HOURS} hours"))
    if errors:
        raise HttpError(400, errors)
    assert from_us is not None and to_us is not None
    return MetricsQuery(from_us, to_us, group_by, event_name, channel)


def parse_overview_query(query: Mapping[str, str], now_us: int) -> OverviewQuery:
    """``window_hours`` (1..8784, default 24) and the optional agent filters."""
    errors: list[dict[str, Any]] = []
    q = _window(query, now_us, errors)
    if errors:
        raise HttpError(400, errors)
    return q


def parse_failures_query(query: Mapping[str, str], now_us: int) -> FailuresQuery:
    """The overview's window and filters, and ``limit`` (1..500, default 50)."""
    errors: list[dict[str, Any]] = []
    q = _window(query, now_us, errors)
    limit = _whole(query, "limit", DEFAULT_FAILURES, MAX_FAILURES, errors)
    if errors:
        raise HttpError(400, errors)
    return FailuresQuery(q, limit)


def _window(query: Mapping[str, str], now_us: int, errors: list[Any]) -> OverviewQuery:
    hours = _whole(query, "window_hours", 24, MAX_SPAN_HOURS, errors)
    filters = tuple(_text(query, name, 128, errors) for name in AGENT_FILTERS)
    to_us = hour_start_us(now_us) + HOUR_US
    return OverviewQuery(hours, to_us - hours * HOUR_US, to_us, filters)


def _whole(query: Mapping[str, str], name: str, default: int, most: int, errors: list[Any]) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    # isdigit() alone takes "²", which int() refuses: that was a 500.
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 5 else 0
    if not 1 <= value <= most:
        errors.append(error(name, f"must be a whole number from 1 to {most}"))
    return value


def _text(query: Mapping[str, str], name: str, max_len: int, errors: list[Any]) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= max_len or "\x00" in value:
        errors.append(error(name, f"must be 1 to {max_len} characters (no NUL)"))
        return None
    return value


def _time(query: Mapping[str, str], name: str, errors: list[Any]) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # An unencoded "+05:30" arrives as " 05:30": a space is never valid there.
    text = raw.strip().replace(" ", "+")
    try:
        if _NUMBER.match(text):
            return parse_timestamp(float(text) if "." in text else int(text))
        return parse_rfc3339(text)
    except ValueError as exc:
        errors.append(error(name, f"must be unix seconds or an RFC 3339 date-time: {exc}"))
        return None


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def channel_metrics(conn: asyncpg.Connection, q: MetricsQuery) -> dict[str, Any]:
    args = (us_to_datetime(q.from_us), us_to_datetime(q.to_us), q.event_name, q.channel)
    rows = await conn.fetch(queries.METRICS_BUCKETS[q.group_by], *args)
    totals = await conn.fetchrow(queries.METRICS_TOTALS, *args)
    key = "channel" if q.group_by == "channel" else "start"
    return {
        "event_name": q.event_name,
        "channel": q.channel,
        "from": _iso(args[0]),
        "to": _iso(args[1]),
        "group_by": q.group_by,
        "totals": {"events": totals["events"], "unique_users": totals["unique_users"]},
        "buckets": [
            {
                key: r["bucket"] if key == "channel" else _iso(r["bucket"]),
                "events": r["events"],
                "unique_users": r["unique_users"],
                "late_events": r["late_events"],
            }
            for r in rows
        ],
    }


async def agent_overview(
    conn: asyncpg.Connection, q: OverviewQuery, tenants: list[str] | None = None
) -> dict[str, Any]:
    """The agent rollups of the window; only ``tenants``' rows unless None (every tenant)."""
    start, end = us_to_datetime(q.from_us), us_to_datetime(q.to_us)
    r = await conn.fetchrow(queries.AGENT_OVERVIEW, start, end, *q.filters, tenants)
    finished = r["succeeded"] + r["failed"]
    samples = r["latency_ms_count"]
    hist = list(r["latency_hist"])
    return {
        "window_hours": q.window_hours,
        "from": _iso(start),
        "to": _iso(end),
        "filters": dict(zip(AGENT_FILTERS, q.filters, strict=True)),
        "total_runs": r["runs"],
        "succeeded": r["succeeded"],
        "failed": r["failed"],
        "events": r["events"],
        # Of the runs that finished in the window; 0.0 when none did.
        "success_rate": round(r["succeeded"] / finished, 6) if finished else 0.0,
        "total_cost_usd": round(r["cost_usd"], 6),
        "avg_latency_ms": round(r["latency_ms_sum"] / samples, 3) if samples else 0.0,
        # Nearest-rank, from the histograms (pipeline/core/latency.py): within 4.43% of
        # the exact value; 0.0 without samples, as the average.
        **{f"p{p}_latency_ms": _rounded(latency.percentile(hist, p)) for p in PERCENTILES},
        "latency_samples": samples,
        # Fewer than latency_samples: some hours predate the histograms (migration
        # 0008) and are not in the percentiles until rebuild-rollups fills them.
        "latency_percentile_samples": latency.total(hist),
    }


def _rounded(ms: float | None) -> float:
    return 0.0 if ms is None else round(ms, 3)


async def run_failures(
    conn: asyncpg.Connection, q: FailuresQuery, tenants: list[str] | None = None
) -> dict[str, Any]:
    """The newest failed runs of the window, newest first (ties: the higher event id)."""
    w = q.window
    start, end = us_to_datetime(w.from_us), us_to_datetime(w.to_us)
    rows = await conn.fetch(queries.RUN_FAILURES, start, end, *w.filters, tenants, q.limit)
    return {
        "window_hours": w.window_hours,
        "from": _iso(start),
        "to": _iso(end),
        "filters": dict(zip(AGENT_FILTERS, w.filters, strict=True)),
        "limit": q.limit,
        "failures": [
            {
                "event_id": r["dedup_key"],
                "run_id": r["run_id"],
                "occurred_at": _iso(r["occurred_at"]),
                "tenant_id": r["tenant_id"],
                "workspace_id": r["workspace_id"],
                "project_id": r["project_id"],
                "agent_id": r["agent_id"],
                "workflow_id": r["workflow_id"],
                "status": r["status"],
                "latency_ms": r["latency_ms"],
                "cost_usd": r["cost_usd"],
                "error": None if r["error"] is None else orjson.loads(r["error"]),
            }
            for r in rows
        ],
    }
