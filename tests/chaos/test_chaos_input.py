"""Chaos in the input: a poison flood and a duplicate storm, under two workers.

Poison: thousands of non-JSON, truncated, empty, non-object, schema-invalid,
future-dated and oversized (> MAX_MESSAGE_BYTES, up to 2 MB) messages and envelopes
of bad elements, interleaved with valid events. Every valid event arrives once and
every bad message is in dead_letters with the right reason and its original bytes.

Duplicates: while the load is published, whole ranges of already acknowledged
events are published again several times, as single messages and in envelopes of
50 (some envelopes repeat one event); the rollups still count each event once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from pipeline.settings import Settings
from producers.generate import LoadOptions, build_workload
from producers.publisher import Publisher, Receipt
from tests.chaos.chaoslib import (
    ProgressMonitor,
    accept_oversized,
    dead_letter_digests,
    digests,
    make_poison,
    mix_poison,
    poison_counts,
    publish_workload_chunks,
    record,
    start_worker,
    wait_group_settled,
    wait_processed,
)
from tests.conftest import Workers
from tests.integration.test_end_to_end import assert_invariants

pytestmark = [pytest.mark.chaos, pytest.mark.brokers]

PARTITIONS = 6
PROCESS_TIMEOUT = 150.0


async def test_poison_flood(settings: Settings, workers: Workers) -> None:
    dsn = settings.require_database_url()
    if settings.broker_profile == "kafka":
        await accept_oversized(settings, 3 * settings.max_message_bytes)
    group = [start_worker(workers) for _ in range(2)]
    await wait_group_settled(group, PARTITIONS, timeout=90)
    opts = LoadOptions(count=10_000, seed=505, hours=3, invalid_rate=0.0)
    workload = build_workload(opts, PARTITIONS)
    poison = make_poison(3_000, PARTITIONS, seed=505, max_message_bytes=settings.max_message_bytes)
    assert poison_counts(poison)["oversized"] >= 20
    assert max(len(p.value) for p in poison) > 1.5 * settings.max_message_bytes
    mix_poison(workload, poison, seed=505)

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        published = await publish_workload_chunks(settings, workload, rate=5_000)
        final = published.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    record(
        "5 poison flood",
        messages=workload.messages,
        bad_messages=len(poison),
        dead_letters_expected=sum(poison_counts(poison).values()),
        total_processing=t_done - t0,
        longest_stall=mon.longest_stall(t0, t_done, final),
    )
    # Exactly the bad ones, each with its reason and its original bytes.
    expected = digests(e for p in poison for e in p.expected)
    got = await dead_letter_digests(dsn)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, f"missing {list(missing)[:5]}, extra {list(extra)[:5]}"
    await assert_invariants(settings, workload)
    for w in group:
        assert w.proc.poll() is None, w.tail()


def _events_of(batch: Any) -> list[dict[str, Any]]:
    """The valid events of a workload chunk (the messages with a key), decoded."""
    return [orjson.loads(m.value) for m in batch if m.key]


async def test_duplicate_storm(settings: Settings, workers: Workers) -> None:
    dsn = settings.require_database_url()
    group = [start_worker(workers) for _ in range(2)]
    await wait_group_settled(group, PARTITIONS, timeout=90)
    workload = build_workload(LoadOptions(count=10_000, seed=606, hours=3), PARTITIONS)
    acked: asyncio.Queue[int] = asyncio.Queue()
    storm = Receipt()
    copies = 0

    async def replay() -> None:
        # Each chunk, once the broker acknowledged its originals (a copy never
        # overtakes its original): again as singles, twice in envelopes of 50,
        # every third chunk a third time as singles, and envelopes repeating events.
        nonlocal copies
        async with Publisher(settings) as pub:
            for _ in workload.batches:
                i = await acked.get()
                events = _events_of(workload.batches[i])
                rounds = [(events, 1), (events, 50), (list(reversed(events)), 50)]
                if i % 3 == 0:
                    rounds.append((events, 1))
                repeated = [e for e in events[:200] for _ in range(3)]
                rounds.append((repeated, 50))
                for batch, envelope in rounds:
                    storm.merge(await pub.publish_events(batch, envelope_size=envelope))
                    copies += len(batch)

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        storming = asyncio.create_task(replay())
        published = await publish_workload_chunks(
            settings, workload, rate=4_000, on_acked=acked.put_nowait
        )
        await storming
        final = dict(published.receipt.end_offsets)
        for p, end in storm.end_offsets.items():
            final[p] = max(final.get(p, 0), end)
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    record(
        "6 duplicate storm",
        original_events=workload.options.count,
        replayed_copies=copies,
        messages_in_topic=sum(final.values()),
        total_processing=t_done - t0,
        longest_stall=mon.longest_stall(t0, t_done, final),
    )
    assert copies > 2 * len(workload.unique)
    await assert_invariants(settings, workload)
    for w in group:
        assert w.proc.poll() is None, w.tail()
