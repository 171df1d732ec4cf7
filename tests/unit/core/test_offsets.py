"""pipeline.core.offsets: the offset rule, the frontier of planned batches, out-of-range logs."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.offsets import (
    LogRange,
    OffsetGuard,
    Span,
    frontier_of,
    holes_of,
    out_of_range,
    spans_of,
)


def guarded(baseline: int, partition: int = 0) -> OffsetGuard:
    guard = OffsetGuard()
    guard.assign(partition, baseline)
    return guard


class TestSpans:
    def test_consecutive_offsets_make_one_span(self) -> None:
        assert spans_of([3, 1, 2, 2, 7]) == [Span(1, 4), Span(7, 8)]

    def test_frontier_walks_over_touching_and_overlapping_spans(self) -> None:
        assert frontier_of(10, [Span(12, 15), Span(10, 12), Span(11, 13)]) == 15

    def test_frontier_stops_at_the_first_hole(self) -> None:
        assert frontier_of(10, [Span(10, 12), Span(13, 20)]) == 12
        assert frontier_of(10, [Span(11, 20)]) == 10

    def test_spans_behind_the_start_do_not_move_it_back(self) -> None:
        assert frontier_of(10, [Span(3, 5)]) == 10
        assert frontier_of(10, [Span(3, 11)]) == 11

    def test_holes_are_the_uncovered_stretches_up_to_the_last_span(self) -> None:
        assert holes_of(0, [Span(1231, 1639)]) == [Span(0, 1231)]
        assert holes_of(10, [Span(10, 12), Span(14, 15), Span(20, 21)]) == [
            Span(12, 14),
            Span(15, 20),
        ]
        assert holes_of(10, [Span(3, 12)]) == []


class TestOutOfRange:
    def test_inside_the_log_and_at_either_end_is_in_range(self) -> None:
        log = LogRange(100, 500)
        assert not out_of_range(100, log)
        assert not out_of_range(300, log)
        assert not out_of_range(500, log)  # caught up: the next event lands at 500

    def test_beyond_the_end_is_out_of_range(self) -> None:
        # A memory-only broker that came back empty behind kept offsets.
        assert out_of_range(3228, LogRange(0, 0))
        assert out_of_range(501, LogRange(100, 500))

    def test_below_the_start_is_out_of_range(self) -> None:
        # Retention deleted events that were never stored.
        assert out_of_range(99, LogRange(100, 500))


class TestGuard:
    def test_a_partition_with_no_row_is_guarded_from_the_log_start(self) -> None:
        # The bug of the stale run: no row, a run from 1231 handed over first.
        # The frontier must not jump to the run's end: 0..1230 were never read.
        guard = guarded(0)
        assert guard.holes(0, [Span(1231, 1639)]) == [Span(0, 1231)]
        assert guard.advance(0, [Span(1231, 1639)]) == 0
        assert guard.held() == {0: 0}

    def test_a_partition_whose_log_starts_later_is_guarded_from_there(self) -> None:
        guard = guarded(500)
        assert guard.advance(0, [Span(500, 510)]) == 510

    def test_batches_that_follow_each_other_pass(self) -> None:
        guard = guarded(10)
        for span in (Span(10, 13), Span(13, 14), Span(14, 18)):
            assert guard.holes(0, [span]) == []
            assert guard.advance(0, [span]) == span.end
        assert guard.gaps_seen == 0 and guard.held() == {}

    def test_a_replay_of_durable_offsets_passes(self) -> None:
        guard = guarded(10)
        assert guard.advance(0, [Span(7, 12)]) == 12

    def test_a_replay_wholly_behind_keeps_the_frontier(self) -> None:
        guard = guarded(10)
        assert guard.advance(0, [Span(3, 5)]) == 10
        assert guard.held() == {}

    def test_a_gap_holds_the_frontier_and_is_logged_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        guard = guarded(10)
        with caplog.at_level(logging.ERROR, logger="pipeline.core.offsets"):
            assert guard.advance(0, [Span(15, 17)]) == 10
            assert guard.advance(0, [Span(17, 19)]) == 10
        assert guard.gaps_seen == 1
        assert [r.message for r in caplog.records] == ["offset gap"]

    def test_a_gap_inside_a_batch_stops_the_frontier_there(self) -> None:
        guard = guarded(10)
        assert guard.advance(0, spans_of([10, 11, 13, 14])) == 12
        assert guard.held() == {0: 12}

    def test_a_filled_hole_releases_the_partition(self) -> None:
        guard = guarded(10)
        guard.advance(0, [Span(15, 17)])
        assert guard.advance(0, [Span(10, 15), Span(15, 17)]) == 17
        assert guard.held() == {}

    def test_a_proven_absence_is_no_hole(self) -> None:
        # A run 10..12 whose fetch went on to 14: 13 is a control marker.
        guard = guarded(10)
        assert guard.advance(0, [Span(10, 14)]) == 14
        assert guard.advance(0, [Span(14, 15)]) == 15

    def test_partitions_are_independent(self) -> None:
        guard = guarded(0)
        guard.assign(1, 100)
        assert guard.advance(0, [Span(0, 5)]) == 5
        assert guard.advance(1, [Span(101, 103)]) == 100
        assert guard.held() == {1: 100}

    def test_a_kept_partition_resumes_at_the_later_of_its_frontier_and_baseline(self) -> None:
        guard = guarded(10)
        guard.advance(0, [Span(10, 20)])
        assert guard.resume_at(0, 15) == 20  # a batch still in flight planned up to 20
        assert guard.resume_at(0, 25) == 25
        assert guard.resume_at(1, 7) == 7  # new: its baseline

    def test_rewind_goes_back_to_the_durable_offset(self) -> None:
        guard = guarded(10)
        guard.advance(0, [Span(10, 20)])
        guard.rewind(0, 10)
        assert guard.frontier(0) == 10
        assert guard.holes(0, [Span(20, 25)]) == [Span(10, 20)]

    def test_forget_drops_the_partition(self) -> None:
        guard = guarded(10)
        guard.forget([0, 9])
        assert guard.frontier(0) is None
        assert guard.holes(0, [Span(50, 51)]) == []


@given(
    st.integers(min_value=0, max_value=50),
    st.lists(st.integers(min_value=0, max_value=120), max_size=60),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=120), st.integers(min_value=0, max_value=8)),
        max_size=6,
    ),
)
def test_the_frontier_never_passes_an_offset_neither_read_nor_proven(
    baseline: int, offsets: list[int], absent: list[tuple[int, int]]
) -> None:
    guard = guarded(baseline)
    spans = [*spans_of(offsets), *(Span(a, a + n) for a, n in absent)]
    covered = set(offsets) | {o for a, n in absent for o in range(a, a + n)}
    frontier = guard.advance(0, spans)
    assert frontier >= baseline
    assert all(o in covered for o in range(baseline, frontier))
    # ... and it goes as far as the rule allows.
    assert frontier not in covered
    holes = guard.holes(0, spans)
    assert {o for h in holes for o in range(h.start, h.end)} == {
        o for o in range(frontier, max((s.end for s in spans), default=0)) if o not in covered
    }
