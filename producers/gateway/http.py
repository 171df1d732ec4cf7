"""The little HTTP the gateway needs, on bare ASGI: requests, JSON responses, errors.

No framework on the hot path: a request is a small object over the ASGI scope,
a response is a status, headers and bytes. Every error a client can cause is
an :class:`HttpError` whose body is ``{"errors": [{"field", "error"}]}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from pipeline.core.limits import MAX_DEPTH, bracket_bound, parser_gave_up, too_deep

__all__ = [
    "ASGIApp",
    "HttpError",
    "Request",
    "Response",
    "error",
    "json_response",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


def error(field: str | None, message: str, **extra: Any) -> dict[str, Any]:
    """One entry of an ``errors`` list: the offending field and what is wrong."""
    return {"field": field, "error": message, **extra}


class HttpError(Exception):
    """A response for a request that cannot be served; never a traceback."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, Any]],
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> Response:
        return json_response(self.status, {**self.extra, "errors": self.errors}, self.headers)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: Send) -> None:
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Response(status, orjson.dumps(obj), [_JSON, *extra])


class Request:
    """One HTTP request: method, path, query, headers; the body is read on demand."""

    __slots__ = ("_receive", "client", "headers", "method", "path", "path_params", "query")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        raw_query: bytes = scope.get("query_string", b"")
        self.query: dict[str, str] = (
            dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True))
            if raw_query
            else {}
        )
        client = scope.get("client")
        self.client: str = client[0] if client else "-"
        self.path_params: dict[str, str] = {}
        self._receive = receive

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 as soon as it is known to exceed ``limit`` bytes."""
        declared = self.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() is True
                raise HttpError(400, [error("Content-Length", "must be a whole number")])
            if int(declared) > _DRAIN_MAX:
                raise _too_large(limit)  # not worth reading: the connection is closed
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, [error("body", "the client disconnected")])
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._drain(size, message)
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(self, size: int, message: Any) -> None:
        """Read and drop the rest of an oversized body (up to ``_DRAIN_MAX``).

        A server that answers while the client is still sending, and closes,
        resets the connection: most clients then never see the 413.
        """
        while message.get("more_body", False) and size <= _DRAIN_MAX:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))

    async def json(self, limit: int) -> tuple[Any, bytes]:
        """The body parsed, and as sent: 415 unless the content type is JSON, 400 unless
        it parses."""
        kind = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json" and not (
            kind.startswith("application/") and kind.endswith("+json")
        ):
            raise HttpError(
                415,
                [error("Content-Type", f"must be application/json, got {kind or 'nothing'}")],
            )
        raw = await self.body(limit)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if parser_gave_up(exc):
                raise HttpError(400, [error("body", _TOO_DEEP)]) from None
            raise HttpError(400, [error("body", f"is not valid JSON (UTF-8): {exc}")]) from None
        # An event may be MAX_DEPTH deep, inside {"events": [...]}: deeper cannot be
        # valid, and must not reach code that serialises or walks it recursively.
        # Name the field inside the event: [2].metadata, events[2].metadata, metadata.
        levels = (
            2 if isinstance(doc, list) else 3 if isinstance(doc, dict) and "events" in doc else 1
        )
        if bracket_bound(raw) > _BODY_DEPTH and (where := too_deep(doc, _BODY_DEPTH, levels)):
            raise HttpError(400, [error(where, _TOO_DEEP)])
        return doc, raw


_BODY_DEPTH = MAX_DEPTH + 2
_TOO_DEEP = f"is nested too deep: an event may be {MAX_DEPTH} levels deep"
_DRAIN_MAX = 64 * 1024 * 1024  # an oversized body up to this size is read, then 413


def _too_large(limit: int) -> HttpError:
    return HttpError(413, [error("body", f"is larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES)")])
