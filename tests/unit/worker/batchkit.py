"""What the batch-path unit tests share: the path assembled as the worker wires it, runs of
records, and an assignment as the worker does it (baselines, seek, positioned)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from pipeline.core.offsets import LogRange
from pipeline.core.planner import RawMessage, Run
from pipeline.settings import Settings
from pipeline.worker.commit import Committer, PublishDead
from pipeline.worker.dedup_table import DedupState
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.partitions import PartitionBook
from pipeline.worker.prepare import Preparer, Refetch

WHOLE = LogRange(0, 10**9)


class TP(NamedTuple):
    topic: str
    partition: int


class FakeTable:
    """The dedup state's Faust table, without a broker."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        pass


async def no_dead(*_: Any) -> None:
    pass


@dataclass
class BatchPath:
    """The Faust-free path of a batch, as ``app.create_app`` wires it."""

    metrics: WorkerMetrics
    book: PartitionBook
    preparer: Preparer
    committer: Committer


def batch_path(
    sink: Any = None, publish: PublishDead = no_dead, refetch: Refetch | None = None
) -> BatchPath:
    """``sink`` None: preparing and the state around it never touch the sink."""
    metrics = WorkerMetrics()
    book = PartitionBook(DedupState(FakeTable(), 1000), metrics)
    preparer = Preparer(Settings(), book, metrics, refetch=refetch)
    return BatchPath(metrics, book, preparer, Committer(sink, book, publish, metrics))


def assign(
    p: BatchPath,
    partitions: list[int],
    durable: dict[int, tuple[int, int | None]],
    logs: dict[int, LogRange] | None = None,
    epoch: int = 1,
) -> dict[int, int]:
    """Assignment as the worker does it: read the baselines, seek (epoch), then positioned."""
    starts = p.book.on_assigned(partitions, durable, logs or dict.fromkeys(partitions, WHOLE))
    p.book.on_positioned(dict.fromkeys(starts, epoch), starts)
    return starts


def run(partition: int, offsets: range, epoch: int = 1, fetched_to: int | None = None) -> Run:
    records = messages(partition, offsets)
    return Run(partition, records, fetched_to or records[-1].offset + 1, epoch)


def messages(partition: int, offsets: range) -> list[RawMessage]:
    return [
        RawMessage(
            "events",
            partition,
            o,
            orjson.dumps({"event_name": "v", "channel": "web", "user_id": f"u{o}", "timestamp": o}),
        )
        for o in offsets
    ]
