"""Chaos-suite fixtures: a fault proxy in front of PostgreSQL, a broker reachable only
through a fault proxy, and the end-of-run table of measured recovery figures.

The fixtures of ``tests/conftest.py`` (``broker``, ``database``, ``settings``,
``workers``) are reused as they are; helpers live in ``chaoslib.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.ops.kafka_broker import start_kafka
from pipeline.ops.procs import free_port, free_ports
from tests.chaos.chaoslib import RECOVERY, ProxiedBroker, proxied_dsn, spawn_tansu
from tests.chaos.faultproxy import FaultProxy
from tests.conftest import require_kafka, wait_for


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECOVERY:
        return
    terminalreporter.section("chaos: measured figures (seconds)")
    for scenario, figures in RECOVERY.items():
        terminalreporter.write_line(f"{scenario}: {json.dumps(figures)}")
    sys.stderr.write("chaos figures: " + json.dumps(RECOVERY) + "\n")


# ---------------------------------------------------------------------------- PostgreSQL proxy


@pytest.fixture
def db_proxy(database: str) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of the test database's server; (proxy, DSN through it)."""
    parts = urlsplit(database)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        yield proxy, proxied_dsn(database, proxy.address)
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------- proxied broker


async def _port_open(port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


@pytest.fixture
async def proxied_broker(tmp_path: Path, broker_kind: str) -> AsyncIterator[ProxiedBroker]:
    """A dedicated broker for one test whose only advertised path is a FaultProxy."""
    if broker_kind == "kafka":
        async for proxied in _proxied_kafka(tmp_path):
            yield proxied
        return
    log = tmp_path / "proxied-broker.log"
    listen_port = free_port()
    proxy = FaultProxy("127.0.0.1", listen_port).start()
    proc = spawn_tansu(listen_port, proxy.port, log)
    try:

        async def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"Tansu exited: {log.read_text(errors='replace')[-2000:]}")
            return await _port_open(listen_port)

        await wait_for(up, 20, f"Tansu on port {listen_port}", interval=0.05)
        yield ProxiedBroker(proxy, f"127.0.0.1:{listen_port}", log)
    finally:
        proxy.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # memory-only: nothing to flush
            proc.wait(10)


async def _proxied_kafka(tmp_path: Path) -> AsyncIterator[ProxiedBroker]:
    """Apache Kafka listening on one port and advertising the proxy's to every client."""
    require_kafka()
    log = tmp_path / "proxied-kafka.log"
    listen_port, controller_port = free_ports(2)
    proxy = FaultProxy("127.0.0.1", listen_port).start()
    advertised = {"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy.port}"}
    try:
        node = await asyncio.to_thread(
            start_kafka,
            tmp_path / "proxied-kafka",
            log,
            listen_port,
            controller_port,
            extra_config=advertised,
        )
    except BaseException:
        proxy.stop()
        raise
    try:
        yield ProxiedBroker(proxy, f"127.0.0.1:{listen_port}", log)
    finally:
        proxy.stop()
        await asyncio.to_thread(node.stop)
        assert not node.alive(), "the proxied Kafka outlived its stop"
