"""Runs of records as Faust messages, and takes counted in records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from pipeline.worker import delivery

EVENTS = "events"


def record(partition: int, offset: int, value: bytes = b"{}", topic: str = EVENTS) -> Any:
    return ConsumerRecord(
        topic, partition, offset, 1_700_000_000_000, 0, None, value, None, 0, 0, []
    )


def test_a_run_is_one_message_at_its_last_offset() -> None:
    tp = TP(EVENTS, 3)
    records = [record(3, 10, b"ab"), record(3, 11, b"cde"), record(3, 12, b"f")]
    run = delivery.run_of(tp, records, generation_id=7)
    assert (run.topic, run.partition, run.offset, run.tp) == (EVENTS, 3, 12, tp)
    assert run.records == records
    assert run.generation_id == 7
    assert run.serialized_value_size == 6
    assert run.timestamp == 1_700_000_000.0


class FakeConsumer:
    """What ``getmany_runs`` reads of Faust's consumer."""

    def __init__(self, fetched: dict[TP, list[Any]], active: set[TP] | None = None) -> None:
        self.fetched = fetched
        self.active = active
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions: set[TP] = set()
        self.app = type("App", (), {"consumer_generation_id": 4})()
        self.seeks = 0

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return self.fetched, self.active

    async def perform_seek(self) -> None:
        self.seeks += 1

    def _to_message(self, tp: TP, rec: Any) -> Any:
        return ("one", tp, rec.offset)


async def collect(it: AsyncIterator[tuple[TP, Any]]) -> list[tuple[TP, Any]]:
    return [item async for item in it]


async def test_the_events_topic_comes_a_run_per_partition_other_topics_record_by_record() -> None:
    p0, p1, log = TP(EVENTS, 0), TP(EVENTS, 1), TP("changelog", 0)
    fetched = {
        p0: [record(0, 5), record(0, 6)],
        log: [record(0, 1, topic="changelog"), record(0, 2, topic="changelog")],
        p1: [record(1, 9)],
    }
    got = await collect(delivery.getmany_runs(FakeConsumer(fetched), EVENTS, timeout=1.0))
    assert [tp for tp, _ in got] == [p0, log, log, p1]
    run0, run1 = got[0][1], got[3][1]
    assert isinstance(run0, delivery.RecordRun) and [r.offset for r in run0.records] == [5, 6]
    assert run0.offset == 6 and run0.generation_id == 4
    assert isinstance(run1, delivery.RecordRun) and run1.offset == 9
    assert got[1][1] == ("one", log, 1) and got[2][1] == ("one", log, 2)


async def test_inactive_partitions_are_held_back_unless_buffered() -> None:
    p0, p1, p2, p3 = TP(EVENTS, 0), TP(EVENTS, 1), TP(EVENTS, 2), TP(EVENTS, 3)
    fetched = {p0: [record(0, 1)], p1: [record(1, 1)], p2: [record(2, 1)], p3: []}
    consumer = FakeConsumer(fetched, active={p0, p3})
    consumer._buffered_partitions = {p1}
    got = await collect(delivery.getmany_runs(consumer, EVENTS, timeout=1.0))
    assert [tp for tp, _ in got] == [p0, p1]


async def test_a_stopped_flow_delivers_nothing_and_seeks_back() -> None:
    consumer = FakeConsumer({TP(EVENTS, 0): [record(0, 1)]})
    consumer.flow_active = False
    assert await collect(delivery.getmany_runs(consumer, EVENTS, timeout=1.0)) == []
    assert consumer.seeks == 1


async def test_a_new_generation_stops_the_delivery() -> None:
    p0, p1 = TP(EVENTS, 0), TP(EVENTS, 1)
    consumer = FakeConsumer({p0: [record(0, 1)], p1: [record(1, 1)]})
    it = delivery.getmany_runs(consumer, EVENTS, timeout=1.0)
    first = await it.__anext__()
    consumer.app.consumer_generation_id = 5  # a rebalance
    rest = await collect(it)
    assert first[0] == p0 and rest == []


def test_a_run_carries_what_its_fetch_proved() -> None:
    tp = TP(EVENTS, 3)
    fetched = delivery.Fetched([record(3, 10), record(3, 11)], epoch=4, fetched_to=13)
    run = delivery.run_of(tp, fetched, generation_id=7)
    assert (run.epoch, run.fetched_to) == (4, 13)  # 12 is a control marker the fetch read past
    plain = delivery.run_of(tp, [record(3, 10)], generation_id=7)
    assert (plain.epoch, plain.fetched_to) == (0, 11)  # proves nothing past its records
