"""The request log: one JSON object per request, in the shape of ``pipeline.logs``.

``{"ts", "level": "info", "logger": "producers.gateway.access", "msg": "request",
"method", "path", "status", "ms", "bytes", "client", "caller"}`` on stderr.
Written directly (orjson, buffered, flushed every ``flush_seconds`` and at
shutdown) rather than through ``logging``: at thousands of requests per
second the logging machinery and a write per line cost more than the
request itself. ``GATEWAY_ACCESS_LOG=false`` turns it off.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

import orjson

__all__ = ["AccessLog"]

LOGGER = "producers.gateway.access"


class AccessLog:
    def __init__(
        self, stream: IO[bytes] | None = None, flush_seconds: float = 0.2, max_lines: int = 512
    ) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._flush_seconds = flush_seconds
        self._max_lines = max_lines
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._prefix = ""

    def _now(self) -> str:
        """``pipeline.logs``' timestamp form, formatting the date once per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}+00:00"

    def request(self, **fields: Any) -> None:
        line = {"ts": self._now(), "level": "info", "logger": LOGGER, "msg": "request", **fields}
        self._lines.append(orjson.dumps(line, default=str))
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        try:
            if self._stream is not None:
                self._stream.write(data)
                self._stream.flush()
            else:
                sys.stderr.write(data.decode())
                sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: nothing better to do with a log line
            pass
