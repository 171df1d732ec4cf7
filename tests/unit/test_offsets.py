"""pipeline.offsets.OffsetGuard: batches must continue where the durable offset stands."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.batch import BatchPlan, Limits, RawMessage, plan_batch
from pipeline.offsets import OffsetGuard


def batch(*parts: tuple[int, list[int]]) -> tuple[BatchPlan, dict[int, int]]:
    """A plan for messages at ``offsets`` per partition, and the first offset of each."""
    messages = [RawMessage("events", p, o, b"null") for p, offsets in parts for o in offsets]
    plan = plan_batch(messages, Limits(), 0, {})
    first: dict[int, int] = {}
    for m in messages:
        first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
    return plan, first


def run(guard: OffsetGuard, *parts: tuple[int, list[int]]) -> tuple[dict[int, int], BatchPlan]:
    """check() then advance(), as the processor does when it plans a batch."""
    plan, first = batch(*parts)
    seeks = guard.check(plan, first)
    guard.advance(plan)
    return seeks, plan


def next_offset(plan: BatchPlan, partition: int = 0) -> int:
    return plan.progress[partition].next_offset


class TestContiguous:
    def test_unknown_partition_is_not_guarded(self) -> None:
        guard = OffsetGuard()
        seeks, plan = run(guard, (0, [50, 51]))
        assert seeks == {}
        assert next_offset(plan) == 52
        assert guard.gaps_seen == 0

    def test_batches_that_follow_each_other_pass(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        for offsets in ([10, 11, 12], [13], [14, 15, 16, 17]):
            seeks, plan = run(guard, (0, offsets))
            assert seeks == {}
            assert next_offset(plan) == offsets[-1] + 1
        assert guard.gaps_seen == 0

    def test_a_batch_that_re_reads_committed_offsets_passes(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        seeks, plan = run(guard, (0, [7, 8, 9, 10, 11]))
        assert seeks == {}
        assert next_offset(plan) == 12

    def test_a_re_read_wholly_before_the_durable_offset_does_not_move_it_back(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        seeks, plan = run(guard, (0, [3, 4]))
        assert seeks == {}
        assert next_offset(plan) == 5  # the sink keeps the greater durable offset
        seeks, _ = run(guard, (0, [12]))  # 10 and 11 are still missing
        assert seeks == {0: 10}

    def test_offset_zero(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 0)
        assert run(guard, (0, [0, 1]))[0] == {}
        assert run(guard, (0, [3]))[0] == {0: 2}


class TestGap:
    def test_batch_starting_after_the_expected_offset(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        with caplog.at_level(logging.ERROR, logger="pipeline.offsets"):
            seeks, plan = run(guard, (0, [15, 16]))
        assert seeks == {0: 10}
        assert next_offset(plan) == 10  # held at the first missing offset
        assert guard.gaps_seen == 1
        assert [r.message for r in caplog.records] == ["offset gap"]

    def test_same_gap_is_not_re_requested(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        assert run(guard, (0, [15, 16]))[0] == {0: 10}
        seeks, plan = run(guard, (0, [17, 18]))
        assert seeks == {}
        assert next_offset(plan) == 10  # still held
        assert guard.gaps_seen == 1

    def test_cleared_when_a_batch_starts_at_the_expected_offset(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        run(guard, (0, [15, 16]))
        seeks, plan = run(guard, (0, [10, 11, 12, 13, 14, 15, 16, 17]))
        assert seeks == {}
        assert next_offset(plan) == 18
        # A later gap is a new gap: requested again.
        seeks, plan = run(guard, (0, [30]))
        assert seeks == {0: 18}
        assert next_offset(plan) == 18
        assert guard.gaps_seen == 2

    def test_gap_inside_a_batch(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        seeks, plan = run(guard, (0, [10, 11, 13, 14]))
        assert seeks == {0: 12}  # the first missing offset
        assert next_offset(plan) == 12
        assert guard.gaps_seen == 1

    def test_gap_inside_a_batch_of_unordered_offsets(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        seeks, plan = run(guard, (0, [12, 10, 13]))
        assert seeks == {0: 11}
        assert next_offset(plan) == 11

    def test_gap_in_a_batch_spanning_a_seek_is_not_committed_past(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        assert run(guard, (0, [15, 16]))[0] == {0: 10}
        # Messages read before the seek took effect, then the re-read from 10 (11 missing).
        _, plan = run(guard, (0, [17, 18, 10, 12]))
        assert next_offset(plan) <= 11  # the durable offset must not pass the missing 11

    def test_unordered_contiguous_offsets_pass(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        assert run(guard, (0, [12, 10, 11]))[0] == {}

    def test_partitions_are_independent(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        guard.reset(1, 100)
        seeks, plan = run(guard, (0, [10, 11]), (1, [105]))
        assert seeks == {1: 100}
        assert next_offset(plan, 0) == 12
        assert next_offset(plan, 1) == 100
        seeks, _ = run(guard, (0, [12]), (1, [100, 101, 102, 103, 104, 105]))
        assert seeks == {}

    def test_repeated_offset_does_not_hide_a_gap(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        seeks, plan = run(guard, (0, [10, 11, 11, 13]))  # 12 is missing
        assert seeks == {0: 12}
        assert next_offset(plan) == 12


class TestResetAndForget:
    def test_reset_sets_a_new_durable_start(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        run(guard, (0, [10, 11]))
        guard.reset(0, 5)  # re-assigned: PostgreSQL says 5
        assert run(guard, (0, [7]))[0] == {0: 5}

    def test_reset_clears_a_pending_seek(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        assert run(guard, (0, [15]))[0] == {0: 10}
        guard.reset(0, 10)
        assert run(guard, (0, [15]))[0] == {0: 10}  # asked again after the reset
        assert guard.gaps_seen == 2

    def test_reset_to_none_stops_guarding(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        guard.reset(0, None)
        seeks, plan = run(guard, (0, [15]))
        assert seeks == {}
        assert next_offset(plan) == 16

    def test_forget_drops_the_partition(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        guard.reset(1, 10)
        run(guard, (0, [15]))
        guard.forget([0])
        seeks, plan = run(guard, (0, [40]), (1, [20]))
        assert seeks == {1: 10}  # partition 0's durable start (10) and pending seek are gone
        assert next_offset(plan, 0) == 41
        assert guard.gaps_seen == 2

    def test_a_commit_after_forget_tracks_the_partition_again(self) -> None:
        # forget() drops what the guard knew; like a partition reset with None, a later
        # commit for it starts tracking it from that commit (a re-assignment resets it).
        guard = OffsetGuard()
        guard.reset(0, 10)
        run(guard, (0, [10, 11]))
        guard.forget([0])
        assert run(guard, (0, [40]))[0] == {}  # not guarded: no durable start known
        assert run(guard, (0, [90]))[0] == {0: 41}  # guarded again from its commit
        guard.reset(0, 12)  # re-assigned: PostgreSQL's record wins
        assert run(guard, (0, [12]))[0] == {}

    def test_forget_unknown_partitions_is_harmless(self) -> None:
        guard = OffsetGuard()
        guard.forget([3, 4])
        guard.forget(iter([]))
        assert run(guard, (3, [1]))[0] == {}

    def test_partition_without_a_record_is_guarded_after_its_first_commit(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, None)
        seeks, plan = run(guard, (0, [0, 1, 2]))
        assert seeks == {}
        assert next_offset(plan) == 3
        seeks, plan = run(guard, (0, [9]))
        assert seeks == {0: 3}
        assert next_offset(plan) == 3


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=15), st.integers(0, 1000))
def test_contiguous_batches_never_seek(sizes: list[int], start: int) -> None:
    guard = OffsetGuard()
    guard.reset(0, start)
    offset = start
    for size in sizes:
        seeks, plan = run(guard, (0, list(range(offset, offset + size))))
        assert seeks == {}
        offset += size
        assert next_offset(plan) == offset
    assert guard.gaps_seen == 0


@settings(max_examples=50, deadline=None, database=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=10, unique=True).map(sorted),
    st.integers(0, 20),
)
def test_durable_offset_never_passes_a_missing_offset(offsets: list[int], expected: int) -> None:
    guard = OffsetGuard()
    guard.reset(0, expected)
    seeks, plan = run(guard, (0, offsets))
    have = set(range(expected)) | set(offsets)
    first_missing = min(set(range(max(have) + 2)) - have)
    assert next_offset(plan) <= max(first_missing, expected)
    if seeks:  # a seek re-reads from exactly the first offset not yet durable
        assert seeks == {0: max(first_missing, expected)}


class TestHoles:
    def test_offsets_a_batch_lacks_from_the_durable_one_on(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        guard.reset(1, 5)
        holes = guard.holes({0: [13, 10, 15], 1: [5, 6, 7], 2: [0, 9]})
        assert holes == {0: [11, 12, 14]}  # partition 2 is not tracked

    def test_replays_below_the_durable_offset_are_no_hole(self) -> None:
        guard = OffsetGuard()
        guard.reset(0, 10)
        assert guard.holes({0: [3, 5, 10, 11]}) == {}
        assert guard.holes({0: [3, 5]}) == {}
