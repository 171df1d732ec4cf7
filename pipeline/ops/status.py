"""``python -m pipeline status``: the consumer group, lag and completeness at a glance.

Per partition: the member that owns it, Kafka's committed offset, the offset
PostgreSQL holds durably (where a worker resumes), the end offset (from a
fetch response's high watermark: ListOffsets is unreliable on some brokers),
the lag, and the watermark; a durable offset outside the broker's log is
shown as OUT OF RANGE (the workers stop that partition). Then the hours and
whether each is complete.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.core.offsets import out_of_range
from pipeline.errors import broker_unreachable
from pipeline.logs import quiet_kafka_client
from pipeline.ops.textable import format_table
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.connect import connect
from pipeline.worker.brokerlog import BrokerLog

__all__ = ["FORGET_AFTER_S", "SILENT_AFTER_S", "PartitionStatus", "collect_status", "run_status"]

# Workers report every 5 s (worker_status). One not heard from for SILENT_AFTER_S
# was killed or is stuck: it is shown as SILENT and owns nothing; after
# FORGET_AFTER_S it is no longer listed. A worker that stops gracefully removes
# its row at once.
SILENT_AFTER_S = 15.0
FORGET_AFTER_S = 60.0


@dataclass
class PartitionStatus:
    partition: int
    member: str | None
    committed: int | None
    durable: int | None
    end: int | None
    lag: int | None
    watermark: str | None
    log_start: int | None = None
    out_of_range: bool = False  # the durable offset lies outside the broker's log


async def _group_members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    """Member ids of the consumer group, as the broker reports them."""
    members: list[str] = []
    for response in await admin.describe_consumer_groups([group]):
        for g in response.groups:
            members.extend(m[0] for m in (g[5] if len(g) > 5 else []))
    return members


@dataclass
class Status:
    group_members: list[str]
    workers: list[dict[str, Any]]
    partitions: list[PartitionStatus]
    hours: list[dict[str, Any]]


async def collect_status(s: Settings) -> Status:
    topic = s.events_topic
    admin = AIOKafkaAdminClient(
        bootstrap_servers=s.kafka_bootstrap_servers, **s.kafka_security.aiokafka_kwargs()
    )
    try:
        await admin.start()
    except KafkaError as exc:
        raise broker_unreachable(s.kafka_bootstrap_servers, exc) from None
    try:
        partitions = (await admin.describe_topics([topic]))[0]["partitions"]
        tps = [TopicPartition(topic, p["partition"]) for p in partitions]
        group_members = await _group_members(admin, s.app_id)
        committed = await admin.list_consumer_group_offsets(s.app_id, partitions=tps)
    finally:
        await admin.close()
    conn = await connect(s.require_database_url())
    try:
        progress = {r["partition"]: r for r in await conn.fetch(sql.SELECT_PROGRESS_ROWS, topic)}
        hours = [dict(r) for r in await conn.fetch(sql.HOUR_COMPLETENESS)]
        workers = [_worker(r) for r in await conn.fetch(sql.SELECT_WORKERS, FORGET_AFTER_S)]
    finally:
        await conn.close()
    broker_log = BrokerLog(s)
    try:
        near = {p: r["next_offset"] for p, r in progress.items()}
        logs = await broker_log.ranges(topic, [tp.partition for tp in tps], near)
    finally:
        await broker_log.close()
    # Workers report their own partitions (worker_status): every broker supports that.
    owners = {p: w["worker_id"] for w in workers if w["state"] != "silent" for p in w["partitions"]}
    rows = []
    for tp in sorted(tps, key=lambda t: t.partition):
        p = tp.partition
        c = committed.get(tp)
        durable = progress[p]["next_offset"] if p in progress else None
        log_range = logs[p]
        end = log_range.end
        stopped = durable is not None and out_of_range(durable, log_range)
        wm = progress[p]["watermark"] if p in progress else None
        rows.append(
            PartitionStatus(
                partition=p,
                member=owners.get(p),
                committed=c.offset if c is not None and c.offset >= 0 else None,
                durable=durable,
                end=end,
                lag=None
                if stopped
                else max(end - (log_range.start if durable is None else durable), 0),
                watermark=wm.isoformat() if isinstance(wm, datetime) else None,
                log_start=log_range.start,
                out_of_range=stopped,
            )
        )
    return Status(group_members, workers, rows, hours)


def run_status(s: Settings, as_json: bool) -> int:
    quiet_kafka_client()
    status = asyncio.run(collect_status(s))
    rows, hours = status.partitions, status.hours
    if as_json:
        doc = {"group": s.app_id, "topic": s.events_topic, **asdict(status)}
        print(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2).decode())
        return 0
    n = len(status.group_members)
    print(f"consumer group {s.app_id} on topic {s.events_topic}: {n} member(s)")
    for w in status.workers:
        parts = ", ".join(str(p) for p in w["partitions"]) or "none"
        if w["state"] == "silent":
            state = f"SILENT for {w['silent_s']:.0f} s: stopped or stuck"
            parts += " (last reported)"
        else:
            state = "live" if w["state"] == "live" else "UNHEALTHY"
        print(f"  {w['worker_id']} (web port {w['web_port']}, {state}): partitions {parts}")
    print()
    print(
        format_table(
            ["partition", "member", "committed", "durable", "end", "lag", "watermark"],
            [
                [
                    r.partition,
                    r.member or "-",
                    _dash(r.committed),
                    _dash(r.durable),
                    _dash(r.end),
                    _dash(r.lag),
                    r.watermark or "-",
                ]
                for r in rows
            ],
        )
    )
    print(f"\ntotal lag: {sum(r.lag or 0 for r in rows)}\n")
    for r in rows:
        if r.out_of_range:
            print(
                f"OUT OF RANGE: partition {r.partition}: durable offset {r.durable} is outside "
                f"the broker's log [{r.log_start}, {r.end}]; workers do not read it until "
                "`python -m pipeline reset-offsets --to earliest` (or --to latest)\n"
            )
    print(
        format_table(
            ["hour (UTC)", "complete", "events", "late", "revised"],
            [
                [
                    h["hour"].strftime("%Y-%m-%d %H:00"),
                    h["complete"],
                    h["events"],
                    h["late_events"],
                    h["revised"],
                ]
                for h in hours[-24:]
            ],
        )
    )
    return 0


def _worker(row: Any) -> dict[str, Any]:
    """A worker_status row, with its state: live, unhealthy, or silent (not reporting)."""
    w = dict(row)
    w["lag"] = orjson.loads(w["lag"]) if isinstance(w["lag"], str) else w["lag"]
    silent = w["silent_s"] > SILENT_AFTER_S
    w["state"] = "silent" if silent else "live" if w["live"] else "unhealthy"
    return w


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
