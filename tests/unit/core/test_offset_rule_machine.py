"""The offset rule as a state machine over the path of a batch and its offset guard.

A model broker holds one partition's log: records, and offsets no consumer
sees (control markers, aborted records). A model consumer fetches runs from
its position; runs wait in a buffer (Faust's queues) and may be delivered late,
after a later seek made them stale. Assignments come with or without a
durable row, seeks land late, Kafka-committed seeks move the position
elsewhere, batches commit, are abandoned, partitions are revoked.

After every step: the durable offset the sink recorded never passes an offset
that was neither written by a committed batch nor absent from the log.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.core.offsets import LogRange
from pipeline.core.planner import RawMessage, Run
from pipeline.sink.writer import WriteResult
from pipeline.worker.prepare import Prepared
from tests.unit.worker.batchkit import BatchPath, batch_path

P = 0
TOPIC = "events"


class ModelSink:
    """PostgreSQL as the rule sees it: the offsets written, and the durable offset."""

    def __init__(self) -> None:
        self.written: set[int] = set()
        self.durable: int | None = None

    async def write(self, plan: Any, abandon: Any, before_commit: Any = None) -> WriteResult:
        if before_commit is not None:
            await before_commit
        self.written |= plan.offsets.get(P, set())
        if P in plan.progress:
            self.durable = max(self.durable or 0, plan.progress[P].next_offset)
        return WriteResult(len(plan.products), 0, len(plan.dead), 1)


def _value(offset: int) -> bytes:
    if offset % 11 == 5:
        return b"{not json"  # dead-lettered: counts as handled too
    event = {"event_name": "v", "channel": "web", "user_id": f"u{offset}", "timestamp": offset}
    return orjson.dumps(event)


class OffsetRule(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sink = ModelSink()
        self.path: BatchPath | None = None
        self.absent: set[int] = set()
        self.log_start = 0
        self.log_end = 0
        self.position = 0
        self.epoch = 0
        self.pending_seek: int | None = None  # assigned, seek not landed yet
        self.buffer: list[Run] = []
        self.prepared: list[Prepared] = []
        self.broker_slow = False

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def refetch(self, topic: str, partition: int, start: int, end: int) -> Any:
        start = max(start, self.log_start)
        stop = min(end, start + 3) if self.broker_slow else end  # a slow broker proves less
        records = [self.record(o) for o in range(start, stop) if o not in self.absent]
        return records, min(stop, self.log_end)

    def record(self, offset: int) -> RawMessage:
        return RawMessage(TOPIC, P, offset, _value(offset))

    @initialize(
        length=st.integers(min_value=1, max_value=120),
        absent=st.sets(st.integers(min_value=0, max_value=119), max_size=30),
        log_start=st.integers(min_value=0, max_value=10),
    )
    def make_log(self, length: int, absent: set[int], log_start: int) -> None:
        self.log_end = max(length, log_start)
        self.log_start = log_start
        self.absent = {o for o in absent if log_start <= o < self.log_end}
        self.position = log_start
        self.path = batch_path(self.sink, refetch=self.refetch)

    @property
    def proc(self) -> BatchPath:
        assert self.path is not None
        return self.path

    @rule(with_row=st.booleans(), lands_now=st.booleans())
    def assign(self, with_row: bool, lands_now: bool) -> None:
        """A rebalance: baselines are read; the seek lands now or later (``seek_lands``)."""
        durable = {}
        if with_row and self.sink.durable is not None:
            durable = {P: (self.sink.durable, None)}
        starts = self.proc.book.on_assigned(
            [P], durable, {P: LogRange(self.log_start, self.log_end)}
        )
        self.pending_seek = starts.get(P)
        if lands_now and self.pending_seek is not None:
            self.seek_lands()

    @precondition(lambda self: self.pending_seek is not None)
    @rule()
    def seek_lands(self) -> None:
        assert self.pending_seek is not None
        self.epoch += 1
        self.position = self.pending_seek
        self.proc.book.on_positioned({P: self.epoch}, {P: self.pending_seek})
        self.pending_seek = None

    @rule(offset=st.integers(min_value=0, max_value=130))
    def kafka_committed_seek(self, offset: int) -> None:
        """Faust's seek to the Kafka-committed offset: no epoch (runs from it are stale)."""
        self.position = min(max(offset, self.log_start), self.log_end)

    @rule(n=st.integers(min_value=1, max_value=25))
    def fetch(self, n: int) -> None:
        records = []
        position = self.position
        while position < self.log_end and len(records) < n:
            if position not in self.absent:
                records.append(self.record(position))
            position += 1
        self.position = position
        if records:
            self.buffer.append(Run(P, records, position, self.epoch))

    @rule(n=st.integers(min_value=1, max_value=25), commit=st.booleans())
    def fetch_and_deliver(self, n: int, commit: bool) -> None:
        """The common path: a run fetched and handed over at once, maybe committed."""
        self.fetch(n)
        if self.buffer:
            self.deliver_run(self.buffer.pop())
        if commit:
            while self.prepared:
                self.commit()

    @precondition(lambda self: self.buffer)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Faust hands over a buffered run: usually the oldest, sometimes a later one."""
        i = data.draw(st.integers(min_value=0, max_value=len(self.buffer) - 1))
        self.deliver_run(self.buffer.pop(i))

    def deliver_run(self, run: Run) -> None:
        prepared = self.run(self.proc.preparer.prepare([run]))
        if prepared is not None:
            self.prepared.append(prepared)

    @precondition(lambda self: self.prepared)
    @rule()
    def commit(self) -> None:
        self.run(self.proc.committer.commit(self.prepared.pop(0), lambda: False))

    @precondition(lambda self: self.prepared)
    @rule()
    def abandon(self) -> None:
        """A batch given up (an outage, a stop): it and those behind it roll back."""
        for prepared in self.prepared:
            self.proc.committer.discard(prepared)
        self.prepared.clear()

    @rule(seek_in_flight=st.booleans())
    def revoke(self, seek_in_flight: bool) -> None:
        """A revocation; a seek in flight may still land after it (a rebalance mid-seek)."""
        for prepared in self.prepared:
            self.proc.committer.discard(prepared)
        self.prepared.clear()
        self.proc.book.on_revoked([P])
        if not seek_in_flight:
            self.pending_seek = None

    @rule(slow=st.booleans())
    def broker_speed(self, slow: bool) -> None:
        self.broker_slow = slow

    @invariant()
    def durable_offset_passes_nothing_unhandled(self) -> None:
        durable = self.sink.durable
        if durable is None:
            return
        unhandled = [
            o
            for o in range(self.log_start, durable)
            if o not in self.sink.written and o not in self.absent
        ]
        assert not unhandled, f"durable offset {durable} passed unhandled offsets {unhandled}"
        assert durable <= self.log_end

    @invariant()
    def kafka_commits_never_pass_the_durable_offset(self) -> None:
        tp = type("TP", (), {"topic": TOPIC, "partition": P})()
        capped = self.proc.book.cap_commits(TOPIC, {tp: self.log_end})
        for offset in capped.values():
            assert offset <= max(self.sink.durable or 0, self.log_start)


OffsetRule.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
test_offset_rule = OffsetRule.TestCase
