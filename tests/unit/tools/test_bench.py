"""The benchmark's pure helpers: medians over runs, per-event CPU, peak memory."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import PipelineError
from tools.bench import (
    Result,
    _backlog_rate,
    _median,
    _median_gateway,
    _peak_rss_mb,
    _per_event_us,
    _title,
)
from tools.reference import partitions_of


def test_median_of_runs_takes_each_figure_on_its_own() -> None:
    runs = [
        Result("s", 100, 2.0, 50, latency_p99_ms=900.0, worker_peak_mb=200.0),
        Result("s", 100, 1.0, 100, latency_p99_ms=1500.0, worker_peak_mb=180.0),
        Result("s", 100, 4.0, 25, latency_p99_ms=1000.0, worker_peak_mb=210.0),
    ]
    m = _median(runs)
    assert (m.events_per_s, m.seconds, m.latency_p99_ms, m.worker_peak_mb) == (
        50,
        2.0,
        1000.0,
        200.0,
    )
    assert m.runs == 3 and m.events_per_s_all == [50, 100, 25]
    assert m.latency_p50_ms is None  # no run measured it


def test_median_gateway_skips_missing_figures() -> None:
    runs = [
        {"single": {"requests_per_s": 10, "p99_ms": 5}, "bulk": {"events_per_s": 100}},
        {"single": {"requests_per_s": 30, "p99_ms": None}, "bulk": {"events_per_s": 300}},
        {"single": {"requests_per_s": 20, "p99_ms": 7}, "bulk": {"events_per_s": 200}},
    ]
    assert _median_gateway(runs) == {
        "single": {"requests_per_s": 20, "p99_ms": 6.0},
        "bulk": {"events_per_s": 200},
    }


def test_cpu_per_event_in_microseconds() -> None:
    assert _per_event_us(1.0, 1.5, 50_000) == 10.0
    assert _per_event_us(None, 1.5, 50_000) is None
    assert _per_event_us(1.0, 1.5, 0) is None


def test_peak_memory_of_a_live_process() -> None:
    peak = _peak_rss_mb(os.getpid())
    assert peak is not None and peak > 1
    assert _peak_rss_mb(2**22 + 12345) is None  # no such process


def test_backlog_rate_counts_only_what_was_left_when_publishing_ended() -> None:
    # 1,000 messages holding 100,000 events; 600 were left and took 2 s to drain.
    assert _backlog_rate(100_000, total=1_000, left=600, seconds=2.0) == 30_000
    # Too little left to time, or nothing published.
    assert _backlog_rate(100_000, total=1_000, left=99, seconds=0.1) is None
    assert _backlog_rate(100_000, total=0, left=0, seconds=1.0) is None


def test_reference_processes_share_the_partitions_without_overlap() -> None:
    shares = [partitions_of(i, 3, 8) for i in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(PipelineError, match=r"--index must be in 0\.\.2"):
        partitions_of(3, 3, 8)


def test_bench_titles_pair_faust_and_reference_scenarios() -> None:
    assert _title("faust worker", 1, 1) == "faust worker, single-event messages"
    assert _title("reference loop", 100, 2) == "2 reference loops, envelopes of 100"
