"""Dedup keys, and de-duplication inside one batch.

The dedup key is the event's ``event_id`` when it has one, else a stable hash
of ``(event_name, user_id, timestamp)`` with the timestamp in canonical epoch
microseconds, so two spellings of one instant give one key. Producers use the
key as the Kafka message key: every copy of an event lands on one partition.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from hashlib import blake2b
from typing import TypeVar

import orjson

__all__ = ["first_of_each_key", "product_dedup_key"]

E = TypeVar("E")


def product_dedup_key(event_name: str, user_id: str, ts_us: int, event_id: str | None) -> str:
    if event_id is not None:
        return event_id
    # A JSON array is unambiguous whatever characters the fields hold.
    material = orjson.dumps([event_name, user_id, ts_us])
    return "h:" + blake2b(material, digest_size=16).hexdigest()


def first_of_each_key(
    events: Iterable[E], key: Callable[[E], str], seen: Callable[[str], bool]
) -> tuple[list[E], list[E]]:
    """Split into the first event of each key not already ``seen``, and the dropped rest."""
    kept: list[E] = []
    batch_keys: set[str] = set()
    dropped: list[E] = []
    for event in events:
        k = key(event)
        if k in batch_keys or seen(k):
            dropped.append(event)
            continue
        batch_keys.add(k)
        kept.append(event)
    return kept, dropped
