"""LeaseKeeper: the store side of a node's lease, on its state machine's orders.

The node's state machine (:mod:`shoal.core.node_state`) decides; this carries out
the lease I/O:

* :meth:`LeaseKeeper.join` — grant a lease (a :class:`LeaseSession`), register the
  node record on it, then hand the session to the node, which feeds ``Joined``;
* :meth:`LeaseKeeper.probe` — while the node is LOST: stop the old session, probe
  the store with back-off and feed ``StoreBack`` once it answers;
* :meth:`LeaseKeeper.rejoin` — the ``Rejoin`` action: revoke the old lease (best
  effort), then join with back-off until it works or the node leaves JOINING;
* :meth:`LeaseKeeper.revoke` — the ``RevokeLease`` action.

The session's typed events go to the machine unless the node is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shoal.aio._outage import OutageLog
from shoal.aio._retry import Backoff
from shoal.clock import Clock
from shoal.core import node_state as fsm
from shoal.core.node_state import Phase
from shoal.errors import LeaseNotFound, NameTaken, NotRunning, StoreError
from shoal.primitives import membership
from shoal.primitives.membership import Member
from shoal.primitives.session import LeaseSession
from shoal.runtime.reconcile import Tally
from shoal.runtime.settings import NodeSettings
from shoal.store.protocol import Store

log = logging.getLogger("shoal.node")

__all__ = ["REJOIN_PROBE_MAX", "LeaseKeeper"]

REJOIN_PROBE_MAX = 1.0  # seconds between store probes / rejoin attempts at most


class LeaseKeeper:
    """The lease I/O of one node (see the module docstring)."""

    def __init__(
        self, *, name: str, store: Store, clock: Clock, settings: Callable[[], NodeSettings],
        feed: Callable[[fsm.Event], None], phase: Callable[[], Phase],
        closing: Callable[[], bool], member: Callable[[], Member],
        on_joined: Callable[[LeaseSession], None], tally: Tally,
    ) -> None:
        self.name = name
        self.store = store
        self.clock = clock
        self.revoked = 0  # the last lease a RevokeLease action is known to have revoked
        self._settings = settings
        self._feed = feed
        self._phase = phase
        self._closing = closing
        self._member = member
        self._on_joined = on_joined
        self.session: LeaseSession | None = None
        self.lost = asyncio.Event()  # set by the node while LOST: probe() runs
        self._tally = tally
        self._outage = OutageLog(log, f"node {name}: the store")  # rate-limited lines
        # Set when the node cannot go on by itself (its name was taken while it was
        # away): ``fatal`` says why; the node's owner (``shoal run``) stops it.
        self.gave_up = asyncio.Event()
        self.fatal: Exception | None = None

    def link_down_since(self) -> float | None:
        """When the last keep-alive was acknowledged, while the lease is in doubt (not
        ACTIVE); None while ACTIVE or before the first join."""
        session = self.session
        if session is None or self._phase() is Phase.ACTIVE:
            return None
        return session.last_ack_at

    def _session_event(self, event: fsm.SessionEvent) -> None:
        if not self._closing() and self._phase() is not Phase.STOPPED:
            self._feed(event)

    def _backoff(self) -> Backoff:
        # At most REJOIN_PROBE_MAX s between attempts, whatever retry_backoff_max: the
        # store's return is noticed within a second, not after a back-off grown during
        # a long outage (the p99 "store back -> duty started" in docs/guarantees.md).
        limit = min(REJOIN_PROBE_MAX, max(0.1, self._settings().retry_backoff_max))
        return Backoff(0.1, limit, clock=self.clock)

    async def join(self) -> None:
        """Grant a lease, register the node record; the node then feeds ``Joined``."""
        s = self._settings()
        session = await LeaseSession.open(
            self.store, self.clock, ttl=s.ttl, interval=s.keepalive_interval,
            on_event=self._session_event,
        )
        try:
            await membership.register(self.store, self._member(), session.lease)
        except BaseException:
            await session.aclose()
            raise
        if self._phase() is not Phase.JOINING:  # closed meanwhile
            await session.aclose()
            return
        self.session = session
        self._on_joined(session)

    async def probe(self) -> None:
        """Runs for the node's life: each time it is LOST, stop the old session, then
        probe the store with back-off and feed ``StoreBack`` when it answers."""
        while True:
            await self.lost.wait()
            if self.session is not None:
                await self.session.orphan()  # Rejoin revokes the old lease itself
            backoff = self._backoff()
            while self.lost.is_set():
                await backoff.sleep()
                try:
                    await self.store.revision()
                except (StoreError, NotRunning) as exc:
                    log.debug("node %s: store still unreachable: %s", self.name, exc)
                    continue
                self._feed(fsm.StoreBack())

    async def rejoin(self, old_lease: int | None) -> None:
        """The ``Rejoin`` action (see the module docstring). The old lease is revoked
        first (it may have outlived the outage: etcd renews leases on a leader change),
        so ``NameTaken`` then means another live node holds the name: give up (G6,
        :attr:`gave_up`)."""
        backoff = self._backoff()
        revoked = old_lease is None
        while not self._closing() and self._phase() is Phase.JOINING:
            try:
                if not revoked:
                    assert old_lease is not None
                    with contextlib.suppress(LeaseNotFound):
                        await self.store.revoke(old_lease)
                    revoked = True
                await self.join()
                self._tally.rejoins += 1
                self._outage.recovered("rejoin")
                return
            except NameTaken as exc:  # another live node took our name meanwhile
                log.error("node %s: gave up rejoining: %s", self.name, exc)
                self.fatal = exc
                self.gave_up.set()
                return
            except StoreError as exc:
                self._outage.failed("rejoin", f"rejoin failed: {exc}")
            except NotRunning:  # the store was closed under us: the node is closing
                return
            await backoff.sleep()

    async def revoke(self, lease: int) -> None:
        """The ``RevokeLease`` action: the node record and owner keys vanish at once
        (best effort: with the store lost, the lease expires by its TTL)."""
        session = self.session
        if session is not None and session.lease == lease:
            await session.aclose()
            if session.revoked:
                self.revoked = lease
        else:
            with contextlib.suppress(StoreError, NotRunning):
                await self.store.revoke(lease)
                self.revoked = lease
