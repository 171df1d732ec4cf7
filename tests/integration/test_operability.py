"""A worker's health and metrics endpoints, against a real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from pipeline.ops.procs import free_port
from pipeline.ops.runner import worker_env
from pipeline.ops.status import Status, collect_status
from pipeline.settings import Settings
from pipeline.sink.reconcile import wait_until_processed
from producers.publisher import Publisher
from tests.chaos.chaoslib import log_records
from tests.conftest import REPO, Workers, http_get, metric_value, wait_for

pytestmark = pytest.mark.integration


async def test_health_and_metrics_of_a_working_worker(settings: Settings, workers: Workers) -> None:
    worker = workers.start()
    events = [
        {"event_name": "view", "channel": "web", "user_id": f"u{i}", "timestamp": 1_700_000_000 + i}
        for i in range(500)
    ]
    async with Publisher(settings) as pub:
        receipt = await pub.publish_events(events + events[:50])  # 50 duplicates
        bad = await pub.publish_raw([(None, b"not json")] * 7)
    receipt.merge(bad)
    await wait_until_processed(
        settings.database_url or "", settings.events_topic, receipt.end_offsets, 120
    )

    async def ready() -> bool:
        status, body = await http_get(worker.web_port, "/health/ready")
        return status == 200 and orjson.loads(body)["database"]

    await wait_for(ready, 30, "/health/ready to answer 200")
    status, body = await http_get(worker.web_port, "/health/live")
    assert status == 200, body
    assert orjson.loads(body)["stuck_partitions"] == []
    status, body = await http_get(worker.web_port, "/health/ready")
    assert sorted(orjson.loads(body)["partitions"]) == list(range(settings.events_partitions))

    async def counted() -> str | None:
        _, text = await http_get(worker.web_port, "/metrics")
        metrics = text.decode()
        return metrics if metric_value(metrics, "pipeline_dead_lettered_total") == 7 else None

    text = await wait_for(counted, 30, "metrics to count the batch")
    assert metric_value(text, "pipeline_events_stored_total") == 500
    assert metric_value(text, "pipeline_duplicates_total") == 50
    assert metric_value(text, "pipeline_messages_total") == 557
    assert metric_value(text, "pipeline_partition_lag") == 0
    assert metric_value(text, "pipeline_batch_messages_count") >= 1
    assert "pipeline_sink_seconds_bucket" in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in parse_text(text)
        for s in f.samples
    }
    assert samples[("pipeline_dead_lettered_total", (("reason", "not_json"),))] == 7
    assert samples[("pipeline_database_up", ())] == 1  # the readiness probes above
    assert (
        samples[("pipeline_completeness_grace_seconds", ())] == settings.completeness_grace_seconds
    )
    assert metric_value(text, "pipeline_partition_stuck") == 0
    owned = {labels for name, labels in samples if name == "pipeline_partition_lag"}
    assert owned == {(("partition", str(p)),) for p in range(settings.events_partitions)}
    assert metric_value(text, "process_resident_memory_bytes") > 0
    assert (await http_get(worker.web_port, "/nope"))[0] == 404

    def openmetrics() -> tuple[str, str]:
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        request = urllib.request.Request(
            f"http://127.0.0.1:{worker.web_port}/metrics", headers={"Accept": accept}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.headers["Content-Type"], r.read().decode()

    content_type, om = await asyncio.to_thread(openmetrics)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in parse_om(om)}
    assert families["pipeline_events_stored"].type == "counter"
    assert (
        sum(
            s.value for s in families["pipeline_events_stored"].samples if s.name.endswith("_total")
        )
        == 500
    )


async def test_ready_fails_while_the_database_is_unreachable(
    settings: Settings, workers: Workers
) -> None:
    worker = workers.start(DATABASE_URL="postgresql://postgres@127.0.0.1:9/nowhere")

    async def answered() -> tuple[int, bytes] | None:
        status, body = await http_get(worker.web_port, "/health/ready")
        return (status, body) if status else None

    status, body = await wait_for(answered, 60, "the worker's web port")
    assert status == 503
    assert orjson.loads(body)["database"] is False


async def test_status_shows_members_lag_watermarks_and_hours(
    settings: Settings, workers: Workers
) -> None:
    workers.start()
    events = [
        {
            "event_name": "view",
            "channel": "web",
            "user_id": "u",
            "timestamp": 1_700_000_000 + i * 60,
        }
        for i in range(300)
    ]
    async with Publisher(settings) as pub:
        receipt = await pub.publish_events(events)
    dsn = settings.database_url or ""
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 120)

    async def reported() -> Status | None:
        status = await collect_status(settings)
        return status if status.workers else None

    status = await wait_for(reported, 30, "the worker to report itself in worker_status")
    owned = sorted(p for w in status.workers for p in w["partitions"])
    assert owned == list(range(settings.events_partitions))
    for row in status.partitions:
        assert row.end == receipt.end_offsets.get(row.partition, 0)
        assert row.lag == 0
        assert row.member == status.workers[0]["worker_id"]
    assert {h["hour"].hour for h in status.hours} >= {22, 23}
    assert "total lag: 0" in await _status_text(settings)
    # The report carries the lag per partition, for readers that do not talk to Kafka.
    assert status.workers[0]["lag"] == {str(p): 0 for p in range(settings.events_partitions)}


async def _status_text(settings: Settings) -> str:
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "status",
        env={**os.environ, **worker_env(settings)},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    return out.decode()


async def test_status_forgets_a_stopped_worker_and_shows_a_killed_one_as_silent(
    settings: Settings, workers: Workers
) -> None:
    stopped, killed = workers.start(), workers.start()

    async def both_reported() -> Status | None:
        status = await collect_status(settings)
        return status if len(status.workers) == 2 else None

    await wait_for(both_reported, 60, "both workers to report themselves")
    assert stopped.terminate() == 0
    status = await collect_status(settings)  # at once: no heartbeat has to age out
    assert [w["worker_id"] for w in status.workers] != [] and len(status.workers) == 1
    assert str(stopped.proc.pid) not in status.workers[0]["worker_id"]

    killed.kill()
    assert killed.proc.poll() is not None  # really gone: nothing reports for it any more
    conn = await asyncpg.connect(settings.database_url)
    try:  # its last report, 20 s old (as if the test had waited)
        await conn.execute("UPDATE worker_status SET heartbeat_at = now() - interval '20 seconds'")
    finally:
        await conn.close()
    status = await collect_status(settings)
    (silent,) = status.workers
    assert silent["state"] == "silent" and silent["partitions"]
    assert {row.member for row in status.partitions} == {None}  # a silent worker owns nothing
    text = await _status_text(settings)
    assert "SILENT for 2" in text and " live" not in text


async def test_the_worker_says_once_per_assignment_which_partitions_it_owns(
    settings: Settings, workers: Workers
) -> None:
    worker = workers.start(LOG_LEVEL="")  # unset: the default level, as a user runs it

    async def joined() -> list[dict[str, object]] | None:
        said = [r for r in log_records(worker) if r["msg"] == "joined consumer group"]
        return said or None

    (line,) = await wait_for(joined, 60, "the worker to say it joined")
    assert line["level"] == "info" and line["group"] == settings.app_id
    assert line["partitions"] == {str(p): 0 for p in range(settings.events_partitions)}
    # Nothing else at info but that and the health server's address (no lifecycle chatter).
    assert {r["msg"] for r in log_records(worker) if r["level"] == "info"} <= {
        "joined consumer group",
        "health server listening",
    }


async def test_a_second_worker_on_one_host_chooses_a_free_web_port(
    settings: Settings, workers: Workers
) -> None:
    # "Another worker" holds the default port (or something else already does).
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        holder.bind(("127.0.0.1", Settings().web_port))
        holder.listen()
    try:
        second = workers.start(WORKER_WEB_PORT="")  # unset: the default, as a user runs it

        async def moved() -> dict[str, object] | None:
            found = [r for r in log_records(second) if "default web port in use" in r["msg"]]
            return found[0] if found else None

        note = await wait_for(moved, 60, "the worker to say which port it chose")
        assert note["default_port"] == Settings().web_port and note["port"] != note["default_port"]
        port = int(str(note["port"]))

        async def live() -> bool:
            return (await http_get(port, "/health/live"))[0] == 200

        await wait_for(live, 60, "/health/live on the chosen port")

        # A port the operator named is not replaced: one clear line, exit 2.
        named = workers.start(WORKER_WEB_PORT=str(port))
        assert named.proc.wait(timeout=60) == 2
        out = named.log.read_text()
        assert f"WORKER_WEB_PORT={port}" in out and "already in use" in out
        assert "Traceback" not in out, out
        assert second.proc.poll() is None, second.tail()
    finally:
        holder.close()


def _on_a_terminal(args: list[str], env: dict[str, str], until: bytes, timeout: float) -> bytes:
    """Run ``args`` with a pseudo-terminal as its stdout and stderr (where libraries color
    their output) until ``until`` appears in what it wrote, then SIGTERM it; what it wrote."""
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=child_fd, stderr=child_fd
    )
    os.close(child_fd)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while until not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                try:
                    out += os.read(main_fd, 65536)
                except OSError:  # the child closed the terminal: it exited
                    break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(main_fd)
    assert until in out, out.decode(errors="replace")[-2000:]
    return out


def test_logs_on_a_terminal_carry_no_escape_codes(settings: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **worker_env(settings),
        "LOG_LEVEL": "",  # the default, as a user runs it
        "WORKER_WEB_PORT": str(free_port()),
        "WORKER_DATA_DIR": str(tmp_path / "worker"),
        "GATEWAY_PORT": str(free_port()),
        "API_KEYS": "",
        "TERM": "xterm-256color",
    }
    worker = _on_a_terminal(
        [sys.executable, "-m", "pipeline", "worker"], env, b"joined consumer group", 90
    )
    gateway = _on_a_terminal(
        [sys.executable, "-m", "producers", "gateway"], env, b"Uvicorn running", 60
    )
    for out in (worker, gateway):
        assert b"\x1b" not in out, out.decode(errors="replace")
        lines = [ln for ln in out.decode().splitlines() if ln.strip()]
        assert lines and all(ln.startswith("{") for ln in lines), lines  # JSON lines only
