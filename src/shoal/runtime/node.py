"""Node: joins the cluster, keeps its lease, places and runs duties.

    async with shoal.Node(app, settings, store=store) as node:
        print(node.leader, sorted(node.members))

Phases (see :mod:`shoal.core.node_state` for the full transition table):
JOINING -> ACTIVE <-> SUSPENDED -> LOST -> JOINING ..., STOPPED at the end.
While SUSPENDED (keep-alives failing, local deadline not passed) duties keep
running; at the deadline the node turns LOST and cancels every duty before
the store could expire its lease (G1), then rejoins with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal._clock import SYSTEM_CLOCK, Clock
from shoal._errors import InvalidArgument, NameTaken, NotRunning, StoreError
from shoal._retry import Backoff
from shoal._tasks import cancel_and_wait, event_or_tick
from shoal.core import node_state as fsm
from shoal.core.placement import DutySpec, NodeInfo, Placement, place
from shoal.primitives import membership, ownership
from shoal.primitives.membership import NODES, Member
from shoal.primitives.mirror import Mirror
from shoal.primitives.ownership import DUTIES, Owner
from shoal.primitives.session import LeaseSession
from shoal.runtime.app import LEADER, App, Duty
from shoal.runtime.context import DutyContext
from shoal.runtime.control import watch_control
from shoal.runtime.plan import Acquire, Release, Run, Stop, View, plan
from shoal.runtime.runner import DutyRunner
from shoal.runtime.settings import NodeSettings
from shoal.runtime.state import ReplicatedState
from shoal.runtime.workers import WorkerPools, check_partitions
from shoal.store.protocol import Event, EventType, Store

if TYPE_CHECKING:
    from shoal.config import NodeConfig

log = logging.getLogger("shoal.node")
VERSION = "0.1.0"


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
        self,
        app: App,
        settings: NodeSettings,
        *,
        store: Store,
        clock: Clock | None = None,
        own_store: bool = False,
    ) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.clock = clock or SYSTEM_CLOCK
        self.name = settings.name
        self._own_store = own_store
        self.duties: list[Duty] = []
        self._fsm = fsm.initial(
            self.clock.monotonic(), ttl=settings.ttl, safety_margin=settings.safety_margin
        )
        self._started = False
        self._started_at = 0.0
        self.session: LeaseSession | None = None
        self.members: dict[str, Member] = {}
        self.runners: dict[str, DutyRunner] = {}
        self._stopping: set[DutyRunner] = set()  # being stopped gracefully (release, drain)
        self.counters = {"acquired": 0, "released": 0, "lost": 0, "crashes": 0, "rejoins": 0}
        self._nodes = Mirror(store, NODES, self.clock, on_change=self._nodes_changed)
        self._owners = Mirror(store, DUTIES, self.clock, on_change=self._owners_changed)
        self.state = ReplicatedState.for_node(self)  # replicated documents (state/)
        self._local: dict[str, tuple[int, Owner | None]] = {}
        self._owner_map: dict[str, Owner] = {}
        self._free_since: dict[str, float] = {}
        self._stable_since = 0.0
        self._member_sig: frozenset[tuple[str, bool]] = frozenset()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: set[asyncio.Queue[ClusterEvent]] = set()
        self._leader: str | None = None
        self._closing = False
        self._drain_done: asyncio.Event | None = None
        self._placement_cache: tuple[object, Placement] | None = None
        self.reaper: Any = None
        # worker pools (shoal.runtime.workers): per-node copies, not singletons
        self.pools = WorkerPools(
            app.pools, settings, store=store, clock=self.clock,
            publish=self._publish_workers, on_crash=self._on_crash,
        )

    @classmethod
    async def from_config(
        cls, app: App, config: NodeConfig, *, clock: Clock | None = None
    ) -> Node:
        """A node for ``config`` with its own store connection (not started)."""
        from shoal.store.factory import open_store

        store = await open_store(config, clock=clock)
        settings = NodeSettings.from_config(config, workers=[p.name for p in app.pools])
        return cls(app, settings, store=store, clock=clock, own_store=True)

    # -- public view ----------------------------------------------------------
    @property
    def leader(self) -> str | None:
        local = LEADER in self._local
        owner = self.owners.get(LEADER) if local else self._owner_map.get(LEADER)
        return owner.node if owner else None

    @property
    def is_leader(self) -> bool:
        return self.leader == self.name

    @property
    def owners(self) -> dict[str, Owner]:
        """Effective duty owners: what the store says, plus our own recent writes."""
        if not self._local:
            return dict(self._owner_map)
        view = dict(self._owner_map)
        for duty, (rev, owner) in list(self._local.items()):
            if self._owners.revision >= rev:
                del self._local[duty]
            elif owner is None:
                view.pop(duty, None)
            else:
                view[duty] = owner
        return view

    def subscribe(self) -> AsyncIterator[ClusterEvent]:
        """Membership, leader, phase and duty events seen by this node."""
        queue: asyncio.Queue[ClusterEvent] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)

        async def gen() -> AsyncIterator[ClusterEvent]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.discard(queue)

        return gen()

    def _emit(self, kind: str, name: str | None, detail: str = "") -> None:
        ev = ClusterEvent(kind, name, detail)
        for q in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)

    @property
    def phase(self) -> str:
        """JOINING, ACTIVE, SUSPENDED, LOST or STOPPED (see shoal.core.node_state)."""
        if not self._started and self._fsm.phase is fsm.Phase.JOINING:
            return "STOPPED"
        return self._fsm.phase.name

    @property
    def draining(self) -> bool:
        return self._fsm.draining

    def _feed(self, event: fsm.Event) -> None:
        """Run one event through the node state machine and carry out its actions.

        Joining, revoking and handing over are done by the coroutines that fed
        the event; here only what must happen at once: stopping duties (G1),
        waking placement, reporting the phase."""
        old = self._fsm.phase
        self._fsm, actions = fsm.step(self._fsm, event, self.clock.monotonic())
        for action in actions:
            if isinstance(action, fsm.StopAllDuties):
                self._stop_all(action.reason)
            elif isinstance(action, fsm.StartPlacing):
                self._wake.set()
            elif isinstance(action, fsm.ReportPhase):
                log.info("node %s: %s -> %s", self.name, old.name, action.phase.name)
                self._emit("phase", self.name, action.phase.name)

    # -- lifecycle ------------------------------------------------------------
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Join the cluster. Raises NameTaken (G6) or StoreError; on error
        nothing is left running."""
        self.duties = _ordered(self.app.expand(self.settings.params))
        self._started = True
        self._started_at = self.clock.time()  # fixed: record updates keep it
        try:
            if self.settings.reaper and self.reaper is None:
                from shoal.runtime.reaper import Reaper

                self.reaper = Reaper.start(self.settings.reaper_store)
            self._nodes.start()
            self._owners.start()
            self.state.start()
            await self._nodes.wait_ready()
            await self._owners.wait_ready()
            await self.state.wait_ready()
            await check_partitions(self.store, self.app.partitioned)  # count never changes
            await self._join()
        except BaseException:
            await self._shutdown_background()
            self._close_reaper()
            self._feed(fsm.Closed())
            raise
        self._tasks = [
            asyncio.create_task(self._life(), name=f"shoal-life-{self.name}"),
            asyncio.create_task(self._reconcile_loop(), name=f"shoal-reconcile-{self.name}"),
            asyncio.create_task(watch_control(self), name=f"shoal-control-{self.name}"),
        ]

    def _member(self) -> Member:
        s = self.settings
        return Member(
            name=s.name, roles=s.roles, weight=s.weight, zone=s.zone, address=s.address,
            version=VERSION, started_at=self._started_at, can_lead=s.can_lead,
            disabled=s.disabled, draining=self.draining,
            workers=tuple(sorted(self.pools.counts().items())),
        )

    async def _join(self) -> None:
        s = self.settings
        session = await LeaseSession.open(
            self.store, self.clock, ttl=s.ttl, interval=s.keepalive_interval,
            safety_margin=s.safety_margin, on_event=self._session_event,
        )
        self._feed(fsm.StoreBack())  # LOST -> JOINING (no-op when already JOINING)
        try:
            await membership.register(self.store, self._member(), session.lease)
        except BaseException:
            await session.aclose()
            raise
        self.session = session
        if self.reaper is not None:
            self.reaper.watch_lease(session.lease)
        self._feed(fsm.Joined(at=session.first_sent, lease=session.lease))
        if not self.draining:
            self.pools.start()
        self._wake.set()

    def _session_event(self, kind: str, at: float) -> None:
        if self._closing or self._fsm.phase is fsm.Phase.STOPPED:
            return
        if kind == "ack":
            self._feed(fsm.KeepaliveOk(at=at))
        elif kind == "failed":
            self._feed(fsm.KeepaliveFailed())
        elif kind == "deadline":
            self._feed(fsm.DeadlinePassed())
        elif kind == "gone":
            self._feed(fsm.LeaseGone())

    def _stop_all(self, reason: str) -> None:
        """Stop every duty NOW, synchronously (the lease may be gone: G1)."""
        for name, runner in list(self.runners.items()):
            runner.cancel_now(f"lease lost: {reason}")
            self.counters["lost"] += 1
            self._emit("stopped", name, f"lease lost: {reason}")
        self.runners.clear()
        for runner in list(self._stopping):  # a graceful stop in progress ends NOW too
            runner.cancel_now(f"lease lost: {reason}")
        self._local.clear()
        self.pools.stop_now(f"lease lost: {reason}")

    async def _life(self) -> None:
        backoff = Backoff(0.1, max(0.1, self.settings.retry_backoff_max), clock=self.clock)
        while not self._closing:
            session = self.session
            assert session is not None
            await session.lost.wait()
            if self._closing or self.draining:
                return
            self._feed(fsm.DeadlinePassed())  # idempotent safety net: duties are stopped
            with contextlib.suppress(StoreError, NotRunning):
                await session.aclose()  # best effort: free the old records at once
            while not self._closing:
                await backoff.sleep()
                try:
                    await self._join()
                    self.counters["rejoins"] += 1
                    backoff.reset()
                    break
                except (StoreError, NameTaken) as exc:
                    log.warning("node %s: rejoin failed: %s", self.name, exc)

    # -- watching ---------------------------------------------------------------
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
        sig = frozenset((m.name, m.draining) for m in new.values())
        if sig != self._member_sig:
            self._member_sig = sig
            self._stable_since = self.clock.monotonic()
        self._wake.set()

    def _owners_changed(self, events: list[Event] | None) -> None:
        if events is None:
            self._owner_map = {n: Owner.decode(n, kv) for n, kv in self._owners.items.items()}
        else:
            for ev in events:
                duty = ev.kv.key[len(DUTIES):]
                if ev.type is EventType.PUT:
                    self._owner_map[duty] = Owner.decode(duty, ev.kv)
                else:
                    self._owner_map.pop(duty, None)
        leader = self.leader
        if leader != self._leader:
            self._leader = leader
            self._emit("leader", leader)
        self._wake.set()

    # -- placing and running duties ----------------------------------------------
    def placement(self) -> Placement:
        live = [m for m in self.members.values() if not m.draining]
        owners = {n: o.node for n, o in self.owners.items()}
        sticky = tuple(sorted((d.name, owners.get(d.name, "")) for d in self.duties if d.sticky))
        key = (frozenset(live), sticky)
        if self._placement_cache is not None and self._placement_cache[0] == key:
            return self._placement_cache[1]
        nodes = [
            NodeInfo(m.name, frozenset(m.roles), m.weight, m.can_lead, frozenset(m.disabled),
                     m.zone)
            for m in live
        ]
        specs = [
            DutySpec(d.name, d.roles, d.sticky, d.leader_bound, d.with_duty, d.family)
            for d in self.duties
        ]
        result = place(specs, nodes, owners, balanced=self.settings.balanced)
        self._placement_cache = (key, result)
        return result

    async def _reconcile_loop(self) -> None:
        tick = max(0.05, min(self.settings.grace, self.settings.rebalance_delay) / 2)
        last_pass = float("-inf")
        while not self._closing:
            await event_or_tick(self._wake, self.clock, tick)
            for _ in range(3):  # let the watches apply what is already queued (coalesce)
                await asyncio.sleep(0)
            if self.clock.monotonic() - last_pass < 0.05:
                # a storm of changes (start-up, mass failover): batch them so a pass
                # is not re-run per event; a lone event after a quiet spell is not delayed
                await self.clock.sleep(0.002)
            self._wake.clear()
            if self._fsm.phase not in (fsm.Phase.ACTIVE, fsm.Phase.SUSPENDED) or self.draining:
                continue
            try:
                await self.reconcile()
            except StoreError as exc:
                log.debug("node %s: reconcile failed: %s", self.name, exc)
            last_pass = self.clock.monotonic()

    async def reconcile(self) -> None:
        """One pass: compute the plan and carry it out."""
        session = self.session
        if session is None or not session.alive:
            return
        owners = self.owners
        now = self.clock.monotonic()
        for duty in self.duties:
            if duty.name in owners:
                self._free_since.pop(duty.name, None)
            else:
                self._free_since.setdefault(duty.name, now)
        view = View(
            me=self.name, lease=session.lease, duties=self.duties, owners=owners,
            placement=self.placement(), running={n: r.token for n, r in self.runners.items()},
            now=now, free_since=self._free_since, stable_since=self._stable_since,
            grace=self.settings.grace, rebalance_delay=self.settings.rebalance_delay,
        )
        by_name = {d.name: d for d in self.duties}
        stale = False  # an acquire lost a race: our view is behind, wait for the watch
        for action in plan(view):
            if not session.alive or self._closing or self.draining:
                return
            if isinstance(action, Stop):
                self._stop_now(action.duty, action.reason)
            elif isinstance(action, Run):
                self._run(by_name[action.duty], action.owner)
            elif isinstance(action, Release):
                await self._release(action.duty, action.token, action.reason)
            elif isinstance(action, Acquire) and self._fsm.placing and not stale:
                stale = not await self._acquire(by_name[action.duty], session)

    def _stop_now(self, duty: str, reason: str) -> None:
        runner = self.runners.pop(duty, None)
        if runner is not None:
            runner.cancel_now(reason)
            self._emit("stopped", duty, reason)

    def _run(self, duty: Duty, owner: Owner) -> None:
        self._stop_now(duty.name, "token changed")
        ctx = DutyContext(
            name=duty.name, token=owner.token, node=self.name, store=self.store,
            clock=self.clock, params=self.settings.params, item=duty.item,
            loop=asyncio.get_running_loop(), partition=duty.partition, state=self.state,
        )
        runner = DutyRunner(
            duty.fn, ctx, self.clock, backoff=self.settings.crash_backoff,
            backoff_max=self.settings.crash_backoff_max, on_crash=self._on_crash,
        )
        self.runners[duty.name] = runner
        runner.start()
        self._emit("started", duty.name, f"token {owner.token}")

    def _on_crash(self, duty: str, exc: BaseException) -> None:
        self.counters["crashes"] += 1
        self._emit("crashed", duty, f"{type(exc).__name__}: {exc}")

    async def _acquire(self, duty: Duty, session: LeaseSession) -> bool:
        """Try to take ``duty``; False when another node had it already."""
        if duty.name in self.owners:  # taken while this pass was running
            return True
        token = await ownership.acquire(
            self.store, duty.name, self.name, session.lease, self.clock.time()
        )
        if token is None:
            return False
        owner = Owner(duty.name, self.name, token, self.clock.time(), session.lease)
        self._local[duty.name] = (token, owner)
        self.counters["acquired"] += 1
        self._free_since.pop(duty.name, None)
        self._run(duty, owner)
        self._wake.set()  # co-located duties may follow at once
        return True

    async def _release(self, duty: str, token: int, reason: str) -> None:
        runner = self.runners.pop(duty, None)
        if runner is not None:
            self._stopping.add(runner)
            try:
                await runner.stop(reason, self.settings.drain_timeout)
            finally:
                self._stopping.discard(runner)
            self._emit("stopped", duty, reason)
        revision = await ownership.release(self.store, duty, token)
        if revision:
            self._local[duty] = (revision, None)
            self.counters["released"] += 1
        self._wake.set()

    # -- worker pools (shoal.runtime.workers) -----------------------------------
    def workers_status(self) -> dict[str, dict[str, int]]:
        """Worker pools on this node: {pool: {"running": n, "restarts": k}}."""
        return self.pools.status()

    async def _publish_workers(self) -> bool:
        """Rewrite our member record with the current worker counts."""
        session = self.session
        if session is None or not session.alive or self._closing:
            return False
        return await membership.update(self.store, self._member(), session.lease) > 0

    # -- leaving --------------------------------------------------------------
    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Hand every duty over and leave: stop duties (bounded by
        ``drain_timeout`` each, in parallel), then revoke the lease so every
        ownership key and the node record vanish in one revision (G3).

        A second call (e.g. ``aclose()`` while an API-triggered drain runs)
        waits for the first one to finish."""
        if self._drain_done is not None:
            await self._drain_done.wait()
            return
        if self.phase == "STOPPED":
            return
        self._drain_done = asyncio.Event()
        try:
            await self._drain(timeout)
        finally:
            self._drain_done.set()

    async def _drain(self, timeout: float | None) -> None:  # noqa: ASYNC109
        self._feed(fsm.Drain())
        session = self.session
        if session is not None and session.alive:
            with contextlib.suppress(StoreError):
                await membership.update(self.store, self._member(), session.lease)
        limit = self.settings.drain_timeout if timeout is None else timeout
        runners, self.runners = self.runners, {}
        self._stopping.update(runners.values())
        try:
            await asyncio.gather(
                *(r.stop("drain", limit) for r in runners.values()),
                self.pools.stop("drain", limit),
            )
        finally:
            self._stopping.difference_update(runners.values())
        if session is not None:
            await session.aclose()
        self._close_reaper()

    def _close_reaper(self) -> None:
        """Let the reaper exit WITHOUT revoking (graceful stop, failed start)."""
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None

    async def abandon(self) -> None:
        """Stop as a crash would (for tests): duties cancelled, nothing released,
        the lease left to expire by its TTL."""
        self._closing = True
        for runner in self.runners.values():
            runner.cancel_now("abandoned")
        self.runners.clear()
        if self.session is not None:
            await self.session.orphan()
        self._close_reaper()
        await self._shutdown_background()
        self._feed(fsm.Closed())

    async def aclose(self) -> None:
        """Drain (if still running) and stop everything. Idempotent."""
        if self._closing:
            return
        await self.drain()
        self._closing = True
        await self._shutdown_background()
        if self._own_store:
            await self.store.aclose()
        self._feed(fsm.Closed())

    async def _shutdown_background(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self.pools.aclose()
        await self._nodes.aclose()
        await self._owners.aclose()
        await self.state.aclose()


def _ordered(duties: list[Duty]) -> list[Duty]:
    """Co-located duties after the duty they follow (chains allowed)."""
    by_name = {d.name: d for d in duties}
    out: list[Duty] = []
    seen: set[str] = set()

    def visit(d: Duty, path: tuple[str, ...]) -> None:
        if d.name in seen:
            return
        if d.name in path:
            raise InvalidArgument(f"with_duty cycle: {' -> '.join((*path, d.name))}")
        if d.with_duty is not None:
            anchor = by_name.get(d.with_duty)
            if anchor is None:
                raise InvalidArgument(f"duty {d.name!r} follows unknown duty {d.with_duty!r}")
            visit(anchor, (*path, d.name))
        seen.add(d.name)
        out.append(d)

    for d in duties:
        visit(d, ())
    return out


__all__ = ["ClusterEvent", "Node", "NodeSettings"]
