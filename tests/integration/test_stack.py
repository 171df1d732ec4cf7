"""The embedded local stack, with real processes: a Tansu broker and PostgreSQL.

Every test gets its own state dir; the ``state_dir`` fixture runs ``stack_down`` at the
end, pass or fail, so no broker or server outlives the test. Waits poll with deadlines.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.ops.procs import free_port, stop_pid
from pipeline.ops.runner import start_worker
from pipeline.ops.stack import StackInfo, stack_down, stack_status, stack_up
from pipeline.settings import Settings
from pipeline.sink.reconcile import reconcile, wait_until_processed
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 15.0


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "stack"
    try:
        yield folder
    finally:
        stack_down(folder)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent to reap it (holds no port, runs nothing)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def processes_writing(path: Path) -> list[int]:
    """Pids that hold ``path`` open (the broker's stdout is its log file)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if any(f.path == str(path) for f in proc.open_files()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


async def roundtrip(info: StackInfo, settings: Settings) -> None:
    """Produce one message to the events topic and read it back from its offset."""
    producer = AIOKafkaProducer(bootstrap_servers=info.bootstrap_servers)
    await producer.start()
    try:
        partitions = await producer.partitions_for(settings.events_topic)
        # Pre-created by the stack with its intended count, not auto-created (4) by Tansu.
        assert len(partitions) == settings.events_partitions
        sent = await producer.send_and_wait(settings.events_topic, b"hello", key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=info.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.events_topic, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batches = await consumer.getmany(tp, timeout_ms=int(DEADLINE * 1000))
        values = [(m.key, m.value) for m in batches.get(tp, [])]
        assert values[:1] == [(b"k1", b"hello")]
    finally:
        await consumer.stop()


async def select_one(dsn: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow("SELECT 1 AS one, current_database() AS db")
        assert row is not None
        return int(row["one"]), str(row["db"])
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_embedded_stack_up_is_usable_idempotent_and_comes_down(state_dir: Path) -> None:
    settings = Settings()  # no DATABASE_URL: the embedded PostgreSQL
    info = await stack_up(settings, state_dir)
    assert info.broker_pid and info.postgres_pid
    assert info.bootstrap_servers.startswith("127.0.0.1:")
    assert await select_one(info.database_url) == (1, "pipeline")
    await roundtrip(info, settings)

    again = await stack_up(settings, state_dir)
    assert again == info  # same ports and pids: nothing new started
    assert again.exports() == info.exports()

    status = stack_status(state_dir)
    assert any(line.startswith("broker:") and line.endswith("alive") for line in status), status
    assert any(line.startswith("postgres:") and " alive " in line for line in status), status

    stopped = stack_down(state_dir)
    assert len(stopped) == 2 and all("stopped" in line for line in stopped), stopped
    wait_for(lambda: exited(info.broker_pid or 0), "the broker to exit")
    wait_for(lambda: exited(info.postgres_pid or 0), "postgres to exit")
    wait_for(lambda: port_closed(port_of(info.bootstrap_servers)), "the broker port to close")
    assert port_closed(port_of(info.database_url.rsplit("/", 1)[0]))
    assert not (state_dir / "state.json").exists()
    assert stack_status(state_dir)[0].startswith("no stack recorded")

    assert stack_down(state_dir) == [f"nothing to stop in {state_dir.resolve()}"]


@pytest.mark.asyncio
async def test_embedded_postgres_keeps_its_data_across_down_and_up(state_dir: Path) -> None:
    settings = Settings()
    first = await stack_up(settings, state_dir)
    conn = await asyncpg.connect(first.database_url)
    try:
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    finally:
        await conn.close()
    stack_down(state_dir)

    started = time.monotonic()
    second = await stack_up(settings, state_dir)  # pgdata exists: no initdb this time
    elapsed = time.monotonic() - started
    assert second.postgres_pid != first.postgres_pid
    conn = await asyncpg.connect(second.database_url)
    try:
        assert await conn.fetchval("SELECT v FROM kept") == 42
    finally:
        await conn.close()
    assert elapsed < 10, f"second start took {elapsed:.1f} s"


@pytest.mark.asyncio
async def test_external_database_url_starts_no_postgres(state_dir: Path, database: str) -> None:
    # The suite's own server stands in for an operator's: the stack must use it as it is.
    settings = Settings(database_url=database)
    info = await stack_up(settings, state_dir)
    assert info.postgres_pid is None
    assert info.database_url == database
    assert not (state_dir / "pgdata").exists()
    assert await select_one(info.database_url) == (1, database.rpartition("/")[2])
    assert any("external" in line for line in stack_status(state_dir))

    stopped = stack_down(state_dir)
    assert len(stopped) == 1 and stopped[0].startswith("broker pid"), stopped
    wait_for(lambda: exited(info.broker_pid or 0), "the broker to exit")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = env or {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    cmd = [sys.executable, "-m", "pipeline.ops.stack", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def parse_exports(stdout: str) -> dict[str, str]:
    exports = {}
    for line in stdout.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export", line
        key, value = assignment.split("=", 1)
        exports[key] = value
    return exports


@pytest.mark.asyncio
async def test_cli_stack_outlives_the_process_that_started_it(state_dir: Path) -> None:
    up = run_cli("up", "--dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    exports = parse_exports(up.stdout)  # stdout holds nothing but export lines
    assert exports["KAFKA_BROKER_PROFILE"] == "tansu"
    assert exports["EVENTS_TOPIC"] == "events"

    # The `up` process has exited: both servers must still answer.
    assert await select_one(exports["DATABASE_URL"]) == (1, "pipeline")
    admin = AIOKafkaAdminClient(bootstrap_servers=exports["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        assert "events" in await admin.list_topics()
    finally:
        await admin.close()

    assert run_cli("status", "--dir", str(state_dir)).returncode == 0
    assert run_cli("down", "--dir", str(state_dir)).returncode == 0
    status = run_cli("status", "--dir", str(state_dir))
    assert status.returncode == 1, status.stdout


def test_cli_unreachable_database_url_fails_cleanly(state_dir: Path) -> None:
    env = dict(os.environ, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    up = run_cli("up", "--dir", str(state_dir), env=env)
    assert up.returncode == 2
    assert up.stdout == ""  # nothing for `eval` to run
    assert "cannot connect to DATABASE_URL" in up.stderr and "Traceback" not in up.stderr
    # The broker it started concurrently was stopped again, and nothing was recorded.
    assert not (state_dir / "state.json").exists()
    deadline = time.monotonic() + DEADLINE
    while processes_writing(state_dir / "broker.log") and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = processes_writing(state_dir / "broker.log")
    for pid in leaked:  # no state file, so the fixture's stack_down cannot find them
        stop_pid(pid, sig=signal.SIGKILL)
    assert not leaked, f"broker processes left running: {leaked}"


async def _load_through_a_worker(info: StackInfo, tmp: Path, seed: int) -> dict[str, Any]:
    """Publish a load on ``info``'s stack, run a worker until it is durable; its expectation."""
    s = Settings(
        kafka_bootstrap_servers=info.bootstrap_servers,
        database_url=info.database_url,
        broker_profile="tansu",
        data_dir=str(tmp / f"worker-{seed}"),
        batch_seconds=0.2,
    )
    async with Publisher(s) as pub:
        workload = build_workload(LoadOptions(count=3000, seed=seed, hours=1), pub.partitions)
        receipt = await publish_workload(pub, workload, progress=False)
    worker = start_worker(s, tmp / f"worker-{seed}.log")
    try:
        await wait_until_processed(info.database_url, s.events_topic, receipt.end_offsets, 90)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    return workload.expected()


async def test_a_memory_broker_restarted_by_stack_up_loses_no_new_events(
    state_dir: Path, tmp_path: Path
) -> None:
    # issue 13, seen: after `stack down` / `stack up` the empty broker's new events lay
    # below the kept durable offsets; 2,947 of 3,000 were silently never stored.
    first = await stack_up(Settings(), state_dir)
    assert first.notices == ()
    before = await _load_through_a_worker(first, tmp_path, seed=11)
    stack_down(state_dir)

    second = await stack_up(Settings(), state_dir)
    assert len(second.notices) == 1 and "cleared the durable offsets" in second.notices[0]
    after = await _load_through_a_worker(second, tmp_path, seed=12)
    report = await reconcile(second.database_url)
    assert report.product_events == before["product_events"] + after["product_events"]
    assert report.agent_events == before["agent_events"] + after["agent_events"]
    assert report.channel_mismatches == [] and report.agent_mismatches == []
