"""Retry back-off, written once: exponential growth, a cap and full jitter.

Every retry loop in Shoal waits through a :class:`Backoff`. Attempt ``n``
(counted from 0 since the last success) waits a uniformly random time in
``[0, min(cap, base * factor**n)]`` — "full jitter" — so nodes that lost the
store together do not come back in lockstep and hammer it at the same
instant. Waits run on a :class:`~shoal.clock.Clock` (the fake clock in
tests), and the random source is injectable::

    backoff = Backoff(0.05, 2.0, clock=clock)
    while True:
        try:
            return await attempt()
        except StoreUnavailable:
            await backoff.sleep()          # or: if not await backoff.sleep(stop): return

Synchronous code (a worker thread) uses ``time.sleep(backoff.next_delay())``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from shoal.aio._tasks import Waitable, event_or_tick
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import InvalidArgument

_random = random.Random()  # tests may replace it (monkeypatch) to fix the jitter


def _default_rand() -> float:
    return _random.random()


class Backoff:
    """Exponential back-off with full jitter and a cap.

    ``base``: the ceiling of the first wait; ``cap``: the largest ceiling;
    ``factor``: growth of the ceiling per attempt; ``floor``: the shortest
    wait (default 0, full jitter; a loop that waits for something to happen,
    such as a reconnect, may need a floor); ``rand``: a source of
    floats in ``[0, 1]`` (default: :mod:`random`); ``clock``: where
    :meth:`sleep` waits. Not thread-safe; one per loop.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        factor: float = 2.0,
        floor: float = 0.0,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        if not base > 0 or not cap >= base or not factor >= 1 or not 0 <= floor <= base:
            raise InvalidArgument(
                f"Backoff(base={base}, cap={cap}, factor={factor}, floor={floor}): "
                "need base > 0, cap >= base, factor >= 1 and 0 <= floor <= base"
            )
        self.base = base
        self.cap = cap
        self.factor = factor
        self.floor = floor
        self.clock = clock or SYSTEM_CLOCK
        self._rand = rand or _default_rand
        self.attempt = 0  # waits since the last reset
        # the attempt from which the ceiling is the cap (no float overflow after it)
        self._capped_at = (
            math.inf if factor == 1 else math.ceil(math.log(cap / base, factor))
        )

    def ceiling(self, attempt: int | None = None) -> float:
        """The largest wait of ``attempt`` (default: the next one)."""
        n = self.attempt if attempt is None else attempt
        if n >= self._capped_at:
            return self.cap
        return min(self.cap, self.base * self.factor**n)

    def next_delay(self) -> float:
        """Draw the next wait (uniform in ``[floor, ceiling]``) and count the attempt."""
        ceiling = self.ceiling()
        delay = self.floor + min(1.0, max(0.0, self._rand())) * (ceiling - self.floor)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a success: the next wait starts from ``base`` again."""
        self.attempt = 0

    async def sleep(self, stop: Waitable | None = None, *, limit: float | None = None) -> bool:
        """Wait the next delay (at most ``limit`` seconds) on the clock. With
        ``stop``: wake early when it is set. Returns False when ``stop`` is set
        (the caller should give up), else True."""
        delay = self.next_delay()
        if limit is not None:
            delay = min(delay, max(0.0, limit))
        if stop is None:
            await self.clock.sleep(delay)
            return True
        return not await event_or_tick(stop, self.clock, delay)
