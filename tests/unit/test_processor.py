"""Processor state around the write-behind: planned vs durable offsets, Kafka commit caps."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import orjson
import pytest

from pipeline.batch import RawMessage
from pipeline.dedup_state import DedupState
from pipeline.processor import Processor
from pipeline.settings import Settings
from pipeline.sink import Abandoned, WriteResult


class TP(NamedTuple):
    topic: str
    partition: int


class FakeTable:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        pass


async def _no_dead(*_: Any) -> None:
    pass


def processor() -> Processor:
    sink: Any = None  # prepare() and the state around it never touch the sink
    return Processor(Settings(), sink, DedupState(FakeTable(), 1000), _no_dead)


def messages(partition: int, offsets: range) -> list[RawMessage]:
    return [
        RawMessage(
            "events",
            partition,
            o,
            orjson.dumps({"event_name": "v", "channel": "web", "user_id": f"u{o}", "timestamp": o}),
        )
        for o in offsets
    ]


def test_kafka_commits_are_capped_at_the_durable_offsets() -> None:
    p = processor()
    p.on_assigned([0, 1], {0: (100, None)})
    offsets = {TP("events", 0): 250, TP("events", 1): 7, TP("events", 2): 9, TP("other", 0): 5}
    # partition 1 starts from 0 (no record); partition 2 is not ours: nothing committed for it
    assert p.cap_commits("events", offsets) == {
        TP("events", 0): 100,
        TP("events", 1): 0,
        TP("other", 0): 5,
    }


async def test_offsets_already_durable_are_skipped() -> None:
    p = processor()
    p.on_assigned([0], {0: (5, None)})
    prepared = await p.prepare(messages(0, range(0, 8)))
    assert prepared is not None
    assert prepared.plan.offsets[0] == {5, 6, 7}
    assert p.metrics.skipped.value == 5


async def test_a_kept_partition_resumes_where_planned_but_durable_stays_true() -> None:
    p = processor()
    p.on_assigned([0], {0: (0, None)})
    prepared = await p.prepare(messages(0, range(0, 10)))
    assert prepared is not None
    # Faust seeks again before the planned batch committed: continue after it...
    assert p.on_assigned([0], {0: (0, None)}) == {0: 10}
    # ...while Kafka commits and the durable offset stay at what PostgreSQL holds.
    assert p.durable[0] == 0
    assert p.cap_commits("events", {TP("events", 0): 10}) == {TP("events", 0): 0}


async def test_a_discarded_batch_rolls_the_plan_back_so_its_offsets_are_read_again() -> None:
    p = processor()
    p.on_assigned([0], {0: (0, None)})
    first = await p.prepare(messages(0, range(0, 10)))
    assert first is not None
    p.discard(first)
    # The next batch starts after the discarded one: its offsets are a hole to refetch.
    assert p.guard.holes({0: range(10, 20)}) == {0: list(range(10))}
    assert p.on_assigned([0], {0: (0, None)}) == {0: 0}


class RecordingSink:
    """Stands in for PostgreSQL: records what commit() hands over, optionally gives up."""

    def __init__(self, give_up: bool = False) -> None:
        self.give_up = give_up
        self.dlq_done_at_commit: bool | None = None

    async def write(self, plan: Any, abandon: Any, before_commit: Any = None) -> Any:
        await asyncio.sleep(0)
        if self.give_up:
            raise Abandoned()
        await before_commit
        self.dlq_done_at_commit = before_commit.done()
        return WriteResult(len(plan.products), 0, len(plan.dead), 1)


def _with_dead(sink: Any, publish: Any) -> Processor:
    p = Processor(Settings(), sink, DedupState(FakeTable(), 1000), publish)
    p.on_assigned([0], {0: (0, None)})
    return p


async def test_dead_letters_are_published_alongside_the_transaction_and_before_commit() -> None:
    published: list[int] = []

    async def publish(dead: Any, _abandon: Any) -> None:
        await asyncio.sleep(0.05)
        published.append(len(dead))

    sink = RecordingSink()
    p = _with_dead(sink, publish)
    prepared = await p.prepare([*messages(0, range(0, 3)), RawMessage("events", 0, 3, b"{bad")])
    assert prepared is not None
    await p.commit(prepared, lambda: False)
    assert published == [1]
    assert sink.dlq_done_at_commit is True
    assert p.durable[0] == 4


async def test_a_given_up_batch_cancels_its_dead_letter_publish() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def publish(_dead: Any, _abandon: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    p = _with_dead(RecordingSink(give_up=True), publish)
    prepared = await p.prepare([RawMessage("events", 0, 0, b"{bad")])
    assert prepared is not None
    with pytest.raises(Abandoned):
        await p.commit(prepared, lambda: True)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert started.is_set()
    assert p.durable[0] == 0
