"""Kafka message values to event objects.

A value is ONE JSON event object or a JSON array of them (a batch envelope).
In an envelope each element is judged on its own. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from pipeline.core.events import Invalid
from pipeline.core.limits import MAX_DEPTH, TOO_DEEP, parser_gave_up, too_deep

__all__ = ["EMPTY_ENVELOPE", "NOT_AN_OBJECT", "NOT_JSON", "OVERSIZED", "decode_message"]

NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
EMPTY_ENVELOPE = "empty_envelope"
OVERSIZED = "oversized"

Decoded = tuple[int, dict[str, Any] | Invalid, bytes]


def decode_message(value: bytes | None, max_bytes: int) -> Iterator[Decoded]:
    """Yield ``(index, event object or Invalid, that element's JSON bytes)``.

    ``index`` is -1 for a single-event message, else the position in the envelope.
    """
    if value is None or len(value) == 0:
        yield -1, Invalid(NOT_JSON, "message value is empty"), b""
        return
    if len(value) > max_bytes:
        yield (
            -1,
            Invalid(OVERSIZED, f"message is {len(value)} bytes, the limit is {max_bytes}"),
            value,
        )
        return
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if parser_gave_up(exc):
            detail = f"is nested deeper than {MAX_DEPTH} levels (the parser stopped: {exc})"
            yield -1, Invalid(TOO_DEEP, detail, "body"), value
        else:
            yield -1, Invalid(NOT_JSON, f"not valid JSON (UTF-8): {exc}"), value
        return
    if isinstance(doc, dict):
        yield -1, doc, value
    elif isinstance(doc, list):
        yield from _envelope(doc, value)
    else:
        yield (
            -1,
            Invalid(NOT_AN_OBJECT, f"expected an event object or an array, got {_kind(doc)}"),
            value,
        )


def _envelope(items: list[Any], value: bytes) -> Iterator[Decoded]:
    if not items:
        yield -1, Invalid(EMPTY_ENVELOPE, "the envelope holds no events"), value
        return
    for i, item in enumerate(items):
        try:
            raw = orjson.dumps(item)
        except orjson.JSONEncodeError:  # nested past orjson's 254 levels: no canonical form
            field = too_deep(item, MAX_DEPTH) if isinstance(item, dict) else None
            detail = f"{field or 'the element'} is nested deeper than {MAX_DEPTH} levels"
            yield i, Invalid(TOO_DEEP, detail, field), b""
            continue
        if isinstance(item, dict):
            yield i, item, raw
        else:
            yield (
                i,
                Invalid(NOT_AN_OBJECT, f"envelope element is {_kind(item)}, not an object"),
                raw,
            )


def _kind(doc: object) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(doc), "null" if doc is None else type(doc).__name__
    )
