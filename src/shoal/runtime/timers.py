"""Two small task helpers of the node: a re-armable deadline timer and the tracked
tasks that carry out the state machine's store actions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from shoal.aio._tasks import cancel_and_wait
from shoal.clock import Clock

__all__ = ["ActionTasks", "DeadlineTimer"]


class DeadlineTimer:
    """Calls ``fire()`` once the clock reaches the armed time; :meth:`arm` replaces
    any earlier timer (the state machine's ``ArmDeadline``)."""

    def __init__(self, clock: Clock, fire: Callable[[], None], name: str) -> None:
        self._clock = clock
        self._fire = fire
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.at: float | None = None

    @property
    def armed(self) -> bool:
        return self._task is not None

    def arm(self, at: float) -> None:
        self.cancel()
        self.at = at
        self._task = asyncio.create_task(self._wait(at), name=self._name)

    def cancel(self) -> None:
        task, self._task, self.at = self._task, None, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _wait(self, at: float) -> None:
        await self._clock.sleep(at - self._clock.monotonic())
        self._task, self.at = None, None
        self._fire()


class ActionTasks:
    """Tasks carrying out the machine's store actions, tracked by kind so a caller
    can wait for the ones of one kind (``release``, ``rejoin``, ``revoke``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: dict[asyncio.Task[None], str] = {}

    def spawn(self, coro: Coroutine[Any, Any, None], kind: str) -> None:
        task = asyncio.create_task(coro, name=f"shoal-{kind}-{self._name}")
        self._tasks[task] = kind
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def settle(self, kind: str) -> None:
        """Wait until every ``kind`` task started so far (and since) has finished."""
        while pending := [t for t, k in self._tasks.items() if k == kind]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        await cancel_and_wait(list(self._tasks))
