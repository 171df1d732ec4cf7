"""Realistic load: product and agent events with chosen rates of duplicates,
invalid messages and late events, and the exact rollups they must produce.

:func:`build_workload` is pure and seeded (same options, same messages), so a
test or the demo knows the expected result before anything is published.
:func:`publish_workload` sends it at a chosen rate with a progress line.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from pipeline.console import Progress
from pipeline.core import latency
from producers.keys import event_key
from producers.publisher import Publisher, Receipt, partition_for

__all__ = ["LoadOptions", "Message", "Workload", "build_workload", "publish_workload"]

EVENT_NAMES = ("page_view", "search", "add_to_cart", "purchase", "signup")
RUN_TYPES = ("run.started", "run.completed", "run.failed", "run.step")
HOUR = 3600


@dataclass(frozen=True)
class LoadOptions:
    count: int = 20_000  # events sent in all, duplicates and invalid ones included
    duplicate_rate: float = 0.10
    invalid_rate: float = 0.02
    late_rate: float = 0.02
    agent_rate: float = 0.25
    channels: tuple[str, ...] = ("web", "ios", "android", "email")
    hours: int = 3  # distinct UTC hours, ending with the hour before now
    envelope_size: int = 1  # >1: valid events travel in JSON-array envelopes
    users: int = 2_000
    seed: int = 7
    now: float | None = None  # wall-clock anchor; default time.time()


@dataclass
class Message:
    key: bytes | None
    value: bytes
    events: int = 1  # events inside (an envelope holds several)
    partition: int | None = None  # set for envelopes (grouped by partition)


@dataclass
class Workload:
    options: LoadOptions
    unique: list[dict[str, Any]] = field(default_factory=list)
    batches: list[list[Message]] = field(default_factory=list)  # published in order
    duplicates: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    # Each bad value, as published on its own (envelope_size 1), and its reason:
    # a test that reads the topic back counts the copies a retried publish left.
    invalid_values: dict[bytes, str] = field(default_factory=dict)
    late: int = 0

    @property
    def messages(self) -> int:
        return sum(len(b) for b in self.batches)

    def expected(self) -> dict[str, Any]:
        """The rollups and dead letters this load must produce, computed independently.

        ``agent_latency_histograms`` (added after the others, so older readers of an
        expect file are unaffected): per agent rollup row, its key and ``latency_hist``.
        """
        channels: dict[tuple[str, str, str], list[Any]] = {}
        agents: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0, 0])
        latencies: dict[tuple[str, ...], list[float]] = {}  # every row, [] without samples
        for e in self.unique:
            if "event_version" in e:
                r = e["run"]
                key = (
                    _hour_iso(e["_ts"]),
                    e["tenant"]["tenant_id"],
                    e["tenant"]["workspace_id"],
                    e["tenant"]["project_id"],
                    r["agent_id"],
                    r["workflow_id"],
                )
                a = agents[key]
                a[0] += e["event_type"] == "run.started"
                a[1] += e["event_type"] == "run.completed"
                a[2] += e["event_type"] == "run.failed"
                a[3] += 1
                a[4] += r.get("cost_usd", 0.0)
                samples = latencies.setdefault(key, [])
                if "latency_ms" in r:
                    a[5] += r["latency_ms"]
                    a[6] += 1
                    samples.append(r["latency_ms"])
            else:
                ckey = (_hour_iso(e["_ts"]), e["channel"], e["event_name"])
                row = channels.setdefault(ckey, [0, set()])
                row[0] += 1
                row[1].add(e["user_id"])
        return {
            "unique_events": len(self.unique),
            "product_events": sum(1 for e in self.unique if "event_version" not in e),
            "agent_events": sum(1 for e in self.unique if "event_version" in e),
            "duplicates": self.duplicates,
            "late_events": self.late,
            "dead_letters": dict(self.invalid),
            "channel_rollups": sorted([*k, v[0], len(v[1])] for k, v in channels.items()),
            "agent_rollups": sorted(
                [
                    *k,
                    int(v[0]),
                    int(v[1]),
                    int(v[2]),
                    int(v[3]),
                    round(v[4], 6),
                    round(v[5], 6),
                    int(v[6]),
                ]
                for k, v in agents.items()
            ),
            "agent_latency_histograms": sorted(
                [*k, latency.histogram(v)] for k, v in latencies.items()
            ),
        }


def _hour_iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts) - int(ts) % HOUR, UTC).isoformat()


class _Maker:
    def __init__(self, opts: LoadOptions, rng: random.Random, now: float) -> None:
        self.o = opts
        self.rng = rng
        newest_hour = int(now) - int(now) % HOUR - HOUR  # the last complete hour
        self.first_hour = newest_hour - (opts.hours - 1) * HOUR
        self.now = now
        self.n = 0

    def _ts(self, late: bool) -> float:
        # Late events belong to the first hour but are sent last, after newer ones.
        hour = (
            self.first_hour if late else self.first_hour + self.rng.randrange(self.o.hours) * HOUR
        )
        return hour + self.rng.randrange(HOUR * 1000) / 1000

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def product(self, late: bool) -> dict[str, Any]:
        rng = self.rng
        ts = self._ts(late)
        self.n += 1
        e: dict[str, Any] = {
            "event_name": rng.choice(EVENT_NAMES),
            "channel": rng.choice(self.o.channels),
            "user_id": f"u{rng.randrange(self.o.users)}",
            "timestamp": _spell_time(rng, ts),
            "_ts": ts,
        }
        if rng.random() < 0.7:
            e["event_id"] = self._uuid()
        if rng.random() < 0.3:
            e["campaign_id"] = f"cmp-{rng.randrange(20)}"
        if rng.random() < 0.5:
            e["tags"] = rng.sample(["new", "promo", "mobile", "beta", "eu", "us"], 2)
        e["metadata"] = {"seq": self.n, "price": round(rng.uniform(1, 500), 2)}
        return e

    def agent(self, late: bool) -> dict[str, Any]:
        rng = self.rng
        ts = self._ts(late)
        kind = rng.choices(RUN_TYPES, weights=(4, 3, 1, 2))[0]
        run: dict[str, Any] = {
            "run_id": f"run-{rng.randrange(10**9)}",
            "agent_id": f"agent-{rng.randrange(5)}",
            "workflow_id": f"wf-{rng.randrange(3)}",
            "status": kind.split(".")[1],
        }
        if kind in ("run.completed", "run.failed"):
            run["cost_usd"] = round(rng.uniform(0.001, 2.0), 4)
            run["latency_ms"] = rng.randrange(50, 30_000)
        return {
            "event_version": "v0",
            "event_id": self._uuid(),
            "event_type": kind,
            "occurred_at": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
            "tenant": {
                "tenant_id": f"t{rng.randrange(3)}",
                "workspace_id": "ws-main",
                "project_id": f"p{rng.randrange(2)}",
            },
            "run": run,
            "trace": {
                "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "span_id": f"{rng.getrandbits(64):016x}",
            },
            "_ts": ts,
        }

    def duplicate_of(self, e: dict[str, Any]) -> dict[str, Any]:
        copy = dict(e)
        if "timestamp" in copy and "event_id" not in copy and self.rng.random() < 0.5:
            # The same instant spelled differently must still be the same event.
            copy["timestamp"] = _spell_time(self.rng, copy["_ts"], force_other=copy["timestamp"])
        return copy

    def invalid(self) -> tuple[str, bytes]:
        rng = self.rng
        good = orjson.dumps(_public(self.product(False)))
        kinds: list[tuple[str, Callable[[], bytes]]] = [
            ("not_json", lambda: bytes(rng.getrandbits(8) for _ in range(40)) + b"\xff"),
            ("not_json", lambda: good[: len(good) // 2]),  # truncated
            ("not_an_object", lambda: b'"just a string"'),
            ("schema_invalid", lambda: _without(good, "channel")),
            ("schema_invalid", lambda: _with(good, "event_name", "x" * 200)),
            ("schema_invalid", lambda: _with(good, "timestamp", "yesterday")),
            ("schema_invalid", lambda: _with(good, "tags", "not-a-list")),
            ("too_far_in_future", lambda: _with(good, "timestamp", self.now + 7 * 86400)),
        ]
        reason, make = kinds[rng.randrange(len(kinds))]
        return reason, make()


def _spell_time(rng: random.Random, ts: float, force_other: Any = None) -> Any:
    spellings = [
        ts,
        datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
        datetime.fromtimestamp(ts, UTC).astimezone(_IST).isoformat(),
    ]
    if force_other is not None:
        spellings = [s for s in spellings if s != force_other] or spellings
    return rng.choice(spellings)


_IST = timezone(timedelta(hours=5, minutes=30))


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _public(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if not k.startswith("_")}


def _with(raw: bytes, name: str, value: Any) -> bytes:
    d = orjson.loads(raw)
    d[name] = value
    return orjson.dumps(d)


def _without(raw: bytes, name: str) -> bytes:
    d = orjson.loads(raw)
    d.pop(name, None)
    return orjson.dumps(d)


def build_workload(opts: LoadOptions, partitions: int, chunk: int = 2_000) -> Workload:
    """Plan every message of the load, in publish order, and what it must produce."""
    rng = random.Random(opts.seed)
    maker = _Maker(opts, rng, opts.now if opts.now is not None else time.time())
    w = Workload(opts)
    n_invalid = round(opts.count * opts.invalid_rate)
    n_dup = round(opts.count * opts.duplicate_rate)
    n_late = round(opts.count * opts.late_rate)
    n_unique = opts.count - n_invalid - n_dup
    stream: list[tuple[str, Any]] = []  # ("event", dict) | ("raw", bytes)
    late: list[tuple[str, Any]] = []
    for i in range(n_unique):
        is_late = i >= n_unique - n_late
        e = maker.agent(is_late) if rng.random() < opts.agent_rate else maker.product(is_late)
        w.unique.append(e)
        (late if is_late else stream).append(("event", e))
    # Events arrive roughly in time order, as from real services.
    stream.sort(key=lambda item: item[1]["_ts"])
    for _ in range(n_dup):
        # A copy arrives after its original (a retry), never before it.
        i = rng.randrange(len(stream))
        stream.insert(
            rng.randrange(i + 1, len(stream) + 1), ("event", maker.duplicate_of(stream[i][1]))
        )
    for _ in range(n_invalid):
        reason, raw = maker.invalid()
        w.invalid[reason] += 1
        w.invalid_values[raw] = reason
        stream.insert(rng.randrange(len(stream) + 1), ("raw", raw))
    # Late events go last: by then newer events have completed their hour.
    stream.extend(late)
    # With one hour there is no later hour to complete it: nothing can be late.
    w.duplicates, w.late = n_dup, (n_late if opts.hours >= 2 else 0)
    for start in range(0, len(stream), chunk):
        w.batches.append(
            _to_messages(stream[start : start + chunk], opts.envelope_size, partitions)
        )
    return w


def _to_messages(
    items: list[tuple[str, Any]], envelope_size: int, partitions: int
) -> list[Message]:
    out: list[Message] = []
    groups: dict[int, list[tuple[bytes, Any]]] = defaultdict(list)
    for kind, item in items:
        if kind == "raw":
            element = _json_or_none(item) if envelope_size > 1 else None
            if element is None:
                out.append(Message(None, item))
            else:  # an invalid element inside an envelope is judged on its own
                groups[partition_for(item, partitions)].append((b"", element))
            continue
        event = _public(item)
        key = (event_key(event) or "").encode()
        if envelope_size <= 1:
            out.append(Message(key, orjson.dumps(event)))
        else:
            groups[partition_for(key, partitions)].append((key, event))
    for partition, members in groups.items():
        for start in range(0, len(members), envelope_size):
            chunk = members[start : start + envelope_size]
            value = orjson.dumps([e for _, e in chunk])
            key = next((k for k, _ in chunk if k), b"")
            out.append(Message(key, value, len(chunk), partition))
    return out


async def publish_workload(
    publisher: Publisher, workload: Workload, rate: float = 0.0, progress: bool = True
) -> Receipt:
    """Publish the workload's batches at ``rate`` events/s (0: as fast as possible)."""
    receipt = Receipt()
    started = time.monotonic()
    sent_events = 0
    bar = Progress(enabled=progress)
    total = workload.options.count
    n = publisher.partitions
    for batch in workload.batches:
        records = [
            (
                m.partition
                if m.partition is not None
                else (partition_for(m.key, n) if m.key else i % n),
                m.key or b"",
                m.value,
            )
            for i, m in enumerate(batch)
        ]
        receipt.merge(await publisher.publish_records(records))
        sent_events += sum(m.events for m in batch)
        if rate > 0:
            ahead = sent_events / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        bar.update(_progress_line(sent_events, total, started))
    receipt.events = sent_events
    bar.close()
    return receipt


def _progress_line(done: int, total: int, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    width = 30
    filled = int(width * min(done / max(total, 1), 1.0))
    return (
        f"publishing [{'#' * filled}{'.' * (width - filled)}] {done}/{total} events"
        f"  {done / elapsed:,.0f} ev/s"
    )
