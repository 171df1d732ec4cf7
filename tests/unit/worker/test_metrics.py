"""pipeline.worker.metrics: prometheus_client registries per worker, the names operators use,
dead letters by reason, per-partition gauges for owned partitions only, content negotiation."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from pipeline.worker.metrics import (
    DEAD_LETTER_REASONS,
    PartitionState,
    WorkerMetrics,
    exposition,
)

# The names the README lists and tests read (metric_value): kept from the hand-written exporter.
KEPT = (
    "pipeline_messages_total",
    "pipeline_events_in_total",
    "pipeline_events_stored_total",
    "pipeline_duplicates_total",
    "pipeline_duplicates_filtered_total",
    "pipeline_dedup_state_keys",
    "pipeline_dead_lettered_total",
    "pipeline_late_events_total",
    "pipeline_batches_total",
    "pipeline_sink_retries_total",
    "pipeline_batches_abandoned_total",
    "pipeline_offset_gaps_total",
    "pipeline_messages_refetched_total",
    "pipeline_messages_skipped_total",
    "pipeline_rebalances_total",
    "pipeline_batch_messages_bucket",
    "pipeline_batch_messages_count",
    "pipeline_sink_seconds_bucket",
    "pipeline_sink_seconds_sum",
)


def sample_names(text: str) -> set[str]:
    return {s.name for family in parse_text(text) for s in family.samples}


def test_the_names_operators_use_are_kept_beside_process_and_gc_metrics() -> None:
    text = exposition(WorkerMetrics().registry, "")[0].decode()
    names = sample_names(text)
    assert set(KEPT) <= names, set(KEPT) - names
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names
    assert "python_gc_collections_total" in names


def test_each_instance_has_its_own_registry() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.messages.inc(3)
    assert a.value("pipeline_messages_total") == 3
    assert b.value("pipeline_messages_total") == 0


def test_dead_letters_count_by_reason_and_sum_to_the_total() -> None:
    m = WorkerMetrics()
    m.count_dead_letters(["not_json", "not_json", "schema_invalid"])
    m.count_dead_letters([])
    assert m.value("pipeline_dead_lettered_total") == 3
    assert m.value("pipeline_dead_lettered_total", reason="not_json") == 2
    assert m.value("pipeline_dead_lettered_total", reason="schema_invalid") == 1
    text = exposition(m.registry, "")[0].decode()
    for reason in DEAD_LETTER_REASONS:  # every reason is a series from the start, at 0 or more
        assert f'pipeline_dead_lettered_total{{reason="{reason}"}}' in text


def test_partition_gauges_follow_the_assignment() -> None:
    m = WorkerMetrics()
    for p in ("0", "1", "2"):
        m.watermark.set(1_700_000_000 + int(p), partition=p)
        m.durable_offset.set(100 * int(p), partition=p)
    m.out_of_range.set(1, partition="1")
    # No health server yet: every stored value is exported.
    assert m.value("pipeline_partition_watermark_seconds", partition="2") == 1_700_000_002
    m.partitions.assigned = lambda: {
        0: PartitionState(lag=5, seconds_since_progress=90.0, stuck=True),
        2: PartitionState(lag=None, seconds_since_progress=1.5, stuck=False),
    }
    # Partition 1 moved to another worker: none of its series stays behind here.
    text = exposition(m.registry, "")[0].decode()
    assert 'partition="1"' not in text
    assert m.value("pipeline_partition_durable_offset", partition="2") == 200
    assert m.value("pipeline_partition_lag", partition="0") == 5
    assert "pipeline_partition_lag" not in {
        s.name for f in parse_text(text) for s in f.samples if s.labels.get("partition") == "2"
    }  # the broker's end is not known yet: no lag rather than a wrong one
    assert m.value("pipeline_partition_stuck", partition="0") == 1
    assert m.value("pipeline_partition_stuck", partition="2") == 0
    assert m.value("pipeline_partition_seconds_since_progress", partition="0") == 90.0


def test_openmetrics_when_the_scraper_asks_for_it_text_otherwise() -> None:
    m = WorkerMetrics()
    m.sink_seconds.observe(0.2)
    prometheus = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    body, content_type = exposition(m.registry, prometheus)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in parse_om(body.decode())}
    assert families["pipeline_sink_seconds"].type == "histogram"
    assert families["pipeline_messages"].type == "counter"
    for accept in ("", "text/plain", "*/*"):
        body, content_type = exposition(m.registry, accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8", accept
        assert b"# EOF" not in body
        assert "pipeline_sink_seconds_count" in sample_names(body.decode())
