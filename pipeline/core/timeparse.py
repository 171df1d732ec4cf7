"""Event timestamps to one canonical form: integer microseconds since the Unix epoch (UTC).

Two spellings of one instant (``1700000000`` and ``"2023-11-14T22:13:20Z"``, or
``"2023-11-15T03:43:20+05:30"``) give the same integer, so they give the same
dedup key and fall into the same UTC hour. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = ["EPOCH", "MAX_US", "MIN_US", "parse_rfc3339", "parse_timestamp", "us_to_datetime"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
MIN_US = 0  # 1970-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_MAX_SECONDS = MAX_US / 1_000_000 + 1  # floats past this are out of range anyway


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)
_SHAPE = "must be an RFC 3339 date-time with an offset, such as 2023-11-14T22:13:20Z or ...+05:30"


def parse_rfc3339(text: str) -> int:
    """RFC 3339 date-time (with ``Z`` or a ``±hh:mm`` offset) to epoch microseconds.

    Strict: ``datetime.fromisoformat`` alone would also take forms RFC 3339
    refuses (no seconds, ``+0530``, a space for ``T``). Digits past the
    microsecond are cut. Raises ValueError with a message fit for a dead letter.
    """
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(_SHAPE)
    date, clock, fraction, zulu, sign, oh, om = m.groups()
    if int(oh or 0) > 23 or int(om or 0) > 59:
        raise ValueError("has a UTC offset out of range (at most ±23:59)")
    if text[10] == "T" and zulu != "z" and (fraction is None or len(fraction) <= 7):
        iso = text  # already in a form fromisoformat reads: skip rebuilding it
    else:
        iso = f"{date}T{clock}{(fraction or '')[:7]}{'+00:00' if zulu else f'{sign}{oh}:{om}'}"
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(_SHAPE) from None
    return _in_range((dt - EPOCH) // _ONE_US)


_OUT_OF_RANGE = "is outside 1970-01-01..9999-12-31"


def parse_timestamp(value: object) -> int:
    """Unix seconds (int or float, >= 0) or an RFC 3339 string to epoch microseconds."""
    if isinstance(value, str):
        return parse_rfc3339(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be unix seconds (a number) or an RFC 3339 string")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite, non-negative number of unix seconds")
    if isinstance(value, float) and value > _MAX_SECONDS:
        # value * 1e6 would overflow to inf (1e303 is finite; 1e309 is not), and round()
        # of inf raises OverflowError: refuse as out of range before multiplying.
        raise ValueError(_OUT_OF_RANGE)
    us = value * 1_000_000 if isinstance(value, int) else round(value * 1_000_000)
    return _in_range(us)


def _in_range(us: int) -> int:
    if not MIN_US <= us <= MAX_US:
        raise ValueError(_OUT_OF_RANGE)
    return us


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
