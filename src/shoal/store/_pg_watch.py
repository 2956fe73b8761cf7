"""Watch plumbing of the PostgreSQL backend: per-watch inboxes and event decoding.

The store's listener (``LISTEN shoal_<schema>``) only wakes the poller; the poller
always reads the change log by revision (``rev > seen``) and offers each
transaction's events to every watch. A missed or merged notification therefore
delays an event by at most the fallback poll, and never loses or repeats one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

from shoal.store._pg_sql import PUT
from shoal.store.protocol import Event, EventType, KeyValue


def decode_events(rows: Sequence[Sequence[Any]]) -> tuple[int, int, list[Event]]:
    """(compaction point, revision, events) from rows of ``Sql.events``/``Sql.history``."""
    if not rows:
        return 0, 0, []
    compact, rev = int(rows[0][0]), int(rows[0][1])
    events = []
    for _c, _r, lrev, kind, key, value, create, version, lease in rows:
        if lrev is None:
            continue
        kv = KeyValue(bytes(key).decode(), bytes(value), create, lrev, version, lease)
        events.append(Event(EventType.PUT if kind == PUT else EventType.DELETE, kv))
    return compact, rev, events


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
