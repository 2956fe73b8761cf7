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
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from shoal.http._redact import redact_event, redact_view
from shoal.http._view import cluster_view

if TYPE_CHECKING:
    from shoal.runtime.fanout import Subscription
    from shoal.runtime.node import ClusterEvent, Node

__all__ = ["EventFeed", "sse_message"]


def sse_message(event: str, data: Any, msg_id: int) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"id: {msg_id}\nevent: {event}\ndata: {text}\n\n".encode()


class EventFeed:
    """Counts open streams (at most ``max_streams``) and makes each one. A slow
    client loses the oldest queued events (the fan-out policy of
    :mod:`shoal.runtime.fanout`); the next ``view`` catches it up."""

    def __init__(self, node: Node, *, refresh: float = 2.0, max_streams: int = 100) -> None:
        self.node = node
        self.refresh = refresh
        self.max_streams = max_streams
        self.open = 0
        self.closed = False
        self._subs: set[Subscription[ClusterEvent]] = set()

    def full(self) -> bool:
        return self.closed or self.open >= self.max_streams

    def reserve(self) -> bool:
        """Take a stream slot in the same step as the check (no await between
        them, so concurrent opens cannot overshoot the cap); False when full."""
        if self.full():
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """Give a slot back (when the response ends, whether or not it streamed)."""
        self.open -= 1

    def close(self) -> None:
        """End every open stream now (before the server shuts down); refuse new ones."""
        self.closed = True
        for sub in list(self._subs):
            sub.close()

    def _view(self, name: str, msg_id: int, full: bool) -> bytes:
        """A view message; error texts redacted unless ``full`` (authenticated)."""
        view = cluster_view(self.node.status())
        return sse_message(name, view if full else redact_view(view), msg_id)

    async def stream(self, *, full: bool = False) -> AsyncIterator[bytes]:
        """The messages of one stream, until the client goes away (the caller
        holds a slot from :meth:`reserve`). Error texts are redacted unless
        ``full`` (an authenticated caller)."""
        sub = self.node.subscribe(maxsize=1000)
        self._subs.add(sub)
        msg_id = 0
        try:
            yield b"retry: 2000\n\n" + self._view("snapshot", msg_id, full)
            while True:
                try:
                    async with asyncio.timeout(self.refresh):
                        ev = await sub.get()
                except TimeoutError:
                    msg_id += 1
                    yield self._view("view", msg_id, full)
                    continue
                if ev is None or self.closed:  # the feed or the node closed
                    return
                chunks = []
                while ev is not None:  # everything queued goes out in one write
                    msg_id += 1
                    shown = _event(ev) if full else redact_event(_event(ev))
                    chunks.append(sse_message("cluster", shown, msg_id))
                    ev = sub.get_nowait()
                msg_id += 1
                chunks.append(self._view("view", msg_id, full))
                yield b"".join(chunks)
        finally:
            self._subs.discard(sub)
            sub.close()


def _event(ev: ClusterEvent) -> dict[str, Any]:
    return {"kind": ev.kind, "name": ev.name, "detail": ev.detail, "time": time.time()}
