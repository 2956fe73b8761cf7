"""Small asyncio helpers shared by the runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, TypeVar

from shoal.clock import Clock

T = TypeVar("T")


class Waitable(Protocol):
    """An event-like object: ``asyncio.Event`` or a duty's ``StopSignal``."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel every task, then wait for each to finish (ignoring its cancel)."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def event_or_tick(event: Waitable, clock: Clock, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass on ``clock``, whichever
    comes first. Returns ``event.is_set()``: True when woken by the event (or
    it was set already). Both waits are owned by a task group, so neither
    outlives the call, also when the caller is cancelled."""
    if event.is_set():
        return True
    async with asyncio.TaskGroup() as group:
        waiter = group.create_task(event.wait())
        sleeper = group.create_task(clock.sleep(seconds))
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        sleeper.cancel()
    return event.is_set()


async def next_unless_stopped(
    iterator: AsyncIterator[T], stop: asyncio.Future[Any]
) -> tuple[bool, T | None]:
    """``(True, item)`` for the iterator's next item, or ``(False, None)`` when
    ``stop`` completes first (the pending ``anext`` is cancelled and awaited).
    Raises ``StopAsyncIteration`` when the iterator ends."""
    step = asyncio.ensure_future(anext(iterator))
    await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not step.done():
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await step
        return False, None
    return True, step.result()
