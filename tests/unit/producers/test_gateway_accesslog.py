"""producers.gateway.accesslog: JSON lines in the shape of pipeline.logs, buffered."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime

import orjson

from producers.gateway.accesslog import LOGGER, AccessLog


async def test_lines_are_buffered_then_flushed_as_json() -> None:
    out = io.BytesIO()
    log = AccessLog(out, flush_seconds=0.05)
    log.request(method="POST", path="/events", status=202, ms=1.5, caller=None)
    log.request(method="GET", path="/metrics", status=429, ms=0.2, caller="key-abc")
    assert out.getvalue() == b""
    await asyncio.sleep(0.1)
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["logger"] == LOGGER and first["level"] == "info" and first["msg"] == "request"
    assert (first["method"], first["status"], second["caller"]) == ("POST", 202, "key-abc")
    assert datetime.fromisoformat(first["ts"]).utcoffset() is not None


async def test_a_full_buffer_is_written_at_once() -> None:
    out = io.BytesIO()
    log = AccessLog(out, flush_seconds=60, max_lines=3)
    for i in range(3):
        log.request(i=i)
    assert len(out.getvalue().splitlines()) == 3
    log.request(i=3)
    log.flush()
    assert [orjson.loads(x)["i"] for x in out.getvalue().splitlines()] == [0, 1, 2, 3]
