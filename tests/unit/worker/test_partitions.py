"""The partition book: baselines, stopped partitions, planned vs durable offsets, roll-backs,
tail probes, Kafka commit caps."""

from __future__ import annotations

from typing import Any

from pipeline.core.offsets import LogRange, Span
from tests.unit.worker.batchkit import TP, WHOLE, assign, batch_path, run


def test_kafka_commits_are_capped_at_the_durable_offsets() -> None:
    p = batch_path()
    assign(p, [0, 1], {0: (100, None)}, {0: WHOLE, 1: LogRange(40, 90)})
    offsets = {TP("events", 0): 250, TP("events", 1): 70, TP("events", 2): 9, TP("other", 0): 5}
    # partition 1 has no row: its baseline is its log start; partition 2 is not ours
    assert p.book.cap_commits("events", offsets) == {
        TP("events", 0): 100,
        TP("events", 1): 40,
        TP("other", 0): 5,
    }


async def test_a_durable_offset_outside_the_log_stops_the_partition() -> None:
    p = batch_path()
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
    assert set(p.book.stopped) == {0, 1}
    assert p.book.stopped[0].durable == 3228 and p.book.stopped[0].log == LogRange(0, 0)
    assert "partition 0" in p.book.stopped[0].describe()
    assert p.metrics.value("pipeline_partition_out_of_range", partition="0") == 1
    assert p.metrics.value("pipeline_partition_out_of_range", partition="2") == 0
    # Nothing of a stopped partition is planned or committed.
    assert await p.preparer.prepare([run(0, range(0, 5)), run(1, range(10, 12))]) is None
    assert p.book.cap_commits("events", {TP("events", 0): 5, TP("events", 1): 12}) == {}
    # An operator reset the offsets: the next assignment resumes them.
    assert assign(p, [0], {0: (0, None)}, {0: LogRange(0, 5)}) == {0: 0}
    assert 0 not in p.book.stopped


async def test_a_kept_partition_resumes_where_planned_but_durable_stays_true() -> None:
    p = batch_path()
    assign(p, [0], {0: (0, None)})
    prepared = await p.preparer.prepare([run(0, range(0, 10))])
    assert prepared is not None
    # Faust seeks again before the planned batch committed: continue after it...
    assert assign(p, [0], {0: (0, None)}, epoch=2) == {0: 10}
    # ...while Kafka commits and the durable offset stay at what PostgreSQL holds.
    assert p.book.durable[0] == 0
    assert p.book.cap_commits("events", {TP("events", 0): 10}) == {TP("events", 0): 0}


async def test_a_discarded_batch_rolls_the_plan_back_so_its_offsets_are_read_again() -> None:
    p = batch_path()
    assign(p, [0], {0: (0, None)})
    first = await p.preparer.prepare([run(0, range(0, 10))])
    assert first is not None
    p.committer.discard(first)
    # The next batch starts after the discarded one: its offsets are a hole to refetch.
    assert [(h.start, h.end) for h in p.book.guard.holes(0, [run_span(10, 20)])] == [(0, 10)]
    assert assign(p, [0], {0: (0, None)}, epoch=2) == {0: 0}


def run_span(start: int, end: int) -> Span:
    return Span(start, end)


async def test_an_idle_tail_of_control_markers_is_probed_and_passed() -> None:
    # An upstream transaction's commit marker at offset 5, the log's last: no run
    # ever arrives to move the durable offset over it.
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return [], end  # the broker read through: nothing there

    p = batch_path(refetch=refetch)
    assign(p, [0], {0: (0, None)})
    first = await p.preparer.prepare([run(0, range(0, 5))])
    assert first is not None and first.plan.progress[0].next_offset == 5
    assert p.book.tail_probes({0: 6}) == []  # first look: the frontier may still move
    [probe] = p.book.tail_probes({0: 6})  # unchanged since: probe it
    assert (probe.partition, list(probe.records), probe.fetched_to) == (0, [], 6)
    prepared = await p.preparer.prepare([probe])
    assert prepared is not None and prepared.plan.progress[0].next_offset == 6
    assert p.book.tail_probes({0: 6}) == []  # caught up


async def test_a_partition_revoked_while_its_seek_was_in_flight_stays_unpositioned() -> None:
    # Seen in the soak: a rebalance revoked the partition between the assignment
    # and the seek's landing; the late landing positioned it with no durable offset,
    # and the next run crashed the intake (KeyError).
    p = batch_path()
    starts = p.book.on_assigned([1], {1: (10, None)}, {1: WHOLE})
    p.book.on_revoked([1])
    p.book.on_positioned({1: 5}, starts)
    assert p.book.positioned == set()
    assert await p.preparer.prepare([run(1, range(10, 20), epoch=5)]) is None
