"""The Kafka message key of an event: its dedup key, computed as the worker does.

Reuses the pipeline's pure functions so producer and worker can never disagree.
An event too broken to have a key gets ``None`` (the worker dead-letters it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.dedup import product_dedup_key
from pipeline.core.timeparse import parse_timestamp

__all__ = ["event_key"]


def event_key(event: Mapping[str, Any]) -> str | None:
    if "event_version" in event:
        event_id = event.get("event_id")
        return event_id.lower() if isinstance(event_id, str) else None
    event_id = event.get("event_id")
    if isinstance(event_id, str):
        return event_id
    try:
        ts_us = parse_timestamp(event.get("timestamp"))
    except ValueError:
        return None
    return product_dedup_key(str(event.get("event_name")), str(event.get("user_id")), ts_us, None)
