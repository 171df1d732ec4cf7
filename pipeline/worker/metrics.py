"""Worker metrics through ``prometheus_client``: one registry per :class:`WorkerMetrics`.

Each worker serves its registry on ``GET /metrics`` (``health.py``): the
counters and histograms the processor feeds as batches commit, the process and
garbage-collector metrics of ``prometheus_client``, and per partition the
gauges of :class:`PartitionCollector`, computed when Prometheus scrapes. The
per-partition series are exported for the partitions this worker owns at that
moment only, so a partition that moved to another worker leaves no stale
series behind (alerts on ``pipeline_partition_out_of_range`` or a watermark
would otherwise fire forever).

:func:`exposition` picks the format from the scraper's ``Accept`` header:
OpenMetrics when asked for, the classic text format otherwise.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pipeline.core.codec import EMPTY_ENVELOPE, NOT_AN_OBJECT, NOT_JSON, OVERSIZED
from pipeline.core.limits import TOO_DEEP, TOO_LARGE
from pipeline.core.planner import UNPROCESSABLE, UNSTORABLE
from pipeline.core.validate import SCHEMA_INVALID

__all__ = [
    "DEAD_LETTER_REASONS",
    "PartitionCollector",
    "PartitionGauge",
    "PartitionState",
    "WorkerMetrics",
    "exposition",
    "standard_collectors",
]

# Every reason a worker dead-letters with (README "Tables", schemas/README.md). Each
# starts at 0, so the first dead letter of a reason shows in rate() and increase().
DEAD_LETTER_REASONS = (
    NOT_JSON,
    NOT_AN_OBJECT,
    EMPTY_ENVELOPE,
    OVERSIZED,
    SCHEMA_INVALID,
    "too_late",
    "too_far_in_future",
    TOO_DEEP,
    TOO_LARGE,
    UNSTORABLE,
    UNPROCESSABLE,
)


def standard_collectors(registry: CollectorRegistry) -> None:
    """Register the process (CPU, memory, fds), GC and Python-platform collectors."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """``(body, content type)`` for a scrape: OpenMetrics if ``accept`` asks for it."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class PartitionGauge:
    """A gauge per partition, set by the processor as batches commit.

    ``set(value, partition="3")`` keeps the value; :class:`PartitionCollector`
    exports it while the partition is assigned to this worker.
    """

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[str, float] = {}

    def set(self, value: float, partition: str) -> None:
        self.values[partition] = float(value)

    def get(self, partition: str) -> float | None:
        return self.values.get(partition)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One assigned partition at scrape time (``health.py`` computes it)."""

    lag: int | None  # end offset - durable offset; None until the broker's end is known
    seconds_since_progress: float  # since the durable offset last moved (or the assignment)
    stuck: bool  # lag and no progress for WORKER_STUCK_SECONDS (what /health/live checks)


class PartitionCollector(Collector):
    """The per-partition gauges, computed at scrape time.

    ``assigned`` (installed by the health server) tells which partitions this
    worker owns and their lag and progress; without it (a processor in a unit
    test) every stored value is exported and the scrape-time gauges are empty.
    """

    SCRAPED = (
        ("pipeline_partition_lag", "messages not yet durable (end offset - durable offset)"),
        (
            "pipeline_partition_seconds_since_progress",
            "seconds since the partition's durable offset last moved (or it was assigned)",
        ),
        (
            "pipeline_partition_stuck",
            "1 while the partition has lag and made no progress for WORKER_STUCK_SECONDS",
        ),
    )

    def __init__(self, stored: Iterable[PartitionGauge]) -> None:
        self.stored = tuple(stored)
        self.assigned: Callable[[], Mapping[int, PartitionState]] | None = None

    def describe(self) -> Iterator[Metric]:
        for gauge in self.stored:
            yield GaugeMetricFamily(gauge.name, gauge.help, labels=["partition"])
        for name, help_text in self.SCRAPED:
            yield GaugeMetricFamily(name, help_text, labels=["partition"])

    def collect(self) -> Iterator[Metric]:
        states = dict(self.assigned()) if self.assigned is not None else None
        owned = None if states is None else {str(p) for p in states}
        for gauge in self.stored:
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=["partition"])
            for partition, value in sorted(gauge.values.items(), key=_by_number):
                if owned is None or partition in owned:
                    family.add_metric([partition], value)
            yield family
        lag, since, stuck = (
            GaugeMetricFamily(name, help_text, labels=["partition"])
            for name, help_text in self.SCRAPED
        )
        for p, state in sorted((states or {}).items()):
            if state.lag is not None:
                lag.add_metric([str(p)], state.lag)
            since.add_metric([str(p)], round(state.seconds_since_progress, 3))
            stuck.add_metric([str(p)], 1.0 if state.stuck else 0.0)
        yield from (lag, since, stuck)


def _by_number(item: tuple[str, float]) -> tuple[int, str]:
    key = item[0]
    return (int(key), key) if key.isdigit() else (-1, key)


class WorkerMetrics:
    """Everything one worker reports on ``/metrics``, in a registry of its own.

    A registry per instance: a process may hold several (unit tests build one
    processor per test), and the metrics of one never leak into another.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        standard_collectors(r)

        def counter(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, help_text, labels, registry=r)

        self.messages = counter("pipeline_messages_total", "Kafka messages taken from the topic")
        self.events_in = counter("pipeline_events_in_total", "valid events read (before dedup)")
        self.stored = counter("pipeline_events_stored_total", "events newly stored")
        self.duplicates = counter("pipeline_duplicates_total", "duplicate events dropped")
        self.duplicates_filtered = counter(
            "pipeline_duplicates_filtered_total",
            "duplicates dropped before the sink (in-batch copies and the Faust dedup state)",
        )
        self.dedup_keys = Gauge(
            "pipeline_dedup_state_keys", "keys in the Faust dedup state", registry=r
        )
        self.dead_lettered = counter(
            "pipeline_dead_lettered_total",
            "messages and envelope elements sent to the DLQ, by reason (sum: all of them)",
            ("reason",),
        )
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason=reason)
        self.late = counter("pipeline_late_events_total", "events stored after hour completion")
        self.batches = counter("pipeline_batches_total", "batches committed")
        self.sink_retries = counter("pipeline_sink_retries_total", "sink attempts that failed")
        self.abandoned = counter("pipeline_batches_abandoned_total", "batches given up")
        self.offset_gaps = counter("pipeline_offset_gaps_total", "offset gaps detected")
        self.refetched = counter(
            "pipeline_messages_refetched_total", "messages a batch skipped, read again from Kafka"
        )
        self.skipped = counter(
            "pipeline_messages_skipped_total",
            "messages skipped: already durable in PostgreSQL, or handed out before their"
            " partition was positioned (read again later)",
        )
        self.rebalances = counter("pipeline_rebalances_total", "partition assignments received")
        self.batch_size = Histogram(
            "pipeline_batch_messages",
            "messages per batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.sink_seconds = Histogram(
            "pipeline_sink_seconds",
            "time to make one batch durable (incl. retries)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # Set once by the health server, from the settings: PromQL computes
        # "complete through" as min(watermark) - grace with them.
        self.completeness_grace = Gauge(
            "pipeline_completeness_grace_seconds",
            "COMPLETENESS_GRACE_SECONDS: an hour is complete once the low watermark passed"
            " its end by this much",
            registry=r,
        )
        self.stuck_after = Gauge(
            "pipeline_stuck_after_seconds",
            "WORKER_STUCK_SECONDS: a partition with lag and no progress this long is stuck",
            registry=r,
        )
        # Set by the health server: its 5-second status report and readiness probes.
        self.database_up = Gauge(
            "pipeline_database_up",
            "1 when the worker's last round trip to PostgreSQL (status report every 5 s, or a"
            " readiness probe) succeeded, 0 when it failed",
            registry=r,
        )
        self.sink_retrying = Gauge(
            "pipeline_sink_retrying",
            "1 while the sink waits out a database failure (a batch is being retried)",
            registry=r,
        )
        self.watermark = PartitionGauge(
            "pipeline_partition_watermark_seconds", "largest event time stored, per partition"
        )
        self.durable_offset = PartitionGauge(
            "pipeline_partition_durable_offset", "next offset durable in PostgreSQL, per partition"
        )
        self.out_of_range = PartitionGauge(
            "pipeline_partition_out_of_range",
            "1 while a partition is stopped: its durable offset lies outside the broker's log",
        )
        self.partitions = PartitionCollector(
            (self.watermark, self.durable_offset, self.out_of_range)
        )
        r.register(self.partitions)

    def count_dead_letters(self, reasons: Iterable[str]) -> None:
        """Add one batch's dead letters, by reason (one increment per reason)."""
        for reason, n in collections.Counter(reasons).items():
            self.dead_lettered.labels(reason=reason).inc(n)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent); a labelled counter sums its label sets."""
        if labels:
            return self.registry.get_sample_value(name, labels) or 0.0
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    total += sample.value
        return total
