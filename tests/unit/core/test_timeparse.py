"""pipeline.core.timeparse: every spelling of an instant to one integer of epoch microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.timeparse import (
    EPOCH,
    MAX_US,
    MIN_US,
    parse_rfc3339,
    parse_timestamp,
    us_to_datetime,
)

INSTANT_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    "spelling",
    [
        1700000000,
        1700000000.0,
        "2023-11-14T22:13:20Z",
        "2023-11-15T03:43:20+05:30",
        "2023-11-14T17:13:20-05:00",
        "2023-11-15T04:58:20+06:45",
        "2023-11-14T22:13:20+00:00",
        "2023-11-14T22:13:20-00:00",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14t22:13:20Z",
        "2023-11-14T22:13:20z",
        "2023-11-14T22:13:20.0000009Z",  # digits past the microsecond are cut
    ],
)
def test_every_spelling_of_one_instant_gives_the_same_microseconds(spelling: object) -> None:
    assert parse_timestamp(spelling) == INSTANT_US


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("2023-11-14T22:13:20.5Z", INSTANT_US + 500_000),
        ("2023-11-14T22:13:20.123456Z", INSTANT_US + 123_456),
        ("2023-11-14T22:13:20.000001+05:30", INSTANT_US - 19_800_000_000 + 1),
        (1700000000.5, INSTANT_US + 500_000),
        (1700000000.25, INSTANT_US + 250_000),
        (1700000000.000001, INSTANT_US + 1),
        (0, 0),
        (0.0, 0),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T05:30:00+05:30", 0),
        (253_402_300_799, 253_402_300_799_000_000),
        ("9999-12-31T23:59:59.999999Z", MAX_US),
    ],
)
def test_fractions_and_range_ends(spelling: object, expected: int) -> None:
    assert parse_timestamp(spelling) == expected


def test_float_seconds_round_to_the_nearest_microsecond() -> None:
    assert parse_timestamp(1700000000.0000004) == INSTANT_US
    assert parse_timestamp(1700000000.0000006) == INSTANT_US + 1


@pytest.mark.parametrize("value", [-1, -0.5, -1e-9, -(10**30)])
def test_negative_unix_seconds_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"non-negative|outside"):
        parse_timestamp(value)


@pytest.mark.parametrize(
    "value",
    [
        "1969-12-31T23:59:59Z",
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T05:29:59+05:30",
        253_402_300_800,
        10**30,
        1e20,
        "9999-12-31T23:59:59.999999-00:01",
    ],
)
def test_instants_outside_the_supported_range_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"outside 1970-01-01\.\.9999-12-31"):
        parse_timestamp(value)


@pytest.mark.parametrize(
    "value", [True, False, None, [], {}, b"1700000000", object(), [1700000000]]
)
def test_values_that_are_neither_numbers_nor_strings_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="unix seconds"):
        parse_timestamp(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_timestamp(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "1700000000",  # a number in a string is not a unix time
        "2023-11-14",
        "2023-11-14T22:13",
        "2023-11-14T22:13:20",
        "2023-11-14X22:13:20Z",
        "2023-02-29T00:00:00Z",
        "2023-11-31T00:00:00Z",
        "2023-13-01T00:00:00Z",
        "2023-11-14T24:00:00Z",
        "2023-11-14T22:60:00Z",
        "2023-11-14T22:13:60Z",  # leap seconds are not representable
        " 2023-11-14T22:13:20Z",
        "2023-11-14T22:13:20Z ",
        "2023-11-14T22:13:20ZZ",
        "14/11/2023 22:13:20 +00:00",
        "2023-11-14 22:13:20Z",  # RFC 3339's ABNF needs "T"
        "2023-11-14T22:13:20+05:30Z",
        "2023-11-14T22:13:20.Z",
        "2023-11-14T22:13:20,5Z",
        "2023-W46-2T22:13:20Z",
        "2023-11-14T22:13:20+0530",
        "2023-11-14T22:13:20+05",
        "2023-11-14T22:13:20+05:30:15",
        "2023-11-14T22:13:20 +05:30",
        "2023-11-14T22:13:20.1234567890Z",  # RFC allows any digits; the parser takes 1-9
    ],
)
def test_malformed_date_times_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize("text", ["2023-11-14T22:13:20.000", "2023-11-14T22:13:20.123456"])
def test_a_date_time_without_an_offset_asks_for_one(text: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_rfc3339(text)


@pytest.mark.parametrize("text", ["2023-11-14T22:13:20+24:00", "2023-11-14T22:13:20-05:60"])
def test_offsets_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_rfc3339(text)


def test_extreme_offsets_are_accepted() -> None:
    assert parse_rfc3339("2023-11-15T22:12:20+23:59") == INSTANT_US
    assert parse_rfc3339("2023-11-13T22:14:20-23:59") == INSTANT_US


def test_us_to_datetime_is_the_inverse() -> None:
    assert us_to_datetime(INSTANT_US) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert us_to_datetime(0) == EPOCH
    assert us_to_datetime(MIN_US) == EPOCH
    assert us_to_datetime(MAX_US) == datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert us_to_datetime(INSTANT_US + 1).microsecond == 1


_instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)
_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m))
)


@settings(max_examples=50, deadline=None, database=None)
@given(_instants, _offsets)
def test_any_offset_spelling_gives_the_utc_microseconds(dt: datetime, tz: timezone) -> None:
    expected = (dt - EPOCH) // timedelta(microseconds=1)
    local = dt.astimezone(tz).isoformat()
    assert parse_rfc3339(local) == expected
    assert parse_timestamp(local) == expected
    assert parse_timestamp(dt.isoformat().replace("+00:00", "Z")) == expected
    assert us_to_datetime(expected) == dt


@settings(max_examples=50, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=4_000_000_000), st.integers(0, 999))
def test_unix_seconds_as_int_float_and_string_agree(seconds: int, millis: int) -> None:
    assert parse_timestamp(seconds) == seconds * 1_000_000 == parse_timestamp(float(seconds))
    with_ms = parse_timestamp(seconds + millis / 1000)
    assert with_ms == seconds * 1_000_000 + millis * 1000
    iso = (EPOCH + timedelta(seconds=seconds, milliseconds=millis)).isoformat()
    assert parse_timestamp(iso) == with_ms


@pytest.mark.parametrize("seconds", [1.7e302, 1e308, 2.6e11])
def test_huge_float_seconds_are_out_of_range_not_an_overflow(seconds: float) -> None:
    # Found by the OpenAPI fuzzer: {"timestamp": 1e308} made round(inf) raise OverflowError.
    with pytest.raises(ValueError, match=r"outside 1970-01-01\.\.9999-12-31"):
        parse_timestamp(seconds)
