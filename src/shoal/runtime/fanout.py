"""Fan-out: one publisher, many subscribers, and a publisher that never blocks.

This is the ONE place that decides what happens when a subscriber falls behind
(node events, the dashboard feed and replicated-state changes all use it):

* every subscription has a bounded queue (``maxsize``);
* when it is full, the OLDEST queued item is dropped and counted
  (:attr:`Subscription.dropped`, and :attr:`Fanout.dropped` over all subscribers);
* with ``collapse`` (for streams where no item may be skipped silently), the whole
  backlog is replaced by ``collapse(newest)`` instead — e.g. one "reload" marker;
* :meth:`Fanout.close` ends every subscription once the items already queued are read.

A subscription is an async iterator (leaving the ``async for`` ends it) with
:meth:`~Subscription.get` / :meth:`~Subscription.get_nowait` for callers that batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Fanout", "Subscription"]


class Subscription(Generic[T]):
    """One subscriber's queue. Read with ``async for`` or :meth:`get`; :meth:`close` when done."""

    def __init__(self, fanout: Fanout[T], maxsize: int, topic: str | None) -> None:
        self._fanout = fanout
        self.maxsize = maxsize
        self.topic = topic
        self.dropped = 0
        self.closed = False
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()

    def push(self, item: T) -> None:
        """Queue ``item`` (the fan-out policy above applies when full)."""
        if self.closed:
            return
        if len(self._items) >= self.maxsize:
            collapse = self._fanout.collapse
            lost = len(self._items) if collapse is not None else 1
            self.dropped += lost
            self._fanout.dropped += lost
            if collapse is not None:
                self._items.clear()
                item = collapse(item, self)
            else:
                self._items.popleft()
        self._items.append(item)
        self._wake.set()

    def get_nowait(self) -> T | None:
        """The next queued item, or None when nothing is queued."""
        return self._items.popleft() if self._items else None

    async def get(self) -> T | None:
        """Wait for the next item; None once the subscription is closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving; items already queued can still be read. Idempotent."""
        self.closed = True
        self._fanout.discard(self)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        try:
            while (item := await self.get()) is not None:
                yield item
        finally:
            self.close()


class Fanout(Generic[T]):
    """Publish to every open :class:`Subscription` (see the module docstring)."""

    def __init__(
        self, maxsize: int = 10_000,
        collapse: Callable[[T, Subscription[T]], T] | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.collapse = collapse
        self.dropped = 0
        self.closed = False
        self._subs: set[Subscription[T]] = set()

    def subscribe(self, maxsize: int | None = None, topic: str | None = None) -> Subscription[T]:
        """A new subscription (already closed when the fan-out is)."""
        sub = Subscription(self, maxsize or self.maxsize, topic)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, item: T, topic: str | None = None) -> None:
        """Queue ``item`` for every subscriber (with ``topic``: for those subscribed to
        it, or to everything)."""
        for sub in list(self._subs):
            if topic is None or sub.topic is None or sub.topic == topic:
                sub.push(item)

    def subscriptions(self) -> list[Subscription[T]]:
        """The open subscriptions (to push each its own item)."""
        return list(self._subs)

    def discard(self, sub: Subscription[T]) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """End every subscription (after what it has queued); refuse new ones."""
        self.closed = True
        for sub in list(self._subs):
            sub.close()

    def __len__(self) -> int:
        """Open subscriptions."""
        return len(self._subs)

