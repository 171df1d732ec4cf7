"""Shared fixtures: a real broker (Tansu) per session, a fresh PostgreSQL database per test.

Nothing is mocked. PostgreSQL comes from TEST_DATABASE_URL (default: the
machine's server, postgresql://postgres@127.0.0.1:5432/test); each test gets its
own database, dropped afterwards. When a service is missing the tests FAIL with
a message saying what to start: they never skip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.migrate import apply_migrations
from pipeline.settings import Settings
from pipeline.stack import start_broker, stop_pid
from pipeline.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.25
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    proc, port = start_broker(log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid, sig=signal.SIGKILL)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A new, migrated database; its DSN."""
    name = f"pipeline_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(ADMIN_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN} ({exc}). Start it, or set "
            "TEST_DATABASE_URL to a server where the tests may create databases."
        )
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = _with_database(ADMIN_DSN, name)
    try:
        await apply_migrations(dsn)
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def settings(broker: str, database: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, consumer group and database."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka_bootstrap_servers=broker,
        broker_profile="tansu",
        database_url=database,
        events_topic=f"events-{tag}",
        dlq_topic=f"events-{tag}.dlq",
        events_partitions=6,
        app_id=f"pipeline-{tag}",
        data_dir=str(tmp_path / "worker"),
        batch_seconds=0.2,
    )
    await ensure_topics(s)
    return s


def settings_env(s: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_BROKER_PROFILE": s.broker_profile,
        "DATABASE_URL": s.database_url or "",
        "EVENTS_TOPIC": s.events_topic,
        "DLQ_TOPIC": s.dlq_topic,
        "EVENTS_PARTITIONS": str(s.events_partitions),
        "PIPELINE_APP_ID": s.app_id,
        "WORKER_DATA_DIR": s.data_dir,
        "SINK_BATCH_SECONDS": str(s.batch_seconds),
        "SINK_BATCH_MAX": str(s.batch_max),
        "LOG_LEVEL": "INFO",
    }


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Workers:
    settings: Settings
    tmp: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, **env: str) -> WorkerProcess:
        log = self.tmp / f"worker-{len(self.started)}.log"
        full_env = {**os.environ, **settings_env(self.settings), **env}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"],
                cwd=REPO,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        w = WorkerProcess(proc, log)
        self.started.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.started:
            if w.proc.poll() is None:
                w.kill()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
