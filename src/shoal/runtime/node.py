"""Node: joins the cluster, keeps its lease, places and runs duties.

    async with shoal.Node(app, settings, store=store) as node:
        print(node.leader, sorted(node.members))

The node state machine (:mod:`shoal.core.node_state`) is in charge: every lease
event (from the :class:`~shoal.primitives.session.LeaseSession`, the deadline timer, the
store probe, ``drain`` and ``aclose``) goes through :meth:`Node._feed`, and the node
carries out EVERY action the machine returns (:meth:`Node._do`). Phases:
JOINING -> ACTIVE <-> SUSPENDED -> LOST -> JOINING ..., STOPPED at the end. While
SUSPENDED duties keep running; at the local deadline (G1, computed only by the
machine) the node turns LOST and cancels every duty before the store could expire
its lease, then probes the store and rejoins with backoff.

Placement, acquiring and releasing live in :mod:`shoal.runtime.reconcile`, the
lease I/O (join, store probe, rejoin, revoke) in :mod:`shoal.runtime.lease`; every
surface reads the immutable :meth:`Node.status` snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shoal.aio._tasks import cancel_and_wait, event_or_tick
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.core import node_state as fsm
from shoal.core.node_state import Phase
from shoal.core.placement import Placement
from shoal.errors import NotRunning, StoreError
from shoal.primitives import membership
from shoal.primitives.membership import NODES, Member
from shoal.primitives.mirror import Mirror
from shoal.primitives.ownership import DUTIES, Owner
from shoal.primitives.session import LeaseSession
from shoal.runtime._keys import warn_about_keys
from shoal.runtime.app import LEADER, App, Duty
from shoal.runtime.control import watch_control
from shoal.runtime.cutover import check_cutovers
from shoal.runtime.data_duties import documents_of, follow_documents
from shoal.runtime.fanout import Fanout, Subscription
from shoal.runtime.handover import await_takeover
from shoal.runtime.lease import LeaseKeeper
from shoal.runtime.reconcile import Reconciler, Tally, order_duties
from shoal.runtime.settings import NodeSettings
from shoal.runtime.state import ReplicatedState
from shoal.runtime.status import Counters, NodeStatus, build_status
from shoal.runtime.timers import ActionTasks, DeadlineTimer
from shoal.runtime.workers import WorkerPools, check_partitions
from shoal.store.protocol import Event, Store

if TYPE_CHECKING:
    from shoal.config import NodeConfig
    from shoal.runtime.runner import DutyRunner

log = logging.getLogger("shoal.node")
VERSION = "0.1.0"
_LIVE = (Phase.ACTIVE, Phase.SUSPENDED)
# A drain publishes its draining flag only when its duties take longer than this to
# stop; a quicker drain goes straight to the revoke (one write, seen by all at once)
FLAG_AFTER = 0.01
# How long start() waits for its reaper's ``ready`` line before joining anyway (an
# interpreter start: ~0.1 s on an idle machine, seconds on a loaded one).
REAPER_READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """Something this node saw: kind in joined/left/updated (members),
    leader, phase, started/stopped/crashed (local duties)."""

    kind: str
    name: str | None
    detail: str = ""


class Node:
    """One member of the cluster. Start with ``async with`` or :meth:`start`."""

    def __init__(
        self, app: App, settings: NodeSettings, *, store: Store, clock: Clock | None = None,
        own_store: bool = False,
    ) -> None:
        self.app = app
        self._settings = settings
        self.store = store
        self.clock = clock or SYSTEM_CLOCK
        self.name = settings.name
        self._own_store = own_store
        self._fsm = fsm.initial(
            self.clock.monotonic(), ttl=settings.ttl, safety_margin=settings.safety_margin
        )
        self._started = False
        self._started_at = 0.0
        self._joined_at = 0.0  # stamped just before each register txn
        self.members: dict[str, Member] = {}
        self.cordoned = False  # set by a cordon request (shoal.runtime.control)
        self._tally = Tally()
        self._subscribers: Fanout[ClusterEvent] = Fanout(maxsize=10_000)
        self._nodes = Mirror(store, NODES, self.clock, on_change=self._nodes_changed)
        self._owners = Mirror(store, DUTIES, self.clock, on_change=self._owners_changed)
        self.state = ReplicatedState.for_node(self)  # replicated documents (state/)
        self._duties = Reconciler(
            name=self.name, settings=settings, store=store, clock=self.clock, state=self.state,
            tally=self._tally, emit=self._emit,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._actions = ActionTasks(self.name)  # the machine's store actions
        self._deadline = DeadlineTimer(
            self.clock, lambda: self._feed(fsm.DeadlinePassed()), f"shoal-deadline-{self.name}"
        )
        self._closing = False
        self._drain_limit: float | None = None
        self._drain_done: asyncio.Event | None = None
        self.reaper: Any = None
        self._lease = LeaseKeeper(
            name=self.name, store=store, clock=self.clock, settings=lambda: self._settings,
            feed=self._feed, phase=lambda: self._fsm.phase, closing=lambda: self._closing,
            member=self._registration, on_joined=self._on_joined, tally=self._tally,
        )
        self._key_warnings: frozenset[str] = frozenset()  # logged already
        # worker pools (shoal.runtime.workers): per-node copies, not singletons
        self.pools = WorkerPools(
            app.pools, settings, store=store, clock=self.clock,
            publish=self._publish_workers, on_crash=self._duties.on_crash,
        )

    @classmethod
    async def from_config(
        cls, app: App, config: NodeConfig, *, clock: Clock | None = None,
        address: str | None = None,
    ) -> Node:
        """A node for ``config`` with its own store connection (not started).
        ``address`` overrides ``node.address`` (where this node's API answers)."""
        from shoal.store.factory import open_store

        store = await open_store(config, clock=clock)
        settings = NodeSettings.from_config(config, workers=[p.name for p in app.pools])
        if address is not None:
            settings = replace(settings, address=address)
        return cls(app, settings, store=store, clock=clock, own_store=True)

    # -- public view ----------------------------------------------------------------
    @property
    def settings(self) -> NodeSettings:
        return self._settings

    def announce(self, address: str) -> None:
        """Set the address this node announces in its record (before :meth:`start`)."""
        if self._started:
            raise NotRunning("announce() must be called before start()")
        self._settings = replace(self._settings, address=address)

    @property
    def duties(self) -> list[Duty]:
        """The duties declared on this node (expanded at start)."""
        return self._duties.duties

    @property
    def runners(self) -> dict[str, DutyRunner]:
        """Duties running on this node now (read-only use)."""
        return self._duties.runners

    @property
    def counters(self) -> dict[str, int]:
        """Totals (as in ``status().counters``): acquired, released, lost, crashes, ..."""
        t = self._tally
        return Counters(t.acquired, t.released, t.lost, t.crashes, t.rejoins,
                        self._subscribers.dropped).as_dict()

    @property
    def leader(self) -> str | None:
        owner = self._duties.owners.get(LEADER)
        return owner.node if owner else None

    @property
    def is_leader(self) -> bool:
        return self.leader == self.name

    @property
    def owners(self) -> dict[str, Owner]:
        """Effective duty owners: what the store says, plus our own recent writes."""
        return self._duties.owners.view()

    @property
    def phase(self) -> Phase:
        """The state machine's phase (STOPPED before :meth:`start`)."""
        if not self._started and self._fsm.phase is Phase.JOINING:
            return Phase.STOPPED
        return self._fsm.phase

    @property
    def draining(self) -> bool:
        return self._fsm.draining

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` (or :meth:`abandon`) started."""
        return self._closing

    @property
    def gave_up(self) -> asyncio.Event:
        """Set when the node cannot go on by itself (its name was taken by another
        live node while it was away); :attr:`fatal` says why (``NameTaken``)."""
        return self._lease.gave_up

    @property
    def fatal(self) -> Exception | None:
        return self._lease.fatal

    def status(self) -> NodeStatus:
        """An immutable snapshot of everything this node knows (no I/O)."""
        return build_status(
            self, self._fsm, self._duties, self._tally, self._subscribers.dropped
        )

    def placement(self) -> Placement:
        return self._duties.placement(self.members)

    def subscribe(self, maxsize: int | None = None) -> Subscription[ClusterEvent]:
        """Membership, leader, phase and duty events seen by this node (a slow reader
        loses the oldest events; see :mod:`shoal.runtime.fanout`)."""
        return self._subscribers.subscribe(maxsize)

    def _emit(self, kind: str, name: str | None, detail: str = "") -> None:
        self._subscribers.publish(ClusterEvent(kind, name, detail))

    def link_down_since(self) -> float | None:
        """Since when the lease is in doubt (see :meth:`LeaseKeeper.link_down_since`)."""
        return self._lease.link_down_since()

    @property
    def session(self) -> LeaseSession | None:
        """The current lease session (None before the first join)."""
        return self._lease.session

    # -- the state machine in charge ----------------------------------------------------
    def _feed(self, event: fsm.Event) -> None:
        """Run one event through the node state machine and carry out its actions."""
        old = self._fsm.phase
        self._fsm, actions = fsm.step(self._fsm, event, self.clock.monotonic())
        for action in actions:
            self._do(action, old)

    def _do(self, action: fsm.Action, old: Phase) -> None:
        """Carry out one action: at once, or as a tracked task for store I/O."""
        if isinstance(action, fsm.StopAllDuties):
            self._duties.stop_all(action.reason)
            self.pools.stop_now(f"lease lost: {action.reason}", store_lost=True)
        elif isinstance(action, fsm.StopPlacing):
            self._duties.placing = False
        elif isinstance(action, fsm.StartPlacing):
            self._duties.placing = True
            self._duties.wake.set()
        elif isinstance(action, fsm.ArmDeadline):
            self._deadline.arm(action.at)
        elif isinstance(action, fsm.ReportPhase):
            self._phase_changed(old, action.phase)
        elif isinstance(action, fsm.ReleaseAllDuties):
            self._actions.spawn(self._release_all(), "release")
        elif isinstance(action, fsm.Rejoin):
            self._actions.spawn(self._lease.rejoin(action.old_lease), "rejoin")
        elif isinstance(action, fsm.RevokeLease):
            self._actions.spawn(self._lease.revoke(action.lease), "revoke")

    def _phase_changed(self, old: Phase, new: Phase) -> None:
        log.info("node %s: %s -> %s", self.name, old, new)
        if new not in _LIVE:
            self._deadline.cancel()
        if new is Phase.LOST:
            self._lease.lost.set()
        else:
            self._lease.lost.clear()
        self._emit("phase", self.name, new)

    # -- lifecycle --------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Join the cluster. Raises NameTaken (G6) or StoreError; on error
        nothing is left running."""
        self._duties.duties = order_duties(self.app.expand(self._settings.params))
        self._started = True
        self._started_at = self.clock.time()  # fixed: record updates keep it
        try:
            if self._settings.reaper and self.reaper is None:
                from shoal.runtime.reaper import Reaper

                self.reaper = Reaper.start(self._settings.reaper_store)
            self._nodes.start()
            self._owners.start()
            self.state.start()
            await self._nodes.wait_ready()
            await self._owners.wait_ready()
            await self.state.wait_ready()
            await check_cutovers(self.store, self.app.partitioned)  # no lagging release
            await check_partitions(self.store, self.app.partitioned)  # count never changes
            self.refresh_duties()  # with the documents of for_each_doc duties
            if self.reaper is not None:  # its start-up done before the others see us
                await self.reaper.wait_ready(REAPER_READY_TIMEOUT)
            await self._lease.join()
        except BaseException:
            await self._shutdown_background()
            self._close_reaper()
            self._feed(fsm.Closed(orphan=True))  # nothing was registered
            raise
        self._tasks = [
            asyncio.create_task(self._lease.probe(), name=f"shoal-probe-{self.name}"),
            asyncio.create_task(
                self._duties.run(self._lease_for_passes, lambda: self.members,
                                 lambda: self._feed(fsm.Tick())),
                name=f"shoal-reconcile-{self.name}",
            ),
            asyncio.create_task(watch_control(self), name=f"shoal-control-{self.name}"),
            asyncio.create_task(follow_documents(self), name=f"shoal-docs-{self.name}"),
        ]

    def refresh_duties(self) -> None:
        """Expand the app's duties again (``for_each_doc`` documents changed)."""
        try:
            duties = order_duties(self.app.expand(self._settings.params, documents_of(self)))
        except ValueError as exc:
            log.error("node %s: duties not updated: %s", self.name, exc)
            return
        self._duties.set_duties(duties)

    def _lease_for_passes(self) -> int | None:
        session = self.session
        if self._closing or self.draining or self._fsm.phase not in _LIVE:
            return None
        return session.lease if session is not None and session.alive else None

    def _member(self) -> Member:
        s = self._settings
        return Member(
            name=s.name, roles=s.roles, weight=s.weight, zone=s.zone, address=s.address,
            version=VERSION, started_at=self._started_at, joined_at=self._joined_at,
            can_lead=s.can_lead,
            disabled=s.disabled, draining=self.draining, app_version=self.app.version,
            cordoned=self.cordoned, prefers=s.prefers,
            workers=tuple(sorted(self.pools.counts().items())), keys=s.key_ids,
            partitions=tuple(sorted(self.app.partitioned.items())),
        )

    def _registration(self) -> Member:
        """The record a (re)registration writes, stamped with the time it is sent."""
        self._joined_at = self.clock.time()
        return self._member()

    def _on_joined(self, session: LeaseSession) -> None:
        """A lease was granted and the node record written: ``Joined``."""
        if self.reaper is not None:
            self.reaper.watch_lease(session.lease)
        self._feed(fsm.Joined(at=session.granted_at, lease=session.lease))
        if not self.draining:
            self.pools.start()
        self._duties.wake.set()

    async def _release_all(self) -> None:
        """The ``ReleaseAllDuties`` action: stop duties and worker copies gracefully."""
        limit = self._settings.drain_timeout if self._drain_limit is None else self._drain_limit
        await asyncio.gather(
            self._duties.release_all("drain", limit), self.pools.stop("drain", limit)
        )

    # -- watching -----------------------------------------------------------------------
    def _nodes_changed(self, events: list[Event] | None) -> None:
        old = self.members
        new = {n: Member.decode(kv) for n, kv in self._nodes.items.items()}
        self.members = new
        for name in new.keys() - old.keys():
            self._emit("joined", name)
        for name in old.keys() - new.keys():
            self._emit("left", name)
        for name in new.keys() & old.keys():
            if new[name] != old[name]:
                self._emit("updated", name)
        self._key_warnings = warn_about_keys(new, self._key_warnings, self.name)
        self._duties.members_changed(new)

    def _owners_changed(self, events: list[Event] | None) -> None:
        self._duties.owners_changed(self._owners, events)

    # -- worker pools (shoal.runtime.workers) -------------------------------------------
    def workers_status(self) -> dict[str, dict[str, int]]:
        """Worker pools on this node: {pool: {"running": n, "restarts": k}}."""
        return self.pools.status()

    async def set_cordoned(self, cordoned: bool) -> bool:
        """Cordon (keep serving and owning, take nothing new) or uncordon this
        node: republish its record, which every node's placement reads."""
        self.cordoned = cordoned
        self._duties.wake.set()
        return await self._publish_workers()

    async def _publish_workers(self) -> bool:
        """Rewrite our member record with the current worker counts."""
        session = self.session
        if session is None or not session.alive or self._closing:
            return False
        return await membership.update(self.store, self._member(), session.lease) > 0

    # -- leaving ------------------------------------------------------------------------
    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Hand every duty over and leave: the machine's ``Drain`` stops placing and
        releases every duty (bounded by ``drain_timeout`` each, in parallel), then
        ``Closed`` revokes the lease so every ownership key and the node record vanish
        in one revision (G3). Then it waits until the next owners hold those duties
        (at most ``TAKEOVER_WAIT`` + ``TAKEOVER_SETTLE``, 0.27 s:
        :mod:`shoal.runtime.handover`) before the reaper and
        the connections are closed. The node is STOPPED afterwards.

        A second call (e.g. ``aclose()`` while an API-triggered drain runs)
        waits for the first one to finish."""
        if self._drain_done is not None:
            await self._drain_done.wait()
            return
        if self.phase is Phase.STOPPED:
            return
        self._drain_done = asyncio.Event()
        held = [n for n, o in self._duties.owners.view().items() if o.node == self.name]
        try:
            self._drain_limit = timeout
            self._feed(fsm.Drain())  # -> StopPlacing, ReleaseAllDuties (when live)
            session = self.session
            live = session is not None and session.alive and self._fsm.phase in _LIVE
            released = asyncio.Event()
            release = asyncio.create_task(self._actions.settle("release"))
            release.add_done_callback(lambda _: released.set())
            flag = None
            if live and not await event_or_tick(released, self.clock, FLAG_AFTER):
                # the duties take a while to stop: the draining flag tells the others
                # meanwhile. A quick drain sends no flag: its revoke is then the one
                # write the next owners wait for, not queued behind the flag's. The
                # revoke does not wait for a flag either (a flag that lands after the
                # revoke is a no-op: its compare on our lease fails)
                assert session is not None
                flag = asyncio.create_task(
                    membership.update(self.store, self._member(), session.lease)
                )
            try:
                await release
                self._feed(fsm.Closed())  # -> StopAllDuties (none left), RevokeLease
                await self._actions.settle("revoke")
            finally:
                if flag is not None:
                    with contextlib.suppress(StoreError, NotRunning):
                        await flag
            if self.reaper is not None and self._lease.revoked:
                self.reaper.forget_lease(self._lease.revoked)  # nothing left to revoke
            if held:  # nothing torn down while the next owners take over (handover.py)
                await await_takeover(held, me=self.name, owner_of=self._duties.owners.get,
                                     members=lambda: self.members, moved=self._duties.moved)
            if self.reaper is not None:
                reaper, self.reaper = self.reaper, None
                await reaper.aclose()
        finally:
            self._drain_done.set()

    def _close_reaper(self) -> None:
        """Let the reaper exit WITHOUT revoking (failed start, abandon)."""
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None

    async def abandon(self) -> None:
        """Stop as a crash would (for tests): duties cancelled, nothing released,
        the lease left to expire by its TTL."""
        self._closing = True
        self._duties.abandon()
        if self.session is not None:
            await self.session.orphan()
        self._close_reaper()
        await self._shutdown_background()
        self._feed(fsm.Closed(orphan=True))

    async def aclose(self) -> None:
        """Drain (if still running) and stop everything. Idempotent."""
        if self._closing:
            return
        await self.drain()
        self._closing = True
        await self._shutdown_background()
        self._feed(fsm.Closed())
        await self._actions.settle("revoke")
        if self._own_store:
            await self.store.aclose()

    async def _shutdown_background(self) -> None:
        self._deadline.cancel()
        await self._actions.aclose()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._subscribers.close()
        await self.pools.aclose()
        await self._nodes.aclose()
        await self._owners.aclose()
        await self.state.aclose()


__all__ = ["ClusterEvent", "Node", "NodeSettings"]
