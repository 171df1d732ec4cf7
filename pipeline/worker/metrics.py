"""Worker metrics in the Prometheus text format, without a client library.

Counters, gauges with labels, and fixed-bucket histograms: all a worker needs.
Pure: no I/O; the health server renders :meth:`Registry.render` on ``/metrics``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "WorkerMetrics"]

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_num(self.value)}"


class Gauge:
    """A gauge per label set; values may come from a callback at render time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        collect: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> None:
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = {}
        self._collect = collect

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] = value

    def samples(self) -> Iterable[str]:
        values = dict(self._values)
        if self._collect is not None:
            values.update(self._collect())
        for labels, value in sorted(values.items()):
            yield f"{self.name}{_labels(labels)} {_num(value)}"


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        self.name, self.help = name, help_text
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self) -> Iterable[str]:
        running = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += n
            yield f'{self.name}_bucket{{le="{_num(bound)}"}} {running}'
        yield f"{self.name}_sum {_num(self.sum)}"
        yield f"{self.name}_count {self.count}"


M = TypeVar("M", "Counter", "Gauge", "Histogram")


class Registry:
    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help_text: str) -> Counter:
        return self._add(Counter(name, help_text))

    def gauge(
        self,
        name: str,
        help_text: str,
        collect: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, help_text, collect))

    def histogram(self, name: str, help_text: str, buckets: Iterable[float]) -> Histogram:
        return self._add(Histogram(name, help_text, buckets))

    def _add(self, metric: M) -> M:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            lines.extend(m.samples())
        return "\n".join(lines) + "\n"


class WorkerMetrics:
    """Everything one worker reports on ``/metrics``."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.messages = r.counter("pipeline_messages_total", "Kafka messages taken from the topic")
        self.events_in = r.counter("pipeline_events_in_total", "valid events read (before dedup)")
        self.stored = r.counter("pipeline_events_stored_total", "events newly stored")
        self.duplicates = r.counter("pipeline_duplicates_total", "duplicate events dropped")
        self.duplicates_filtered = r.counter(
            "pipeline_duplicates_filtered_total",
            "duplicates dropped before the sink (in-batch copies and the Faust dedup state)",
        )
        self.dedup_keys = r.gauge("pipeline_dedup_state_keys", "keys in the Faust dedup state")
        self.dead_lettered = r.counter("pipeline_dead_lettered_total", "messages/elements to DLQ")
        self.late = r.counter("pipeline_late_events_total", "events stored after hour completion")
        self.batches = r.counter("pipeline_batches_total", "batches committed")
        self.sink_retries = r.counter("pipeline_sink_retries_total", "sink attempts that failed")
        self.abandoned = r.counter("pipeline_batches_abandoned_total", "batches given up")
        self.offset_gaps = r.counter("pipeline_offset_gaps_total", "offset gaps detected")
        self.refetched = r.counter(
            "pipeline_messages_refetched_total", "messages a batch skipped, read again from Kafka"
        )
        self.skipped = r.counter(
            "pipeline_messages_skipped_total",
            "messages skipped: already durable in PostgreSQL, or handed out before their"
            " partition was positioned (read again later)",
        )
        self.rebalances = r.counter("pipeline_rebalances_total", "partition assignments received")
        self.batch_size = r.histogram(
            "pipeline_batch_messages", "messages per batch", (1, 10, 100, 500, 1000, 2000, 5000)
        )
        self.sink_seconds = r.histogram(
            "pipeline_sink_seconds",
            "time to make one batch durable (incl. retries)",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.watermark = r.gauge(
            "pipeline_partition_watermark_seconds", "largest event time stored, per partition"
        )
        self.durable_offset = r.gauge(
            "pipeline_partition_durable_offset", "next offset durable in PostgreSQL, per partition"
        )
        self.out_of_range = r.gauge(
            "pipeline_partition_out_of_range",
            "1 while a partition is stopped: its durable offset lies outside the broker's log",
        )
