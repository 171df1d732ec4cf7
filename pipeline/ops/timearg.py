"""Times given on the command line: unix seconds, RFC 3339, or a span ago (``30m``, ``1h``).

``query --from/--to`` and ``dlq list|replay --since/--until`` read their
options here, so every command spells a time the same way. A bad value is a
:class:`~pipeline.errors.ConfigError` naming the option. Pure: no I/O.
"""

from __future__ import annotations

import re

from pipeline.core.timeparse import parse_rfc3339, parse_timestamp
from pipeline.errors import ConfigError

__all__ = ["RELATIVE_UNITS", "parse_time_option"]

RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = re.compile(r"\d{1,15}(\.\d{1,9})?\Z")
_RELATIVE = re.compile(r"(\d{1,9})([smhdw])\Z")


def parse_time_option(text: str, option: str, now_us: int, relative: bool = False) -> int:
    """``text`` as epoch microseconds; ``relative`` also takes ``<n><s|m|h|d|w>`` before now."""
    value = text.strip()
    if relative:
        m = _RELATIVE.match(value)
        if m is not None:
            return max(now_us - int(m.group(1)) * RELATIVE_UNITS[m.group(2)] * 1_000_000, 0)
    try:
        if _NUMBER.match(value):
            return parse_timestamp(float(value) if "." in value else int(value))
        return parse_rfc3339(value)
    except ValueError as exc:
        spans = ", or a span ago such as 30m, 1h, 2d" if relative else ""
        raise ConfigError(
            f"{option} {text!r}: give unix seconds or an RFC 3339 date-time such as "
            f"2026-11-21T10:00:00Z{spans} ({exc})"
        ) from None
