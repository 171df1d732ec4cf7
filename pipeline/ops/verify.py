"""``python -m pipeline verify --expect-file F``: do the tables hold what a load must produce?

``python -m producers generate --expect-file F`` writes what its load must
produce (JSON): unique product and agent events, duplicates, late events, dead
letters by reason, every ``rollup_channel_hourly`` and ``rollup_agent_hourly``
row, and the end offsets the broker acknowledged. :func:`compare` (pure)
checks the tables' state against that, one :class:`Check` each; the demo
(``python -m tools demo``) uses the same comparison. This module reads only
the JSON document, never the generator: the product does not import producers.

Exit codes of the command: 0 every check passed, 1 a mismatch, 2 a missing or
malformed file (one line naming it).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.console import Progress
from pipeline.core import latency
from pipeline.core.timeparse import parse_rfc3339, us_to_datetime
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from pipeline.sink.reconcile import (
    AGENT_COUNTERS,
    durable_offsets,
    latency_histograms_as_rows,
    reconcile,
    rollups_as_rows,
    wait_until_processed,
)

__all__ = [
    "Check",
    "Expected",
    "Observed",
    "compare",
    "format_checks",
    "load_expect_file",
    "observe",
    "parse_expected",
    "run_verify",
]

DIFF_ROWS = 5  # differing rows shown per check
# Rollup rows by key: (hour as epoch µs, names...) -> the row's numbers.
Rows = dict[tuple[Any, ...], tuple[float, ...]]
# Agent rollup rows by key -> the row's latency histogram (counts per bucket, trimmed).
Histograms = dict[tuple[Any, ...], tuple[int, ...]]
_CHANNEL_VALUES = ("events", "unique_users")
_AGENT_VALUES = AGENT_COUNTERS


@dataclass(frozen=True)
class Expected:
    """What a load must produce: the generator's expect file, read and checked."""

    product_events: int
    agent_events: int
    duplicates: int
    late_events: int
    dead_letters: dict[str, int]
    channel_rows: Rows  # (hour, channel, event_name) -> (events, unique_users)
    agent_rows: Rows  # (hour, tenant, workspace, project, agent, workflow) -> _AGENT_VALUES
    sent_events: int | None = None
    end_offsets: dict[int, int] | None = None
    topic: str | None = None
    # Per agent rollup row, its latency histogram (files written before histograms: None).
    latency_rows: Histograms | None = None


@dataclass(frozen=True)
class Observed:
    """The tables' state, in the same shape as :class:`Expected`."""

    product_events: int
    agent_events: int
    late_events: int
    dead_letters: dict[str, int]
    channel_rows: Rows  # (hour, channel, event_name) -> (events, unique_users)
    agent_rows: Rows  # (hour, tenant, workspace, project, agent, workflow) -> _AGENT_VALUES
    rollup_mismatches: list[str] = field(default_factory=list)  # rollups != GROUP BY raw
    durable: dict[int, int] | None = None  # partition_progress.next_offset of the topic
    latency_rows: Histograms = field(default_factory=dict)  # agent rows' latency_hist

    @property
    def stored(self) -> int:
        return self.product_events + self.agent_events


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    summary: str
    diff: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ the file


def load_expect_file(path: Path) -> Expected:
    """Read and check ``path``; ConfigError (one line naming it) when missing or malformed."""
    where = f"--expect-file {path}"
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: no such file; write one with "
            f"python -m producers generate --expect-file {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    return parse_expected(doc, where)


def parse_expected(doc: Any, where: str) -> Expected:
    """The expect document (``Workload.expected()`` plus what was sent) as :class:`Expected`."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object as python -m producers generate writes")

    def count(name: str) -> int:
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {name} must be a count (a whole number, 0 or more)")
        return value

    def optional_count(name: str) -> int | None:
        return None if doc.get(name) is None else count(name)

    dead = doc.get("dead_letters")
    if not isinstance(dead, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in dead.values()
    ):
        raise ConfigError(f"{where}: dead_letters must be an object of counts by reason")
    end_offsets = doc.get("end_offsets")
    offsets: dict[int, int] | None = None
    if end_offsets is not None:
        if not isinstance(end_offsets, dict):
            raise ConfigError(f"{where}: end_offsets must be an object of offsets by partition")
        try:
            offsets = {int(p): int(o) for p, o in end_offsets.items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: end_offsets must map partition numbers to offsets"
            ) from None
    topic = doc.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise ConfigError(f"{where}: topic must be a string")
    return Expected(
        product_events=count("product_events"),
        agent_events=count("agent_events"),
        duplicates=count("duplicates"),
        late_events=count("late_events"),
        dead_letters=dict(dead),
        channel_rows=_rows(doc.get("channel_rollups"), 3, 2, f"{where}: channel_rollups"),
        agent_rows=_rows(doc.get("agent_rollups"), 6, 7, f"{where}: agent_rollups"),
        sent_events=optional_count("sent_events"),
        end_offsets=offsets,
        topic=topic,
        latency_rows=None
        if doc.get("agent_latency_histograms") is None
        else _histograms(doc["agent_latency_histograms"], f"{where}: agent_latency_histograms"),
    )


def _histograms(rows: Any, where: str) -> Histograms:
    """``[hour, 5 names, [count per bucket...]]`` rows by key (trailing empty buckets trimmed)."""
    if not isinstance(rows, list):
        raise ConfigError(f"{where} must be a list of rows")
    out: Histograms = {}
    for n, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 7 or not isinstance(row[6], list):
            raise ConfigError(f"{where}[{n}] must be [hour, 5 names, [counts per bucket]]")
        counts = row[6]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ConfigError(f"{where}[{n}]: the counts must be whole numbers, 0 or more")
        (key,) = _rows([[*row[:6], 0]], 6, 1, f"{where}[{n}]")
        out[key] = tuple(latency.trim(counts))
    return out


def _rows(rows: Any, keys: int, values: int, where: str) -> Rows:
    """``[hour, key..., value...]`` rows by key; the hour as epoch µs (any RFC 3339 spelling)."""
    if not isinstance(rows, list):
        raise ConfigError(f"{where} must be a list of rows")
    out: Rows = {}
    for n, row in enumerate(rows):
        shape = f"{where}[{n}] must be [hour, {keys - 1} names, {values} numbers]"
        if not isinstance(row, list) or len(row) != keys + values:
            raise ConfigError(shape)
        hour, *names = row[:keys]
        numbers = row[keys:]
        if not isinstance(hour, str) or not all(isinstance(x, str) for x in names):
            raise ConfigError(shape)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
            raise ConfigError(shape)
        try:
            hour_us = parse_rfc3339(hour)
        except ValueError as exc:
            raise ConfigError(f"{where}[{n}]: hour {hour!r} {exc}") from None
        out[(hour_us, *names)] = tuple(numbers)
    return out


# ----------------------------------------------------------------- the comparison


def compare(expected: Expected, observed: Observed) -> list[Check]:
    """Every check of ``observed`` against ``expected``, in a fixed order."""
    checks: list[Check] = []
    if expected.end_offsets is not None and observed.durable is not None:
        checks.append(_processed(expected.end_offsets, observed.durable))
    checks.append(_count("product events stored", expected.product_events, observed.product_events))
    checks.append(_count("agent events stored", expected.agent_events, observed.agent_events))
    if expected.sent_events is not None:
        dead = sum(observed.dead_letters.values())
        dropped = expected.sent_events - observed.stored - dead
        checks.append(
            _count(
                "duplicates dropped",
                expected.duplicates,
                dropped,
                how=f" (sent {expected.sent_events} - stored {observed.stored} - dead {dead})",
            )
        )
    checks.append(_count("late events", expected.late_events, observed.late_events))
    checks.append(_dead_letters(expected.dead_letters, observed.dead_letters))
    checks.append(
        _row_check("channel rollups", expected.channel_rows, observed.channel_rows, _CHANNEL_VALUES)
    )
    checks.append(
        _row_check("agent rollups", expected.agent_rows, observed.agent_rows, _AGENT_VALUES)
    )
    if expected.latency_rows is not None:
        checks.append(_histogram_check(expected.latency_rows, observed.latency_rows))
    bad = observed.rollup_mismatches
    checks.append(
        Check(
            "rollups add up to the raw tables",
            not bad,
            "every rollup row equals the GROUP BY of its raw table"
            if not bad
            else f"{len(bad)} rollup row(s) differ from the raw tables",
            bad[:DIFF_ROWS],
        )
    )
    return checks


def format_checks(checks: Sequence[Check]) -> list[str]:
    """One line per check (``OK`` / ``MISMATCH``), the first differing rows indented below it."""
    lines: list[str] = []
    for c in checks:
        lines.append(f"{'OK' if c.ok else 'MISMATCH':<8}  {c.name}: {c.summary}")
        lines.extend(f"            {d}" for d in c.diff)
    failed = sum(not c.ok for c in checks)
    lines.append(
        f"all {len(checks)} checks passed"
        if not failed
        else f"{failed} of {len(checks)} checks failed"
    )
    return lines


def _count(name: str, expected: int, found: int, how: str = "") -> Check:
    if expected == found:
        return Check(name, True, f"{found}{how}")
    return Check(name, False, f"expected {expected}, found {found}{how}")


def _processed(end_offsets: Mapping[int, int], durable: Mapping[int, int]) -> Check:
    behind = [
        f"partition {p}: durable offset {durable.get(p, 0)}, sent up to {end}"
        for p, end in sorted(end_offsets.items())
        if durable.get(p, 0) < end
    ]
    total = sum(end_offsets.values())
    done = sum(min(durable.get(p, 0), end) for p, end in end_offsets.items())
    summary = f"{done} of {total} sent messages durable ({len(end_offsets)} partitions)"
    if behind:
        summary += "; run with --wait SECONDS to wait for the workers"
    return Check("processed", not behind, summary, behind[:DIFF_ROWS])


def _dead_letters(expected: Mapping[str, int], found: Mapping[str, int]) -> Check:
    reasons = sorted(set(expected) | set(found))
    diff = [
        f"{r}: expected {expected.get(r, 0)}, found {found.get(r, 0)}"
        for r in reasons
        if expected.get(r, 0) != found.get(r, 0)
    ]
    shown = ", ".join(f"{r} {found[r]}" for r in sorted(found)) or "none"
    if not diff:
        return Check("dead letters by reason", True, shown)
    return Check(
        "dead letters by reason",
        False,
        f"expected {sum(expected.values())}, found {sum(found.values())}",
        diff[:DIFF_ROWS],
    )


def _row_check(
    name: str,
    expected: Rows,
    found: Rows,
    columns: tuple[str, ...],
) -> Check:
    diff: list[str] = []
    for key in sorted(set(expected) | set(found)):
        e, f = expected.get(key), found.get(key)
        if e is not None and f is not None and _same(e, f):
            continue
        diff.append(
            f"{_key_text(key)}: expected {_values(e, columns)}, found {_values(f, columns)}"
        )
    if not diff:
        return Check(name, True, f"{len(found)} rows")
    return Check(
        name,
        False,
        f"{len(diff)} row(s) differ (expected {len(expected)} rows, found {len(found)})",
        diff[:DIFF_ROWS],
    )


def _histogram_check(expected: Histograms, found: Histograms) -> Check:
    name = "agent latency histograms"
    diff = [
        f"{_key_text(key)}: expected {_buckets(expected.get(key))}, "
        f"found {_buckets(found.get(key))}"
        for key in sorted(set(expected) | set(found))
        if expected.get(key) != found.get(key)
    ]
    samples = sum(sum(h) for h in found.values())
    if not diff:
        return Check(name, True, f"{len(found)} rows, {samples} samples")
    return Check(name, False, f"{len(diff)} row(s) differ", diff[:DIFF_ROWS])


def _buckets(counts: tuple[int, ...] | None) -> str:
    """The non-empty buckets as ``{bucket: count}``, or "no row"."""
    if counts is None:
        return "no row"
    return "{" + ", ".join(f"{i}: {c}" for i, c in enumerate(counts) if c) + "}"


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6) for x, y in zip(a, b, strict=True)
    )


def _key_text(key: tuple[Any, ...]) -> str:
    hour = us_to_datetime(key[0]).strftime("%Y-%m-%d %H:00")
    return " ".join([hour, *key[1:]])


def _values(values: tuple[float, ...] | None, columns: tuple[str, ...]) -> str:
    if values is None:
        return "no row"
    return " ".join(
        f"{c}={round(v, 6) if isinstance(v, float) else v}"
        for c, v in zip(columns, values, strict=True)
    )


# --------------------------------------------------------------------- the tables


async def observe(dsn: str, topic: str | None) -> Observed:
    """The tables' state; with ``topic``, its durable offsets too."""
    report = await reconcile(dsn)
    channel, agent = await rollups_as_rows(dsn)
    mismatches = [f"rollup_channel_hourly {row}" for row in report.channel_mismatches] + [
        f"rollup_agent_hourly {row}" for row in report.agent_mismatches
    ]
    return Observed(
        product_events=report.product_events,
        agent_events=report.agent_events,
        late_events=report.late_events,
        dead_letters=report.dead_letters,
        channel_rows=_rows(channel, 3, 2, "rollup_channel_hourly"),
        agent_rows=_rows(agent, 6, 7, "rollup_agent_hourly"),
        rollup_mismatches=[_short(m) for m in mismatches],
        durable=None if topic is None else await durable_offsets(dsn, topic),
        latency_rows=_histograms(
            await latency_histograms_as_rows(dsn), "rollup_agent_hourly latency_hist"
        ),
    )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_verify(settings: Settings, expect_file: Path, wait: float | None) -> int:
    expected = load_expect_file(expect_file)
    dsn = settings.require_database_url()
    topic = expected.topic or settings.events_topic
    if wait is not None:
        if wait < 0:
            raise ConfigError(f"--wait {wait}: give seconds, 0 or more")
        if expected.end_offsets is None:
            raise ConfigError(
                f"--expect-file {expect_file}: --wait needs the end_offsets the generator "
                "writes; without them run verify without --wait"
            )
        _wait(dsn, topic, expected.end_offsets, wait)
    observed = asyncio.run(observe(dsn, topic if expected.end_offsets is not None else None))
    checks = compare(expected, observed)
    for line in format_checks(checks):
        print(line)
    return 0 if all(c.ok for c in checks) else 1


def _wait(dsn: str, topic: str, end_offsets: Mapping[int, int], seconds: float) -> None:
    """Until the workers made everything up to ``end_offsets`` durable, or ``seconds`` passed
    (then the ``processed`` check says how far they got). Progress on a terminal only."""
    bar = Progress()
    try:
        asyncio.run(
            wait_until_processed(
                dsn,
                topic,
                end_offsets,
                seconds,
                lambda done, total: bar.update(f"waiting: {done}/{total} messages processed"),
            )
        )
    except TimeoutError:
        pass
    finally:
        bar.close()
