"""Preparing a batch: stale runs, already-durable offsets, holes read from the broker, proofs of
absence, a log that moved back."""

from __future__ import annotations

from typing import Any

from pipeline.core.planner import Run, split_runs
from tests.unit.worker.batchkit import WHOLE, assign, batch_path, messages, run


async def test_offsets_already_durable_are_skipped() -> None:
    p = batch_path()
    assign(p, [0], {0: (5, None)})
    prepared = await p.preparer.prepare([run(0, range(0, 8))])
    assert prepared is not None
    assert prepared.plan.offsets[0] == {5, 6, 7}
    assert p.metrics.value("pipeline_messages_skipped_total") == 5


async def test_runs_fetched_before_the_seek_never_reach_the_sink() -> None:
    p = batch_path()
    assert p.book.on_assigned([0], {}, {0: WHOLE}) == {0: 0}
    # Not positioned yet: whatever comes is from before the seek.
    assert await p.preparer.prepare([run(0, range(1231, 1639), epoch=0)]) is None
    p.book.on_positioned({0: 3}, {0: 0})
    # Positioned by seek 3: a run drained before it (epoch 2) is stale.
    assert await p.preparer.prepare([run(0, range(1231, 1639), epoch=2)]) is None
    assert p.metrics.value("pipeline_messages_skipped_total") == 2 * 408
    prepared = await p.preparer.prepare([run(0, range(0, 100), epoch=3)])
    assert prepared is not None and prepared.plan.progress[0].next_offset == 100


async def test_a_partition_with_no_row_never_passes_its_unread_head() -> None:
    # issue 13, seen: no row, a run from 1231 reached the sink first, and its
    # end became the baseline; offsets 0..1230 were never stored.
    p = batch_path()  # no refetch: the hole stays a hole
    assign(p, [0], {})
    prepared = await p.preparer.prepare([run(0, range(1231, 1639))])
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 0
    assert prepared.seeks == {0: 0}


async def test_a_hole_is_read_from_the_broker_before_planning() -> None:
    asked: list[tuple[int, int, int]] = []

    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        asked.append((partition, start, end))
        return messages(partition, range(start, end)), end

    p = batch_path(refetch=refetch)
    assign(p, [0], {})
    prepared = await p.preparer.prepare([run(0, range(1231, 1639))])
    assert prepared is not None
    assert asked == [(0, 0, 1231)]
    assert prepared.plan.offsets[0] == set(range(1639))
    assert prepared.plan.progress[0].next_offset == 1639
    assert prepared.seeks == {}


async def test_offsets_the_broker_proves_absent_do_not_stall_a_partition() -> None:
    # Control markers at 3 and 7 (transactions): the runs never hold them.
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return [], end  # read through: nothing there

    p = batch_path(refetch=refetch)
    assign(p, [0], {0: (0, None)})
    first = await p.preparer.prepare([run(0, range(0, 3))])
    assert first is not None and first.plan.progress[0].next_offset == 3
    second = await p.preparer.prepare([run(0, range(4, 7), fetched_to=8)])
    assert second is not None
    assert second.plan.progress[0].next_offset == 8  # 3 refetched as absent, 7 proven by the fetch
    assert second.seeks == {}


async def test_a_hole_the_broker_cannot_prove_holds_the_durable_offset() -> None:
    async def refetch(topic: str, partition: int, start: int, end: int) -> Any:
        return messages(partition, range(start, start + 2)), start + 2  # then timed out

    p = batch_path(refetch=refetch)
    assign(p, [0], {0: (10, None)})
    prepared = await p.preparer.prepare([run(0, range(20, 25))])
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 12
    assert prepared.seeks == {0: 12}


async def test_a_log_that_moved_back_behind_the_seek_stops_the_partition() -> None:
    p = batch_path()
    assign(p, [0], {0: (500, None)})
    # After the seek to 500 the consumer's position was reset to the log start.
    assert await p.preparer.prepare([run(0, range(0, 20))]) is None
    assert 0 in p.book.stopped


async def test_a_trailing_absent_offset_moves_the_durable_offset_without_records() -> None:
    p = batch_path()
    assign(p, [0], {0: (5, None)})
    prepared = await p.preparer.prepare(
        [run(0, range(3, 5), fetched_to=6)]
    )  # replays, then a marker
    assert prepared is not None
    assert prepared.plan.progress[0].next_offset == 6
    assert prepared.plan.events == []


def test_an_empty_probe_run_survives_the_lane_split() -> None:
    probe = Run(0, (), 9)
    assert split_runs([probe, run(1, range(0, 3))], 2, 10**6) == [[probe, run(1, range(0, 3))]]
