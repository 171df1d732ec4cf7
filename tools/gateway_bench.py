"""Gateway benchmark: single-event posts per second (p50/p99) and bulk events per second.

``bench_gateway`` starts ``python -m producers.gateway`` on a free loopback port
(or uses ``url``, which must be a loopback address), then drives it with a
lean keep-alive HTTP/1.1 client on raw asyncio streams: ``concurrency``
connections, each sending its next request when the previous answer arrived.
Every request counts, bounded in number: a 202 means the broker acknowledged.

    result = await bench_gateway(settings, singles=20_000, bulk_requests=60)
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import psutil

from pipeline.ops.procs import free_port
from pipeline.settings import Settings

__all__ = ["bench_gateway", "gateway_env"]

REPO = Path(__file__).resolve().parents[1]
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class _Run:
    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)


def gateway_env(s: Settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of a gateway process for ``s`` (as production would set it)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_BROKER_PROFILE": s.broker_profile,
        "DATABASE_URL": s.require_database_url(),
        "EVENTS_TOPIC": s.events_topic,
        "DLQ_TOPIC": s.dlq_topic,
        "MAX_MESSAGE_BYTES": str(s.max_message_bytes),
        "MAX_FUTURE_SECONDS": str(s.max_future_seconds),
        "MAX_EVENT_AGE_SECONDS": str(s.max_event_age_seconds),
        "LOG_LEVEL": s.log_level,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
    }
    return {**env, **extra}


async def bench_gateway(
    settings: Settings,
    *,
    singles: int = 20_000,
    bulk_requests: int = 60,
    bulk_size: int = 1000,
    concurrency: int = 64,
    bulk_concurrency: int = 4,
    url: str | None = None,
    log_file: Path | None = None,
) -> dict[str, Any]:
    """Measure a gateway; returns ``{"single": {...}, "bulk": {...}}`` (rates, p50/p99 ms).

    The load runs in its own process (uvloop when installed), so the client and
    this caller's event loop do not share one CPU's time.
    """
    proc: subprocess.Popen[bytes] | None = None
    if url is None:
        port = free_port()
        proc = _start(settings, port, log_file)
        host = "127.0.0.1"
    else:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
        if host not in _LOOPBACK:
            raise ValueError("the gateway benchmark only targets loopback addresses")
    try:
        await _wait_ready(host, port, proc)
        await _load(host, port, "single", min(500, singles), 1, concurrency)  # warm-up
        single = await _measured(
            proc, _load(host, port, "single", singles, 1, concurrency), singles
        )
        bulk = await _measured(
            proc,
            _load(host, port, "bulk", bulk_requests, bulk_size, bulk_concurrency),
            bulk_requests,
        )
    finally:
        if proc is not None:
            _stop(proc)
    return {"concurrency": concurrency, "single": single, "bulk": bulk}


async def _measured(
    proc: subprocess.Popen[bytes] | None, load: Awaitable[dict[str, Any]], requests: int
) -> dict[str, Any]:
    """The load's figures, plus the gateway's CPU time per request when it is ours."""
    before = _cpu(proc)
    result = await load
    after = _cpu(proc)
    if before is not None and after is not None:
        result["gateway_cpu_us_per_request"] = round((after - before) / requests * 1e6, 1)
    return result


def _cpu(proc: subprocess.Popen[bytes] | None) -> float | None:
    if proc is None:
        return None
    times = psutil.Process(proc.pid).cpu_times()
    return float(times.user + times.system)


async def _load(
    host: str, port: int, kind: str, requests: int, size: int, concurrency: int
) -> dict[str, Any]:
    """Run one phase in a client process of its own (uvloop when installed)."""
    args = [host, str(port), kind, str(requests), str(size), str(concurrency)]
    driver = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.gateway_bench",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await driver.communicate()
    if driver.returncode != 0:
        raise RuntimeError(f"the benchmark client failed (exit {driver.returncode})")
    result: dict[str, Any] = orjson.loads(out)
    return result


def _start(settings: Settings, port: int, log_file: Path | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **gateway_env(settings, port)}
    out = log_file.open("ab") if log_file is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "producers.gateway"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            conn = await _Connection.open(host, port)
            try:
                status = await conn.call(_request("GET", "/readyz", b""))
            finally:
                conn.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the gateway did not become ready within 60 s")


def _request(method: str, path: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _singles(n: int) -> list[bytes]:
    now = int(time.time())
    rnd = random.Random(n)
    names = ("page_view", "click", "search", "purchase")
    channels = ("web", "ios", "android", "email")
    return [
        _request(
            "POST",
            "/events",
            orjson.dumps(
                {
                    "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                    "event_name": rnd.choice(names),
                    "channel": rnd.choice(channels),
                    "user_id": f"u{rnd.randrange(50_000)}",
                    "timestamp": now - rnd.randrange(3600),
                    "metadata": {"path": "/pricing", "ms": rnd.randrange(900)},
                }
            ),
        )
        for _ in range(n)
    ]


def _bulks(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        events = [orjson.loads(r.partition(b"\r\n\r\n")[2]) for r in _singles(size)]
        for j, e in enumerate(events):
            e["event_id"] = f"bulk-{uuid.uuid4()}-{i}-{j}"
        out.append(_request("POST", "/events/bulk", orjson.dumps(events)))
    return out


async def _phase(
    host: str, port: int, requests: list[bytes], concurrency: int, events_per_request: int
) -> dict[str, Any]:
    started = time.perf_counter()
    run = await _drive(host, port, requests, concurrency)
    seconds = time.perf_counter() - started
    lat = sorted(run.latencies)
    ok = len(lat) - sum(run.failures.values())
    return {
        "requests": len(requests),
        "events": ok * events_per_request,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(requests) / seconds, 1),
        "events_per_s": round(ok * events_per_request / seconds, 1),
        "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
        "failures": {str(k): v for k, v in sorted(run.failures.items())},
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


async def _drive(host: str, port: int, requests: list[bytes], concurrency: int) -> _Run:
    run = _Run()
    todo = iter(requests)

    async def connection() -> None:
        conn = await _Connection.open(host, port)
        try:
            for request in todo:
                t0 = time.perf_counter()
                status = await conn.call(request)
                run.latencies.append(time.perf_counter() - t0)
                if status != 202:
                    run.failures[status] = run.failures.get(status, 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(connection() for _ in range(max(1, concurrency))))
    return run


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc or ConnectionError("the gateway closed the connection"))

    def _complete(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        self._waiter.set_result(int(head[9:12]))

    async def call(self, request: bytes) -> int:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _client(
    host: str, port: int, kind: str, requests: int, size: int, concurrency: int
) -> dict[str, Any]:
    if kind == "single":
        return await _phase(host, port, _singles(requests), concurrency, 1)
    return await _phase(host, port, _bulks(requests, size), concurrency, size)


def main(argv: list[str]) -> int:
    """The load process: ``host port single|bulk requests events_per_request concurrency``."""
    host, port, kind, requests, size, concurrency = argv
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            _client(host, int(port), kind, int(requests), int(size), int(concurrency))
        )
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
