"""Replicated state: the watch of ``state/`` (a Mirror that knows since when it
is disconnected) and the subscribers' inboxes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal.clock import Clock
from shoal.primitives.mirror import Mirror
from shoal.runtime._state_model import PREFIX
from shoal.store.protocol import Event, Store

QUEUE_LIMIT = 10_000  # a subscriber further behind gets one "reload" instead


class StateMirror(Mirror):
    """A Mirror that remembers since when it has been disconnected.

    Mirror sets ``connected = True`` when it opens a watch, before the watch
    has proven anything; a link that refuses at once flips it back in the same
    step. So "connected" is only believed once the event loop got a turn with
    the watch still open."""

    def __init__(self, store: Store, clock: Clock, on_change: Callable[..., None]) -> None:
        self._gen = 0
        self.down_since: float | None = clock.monotonic()
        self.up = asyncio.Event()  # set while connected (confirmed)
        super().__init__(store, PREFIX, clock, on_change=on_change, backoff_max=1.0)

    @property
    def connected(self) -> bool:
        return self.down_since is None

    @connected.setter
    def connected(self, value: bool) -> None:
        self._gen += 1
        if value:
            asyncio.get_running_loop().call_soon(self._confirm, self._gen)
        elif self.down_since is None:
            self.down_since = self._clock.monotonic()
            self.up.clear()

    async def _reload(self) -> None:
        """Like Mirror's, without keeping the range result alive during the
        notification: the listener consumes ``items`` (pops what it parsed), so
        a full load never holds every raw document next to every parsed one."""
        res = await self._store.range(self.prefix)
        n = len(self.prefix)
        self.items = {kv.key[n:]: kv for kv in res.kvs}
        self.revision = res.revision
        del res
        await asyncio.sleep(0)  # the loop's handle that resumed us still holds the result
        self.reloads += 1
        self.ready.set()
        self._notify(None)

    def _apply(self, ev: Event) -> None:
        """Only the revision: ReplicatedState keeps each document once, parsed."""
        self.revision = ev.revision

    def _notify(self, events: list[Event] | None) -> None:
        super()._notify(events)
        if events is None:
            self.items = {}  # the full load has been parsed: drop the raw copy

    def _confirm(self, gen: int) -> None:
        if gen == self._gen:
            self.down_since = None
            self.up.set()
