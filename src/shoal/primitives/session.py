"""LeaseSession: one lease per node, kept alive, reporting what happens to it as typed
events. (Not to be confused with :class:`shoal.Session`, a user's login token.)

The session only keeps the lease alive. It sends a keep-alive every ``interval``
(default TTL/3; retried sooner after a failure) and reports each outcome to its
listener as one of the core's lease events:

* :class:`~shoal.core.node_state.KeepaliveOk` ``(at=send time)`` — acknowledged;
* :class:`~shoal.core.node_state.KeepaliveFailed` — failed (the store is unreachable);
* :class:`~shoal.core.node_state.LeaseGone` — the store says the lease is gone; the
  session then stops (:attr:`LeaseSession.done` is set).

It does NOT decide when duties must stop: the node's state machine
(:mod:`shoal.core.node_state`) computes the local deadline (G1) from the send times it
is told about, and the node arms its own timer. A keep-alive that hangs simply reports
nothing, so the deadline passes.

Two ways out (as etcd's ``concurrency.Session``):

* :meth:`aclose` revokes the lease now: every key on it vanishes at once;
* :meth:`orphan` stops refreshing and lets the lease expire by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shoal.aio._tasks import cancel_and_wait
from shoal.clock import Clock
from shoal.core.node_state import KeepaliveFailed, KeepaliveOk, LeaseGone, SessionEvent
from shoal.errors import InvalidArgument, LeaseNotFound, NotRunning, StoreError
from shoal.store.protocol import Store

log = logging.getLogger("shoal.session")

Listener = Callable[[SessionEvent], None]


class LeaseSession:
    """A node's lease. Create with :meth:`open`; :attr:`done` is set once it ended."""

    def __init__(
        self, store: Store, clock: Clock, *, ttl: int, interval: float | None = None,
        on_event: Listener | None = None,
    ) -> None:
        if ttl < 1:
            raise InvalidArgument(f"session ttl must be >= 1 s, got {ttl}")
        self._store = store
        self._clock = clock
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self._on_event = on_event
        self.lease = 0
        self.granted_at = 0.0  # when the grant was SENT (monotonic)
        self.last_ack_at = 0.0  # when the last acknowledgement ARRIVED (monotonic)
        self.last_ack_latency = 0.0
        self.keepalives_failed = 0
        self.done = asyncio.Event()
        self.end_reason = ""
        self.revoked = False  # aclose's revoke was answered: the lease is gone
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, store: Store, clock: Clock, *, ttl: int, interval: float | None = None,
        on_event: Listener | None = None,
    ) -> LeaseSession:
        """Grant a lease and start keeping it alive. Raises StoreError. The grant is
        not reported as an event: the caller reads :attr:`granted_at`."""
        session = cls(store, clock, ttl=ttl, interval=interval, on_event=on_event)
        sent = clock.monotonic()
        lease = await store.grant(ttl)
        session.lease = lease.id
        session.granted_at = sent
        session.last_ack_at = clock.monotonic()
        session.last_ack_latency = session.last_ack_at - sent
        session._task = asyncio.create_task(
            session._keepalive_loop(), name=f"shoal-keepalive-{lease.id:x}"
        )
        return session

    @property
    def alive(self) -> bool:
        """False once the lease is known gone, revoked or orphaned."""
        return not self.done.is_set()

    def _emit(self, event: SessionEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _end(self, reason: str) -> None:
        if not self.done.is_set():
            self.end_reason = reason
            self.done.set()

    async def _keepalive_loop(self) -> None:
        retry = max(0.05, min(self.interval / 4, 0.5))
        failing = False
        while True:
            sent = self._clock.monotonic()
            try:
                await self._store.keepalive(self.lease)
            except LeaseNotFound:
                log.warning("session %x: the store says the lease is gone", self.lease)
                self._end("the store says the lease is gone (expired or revoked)")
                self._emit(LeaseGone())
                return
            except StoreError as exc:
                self.keepalives_failed += 1
                if not failing:
                    failing = True
                    log.warning("session %x: keep-alive failed (%s)", self.lease, exc)
                self._emit(KeepaliveFailed())
                await self._clock.sleep(retry)
                continue
            failing = False
            self.last_ack_at = self._clock.monotonic()
            self.last_ack_latency = self.last_ack_at - sent
            self._emit(KeepaliveOk(at=sent))
            await self._clock.sleep(self.interval)

    async def _stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def orphan(self) -> None:
        """Stop refreshing; the lease expires by itself after its TTL."""
        await self._stop()
        self._end("orphaned")

    async def aclose(self) -> None:
        """Revoke the lease now (its keys vanish at once). Idempotent; best effort
        when the store is unreachable (the lease then expires by TTL)."""
        if self.end_reason == "closed":
            return
        await self._stop()
        with contextlib.suppress(StoreError, NotRunning):
            await self._store.revoke(self.lease)
            self.revoked = True
        self.end_reason = "closed"
        self.done.set()
