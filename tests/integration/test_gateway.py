"""The HTTP gateway against the real broker and PostgreSQL: every endpoint, every error path.

The gateway runs in-process under uvicorn on a free loopback port (the graceful
shutdown test runs ``python -m producers.gateway`` as a process). Workers are
real ``python -m pipeline worker`` processes; tests wait for them with the end
offsets the gateway was acknowledged (``Gateway.published``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import schemathesis
import uvicorn
import yaml
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from pipeline.core.limits import EventLimits
from pipeline.core.planner import RawMessage, plan_batch
from pipeline.core.window import HOUR_US, hour_start_us
from pipeline.ops.procs import free_port
from pipeline.settings import Settings
from pipeline.sink.reconcile import reconcile, wait_until_processed
from pipeline.sink.writer import Sink
from producers.gateway.app import Gateway
from producers.gateway.auth import ApiKey, parse_api_keys
from producers.gateway.server import uvicorn_config
from producers.gateway.settings import GatewaySettings
from tests.conftest import REPO, Workers, wait_for
from tools.gateway_bench import gateway_env

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
NOW = int(time.time())


@dataclass
class Served:
    url: str
    app: Gateway
    client: httpx.AsyncClient

    async def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.client.post(path, content=orjson.dumps(body), headers=JSON | headers)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params)

    async def processed(self, settings: Settings, timeout: float = 120) -> None:
        offsets = dict(self.app.published.end_offsets)
        await wait_until_processed(
            settings.database_url or "", settings.events_topic, offsets, timeout
        )


@asynccontextmanager
async def serve(gs: GatewaySettings) -> AsyncIterator[Served]:
    """uvicorn with the gateway on a free port, in this event loop."""
    app = Gateway(gs)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, gs, port=port))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            raise AssertionError(f"the gateway did not start: {task.result()!r}")
        return server.started

    await wait_for(started, 30, "the gateway to start", interval=0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Served(url, app, client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def gateway_settings(settings: Settings, **changes: Any) -> GatewaySettings:
    return GatewaySettings(pipeline=settings, host="127.0.0.1", access_log=False, **changes)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Served]:
    async with serve(gateway_settings(settings)) as served:
        yield served


async def scrape(gw: Served) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The gateway's /prometheus, as {(sample name, labels): value}."""
    r = await gw.client.get("/prometheus")
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def product(i: int, **changes: Any) -> dict[str, Any]:
    event = {
        "event_name": ["page_view", "purchase"][i % 2],
        "channel": ["web", "ios", "email"][i % 3],
        "user_id": f"u{i % 7}",
        "timestamp": 1_700_000_000 + (i % 3) * 3600 + i,
    }
    return event | changes


def agent(event_type: str, **run: Any) -> dict[str, Any]:
    return {
        "event_version": "v0",
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tenant": {"tenant_id": "acme", "workspace_id": "ws-main", "project_id": "support-bot"},
        "run": {
            "run_id": f"run-{uuid.uuid4().hex[:6]}",
            "agent_id": "triage-agent",
            "workflow_id": "ticket-triage",
            "status": "running",
            **run,
        },
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
    }


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# --- the seeds' curl examples (docs/gateway.md), with the same bodies ---


async def test_seed_examples_work_as_written(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    r = await gateway.post(
        "/events",
        {"event_name": "page_view", "channel": "web", "user_id": "u1", "timestamp": 1700000000},
    )
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1 and r.json()["dedup_key"].startswith("h:")

    r = await gateway.post(
        "/events/bulk",
        {
            "events": [
                {
                    "event_name": "page_view",
                    "channel": "web",
                    "user_id": "u2",
                    "timestamp": "2023-11-14T22:15:00Z",
                },
                {
                    "event_name": "purchase",
                    "channel": "ios",
                    "user_id": "u1",
                    "timestamp": 1700001000,
                    "metadata": {"price": 19.99},
                },
            ]
        },
    )
    assert r.status_code == 202 and r.json() == {"accepted": 2, "rejected": 0}, r.text

    started = agent("run.started")
    completed = agent("run.completed", status="succeeded", cost_usd=0.0123, latency_ms=5321)
    for event in (started, completed):
        r = await gateway.post("/v1/events", event)
        assert r.status_code == 202, r.text
        assert r.json()["event_id"] == event["event_id"]

    r = await gateway.post(
        "/v1/ingestions",
        {
            "tenantId": "acme",
            "events": [
                {"type": "document.processed", "timestamp": 1700000000, "payload": {"pages": 3}}
            ],
        },
        **{"Idempotency-Key": "seed-example-1"},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]

    await gateway.processed(settings)
    r = await gateway.get(
        "/metrics", event_name="page_view", **{"from": 1699999200}, to=1700006400, group_by="hour"
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"] == {"events": 2, "unique_users": 2}
    assert [(b["start"], b["events"]) for b in body["buckets"]] == [("2023-11-14T22:00:00Z", 2)]

    r = await gateway.get("/v1/metrics/overview", window_hours=24)
    assert r.status_code == 200, r.text
    o = r.json()
    assert (o["total_runs"], o["succeeded"], o["success_rate"]) == (1, 1, 1.0)
    assert o["total_cost_usd"] == 0.0123 and o["avg_latency_ms"] == 5321.0
    for p in (50, 95, 99):  # one sample: every percentile is it, within 4.43%
        assert abs(o[f"p{p}_latency_ms"] - 5321) <= 0.0443 * 5321, o
    assert o["latency_samples"] == o["latency_percentile_samples"] == 1

    r = await gateway.get(f"/v1/ingestions/{job_id}")
    assert r.json()["status"] == "completed" and r.json()["stored"] == 1, r.text
    r = await gateway.get(f"/v1/results/{job_id}")
    assert [(x["type"], x["count"]) for x in r.json()["results"]] == [("document.processed", 1)]


async def test_the_documented_examples_run_as_written(gateway: Served) -> None:
    """The curl block of docs/gateway.md, verbatim, with curl failing on any HTTP error."""
    assert shutil.which("curl"), "curl is needed to run the documented examples"
    text = (REPO / "docs" / "gateway.md").read_text()
    block = text.split("## Examples", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    script = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n' + block
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        env={**os.environ, "GW": gateway.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out + err).decode()
    replies = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert len(replies) == 13 and not [r for r in replies if "errors" in r], replies
    assert replies[0]["accepted"] == 1 and replies[1] == {"accepted": 2, "rejected": 0}
    assert replies[3]["accepted"] == 2 and replies[3]["tenantId"] == "acme"
    assert all("p99_latency_ms" in r for r in replies[7:9]), replies[7:9]
    assert replies[9]["limit"] == 20 and replies[10]["filters"]["workflow_id"] == "ticket-triage"
    assert replies[11]["hours"] == 6 and len(replies[11]["hour_starts"]) == 6


# --- exactly once through the gateway ---


async def test_the_same_bulk_posted_twice_counts_once(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    events = [product(i) for i in range(300)]
    for _ in range(2):
        r = await gateway.post("/events/bulk", events)
        assert r.status_code == 202 and r.json()["accepted"] == 300, r.text
    await gateway.processed(settings)

    dsn = settings.database_url or ""
    report = await reconcile(dsn)
    assert report.product_events == 300
    assert report.consistent
    expected = Counter((e["event_name"], e["channel"]) for e in events)
    rows = await fetch(
        dsn,
        "SELECT event_name, channel, sum(event_count) AS n"
        " FROM rollup_channel_hourly GROUP BY 1, 2",
    )
    assert {(r["event_name"], r["channel"]): r["n"] for r in rows} == expected

    r = await gateway.get(
        "/metrics", **{"from": 1_699_999_200}, to=1_700_020_000, group_by="channel"
    )
    by_channel = {b["channel"]: b["events"] for b in r.json()["buckets"]}
    assert by_channel == {"email": 100, "ios": 100, "web": 100}
    assert r.json()["totals"] == {"events": 300, "unique_users": 7}


async def test_single_posts_and_retries_count_once(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    events = [product(i, event_id=f"evt-{i}") for i in range(60)]
    replies = await asyncio.gather(*(gateway.post("/events", e) for e in events + events[:20]))
    assert {r.status_code for r in replies} == {202}
    assert [r.json()["event_id"] for r in replies[:3]] == ["evt-0", "evt-1", "evt-2"]
    await gateway.processed(settings)
    report = await reconcile(settings.database_url or "")
    assert report.product_events == 60 and report.consistent


# --- metrics ---


async def test_metrics_buckets_and_exact_unique_users(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    day = 1_700_006_400  # 2023-11-15T00:00:00Z
    events = [
        # u1 in two hours and on two channels, u2 once, another event name once
        {"event_name": "view", "channel": "web", "user_id": "u1", "timestamp": day + 60},
        {"event_name": "view", "channel": "ios", "user_id": "u1", "timestamp": day + 120},
        {"event_name": "view", "channel": "web", "user_id": "u1", "timestamp": day + 3600 + 5},
        {"event_name": "view", "channel": "web", "user_id": "u2", "timestamp": day + 3600 + 9},
        {"event_name": "buy", "channel": "web", "user_id": "u3", "timestamp": day + 7200},
        {"event_name": "view", "channel": "web", "user_id": "u4", "timestamp": day + 86400},
    ]
    assert (await gateway.post("/events/bulk", events)).status_code == 202
    await gateway.processed(settings)
    window = {"event_name": "view", "from": day, "to": day + 2 * 86400}

    hourly = (await gateway.get("/metrics", **window, group_by="hour")).json()
    assert [(b["start"], b["events"], b["unique_users"]) for b in hourly["buckets"]] == [
        ("2023-11-15T00:00:00Z", 2, 1),
        ("2023-11-15T01:00:00Z", 2, 2),
        ("2023-11-16T00:00:00Z", 1, 1),
    ]
    daily = (await gateway.get("/metrics", **window, group_by="day")).json()
    # Day 1: u1 and u2 (a sum of hourly uniques would say 3).
    assert [(b["start"], b["events"], b["unique_users"]) for b in daily["buckets"]] == [
        ("2023-11-15T00:00:00Z", 4, 2),
        ("2023-11-16T00:00:00Z", 1, 1),
    ]
    assert daily["totals"] == {"events": 5, "unique_users": 3}
    channels = (await gateway.get("/metrics", **window, group_by="channel")).json()
    assert [(b["channel"], b["events"], b["unique_users"]) for b in channels["buckets"]] == [
        ("ios", 1, 1),
        ("web", 4, 3),
    ]
    web = (await gateway.get("/metrics", **window, channel="web", group_by="day")).json()
    assert web["totals"] == {"events": 4, "unique_users": 3}
    # RFC 3339 with an offset, "+" unencoded in the query string (arrives as a space)
    r = await gateway.client.get(
        "/metrics?event_name=view&from=2023-11-15T05:30:00+05:30&to=2023-11-15T01:00:00Z"
    )
    assert r.status_code == 200 and r.json()["totals"]["events"] == 2, r.text


async def test_metrics_overview_of_agent_runs(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    events = [
        agent("run.started"),
        agent("run.started"),
        agent("run.started"),
        agent("run.completed", status="succeeded", cost_usd=0.5, latency_ms=1000),
        agent("run.completed", status="succeeded", cost_usd=0.25, latency_ms=2000),
        agent("run.failed", status="failed", cost_usd=None, latency_ms=None),
    ]
    other = agent("run.started")
    other["tenant"]["tenant_id"] = "globex"
    for e in [*events, other]:
        assert (await gateway.post("/v1/events", e)).status_code == 202
    await gateway.processed(settings)

    first = (await gateway.get("/v1/metrics/overview", window_hours=24, tenant_id="acme")).json()
    assert first["total_runs"] == 3 and (first["succeeded"], first["failed"]) == (2, 1)
    assert first["success_rate"] == round(2 / 3, 6)
    assert first["total_cost_usd"] == 0.75 and first["avg_latency_ms"] == 1500.0
    # nearest rank of two samples: the median is the lower one, p95 and p99 the upper
    assert abs(first["p50_latency_ms"] - 1000) <= 44.3
    assert abs(first["p95_latency_ms"] - 2000) <= 88.6
    assert first["p99_latency_ms"] == first["p95_latency_ms"]
    again = (await gateway.get("/v1/metrics/overview", window_hours=24, tenant_id="acme")).json()
    assert orjson.dumps(again) == orjson.dumps(first), "the output must be deterministic"
    everyone = (await gateway.get("/v1/metrics/overview")).json()
    assert everyone["total_runs"] == 4 and everyone["window_hours"] == 24
    none = (await gateway.get("/v1/metrics/overview", agent_id="nobody")).json()
    assert (none["total_runs"], none["success_rate"], none["avg_latency_ms"]) == (0, 0.0, 0.0)
    assert [none[f"p{p}_latency_ms"] for p in (50, 95, 99)] == [0.0, 0.0, 0.0]
    assert none["latency_samples"] == none["latency_percentile_samples"] == 0


async def test_metrics_parameter_errors(gateway: Served) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"group_by": "week"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2023-11-14"}, "to"),
        ({"from": 1_700_003_600, "to": 1_700_000_000}, "to"),
        ({"from": 0, "to": 1_700_000_000}, "from"),
        ({"event_name": ""}, "event_name"),
        ({"channel": "x" * 65}, "channel"),
    ]
    for params, field in cases:
        r = await gateway.get("/metrics", **params)
        assert r.status_code == 400, (params, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (params, r.text)
    for value in ("0", "8785", "a", "-1", "²", "1.5", ""):  # "²" was a 500 (isdigit)
        r = await gateway.get("/v1/metrics/overview", window_hours=value)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "window_hours"


# --- the live page's data (the page itself: test_live_page.py) ---


async def test_live_data_from_the_rollups_worker_reports_and_dead_letters(
    settings: Settings, workers: Workers
) -> None:
    acme, admin = "a" * 32, "x" * 32
    gs = gateway_settings(settings, api_keys=keys(f"{acme}=acme", admin))
    worker = workers.start()
    async with serve(gs) as gw:
        h = {"Authorization": f"Bearer {admin}"}
        now = int(time.time())
        hour = now - now % 3600
        events = [
            {"event_name": "view", "channel": "web", "user_id": f"u{i}", "timestamp": hour + i}
            for i in range(4)
        ] + [{"event_name": "buy", "channel": "ios", "user_id": "u1", "timestamp": hour - 3600}]
        r = await gw.client.post("/events/bulk", content=orjson.dumps(events), headers=JSON | h)
        assert r.status_code == 202, r.text
        for e in (agent("run.started"), agent("run.completed", status="succeeded", cost_usd=1.5)):
            r = await gw.client.post("/v1/events", content=orjson.dumps(e), headers=JSON | h)
            assert r.status_code == 202, r.text
        await gw.processed(settings)
        dsn = settings.database_url or ""
        # Two reports besides the real worker's: one silent for 20 s (it owns nothing),
        # one not heard from for two minutes (no longer listed).
        conn = await asyncpg.connect(dsn)
        try:
            for worker_id, age, lag in (("gone:1", 120, 50), ("quiet:2", 20, 40)):
                await conn.execute(
                    "INSERT INTO worker_status (worker_id, web_port, partitions, durable,"
                    " idle_seconds, live, started_at, heartbeat_at, lag) VALUES ($1, 1, '{0}',"
                    " '{}', '{}', true, now(), now() - $2 * interval '1 second', $3::jsonb)",
                    worker_id,
                    age,
                    orjson.dumps({"0": lag}).decode(),
                )
        finally:
            await conn.close()
        me = f"{socket.gethostname()}:{worker.proc.pid}"

        async def live() -> dict[str, Any]:
            r = await gw.client.get("/v1/live", params={"hours": "6"}, headers=h)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        async def reported() -> dict[str, Any] | None:
            body = await live()
            owners = {p["worker_id"] for p in body["lag"]["partitions"]}
            return body if owners == {me} else None

        body = await wait_for(reported, 30, "the worker's report of every partition")
        assert body["hours"] == 6 and len(body["hour_starts"]) == 6
        # The hour of the events: the last of the window (the one before, should the
        # clock have passed an hour since they were made).
        at = body["hour_starts"].index(time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour)))
        assert at >= 4
        series = {(s["channel"], s["event_name"]): s["events"] for s in body["channels"]["series"]}
        assert series == {
            ("web", "view"): [4 if i == at else 0 for i in range(6)],
            ("ios", "buy"): [1 if i == at - 1 else 0 for i in range(6)],
        }
        assert body["channels"]["total"] == 5
        overview = await gw.client.get("/v1/metrics/overview?window_hours=6", headers=h)
        assert body["agents"]["totals"] == overview.json()
        hourly = body["agents"]["hourly"]
        assert sum(hourly["runs"]) == 1
        assert [r for r in hourly["success_rate"] if r is not None] == [1.0]
        lag = body["lag"]
        assert [p["partition"] for p in lag["partitions"]] == list(range(6))
        assert {p["lag"] for p in lag["partitions"]} == {0} and lag["total"] == 0
        states = {w["worker_id"]: w["state"] for w in lag["workers"]}
        assert states == {me: "live", "quiet:2": "silent"}
        assert body["dead_letters"]["total"] == 0 and body["dead_letters"]["reasons"] == []
        assert [h["state"] for h in body["completeness"]["hours"][:3]] == ["empty"] * 3

        # Who may read it: like channel metrics, only a key for every tenant.
        assert (await gw.client.get("/v1/live")).status_code == 401
        scoped = await gw.client.get("/v1/live", headers={"Authorization": f"Bearer {acme}"})
        assert scoped.status_code == 403 and scoped.json()["errors"][0]["field"] == "Authorization"
        for params, field in (
            ({"hours": "0"}, "hours"),
            ({"hours": "169"}, "hours"),
            ({"dlq_interval": "30"}, "dlq_interval"),
            ({"hours": "168", "dlq_interval": "60"}, "dlq_interval"),
        ):
            r = await gw.client.get("/v1/live", params=params, headers=h)
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == field, r.text

        # The page is served to anyone: it holds no data and asks for a key itself.
        page = await gw.client.get("/live")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert admin not in page.text and acme not in page.text


# --- latency percentiles and failed runs, written through the real sink ---


class SinkWriter:
    """Writes agent events through the pipeline's own sink (no broker: exact times)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.offset = 0

    async def write(self, docs: list[dict[str, Any]], batch: int = 250) -> None:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)

        async def get() -> asyncpg.Pool:
            return pool

        sink = Sink(get)
        try:
            for start in range(0, len(docs), batch):  # several batches: histograms add up
                messages = []
                for doc in docs[start : start + batch]:
                    messages.append(RawMessage("events", 0, self.offset, orjson.dumps(doc)))
                    self.offset += 1
                plan = plan_batch(messages, EventLimits(), time.time_ns() // 1000, {})
                assert not plan.dead, plan.dead
                await sink.write(plan)
        finally:
            await pool.close()


def at(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + (
        f".{us % 1_000_000:06d}Z"
    )


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1]


def documented_error(exact: float) -> float:
    """docs/gateway.md: within 4.43%, 0.015625 ms below 0.03125 ms, rounded to 3 decimals."""
    if exact >= 134_218_000:
        return math.inf
    return (0.015625 if exact < 0.03125 else 0.0443 * exact) + 0.0005


async def test_overview_percentiles_are_within_the_documented_error_of_the_exact_ones(
    settings: Settings, gateway: Served
) -> None:
    dsn = settings.database_url or ""
    rng = random.Random(2024)
    hour = hour_start_us(time.time_ns() // 1000)
    docs = []
    for i in range(1500):
        e = agent("run.completed", status="succeeded", cost_usd=0.01)
        e["tenant"]["tenant_id"] = ("acme", "globex")[i % 2]
        e["run"]["agent_id"] = ("triage", "refund", "search")[i % 3]
        if i % 10 == 0:  # some carry no latency, some none at all in the contract's way
            e["run"]["latency_ms"] = None
        else:
            e["run"]["latency_ms"] = round(rng.lognormvariate(7.5 + i % 3, 1.2), 3)
        e["occurred_at"] = at(hour - (0, 2 * HOUR_US, 30 * HOUR_US)[i % 4 % 3] + i * 1000)
        docs.append(e)
    for ms in (0.0, 0.001, 0.02, 0.03125, 2e8):  # underflow, the first boundary, overflow
        e = agent("run.completed", status="succeeded", latency_ms=ms)
        e["occurred_at"] = at(hour)
        docs.append(e)
    await SinkWriter(dsn).write(docs)

    cases: list[dict[str, Any]] = [
        {"window_hours": 24},  # windows chosen so that a new hour starting meanwhile
        {"window_hours": 48},  # moves no event in or out
        {"window_hours": 2},
        {"window_hours": 24, "tenant_id": "acme"},
        {"window_hours": 48, "agent_id": "refund"},
        {"window_hours": 24, "tenant_id": "globex", "agent_id": "search"},
    ]
    for params in cases:
        o = (await gateway.get("/v1/metrics/overview", **params)).json()
        # The exact percentiles, from the raw rows of the same window and filters.
        conditions = ["latency_ms IS NOT NULL", "occurred_at >= $1", "occurred_at < $2"]
        args: list[Any] = [_parse(o["from"]), _parse(o["to"])]
        for name in ("tenant_id", "agent_id"):
            if name in params:
                args.append(params[name])
                conditions.append(f"{name} = ${len(args)}")
        rows = await fetch(
            dsn, f"SELECT latency_ms FROM raw_agent_events WHERE {' AND '.join(conditions)}", *args
        )
        values = [r["latency_ms"] for r in rows]
        assert len(values) >= 200, (params, len(values))
        assert o["latency_samples"] == o["latency_percentile_samples"] == len(values)
        for p in (50, 95, 99):
            exact = nearest_rank(values, p)
            got = o[f"p{p}_latency_ms"]
            assert abs(got - exact) <= documented_error(exact), (params, p, exact, got)
        assert o["p50_latency_ms"] < o["p95_latency_ms"] <= o["p99_latency_ms"]
    schemas = (await gateway.get("/openapi.json")).json()["components"]["schemas"]
    assert set(o) == set(schemas["Overview"]["properties"])


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def failure(
    n: int, when_us: int, tenant: str = "acme", agent_id: str = "triage", **run: Any
) -> dict[str, Any]:
    e = agent("run.failed", status="failed", **run)
    e["event_id"] = str(uuid.UUID(int=n))
    e["occurred_at"] = at(when_us)
    e["tenant"]["tenant_id"] = tenant
    e["run"]["agent_id"] = agent_id
    e["run"]["run_id"] = f"run-{n}"
    return e


async def test_failed_runs_newest_first_within_the_window_and_filters(
    settings: Settings, gateway: Served
) -> None:
    hour = hour_start_us(time.time_ns() // 1000)
    ms = 1000
    docs = [
        failure(1, hour + 5 * ms, error="timeout", latency_ms=812.5, cost_usd=0.02),
        failure(2, hour + 3 * ms, error={"code": "E42", "message": "tool failed"}),
        failure(3, hour + 3 * ms, agent_id="refund"),  # the same time as 2: higher id first
        failure(4, hour + 1 * ms, workflow_id="refunds", error=None),
        failure(5, hour + 2 * ms, tenant="globex"),
        failure(6, hour - 3 * HOUR_US + 1000 * ms),  # inside 5 hours, outside 2
        failure(7, hour - 60 * HOUR_US),  # outside 24 hours
        agent("run.completed", status="succeeded", latency_ms=5.0),  # not a failure
        agent("run.started"),
    ]
    docs[3]["tenant"]["workspace_id"] = "ws-eu"
    docs[4]["tenant"]["project_id"] = "billing"
    await SinkWriter(settings.database_url or "").write(docs, batch=4)

    async def ids(**params: Any) -> list[str]:
        r = await gateway.get("/v1/runs/failures", **params)
        assert r.status_code == 200, r.text
        return [f["run_id"] for f in r.json()["failures"]]

    newest_first = ["run-1", "run-3", "run-2", "run-5", "run-4", "run-6"]
    assert await ids() == newest_first  # default: 24 hours, 50 at most
    assert await ids(limit=2) == newest_first[:2]
    assert await ids(limit=500, window_hours=2) == newest_first[:5]
    assert await ids(window_hours=5) == newest_first
    assert await ids(window_hours=72) == [*newest_first, "run-7"]
    assert await ids(tenant_id="globex") == ["run-5"]
    assert await ids(agent_id="refund") == ["run-3"]
    assert await ids(workflow_id="refunds") == ["run-4"]
    assert await ids(workspace_id="ws-eu") == ["run-4"]
    assert await ids(project_id="billing") == ["run-5"]
    assert await ids(tenant_id="acme", agent_id="triage", limit=3) == ["run-1", "run-2", "run-4"]
    assert await ids(tenant_id="initech") == []

    body = (await gateway.get("/v1/runs/failures", limit=3)).json()
    assert (body["window_hours"], body["limit"]) == (24, 3)
    assert body["filters"] == dict.fromkeys(
        ("tenant_id", "workspace_id", "project_id", "agent_id", "workflow_id")
    )
    first, second, third = body["failures"]
    assert first == {
        "event_id": "00000000-0000-0000-0000-000000000001",
        "run_id": "run-1",
        "occurred_at": at(hour + 5 * ms),
        "tenant_id": "acme",
        "workspace_id": "ws-main",
        "project_id": "support-bot",
        "agent_id": "triage",
        "workflow_id": "ticket-triage",
        "status": "failed",
        "latency_ms": 812.5,
        "cost_usd": 0.02,
        "error": "timeout",
    }
    assert (second["run_id"], second["error"], second["latency_ms"]) == ("run-3", None, None)
    assert third["error"] == {"code": "E42", "message": "tool failed"}
    assert second["event_id"] > third["event_id"] and second["occurred_at"] == third["occurred_at"]
    again = await gateway.get("/v1/runs/failures", limit=3)
    assert again.content == (await gateway.get("/v1/runs/failures", limit=3)).content
    schemas = (await gateway.get("/openapi.json")).json()["components"]["schemas"]
    assert set(body) == set(schemas["Failures"]["properties"])  # as documented, no more
    assert set(first) == set(schemas["Failure"]["properties"])


async def test_failed_runs_parameter_errors(gateway: Served) -> None:
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"limit": 501}, ["limit"]),
        ({"limit": 0}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"limit": "-5"}, ["limit"]),
        ({"limit": ""}, ["limit"]),
        ({"window_hours": 0}, ["window_hours"]),
        ({"window_hours": 8785, "limit": 1000}, ["window_hours", "limit"]),
        ({"agent_id": "x" * 129}, ["agent_id"]),
        ({"tenant_id": ""}, ["tenant_id"]),
    ]
    for params, fields in cases:
        r = await gateway.get("/v1/runs/failures", **params)
        assert r.status_code == 400, (params, r.text)
        assert [e["field"] for e in r.json()["errors"]] == fields, (params, r.text)
    r = await gateway.get("/v1/runs/failures", limit=501)
    assert "1 to 500" in r.json()["errors"][0]["error"]
    r = await gateway.client.post("/v1/runs/failures")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"


async def test_a_key_sees_only_its_tenants_failed_runs(settings: Settings) -> None:
    acme, globex, admin = "a" * 32, "g" * 32, "x" * 32
    gs = gateway_settings(
        settings, api_keys=keys(f"{acme}=acme", f"{globex}=globex|initech", admin)
    )
    hour = hour_start_us(time.time_ns() // 1000)
    await SinkWriter(settings.database_url or "").write(
        [
            failure(1, hour + 1000, tenant="acme"),
            failure(2, hour + 2000, tenant="globex"),
            failure(3, hour + 3000, tenant="initech"),
            failure(4, hour + 4000, tenant="umbrella"),
        ]
    )
    async with serve(gs) as gw:

        async def get(key: str | None, **params: Any) -> httpx.Response:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            return await gw.client.get("/v1/runs/failures", params=params, headers=headers)

        def runs(r: httpx.Response) -> list[str]:
            assert r.status_code == 200, r.text
            return [f["run_id"] for f in r.json()["failures"]]

        assert runs(await get(acme)) == ["run-1"]
        assert runs(await get(globex)) == ["run-3", "run-2"]
        assert runs(await get(globex, tenant_id="initech")) == ["run-3"]
        assert runs(await get(admin)) == ["run-4", "run-3", "run-2", "run-1"]
        assert runs(await get(admin, tenant_id="umbrella")) == ["run-4"]
        assert (await get(None)).status_code == 401
        # Another tenant's filter: what the overview answers, a 404 naming tenant_id only.
        for key, other in ((acme, "globex"), (globex, "acme"), (acme, "nobody")):
            failures = await get(key, tenant_id=other)
            overview = await gw.client.get(
                "/v1/metrics/overview",
                params={"tenant_id": other},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert failures.status_code == overview.status_code == 404
            assert failures.json() == overview.json()
            assert failures.json() == {
                "errors": [{"field": "tenant_id", "error": "no such tenant"}]
            }


# --- ingestion jobs ---


async def test_ingestion_job_status_results_and_idempotency(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    body = {
        "tenantId": "acme",
        "events": [
            {"type": "doc.uploaded", "timestamp": 1_700_000_000 + i, "payload": {"n": i}}
            for i in range(5)
        ]
        + [{"type": "doc.deleted", "timestamp": "2023-11-14T23:00:00Z"}],
    }
    key = {"Idempotency-Key": f"job-{uuid.uuid4()}"}
    r = await gateway.post("/v1/ingestions", body, **key)
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    assert r.json() == {"jobId": job_id, "status": "accepted", "accepted": 6}

    status = (await gateway.get(f"/v1/ingestions/{job_id}")).json()
    assert (status["status"], status["accepted"], status["stored"]) == ("accepted", 6, 0)
    results = (await gateway.get(f"/v1/results/{job_id}")).json()
    assert results["results"] == [] and results["status"] == "accepted"

    # Same key, same body (keys in another order): the same job, nothing published again.
    offsets = dict(gateway.app.published.end_offsets)
    reordered = {"events": body["events"], "tenantId": "acme"}
    again = await gateway.post("/v1/ingestions", reordered, **key)
    assert again.status_code == 202 and again.json()["jobId"] == job_id
    assert again.headers["Idempotent-Replayed"] == "true"
    assert gateway.app.published.end_offsets == offsets
    # Same key, another body: 409.
    other = {"tenantId": "acme", "events": body["events"][:1]}
    conflict = await gateway.post("/v1/ingestions", other, **key)
    assert conflict.status_code == 409 and "jobId" not in conflict.json()
    assert job_id not in conflict.text  # the earlier request may be another caller's
    assert conflict.json()["errors"][0]["field"] == "Idempotency-Key"

    workers.start()
    await gateway.processed(settings)

    async def completed() -> dict[str, Any] | None:
        s = (await gateway.get(f"/v1/ingestions/{job_id}")).json()
        return s if s["status"] == "completed" else None

    done = await wait_for(completed, 60, "the job to complete")
    assert (done["stored"], done["duplicates"], done["deadLettered"]) == (6, 0, 0)
    results = (await gateway.get(f"/v1/results/{job_id}")).json()
    assert results["totalEvents"] == 6
    assert [(x["type"], x["count"]) for x in results["results"]] == [
        ("doc.deleted", 1),
        ("doc.uploaded", 5),
    ]
    rows = await fetch(
        settings.database_url or "",
        "SELECT channel, user_id, payload->'metadata' AS m FROM raw_events"
        " WHERE ingestion_job_id = $1 ORDER BY occurred_at",
        uuid.UUID(job_id),
    )
    assert {(r["channel"], r["user_id"]) for r in rows} == {("ingestion", "acme")}
    assert orjson.loads(rows[0]["m"]) == {"n": 0}

    # A replay after completion still publishes nothing and reports the same job.
    third = await gateway.post("/v1/ingestions", body, **key)
    assert third.json()["jobId"] == job_id
    assert gateway.app.published.end_offsets == offsets
    # Without a key every request is a new job.
    fresh = await gateway.post("/v1/ingestions", body)
    assert fresh.status_code == 202 and fresh.json()["jobId"] != job_id


async def test_ingestion_is_all_or_nothing(settings: Settings, gateway: Served) -> None:
    body = {
        "tenantId": "acme",
        "events": [
            {"type": "ok", "timestamp": 1_700_000_000},
            {"type": "", "timestamp": 1_700_000_000},
            {"type": "late", "timestamp": "yesterday"},
            {"type": "big", "timestamp": 1_700_000_000, "payload": [1, 2]},
            "not an object",
        ],
    }
    r = await gateway.post("/v1/ingestions", body)
    assert r.status_code == 400
    assert [(e["field"], e.get("index")) for e in r.json()["errors"]] == [
        ("events[1].type", 1),
        ("events[2].timestamp", 2),
        ("events[3].payload", 3),
        ("events[4]", 4),
    ]
    bad_tenant = await gateway.post(
        "/v1/ingestions", {"tenantId": 7, "events": [{"type": "x", "timestamp": 1}]}
    )
    assert bad_tenant.json()["errors"] == [
        {"field": "tenantId", "error": "must be a string, got int"}
    ]
    for wrong in ({"tenantId": "a"}, {"tenantId": "a", "events": []}, [1]):
        assert (await gateway.post("/v1/ingestions", wrong)).status_code == 400
    bad_key = await gateway.post(
        "/v1/ingestions", body | {"events": body["events"][:1]}, **{"Idempotency-Key": "x" * 256}
    )
    assert bad_key.json()["errors"][0]["field"] == "Idempotency-Key"
    rows = await fetch(settings.database_url or "", "SELECT count(*) AS n FROM ingestion_jobs")
    assert rows[0]["n"] == 0
    assert gateway.app.published.end_offsets == {}


async def test_job_lookups_404_and_400(gateway: Served) -> None:
    for path in ("/v1/ingestions", "/v1/results"):
        missing = await gateway.get(f"{path}/{uuid.uuid4()}")
        assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "jobId"
        malformed = await gateway.get(f"{path}/not-a-uuid")
        assert malformed.status_code == 400 and malformed.json()["errors"][0]["field"] == "jobId"


# --- request errors ---


async def test_structured_400s_name_each_field(gateway: Served) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("/events", {"channel": "web", "user_id": "u", "timestamp": 1}, "event_name"),
        ("/events", product(1, timestamp=True), "timestamp"),
        ("/events", product(1, tags=["ok", ""]), "tags[1]"),
        ("/events", product(1, timestamp=NOW + 7200), "timestamp"),  # MAX_FUTURE_SECONDS
        ("/events", [product(1)], "body"),
        ("/events", agent("run.started"), "event_version"),
        ("/v1/events", product(1), "event_version"),
        ("/v1/events", agent("run.started") | {"event_id": "nope"}, "event_id"),
        (
            "/v1/events",
            {**agent("run.started"), "tenant": {"tenant_id": "a"}},
            "tenant.workspace_id",
        ),
        ("/events/bulk", {"events": "x"}, "events"),
        ("/events/bulk", [], "events"),
        ("/events/bulk", [product(i) for i in range(1001)], "events"),
    ]
    for path, body, field in cases:
        r = await gateway.post(path, body)
        assert r.status_code == 400, (path, body, r.text)
        errors = r.json()["errors"]
        assert field in [e["field"] for e in errors], (path, field, errors)
        assert all(isinstance(e["error"], str) and e["error"] for e in errors)
    nul = await gateway.client.post(
        "/events",
        content=b'{"event_name":"a\\u0000","channel":"w","user_id":"u","timestamp":1}',
        headers=JSON,
    )
    assert nul.status_code == 400 and "NUL" in nul.json()["errors"][0]["error"]
    broken = await gateway.client.post("/events", content=b'{"event_name": ', headers=JSON)
    assert broken.status_code == 400 and broken.json()["errors"][0]["field"] == "body"
    assert gateway.app.published.end_offsets == {}


async def test_bulk_accepts_the_valid_events_and_lists_the_others(
    settings: Settings, workers: Workers, gateway: Served
) -> None:
    workers.start()
    events = [product(0), {"event_name": "x"}, 5, product(3, channel=""), product(4)]
    r = await gateway.post("/events/bulk", events)
    assert r.status_code == 202
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 3)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "events[1].channel"),
        (2, "events[2]"),
        (3, "events[3].channel"),
    ]
    all_bad = await gateway.post("/events/bulk", [{"event_name": "x"}])
    assert all_bad.status_code == 400 and all_bad.json()["accepted"] == 0
    await gateway.processed(settings)
    assert (await reconcile(settings.database_url or "")).product_events == 2


async def test_413_415_404_405(settings: Settings) -> None:
    async with serve(gateway_settings(settings, max_body_bytes=2048)) as gw:
        big = product(1, metadata={"pad": "x" * 4000})
        r = await gw.post("/events", big)
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(10):
                yield b" " * 500
            yield orjson.dumps(product(1))

        chunked = await gw.client.post("/events", content=chunks(), headers=JSON)
        assert chunked.status_code == 413
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            r = await gw.client.post("/events", content=orjson.dumps(product(1)), headers=headers)
            assert r.status_code == 415 and r.json()["errors"][0]["field"] == "Content-Type"
        ok = await gw.client.post(
            "/events",
            content=orjson.dumps(product(1)),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 202
        r = await gw.get("/nope")
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "path"
        r = await gw.client.get("/events")
        assert r.status_code == 405 and r.headers["Allow"] == "POST"
        r = await gw.client.delete("/metrics")
        assert r.status_code == 405 and r.headers["Allow"] == "GET"


# --- API keys and rate limits ---


KEY_ONE = "one-" + "1" * 32
KEY_TWO = "two-" + "2" * 32


def keys(*entries: str) -> tuple[ApiKey, ...]:
    return parse_api_keys(",".join(entries))


async def test_api_keys(settings: Settings) -> None:
    gs = gateway_settings(settings, api_keys=keys(KEY_ONE, KEY_TWO))
    async with serve(gs) as gw:
        body = orjson.dumps(product(1))
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"X-API-Key": KEY_ONE[:-1]},
            {"Authorization": f"Basic {KEY_ONE}"},
        ):
            r = await gw.client.post("/events", content=body, headers=JSON | headers)
            assert r.status_code == 401, headers
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json()["errors"][0]["field"] == "Authorization"
        for headers in ({"Authorization": f"Bearer {KEY_ONE}"}, {"X-API-Key": KEY_TWO}):
            r = await gw.client.post("/events", content=body, headers=JSON | headers)
            assert r.status_code == 202, r.text
        assert (await gw.get("/metrics")).status_code == 401
        assert (await gw.get("/v1/ingestions/" + str(uuid.uuid4()))).status_code == 401
        for open_path in ("/healthz", "/readyz", "/health/live", "/health/ready", "/openapi.json"):
            assert (await gw.get(open_path)).status_code == 200, open_path
        doc = (await gw.get("/openapi.json")).json()
        assert doc["security"] == [{"bearer": []}, {"apiKey": []}]


async def test_a_key_reads_and_writes_only_its_tenants(
    settings: Settings, workers: Workers
) -> None:
    acme, globex, admin = "a" * 32, "g" * 32, "x" * 32
    gs = gateway_settings(
        settings, api_keys=keys(f"{acme}=acme", f"{globex}=globex|initech", admin)
    )
    workers.start()
    async with serve(gs) as gw:

        def h(key: str) -> dict[str, str]:
            return JSON | {"Authorization": f"Bearer {key}"}

        job = {"tenantId": "acme", "events": [{"type": "x", "timestamp": NOW}]}
        r = await gw.client.post("/v1/ingestions", content=orjson.dumps(job), headers=h(acme))
        assert r.status_code == 202, r.text
        job_id = r.json()["jobId"]
        # Writing another tenant: 403, naming only the caller's own field.
        r = await gw.client.post("/v1/ingestions", content=orjson.dumps(job), headers=h(globex))
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "tenantId"
        assert job_id not in r.text
        # The same Idempotency-Key in two tenants: two jobs, no foreign id in any answer.
        idem = {"Idempotency-Key": "shared"}
        a = await gw.client.post(
            "/v1/ingestions", content=orjson.dumps(job), headers=h(acme) | idem
        )
        other = {"tenantId": "globex", "events": [{"type": "y", "timestamp": NOW}]}
        g = await gw.client.post(
            "/v1/ingestions", content=orjson.dumps(other), headers=h(globex) | idem
        )
        assert a.status_code == g.status_code == 202 and a.json()["jobId"] != g.json()["jobId"]
        assert a.json()["jobId"] not in g.text
        # Reading: the owner and an every-tenant key see the job; the others get 404.
        for key, status in ((acme, 200), (admin, 200), (globex, 404)):
            for path in (f"/v1/ingestions/{job_id}", f"/v1/results/{job_id}"):
                r = await gw.client.get(path, headers=h(key))
                assert r.status_code == status, (path, r.text)
                if status == 404:
                    assert r.json() == {
                        "errors": [{"field": "jobId", "error": "no such ingestion job"}]
                    }
        missing = await gw.client.get(f"/v1/ingestions/{uuid.uuid4()}", headers=h(globex))
        assert missing.status_code == 404 and missing.json() == r.json()
        # Agent events: written only within the key's tenants; the overview stays inside them.
        event = agent("run.completed", cost_usd=2.5)
        event["tenant"]["tenant_id"] = "acme"
        r = await gw.client.post("/v1/events", content=orjson.dumps(event), headers=h(globex))
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "tenant.tenant_id"
        r = await gw.client.post("/v1/events", content=orjson.dumps(event), headers=h(acme))
        assert r.status_code == 202, r.text
        await gw.processed(settings)
        overview = {"window_hours": "8784"}
        mine = await gw.client.get("/v1/metrics/overview", params=overview, headers=h(acme))
        theirs = await gw.client.get("/v1/metrics/overview", params=overview, headers=h(globex))
        assert mine.json()["total_cost_usd"] == 2.5 and theirs.json()["total_cost_usd"] == 0
        r = await gw.client.get(
            "/v1/metrics/overview", params=overview | {"tenant_id": "acme"}, headers=h(globex)
        )
        assert r.status_code == 404
        # Product events and channel metrics are not tenant data: every-tenant keys only.
        r = await gw.client.post("/events", content=orjson.dumps(product(1)), headers=h(acme))
        assert r.status_code == 403
        assert (await gw.client.get("/metrics", headers=h(acme))).status_code == 403
        r = await gw.client.post("/events", content=orjson.dumps(product(1)), headers=h(admin))
        assert r.status_code == 202


async def test_rate_limit_per_key_on_metrics(settings: Settings) -> None:
    a_key, b_key = "a" * 32, "b" * 32
    gs = gateway_settings(settings, api_keys=keys(a_key, b_key), metrics_rate_limit_per_minute=3)
    async with serve(gs) as gw:
        a = {"X-API-Key": a_key}
        statuses = [
            (await gw.client.get("/v1/metrics/overview", headers=a)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        limited = await gw.client.get("/metrics", headers=a)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 20
        assert limited.json()["errors"][0]["error"].startswith("rate limit")
        # The live page's data shares the read budget; the page itself is not limited.
        assert (await gw.client.get("/v1/live", headers=a)).status_code == 429
        assert (await gw.client.get("/live")).status_code == 200
        assert (await gw.client.get("/metrics", headers={"X-API-Key": b_key})).status_code == 200
        # The failed runs share the read budget.
        assert (await gw.client.get("/v1/runs/failures", headers=a)).status_code == 429
        assert (
            await gw.client.get("/v1/runs/failures", headers={"X-API-Key": b_key})
        ).status_code == 200
        # Ingestion has its own budget.
        r = await gw.client.post("/events", content=orjson.dumps(product(1)), headers=JSON | a)
        assert r.status_code == 202


async def test_rate_limit_per_key_on_ingestion(settings: Settings) -> None:
    a_key, b_key = "a" * 32, "b" * 32
    gs = gateway_settings(settings, api_keys=keys(a_key, b_key), ingest_rate_limit_per_minute=2)
    async with serve(gs) as gw:
        body = orjson.dumps(product(1))
        a = JSON | {"X-API-Key": a_key}
        codes = [
            (await gw.client.post("/events", content=body, headers=a)).status_code for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        r = await gw.client.post("/v1/ingestions", content=b"{}", headers=a)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        b = JSON | {"X-API-Key": b_key}
        assert (await gw.client.post("/events", content=body, headers=b)).status_code == 202


async def test_failed_authentication_is_rate_limited_per_address(settings: Settings) -> None:
    good = "g" * 32
    gs = gateway_settings(settings, api_keys=keys(good), auth_failures_per_minute=3)
    async with serve(gs) as gw:
        bad = {"X-API-Key": "guess-" + "0" * 30}
        codes = [(await gw.client.get("/metrics", headers=bad)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        r = await gw.client.get("/metrics", headers={"X-API-Key": good})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # until it refills
        assert "failed authentications" in r.json()["errors"][0]["error"]
        assert (await gw.get("/healthz")).status_code == 200  # health needs no key


# --- outages ---


async def test_broker_outage_is_a_503_never_a_drop(settings: Settings) -> None:
    closed = settings.with_overrides(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    async with serve(gateway_settings(closed, publish_timeout_seconds=2)) as gw:
        assert (await gw.get("/healthz")).status_code == 200
        ready = await gw.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"broker": "unavailable", "database": "ok"}
        assert closed.kafka_bootstrap_servers not in ready.text  # no internals to anyone
        assert (await gw.get("/health/ready")).status_code == 503
        for path, body in (
            ("/events", product(1)),
            ("/events/bulk", [product(1), product(2)]),
            ("/v1/events", agent("run.started")),
            ("/v1/ingestions", {"tenantId": "t", "events": [{"type": "x", "timestamp": 1}]}),
        ):
            r = await gw.post(path, body)
            assert r.status_code == 503, (path, r.text)
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["errors"][0]["error"]
        assert gw.app.published.end_offsets == {}


async def test_a_replay_after_a_503_publishes_the_job(settings: Settings, workers: Workers) -> None:
    body = {
        "tenantId": "t",
        "events": [{"type": "x", "timestamp": 1_700_000_000 + i} for i in range(3)],
    }
    key = {"Idempotency-Key": "retry-me"}
    closed = settings.with_overrides(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    async with serve(gateway_settings(closed)) as down:
        assert (await down.post("/v1/ingestions", body, **key)).status_code == 503
    workers.start()
    async with serve(gateway_settings(settings)) as up:
        r = await up.post("/v1/ingestions", body, **key)
        assert r.status_code == 202 and r.json()["replayed"] is True
        await up.processed(settings)

        async def completed() -> bool:
            s = (await up.get(f"/v1/ingestions/{r.json()['jobId']}")).json()
            return bool(s["status"] == "completed" and s["stored"] == 3)

        await wait_for(completed, 60, "the replayed job to complete")


async def test_database_outage_is_a_503(settings: Settings) -> None:
    no_db = settings.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    async with serve(gateway_settings(no_db)) as gw:
        for path in ("/metrics", "/v1/metrics/overview", f"/v1/ingestions/{uuid.uuid4()}"):
            r = await gw.get(path)
            assert r.status_code == 503 and r.headers["Retry-After"], (path, r.text)
        r = await gw.post(
            "/v1/ingestions", {"tenantId": "t", "events": [{"type": "x", "timestamp": 1}]}
        )
        assert r.status_code == 503
        ready = await gw.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"broker": "ok", "database": "unavailable"}
        # Plain events need no database.
        assert (await gw.post("/events", product(1))).status_code == 202


# --- health and documents ---


async def test_health_endpoints(gateway: Served) -> None:
    for path in ("/healthz", "/health/live"):
        r = await gateway.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    for path in ("/readyz", "/health/ready"):
        r = await gateway.get(path)
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "checks": {"broker": "ok", "database": "ok"}}


async def test_prometheus_counts_requests_and_acknowledged_publishes(gateway: Served) -> None:
    for i in range(3):
        assert (await gateway.post("/events", product(i))).status_code == 202
    r = await gateway.post("/events/bulk", [product(i) for i in range(10, 15)])
    assert r.status_code == 202
    assert (await gateway.get("/metrics", event_name="page_view")).status_code == 200
    got = await scrape(gateway)

    def at(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    assert at("gateway_publishes_total", outcome="acknowledged") == 4
    assert at("gateway_events_acknowledged_total") == 8
    assert at("gateway_publishes_total", outcome="failed") == 0
    assert at("gateway_requests_total", route="/events", method="POST", status="202") == 3
    assert at("gateway_requests_total", route="/metrics", method="GET", status="200") == 1
    assert at("gateway_request_duration_seconds_count", route="/events") == 3
    assert at("gateway_broker_connected") == 1
    assert at("gateway_publish_pending_bytes") == 0
    # The analysts' /metrics is untouched: JSON rollups, not Prometheus text.
    assert (await gateway.get("/metrics")).headers["content-type"] == "application/json"


async def test_openapi_json_and_yaml(gateway: Served) -> None:
    r = await gateway.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"] == "3.1.0" and "security" not in doc
    assert set(doc["paths"]) >= {
        "/events",
        "/events/bulk",
        "/v1/events",
        "/v1/ingestions",
        "/v1/ingestions/{jobId}",
        "/v1/results/{jobId}",
        "/metrics",
        "/v1/metrics/overview",
        "/healthz",
        "/readyz",
        "/health/live",
        "/health/ready",
        "/v1/live",
        "/live",
        "/prometheus",
    }
    product_schema = doc["components"]["schemas"]["ProductEvent"]
    assert product_schema["required"] == ["event_name", "channel", "user_id", "timestamp"]
    assert "$defs" not in orjson.dumps(doc).decode()
    y = await gateway.get("/openapi.yaml")
    assert y.status_code == 200 and y.headers["content-type"] == "application/yaml"
    assert yaml.safe_load(y.text) == doc


async def test_fuzzing_the_openapi_document_finds_no_500(settings: Settings) -> None:
    """schemathesis generates requests from the served /openapi.json; no answer may be a 5xx."""
    async with serve(gateway_settings(settings)) as gw:
        schema = await asyncio.to_thread(schemathesis.openapi.from_url, gw.url + "/openapi.json")
        failures: list[str] = []
        statuses: Counter[tuple[str, int]] = Counter()

        def fuzz(strategy: Any, mode: str) -> None:
            @hsettings(
                max_examples=30,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                response = case.call(base_url=gw.url, timeout=30)
                statuses[(mode, response.status_code)] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {response.status_code}"
                        f" {response.text[:200]}"
                    )

            with contextlib.suppress(Unsatisfiable):  # nothing to negate (no parameters)
                check()

        def run() -> None:
            for op in schema.get_all_operations():
                assert isinstance(op, Ok), f"schemathesis cannot read an operation: {op!r}"
                operation = op.ok()
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    fuzz(operation.as_strategy(generation_mode=mode), mode.value)

        await asyncio.to_thread(run)
    assert sum(statuses.values()) >= 300, statuses
    assert statuses[("positive", 202)] > 0 and statuses[("negative", 400)] > 0, statuses
    assert failures == [], statuses


# --- the process: graceful shutdown and request logs ---


async def test_sigterm_flushes_every_acknowledged_event(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **gateway_env(settings, port)}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producers.gateway"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, 60, "the gateway process to be ready")

            async def post(i: int) -> tuple[str, int]:
                event = product(i, event_id=f"shutdown-{i}")
                try:
                    r = await client.post("/events", content=orjson.dumps(event), headers=JSON)
                except httpx.TransportError:
                    return event["event_id"], 0
                return event["event_id"], r.status_code

            first = [await post(i) for i in range(5)]
            assert {status for _, status in first} == {202}
            posts = [asyncio.create_task(post(i)) for i in range(5, 300)]
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            results = first + list(await asyncio.gather(*posts))
        # uvicorn re-raises the SIGTERM it handled once the shutdown is done: -15 is a clean stop.
        assert await asyncio.to_thread(proc.wait, 60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    acked = {event_id for event_id, status in results if status == 202}
    assert acked, "some posts must have been acknowledged before the shutdown"
    assert all(status in (202, 0, 503) for _, status in results)
    published = await _topic_event_ids(settings)
    assert acked <= published, f"{len(acked - published)} acknowledged events are not in Kafka"

    lines = [orjson.loads(x) for x in log.read_bytes().splitlines() if x.startswith(b"{")]
    requests = [x for x in lines if x["logger"] == "producers.gateway.access"]
    assert requests and set(requests[0]) >= {
        "ts",
        "level",
        "msg",
        "method",
        "path",
        "status",
        "ms",
        "client",
    }
    assert sum(1 for x in requests if x["status"] == 202) == len(acked)
    assert any("API_KEYS is not set" in x["msg"] for x in lines)


async def _topic_event_ids(settings: Settings) -> set[str]:
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    ids: set[str] = set()
    try:
        idle = 0
        while idle < 4:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for m in records:
                    ids.add(orjson.loads(m.value)["event_id"])
    finally:
        await consumer.stop()
    return ids


# --- hostile clients ---


def _nested(levels: int) -> bytes:
    return b'{"x":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize("levels", [40, 300, 5000])
async def test_deeply_nested_bodies_are_400s_naming_the_field(
    settings: Settings, gateway: Served, levels: int
) -> None:
    deep = _nested(levels)
    event = orjson.dumps(product(1))[:-1] + b',"metadata":' + deep + b"}"
    agent_event = orjson.dumps(agent("run.started"))[:-2] + b',"extra":' + deep + b"}}"
    cases = [
        ("/events", event, {"metadata", "body"}),
        ("/events/bulk", b'{"events":[' + event + b"]}", {"events[0].metadata", "events"}),
        ("/events/bulk", b"[" + event + b"]", {"[0].metadata", "events[0].metadata"}),
        ("/v1/events", agent_event, {"trace"}),  # "extra" goes inside the last object
        (
            "/v1/ingestions",
            b'{"tenantId":"t","events":[{"type":"x","timestamp":1,"payload":' + deep + b"}]}",
            {"events[0].payload", "events"},
        ),
    ]
    for path, body, fields in cases:
        r = await gateway.client.post(path, content=body, headers=JSON)
        assert r.status_code == 400, (path, levels, r.text)
        named = {e["field"] for e in r.json()["errors"]}
        if levels > 1000:  # the JSON parser itself stops at 1024 levels: the body is named
            fields = {*fields, "body"}
        assert named & fields, (path, levels, r.text)
        assert "deep" in r.text
    assert gateway.app.published.end_offsets == {}


async def test_a_5_mb_body_gets_a_413_with_a_json_error(
    settings: Settings, gateway: Served
) -> None:
    limit = gateway.app.settings.max_body_bytes
    body = b'{"pad":"' + b"x" * (limit + 200_000) + b'"}'
    r = await gateway.client.post("/events", content=body, headers=JSON)
    assert r.status_code == 413
    assert r.json()["errors"][0]["field"] == "body"


async def _raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_an_oversized_request_head_gets_431(settings: Settings) -> None:
    async with serve(gateway_settings(settings, max_header_bytes=4096)) as gw:
        reader, writer = await _raw(gw.url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # 4 MB of one header, far past the limit
                writer.write(b"a" * 65536)
                await writer.drain()
        except ConnectionError:
            pass  # the gateway closed the connection: expected
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"errors"' in answer
        writer.close()
        assert (await gw.get("/healthz")).status_code == 200
        refused = await scrape(gw)
        assert refused[("gateway_http_refused_total", frozenset({("status", "431")}))] == 1


async def test_a_slow_request_head_is_cut_off(settings: Settings) -> None:
    async with serve(gateway_settings(settings, header_timeout_seconds=1.0)) as gw:
        idle_reader, idle_writer = await _raw(gw.url)  # connects, sends nothing
        reader, writer = await _raw(gw.url)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        for _ in range(3):  # a header line every 0.4 s: slower than the deadline
            await asyncio.sleep(0.4)
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: 1\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 5
        assert (await asyncio.wait_for(idle_reader.read(), 10)).startswith(b"HTTP/1.1 408")
        for w in (writer, idle_writer):
            w.close()
        # A kept-alive connection that answers in time is unaffected.
        for _ in range(3):
            assert (await gw.get("/healthz")).status_code == 200


async def test_connections_beyond_the_cap_get_503(settings: Settings) -> None:
    async with serve(gateway_settings(settings, max_connections=5)) as gw:
        held = [await _raw(gw.url) for _ in range(5)]
        reader, writer = await _raw(gw.url)
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        writer.close()
        for _, w in held:
            w.close()

        async def served() -> bool:
            return (await gw.get("/healthz")).status_code == 200

        await wait_for(served, 10, "a free connection slot")


async def test_a_stalled_broker_fills_a_bounded_queue_then_503s(settings: Settings) -> None:
    # The broker stalls: acknowledgements never come, callers time out and leave.
    gs = gateway_settings(settings, max_pending_bytes=1 << 20, publish_timeout_seconds=0.2)
    async with serve(gs) as gw:
        never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        publisher = gw.app.broker._require()

        async def hang(key: str, value: bytes) -> Any:
            return await never

        publisher.publish_one = hang  # type: ignore[method-assign]
        body = orjson.dumps(product(1, metadata={"pad": "p" * 8000}))
        codes: Counter[int] = Counter()
        full: list[Any] = []
        for _ in range(13):  # 13 x 16 x 8 KB: past the 1 MB budget
            # 16 callers at once, each giving up after 0.2 s: the queue keeps their bytes.
            answers = await asyncio.gather(
                *(gw.client.post("/events", content=body, headers=JSON) for _ in range(16))
            )
            codes.update(r.status_code for r in answers)
            full = [r for r in answers if r.status_code == 503 and "queue is full" in r.text]
            if full:
                break
        assert full, codes
        assert int(full[0].headers["Retry-After"]) >= 1
        stalled = await scrape(gw)
        assert stalled[("gateway_publishes_total", frozenset({("outcome", "queue_full")}))] >= 1
        assert stalled[("gateway_publishes_total", frozenset({("outcome", "failed")}))] >= 1
        assert stalled[("gateway_publish_pending_bytes", frozenset())] > 0
        assert gw.app.broker.pending_bytes <= (1 << 20) + len(body)
        never.set_exception(ConnectionError("gone"))
        await asyncio.sleep(0.05)
        assert gw.app.broker.pending_bytes == 0  # released once the publishes settle
