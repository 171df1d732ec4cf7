"""Event-time windows: tumbling one-hour UTC buckets and the time limits.

Pure: no I/O. Times are integer microseconds since the epoch (see timeparse).
"""

from __future__ import annotations

__all__ = ["HOUR_US", "hour_end_us", "hour_start_us", "is_revision", "time_verdict"]

HOUR_US = 3_600_000_000
_SECOND_US = 1_000_000


def hour_start_us(ts_us: int) -> int:
    """Start of the UTC hour holding ``ts_us`` (epoch hours are UTC hours)."""
    return ts_us - ts_us % HOUR_US


def hour_end_us(ts_us: int) -> int:
    return hour_start_us(ts_us) + HOUR_US


def time_verdict(ts_us: int, now_us: int, max_age_s: int, max_future_s: int) -> str | None:
    """``None`` when the event time is acceptable, else the dead-letter reason.

    ``max_age_s == 0`` turns the age limit off (the default): an analytics
    pipeline must not silently drop old data.
    """
    if ts_us > now_us + max_future_s * _SECOND_US:
        return "too_far_in_future"
    if max_age_s and ts_us < now_us - max_age_s * _SECOND_US:
        return "too_late"
    return None


def is_revision(ts_us: int, watermark_us: int | None, grace_s: int) -> bool:
    """True when the event's hour already counted as complete on its partition.

    Such an event is stored and counted; the rollup row records the revision.
    """
    if watermark_us is None:
        return False
    return hour_end_us(ts_us) + grace_s * _SECOND_US <= watermark_us
