"""A fake clock moved by the test: leases of 30 s expire in microseconds."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class FakeClock:
    """A :class:`~shoal.clock.Clock` that only moves when the test says so.

    ``await clock.advance(5)`` moves time forward in steps, waking every
    sleeper whose deadline falls inside the window (in deadline order) and
    letting woken tasks run before moving on, so timers that re-arm inside
    the window fire too.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._hooks: list[Callable[[float], None]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def on_advance(self, hook: Callable[[float], None]) -> Callable[[], None]:
        """Call ``hook(now)`` every time the clock moves; returns an unsubscribe."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook) if hook in self._hooks else None

    @property
    def next_deadline(self) -> float | None:
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    async def settle(self, rounds: int = 20, limit: int = 100_000) -> None:
        """Let every runnable task run until the loop is quiet: at least
        ``rounds`` turns, then more while callbacks are still ready (bounded
        by ``limit``), so fake time only moves when the system is idle."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        for i in range(limit):
            await asyncio.sleep(0)
            if i >= rounds and (ready is None or len(ready) <= 1):
                return

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing timers in order."""
        target = self._now + seconds
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, _ = self._sleepers[0]
            self._set(max(self._now, deadline))
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await self.settle()
        self._set(target)
        await self.settle()

    async def run_for(self, seconds: float, step: float = 0.1) -> None:
        """Advance in small steps (lets I/O-free tasks interleave realistically)."""
        remaining = seconds
        while remaining > 1e-9:
            d = min(step, remaining)
            await self.advance(d)
            remaining -= d

    def _set(self, now: float) -> None:
        self._now = now
        for hook in list(self._hooks):
            hook(now)


class FixedRandom:
    """A random source whose ``random()`` always returns ``value``: pins the
    retry jitter (``monkeypatch.setattr("shoal.aio._retry._random", FixedRandom(0.5))``
    makes every back-off wait exactly half its ceiling)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value
