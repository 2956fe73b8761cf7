"""Watches of the PostgreSQL store: one listener and poller per store, an inbox per watch.

The store's listener connection (``LISTEN shoal_<schema>``) only wakes the poller;
the poller always reads the change log by revision (``rev > seen``) and offers each
transaction's events to every watch. A missed or merged notification therefore
delays an event by at most the fallback poll (1 s), and never loses or repeats one.
While nobody watches, the poller reads nothing: it only notes the revision each
notification carries, so that a new watch "from now" starts after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from shoal.aio._retry import Backoff
from shoal.errors import Compacted, ShoalError
from shoal.store._log_watch import Watcher, batches
from shoal.store._pg_conn import Conn, Conns
from shoal.store._pg_errors import translate
from shoal.store._pg_sql import PUT, Sql, span
from shoal.store.protocol import Event, EventType, KeyValue

__all__ = ["Watcher", "Watches", "batches", "decode_events"]

log = logging.getLogger(__name__)
_FALLBACK_POLL = 1.0  # read the log at least this often even without a notification


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


class Watches:
    """Every watch of one store, fed by one poller (:meth:`run`, a task of the store)."""

    def __init__(self, conns: Conns, sql: Sql, retention: int) -> None:
        self._conns = conns
        self._sql = sql
        self._retention = retention
        self.seen = 0  # newest revision the poller has fanned out (or noted)
        self._watchers: set[Watcher] = set()
        self._listener: Conn | None = None
        self._closed = False

    def watch(
        self, prefix: str, start_revision: int | None, known: int
    ) -> AsyncGenerator[Event, None]:
        """See :meth:`PostgresStore.watch`; ``known``: the newest revision the store saw."""
        start = start_revision if start_revision and start_revision > 0 else None
        now = max(self.seen, known) + 1
        watcher = Watcher(prefix, start or now, start is not None, self._retention)
        self._watchers.add(watcher)
        return self._stream(watcher)

    async def _history(self, prefix: str, start: int) -> tuple[list[list[Event]], int]:
        lo, hi = span(prefix, True)

        async def run(conn: Conn) -> list[Any]:
            cur = await conn.execute(self._sql.history, (start, lo, hi, hi))
            return list(await cur.fetchall())

        compact, rev, events = decode_events(await self._conns.read(run))
        if start < compact:
            raise Compacted(compact)
        return batches(events), rev

    async def _stream(self, w: Watcher) -> AsyncGenerator[Event, None]:
        try:
            while not (w.closed or self._closed):
                if w.resync:
                    w.resync = False
                    w.queue.clear()
                    found, rev = await self._history(w.prefix, w.next_rev)
                    w.next_rev = max(w.next_rev, rev + 1)
                elif w.queue:
                    found = [w.queue.popleft()]
                    if found[0][0].revision < w.next_rev:
                        continue
                    w.next_rev = found[0][0].revision + 1
                else:
                    w.wake.clear()
                    await w.wake.wait()
                    continue
                for batch in found:
                    for ev in batch:
                        yield ev
        finally:
            self._watchers.discard(w)

    async def _poll_once(self, wait: bool) -> None:
        """Wait for a notification (or the fallback), then fan out new log rows."""
        if self._listener is None:
            self._listener = await self._conns.connect()
            await self._listener.execute(self._sql.listen)
            wait = False  # (re)connected: notifications may have been missed
        conn = self._listener
        if wait:
            revision = ""
            async for note in conn.notifies(timeout=_FALLBACK_POLL, stop_after=1):
                revision = note.payload  # the revision that transaction committed
            if not self._watchers:  # nobody to tell: only remember where "now" is
                if revision.isdigit():
                    self.seen = max(self.seen, int(revision))
                return
        async with asyncio.timeout(self._conns.timeout):
            rows = await (await conn.execute(self._sql.events, (self.seen,))).fetchall()
        compact, rev, events = decode_events(rows)
        watchers = list(self._watchers)
        if compact > self.seen + 1:  # rows we never fetched were compacted away
            for w in watchers:
                w.lost()
        for batch in batches(events):
            for w in watchers:
                w.offer(batch)
        self.seen = max(self.seen, rev)

    async def run(self) -> None:
        """The poller: until cancelled; a failure is logged once and retried."""
        failing = False
        wait = True
        backoff = Backoff(0.05, 0.5)
        while not self._closed:
            try:
                await self._poll_once(wait)
                wait = True
                failing = False
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # watches wait; retried after a pause
                if not failing:
                    where = self._conns.where
                    reason = exc if isinstance(exc, ShoalError) else translate(exc, where)
                    log.warning("watch poll failed: %s", reason)
                failing = True
                await self._close_listener()
                await backoff.sleep()

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def aclose(self) -> None:
        """End every open watch and close the listener (the poller task is the store's)."""
        self._closed = True
        for w in list(self._watchers):
            w.closed = True
            w.wake.set()
        await self._close_listener()
