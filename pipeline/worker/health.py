"""Each worker's HTTP endpoints: ``/health/live``, ``/health/ready`` and ``/metrics``.

A tiny HTTP/1.1 server on the worker's own event loop (``WORKER_WEB_PORT``),
started with the worker, before table recovery, so a probe always gets an
answer:

* live: the event loop answers within a second, and no assigned partition that
  has lag has been without progress for ``stuck_after`` seconds while the sink
  was not busy retrying a database outage. Faust consumers have been seen to
  stop consuming after rebalances (issue 175): this turns such a worker
  unhealthy, so its supervisor restarts it.
* ready: partitions were assigned (the group was joined), PostgreSQL answers,
  and no partition is stopped for a durable offset outside the broker's log.
* metrics: ``prometheus_client``'s exposition of the worker's registry (see
  metrics.py): OpenMetrics when the scraper's ``Accept`` asks for it, the classic
  text format otherwise. Per assigned partition, lag, seconds since progress and
  "stuck" are computed at scrape time, by the same rule as ``live``; the
  database gauge follows the 5-second status report and readiness probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from mode import Service

from pipeline.sink import sql
from pipeline.worker.metrics import PartitionState, exposition

if TYPE_CHECKING:
    from pipeline.worker.app import PipelineApp

__all__ = ["ROUTES", "HealthServer"]

log = logging.getLogger(__name__)

REPORT_EVERY = 5.0
ROUTES = ("/health/live", "/health/ready", "/metrics")  # GET (and HEAD) only
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer(Service):
    def __init__(
        self,
        app: PipelineApp,
        host: str,
        port: int,
        stuck_after: float = 60.0,
        replaces: int | None = None,
    ) -> None:
        super().__init__()
        self.app = app
        self.host, self.port = host, port
        self.replaces = replaces  # the default port, found taken (main.choose_web_port)
        self.stuck_after = stuck_after
        self._server: asyncio.Server | None = None
        self._tick = time.monotonic()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = datetime.now(UTC)
        metrics = self.metrics = app.metrics
        metrics.partitions.assigned = self.partition_states
        metrics.completeness_grace.set(app.runtime.settings.completeness_grace_seconds)
        metrics.stuck_after.set(stuck_after)
        metrics.database_up.set(math.nan)  # not checked yet
        committer = app.committer
        metrics.sink_retrying.set_function(lambda: 1.0 if committer.sink_retrying else 0.0)

    async def on_start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sockets = list(self._server.sockets or [])
        if sockets:
            self.port = sockets[0].getsockname()[1]
        where = {"host": self.host, "port": self.port}
        if self.replaces is not None:
            log.warning(
                "default web port in use (another worker?): health server listening on a free "
                "port instead; set WORKER_WEB_PORT to choose",
                extra={**where, "default_port": self.replaces},
            )
        else:
            log.info("health server listening", extra=where)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._retire()

    async def _retire(self) -> None:
        """Remove this worker's row, so ``status`` stops listing it at once.

        A connection of its own: the worker's pool may already be closed (the
        app stops before this service). Best effort: a row left behind (the
        database was down, or the worker was killed) is shown as silent once its
        heartbeat ages, and is no longer listed after ``status.FORGET_AFTER_S``.
        """
        dsn = self.app.runtime.settings.database_url
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(dsn, timeout=2.0)
            try:
                await asyncio.wait_for(conn.execute(sql.DELETE_WORKER_STATUS, self.worker_id), 2.0)
            finally:
                await conn.close(timeout=2.0)

    @Service.task
    async def _report(self) -> None:
        """Every few seconds, write this worker's partitions and progress to worker_status."""
        while not self.should_stop:
            await self.sleep(REPORT_EVERY)
            try:
                await asyncio.wait_for(self._write_report(), 5.0)
            except Exception as exc:  # the database may be down: the next report retries
                self.metrics.database_up.set(0)
                log.debug("worker report failed", extra={"error": repr(exc)})
            else:
                self.metrics.database_up.set(1)

    async def _write_report(self) -> None:
        now = time.monotonic()
        parts = self.partitions()
        ok, _ = self.live()
        lag = {str(p): max(hw - d, 0) for p, (hw, d, _) in parts.items() if hw is not None}
        pool = await self.app.runtime.pool()
        await pool.execute(
            sql.UPSERT_WORKER_STATUS,
            self.worker_id,
            self.port,
            sorted(parts),
            orjson.dumps({str(p): d for p, (_, d, _) in parts.items()}).decode(),
            orjson.dumps({str(p): round(now - at, 1) for p, (_, _, at) in parts.items()}).decode(),
            ok,
            self.started_at,
            orjson.dumps(lag).decode(),
        )

    @Service.task
    async def _heartbeat(self) -> None:
        while not self.should_stop:
            self._tick = time.monotonic()
            await self.sleep(0.5)

    # --- checks ---------------------------------------------------------------

    def partitions(self) -> dict[int, tuple[int | None, int, float]]:
        """Per assigned partition: (highwater, durable next offset, last progress time)."""
        topic = self.app.runtime.settings.events_topic
        book = self.app.partitions
        out: dict[int, tuple[int | None, int, float]] = {}
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            out[tp.partition] = (
                consumer.highwater(tp),
                book.durable.get(tp.partition, 0),
                book.progressed_at.get(tp.partition, time.monotonic()),
            )
        return out

    def partition_states(self) -> dict[int, PartitionState]:
        """Per assigned partition: lag, seconds since progress, stuck (for live and metrics)."""
        now = time.monotonic()
        states: dict[int, PartitionState] = {}
        for p, (highwater, durable, at) in self.partitions().items():
            lag = None if highwater is None else max(highwater - durable, 0)
            since = max(now - at, 0.0)
            states[p] = PartitionState(lag, since, bool(lag) and since > self.stuck_after)
        return states

    def live(self) -> tuple[bool, dict[str, Any]]:
        loop_lag = time.monotonic() - self._tick
        stuck = sorted(p for p, state in self.partition_states().items() if state.stuck)
        retrying = self.app.committer.sink_retrying
        ok = loop_lag < 5.0 and (not stuck or retrying)
        return ok, {
            "loop_lag_s": round(loop_lag, 3),
            "stuck_partitions": stuck,
            "sink_retrying": retrying,
        }

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        assigned = sorted(self.partitions())
        joined = self.metrics.value("pipeline_rebalances_total") > 0 or bool(assigned)
        try:
            pool = await asyncio.wait_for(self.app.runtime.pool(), 2.0)
            await asyncio.wait_for(pool.fetchval(sql.PING), 2.0)
            database = True
        except Exception as exc:  # any failure means "not ready", with the reason shown
            log.warning("readiness: database unreachable", extra={"error": repr(exc)})
            database = False
        self.metrics.database_up.set(1 if database else 0)
        stopped = {str(p): stop.describe() for p, stop in self.app.partitions.stopped.items()}
        report = {
            "partitions": assigned,
            "joined": joined,
            "database": database,
            "out_of_range": stopped,
        }
        return joined and database and not stopped, report

    # --- HTTP -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path, accept = _request_head(request)
            status, ctype, body = await self._route(method, path, accept)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, accept: str = "") -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path not in ROUTES:
            return 404, "application/json", b'{"error":"not found"}'
        if method not in ("GET", "HEAD"):
            return 405, "application/json", b'{"error":"method not allowed"}'
        if path == "/metrics":
            body, ctype = exposition(self.metrics.registry, accept)
            return 200, ctype, body
        ok, detail = self.live() if path == "/health/live" else await self.ready()
        body = orjson.dumps({"status": "ok" if ok else "unhealthy", **detail})
        return (200 if ok else 503), "application/json", body


def _request_head(request: bytes) -> tuple[str, str, str]:
    """Method, path and ``Accept`` header of a request head."""
    first, *headers = request.decode("latin-1").split("\r\n")
    parts = first.split(" ")
    if len(parts) < 2:
        return "", "", ""
    accept = ""
    for line in headers:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "accept":
            accept = value.strip()
    return parts[0], parts[1], accept
