"""The Faust dedup table: a fast filter in front of the database's unique keys.

It only ever holds facts that are durable: the keys of events a committed sink
transaction holds. So it can miss keys (after a recovery that came up short,
or an eviction) but is never wrong; PostgreSQL's unique keys are the backstop.

To keep the changelog cheap it is written once per batch, not once per event:
one table entry per (partition, batch) whose value lists the batch's keys
(chunked), and an in-memory index ``key -> entry`` answers lookups. Entries are
evicted oldest first beyond ``capacity`` keys, with a tombstone in the changelog.
Faust-free: the table is passed in and used through its public methods.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["DedupState", "TableLike"]

CHUNK = 5000  # keys per changelog record: ~200 KB, far below the 1 MB message limit


class TableLike(Protocol):
    data: Any

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> Any: ...


class DedupState:
    def __init__(self, table: TableLike, capacity: int) -> None:
        self._table = table
        self._capacity = capacity
        self._index: dict[str, str] = {}
        self._entries: OrderedDict[str, list[str]] = OrderedDict()  # oldest first
        self._loaded: set[int] = set()

    def __len__(self) -> int:
        return len(self._index)

    def seen(self, key: str) -> bool:
        return key in self._index

    def load_partitions(self, partitions: Iterable[int]) -> int:
        """Index what the (recovered) table holds for newly owned partitions."""
        todo = {p for p in partitions if p not in self._loaded}
        if not todo or self._capacity <= 0:
            return 0
        added = 0
        for entry, keys in list(self._table.data.items()):
            if _partition_of(entry) in todo and isinstance(keys, list):
                self._add(entry, keys)
                added += len(keys)
        self._loaded |= todo
        self._evict()
        return added

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the index of revoked partitions; their entries are re-read when they return."""
        gone = set(partitions)
        self._loaded -= gone
        for entry in [e for e in self._entries if _partition_of(e) in gone]:
            for key in self._entries.pop(entry):
                self._index.pop(key, None)

    def remember(self, partition: int, first_offset: int, keys: Iterable[str]) -> None:
        """Record keys a committed transaction holds (call only after the commit)."""
        if self._capacity <= 0:
            return
        fresh = [k for k in keys if k not in self._index]
        for n, start in enumerate(range(0, len(fresh), CHUNK)):
            chunk = fresh[start : start + CHUNK]
            # Unique per write: a re-read from the same offset must not overwrite.
            entry = f"{partition}:{first_offset:015d}:{n}:{uuid.uuid4().hex[:12]}"
            self._table.data[entry] = chunk
            self._table.send_changelog(partition, entry, chunk)
            self._add(entry, chunk)
        self._evict()

    def _add(self, entry: str, keys: list[str]) -> None:
        old = self._entries.pop(entry, None)
        for key in old or ():
            self._index.pop(key, None)
        self._entries[entry] = keys
        for key in keys:
            self._index[key] = entry

    def _evict(self) -> None:
        while len(self._index) > self._capacity and self._entries:
            entry, keys = self._entries.popitem(last=False)
            for key in keys:
                if self._index.get(key) == entry:
                    del self._index[key]
            self._table.data.pop(entry, None)
            self._table.send_changelog(_partition_of(entry), entry, None)


def _partition_of(entry: str) -> int:
    return int(entry.split(":", 1)[0])
