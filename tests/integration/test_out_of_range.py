"""A broker whose log no longer holds the durable offsets: stop loudly, resume on reset.

Seen (issue 13): the memory-only broker came back empty while PostgreSQL kept
its durable offsets; every new event below them was filtered as "below
durable" and 2,947 of 3,000 silently never stored. Here the log is replaced
the same way (the events topic is recreated empty, the durable offsets kept),
then a load is published. The worker must store none of it, say why (log,
metric, readiness, ``pipeline status``), and store all of it exactly once
after ``pipeline reset-offsets --to earliest``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace

import asyncpg
import orjson
import pytest

from pipeline.ops.runner import worker_env
from pipeline.settings import Settings
from pipeline.sink.reconcile import reconcile
from pipeline.topics import ensure_topics
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher
from tests.conftest import REPO, Workers, http_get, metric_value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **worker_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_durable_offsets_beyond_an_empty_log_stop_the_partition_until_reset(
    settings: Settings, workers: Workers
) -> None:
    dsn = settings.require_database_url()
    # The durable offsets of a log that is gone: every partition was at 500.
    fresh = replace(settings, events_topic=f"events-{uuid.uuid4().hex[:8]}")
    await ensure_topics(fresh)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO partition_progress (topic, partition, next_offset)"
            " SELECT $1, p, 500 FROM generate_series(0, $2 - 1) AS p",
            fresh.events_topic,
            fresh.events_partitions,
        )
    finally:
        await conn.close()
    async with Publisher(fresh) as pub:
        workload = build_workload(LoadOptions(count=600, seed=3, hours=1), pub.partitions)
        receipt = await publish_workload(pub, workload, progress=False)
    assert all(end < 500 for end in receipt.end_offsets.values())

    workers.settings = fresh
    w = workers.start()

    async def stopped_loudly() -> bool:
        _, metrics = await http_get(w.web_port, "/metrics")
        return metric_value(metrics.decode(), "pipeline_partition_out_of_range") == 6

    await wait_for(stopped_loudly, 60, "every partition reported out of range")
    status, body = await http_get(w.web_port, "/health/ready")
    assert status == 503
    assert set(orjson.loads(body)["out_of_range"]) == {str(p) for p in range(6)}
    # Said loudly, once per partition however often the worker re-checks it.
    assert w.log.read_text().count("durable offset out of range") == 6
    report = await reconcile(dsn)
    assert report.product_events == 0 and report.agent_events == 0  # nothing filtered silently

    shown = _cli(fresh, "status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("OUT OF RANGE: partition") == 6, shown.stdout

    dry = _cli(fresh, "reset-offsets", "--to", "earliest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing changed" in dry.stdout
    refused = _cli(fresh, "reset-offsets", "--to", "earliest")  # no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stdout
    bad = _cli(fresh, "reset-offsets", "--partition", "99", "--yes")
    assert bad.returncode != 0 and "--partition 99" in (bad.stdout + bad.stderr)
    done = _cli(fresh, "reset-offsets", "--to", "earliest", "--yes")
    assert done.returncode == 0, done.stderr
    assert "6 partition(s)" in done.stdout, done.stdout

    expected = workload.expected()

    async def all_stored() -> bool:
        r = await reconcile(dsn)
        return (r.product_events, r.agent_events) == (
            expected["product_events"],
            expected["agent_events"],
        )

    await wait_for(all_stored, 60, "the load stored once the offsets were reset")
    report = await reconcile(dsn)
    assert report.channel_mismatches == [] and report.agent_mismatches == []
    assert report.dead_letters == expected["dead_letters"]
    status, _ = await http_get(w.web_port, "/health/ready")
    assert status == 200
