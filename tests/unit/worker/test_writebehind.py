"""WriteBehind: batches commit in order per partition, several at once on disjoint ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.core.planner import BatchPlan, PartitionProgress
from pipeline.sink.writer import Abandoned
from pipeline.worker.prepare import Prepared
from pipeline.worker.writebehind import WriteBehind


def batch(name: str, *partitions: int) -> Prepared:
    plan = BatchPlan(topic=name, progress={p: PartitionProgress(1, None) for p in partitions})
    return Prepared(plan, {p: 0 for p in partitions}, len(partitions), {})


class FakeCommitter:
    """Commits block until released; records the order of starts, ends and discards."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Future[bool]] = {}

    def release(self, name: str, committed: bool = True) -> None:
        self.gates[name].set_result(committed)

    async def commit(self, prepared: Prepared, _abandon: Any) -> None:
        name = prepared.plan.topic
        self.log.append(f"start {name}")
        gate = self.gates.setdefault(name, asyncio.get_running_loop().create_future())
        ok = await gate
        self.log.append(f"end {name}")
        if not ok:
            raise Abandoned()

    def discard(self, prepared: Prepared) -> None:
        self.log.append(f"discard {prepared.plan.topic}")


def write_behind(lanes: int) -> tuple[WriteBehind, FakeCommitter]:
    committer = FakeCommitter()
    fatal: list[BaseException] = []
    return WriteBehind(committer, fatal.append, lanes=lanes), committer  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_disjoint_batches_commit_at_once_up_to_the_lanes() -> None:
    wb, proc = write_behind(lanes=2)
    await wb.submit(batch("a", 0), lambda: False)
    await wb.submit(batch("b", 1), lambda: False)
    await settle()
    assert proc.log == ["start a", "start b"] and wb.in_flight == 2
    third = asyncio.create_task(wb.submit(batch("c", 2), lambda: False))
    await settle()
    assert not third.done()  # both lanes busy
    proc.release("b")
    await third
    await settle()
    assert proc.log == ["start a", "start b", "end b", "start c"]
    proc.release("a")
    proc.release("c")
    assert await wb.wait() is True
    assert wb.in_flight == 0


async def test_a_finished_commit_is_not_in_flight_though_no_batch_came_after_it() -> None:
    # The tail probe runs only with nothing in flight: a last batch counted
    # forever kept an idle partition's durable offset short of its log end.
    wb, proc = write_behind(lanes=1)
    await wb.submit(batch("a", 0), lambda: False)
    await settle()
    assert wb.in_flight == 1
    proc.release("a")
    await settle()
    assert proc.log == ["start a", "end a"] and wb.in_flight == 0


async def test_a_partition_s_batches_commit_in_order_even_with_a_free_lane() -> None:
    wb, proc = write_behind(lanes=2)
    await wb.submit(batch("a", 0, 1), lambda: False)
    second = asyncio.create_task(wb.submit(batch("b", 1, 2), lambda: False))
    await settle()
    assert not second.done() and proc.log == ["start a"]
    proc.release("a")
    await second
    await settle()
    assert proc.log == ["start a", "end a", "start b"]
    proc.release("b")
    assert await wb.wait() is True


async def test_a_batch_behind_a_given_up_one_is_discarded_but_not_a_disjoint_one() -> None:
    wb, proc = write_behind(lanes=2)
    await wb.submit(batch("a", 0), lambda: False)
    await wb.submit(batch("b", 1), lambda: False)
    behind = asyncio.create_task(wb.submit(batch("c", 0), lambda: False))
    await settle()
    proc.release("a", committed=False)
    await behind
    assert "discard c" in proc.log and "start c" not in proc.log
    proc.release("b")
    await settle()
    assert await wb.wait() is True  # the given-up one was already collected
    assert proc.log.count("discard c") == 1


async def test_wait_reports_a_given_up_batch_and_a_timeout() -> None:
    wb, proc = write_behind(lanes=2)
    await wb.submit(batch("a", 0), lambda: False)
    assert await wb.wait(timeout=0.05) is False  # still running
    proc.release("a", committed=False)
    assert await wb.wait() is False


async def test_one_lane_commits_one_batch_at_a_time() -> None:
    wb, proc = write_behind(lanes=1)
    await wb.submit(batch("a", 0), lambda: False)
    second = asyncio.create_task(wb.submit(batch("b", 1), lambda: False))
    await settle()
    assert not second.done()
    proc.release("a")
    await second
    proc.release("b")
    assert await wb.wait() is True
    assert proc.log == ["start a", "end a", "start b", "end b"]


@pytest.mark.parametrize("lanes", [1, 2])
async def test_fatal_sink_errors_reach_on_fatal(lanes: int) -> None:
    from pipeline.errors import FatalSinkError

    class Failing(FakeCommitter):
        async def commit(self, prepared: Prepared, _abandon: Any) -> None:
            raise FatalSinkError("boom")

    fatal: list[BaseException] = []
    wb = WriteBehind(Failing(), fatal.append, lanes=lanes)  # type: ignore[arg-type]
    await wb.submit(batch("a", 0), lambda: False)
    with pytest.raises(FatalSinkError):
        await wb.wait()
    assert [str(e) for e in fatal] == ["boom"]
