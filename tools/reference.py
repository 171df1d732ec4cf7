"""The benchmark's hand-rolled reference: the worker's job with aiokafka instead of Faust.

``python -m tools bench`` runs this beside the Faust worker to show what
Faust itself costs on the machine at hand. It does the same job with the same
code: the same path of a batch (``Intake`` → ``Preparer``: decode, validate,
dedup, hourly buckets → ``WriteBehind`` lanes → ``Committer`` → ``Sink`` and
``sql``), the same partition book and the same connections (``Runtime``:
pool, DLQ producer, refetch consumer). Only what feeds the intake differs: an
``AIOKafkaConsumer.getmany`` loop takes the place of Faust's consumer thread,
conductor and stream, and the dedup state is a plain dict (no changelog topic).

It is a measuring stick, not a worker to run in production: its partitions
are assigned statically (``--index`` of ``--of`` processes, no consumer group
rebalancing), it serves no health endpoint, and its dedup state is not
recovered after a restart (PostgreSQL's unique keys still make a replay
harmless). Kafka offsets are committed after they are durable in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.core.planner import Run
from pipeline.errors import PipelineError
from pipeline.logs import configure
from pipeline.ops.runner import start_process
from pipeline.settings import Settings
from pipeline.sink.writer import Sink
from pipeline.worker.commit import Committer
from pipeline.worker.connections import Runtime
from pipeline.worker.dedup_table import DedupState
from pipeline.worker.intake import Intake
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.partitions import PartitionBook
from pipeline.worker.prepare import Preparer
from pipeline.worker.writebehind import WriteBehind

__all__ = ["run_reference", "partitions_of", "start_reference"]

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0  # Kafka offset commits (PostgreSQL holds the durable offsets)


class _DictTable:
    """The dedup state's table, without a changelog topic."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        return None


def partitions_of(index: int, processes: int, partitions: int) -> list[int]:
    """The partitions process ``index`` (0-based) of ``processes`` reads: every n-th one."""
    if not 0 <= index < processes:
        raise PipelineError(f"--index must be in 0..{processes - 1} (got {index})")
    return list(range(index, partitions, processes))


def start_reference(
    settings: Settings, log: Path, index: int, processes: int
) -> subprocess.Popen[bytes]:
    """Start this loop as a process of its own, ``python -m tools reference``."""
    args = ["reference", "--index", str(index), "--of", str(processes)]
    return start_process("tools", args, settings, log, {})


def run_reference(settings: Settings, index: int, processes: int) -> int:
    configure(settings.log_level)
    asyncio.run(_run(settings, partitions_of(index, processes, settings.events_partitions)))
    return 0


async def _run(settings: Settings, partitions: list[int]) -> None:
    s = settings
    runtime = Runtime(s)  # the worker's pool, DLQ producer and refetch consumer
    stopping = asyncio.Event()
    # The worker's path of a batch, as app.create_app wires it.
    metrics = WorkerMetrics()
    book = PartitionBook(DedupState(_DictTable(), s.dedup_capacity), metrics)
    preparer = Preparer(s, book, metrics, refetch=runtime.broker_log.read)
    committer = Committer(
        Sink(runtime.pool, s.db_retry_max_seconds), book, runtime.dlq.publish, metrics
    )
    write_behind = WriteBehind(committer, on_fatal=_fatal, lanes=s.sink_lanes)
    intake = Intake(s, preparer, write_behind, lambda _: stopping.is_set, on_fatal=_fatal)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap_servers,
        group_id=f"{s.app_id}-reference",
        enable_auto_commit=False,
        max_partition_fetch_bytes=s.max_message_bytes,
        **s.kafka_security.aiokafka_kwargs(),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await consumer.start()
    try:
        tps = [TopicPartition(s.events_topic, p) for p in partitions]
        consumer.assign(tps)
        starts = book.on_assigned(partitions, *await runtime.assignment_state(partitions))
        for tp in tps:
            if tp.partition in starts:  # else stopped: out of the broker's log
                consumer.seek(tp, starts[tp.partition])
        book.on_positioned(dict.fromkeys(starts, 0), starts)
        log.info("reference loop reading", extra={"partitions": partitions})
        await _consume(s, consumer, intake, book, stopping)
    finally:
        await intake.stop()
        await write_behind.wait(timeout=30.0)
        with contextlib.suppress(Exception):
            await _commit_durable(consumer, book, s.events_topic)
        await consumer.stop()
        await runtime.close()


async def _consume(
    s: Settings,
    consumer: AIOKafkaConsumer,
    intake: Intake,
    book: PartitionBook,
    stopping: asyncio.Event,
) -> None:
    """Takes are fetched while the previous one is prepared (the intake's own task, as Faust)."""
    committed_at = time.monotonic()
    while not stopping.is_set():
        take = await _take(consumer, s.batch_max, s.batch_seconds)
        if take:
            await intake.put(take)
        if time.monotonic() - committed_at > COMMIT_EVERY_S:
            await _commit_durable(consumer, book, s.events_topic)
            committed_at = time.monotonic()


async def _take(consumer: AIOKafkaConsumer, limit: int, within_s: float) -> list[Run]:
    """Up to ``limit`` records: what is fetched already, waiting at most ``within_s`` for any."""
    batch: list[Run] = []
    taken = 0
    timeout_ms = int(within_s * 1000)
    while taken < limit:
        fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=limit - taken)
        if not fetched:
            break
        for tp, records in fetched.items():
            # Only this task drains the consumer: the position is the one after these.
            position = await consumer.position(tp)
            batch.append(Run(tp.partition, records, max(position, records[-1].offset + 1)))
            taken += len(records)
        timeout_ms = 0  # take what else is buffered, without waiting for more
    return batch


async def _commit_durable(consumer: AIOKafkaConsumer, book: PartitionBook, topic: str) -> None:
    offsets = {TopicPartition(topic, p): o for p, o in book.durable.items() if o > 0}
    if offsets:
        await consumer.commit(offsets)


def _fatal(exc: BaseException) -> None:
    log.critical("fatal sink error, exiting", extra={"error": str(exc)})
    logging.shutdown()
    os._exit(70)
