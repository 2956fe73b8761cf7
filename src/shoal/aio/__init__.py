"""asyncio support shared by every layer (below the store, beside the pure core).

* :mod:`shoal.aio._retry`: :class:`Backoff`, the one retry helper (exponential
  back-off with full jitter and a cap, on any :class:`~shoal.clock.Clock`);
* :mod:`shoal.aio._tasks`: ``cancel_and_wait`` and ``event_or_tick`` (wait for an
  event or a clock tick);
* :mod:`shoal.aio._outage`: the rate-limited outage log (one line when the store is
  lost, a reminder at most every 30 s, one line when it is back).
"""
