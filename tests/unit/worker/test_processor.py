"""Processor state around the write-behind: baselines, stale runs, holes, out-of-range logs,
planned vs durable offsets, Kafka commit caps."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import orjson
import pytest

from pipeline.core.offsets import LogRange, Span
from pipeline.core.planner import UNSTORABLE, RawMessage, Run, split_runs
from pipeline.settings import Settings
from pipeline.sink.writer import Abandoned, Unstorable, WriteResult
from pipeline.worker.dedup_table import DedupState
from pipeline.worker.processor import Processor


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


def processor(refetch: Any = None) -> Processor:
    sink: Any = None  # prepare() and the state around it never touch the sink
    return Processor(Settings(), sink, DedupState(FakeTable(), 1000), _no_dead, refetch=refetch)


WHOLE = LogRange(0, 10**9)


def assign(
    p: Processor,
    partitions: list[int],
    durable: dict[int, tuple[int, int | None]],
    logs: dict[int, LogRange] | None = None,
    epoch: int = 1,
) -> dict[int, int]:
    """Assignment as the worker does it: read the baselines, seek (epoch), then positioned."""
    starts = p.on_assigned(partitions, durable, logs or dict.fromkeys(partitions, WHOLE))
    p.on_positioned(dict.fromkeys(starts, epoch), starts)
    return starts


def run(partition: int, offsets: range, epoch: int = 1, fetched_to: int | None = None) -> Run:
    records = messages(partition, offsets)
    return Run(partition, records, fetched_to or records[-1].offset + 1, epoch)


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
    assign(p, [0, 1], {0: (100, None)}, {0: WHOLE, 1: LogRange(40, 90)})
    offsets = {TP("events", 0): 250, TP("events", 1): 70, TP("events", 2): 9, TP("other", 0): 5}
    # partition 1 has no row: its baseline is its log start; partition 2 is not ours
    assert p.cap_commits("events", offsets) == {
        TP("events", 0): 100,
        TP("events", 1): 40,
        TP("other", 0): 5,
    }


async def test_offsets_already_durable_are_skipped() -> None:
    p = processor()
    assign(p, [0], {0: (5, None)})
    prepared = await p.prepare([run(0, range(0, 8))])
    assert prepared is not None
    assert prepared.plan.offsets[0] == {5, 6, 7}
    assert p.metrics.value("pipeline_messages_skipped_total") == 5


async def test_runs_fetched_before_the_seek_never_reach_the_sink() -> None:
    p = processor()
    assert p.on_assigned([0], {}, {0: WHOLE}) == {0: 0}
    # Not positioned yet: whatever comes is from before the seek.
    assert await p.prepare([run(0, range(1231, 1639), epoch=0)]) is None
    p.on_positioned({0: 3}, {0: 0})
    # Positioned by seek 3: a run drained before it (epoch 2) is stale.
    assert await p.prepare([run(0, range(1231, 1639), epoch=2)]) is None
    assert p.metrics.value("pipeline_messages_skipped_total") == 2 * 408
    prepared = await p.prepare([run(0, range(0, 100), epoch=3)])
    assert prepared is not None and prepared.plan.progress[0].next_offset == 100


async def test_a_partition_with_no_row_never_passes_its_unread_head() -> None:
    # issue 13, seen: no row, a run from 1231 reached the sink first, and its
    # end became the baseline; offsets 0..1230 were never stored.
    p = processor()  # no refetch: the hole stays a hole
    assign(p, [0], {})
    prepared = await p.prepare([run(0, range(1231, 1639))])
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 0
    assert prepared.seeks == {0: 0}


async def test_a_hole_is_read_from_the_broker_before_planning() -> None:
    asked: list[tuple[int, int, int]] = []

    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        asked.append((partition, start, end))
        return messages(partition, range(start, end)), end

    p = processor(refetch)
    assign(p, [0], {})
    prepared = await p.prepare([run(0, range(1231, 1639))])
    assert prepared is not None
    assert asked == [(0, 0, 1231)]
    assert prepared.plan.offsets[0] == set(range(1639))
    assert prepared.plan.progress[0].next_offset == 1639
    assert prepared.seeks == {}


async def test_offsets_the_broker_proves_absent_do_not_stall_a_partition() -> None:
    # Control markers at 3 and 7 (transactions): the runs never hold them.
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return [], end  # read through: nothing there

    p = processor(refetch)
    assign(p, [0], {0: (0, None)})
    first = await p.prepare([run(0, range(0, 3))])
    assert first is not None and first.plan.progress[0].next_offset == 3
    second = await p.prepare([run(0, range(4, 7), fetched_to=8)])
    assert second is not None
    assert second.plan.progress[0].next_offset == 8  # 3 refetched as absent, 7 proven by the fetch
    assert second.seeks == {}


async def test_a_hole_the_broker_cannot_prove_holds_the_durable_offset() -> None:
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return messages(partition, range(start, start + 2)), start + 2  # then timed out

    p = processor(refetch)
    assign(p, [0], {0: (10, None)})
    prepared = await p.prepare([run(0, range(20, 25))])
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 12
    assert prepared.seeks == {0: 12}


async def test_a_durable_offset_outside_the_log_stops_the_partition() -> None:
    p = processor()
    starts = assign(
        p,
        [0, 1, 2],
        {0: (3228, None), 1: (5, None)},
        {
            0: LogRange(0, 0),  # the broker came back empty
            1: LogRange(10, 50),  # retention passed the durable offset
            2: LogRange(0, 7),
        },
    )
    assert starts == {2: 0}
    assert set(p.stopped) == {0, 1}
    assert p.stopped[0].durable == 3228 and p.stopped[0].log == LogRange(0, 0)
    assert "partition 0" in p.stopped[0].describe()
    assert p.metrics.value("pipeline_partition_out_of_range", partition="0") == 1
    assert p.metrics.value("pipeline_partition_out_of_range", partition="2") == 0
    # Nothing of a stopped partition is planned or committed.
    assert await p.prepare([run(0, range(0, 5)), run(1, range(10, 12))]) is None
    assert p.cap_commits("events", {TP("events", 0): 5, TP("events", 1): 12}) == {}
    # An operator reset the offsets: the next assignment resumes them.
    assert assign(p, [0], {0: (0, None)}, {0: LogRange(0, 5)}) == {0: 0}
    assert 0 not in p.stopped


async def test_a_log_that_moved_back_behind_the_seek_stops_the_partition() -> None:
    p = processor()
    assign(p, [0], {0: (500, None)})
    # After the seek to 500 the consumer's position was reset to the log start.
    assert await p.prepare([run(0, range(0, 20))]) is None
    assert 0 in p.stopped


async def test_a_trailing_absent_offset_moves_the_durable_offset_without_records() -> None:
    p = processor()
    assign(p, [0], {0: (5, None)})
    prepared = await p.prepare([run(0, range(3, 5), fetched_to=6)])  # replays, then a marker
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 6
    assert prepared.plan.events == []


async def test_a_kept_partition_resumes_where_planned_but_durable_stays_true() -> None:
    p = processor()
    assign(p, [0], {0: (0, None)})
    prepared = await p.prepare([run(0, range(0, 10))])
    assert prepared is not None
    # Faust seeks again before the planned batch committed: continue after it...
    assert assign(p, [0], {0: (0, None)}, epoch=2) == {0: 10}
    # ...while Kafka commits and the durable offset stay at what PostgreSQL holds.
    assert p.durable[0] == 0
    assert p.cap_commits("events", {TP("events", 0): 10}) == {TP("events", 0): 0}


async def test_a_discarded_batch_rolls_the_plan_back_so_its_offsets_are_read_again() -> None:
    p = processor()
    assign(p, [0], {0: (0, None)})
    first = await p.prepare([run(0, range(0, 10))])
    assert first is not None
    p.discard(first)
    # The next batch starts after the discarded one: its offsets are a hole to refetch.
    assert [(h.start, h.end) for h in p.guard.holes(0, [run_span(10, 20)])] == [(0, 10)]
    assert assign(p, [0], {0: (0, None)}, epoch=2) == {0: 0}


def run_span(start: int, end: int) -> Span:
    return Span(start, end)


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
    assign(p, [0], {0: (0, None)})
    return p


async def test_dead_letters_are_published_alongside_the_transaction_and_before_commit() -> None:
    published: list[int] = []

    async def publish(dead: Any, _abandon: Any) -> None:
        await asyncio.sleep(0.05)
        published.append(len(dead))

    sink = RecordingSink()
    p = _with_dead(sink, publish)
    records = [*messages(0, range(0, 3)), RawMessage("events", 0, 3, b"{bad")]
    prepared = await p.prepare([Run.of(records, epoch=1)])
    assert prepared is not None
    await p.commit(prepared, lambda: False)
    assert published == [1]
    assert sink.dlq_done_at_commit is True
    assert p.durable[0] == 4


class RefusingSink:
    """Refuses the event at ``offset`` once, as PostgreSQL refuses content it cannot store."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.plans: list[tuple[list[int], list[tuple[str, int]]]] = []

    async def write(self, plan: Any, abandon: Any, before_commit: Any = None) -> Any:
        if before_commit is not None:
            await before_commit
        self.plans.append(
            (
                [e.source.offset for e in plan.products],
                [(d.reason, d.source.offset) for d in plan.dead],
            )
        )
        bad = [e for e in plan.products if e.source.offset == self.offset]
        if bad:
            raise Unstorable([(bad[0], "PostgreSQL refused it (DataError): no")])
        return WriteResult(len(plan.products), 0, len(plan.dead), 1)


async def test_an_event_postgresql_refuses_is_dead_lettered_and_the_batch_commits() -> None:
    published: list[list[int]] = []

    async def publish(dead: Any, _abandon: Any) -> None:
        published.append([d.source.offset for d in dead])

    sink = RefusingSink(offset=1)
    p = _with_dead(sink, publish)
    prepared = await p.prepare([Run.of(messages(0, range(0, 3)), epoch=1)])
    assert prepared is not None
    await p.commit(prepared, lambda: False)
    assert sink.plans == [([0, 1, 2], []), ([0, 2], [(UNSTORABLE, 1)])]
    assert published == [[1]]  # the new dead letter reached the DLQ before the commit
    assert p.durable[0] == 3


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
    prepared = await p.prepare([Run.of([RawMessage("events", 0, 0, b"{bad")], epoch=1)])
    assert prepared is not None
    with pytest.raises(Abandoned):
        await p.commit(prepared, lambda: True)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert started.is_set()
    assert p.durable[0] == 0


async def test_an_idle_tail_of_control_markers_is_probed_and_passed() -> None:
    # An upstream transaction's commit marker at offset 5, the log's last: no run
    # ever arrives to move the durable offset over it.
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return [], end  # the broker read through: nothing there

    p = processor(refetch)
    assign(p, [0], {0: (0, None)})
    first = await p.prepare([run(0, range(0, 5))])
    assert first is not None and first.plan.progress[0].next_offset == 5
    assert p.tail_probes({0: 6}) == []  # first look: the frontier may still move
    [probe] = p.tail_probes({0: 6})  # unchanged since: probe it
    assert (probe.partition, list(probe.records), probe.fetched_to) == (0, [], 6)
    prepared = await p.prepare([probe])
    assert prepared is not None and prepared.plan.progress[0].next_offset == 6
    assert p.tail_probes({0: 6}) == []  # caught up


def test_an_empty_probe_run_survives_the_lane_split() -> None:
    probe = Run(0, (), 9)
    assert split_runs([probe, run(1, range(0, 3))], 2, 10**6) == [[probe, run(1, range(0, 3))]]


async def test_a_partition_revoked_while_its_seek_was_in_flight_stays_unpositioned() -> None:
    # Seen in the soak: a rebalance revoked the partition between the assignment
    # and the seek's landing; the late landing positioned it with no durable offset,
    # and the next run crashed the intake (KeyError).
    p = processor()
    starts = p.on_assigned([1], {1: (10, None)}, {1: WHOLE})
    p.on_revoked([1])
    p.on_positioned({1: 5}, starts)
    assert p.positioned == set()
    assert await p.prepare([run(1, range(10, 20), epoch=5)]) is None
