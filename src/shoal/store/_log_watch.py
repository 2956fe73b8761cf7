"""What the log-reading backends (sqlite, postgres) share for watches: one
watch's inbox, filled by the store's poller, and grouping events by revision."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from shoal.store.protocol import Event

__all__ = ["Watcher", "batches"]


def batches(events: list[Event]) -> list[list[Event]]:
    """Group events by revision (one batch = one transaction)."""
    return [list(batch) for _, batch in itertools.groupby(events, lambda ev: ev.revision)]


class Watcher:
    """One watch's inbox, filled by the poller. ``next_rev``: the first revision
    it still needs; ``resync``: (re)read from the log (at start, or fell behind)."""

    def __init__(self, prefix: str, next_rev: int, resync: bool, limit: int) -> None:
        self.prefix, self.next_rev, self.resync, self.limit = prefix, next_rev, resync, limit
        self.queue: deque[list[Event]] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def offer(self, batch: list[Event]) -> None:
        mine = [ev for ev in batch if ev.kv.key.startswith(self.prefix)]
        if not mine or mine[0].revision < self.next_rev:
            return
        if len(self.queue) >= self.limit:
            self.lost()  # too slow: catch up from the log (or learn it was compacted)
            return
        self.queue.append(mine)
        self.wake.set()

    def lost(self) -> None:
        self.queue.clear()
        self.resync = True
        self.wake.set()
