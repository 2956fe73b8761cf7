"""Mirror: a live in-memory copy of every key under a prefix.

Loads the prefix with one ``range`` and then follows a ``watch`` from the
next revision, so it never misses or repeats a change. When the watch is
told its revision was compacted it reloads in full. Store errors are
retried with jittered backoff (:mod:`shoal.aio._retry`), resuming from the last applied revision.

Listeners are told in batches: the events that arrive together (one store
transaction's, one watch response's) are applied at once and handed over in
one call, on the event loop's next turn, so that a failover's hundreds of
owner changes cost a listener one call per batch, not one per key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing

from shoal.aio._retry import Backoff
from shoal.aio._tasks import cancel_and_wait
from shoal.clock import Clock
from shoal.errors import Compacted, NotRunning, StoreError
from shoal.store.protocol import Event, EventType, KeyValue, Store

log = logging.getLogger("shoal.mirror")

Listener = Callable[[list[Event] | None], None]  # None = full reload


class Mirror:
    """Every key under ``prefix`` (keys stored without the prefix)."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        clock: Clock,
        *,
        on_change: Listener | None = None,
        backoff_max: float = 2.0,
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._clock = clock
        self._listeners: list[Listener] = [on_change] if on_change else []
        self._backoff_max = backoff_max
        self.items: dict[str, KeyValue] = {}
        self.revision = 0  # last revision applied
        self.ready = asyncio.Event()
        self.connected = False
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None
        self._batch: list[Event] = []  # applied, listeners not told yet

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"shoal-mirror-{self.prefix}")

    async def wait_ready(self) -> None:
        await self.ready.wait()

    def _notify(self, events: list[Event] | None) -> None:
        if events is None:
            self._batch = []  # a full load covers what was not told yet
        for listener in self._listeners:
            listener(events)

    def _queue(self, ev: Event) -> None:
        """Tell the listeners about ``ev`` (applied already) with the events that
        follow it before the watch waits again."""
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(ev)

    def _flush(self) -> None:
        events, self._batch = self._batch, []
        if events:  # (none: a reload or aclose came first)
            self._notify(events)

    async def _reload(self) -> None:
        res = await self._store.range(self.prefix)
        n = len(self.prefix)
        self.items = {kv.key[n:]: kv for kv in res.kvs}
        self.revision = res.revision
        self.reloads += 1
        self.ready.set()
        self._notify(None)

    def _apply(self, ev: Event) -> None:
        name = ev.kv.key[len(self.prefix):]
        if ev.type is EventType.PUT:
            self.items[name] = ev.kv
        else:
            self.items.pop(name, None)
        self.revision = ev.revision

    async def _run(self) -> None:
        backoff = Backoff(0.05, self._backoff_max, clock=self._clock)
        need_reload = True
        while True:
            try:
                if need_reload:
                    await self._reload()
                    need_reload = False
                async with aclosing(self._store.watch(self.prefix, self.revision + 1)) as it:
                    self.connected = True
                    async for ev in it:
                        self._apply(ev)
                        self._queue(ev)
                        backoff.reset()
                return
            except Compacted:
                log.info("mirror %s: history compacted, reloading", self.prefix)
                need_reload = True
            except NotRunning:
                return
            except StoreError as exc:
                log.debug("mirror %s: %s; retrying", self.prefix, exc)
            self.connected = False
            await backoff.sleep()

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        self._batch = []
