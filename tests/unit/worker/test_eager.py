"""The eager wait_first: same results as mode's, without tasks when nothing suspends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from pipeline.worker import eager


class Svc(eager.EagerWaitFirst, Service):
    pass


@pytest.fixture
def svc() -> Svc:
    return Svc()


async def test_a_callback_that_does_not_suspend_runs_in_place(svc: Svc) -> None:
    calls: list[int] = []
    created: list[Any] = []
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    loop.set_task_factory(
        lambda lp, coro, **kw: created.append(coro) or asyncio.Task(coro, loop=lp, **kw)
    )

    async def callback() -> int:
        calls.append(1)
        return 42

    async def never() -> None:
        await asyncio.Event().wait()

    try:
        results = await svc.wait_first(callback(), never())
    finally:
        loop.set_task_factory(factory)
    assert calls == [1]
    assert results.results == [42] and not results.stopped
    assert created == []  # no task at all


async def test_a_callback_that_suspends_completes_through_the_original(svc: Svc) -> None:
    async def callback() -> str:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        return "done"

    gate = asyncio.Event()
    results = await svc.wait_first(callback(), gate.wait())
    assert results.results == ["done"]
    assert len(results.done) == 1 and asyncio.iscoroutine(results.done[0])


async def test_the_other_waitable_still_interrupts_a_suspended_callback(svc: Svc) -> None:
    cancelled = asyncio.Event()

    async def callback() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    suspend = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, suspend.set)
    results = await svc.wait_first(callback(), suspend.wait())
    assert results.results == [True]  # the suspend event won
    await asyncio.sleep(0.01)
    assert cancelled.is_set()  # and the callback was cancelled, as mode does


async def test_an_error_in_the_callback_propagates(svc: Svc) -> None:
    async def callback() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await svc.wait_first(callback(), asyncio.Event().wait())


async def test_an_error_after_a_suspension_propagates(svc: Svc) -> None:
    async def callback() -> None:
        await asyncio.sleep(0)
        raise ValueError("late boom")

    with pytest.raises(ValueError, match="late boom"):
        await svc.wait_first(callback(), asyncio.Event().wait())


class _Conductor:
    """The two attributes of Faust's Conductor that its on_message reads."""

    def __init__(self) -> None:
        self._tp_to_callback_lock = asyncio.Lock()
        self._tp_to_callback: dict[str, Any] = {}


class _Msg:
    def __init__(self, tp: str) -> None:
        self.tp = tp


async def test_unlocked_on_message_dispatches_to_the_partitions_handler() -> None:
    conductor = _Conductor()
    got: list[tuple[str, str]] = []

    def handler(name: str) -> Any:
        async def handle(message: _Msg) -> str:
            got.append((name, message.tp))
            return name

        return handle

    conductor._tp_to_callback.update({"t-0": handler("h0"), "t-1": handler("h1")})
    on_message = eager.unlocked_on_message(conductor)
    assert await on_message(_Msg("t-1")) == "h1"
    assert await on_message(_Msg("t-0")) == "h0"
    assert got == [("h1", "t-1"), ("h0", "t-0")]


async def test_unlocked_on_message_waits_while_the_map_is_rebuilt() -> None:
    conductor = _Conductor()
    on_message = eager.unlocked_on_message(conductor)

    async def old(message: _Msg) -> str:
        return "old"

    async def new(message: _Msg) -> str:
        return "new"

    conductor._tp_to_callback["t-0"] = old
    await conductor._tp_to_callback_lock.acquire()  # a rebalance rebuilds the map
    delivery = asyncio.create_task(on_message(_Msg("t-0")))
    await asyncio.sleep(0.01)
    assert not delivery.done(), "must not read the map while it is being rebuilt"
    conductor._tp_to_callback["t-0"] = new
    conductor._tp_to_callback_lock.release()
    assert await delivery == "new"
