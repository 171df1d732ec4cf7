"""The shape limits of an event, in one place for the gateway and the worker. Pure: no I/O.

Every part of an event is bounded, so no message can make a reader recurse,
allocate or store without bound:

- nesting: an event is at most ``MAX_DEPTH`` levels deep (the event object is
  level 1, so ``{"metadata": {"a": [1]}}`` is 3 levels);
- ``metadata`` and each other object or array at the top level of an event
  (an agent event's ``tenant``, ``run`` and ``trace``, and any field the
  contract does not name): at most ``FIELD_MAX_BYTES`` of JSON each;
- the top-level fields the contract does not name: together at most
  ``FIELD_MAX_BYTES`` of JSON;
- ``tags``: at most ``MAX_TAGS`` strings of 1 to ``TAG_MAX_CHARS`` characters;
- a whole message: ``MAX_MESSAGE_BYTES`` (a setting), and a request body
  ``GATEWAY_MAX_BODY_BYTES``.

Sizes are measured on one canonical serialisation (orjson), so a single
message and the same event inside an envelope get the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "EventLimits",
    "FIELD_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_TAGS",
    "TAG_MAX_CHARS",
    "TOO_DEEP",
    "TOO_LARGE",
    "Breach",
    "bracket_bound",
    "check_shape",
    "field_name",
    "parser_gave_up",
    "too_deep",
]


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Size and event-time limits, from the settings (``Settings.event_limits``).

    The worker dead-letters what breaks them; the gateway refuses the same.
    """

    max_message_bytes: int = 1_048_576  # MAX_MESSAGE_BYTES
    max_event_age_s: int = 0  # MAX_EVENT_AGE_SECONDS; 0: no limit
    max_future_s: int = 3600  # MAX_FUTURE_SECONDS
    grace_s: int = 300  # COMPLETENESS_GRACE_SECONDS


MAX_DEPTH = 32
FIELD_MAX_BYTES = 16_384
MAX_TAGS = 32
TAG_MAX_CHARS = 128

# Re-serialising JSON can grow it at most ~4.75x (1e15 -> 1000000000000000.0): an
# event under this size cannot hold a field over the limit, whatever its spelling.
_SAFE_PAYLOAD = FIELD_MAX_BYTES // 5


class Breach(Exception):
    """A limit an event breaks: the reason code, the top-level field and why."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(reason, field, detail)
        self.reason = reason
        self.field = field
        self.detail = detail


TOO_DEEP = "too_deep"
TOO_LARGE = "too_large"


def parser_gave_up(exc: ValueError) -> bool:
    """Whether the JSON parser refused a text for its depth (orjson stops at 1024
    levels in recent versions, and says "recursion limit" in older ones)."""
    text = str(exc)
    return "depth limit" in text or "recursion limit" in text


def bracket_bound(payload: bytes) -> int:
    """An upper bound of the nesting depth of the JSON text ``payload`` (C speed).

    Every level opens with ``{`` or ``[``; brackets inside strings only raise
    the bound, so a payload within it needs no walk.
    """
    return payload.count(b"{") + payload.count(b"[")


def too_deep(doc: object, limit: int, name_levels: int = 1) -> str | None:
    """Where a value nests deeper than ``limit`` levels in ``doc``, or None.

    ``doc`` itself is level 1. The answer names the first ``name_levels``
    levels of the path (``metadata``; with 3, ``events[2].metadata``), or is
    ``body`` when ``doc`` itself is too deep at its own level. Iterative, so any
    depth orjson parses is safe.
    """
    stack: list[tuple[object, int, str]] = [(doc, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if depth > limit:
            return path or "body"
        for key, child in items:
            if isinstance(child, dict | list):
                if depth > name_levels:
                    where = path
                elif isinstance(key, int):
                    where = f"{path}[{key}]"
                else:
                    where = f"{path}.{field_name(key)}" if path else field_name(key)
                stack.append((child, depth + 1, where))
    return None


def check_shape(obj: dict[str, Any], payload: bytes, known: frozenset[str]) -> None:
    """Raise :class:`Breach` unless the event ``obj`` (its JSON text ``payload``) is in bounds.

    ``known`` are the top-level fields its contract names; the others are
    bounded together. Cheap for the usual event: a byte count, then nothing.
    """
    if bracket_bound(payload) > MAX_DEPTH:
        field = too_deep(obj, MAX_DEPTH)
        if field is not None:
            raise Breach(TOO_DEEP, field, f"is nested deeper than {MAX_DEPTH} levels")
    if len(payload) <= _SAFE_PAYLOAD:
        return
    extras = 0
    for name, value in obj.items():
        unknown = name not in known
        if not unknown and not isinstance(value, dict | list):
            continue  # a known scalar: the contract bounds it
        size = len(orjson.dumps(value))
        if size > FIELD_MAX_BYTES:
            raise Breach(
                TOO_LARGE, field_name(name), f"must be at most {FIELD_MAX_BYTES} bytes of JSON"
            )
        if unknown:
            extras += size + len(name) + 4
            if extras > FIELD_MAX_BYTES:
                raise Breach(
                    TOO_LARGE,
                    field_name(name),
                    f"takes the fields the contract does not name past {FIELD_MAX_BYTES}"
                    " bytes of JSON together",
                )


def field_name(key: str, limit: int = 64) -> str:
    """A field name fit for an error message and a text column: no NUL, bounded."""
    name = key.replace("\x00", "\\u0000")
    return name if len(name) <= limit else name[:limit] + "..."
