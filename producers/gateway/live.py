"""The live page (``GET /live``) and its data (``GET /v1/live``): one snapshot of the pipeline.

``GET /v1/live?hours=24&dlq_interval=300`` answers, for the last ``hours`` UTC
hours (the current one included, as the overview counts them):

* ``channels``: events per hour of ``rollup_channel_hourly`` for the
  ``TOP_SERIES`` (channel, event_name) series with the most events, the others
  summed into one series;
* ``agents``: runs, succeeded, failed and success rate per hour of
  ``rollup_agent_hourly``, and the totals of ``GET /v1/metrics/overview``;
* ``completeness``: each hour as ``hour_completeness`` sees it;
* ``lag``: per partition, the lag the owning worker last reported in
  ``worker_status`` (workers report every 5 s; one not heard from for
  ``SILENT_AFTER_S`` owns nothing, as in ``python -m pipeline status``); the
  gateway never asks Kafka;
* ``dead_letters``: dead letters received per ``dlq_interval`` seconds, by reason.

Every list that follows the hours is dense (one entry per hour, oldest first),
so a client draws it without filling gaps. SQL lives in ``queries.py``; the
shaping functions here are pure. The page itself is ``live.html``: one
self-contained file (inline CSS and JavaScript, no external resource), served
with a Content-Security-Policy that allows only its own inline code and
requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg
import orjson

from pipeline.core.timeparse import us_to_datetime
from pipeline.core.window import HOUR_US, hour_start_us
from producers.gateway import queries
from producers.gateway.analytics import AGENT_FILTERS, OverviewQuery, agent_overview
from producers.gateway.http import HttpError, Response, error

__all__ = [
    "DLQ_INTERVALS",
    "FORGET_AFTER_S",
    "MAX_DLQ_INTERVALS",
    "MAX_HOURS",
    "SILENT_AFTER_S",
    "TOP_SERIES",
    "LiveQuery",
    "live_snapshot",
    "page",
    "parse_live_query",
    "shape_agents",
    "shape_channels",
    "shape_completeness",
    "shape_dead_letters",
    "shape_lag",
]

MAX_HOURS = 168
DLQ_INTERVALS = (60, 300, 600, 900, 1800, 3600)  # divide an hour: buckets start on the hour
MAX_DLQ_INTERVALS = MAX_HOURS * 12  # a week in 5-minute intervals
TOP_SERIES = 12
# As python -m pipeline status (pipeline/ops/status.py), which the gateway does not import.
SILENT_AFTER_S = 15.0
FORGET_AFTER_S = 60.0
_SECOND_US = 1_000_000


@dataclass(frozen=True, slots=True)
class LiveQuery:
    hours: int
    from_us: int  # the first hour's start
    to_us: int  # the end of the current hour
    dlq_interval_s: int
    now_us: int


def parse_live_query(query: Mapping[str, str], now_us: int) -> LiveQuery:
    """``hours`` (1..168, default 24), ``dlq_interval`` (seconds, default 300); 400 naming each."""
    errors: list[dict[str, Any]] = []
    hours = _whole(query.get("hours", "24"), 4)
    if not 1 <= hours <= MAX_HOURS:
        errors.append(error("hours", f"must be a whole number from 1 to {MAX_HOURS}"))
    interval = _whole(query.get("dlq_interval", "300"), 5)
    if interval not in DLQ_INTERVALS:
        choices = ", ".join(str(s) for s in DLQ_INTERVALS)
        errors.append(error("dlq_interval", f"must be one of {choices} (seconds)"))
    elif 1 <= hours <= MAX_HOURS and hours * 3600 // interval > MAX_DLQ_INTERVALS:
        shortest = min(s for s in DLQ_INTERVALS if hours * 3600 // s <= MAX_DLQ_INTERVALS)
        errors.append(
            error(
                "dlq_interval",
                f"over {hours} hours must be at least {shortest} seconds"
                f" (at most {MAX_DLQ_INTERVALS} intervals)",
            )
        )
    if errors:
        raise HttpError(400, errors)
    to_us = hour_start_us(now_us) + HOUR_US
    return LiveQuery(hours, to_us - hours * HOUR_US, to_us, interval, now_us)


def _whole(raw: str, digits: int) -> int:
    """ASCII digits only (``str.isdigit`` accepts "²", which ``int`` refuses); else 0."""
    return int(raw) if re.fullmatch(rf"[0-9]{{1,{digits}}}", raw) else 0


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _iso_us(us: int) -> str:
    return _iso(us_to_datetime(us))


def _hour_index(q: LiveQuery, hour: datetime) -> int:
    """Position of an hour start in the window (rows come from ``[from, to)`` only)."""
    us = int(hour.timestamp()) * _SECOND_US
    return (us - q.from_us) // HOUR_US


Row = Mapping[str, Any]


def shape_channels(q: LiveQuery, rows: Sequence[Row]) -> dict[str, Any]:
    """Series of hourly counts, most events first; the folded rest (if any) last."""
    series: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for r in rows:
        key = (r["channel"], r["event_name"])
        s = series.get(key)
        if s is None:
            s = series[key] = {
                "channel": key[0],
                "event_name": key[1],
                "other": key[0] is None,
                "events": [0] * q.hours,
                "total": 0,
                "late_events": 0,
            }
        s["events"][_hour_index(q, r["hour"])] += r["events"]
        s["total"] += r["events"]
        s["late_events"] += r["late_events"]
    ordered = sorted(
        series.values(),
        key=lambda s: (s["other"], -s["total"], s["channel"] or "", s["event_name"] or ""),
    )
    by_hour = [sum(s["events"][i] for s in ordered) for i in range(q.hours)]
    named = sum(1 for s in ordered if not s["other"])
    total_series = rows[0]["series"] if rows else 0
    for s in ordered:
        if s["other"]:
            s["series_folded"] = total_series - named
    return {
        "series": ordered,
        "series_total": total_series,
        "by_hour": by_hour,
        "total": sum(by_hour),
        "late_events": sum(s["late_events"] for s in ordered),
    }


def shape_agents(q: LiveQuery, rows: Sequence[Row], totals: dict[str, Any]) -> dict[str, Any]:
    """Runs, succeeded, failed per hour; success rate of the runs that finished (None: none)."""
    hourly: dict[str, list[Any]] = {k: [0] * q.hours for k in ("runs", "succeeded", "failed")}
    for r in rows:
        i = _hour_index(q, r["hour"])
        for k in hourly:
            hourly[k][i] = r[k]
    rate = [
        round(ok / (ok + bad), 6) if ok + bad else None
        for ok, bad in zip(hourly["succeeded"], hourly["failed"], strict=True)
    ]
    return {"hourly": {**hourly, "success_rate": rate}, "totals": totals}


def shape_completeness(q: LiveQuery, rows: Sequence[Row]) -> dict[str, Any]:
    """Each hour of the window: ``complete``, ``incomplete``, or ``empty`` (no rollup yet)."""
    hours: list[dict[str, Any]] = [
        {
            "hour": _iso_us(q.from_us + i * HOUR_US),
            "state": "empty",
            "events": 0,
            "late_events": 0,
            "revised": False,
        }
        for i in range(q.hours)
    ]
    low: datetime | None = None
    for r in rows:
        hours[_hour_index(q, r["hour"])].update(
            state="complete" if r["complete"] else "incomplete",
            events=r["events"],
            late_events=r["late_events"],
            revised=bool(r["revised"]),
        )
        low = r["low_watermark"]
    return {
        "low_watermark": _iso(low) if low is not None else None,
        "complete": sum(1 for h in hours if h["state"] == "complete"),
        "hours": hours,
    }


def shape_lag(workers: Sequence[Row], known: Sequence[int]) -> dict[str, Any]:
    """Lag per partition from the workers' last reports; a silent worker owns nothing.

    Two live workers naming one partition (a rebalance between two reports): the
    one heard from last owns it. A partition without a live owner has lag None.
    """
    listed: list[dict[str, Any]] = []
    owners: dict[int, tuple[datetime, str, int | None]] = {}
    for w in workers:
        raw = w["lag"]
        lag: dict[str, Any] = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
        silent = w["silent_s"] > SILENT_AFTER_S
        state = "silent" if silent else "live" if w["live"] else "unhealthy"
        partitions = sorted(w["partitions"])
        listed.append(
            {
                "worker_id": w["worker_id"],
                "state": state,
                "partitions": partitions,
                "heartbeat_at": _iso(w["heartbeat_at"]),
                "silent_s": round(w["silent_s"], 1),
            }
        )
        if silent:
            continue
        for p in partitions:
            value = lag.get(str(p))
            mine = (w["heartbeat_at"], w["worker_id"], value if isinstance(value, int) else None)
            if p not in owners or owners[p][0] < mine[0]:
                owners[p] = mine
    rows = [
        {
            "partition": p,
            "lag": owners[p][2] if p in owners else None,
            "worker_id": owners[p][1] if p in owners else None,
        }
        for p in sorted(set(known) | set(owners))
    ]
    return {
        "partitions": rows,
        "total": sum(r["lag"] for r in rows if r["lag"] is not None),
        "unowned": [r["partition"] for r in rows if r["worker_id"] is None],
        "workers": listed,
        "silent_after_s": SILENT_AFTER_S,
    }


def _dlq_span(q: LiveQuery) -> tuple[int, int]:
    """First interval start and the number of intervals up to the one holding now (seconds)."""
    start = q.from_us // _SECOND_US
    now = q.now_us // _SECOND_US
    return start, (now - start) // q.dlq_interval_s + 1


def shape_dead_letters(q: LiveQuery, rows: Sequence[Row]) -> dict[str, Any]:
    """Dead letters per interval, one dense series per reason, most frequent first."""
    start, n = _dlq_span(q)
    reasons: dict[str, list[int]] = {}
    for r in rows:
        i = (r["start_s"] - start) // q.dlq_interval_s
        if 0 <= i < n:
            reasons.setdefault(r["reason"], [0] * n)[i] += r["n"]
    ordered = sorted(reasons.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return {
        "interval_seconds": q.dlq_interval_s,
        "starts": [_iso_us((start + i * q.dlq_interval_s) * _SECOND_US) for i in range(n)],
        "reasons": [{"reason": k, "counts": v, "total": sum(v)} for k, v in ordered],
        "total": sum(sum(v) for v in reasons.values()),
        "last_interval": sum(v[-1] for v in reasons.values()),
    }


async def live_snapshot(conn: asyncpg.Connection, q: LiveQuery, topic: str) -> dict[str, Any]:
    """Everything the live page shows, read in one repeatable-read snapshot."""
    start, end = us_to_datetime(q.from_us), us_to_datetime(q.to_us)
    dlq_start, n = _dlq_span(q)
    dlq_end = us_to_datetime((dlq_start + n * q.dlq_interval_s) * _SECOND_US)
    overview = OverviewQuery(q.hours, q.from_us, q.to_us, (None,) * len(AGENT_FILTERS))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        channels = await conn.fetch(queries.LIVE_CHANNEL_HOURLY, start, end, TOP_SERIES)
        agents = await conn.fetch(queries.LIVE_AGENT_HOURLY, start, end)
        totals = await agent_overview(conn, overview)
        complete = await conn.fetch(queries.LIVE_COMPLETENESS, start, end)
        workers = await conn.fetch(queries.LIVE_WORKERS, FORGET_AFTER_S)
        known = await conn.fetch(queries.LIVE_PARTITIONS, topic)
        dead = await conn.fetch(queries.LIVE_DEAD_LETTERS, start, dlq_end, q.dlq_interval_s)
    return {
        "generated_at": _iso_us(q.now_us),
        "hours": q.hours,
        "from": _iso(start),
        "to": _iso(end),
        "hour_starts": [_iso_us(q.from_us + i * HOUR_US) for i in range(q.hours)],
        "channels": shape_channels(q, channels),
        "agents": shape_agents(q, agents, totals),
        "completeness": shape_completeness(q, complete),
        "lag": shape_lag(workers, [r["partition"] for r in known]),
        "dead_letters": shape_dead_letters(q, dead),
    }


# --- the page ---

_CSP = (
    "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self';"
    " img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _source_hash(html: str, tag: str) -> str:
    """The CSP source of the page's one inline ``<tag>`` block: its SHA-256."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    if len(found) != 1:
        raise ValueError(f"live.html must hold exactly one <{tag}> block, found {len(found)}")
    digest = hashlib.sha256(found[0].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def page() -> Response:
    """``live.html`` with headers that keep it to itself: only its own inline code runs,
    it fetches only from this origin, and no other site may frame it."""
    html = resources.files("producers.gateway").joinpath("live.html").read_text("utf-8")
    csp = _CSP.format(script=_source_hash(html, "script"), style=_source_hash(html, "style"))
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-cache"),
    ]
    return Response(200, html.encode(), headers)
