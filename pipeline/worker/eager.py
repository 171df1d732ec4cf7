"""A cheaper ``wait_first`` for Faust's consumer: the per-message delivery path.

Faust's fetch loop (``Consumer._drain_messages``) hands every message to the
conductor through ``Service.wait_first(callback(message), suspend_flow.wait())``.
mode's ``wait_first`` wraps each argument, plus the service's stopped and
crashed events, in a task and runs ``asyncio.wait`` on them: four tasks per
message, a third of the worker's CPU on single-event messages (py-spy).

Almost always the callback finishes without suspending (the flow is running,
the queue has room). :func:`eager_wait_first` first runs the callback's
coroutine eagerly, in place: when it completes, that is the result, with no
task; when it suspends, the rest of it goes through the original
``wait_first`` unchanged, so a stopped flow or service still interrupts it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from mode.services import WaitResults

__all__ = ["EagerWaitFirst", "eager_wait_first", "unlocked_on_message"]

WaitFirst = Callable[..., Awaitable[Any]]


class EagerWaitFirst:
    """Mixin for a mode Service (here Faust's consumer): the eager ``wait_first``."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        original: WaitFirst = super().wait_first  # type: ignore[misc]
        return await eager_wait_first(self, original, coros, timeout)


def unlocked_on_message(conductor: Any) -> Callable[[Any], Awaitable[Any]]:
    """The conductor's per-message callback, taking its lock only while it is held.

    Faust's ``Conductor.on_message`` enters ``_tp_to_callback_lock`` (an
    ``asyncio.Lock``) for every message, to read the partition's handler while
    a rebalance may be rebuilding the map under that lock. When the lock is
    free nobody is rebuilding, and reading the map involves no ``await``, so
    no rebuild can start halfway: the read is safe without entering it.
    """
    lock: asyncio.Lock = conductor._tp_to_callback_lock
    handlers = conductor._tp_to_callback

    async def on_message(message: Any) -> Any:
        if lock.locked():
            async with lock:
                handler = handlers[message.tp]
        else:
            handler = handlers[message.tp]
        return await handler(message)

    return on_message


async def eager_wait_first(
    service: Any, original: WaitFirst, coros: tuple[Any, ...], timeout: float | None
) -> Any:
    first = coros[0] if coros else None
    if (
        timeout is not None
        or not inspect.iscoroutine(first)
        or service._stopped.is_set()
        or service._crashed.is_set()
    ):
        return await original(*coros, timeout=timeout)
    try:
        yielded = first.send(None)
    except StopIteration as done:
        _close(coros[1:])
        return WaitResults([first], [done.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    # It suspended: let the original wait for the rest of it (or for the others).
    rest = _resume(first, yielded)
    results = await original(rest, *coros[1:], timeout=timeout)
    done_coros = [first if c is rest else c for c in results.done]
    return type(results)(done_coros, results.results, results.stopped)


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive ``coro`` on from where it suspended (it yielded ``yielded``) to its end."""
    while True:
        try:
            await _Yield(yielded)
        except asyncio.CancelledError as exc:
            thrown: BaseException | None = exc
        else:
            thrown = None
        try:
            yielded = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as done:
            return done.value


class _Yield:
    """Yield what the driven coroutine yielded (a future, or None), as a task would see it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, None]:
        yield self.value


def _close(coros: tuple[Any, ...]) -> None:
    for c in coros:
        if inspect.iscoroutine(c):
            c.close()
