"""LeaseSession: one lease per node, kept alive, with a LOCAL deadline.

(Not to be confused with :class:`shoal.Session`, a user's login token.)

The store can only say "dead" after the TTL; the node must stop acting as
owner *before* that. So the session keeps its own deadline::

    deadline = send time of the last acknowledged keep-alive + TTL - safety margin

and fires :attr:`LeaseSession.lost` the moment the deadline passes, whether the
keep-alive calls fail, hang or are never answered (guarantee G1). Keep-alives
are sent every ``interval`` (default TTL/3) and retried quickly after a
failure; ``suspended`` is true while they fail but the deadline still holds.

Two ways out (as etcd's ``concurrency.Session``):

* :meth:`aclose` revokes the lease now: every key on it vanishes at once;
* :meth:`orphan` stops refreshing and lets the lease expire by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shoal._clock import Clock
from shoal._errors import InvalidArgument, LeaseNotFound, NotRunning, StoreError
from shoal._tasks import cancel_and_wait
from shoal.store.protocol import Store

log = logging.getLogger("shoal.session")


class LeaseSession:
    """A node's lease. Create with :meth:`open`; check :attr:`lost`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        ttl: int,
        interval: float | None = None,
        safety_margin: float = 0.5,
        on_event: Callable[[str, float], None] | None = None,
    ) -> None:
        if ttl < 1:
            raise InvalidArgument(f"session ttl must be >= 1 s, got {ttl}")
        self._store = store
        self._clock = clock
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self.safety_margin = safety_margin
        self._on_event = on_event
        self.first_sent = 0.0
        self.lease = 0
        self.deadline = 0.0
        self.suspended = False
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.last_ack_latency = 0.0
        self.last_ack_at = 0.0
        self.keepalives_failed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        store: Store,
        clock: Clock,
        *,
        ttl: int,
        interval: float | None = None,
        safety_margin: float = 0.5,
        on_event: Callable[[str, float], None] | None = None,
    ) -> LeaseSession:
        """Grant a lease and start keeping it alive. Raises StoreError."""
        session = cls(
            store, clock, ttl=ttl, interval=interval, safety_margin=safety_margin,
            on_event=on_event,
        )
        sent = clock.monotonic()
        lease = await store.grant(ttl)
        session.lease = lease.id
        # The store may round the TTL up; our deadline uses what we asked for.
        session.first_sent = sent
        session._ack(sent, clock.monotonic(), notify=False)
        session._tasks = [
            asyncio.create_task(session._keepalive_loop(), name=f"shoal-keepalive-{lease.id:x}"),
            asyncio.create_task(session._watchdog(), name=f"shoal-deadline-{lease.id:x}"),
        ]
        return session

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self._closed

    def remaining(self) -> float:
        """Seconds until the local deadline (negative once passed)."""
        return self.deadline - self._clock.monotonic()

    def _ack(self, sent: float, now: float, *, notify: bool = True) -> None:
        self.deadline = sent + self.ttl - self.safety_margin
        self.last_ack_latency = now - sent
        self.last_ack_at = now
        self.suspended = False
        if notify:
            self._emit("ack", sent)

    def _emit(self, kind: str, at: float) -> None:
        """Tell the listener: ``ack`` (at = send time), ``failed``, ``deadline``, ``gone``."""
        if self._on_event is not None:
            self._on_event(kind, at)

    def _lose(self, reason: str, kind: str = "") -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        if kind:
            log.warning("session %x lost: %s", self.lease, reason)
        self.lost.set()
        if kind:
            self._emit(kind, self._clock.monotonic())

    async def _keepalive_loop(self) -> None:
        retry = max(0.05, min(self.interval / 4, 0.5))
        while not self.lost.is_set():
            sent = self._clock.monotonic()
            try:
                await self._store.keepalive(self.lease)
            except LeaseNotFound:
                self._lose("the store says the lease is gone (expired or revoked)", "gone")
                return
            except StoreError as exc:
                self.keepalives_failed += 1
                if not self.suspended:
                    self.suspended = True
                    log.warning("keep-alive failed (%s); suspended until the deadline", exc)
                self._emit("failed", sent)
                await self._clock.sleep(retry)
                continue
            if self.lost.is_set():
                return
            self._ack(sent, self._clock.monotonic())
            await self._clock.sleep(self.interval)

    async def _watchdog(self) -> None:
        while not self.lost.is_set():
            left = self.deadline - self._clock.monotonic()
            if left <= 0:
                self._lose("local lease deadline passed without an acknowledged keep-alive",
                           "deadline")
                return
            await self._clock.sleep(left)

    async def _stop_tasks(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def orphan(self) -> None:
        """Stop refreshing; the lease expires by itself after its TTL."""
        self._closed = True
        await self._stop_tasks()
        self._lose("orphaned")

    async def aclose(self) -> None:
        """Revoke the lease now (its keys vanish at once). Idempotent; best effort
        when the store is unreachable (the lease then expires by TTL)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_tasks()
        with contextlib.suppress(StoreError, NotRunning):
            await self._store.revoke(self.lease)
        self._lose("closed")
