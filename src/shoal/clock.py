"""Clocks. Everything time-based in Shoal takes a :class:`Clock`.

:class:`SystemClock` reads the machine's clocks; ``shoal.testing.FakeClock``
is moved by the test, so a 30-second lease expires in microseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of time. ``monotonic()`` for deadlines, ``time()`` for display."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, TTLs)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for display and records only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on this clock. Cancellable."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()
