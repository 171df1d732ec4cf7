"""Faust delivers the events topic a run of records at a time, not a record at a time.

Faust's fetch loop turns every fetched record into a ``ConsumerMessage``, passes
it through the conductor into the agent's stream, where it becomes an
``Event``, waits in ``take_events``' buffer and is acked on its own: 40-50 µs of
the worker's CPU per record on single-event messages (py-spy, docs/performance.md),
more than planning and writing it.

Here the consumer's ``getmany`` hands each partition's records of one fetch to
Faust as one message, a :class:`RecordRun` (its offset is the run's last one),
and the agent takes them with Faust's own ``take_events``, a take holding
about one fetch. Everything else stays Faust's: the consumer group and its rebalances,
flow control and seeks, the stream, its acks and offset commits (the offsets
inside a run are the fetch loop's "gap" before its last one, committable when
the run is acked, as for any gap), the tables and their changelogs. Records of
other topics (changelogs, during recovery) are delivered one by one as before.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import TP
from faust.types.tuples import ConsumerMessage

__all__ = ["Fetched", "RecordRun", "getmany_runs", "run_of"]

log = logging.getLogger(__name__)


class Fetched(list[Any]):
    """One partition's records of one drain of the fetcher, stamped in the consumer's thread.

    ``epoch`` is the partition's seek count when they were drained, and
    ``fetched_to`` the fetch position right after them (see
    ``batch.FetchedRun``). aiokafka drops what was buffered before a seek, so
    records drained after it are read from the new position.
    """

    __slots__ = ("epoch", "fetched_to")

    def __init__(self, records: Sequence[Any], epoch: int, fetched_to: int) -> None:
        super().__init__(records)
        self.epoch = epoch
        self.fetched_to = fetched_to


class RecordRun(ConsumerMessage):
    """One partition's consecutive records from one fetch, as one Faust message.

    Also a ``planner.FetchedRun``: what the preparer plans.
    """

    __slots__ = ("epoch", "fetched_to", "records")

    records: Sequence[Any]
    epoch: int
    fetched_to: int


def run_of(tp: TP, records: Sequence[Any], generation_id: int | None) -> RecordRun:
    """The message for ``records`` (non-empty, one partition, in offset order)."""
    last = records[-1]
    run = RecordRun(
        tp.topic,
        tp.partition,
        last.offset,
        last.timestamp / 1000.0 if last.timestamp is not None else None,  # type: ignore[arg-type]
        last.timestamp_type,
        None,
        None,
        b"",
        None,
        0,
        sum(len(r.value) for r in records if r.value is not None),
        tp,
        generation_id=generation_id,
    )
    run.records = records
    if isinstance(records, Fetched):
        run.epoch, run.fetched_to = records.epoch, records.fetched_to
    else:
        run.epoch, run.fetched_to = 0, last.offset + 1
    return run


async def getmany_runs(consumer: Any, topic: str, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
    """``consumer.getmany``, yielding one :class:`RecordRun` per partition of ``topic``.

    Faust's own (``faust.transport.consumer.Consumer.getmany``) with the same
    checks: the flow must be active and the generation unchanged, and only
    active or buffered partitions are delivered; a stopped flow seeks back.
    """
    app = consumer.app
    records, active = await consumer._wait_next_records(timeout)
    generation_id = app.consumer_generation_id
    if records is None or consumer.should_stop:
        return
    if not consumer.flow_active:
        try:
            await consumer.perform_seek()
        except Exception as exc:
            log.warning("seek while the flow is stopped failed", extra={"error": str(exc)})
        return
    to_message = consumer._to_message
    for tp, fetched in records.items():
        if not consumer.flow_active or app.consumer_generation_id != generation_id:
            break
        if not fetched or not (
            active is None or tp in active or tp in consumer._buffered_partitions
        ):
            continue
        if tp.topic == topic:
            yield tp, run_of(tp, fetched, generation_id)
        else:
            for record in fetched:
                yield tp, to_message(tp, record)
