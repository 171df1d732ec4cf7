"""``python -m pipeline bench``: end-to-end throughput and latency, beside a naive baseline.

On a throwaway embedded stack (``.stack/bench``, wiped first), per scenario a
fresh database and topic:

* throughput: publish a fixed load (the demo mix: 10% duplicates, 2% invalid)
  as fast as possible to a running worker; events/s = events / (time from the
  first publish until PostgreSQL holds every offset durably);
* latency: at half that rate, probe events are published among the load and
  the time until each one's rollup row is visible is measured (p50/p99);
* naive baseline: the same load through a plain consumer doing one INSERT per
  event (and one rollup upsert per event), in autocommit.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.codec import decode_message
from pipeline.events import Invalid, ProductEvent, Source
from pipeline.migrate import apply_migrations
from pipeline.reconcile import wait_until_processed
from pipeline.runner import start_worker, stop_worker
from pipeline.settings import Settings
from pipeline.stack import stack_down, stack_up
from pipeline.textable import format_table
from pipeline.topics import ensure_topics
from pipeline.validate import validate_event
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher

__all__ = ["run_bench", "Result"]

BENCH_DIR = Path(".stack/bench")
PROBE_CHANNEL = "bench-probe"


@dataclass
class Result:
    scenario: str
    events: int
    seconds: float
    events_per_s: float
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_rate: float | None = None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_bench(settings: Settings, count: int, as_json: bool) -> int:
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    _say(f"== embedded stack in {BENCH_DIR}")
    info = asyncio.run(stack_up(settings.with_overrides(database_url=None), BENCH_DIR))
    base = settings.with_overrides(
        kafka_bootstrap_servers=info.bootstrap_servers,
        database_url=info.database_url,
        broker_profile="tansu",
        data_dir=str(BENCH_DIR / "worker"),
        log_level="WARNING",
    )
    try:
        results = [
            asyncio.run(_faust_scenario(base, "faust worker, single-event messages", 1, count)),
            asyncio.run(_faust_scenario(base, "faust worker, envelopes of 100", 100, count)),
            asyncio.run(_naive_scenario(base, min(count, 20_000))),
        ]
        gateway = asyncio.run(_gateway_scenario(base))
    finally:
        for line in stack_down(BENCH_DIR):
            _say("   " + line)
    _report(results, gateway, as_json)
    return 0


async def _gateway_scenario(base: Settings) -> dict[str, Any]:
    """HTTP gateway: single posts and 1,000-event bulk posts (producers/gateway/bench.py)."""
    from producers.gateway.bench import bench_gateway

    s = await _fresh(base, "gateway")
    _say("== HTTP gateway: 20000 single posts, 60 bulk posts of 1000 events")
    return await bench_gateway(s, log_file=BENCH_DIR / "gateway.log")


async def _fresh(base: Settings, name: str) -> Settings:
    tag = f"{name}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(base.require_database_url())
    try:
        await admin.execute(f'CREATE DATABASE "bench_{tag}"')
    finally:
        await admin.close()
    dsn = base.require_database_url().rsplit("/", 1)[0] + f"/bench_{tag}"
    await apply_migrations(dsn)
    s = base.with_overrides(
        database_url=dsn,
        events_topic=f"bench-{tag}",
        dlq_topic=f"bench-{tag}.dlq",
        app_id=f"bench-{tag}",
    )
    await ensure_topics(s)
    return s


async def _faust_scenario(base: Settings, title: str, envelope: int, count: int) -> Result:
    s = await _fresh(base, f"e{envelope}")
    _say(f"== {title}: {count} events")
    worker = start_worker(s, BENCH_DIR / f"worker-{s.app_id}.log")
    try:
        async with Publisher(s) as pub:
            await _warm_up(s, pub)
            workload = build_workload(
                LoadOptions(count=count, envelope_size=envelope), pub.partitions
            )
            started = time.monotonic()
            receipt = await publish_workload(pub, workload, progress=False)
            await wait_until_processed(
                s.require_database_url(), s.events_topic, receipt.end_offsets, 900
            )
            elapsed = time.monotonic() - started
            rate = count / elapsed
            _say(f"   {rate:,.0f} events/s; latency at {rate / 2:,.0f} events/s ...")
            p50, p99 = await _latency(s, pub, envelope, rate / 2)
    finally:
        stop_worker(worker)
    return Result(title, count, round(elapsed, 2), round(rate), p50, p99, round(rate / 2))


async def _warm_up(s: Settings, pub: Publisher) -> None:
    """One event through the worker: the group is joined and connections are open."""
    probe = {
        "event_name": "warmup",
        "channel": PROBE_CHANNEL,
        "user_id": "bench",
        "timestamp": time.time(),
    }
    receipt = await pub.publish_events([probe])
    await wait_until_processed(s.require_database_url(), s.events_topic, receipt.end_offsets, 120)


async def _latency(
    s: Settings, pub: Publisher, envelope: int, rate: float, seconds: float = 8.0
) -> tuple[float, float]:
    count = max(int(rate * seconds), 1000)
    load = build_workload(
        LoadOptions(count=count, envelope_size=envelope, seed=99, duplicate_rate=0, invalid_rate=0),
        pub.partitions,
        chunk=max(int(rate / 20), 50),
    )
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    background = asyncio.create_task(publish_workload(pub, load, rate=rate, progress=False))
    watcher = asyncio.create_task(_watch_probes(s, sent, seen, done))
    for i in range(int(seconds * 10)):
        name = f"probe-{i}"
        sent[name] = time.monotonic()
        await pub.publish_events(
            [
                {
                    "event_name": name,
                    "channel": PROBE_CHANNEL,
                    "user_id": "bench",
                    "timestamp": time.time(),
                }
            ]
        )
        await asyncio.sleep(0.1)
    await background
    await asyncio.wait_for(_all_seen(sent, seen), timeout=120)
    done.set()
    await watcher
    latencies = sorted((seen[k] - sent[k]) * 1000 for k in sent)
    return round(statistics.median(latencies), 1), round(_percentile(latencies, 0.99), 1)


async def _all_seen(sent: dict[str, float], seen: dict[str, float]) -> None:
    while any(k not in seen for k in sent):
        await asyncio.sleep(0.05)


async def _watch_probes(
    s: Settings, sent: dict[str, float], seen: dict[str, float], done: asyncio.Event
) -> None:
    conn = await asyncpg.connect(s.require_database_url())
    try:
        while not done.is_set():
            rows = await conn.fetch(
                "SELECT event_name FROM rollup_channel_hourly WHERE channel = $1", PROBE_CHANNEL
            )
            now = time.monotonic()
            for r in rows:
                seen.setdefault(r["event_name"], now)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


_NAIVE_RAW = """
INSERT INTO raw_events (dedup_key, event_name, channel, user_id, occurred_at, payload,
                        source_topic, source_partition, source_offset)
VALUES ($1, $2, $3, $4, timestamptz 'epoch' + $5 * interval '1 microsecond', $6::jsonb, $7, $8, $9)
ON CONFLICT DO NOTHING RETURNING dedup_key
"""
_NAIVE_ROLLUP = """
INSERT INTO rollup_channel_hourly (hour, channel, event_name, event_count, unique_users,
                                   first_event_at, last_event_at)
VALUES (timestamptz 'epoch' + $1 * interval '1 microsecond', $2, $3, 1, 0, now(), now())
ON CONFLICT (hour, channel, event_name) DO UPDATE SET
    event_count = rollup_channel_hourly.event_count + 1
"""


async def _naive_scenario(base: Settings, count: int) -> Result:
    """The baseline: consume, then one INSERT (and one rollup upsert) per event."""
    s = await _fresh(base, "naive")
    _say(f"== naive baseline, one INSERT per event: {count} events")
    opts = LoadOptions(count=count, agent_rate=0.0)
    async with Publisher(s) as pub:
        workload = build_workload(opts, pub.partitions)
        started = time.monotonic()
        publishing = asyncio.create_task(publish_workload(pub, workload, progress=False))
        consumed = await _naive_consume(s, workload.messages)
        await publishing
    elapsed = time.monotonic() - started
    assert consumed == workload.messages
    return Result(
        "naive baseline (one INSERT per event)", count, round(elapsed, 2), round(count / elapsed)
    )


async def _naive_consume(s: Settings, messages: int) -> int:
    consumer = AIOKafkaConsumer(
        s.events_topic,
        bootstrap_servers=s.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"{s.app_id}-naive",
    )
    conn = await asyncpg.connect(s.require_database_url())
    await consumer.start()
    seen = 0
    try:
        while seen < messages:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for m in records:
                    seen += 1
                    await _naive_one(conn, s.events_topic, m)
    finally:
        await consumer.stop()
        await conn.close()
    return seen


async def _naive_one(conn: asyncpg.Connection, topic: str, m: Any) -> None:
    for index, item, raw in decode_message(m.value, 1_048_576):
        if isinstance(item, Invalid):
            continue
        event = validate_event(item, raw, Source(topic, m.partition, m.offset, index))
        if not isinstance(event, ProductEvent):
            continue
        inserted = await conn.fetchval(
            _NAIVE_RAW,
            event.dedup_key,
            event.event_name,
            event.channel,
            event.user_id,
            event.ts_us,
            raw.decode(),
            topic,
            m.partition,
            m.offset,
        )
        if inserted is not None:
            await conn.execute(_NAIVE_ROLLUP, event.hour_us, event.channel, event.event_name)


def _report(results: list[Result], gateway: dict[str, Any], as_json: bool) -> None:
    naive = next((r for r in results if r.scenario.startswith("naive")), None)
    if as_json:
        payload: dict[str, Any] = {"results": [asdict(r) for r in results], "gateway": gateway}
        if naive:
            payload["ratio_to_naive"] = {
                r.scenario: round(r.events_per_s / naive.events_per_s, 1) for r in results
            }
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return
    headers = [
        "scenario",
        "events",
        "seconds",
        "events/s",
        "x naive",
        "p50 ms",
        "p99 ms",
        "at ev/s",
    ]
    rows = [
        [
            r.scenario,
            r.events,
            r.seconds,
            f"{r.events_per_s:,.0f}",
            f"{r.events_per_s / naive.events_per_s:.1f}" if naive else "-",
            r.latency_p50_ms if r.latency_p50_ms is not None else "-",
            r.latency_p99_ms if r.latency_p99_ms is not None else "-",
            f"{r.latency_rate:,.0f}" if r.latency_rate else "-",
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    print()
    print(
        format_table(
            ["gateway", "requests/s", "events/s", "p50 ms", "p99 ms"],
            [
                [
                    kind,
                    _fmt(g.get("requests_per_s")),
                    _fmt(g.get("events_per_s")),
                    g.get("p50_ms", "-"),
                    g.get("p99_ms", "-"),
                ]
                for kind, g in (
                    ("single posts", gateway.get("single", {})),
                    ("bulk posts (1000 events)", gateway.get("bulk", {})),
                )
            ],
        )
    )


def _fmt(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"
