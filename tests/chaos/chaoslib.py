"""Chaos-suite helpers: worker logs, progress timelines, chunked publishing, recovery figures.

Everything here observes or disturbs the pipeline from the outside: worker
processes, their logs, the durable offsets in PostgreSQL, the load. Imported as
``tests.chaos.chaoslib`` by the conftest and by the tests alike, so there is one
:data:`RECOVERY` dict: the figures each test measured, printed at the end of the
run (each test also prints its own, visible with ``-s`` or on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.errors import PublishError
from pipeline.ops.procs import free_port
from pipeline.ops.tansu import spawn_broker
from pipeline.settings import Settings
from pipeline.sink.reconcile import wait_until_processed
from pipeline.sink.writer import load_progress
from producers.generate import Message, Workload
from producers.publisher import Publisher, Receipt, partition_for
from tests.chaos.faultproxy import FaultProxy
from tests.conftest import WorkerProcess, Workers, wait_for

# scenario -> figure -> seconds (or a count). Printed at the end of the session.
RECOVERY: dict[str, dict[str, Any]] = {}


def record(scenario: str, **figures: Any) -> None:
    entry = RECOVERY.setdefault(scenario, {})
    for k, v in figures.items():
        entry[k] = round(v, 2) if isinstance(v, float) else v
    print(f"[chaos] {scenario}: {json.dumps(entry)}", file=sys.stderr)


# ---------------------------------------------------------------------------- workers


def start_worker(workers: Workers, **env: str) -> WorkerProcess:
    """A worker with its own web port and data dir (they must never clash)."""
    n = len(workers.started)
    data_dir = workers.tmp / f"worker-data-{n}"
    return workers.start(WORKER_WEB_PORT=str(free_port()), WORKER_DATA_DIR=str(data_dir), **env)


def log_records(worker: WorkerProcess) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in worker.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(orjson.loads(line))
    return out


_ASSIGNED = ("joined consumer group", "partitions assigned")


def assignments(worker: WorkerProcess) -> list[tuple[float, set[int]]]:
    """(wall time, partitions) of every assignment the worker logged, oldest first."""
    out = []
    for r in log_records(worker):
        # One line per assignment: "joined consumer group", then "partitions assigned"
        if r.get("msg") in _ASSIGNED and isinstance(r.get("partitions"), dict):
            ts = datetime.fromisoformat(r["ts"]).timestamp()
            out.append((ts, {int(p) for p in r.get("partitions", {})}))
    return out


def current_assignment(worker: WorkerProcess) -> set[int]:
    got = assignments(worker)
    return got[-1][1] if got else set()


def problems(worker: WorkerProcess) -> list[str]:
    """Log lines at error level or worse, and Python tracebacks."""
    text = worker.log.read_text(errors="replace").splitlines()
    bad = [ln for ln in text if '"level":"error"' in ln or '"level":"critical"' in ln]
    bad += [ln for ln in text if ln.startswith("Traceback")]
    return bad


def messages(worker: WorkerProcess, msg: str) -> list[dict[str, Any]]:
    return [r for r in log_records(worker) if r.get("msg") == msg]


async def wait_group_settled(
    members: Sequence[WorkerProcess], partitions: int, timeout: float = 60, since: float = 0.0
) -> float:
    """Wait until the members' latest assignments split all partitions between them.

    Only assignments logged after ``since`` (wall time) count. Returns the wall
    time at which the last member logged its share.
    """

    async def settled() -> float:
        latest: list[tuple[float, set[int]]] = []
        for w in members:
            if w.proc.poll() is not None:
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
            got = [a for a in assignments(w) if a[0] >= since]
            if not got:
                return 0.0
            latest.append(got[-1])
        union: set[int] = set()
        for _, parts in latest:
            if union & parts:
                return 0.0
            union |= parts
        return max(t for t, _ in latest) if union == set(range(partitions)) else 0.0

    return float(await wait_for(settled, timeout, f"{len(members)} workers sharing the partitions"))


async def wait_exit(worker: WorkerProcess, timeout: float) -> tuple[int | None, float]:
    """Poll (without blocking the event loop) until the process exits; (code, seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        code = worker.proc.poll()
        if code is not None:
            return code, time.monotonic() - started
        await asyncio.sleep(0.05)
    return None, time.monotonic() - started


# ---------------------------------------------------------------------------- progress


@dataclass
class ProgressMonitor:
    """Samples partition_progress (the durable offsets) into a wall-clock timeline."""

    dsn: str
    topic: str
    interval: float = 0.1
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressMonitor:
        conn = await asyncpg.connect(self.dsn)
        self.samples.append((time.time(), await self._read(conn)))
        self._task = asyncio.create_task(self._run(conn))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A last sample: a move after the last tick (the run's final commit) counts too.
        conn = await asyncpg.connect(self.dsn)
        try:
            self.samples.append((time.time(), await self._read(conn)))
        finally:
            await conn.close()

    async def _read(self, conn: asyncpg.Connection) -> dict[int, int]:
        return {p: v[0] for p, v in (await load_progress(conn, self.topic)).items()}

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.samples.append((time.time(), await self._read(conn)))
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    def now(self) -> dict[int, int]:
        return dict(self.samples[-1][1])

    def total(self) -> int:
        return sum(self.samples[-1][1].values())

    def at(self, t: float) -> dict[int, int]:
        snap = self.samples[0][1]
        for ts, s in self.samples:
            if ts > t:
                break
            snap = s
        return snap

    def first_advance(
        self,
        since: float,
        partitions: Iterable[int],
        final: Mapping[int, int],
        need: str = "all",
    ) -> float | None:
        """Seconds after ``since`` until the partitions' durable offsets moved on.

        A partition whose durable offset already stood at its final end offset at
        ``since`` has nothing left to move and counts as moved. ``need``: "all"
        of the partitions, or "any" one of those that had work left.
        """
        parts = list(partitions)
        base = self.at(since)
        pending = [p for p in parts if base.get(p, 0) < final.get(p, 0)]
        if not pending:
            return 0.0
        for ts, snap in self.samples:
            if ts <= since:
                continue
            moved = [snap.get(p, 0) > base.get(p, 0) for p in pending]
            if all(moved) if need == "all" else any(moved):
                return ts - since
        return None

    def handover(
        self, fault: float, owned: float, partitions: Iterable[int], final: Mapping[int, int]
    ) -> float | None:
        """Seconds from ``fault`` until the partitions moved on under their NEW owner.

        ``owned`` is when the new owner logged its assignment: only advances after
        it count (the old owner may still commit its last batch after the fault).
        """
        after = self.first_advance(owned, partitions, final)
        return None if after is None else owned - fault + after

    def first_past(
        self,
        since: float,
        marks: Mapping[int, int],
        final: Mapping[int, int],
        need: str = "all",
    ) -> float | None:
        """Seconds after ``since`` until the durable offsets passed ``marks``.

        Only partitions holding messages beyond their mark count; ``need`` as in
        :meth:`first_advance`.
        """
        pending = [p for p, end in final.items() if end > marks.get(p, 0)]
        if not pending:
            return 0.0
        for ts, snap in self.samples:
            if ts <= since:
                continue
            past = [snap.get(p, 0) > marks.get(p, 0) for p in pending]
            if all(past) if need == "all" else any(past):
                return ts - since
        return None

    def longest_stall(self, start: float, end: float, final: Mapping[int, int]) -> float:
        """Longest time in [start, end] during which no durable offset with work left moved."""
        longest = 0.0
        last_move = start
        prev = self.at(start)
        for ts, snap in self.samples:
            if ts <= start or ts > end:
                continue
            if any(snap.get(p, 0) > prev.get(p, 0) for p in snap):
                last_move = ts
            elif any(snap.get(p, 0) < e for p, e in final.items()):
                longest = max(longest, ts - last_move)
            prev = snap
        return longest


def durable_reached(mon: ProgressMonitor, n: float) -> Callable[[], Awaitable[int]]:
    """A ``wait_for`` check: the durable offsets add up to at least ``n``."""

    async def check() -> int:
        total = mon.total()
        return total if total >= n else 0

    return check


# ---------------------------------------------------------------------------- publishing


def chunk_records(batch: Sequence[Message], partitions: int) -> list[tuple[int, bytes, bytes]]:
    """A workload chunk as (partition, key, value) records, as publish_workload sends it."""
    return [
        (
            m.partition
            if m.partition is not None
            else (partition_for(m.key, partitions) if m.key else i % partitions),
            m.key or b"",
            m.value,
        )
        for i, m in enumerate(batch)
    ]


@dataclass
class PublishLog:
    receipt: Receipt = field(default_factory=Receipt)
    failures: list[str] = field(default_factory=list)  # publishes that were retried
    retried_chunks: list[int] = field(default_factory=list)
    finished_at: float = 0.0


async def publish_chunks(
    settings: Settings,
    chunks: Sequence[Sequence[tuple[int, bytes, bytes]]],
    events_per_chunk: Sequence[int],
    rate: float = 0.0,
    retry_for: float = 0.0,
    on_acked: Callable[[int], None] | None = None,
    log: PublishLog | None = None,
    first_index: int = 0,
) -> PublishLog:
    """Publish chunks in order at ``rate`` events/s; each chunk only after the last is acked.

    With ``retry_for`` > 0 a chunk the broker did not acknowledge (PublishError) is
    published again, for up to that many seconds: the broker may then hold it
    twice, which the pipeline must absorb (same keys). ``log`` (filled as chunks
    are acknowledged, so a test can read it while publishing runs) accumulates
    over several calls.
    """
    out = log if log is not None else PublishLog()
    async with Publisher(settings, linger_ms=5) as pub:
        started = time.monotonic()
        sent = 0
        for i, records in enumerate(chunks):
            deadline = time.monotonic() + retry_for
            while True:
                try:
                    out.receipt.merge(await pub.publish_records(records))
                    break
                except PublishError as exc:
                    if time.monotonic() > deadline:
                        raise
                    out.failures.append(f"chunk {first_index + i}: {exc}")
                    out.retried_chunks.append(first_index + i)
                    await asyncio.sleep(0.5)
            sent += events_per_chunk[i]
            out.receipt.events += events_per_chunk[i]
            if on_acked is not None:
                on_acked(first_index + i)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    out.finished_at = time.time()
    return out


async def publish_workload_chunks(
    settings: Settings,
    workload: Workload,
    rate: float = 0.0,
    retry_for: float = 0.0,
    on_acked: Callable[[int], None] | None = None,
    log: PublishLog | None = None,
    start: int = 0,
    stop: int | None = None,
) -> PublishLog:
    """Publish the workload's chunks ``start:stop`` (default: all), in order."""
    n = settings.events_partitions
    batches = workload.batches[start:stop]
    chunks = [chunk_records(b, n) for b in batches]
    events = [sum(m.events for m in b) for b in batches]
    return await publish_chunks(
        settings, chunks, events, rate, retry_for, on_acked, log, first_index=start
    )


async def wait_processed(
    settings: Settings,
    final: Mapping[int, int],
    timeout: float,
    group: Sequence[WorkerProcess] = (),
) -> None:
    """``wait_until_processed``, failing with what is stuck where when the deadline passes."""
    dsn = settings.require_database_url()
    try:
        await wait_until_processed(dsn, settings.events_topic, final, timeout)
    except TimeoutError as exc:
        conn = await asyncpg.connect(dsn)
        try:
            durable = await load_progress(conn, settings.events_topic)
        finally:
            await conn.close()
        lines = [f"{exc}", "partition: durable next_offset / acknowledged end offset"]
        for p in sorted(final):
            lines.append(f"  {p}: {durable.get(p, (0, None))[0]} / {final[p]}")
        for i, w in enumerate(group):
            state = "alive" if w.proc.poll() is None else f"exited {w.proc.returncode}"
            lines.append(f"worker {i} ({w.log.name}, {state}) assignments: {assignments(w)}")
            lines += [f"    {ln[:400]}" for ln in problems(w)[-10:]]
            lines += [f"    | {ln[:400]}" for ln in w.tail(15).splitlines()]
        raise AssertionError("\n".join(lines)) from None


# ---------------------------------------------------------------------------- poison


@dataclass(frozen=True)
class Poison:
    """One bad message: its value, where it goes, and the dead letters it must produce."""

    partition: int
    value: bytes
    expected: tuple[tuple[str, bytes], ...]  # (reason, raw) per dead letter


def _valid_product(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "event_name": "page_view",
        "channel": "web",
        "user_id": f"poison-user-{i}",
        "timestamp": int(time.time()) - 7200 + rng.randrange(3600),
        "metadata": {"poison": i},
    }


def make_poison(
    count: int, partitions: int, seed: int, max_message_bytes: int = 1_048_576
) -> list[Poison]:
    """``count`` bad messages of every kind, each value unique where the kind allows it.

    Kinds, in rotation: random bytes, JSON truncated mid-way, an empty value, a JSON
    string, an empty envelope, product events missing a field / with a wrong type /
    an unparseable timestamp / a name too long, an envelope of three bad elements,
    metadata nested 300 to 1,000 levels deep, an envelope element nested 400 deep,
    an unknown field of 20 KB,
    and (a few) messages over ``max_message_bytes``; one non-JSON message of exactly
    ``max_message_bytes`` checks that the limit itself is still allowed.
    """
    rng = random.Random(seed)
    out: list[Poison] = []

    def add(value: bytes, *expected: tuple[str, bytes]) -> None:
        out.append(Poison(len(out) % partitions, value, tuple(expected)))

    oversized_sizes = [max_message_bytes + 1, 1_100_000, 1_500_000, 2_000_000]
    for i in range(count):
        good = _valid_product(rng, i)
        kind = i % 15
        if kind == 0:
            v = bytes(rng.getrandbits(8) for _ in range(40)) + b"\xff" + str(i).encode()
            add(v, ("not_json", v))
        elif kind == 1:
            whole = orjson.dumps(good)
            v = whole[: len(whole) // 2]
            add(v, ("not_json", v))
        elif kind == 2:
            add(b"", ("not_json", b""))
        elif kind == 3:
            v = orjson.dumps(f"poison {i}")
            add(v, ("not_an_object", v))
        elif kind == 4:
            add(b"[]", ("empty_envelope", b"[]"))
        elif kind == 5:
            good.pop("channel")
            v = orjson.dumps(good)
            add(v, ("schema_invalid", v))
        elif kind == 6:
            v = orjson.dumps({**good, "tags": "not-a-list"})
            add(v, ("schema_invalid", v))
        elif kind == 7:
            v = orjson.dumps({**good, "timestamp": f"yesterday {i}"})
            add(v, ("schema_invalid", v))
        elif kind == 8:
            v = orjson.dumps({**good, "event_name": "x" * 200})
            add(v, ("schema_invalid", v))
        elif kind == 9:
            elements: list[Any] = [{**good, "user_id": 42}, f"element {i}", None]
            reasons = ["schema_invalid", "not_an_object", "not_an_object"]
            add(
                orjson.dumps(elements),
                *((r, orjson.dumps(e)) for r, e in zip(reasons, elements, strict=True)),
            )
        elif kind == 10 and i % 120 == 10:  # one in 120: oversized (> the limit)
            size = oversized_sizes[(i // 120) % len(oversized_sizes)]
            head = orjson.dumps({**good, "metadata": {"pad": ""}})[:-3]
            v = head + b"y" * (size - len(head) - 3) + b'"}}'
            assert len(v) == size
            add(v, ("oversized", v))
        elif kind == 10 and i % 120 == 25:  # exactly at the limit, not oversized
            v = b"\xfe" * max_message_bytes
            add(v, ("not_json", v))
        elif kind == 12:  # hostile nesting: past orjson's own 254-level limit
            v = orjson.dumps(good)[:-1] + b',"metadata":' + _nested(300 + i % 700) + b"}"
            add(v, ("too_deep", v))
        elif kind == 13:  # an envelope element that cannot even be re-serialised
            deep = orjson.dumps(good)[:-1] + b',"tags":' + b"[" * 400 + b"]" * 400 + b"}"
            add(b"[" + deep + b',"element"]', ("too_deep", b""), ("not_an_object", b'"element"'))
        elif kind == 11 and i % 30 == 11:  # seconds past the float range once crashed planning
            v = orjson.dumps({**good, "timestamp": 1e308})
            add(v, ("schema_invalid", v))
        elif kind == 14:  # an unknown field past the size limit
            v = orjson.dumps({**good, "blob": "b" * 20_000})
            add(v, ("too_large", v))
        else:
            v = orjson.dumps({**good, "timestamp": time.time() + 7 * 86400})
            add(v, ("too_far_in_future", v))
    return out


def _nested(levels: int) -> bytes:
    return b'{"x":' * levels + b"1" + b"}" * levels


def poison_counts(poison: Iterable[Poison]) -> Counter[str]:
    return Counter(reason for p in poison for reason, _ in p.expected)


def mix_poison(workload: Workload, poison: Sequence[Poison], seed: int) -> None:
    """Insert the poison messages at random places of the workload's chunks (in place)."""
    rng = random.Random(seed)
    for p in poison:
        batch = workload.batches[rng.randrange(len(workload.batches))]
        batch.insert(rng.randrange(len(batch) + 1), Message(None, p.value, 1, p.partition))
    workload.invalid.update(poison_counts(poison))


async def dead_letter_digests(dsn: str) -> Counter[tuple[str, str]]:
    """(reason, md5 of raw) of every row of dead_letters, as a multiset."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT reason, md5(raw) AS digest FROM dead_letters")
    finally:
        await conn.close()
    return Counter((r["reason"], r["digest"]) for r in rows)


def digests(expected: Iterable[tuple[str, bytes]]) -> Counter[tuple[str, str]]:
    return Counter((reason, hashlib.md5(raw).hexdigest()) for reason, raw in expected)


async def read_topic(
    bootstrap: str, topic: str, end_offsets: Mapping[int, int], timeout: float = 60
) -> list[bytes | None]:
    """Every value of ``topic`` below ``end_offsets``, read back with a plain consumer."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    values: list[bytes | None] = []
    try:
        tps = [TopicPartition(topic, p) for p in end_offsets]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        seen = {p: 0 for p in end_offsets}

        async def complete() -> bool:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if r.offset < end_offsets[tp.partition]:
                        values.append(r.value)
                    seen[tp.partition] = max(seen[tp.partition], r.offset + 1)
            return all(seen[p] >= end for p, end in end_offsets.items())

        await wait_for(complete, timeout, f"reading {topic} back")
    finally:
        await consumer.stop()
    return values


def expected_dead_letters(
    poison: Sequence[Poison], in_topic: Mapping[bytes, int]
) -> Counter[tuple[str, str]]:
    """(reason, md5) multiset: each distinct bad value's dead letters times its copies."""
    out: Counter[tuple[str, str]] = Counter()
    firsts = {p.value: p for p in reversed(poison)}
    for value, p in firsts.items():
        for key, n in digests(p.expected).items():
            out[key] += n * in_topic.get(value, 0)
    return out


async def accept_oversized(settings: Settings, max_bytes: int) -> None:
    """Apache Kafka refuses messages over its own 1 MB limit at publish (Tansu takes any):
    raise the topic's limit so that the worker's MAX_MESSAGE_BYTES is what is tested."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC,
            settings.events_topic,
            configs={"max.message.bytes": str(max_bytes)},
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


# ---------------------------------------------------------------------------- proxied broker


@dataclass
class ProxiedBroker:
    """A dedicated broker (Tansu or Apache Kafka) whose advertised listener is a FaultProxy."""

    proxy: FaultProxy
    listen: str  # where the broker really listens: only the proxy connects there
    log: Path

    @property
    def bootstrap(self) -> str:
        return self.proxy.address  # also the broker's ADVERTISED listener


def spawn_tansu(listen_port: int, advertised_port: int, log: Path) -> subprocess.Popen[bytes]:
    """A memory-only Tansu listening on one port and advertising another (the proxy's)."""
    return spawn_broker(listen_port, log, advertised_port=advertised_port)


def proxied_dsn(dsn: str, address: str) -> str:
    """``dsn`` with its host:port replaced by ``address`` (user, database, query kept)."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit(parts._replace(netloc=netloc))


def first_log_after(worker: WorkerProcess, text: str, since: float) -> float | None:
    """Wall time of the worker's first log record after ``since`` whose msg holds ``text``."""
    for r in log_records(worker):
        ts = datetime.fromisoformat(r["ts"]).timestamp()
        if ts > since and text in str(r.get("msg")):
            return ts
    return None


def describe(mon: ProgressMonitor, since: float, group: Sequence[WorkerProcess]) -> str:
    """Durable offsets then and now, and each worker's state: for failure messages."""
    then, now = mon.at(since), mon.now()
    lines = ["partition: durable next_offset then -> now"]
    lines += [f"  {p}: {then.get(p, 0)} -> {now.get(p, 0)}" for p in sorted(set(then) | set(now))]
    for w in group:
        state = "alive" if w.proc.poll() is None else f"exited {w.proc.returncode}"
        lines.append(f"{w.log.name} ({state}) assignments: {assignments(w)}")
        lines += [f"    {ln[:300]}" for ln in problems(w)[-8:]]
    return "\n".join(lines)


async def wait_advanced(
    mon: ProgressMonitor,
    since: float,
    partitions: Iterable[int],
    timeout: float,
    what: str,
    group: Sequence[WorkerProcess] = (),
) -> None:
    """Wait until every one of ``partitions`` moved past its durable offset at ``since``."""
    parts = set(partitions)

    async def moved() -> bool:
        base, now = mon.at(since), mon.now()
        return bool(parts) and all(now.get(p, 0) > base.get(p, 0) for p in parts)

    try:
        await wait_for(moved, timeout, what)
    except AssertionError as exc:
        detail = describe(mon, since, group)
        raise AssertionError(f"{exc}\npartitions {sorted(parts)}\n{detail}") from None
