"""Event timestamps to one canonical form: integer microseconds since the Unix epoch (UTC).

Two spellings of one instant (``1700000000`` and ``"2023-11-14T22:13:20Z"``, or
``"2023-11-15T03:43:20+05:30"``) give the same integer, so they give the same
dedup key and fall into the same UTC hour. Pure: no I/O.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

__all__ = ["EPOCH", "MAX_US", "MIN_US", "parse_rfc3339", "parse_timestamp", "us_to_datetime"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
MIN_US = 0  # 1970-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def parse_rfc3339(text: str) -> int:
    """RFC 3339 date-time (with ``Z`` or a ``±hh:mm`` offset) to epoch microseconds.

    Raises ValueError with a message fit for a dead-letter row.
    """
    # fromisoformat also takes bare dates and naive times; RFC 3339 needs both
    # a time and an offset, so those are refused below.
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 date-time such as 2023-11-14T22:13:20Z")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time such as 2023-11-14T22:13:20Z") from None
    if dt.tzinfo is None:
        raise ValueError("needs a UTC offset such as Z or +05:30")
    return (dt - EPOCH) // _ONE_US


def parse_timestamp(value: object) -> int:
    """Unix seconds (int or float) or an RFC 3339 string to epoch microseconds."""
    if isinstance(value, str):
        us = parse_rfc3339(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        us = value * 1_000_000
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of unix seconds")
        us = round(value * 1_000_000)
    else:
        raise ValueError("must be unix seconds (a number) or an RFC 3339 string")
    if not MIN_US <= us <= MAX_US:
        raise ValueError("is outside 1970-01-01..9999-12-31")
    return us


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
