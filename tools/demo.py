"""``python -m tools demo``: the whole product on the embedded defaults, in one command.

A throwaway stack (its own folder, wiped first) → a worker → a demo load with
duplicates, invalid and late events → wait until all is durable → hourly
rollups, hour completeness and a reconciliation → stop what it started.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from pipeline.console import Progress
from pipeline.core import latency
from pipeline.ops.runner import start_worker, stop_worker
from pipeline.ops.stack import stack_down, stack_up
from pipeline.ops.textable import format_table
from pipeline.ops.verify import Observed, compare, format_checks, observe, parse_expected
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.reconcile import wait_until_processed
from producers.generate import LoadOptions, Workload, build_workload, publish_workload
from producers.publisher import Publisher, Receipt

__all__ = ["run_demo"]

DEMO_DIR = Path(".stack/demo")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(settings: Settings, count: int, keep: bool) -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    _say(f"== starting the embedded stack in {DEMO_DIR} (Tansu broker + PostgreSQL)")
    local = settings.with_overrides(
        database_url=None, events_topic="events", dlq_topic="events.dlq"
    )
    info = asyncio.run(stack_up(local, DEMO_DIR))
    demo = local.with_overrides(
        kafka_bootstrap_servers=info.bootstrap_servers,
        database_url=info.database_url,
        broker_profile="tansu",
        data_dir=str(DEMO_DIR / "worker"),
    )
    _say(f"== starting a worker (log: {DEMO_DIR / 'worker.log'})")
    worker = start_worker(demo, DEMO_DIR / "worker.log")
    try:
        return asyncio.run(_run(demo, count))
    finally:
        stop_worker(worker)
        if keep:
            _say("== the stack keeps running; to query it:\n" + info.exports())
            _say(f"   stop it with: python -m pipeline stack down --dir {DEMO_DIR}")
        else:
            for line in stack_down(DEMO_DIR):
                _say("   " + line)


async def _run(settings: Settings, count: int) -> int:
    opts = LoadOptions(count=count, hours=3)
    mix = "10% duplicates, 2% invalid, 2% late"
    _say(f"== publishing {count} events ({mix}) to '{settings.events_topic}'")
    async with Publisher(settings) as pub:
        workload = build_workload(opts, pub.partitions)
        receipt = await publish_workload(pub, workload)
    _say("== waiting until the worker made every message durable")
    started = time.monotonic()
    bar = Progress()
    await wait_until_processed(
        settings.require_database_url(),
        settings.events_topic,
        receipt.end_offsets,
        300,
        lambda done, total: bar.update(f"   processed {done}/{total} messages"),
    )
    bar.close()
    _say(f"   done in {time.monotonic() - started:.1f}s")
    observed = await observe(settings.require_database_url(), settings.events_topic)
    await _print_rollups(settings.require_database_url())
    return _print_reconciliation(workload, receipt, settings.events_topic, observed)


async def _print_rollups(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(sql.CHANNEL_ROLLUPS)
        hours = await conn.fetch(sql.HOUR_COMPLETENESS)
        agents = await conn.fetch(sql.AGENT_ROLLUPS)
    finally:
        await conn.close()
    print("\nrollup_channel_hourly")
    _table(
        ["hour (UTC)", "channel", "event_name", "events", "unique users", "late"],
        [
            [
                _hour(r["hour"]),
                r["channel"],
                r["event_name"],
                r["event_count"],
                r["unique_users"],
                r["late_events"],
            ]
            for r in rows
        ],
    )
    print("\nrollup_agent_hourly (summed over tenants, agents and workflows)")
    per_hour: dict[str, list[float]] = {}
    hists: dict[str, list[int]] = {}
    for r in agents:
        hour = _hour(r["hour"])
        acc = per_hour.setdefault(hour, [0, 0, 0, 0.0, 0.0, 0])
        for i, name in enumerate(
            ("runs", "succeeded", "failed", "cost_usd", "latency_ms_sum", "latency_ms_count")
        ):
            acc[i] += r[name]
        hists[hour] = latency.merge(hists.get(hour, []), r["latency_hist"])
    _table(
        ["hour (UTC)", "runs", "succeeded", "failed", "cost_usd", "avg latency ms"]
        + [f"p{p} ms" for p in (50, 95, 99)],
        [
            [
                h,
                int(a[0]),
                int(a[1]),
                int(a[2]),
                f"{a[3]:.2f}",
                f"{a[4] / a[5]:.0f}" if a[5] else "-",
                *(_ms(latency.percentile(hists[h], p)) for p in (50, 95, 99)),
            ]
            for h, a in per_hour.items()
        ],
    )
    print("\nhour_completeness")
    _table(
        ["hour (UTC)", "complete", "events", "late", "revised"],
        [
            [_hour(r["hour"]), r["complete"], r["events"], r["late_events"], r["revised"]]
            for r in hours
        ],
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def expect_document(workload: Workload, receipt: Receipt, topic: str) -> dict[str, Any]:
    """What ``python -m producers generate --expect-file`` writes for this load."""
    return {
        **workload.expected(),
        "sent_messages": receipt.messages,
        "sent_events": receipt.events,
        "end_offsets": {str(p): o for p, o in sorted(receipt.end_offsets.items())},
        "topic": topic,
    }


def _print_reconciliation(
    workload: Workload, receipt: Receipt, topic: str, observed: Observed
) -> int:
    """The load against the tables: the same checks as ``python -m pipeline verify``."""
    expected = parse_expected(expect_document(workload, receipt, topic), "the demo load")
    dead = sum(observed.dead_letters.values())
    print("\nreconciliation")
    _table(
        ["", "count"],
        [
            ["sent (events)", receipt.events],
            [
                "stored",
                f"{observed.stored} ({observed.product_events} product, "
                f"{observed.agent_events} agent)",
            ],
            ["duplicates dropped (sent - stored - dead)", receipt.events - observed.stored - dead],
            [
                "dead-lettered",
                f"{dead} ({', '.join(f'{k} {v}' for k, v in observed.dead_letters.items())})",
            ],
            ["late (stored, hour revised)", observed.late_events],
        ],
    )
    print()
    checks = compare(expected, observed)
    for line in format_checks(checks):
        print("  " + line)
    return 0 if all(c.ok for c in checks) else 1


def _hour(dt: Any) -> str:
    return str(dt.strftime("%Y-%m-%d %H:00"))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    print(format_table(headers, rows, indent="  "))
