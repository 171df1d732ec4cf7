"""producers.generate.build_workload: seeded load and the results it must produce.

The workload is also run through the pipeline's pure planning (plan_batch, then
the rollups) to check that expected() says what the worker will compute.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.core.events import AgentEvent, ProductEvent
from pipeline.core.limits import EventLimits
from pipeline.core.planner import RawMessage, plan_batch, state_key
from pipeline.core.timeparse import parse_timestamp
from producers.generate import LoadOptions, Message, Workload, build_workload
from producers.keys import event_key
from producers.publisher import partition_for
from tests.rollup_model import aggregate_agents, aggregate_channels, user_rows

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z: the last complete hour is 21:00Z
PARTITIONS = 6
HOUR = 3600


def opts(**changes: Any) -> LoadOptions:
    return LoadOptions(**{"count": 2000, "now": NOW, **changes})


_cache: dict[LoadOptions, Workload] = {}


def workload(o: LoadOptions) -> Workload:
    if o not in _cache:
        _cache[o] = build_workload(o, partitions=PARTITIONS)
    return _cache[o]


def all_messages(w: Workload) -> list[Message]:
    return [m for batch in w.batches for m in batch]


def partition_of(m: Message, i: int) -> int:
    """As publish_workload picks it."""
    if m.partition is not None:
        return m.partition
    return partition_for(m.key, PARTITIONS) if m.key else i % PARTITIONS


class TestDeterminism:
    def test_same_seed_same_events(self) -> None:
        a = workload(opts())
        b = build_workload(opts(), PARTITIONS)
        assert a.unique == b.unique
        assert (a.duplicates, a.invalid, a.late) == (b.duplicates, b.invalid, b.late)
        assert a.expected() == b.expected()

    def test_same_seed_same_messages(self) -> None:
        a = workload(opts())
        b = build_workload(opts(), PARTITIONS)
        assert [(m.key, m.value) for m in all_messages(a)] == [
            (m.key, m.value) for m in all_messages(b)
        ]

    def test_too_far_in_future_is_anchored_at_now(self) -> None:
        w = workload(opts())
        assert w.invalid["too_far_in_future"] > 0
        future = []
        for m in all_messages(w):
            if m.key is not None:
                continue  # only invalid messages travel without a key
            try:
                obj = orjson.loads(m.value)
            except orjson.JSONDecodeError:
                continue
            ts = obj.get("timestamp") if isinstance(obj, dict) else None
            if isinstance(ts, float) and ts > NOW + HOUR:
                future.append(ts)
        assert future == [NOW + 7 * 86400] * w.invalid["too_far_in_future"]

    def test_other_seed_other_events(self) -> None:
        assert workload(opts()).unique != workload(opts(seed=8)).unique


class TestCounts:
    @pytest.mark.parametrize("envelope_size", [1, 50])
    def test_parts_add_up_to_count(self, envelope_size: int) -> None:
        w = workload(opts(envelope_size=envelope_size))
        assert w.duplicates == 200
        assert sum(w.invalid.values()) == 40
        assert w.late == 40
        assert len(w.unique) + w.duplicates + sum(w.invalid.values()) == 2000
        assert sum(m.events for m in all_messages(w)) == 2000
        assert w.messages == len(all_messages(w))

    def test_single_mode_has_one_message_per_event(self) -> None:
        w = workload(opts())
        assert w.messages == 2000
        assert all(m.events == 1 and m.partition is None for m in all_messages(w))

    def test_chunking(self) -> None:
        w = build_workload(opts(count=500), PARTITIONS, chunk=100)
        assert [len(b) for b in w.batches] == [100] * 5

    def test_expected_totals_are_consistent(self) -> None:
        w = workload(opts())
        x = w.expected()
        assert x["unique_events"] == len(w.unique) == x["product_events"] + x["agent_events"]
        assert x["product_events"] == sum(1 for e in w.unique if "event_version" not in e)
        assert 0 < x["agent_events"] < x["product_events"]
        assert x["duplicates"] == w.duplicates
        assert x["late_events"] == w.late
        assert x["dead_letters"] == dict(w.invalid)
        assert sum(row[3] for row in x["channel_rollups"]) == x["product_events"]
        assert all(1 <= row[4] <= row[3] for row in x["channel_rollups"])
        assert sum(row[9] for row in x["agent_rollups"]) == x["agent_events"]
        for row in x["agent_rollups"]:
            runs, succeeded, failed, events, cost, latency, latency_n = row[6:]
            assert runs + succeeded + failed <= events
            assert latency_n == succeeded + failed  # only finished runs carry a latency
            assert (cost > 0) == (latency_n > 0)
            assert latency >= 50 * latency_n
        assert x["channel_rollups"] == sorted(x["channel_rollups"])
        # the latency histograms: one per agent row, the same keys, as many samples
        assert [h[:6] for h in x["agent_latency_histograms"]] == [r[:6] for r in x["agent_rollups"]]
        for h, r in zip(x["agent_latency_histograms"], x["agent_rollups"], strict=True):
            assert sum(h[6]) == r[12] and (not h[6] or h[6][-1] > 0)

    def test_times_fall_in_the_configured_hours(self) -> None:
        w = workload(opts(hours=3))
        newest = int(NOW) - int(NOW) % HOUR - HOUR
        hours = {int(e["_ts"]) - int(e["_ts"]) % HOUR for e in w.unique}
        assert hours == {newest - 2 * HOUR, newest - HOUR, newest}
        late = w.unique[-w.late :]
        assert {int(e["_ts"]) - int(e["_ts"]) % HOUR for e in late} == {newest - 2 * HOUR}


class TestKeysAndPartitions:
    def test_single_messages_are_keyed_by_dedup_key(self) -> None:
        w = workload(opts())
        for m in all_messages(w):
            if m.key is None:  # an invalid message
                continue
            assert m.key == event_key(orjson.loads(m.value)).encode()  # type: ignore[union-attr]

    def test_spelling_variants_of_a_duplicate_share_the_key(self) -> None:
        w = workload(opts())
        unique_keys = {event_key(_public(e)) for e in w.unique}
        assert len(unique_keys) == len(w.unique)
        sent = [orjson.loads(m.value) for m in all_messages(w) if m.key is not None]
        sent_keys = [event_key(e) for e in sent]
        assert set(sent_keys) - {None} >= unique_keys
        copies = Counter(k for k in sent_keys if k in unique_keys)
        assert sum(copies.values()) - len(unique_keys) == w.duplicates

    @pytest.mark.parametrize("envelope_size", [2, 50])
    def test_envelope_events_hash_to_the_message_partition(self, envelope_size: int) -> None:
        w = workload(opts(envelope_size=envelope_size))
        envelopes = [m for m in all_messages(w) if m.partition is not None]
        assert envelopes
        checked = 0
        for m in envelopes:
            elements = orjson.loads(m.value)
            assert isinstance(elements, list)
            assert 1 <= len(elements) == m.events <= envelope_size
            if m.key:
                assert partition_for(m.key, PARTITIONS) == m.partition
            p = plan_batch(
                [RawMessage("events", m.partition, 0, m.value)], EventLimits(), int(NOW * 1e6), {}
            )
            for event in p.events:
                key = event_key(orjson.loads(event.payload))
                assert key == event.dedup_key  # producer and worker agree
                assert partition_for(key.encode(), PARTITIONS) == m.partition
                checked += 1
        assert checked >= len(w.unique)

    def test_envelope_key_is_its_first_events_key(self) -> None:
        w = workload(opts(envelope_size=50))
        now_us = int(NOW * 1_000_000)
        for m in all_messages(w):
            if m.partition is None:
                continue
            p = plan_batch(
                [RawMessage("events", m.partition, 0, m.value)], EventLimits(), now_us, {}
            )
            if p.events:
                first = min(p.events, key=lambda e: e.source.index)
                assert m.key == first.dedup_key.encode()
            else:  # only invalid elements: no key
                assert m.key == b""


def _public(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if not k.startswith("_")}


def _hour_iso(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us // 1_000_000, UTC).isoformat()


def _run_pipeline(w: Workload, batch_size: int) -> dict[str, Any]:
    """Plan the workload as a worker would: per partition in order, in batches."""
    now_us = int(NOW * 1_000_000)
    offsets: dict[int, int] = defaultdict(int)
    messages: list[RawMessage] = []
    for batch in w.batches:
        for i, m in enumerate(batch):
            p = partition_of(m, i)
            messages.append(RawMessage("events", p, offsets[p], m.value))
            offsets[p] += 1
    watermarks: dict[int, int | None] = {}
    stored: set[str] = set()
    products: list[ProductEvent] = []
    agents: list[AgentEvent] = []
    dead: Counter[str] = Counter()
    duplicates = 0
    for start in range(0, len(messages), batch_size):
        plan = plan_batch(
            messages[start : start + batch_size],
            EventLimits(),
            now_us,
            watermarks,
            stored.__contains__,
        )
        products += plan.products
        agents += plan.agents
        stored |= {state_key(e) for e in plan.events}
        dead.update(d.reason for d in plan.dead)
        duplicates += plan.duplicates
        for part, progress in plan.progress.items():
            old = watermarks.get(part)
            if progress.watermark_us is not None and (old is None or progress.watermark_us > old):
                watermarks[part] = progress.watermark_us
    channels = aggregate_channels(products)
    users: dict[tuple[int, str, str], set[str]] = defaultdict(set)
    for hour, channel, name, user in user_rows(products):
        users[(hour, channel, name)].add(user)
    agent_rows = sorted(
        [
            _hour_iso(k[0]),
            *k[1:],
            a.runs,
            a.succeeded,
            a.failed,
            a.events,
            round(a.cost_usd, 6),
            round(a.latency_ms_sum, 6),
            a.latency_ms_count,
        ]
        for k, a in aggregate_agents(agents).items()
    )
    return {
        "unique_events": len(products) + len(agents),
        "product_events": len(products),
        "agent_events": len(agents),
        "duplicates": duplicates,
        "late_events": sum(e.late for e in [*products, *agents]),
        "dead_letters": dict(dead),
        "channel_rollups": sorted(
            [_hour_iso(k[0]), k[1], k[2], a.events, len(users[k])] for k, a in channels.items()
        ),
        "agent_rollups": agent_rows,
        "agent_latency_histograms": sorted(
            [_hour_iso(k[0]), *k[1:], a.latency_hist] for k, a in aggregate_agents(agents).items()
        ),
    }


@pytest.mark.parametrize(("envelope_size", "batch_size"), [(1, 2000), (1, 97), (50, 50), (2, 7)])
def test_the_pipeline_computes_what_expected_says(envelope_size: int, batch_size: int) -> None:
    w = workload(opts(envelope_size=envelope_size))
    expected = w.expected()
    got = _run_pipeline(w, batch_size)
    assert got["dead_letters"] == expected["dead_letters"]
    assert got["duplicates"] == expected["duplicates"]
    for name in ("unique_events", "product_events", "agent_events", "channel_rollups"):
        assert got[name] == expected[name], name
    assert len(got["agent_rollups"]) == len(expected["agent_rollups"])
    for g, x in zip(got["agent_rollups"], expected["agent_rollups"], strict=True):
        assert g[:10] == x[:10]
        assert g[10:12] == pytest.approx(x[10:12], abs=1e-6)
        assert g[12] == x[12]
    assert got["late_events"] == expected["late_events"]
    assert got["agent_latency_histograms"] == expected["agent_latency_histograms"]
    assert len(expected["agent_latency_histograms"]) == len(expected["agent_rollups"])


def test_product_timestamps_parse_to_their_anchor() -> None:
    w = workload(opts())
    for e in w.unique:
        spelled = e.get("timestamp", e.get("occurred_at"))
        assert abs(parse_timestamp(spelled) - round(e["_ts"] * 1_000_000)) <= 1


def test_late_events_are_late_with_a_single_hour() -> None:
    # With one hour no later hour completes it: nothing can be late, and expected() agrees.
    w = workload(opts(hours=1))
    assert w.late == 0
    assert w.expected()["late_events"] == 0
    assert _run_pipeline(w, 100)["late_events"] == w.expected()["late_events"]


@pytest.mark.parametrize("hours", [2, 3])
def test_late_events_with_more_hours_are_counted(hours: int) -> None:
    w = workload(opts(hours=hours))
    assert w.late == round(2000 * 0.02)
    assert _run_pipeline(w, 100)["late_events"] == w.expected()["late_events"]
