"""pipeline.core.window: UTC hour buckets, the time limits, and the revision (late) rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.timeparse import MAX_US, parse_timestamp
from pipeline.core.window import HOUR_US, hour_end_us, hour_start_us, is_revision, time_verdict

SECOND = 1_000_000


def _utc_us(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * SECOND  # type: ignore[misc]


H22 = _utc_us(2023, 11, 14, 22)  # 1699999200 s: an hour boundary
H21 = H22 - HOUR_US


def test_hour_constant() -> None:
    assert HOUR_US == 3600 * SECOND
    assert H22 == 1_699_999_200 * SECOND


@pytest.mark.parametrize(
    ("spelling", "bucket"),
    [
        ("2023-11-15T03:43:20+05:30", H22),  # 22:13:20Z
        ("2023-11-14T22:13:20Z", H22),
        (1700000000, H22),
        (1700000000.0, H22),
        ("2023-11-15T03:29:59+05:30", H21),  # 21:59:59Z, although 03:xx local
        ("2023-11-15T03:30:00+05:30", H22),  # exactly 22:00Z
        ("2023-11-15T03:44:59+05:45", H21),  # Nepal: 21:59:59Z
        ("2023-11-15T03:45:00+05:45", H22),
        ("2023-11-14T12:30:00-09:30", H22),  # Marquesas: 22:00Z
        ("2023-11-14T12:29:59.999999-09:30", H21),
        ("2023-11-15T08:00:00+10:00", H22),
        (1699999199.5, H21),  # 0.5 s before the hour boundary
        (1699999199.999999, H21),
        (1699999199, H21),
        (1699999200.0, H22),  # exactly on it
        (1699999200, H22),
        ("2023-11-14T21:59:59.5Z", H21),
        ("2023-11-14T22:00:00Z", H22),
        ("2023-11-14T22:59:59.999999Z", H22),
        ("2023-11-14T23:00:00Z", H22 + HOUR_US),
    ],
)
def test_hour_bucket_of_every_spelling(spelling: object, bucket: int) -> None:
    ts = parse_timestamp(spelling)
    assert hour_start_us(ts) == bucket
    assert hour_end_us(ts) == bucket + HOUR_US


def test_hour_bucket_is_a_utc_hour() -> None:
    start = hour_start_us(parse_timestamp("2023-11-15T03:43:20+05:30"))
    assert datetime.fromtimestamp(start / SECOND, UTC) == datetime(2023, 11, 14, 22, tzinfo=UTC)


def test_hour_edges() -> None:
    assert hour_start_us(0) == 0
    assert hour_end_us(0) == HOUR_US
    assert hour_start_us(HOUR_US - 1) == 0
    assert hour_start_us(HOUR_US) == HOUR_US
    assert hour_end_us(HOUR_US - 1) == HOUR_US


@settings(max_examples=50, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=MAX_US))
def test_every_instant_lies_in_its_hour(ts: int) -> None:
    start, end = hour_start_us(ts), hour_end_us(ts)
    assert start % HOUR_US == 0
    assert start <= ts < end
    assert end - start == HOUR_US
    assert hour_start_us(start) == start
    assert hour_start_us(end - 1) == start


NOW = 1_700_000_000 * SECOND


class TestTimeVerdict:
    def test_in_range_is_accepted(self) -> None:
        assert time_verdict(NOW, NOW, 0, 3600) is None
        assert time_verdict(NOW - 10 * SECOND, NOW, 60, 3600) is None

    def test_future_limit_is_inclusive(self) -> None:
        assert time_verdict(NOW + 3600 * SECOND, NOW, 0, 3600) is None
        assert time_verdict(NOW + 3600 * SECOND + 1, NOW, 0, 3600) == "too_far_in_future"

    def test_zero_future_allowance(self) -> None:
        assert time_verdict(NOW, NOW, 0, 0) is None
        assert time_verdict(NOW + 1, NOW, 0, 0) == "too_far_in_future"

    def test_age_limit_off_by_default(self) -> None:
        assert time_verdict(0, NOW, 0, 3600) is None

    def test_age_limit_is_inclusive(self) -> None:
        assert time_verdict(NOW - 60 * SECOND, NOW, 60, 3600) is None
        assert time_verdict(NOW - 60 * SECOND - 1, NOW, 60, 3600) == "too_late"
        assert time_verdict(0, NOW, 60, 3600) == "too_late"

    def test_future_takes_precedence_in_its_range(self) -> None:
        # An event can only be one of the two; the future check comes first.
        assert time_verdict(NOW + 7200 * SECOND, NOW, 1, 3600) == "too_far_in_future"


class TestIsRevision:
    TS = H22 + 600 * SECOND  # 22:10Z, hour end 23:00Z
    END = H22 + HOUR_US

    def test_no_watermark_is_never_a_revision(self) -> None:
        assert is_revision(self.TS, None, 300) is False

    def test_watermark_before_hour_end_plus_grace(self) -> None:
        assert is_revision(self.TS, self.END + 300 * SECOND - 1, 300) is False
        assert is_revision(self.TS, self.END, 300) is False
        assert is_revision(self.TS, self.TS, 300) is False

    def test_watermark_at_or_past_hour_end_plus_grace(self) -> None:
        # Same comparison as the hour_completeness view: hour + 1 h + grace <= low watermark.
        assert is_revision(self.TS, self.END + 300 * SECOND, 300) is True
        assert is_revision(self.TS, self.END + 300 * SECOND + 1, 300) is True
        assert is_revision(self.TS, self.END + 10 * HOUR_US, 300) is True

    def test_zero_grace(self) -> None:
        assert is_revision(self.TS, self.END - 1, 0) is False
        assert is_revision(self.TS, self.END, 0) is True

    def test_watermark_zero_is_a_watermark(self) -> None:
        # 0 (the epoch) is a real watermark, distinct from None.
        assert is_revision(0, 0, 0) is False
        assert is_revision(0, HOUR_US, 0) is True

    @settings(max_examples=50, deadline=None, database=None)
    @given(
        st.integers(0, 10**17),
        st.integers(0, 10**17),
        st.integers(0, 86_400),
    )
    def test_matches_the_definition(self, ts: int, watermark: int, grace: int) -> None:
        expected = hour_start_us(ts) + HOUR_US + grace * SECOND <= watermark
        assert is_revision(ts, watermark, grace) is expected
