"""The live feed (``GET /events``): server-sent events for the dashboard.

Each stream sends, in this order:

* ``event: snapshot`` — the full :func:`cluster_view`, at once;
* ``event: cluster`` — every :class:`~shoal.runtime.node.ClusterEvent`
  (``{"kind", "name", "detail", "time"}``) as the node sees it;
* ``event: view`` — a fresh cluster view after a burst of events, and every
  ``refresh`` seconds (which also keeps proxies from closing an idle stream).

Every message has an increasing ``id``. ``retry: 2000`` tells browsers to
reconnect after 2 s when the stream drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from shoal.http._view import cluster_view

if TYPE_CHECKING:
    from shoal.runtime.node import ClusterEvent, Node

__all__ = ["EventFeed", "sse_message"]


def sse_message(event: str, data: Any, msg_id: int) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"id: {msg_id}\nevent: {event}\ndata: {text}\n\n".encode()


class EventFeed:
    """Counts open streams (at most ``max_streams``) and makes each one."""

    def __init__(self, node: Node, *, refresh: float = 2.0, max_streams: int = 100) -> None:
        self.node = node
        self.refresh = refresh
        self.max_streams = max_streams
        self.open = 0
        self.closed = False
        self._queues: set[asyncio.Queue[ClusterEvent | None]] = set()

    def full(self) -> bool:
        return self.closed or self.open >= self.max_streams

    def close(self) -> None:
        """End every open stream now (before the server shuts down); refuse new ones."""
        self.closed = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[bytes]:
        """The messages of one stream, until the client goes away."""
        self.open += 1
        queue: asyncio.Queue[ClusterEvent | None] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        events = self.node.subscribe()

        started = asyncio.Event()

        async def pump() -> None:
            started.set()  # the generator below starts in this same step (no leak on cancel)
            async for ev in events:
                if queue.full():  # a slow client: drop the oldest, the next view catches up
                    queue.get_nowait()
                queue.put_nowait(ev)

        pumper = asyncio.create_task(pump(), name="shoal-sse-pump")
        msg_id = 0
        try:
            await started.wait()
            yield b"retry: 2000\n\n" + sse_message("snapshot", cluster_view(self.node), msg_id)
            while True:
                try:
                    async with asyncio.timeout(self.refresh):
                        ev = await queue.get()
                except TimeoutError:
                    msg_id += 1
                    yield sse_message("view", cluster_view(self.node), msg_id)
                    continue
                chunks = []
                while ev is not None:  # None: the feed was closed
                    msg_id += 1
                    chunks.append(sse_message("cluster", _event(ev), msg_id))
                    ev = None if queue.empty() else queue.get_nowait()
                if self.closed:
                    return
                msg_id += 1
                chunks.append(sse_message("view", cluster_view(self.node), msg_id))
                yield b"".join(chunks)
        finally:
            self.open -= 1
            self._queues.discard(queue)
            pumper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumper


def _event(ev: ClusterEvent) -> dict[str, Any]:
    return {"kind": ev.kind, "name": ev.name, "detail": ev.detail, "time": time.time()}
