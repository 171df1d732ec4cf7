"""Agent latency histograms: mergeable, log-spaced buckets, and percentiles read from them.

Pure: no I/O. ``rollup_agent_hourly.latency_hist`` holds, per rollup row, how many
``run.latency_ms`` values fell in each bucket. Histograms are counters, so they are
ADDED like every other rollup column (a worker adds its batch's partial histogram in
its upsert; a replay adds nothing), and the histogram of any set of rows is the
elementwise sum of theirs: an hour, a day, a tenant, several workers, all exact.

**Buckets.** ``BOUNDARIES`` are 257 log-spaced lower bounds, 2^(k/8) ms for
k = -40..216 written with 6 significant digits (0.03125, 0.0340784, ..., 1, 1.09051,
..., 134218000 ms, about 37.3 hours): neighbours differ by a factor of
2^(1/8) ≈ 1.0905. Bucket ``i`` holds the values ``v`` with ``BOUNDARIES[i-1] <= v <
BOUNDARIES[i]``; bucket 0 is the underflow (0 included, below 0.03125 ms) and bucket
257 the overflow (134218000 ms and more). :func:`bucket_index` is
``bisect_right(BOUNDARIES, v)``, which is PostgreSQL's
``width_bucket(v, BOUNDARIES::float8[])``: migration 0008 defines
``latency_bucket(float8)`` with the same decimal literals, and both sides parse them
to the same doubles (tests/unit/core/test_latency.py compares the literals,
tests/integration/test_sink.py the SQL function at every boundary and its neighbours).

**Storage.** A histogram is a list of counts, index = bucket, trailing zero buckets
trimmed (no sample: ``[]``). In PostgreSQL an ``int8[]``, bucket ``i`` at subscript
``i + 1``; ``hist_add(int8[], int8[])`` is :func:`merge`.

**Percentiles and their error.** :func:`percentile` estimates the *nearest-rank*
percentile: the value of rank ``ceil(p / 100 * n)`` (at least 1) among the ``n``
samples sorted ascending. Counts are exact, so the bucket holding that rank is the
bucket of the exact nearest-rank value, and the estimate is that bucket's
representative (:func:`representative`), its geometric midpoint ``sqrt(lo * hi)``.
Hence, always (a bound, not an average):

- an exact value in [0.03125, 134218000) ms is estimated within
  ``MAX_RELATIVE_ERROR`` (4.43%) of itself: ``sqrt(r) - 1`` for the widest bucket's
  ratio ``r`` = 1.0905 is 4.428%, rounded up;
- an exact value below 0.03125 ms (the underflow bucket, 0 included) is estimated
  as 0.015625 ms: within ``UNDERFLOW_ERROR_MS`` (0.015625 ms);
- an exact value of 134218000 ms or more (the overflow bucket) is reported as
  134218000: a floor, not an estimate.

:func:`error_bound` states this for an exact value. The gateway rounds to 3
decimals, which adds at most 0.0005 ms.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

__all__ = [
    "BOUNDARIES",
    "BUCKETS",
    "MAX_RELATIVE_ERROR",
    "OVERFLOW_MS",
    "UNDERFLOW_ERROR_MS",
    "bucket_index",
    "error_bound",
    "histogram",
    "merge",
    "percentile",
    "percentiles",
    "representative",
    "sql_literal",
    "total",
    "trim",
]

_STEPS_PER_DOUBLING = 8
_K_MIN, _K_MAX = -40, 216  # 2^-5 ms (31.25 µs) .. 2^27 ms (about 37.3 hours)


def _boundary(k: int) -> float:
    # 6 significant digits: an exact decimal literal that PostgreSQL and Python
    # both parse (correctly rounded) to the same double.
    return float(f"{2.0 ** (k / _STEPS_PER_DOUBLING):.6g}")


BOUNDARIES: tuple[float, ...] = tuple(_boundary(k) for k in range(_K_MIN, _K_MAX + 1))
BUCKETS = len(BOUNDARIES) + 1  # underflow, 256 bounded buckets, overflow: 258
OVERFLOW_MS = BOUNDARIES[-1]
UNDERFLOW_ERROR_MS = BOUNDARIES[0] / 2
# The widest bucket decides it: |sqrt(lo*hi) - v| <= (sqrt(hi/lo) - 1) * v for v in [lo, hi);
# 0.0442767 for these boundaries, rounded up to 0.0443 (floating-point rounding has room).
MAX_RELATIVE_ERROR = (
    math.ceil((max(math.sqrt(hi / lo) for lo, hi in pairwise(BOUNDARIES)) - 1) * 1e4) / 1e4
)


def bucket_index(ms: float) -> int:
    """The bucket of a latency: how many boundaries are <= ``ms`` (SQL ``latency_bucket``)."""
    return bisect_right(BOUNDARIES, ms)


def representative(index: int) -> float:
    """The value reported for a sample in bucket ``index``."""
    if not 0 <= index < BUCKETS:
        raise ValueError(f"bucket index {index} is outside 0..{BUCKETS - 1}")
    if index == 0:
        return UNDERFLOW_ERROR_MS
    if index == BUCKETS - 1:
        return OVERFLOW_MS
    return math.sqrt(BOUNDARIES[index - 1] * BOUNDARIES[index])


def trim(hist: Sequence[int]) -> list[int]:
    """Without trailing zero buckets (the stored form)."""
    end = len(hist)
    while end and hist[end - 1] == 0:
        end -= 1
    return list(hist[:end])


def histogram(values: Iterable[float]) -> list[int]:
    """The histogram of some latencies (ms), trimmed."""
    counts: list[int] = []
    for value in values:
        i = bucket_index(value)
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += 1
    return counts


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Elementwise sum, trimmed: the histogram of both sets of samples (SQL ``hist_add``)."""
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    out = list(longer)
    for i, n in enumerate(shorter):
        out[i] += n
    return trim(out)


def total(hist: Sequence[int]) -> int:
    """How many samples the histogram holds."""
    return sum(hist)


def percentile(hist: Sequence[int], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100), estimated; None when empty."""
    if not 0 < p <= 100:
        raise ValueError(f"a percentile must be in (0, 100], got {p}")
    n = total(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(Fraction(str(p)) * n / 100))
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return representative(index)
    raise AssertionError("unreachable: rank <= n")


def percentiles(hist: Sequence[int], ps: Iterable[float]) -> dict[float, float | None]:
    return {p: percentile(hist, p) for p in ps}


def error_bound(exact_ms: float) -> float:
    """The most an estimate may differ from the exact value ``exact_ms`` (ms)."""
    if exact_ms < BOUNDARIES[0]:
        return UNDERFLOW_ERROR_MS
    if exact_ms >= OVERFLOW_MS:
        return math.inf
    return MAX_RELATIVE_ERROR * exact_ms


def sql_literal() -> str:
    """The boundaries as the PostgreSQL array literal of migration 0008 (plain decimals)."""
    return "{" + ",".join(format(Decimal(repr(b)).normalize(), "f") for b in BOUNDARIES) + "}"
