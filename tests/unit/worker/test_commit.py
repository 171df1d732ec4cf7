"""Committing a batch: dead letters published alongside the transaction and before its commit,
content PostgreSQL refuses, a batch given up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.core.planner import UNSTORABLE, RawMessage, Run
from pipeline.sink.writer import Abandoned, Unstorable, WriteResult
from tests.unit.worker.batchkit import BatchPath, assign, batch_path, messages


class RecordingSink:
    """Stands in for PostgreSQL: records what commit() hands over, optionally gives up."""

    def __init__(self, give_up: bool = False) -> None:
        self.give_up = give_up
        self.dlq_done_at_commit: bool | None = None

    async def write(self, plan: Any, abandon: Any, before_commit: Any = None) -> Any:
        await asyncio.sleep(0)
        if self.give_up:
            raise Abandoned()
        await before_commit
        self.dlq_done_at_commit = before_commit.done()
        return WriteResult(len(plan.products), 0, len(plan.dead), 1)


def _with_dead(sink: Any, publish: Any) -> BatchPath:
    p = batch_path(sink, publish)
    assign(p, [0], {0: (0, None)})
    return p


async def test_dead_letters_are_published_alongside_the_transaction_and_before_commit() -> None:
    published: list[int] = []

    async def publish(dead: Any, _abandon: Any) -> None:
        await asyncio.sleep(0.05)
        published.append(len(dead))

    sink = RecordingSink()
    p = _with_dead(sink, publish)
    records = [*messages(0, range(0, 3)), RawMessage("events", 0, 3, b"{bad")]
    prepared = await p.preparer.prepare([Run.of(records, epoch=1)])
    assert prepared is not None
    await p.committer.commit(prepared, lambda: False)
    assert published == [1]
    assert sink.dlq_done_at_commit is True
    assert p.book.durable[0] == 4


class RefusingSink:
    """Refuses the event at ``offset`` once, as PostgreSQL refuses content it cannot store."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.plans: list[tuple[list[int], list[tuple[str, int]]]] = []

    async def write(self, plan: Any, abandon: Any, before_commit: Any = None) -> Any:
        if before_commit is not None:
            await before_commit
        self.plans.append(
            (
                [e.source.offset for e in plan.products],
                [(d.reason, d.source.offset) for d in plan.dead],
            )
        )
        bad = [e for e in plan.products if e.source.offset == self.offset]
        if bad:
            raise Unstorable([(bad[0], "PostgreSQL refused it (DataError): no")])
        return WriteResult(len(plan.products), 0, len(plan.dead), 1)


async def test_an_event_postgresql_refuses_is_dead_lettered_and_the_batch_commits() -> None:
    published: list[list[int]] = []

    async def publish(dead: Any, _abandon: Any) -> None:
        published.append([d.source.offset for d in dead])

    sink = RefusingSink(offset=1)
    p = _with_dead(sink, publish)
    prepared = await p.preparer.prepare([Run.of(messages(0, range(0, 3)), epoch=1)])
    assert prepared is not None
    await p.committer.commit(prepared, lambda: False)
    assert sink.plans == [([0, 1, 2], []), ([0, 2], [(UNSTORABLE, 1)])]
    assert published == [[1]]  # the new dead letter reached the DLQ before the commit
    assert p.book.durable[0] == 3


async def test_a_given_up_batch_cancels_its_dead_letter_publish() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def publish(_dead: Any, _abandon: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    p = _with_dead(RecordingSink(give_up=True), publish)
    prepared = await p.preparer.prepare([Run.of([RawMessage("events", 0, 0, b"{bad")], epoch=1)])
    assert prepared is not None
    with pytest.raises(Abandoned):
        await p.committer.commit(prepared, lambda: True)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert started.is_set()
    assert p.book.durable[0] == 0
