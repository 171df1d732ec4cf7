"""``python -m tools bench``: end-to-end throughput and latency, beside a naive baseline.

On a throwaway embedded stack (``.stack/bench``, wiped first), each scenario is
run ``--runs`` times, in rounds (every scenario once per round, so the server's
drift over the benchmark falls on all alike), each run on a fresh database and
topic (the database is dropped afterwards); the table shows the median of each
figure:

* throughput: publish a fixed load (the demo mix: 10% duplicates, 2% invalid)
  as fast as possible to running workers. ``events/s`` is the rate at which
  the workers drain what is left once publishing ended (the load generator no
  longer shares the 2 cores; in production producers run elsewhere);
  ``live ev/s`` = events / (time from the first publish until PostgreSQL holds
  every offset durably), load generator included;
* latency: at half that rate, probe events are published among the load and
  the time until each one's rollup row is visible is measured (p50/p99);
* resources: the worker's peak resident memory, and the CPU time the worker
  and the PostgreSQL server spent per event during the throughput phase;
* reference: the same scenarios through ``python -m tools reference``, the
  same planning and sink in a hand-rolled aiokafka ``getmany`` loop instead of
  Faust (``reference.py``); ``of ref.`` is the Faust worker's share of its rate;
* naive baseline: the same load through a plain consumer doing one INSERT per
  event (and one rollup upsert per event), in autocommit;
* publisher: ``Publisher.publish_events`` from one process, keys computed;
* gateway: single-event and bulk posts through ``python -m producers gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaConsumer

from pipeline.core.codec import decode_message
from pipeline.core.events import Invalid, ProductEvent, Source
from pipeline.core.validate import validate_event
from pipeline.ops.runner import start_worker, stop_worker
from pipeline.ops.stack import stack_down, stack_up
from pipeline.ops.textable import format_table
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.migrate import apply_migrations
from pipeline.sink.reconcile import wait_until_processed
from pipeline.sink.writer import load_progress
from pipeline.topics import ensure_topics
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher
from tools.reference import start_reference

__all__ = ["run_bench", "Result"]

BENCH_DIR = Path(".stack/bench")
PROBE_CHANNEL = "bench-probe"


@dataclass
class Result:
    scenario: str
    events: int
    seconds: float
    events_per_s: float  # workers: draining the backlog, once the load is published
    live_events_per_s: float | None = None  # workers: from the first publish, load included
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_rate: float | None = None
    worker_peak_mb: float | None = None  # the largest worker's peak resident memory
    worker_cpu_us_per_event: float | None = None  # all workers together
    postgres_cpu_us_per_event: float | None = None
    cores_busy: float | None = None  # workers, PostgreSQL, broker and the load generator
    runs: int = 1
    events_per_s_all: list[float] | None = None  # every run, for the spread


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_bench(
    settings: Settings,
    count: int,
    as_json: bool,
    runs: int = 3,
    only: str | None = None,
    broker: str = "tansu",
) -> int:
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    _say(f"== embedded stack in {BENCH_DIR} ({broker})")
    info = asyncio.run(stack_up(settings.with_overrides(database_url=None), BENCH_DIR, broker))
    base = settings.with_overrides(
        kafka_bootstrap_servers=info.bootstrap_servers,
        database_url=info.database_url,
        broker_profile=broker,
        data_dir=str(BENCH_DIR / "worker"),
        log_level="WARNING",
    )
    pg = _StackCpu(info.postgres_pid, info.broker_pid)
    scenarios: list[tuple[str, Callable[[], Coroutine[Any, Any, Result]]]] = []
    for kind in ("faust worker", "reference loop"):
        for envelope, workers in ((1, 1), (100, 1), (100, 2)):
            title = _title(kind, envelope, workers)
            scenarios.append(
                (
                    title,
                    functools.partial(
                        _worker_scenario, base, pg, title, envelope, count, workers, kind
                    ),
                )
            )
    scenarios += [
        ("naive baseline (one INSERT per event)", lambda: _naive_scenario(base, pg, count)),
        ("publisher, single-event messages", lambda: _publisher_scenario(base, 1, count)),
        ("publisher, envelopes of 100", lambda: _publisher_scenario(base, 100, count)),
    ]
    wanted = [w.strip().lower() for w in only.split(",")] if only else []
    scenarios = [(t, f) for t, f in scenarios if not wanted or any(w in t.lower() for w in wanted)]
    with_gateway = not wanted or any(w in "http gateway" for w in wanted)
    try:
        # Round after round, each scenario once per round: the server's drift over
        # the benchmark (its WAL, checkpoints, buffers) falls on every scenario alike.
        measured: dict[str, list[Result]] = {title: [] for title, _ in scenarios}
        for run in range(1, runs + 1):
            for title, scenario in scenarios:
                _say(f"== {title}, run {run} of {runs}")
                measured[title].append(asyncio.run(scenario()))
        results = [_median(measured[title]) for title, _ in scenarios]
        gateways = []
        for run in range(1, (runs if with_gateway else 0) + 1):
            _say(f"== HTTP gateway, run {run} of {runs}")
            gateways.append(asyncio.run(_gateway_scenario(base)))
        gateway = _median_gateway(gateways) if gateways else {}
    finally:
        for line in stack_down(BENCH_DIR):
            _say("   " + line)
    _report(results, gateway, as_json, runs)
    return 0


def _title(kind: str, envelope: int, workers: int) -> str:
    """``faust worker, envelopes of 100``, ``2 reference loops, single-event messages``..."""
    who = kind if workers == 1 else f"{workers} {kind}s"
    return f"{who}, " + ("single-event messages" if envelope == 1 else f"envelopes of {envelope}")


def _median(results: list[Result]) -> Result:
    """The median of every figure over the runs of one scenario."""
    first = results[0]
    out = Result(first.scenario, first.events, 0, 0, runs=len(results))
    for f in fields(Result):
        if f.name in ("scenario", "events", "runs", "events_per_s_all"):
            continue
        values = [getattr(r, f.name) for r in results if getattr(r, f.name) is not None]
        if values:
            setattr(out, f.name, round(statistics.median(values), 1))
    out.events_per_s = round(out.events_per_s)
    out.events_per_s_all = [r.events_per_s for r in results]
    return out


def _median_gateway(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("single", "bulk"):
        rows = [r.get(kind, {}) for r in runs]
        merged: dict[str, Any] = {}
        for key in rows[0]:
            values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
            if values:
                merged[key] = round(statistics.median(values), 1)
        out[kind] = merged
    return out


class _StackCpu:
    """CPU seconds of the stack: PostgreSQL (exited backends included), the broker, this process."""

    def __init__(self, pid: int | None, broker_pid: int | None = None) -> None:
        self._proc = psutil.Process(pid) if pid else None
        self._broker = broker_pid

    def others(self) -> float:
        """CPU seconds of the rest of the box's load: the broker and this process."""
        own = psutil.Process().cpu_times()
        return float(own.user + own.system) + _cpu_seconds([self._broker] if self._broker else [])

    def seconds(self) -> float | None:
        if self._proc is None:
            return None
        try:
            t = self._proc.cpu_times()
            total = float(t.user + t.system + t.children_user + t.children_system)
            for child in self._proc.children():
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            return total
        except psutil.Error:
            return None


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the peak resident set of a live process (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _per_event_us(before: float | None, after: float | None, events: int) -> float | None:
    if before is None or after is None or not events:
        return None
    return round((after - before) / events * 1e6, 1)


async def _gateway_scenario(base: Settings) -> dict[str, Any]:
    """HTTP gateway: single posts and 1,000-event bulk posts (tools/gateway_bench.py)."""
    from tools.gateway_bench import bench_gateway

    s = await _fresh(base, "gateway")
    return await bench_gateway(s, log_file=BENCH_DIR / "gateway.log")


def _on_database(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name``."""
    return dsn.rsplit("/", 1)[0] + f"/{name}"


async def _drop(s: Settings) -> None:
    """Drop a scenario's database: the next one starts on a server without its pages."""
    dsn = s.require_database_url()
    admin = await asyncpg.connect(_on_database(dsn, "postgres"))
    try:
        await admin.execute(sql.DROP_DATABASE.format(name=dsn.rsplit("/", 1)[1]))
    finally:
        await admin.close()


async def _fresh(base: Settings, name: str) -> Settings:
    tag = f"{name}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(base.require_database_url())
    try:
        await admin.execute(sql.CREATE_DATABASE.format(name=f"bench_{tag}"))
    finally:
        await admin.close()
    dsn = _on_database(base.require_database_url(), f"bench_{tag}")
    await apply_migrations(dsn)
    s = base.with_overrides(
        database_url=dsn,
        events_topic=f"bench-{tag}",
        dlq_topic=f"bench-{tag}.dlq",
        app_id=f"bench-{tag}",
    )
    await ensure_topics(s)
    return s


async def _worker_scenario(
    base: Settings,
    pg: _StackCpu,
    title: str,
    envelope: int,
    count: int,
    workers: int = 1,
    kind: str = "faust worker",
) -> Result:
    """Workers (Faust, or the hand-rolled reference loop) drain a published load."""
    faust = kind == "faust worker"
    s = await _fresh(base, f"{'e' if faust else 'r'}{envelope}w{workers}")
    procs = [
        start_worker(s, BENCH_DIR / f"worker-{s.app_id}-{i}.log")
        if faust
        else start_reference(s, BENCH_DIR / f"reference-{s.app_id}-{i}.log", i, workers)
        for i in range(workers)
    ]
    p50 = p99 = None
    try:
        async with Publisher(s) as pub:
            await _warm_up(s, pub, workers if faust else 1)
            workload = build_workload(
                LoadOptions(count=count, envelope_size=envelope), pub.partitions
            )
            pids = [p.pid for p in procs]
            before = await _durable_messages(s)
            cpu0, pg0, rest0 = _cpu_seconds(pids), pg.seconds(), pg.others()
            started = time.monotonic()
            receipt = await publish_workload(pub, workload, progress=False)
            published = time.monotonic()
            done_when_published = await _durable_messages(s)
            await wait_until_processed(
                s.require_database_url(), s.events_topic, receipt.end_offsets, 900, poll_s=0.02
            )
            finished = time.monotonic()
            elapsed = finished - started
            backlog = _backlog_rate(
                count,
                total=sum(receipt.end_offsets.values()) - before,
                left=sum(receipt.end_offsets.values()) - done_when_published,
                seconds=finished - published,
            )
            cpu1, pg1, rest1 = _cpu_seconds(pids), pg.seconds(), pg.others()
            busy = (cpu1 - cpu0) + (rest1 - rest0) + ((pg1 - pg0) if pg0 and pg1 else 0)
            rate = count / elapsed
            _say(f"   {backlog or 0:,.0f} events/s from the backlog, {rate:,.0f} while publishing")
            if workers == 1 and faust:
                _say(f"   latency at {rate / 2:,.0f} events/s ...")
                p50, p99 = await _latency(s, pub, envelope, rate / 2)
            peaks = [m for m in (_peak_rss_mb(pid) for pid in pids) if m is not None]
    finally:
        for proc in procs:
            stop_worker(proc)
        await _drop(s)
    return Result(
        title,
        count,
        round(elapsed, 2),
        round(backlog or rate),
        round(rate),
        p50,
        p99,
        round(rate / 2) if p50 is not None else None,
        worker_peak_mb=max(peaks) if peaks else None,
        worker_cpu_us_per_event=_per_event_us(cpu0, cpu1, count),
        postgres_cpu_us_per_event=_per_event_us(pg0, pg1, count),
        cores_busy=round(busy / elapsed, 2),
    )


async def _durable_messages(s: Settings) -> int:
    """Messages of ``s.events_topic`` durable in PostgreSQL, all partitions together."""
    conn = await asyncpg.connect(s.require_database_url())
    try:
        return sum(offset for offset, _ in (await load_progress(conn, s.events_topic)).values())
    finally:
        await conn.close()


def _backlog_rate(count: int, total: int, left: int, seconds: float) -> float | None:
    """Events/s while the workers drained what was left when publishing ended.

    The load generator shares the 2 cores while it publishes; once it is done
    the workers have the machine, as in production, where producers run
    elsewhere. Counted in messages (events spread evenly over them); None when
    under a tenth of the load was left, too little to time.
    """
    if total <= 0 or left < total / 10 or seconds <= 0:
        return None
    return count * left / total / seconds


async def _warm_up(s: Settings, pub: Publisher, workers: int) -> None:
    """One event per partition through the workers: every worker owns partitions."""
    probes = [
        {"event_name": "warmup", "channel": PROBE_CHANNEL, "user_id": f"bench-{i}", "timestamp": 0}
        for i in range(64)
    ]
    receipt = await pub.publish_events(probes)
    await wait_until_processed(s.require_database_url(), s.events_topic, receipt.end_offsets, 120)
    if workers > 1:
        await _wait_for_owners(s, workers, timeout=120)


async def _wait_for_owners(s: Settings, workers: int, timeout: float) -> None:
    """Until ``workers`` workers report partitions in their heartbeat (worker_status)."""
    conn = await asyncpg.connect(s.require_database_url())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            owners = await conn.fetchval(sql.COUNT_LIVE_OWNERS)
            if owners >= workers:
                return
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    raise TimeoutError(f"{workers} workers did not all own partitions within {timeout:.0f}s")


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
            rows = await conn.fetch(sql.PROBE_ROLLUP_NAMES, PROBE_CHANNEL)
            now = time.monotonic()
            for r in rows:
                seen.setdefault(r["event_name"], now)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _naive_scenario(base: Settings, pg: _StackCpu, count: int) -> Result:
    """The baseline: consume, then one INSERT (and one rollup upsert) per event."""
    s = await _fresh(base, "naive")
    count = min(count, 20_000)  # at ~2,000 events/s, more only makes the run longer
    opts = LoadOptions(count=count, agent_rate=0.0)
    async with Publisher(s) as pub:
        workload = build_workload(opts, pub.partitions)
        pg0 = pg.seconds()
        started = time.monotonic()
        publishing = asyncio.create_task(publish_workload(pub, workload, progress=False))
        consumed, backend = await _naive_consume(s, workload.messages)
        await publishing
    elapsed = time.monotonic() - started
    await _reaped(backend)
    pg1 = pg.seconds()
    await _drop(s)
    if consumed != workload.messages:
        raise RuntimeError(f"naive baseline consumed {consumed} of {workload.messages} messages")
    return Result(
        "naive baseline (one INSERT per event)",
        count,
        round(elapsed, 2),
        round(count / elapsed),
        postgres_cpu_us_per_event=_per_event_us(pg0, pg1, count),
    )


async def _publisher_scenario(base: Settings, envelope: int, count: int) -> Result:
    """``Publisher.publish_events`` from this one process: keys, partitions, JSON, acks."""
    s = await _fresh(base, f"pub{envelope}")
    events = [dict(e) for e in build_workload(LoadOptions(count=count), 6).unique]
    for e in events:
        e.pop("_ts", None)
    async with Publisher(s) as pub:
        chunk = 10_000
        started = time.monotonic()
        for i in range(0, len(events), chunk):
            await pub.publish_events(events[i : i + chunk], envelope_size=envelope)
        elapsed = time.monotonic() - started
    title = "publisher, " + (
        "single-event messages" if envelope == 1 else f"envelopes of {envelope}"
    )
    return Result(title, len(events), round(elapsed, 2), round(len(events) / elapsed))


async def _reaped(pid: int, timeout: float = 5.0) -> None:
    """Until PostgreSQL reaped a closed session's backend: a zombie's CPU is in no count."""
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _naive_consume(s: Settings, messages: int) -> tuple[int, int]:
    """Messages consumed, and the PostgreSQL backend's pid."""
    consumer = AIOKafkaConsumer(
        s.events_topic,
        bootstrap_servers=s.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"{s.app_id}-naive",
    )
    conn = await asyncpg.connect(s.require_database_url())
    backend: int = await conn.fetchval(sql.BACKEND_PID)
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
    return seen, backend


async def _naive_one(conn: asyncpg.Connection, topic: str, m: Any) -> None:
    for index, item, raw in decode_message(m.value, 1_048_576):
        if isinstance(item, Invalid):
            continue
        event = validate_event(item, raw, Source(topic, m.partition, m.offset, index))
        if not isinstance(event, ProductEvent):
            continue
        inserted = await conn.fetchval(
            sql.NAIVE_INSERT_EVENT,
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
            await conn.execute(sql.NAIVE_ADD_ROLLUP, event.hour_us, event.channel, event.event_name)


def _report(results: list[Result], gateway: dict[str, Any], as_json: bool, runs: int) -> None:
    naive = next((r for r in results if r.scenario.startswith("naive")), None)
    # The ratio compares pipelines (workers and the naive consumer), not the publisher.
    ratio = {
        r.scenario: round(r.events_per_s / naive.events_per_s, 1)
        for r in results
        if naive and not r.scenario.startswith("publisher")
    }
    # Faust's share of the hand-rolled loop's rate on the same load (same planning and sink).
    reference = {r.scenario: r.events_per_s for r in results if "reference loop" in r.scenario}
    of_reference = {
        r.scenario: round(r.events_per_s / ref, 2)
        for r in results
        if (ref := reference.get(r.scenario.replace("faust worker", "reference loop")))
        and "faust worker" in r.scenario
    }
    if as_json:
        payload: dict[str, Any] = {
            "runs": runs,
            "median_of_runs": True,
            "results": [asdict(r) for r in results],
            "ratio_to_naive": ratio,
            "ratio_to_reference": of_reference,
            "gateway": gateway,
        }
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return
    headers = [
        "scenario",
        "events",
        "events/s",
        "live ev/s",
        "x naive",
        "of ref.",
        "p50 ms",
        "p99 ms",
        "at ev/s",
        "worker MB",
        "worker µs/ev",
        "PG µs/ev",
        "cores busy",
    ]
    rows = [
        [
            r.scenario,
            f"{r.events:,}",
            f"{r.events_per_s:,.0f}",
            _fmt(r.live_events_per_s),
            f"{ratio[r.scenario]:.1f}" if r.scenario in ratio else "-",
            f"{of_reference[r.scenario]:.0%}" if r.scenario in of_reference else "-",
            _dash(r.latency_p50_ms),
            _dash(r.latency_p99_ms),
            _fmt(r.latency_rate),
            _dash(r.worker_peak_mb),
            _dash(r.worker_cpu_us_per_event),
            _dash(r.postgres_cpu_us_per_event),
            _dash(r.cores_busy),
        ]
        for r in results
    ]
    print(f"median of {runs} runs each")
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
                    _dash(g.get("p50_ms")),
                    _dash(g.get("p99_ms")),
                ]
                for kind, g in (
                    ("single posts", gateway.get("single", {})),
                    ("bulk posts (1000 events)", gateway.get("bulk", {})),
                )
            ],
        )
    )


def _dash(value: object) -> object:
    return "-" if value is None else value


def _fmt(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"
