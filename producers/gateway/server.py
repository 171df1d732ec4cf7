"""uvicorn as the gateway runs it: httptools, plus the limits uvicorn itself lacks.

uvicorn's httptools protocol bounds neither the size of a request head (a
64 MB header is read whole) nor the time a client may take to send it (a
slow-loris connection stays open forever), and ``limit_concurrency`` only
answers requests, so idle connections pile up. :class:`GuardedHttpTools` adds:

- ``GATEWAY_MAX_HEADER_BYTES``: a longer request line plus headers gets ``431``;
- ``GATEWAY_HEADER_TIMEOUT_SECONDS``: a head not complete by then gets ``408``
  (counted from the connection, or from a kept-alive request's first byte);
- ``GATEWAY_MAX_CONNECTIONS``: a connection beyond that many gets ``503`` at once.

Each answer is a JSON error body and closes the connection (a lingering close,
so the client reads the answer even while it is still sending), and is counted in
``gateway_http_refused_total`` (these requests never reach the app).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from producers.gateway.settings import GatewaySettings
from producers.gateway.telemetry import GatewayMetrics

__all__ = ["GuardedHttpTools", "uvicorn_config"]

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024 * 1024


class GuardedHttpTools(HttpToolsProtocol):
    """httptools with a bounded request head, a head deadline and a connection cap."""

    max_header_bytes = 16_384
    header_timeout_seconds = 10.0
    max_connections = 1000
    on_refuse: Callable[[int], None] | None = None  # counts each refusal (status)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        over = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        if over:
            self._refuse(503, "the gateway has too many open connections; retry")
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # refused: the rest is read and dropped, for a while
            self._lingered += len(data)
            if self._lingered > _LINGER_MAX_BYTES:
                self.transport.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._start_head_timer()
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and self.parser is not None:
            self._refuse(431, f"the request head is larger than {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_head = True  # the next request's head; the keep-alive timer runs meanwhile
        self._head_bytes = 0

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_seconds, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request head took over {self.header_timeout_seconds:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._stop_head_timer()
        if self.on_refuse is not None:
            self.on_refuse(status)
        body = orjson.dumps({"errors": [{"field": None, "error": message}]})
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.parser = None  # type: ignore[assignment]  # nothing more is parsed
        # A lingering close, as nginx does: closing with unread data would send a
        # reset, which can destroy the answer before the client reads it. So the
        # write side is shut, what the client still sends is dropped, and the
        # connection closes once it stops, or after a bounded time and size.
        self._lingered = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def guarded_protocol(
    settings: GatewaySettings, on_refuse: Callable[[int], None] | None = None
) -> type[GuardedHttpTools]:
    """The protocol class with ``settings``' limits (a subclass per server)."""
    return type(
        "GatewayHttp",
        (GuardedHttpTools,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout_seconds": settings.header_timeout_seconds,
            "max_connections": settings.max_connections,
            "on_refuse": staticmethod(on_refuse) if on_refuse is not None else None,
        },
    )


def uvicorn_config(app: Any, settings: GatewaySettings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the gateway (its command and the tests use it)."""
    metrics = getattr(app, "metrics", None)
    on_refuse = metrics.refused if isinstance(metrics, GatewayMetrics) else None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": guarded_protocol(settings, on_refuse),
        "lifespan": "on",
        "log_config": None,
        "access_log": False,  # the gateway writes its own JSON request log
        "server_header": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds),
        "timeout_keep_alive": 5,
        "backlog": 4096,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
