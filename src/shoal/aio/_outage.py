"""Outage logging: one line when a dependency is lost, a reminder at most every
:data:`REMIND_EVERY` seconds while it stays lost, one line when it is back.

Several loops may watch the same dependency (a node has four watches on its
store): each reports under its own ``who``; the outage starts with the first
failing one and ends when none is failing any more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["REMIND_EVERY", "OutageLog"]

REMIND_EVERY = 30.0


class OutageLog:
    """Rate-limited outage lines on ``logger`` about ``what`` (e.g. ``"etcd"``)."""

    def __init__(
        self, logger: logging.Logger, what: str, *, every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self._clock = clock
        self._failing: set[str] = set()
        self._since = 0.0
        self._reminded = 0.0
        self._suppressed = 0

    @property
    def lost(self) -> bool:
        return bool(self._failing)

    def failed(self, who: str, reason: object) -> None:
        """``who`` failed again (``reason``: the error)."""
        now = self._clock()
        if not self._failing:
            self._since = self._reminded = now
            self._suppressed = 0
            self._failing.add(who)
            self._log.warning("%s unreachable (%s); retrying, next report in %g s at most",
                              self._what, reason, self._every)
            return
        self._failing.add(who)
        self._suppressed += 1
        if now - self._reminded >= self._every:
            self._reminded = now
            self._log.warning("%s still unreachable after %.0f s (%s; %d failed retries since "
                              "the last report)", self._what, now - self._since, reason,
                              self._suppressed)
            self._suppressed = 0

    def recovered(self, who: str) -> None:
        """``who`` works again; the outage ends when nobody is failing."""
        if who not in self._failing:
            return
        self._failing.discard(who)
        if not self._failing:
            self._log.warning("%s reachable again after %.1f s", self._what,
                              self._clock() - self._since)
