"""pipeline.core.latency: the buckets (and migration 0008's copy of them), merging, and the
percentile estimate against the exact nearest-rank percentile, within the documented error."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import latency
from pipeline.core.latency import (
    BOUNDARIES,
    BUCKETS,
    MAX_RELATIVE_ERROR,
    OVERFLOW_MS,
    UNDERFLOW_ERROR_MS,
    bucket_index,
    error_bound,
    histogram,
    merge,
    percentile,
    representative,
    trim,
)

MIGRATION = Path(__file__).resolve().parents[3] / "migrations" / "0008_agent_latency_histogram.sql"


def exact_nearest_rank(values: list[float], p: float) -> float:
    """The definition, independently: the value of rank ceil(p/100 * n) (at least 1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(p)) * len(ordered) / 100))
    return ordered[rank - 1]


# --- the boundaries, here and in the migration ---


def test_the_boundaries_are_log_spaced_from_31_microseconds_to_37_hours() -> None:
    assert len(BOUNDARIES) == 257 and BUCKETS == 258
    assert BOUNDARIES[0] == 0.03125 and OVERFLOW_MS == BOUNDARIES[-1] == 134_218_000
    assert OVERFLOW_MS / 3_600_000 > 37
    assert 1.0 in BOUNDARIES and 1000 < BOUNDARIES[BOUNDARIES.index(1.0) + 80] < 1100
    ratios = [hi / lo for lo, hi in pairwise(BOUNDARIES)]
    assert all(abs(r - 2 ** (1 / 8)) < 1e-4 for r in ratios)
    # 6 significant digits each: exact decimal literals, the same double on both sides
    assert all(float(f"{b:.6g}") == b for b in BOUNDARIES)


def _migration_boundaries() -> list[str]:
    text = MIGRATION.read_text()
    found = re.search(r"width_bucket\(ms, '\{(.*?)\}'::float8\[\]\)", text, re.S)
    assert found, "migration 0008 no longer defines latency_bucket with an array literal"
    return [item.strip() for item in found.group(1).split(",")]


def test_the_migration_uses_exactly_these_boundaries() -> None:
    literals = _migration_boundaries()
    assert [float(x) for x in literals] == list(BOUNDARIES)
    assert "{" + ",".join(literals) + "}" == latency.sql_literal()
    # plain decimals (no exponent): what an analyst reads is what both sides parse
    assert all(re.fullmatch(r"\d+(\.\d+)?", x) for x in literals)


# --- bucketing ---


@pytest.mark.parametrize("i", range(len(BOUNDARIES)))
def test_a_boundary_opens_its_bucket_and_the_float_below_stays_in_the_one_before(i: int) -> None:
    b = BOUNDARIES[i]
    assert bucket_index(b) == i + 1
    assert bucket_index(math.nextafter(b, 0.0)) == i
    assert bucket_index(math.nextafter(b, math.inf)) == i + 1


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [
        (0.0, 0),
        (-0.0, 0),
        (0.03, 0),
        (0.03125, 1),
        (1.0, 41),
        (1.05, 41),
        (1.09051, 42),
        (30_000, 159),
        (OVERFLOW_MS, 257),
        (1e308, 257),
    ],
)
def test_bucket_index(ms: float, bucket: int) -> None:
    assert bucket_index(ms) == bucket


def test_each_bounded_buckets_representative_lies_inside_it() -> None:
    assert representative(0) == UNDERFLOW_ERROR_MS == BOUNDARIES[0] / 2
    assert representative(BUCKETS - 1) == OVERFLOW_MS
    for i in range(1, BUCKETS - 1):
        lo, hi = BOUNDARIES[i - 1], BOUNDARIES[i]
        assert lo < representative(i) < hi
        assert bucket_index(representative(i)) == i
    for bad in (-1, BUCKETS):
        with pytest.raises(ValueError, match="bucket index"):
            representative(bad)


# --- histograms and merging ---


def test_histogram_counts_per_bucket_trimmed() -> None:
    assert histogram([]) == []
    assert histogram([0.0]) == [1]
    assert histogram([1.0, 1.05, 0.0, 2.0]) == [1] + [0] * 40 + [2] + [0] * 7 + [1]
    assert trim([0, 3, 0, 0]) == [0, 3] and trim([0, 0]) == [] and trim([]) == []


_latencies = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=2e8, allow_nan=False),
        st.sampled_from([0.0, *BOUNDARIES[:3], 1.0, 1000.0, OVERFLOW_MS]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None, database=None)
@given(_latencies, _latencies, _latencies)
def test_merging_is_the_histogram_of_both_and_order_free(
    a: list[float], b: list[float], c: list[float]
) -> None:
    ha, hb, hc = histogram(a), histogram(b), histogram(c)
    assert merge(ha, hb) == histogram(a + b) == merge(hb, ha)
    assert merge(merge(ha, hb), hc) == merge(ha, merge(hb, hc))
    assert merge(ha, []) == ha == merge([], ha)
    assert latency.total(merge(ha, hb)) == len(a) + len(b)
    assert not merge(ha, hb) or merge(ha, hb)[-1] > 0  # stays trimmed


# --- percentiles ---


def test_an_empty_histogram_has_no_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([0, 0], 99) is None
    assert latency.percentiles([], [50, 95]) == {50: None, 95: None}


@pytest.mark.parametrize("p", [0, -1, 100.5, math.nan])
def test_a_percentile_outside_0_to_100_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1], p)


def test_nearest_rank_picks_the_bucket_of_the_exact_value() -> None:
    values = [float(v) for v in range(1, 101)]  # exact p50 = 50, p95 = 95, p99 = 99
    h = histogram(values)
    for p, exact in ((50, 50.0), (95, 95.0), (99, 99.0), (100, 100.0), (0.5, 1.0)):
        assert exact_nearest_rank(values, p) == exact
        estimate = percentile(h, p)
        assert estimate is not None
        assert bucket_index(estimate) == bucket_index(exact)
        assert abs(estimate - exact) <= MAX_RELATIVE_ERROR * exact
    # two samples: the median is the lower one (rank ceil(1.0) = 1), not their mean
    assert percentile(histogram([1.0, 1000.0]), 50) == representative(bucket_index(1.0))


def test_the_documented_error_bound() -> None:
    assert 0.0442 < MAX_RELATIVE_ERROR <= 0.0443
    assert error_bound(0.0) == error_bound(0.03) == UNDERFLOW_ERROR_MS
    assert error_bound(1000.0) == pytest.approx(44.3)
    assert error_bound(OVERFLOW_MS) == math.inf
    # the worst case sits at a bucket's lower bound: the bound is tight, not loose
    lo = BOUNDARIES[100]
    assert abs(representative(101) - lo) / lo == pytest.approx(MAX_RELATIVE_ERROR, abs=1e-4)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.one_of(
            # log-uniform over 10 µs .. 10 hours, with zeros and repeated values
            st.floats(min_value=-5, max_value=7.6).map(lambda e: 10.0**e),
            st.just(0.0),
            st.sampled_from(BOUNDARIES),
        ),
        min_size=1,
        max_size=400,
    ),
    st.one_of(st.sampled_from([50, 95, 99, 100]), st.floats(min_value=0.001, max_value=100)),
)
def test_every_estimate_is_within_the_bound_of_the_exact_nearest_rank(
    values: list[float], p: float
) -> None:
    exact = exact_nearest_rank(values, p)
    estimate = percentile(histogram(values), p)
    assert estimate is not None
    assert abs(estimate - exact) <= error_bound(exact), (p, exact, estimate)
