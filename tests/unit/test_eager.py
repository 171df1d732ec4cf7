"""The eager wait_first: same results as mode's, without tasks when nothing suspends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from pipeline import eager


class Svc(Service):
    pass


@pytest.fixture
def svc() -> Svc:
    s = Svc()
    eager.install(s)
    return s


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
