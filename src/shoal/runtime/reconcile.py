"""Reconciler: places this node's duties, acquires, runs and releases them.

One pass (:meth:`Reconciler.reconcile`) builds a :class:`~shoal.runtime.plan.View`
from the members, the :class:`~shoal.runtime.owners.OwnerTable` and the clock, and
carries out the pure :func:`~shoal.runtime.plan.plan` in order. :meth:`Reconciler.run`
repeats passes when woken (a membership or owner change, our own acquire of a duty
others follow) and at least every ``tick``.

A mass failover (a node with hundreds of duties dies) must not cost a placement of
every duty per watch event:

* a burst of events is coalesced into one pass (the loop lets queued events in
  before it starts one);
* an owner change that only CONFIRMS the current placement -- a duty taken by the
  node it is wanted on, not running here, followed by no other duty -- wakes no
  pass: the pass would change nothing (the other survivors' acquisitions);
* such changes do not invalidate the cached placement either: it is reused
  (provisionally) by passes woken before the next tick, and the tick's pass places
  again from scratch. A membership change, a freed duty or an owner that is not the
  wanted one always places again at once;
* once nothing changed for ``SPARE_QUIET`` seconds, the placement each other
  node's loss would need is computed ahead (:mod:`shoal.runtime.placer`), in a
  worker thread so that the event loop stays free to see a death meanwhile; the
  pass that follows a node's death then usually places nothing. While a move is
  pending (a join's rebalance, due after ``rebalance_delay``) spares wait for it,
  at most ``rebalance_delay``: they would be thrown away when it happens.

The node's state machine is in charge of WHEN: ``placing`` is switched by its
``StartPlacing`` / ``StopPlacing`` actions (no acquire while off), its
``StopAllDuties`` calls :meth:`stop_all` and its ``ReleaseAllDuties`` calls
:meth:`release_all`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shoal.aio._tasks import event_or_tick
from shoal.clock import Clock, SystemClock
from shoal.core.placement import Placement
from shoal.errors import InvalidArgument, StoreError
from shoal.primitives import ownership
from shoal.primitives.membership import Member
from shoal.primitives.mirror import Mirror
from shoal.primitives.ownership import DUTIES, Owner
from shoal.runtime.app import LEADER, Duty
from shoal.runtime.context import DutyContext
from shoal.runtime.owners import OwnerTable
from shoal.runtime.placer import Placer
from shoal.runtime.plan import Release, Run, Stop, View, batches, by_fallback, plan
from shoal.runtime.runner import DutyRunner
from shoal.runtime.settings import NodeSettings
from shoal.runtime.state import ReplicatedState
from shoal.store.protocol import Event, EventType, Store

log = logging.getLogger("shoal.node")

__all__ = ["SPARE_QUIET", "Reconciler", "Tally", "order_duties"]

SPARE_QUIET = 0.05  # seconds without a change before spare placements are computed
STORM_WINDOW = 0.05  # a pass within this many seconds of two woken ones is batched
STORM_BATCH = 0.002  # seconds a batched pass waits for more of the storm
LEAVE_WAIT = 0.05  # longest wait for the other half of a node's death (etcd: two watches)

Emit = Callable[[str, str | None, str], None]


@dataclass(slots=True)
class Tally:
    """Mutable totals the node reports (copied into ``NodeStatus.counters``)."""

    acquired: int = 0
    released: int = 0
    lost: int = 0
    crashes: int = 0
    rejoins: int = 0


class Reconciler:
    """The duties of one node (see the module docstring)."""

    def __init__(
        self, *, name: str, settings: NodeSettings, store: Store, clock: Clock,
        state: ReplicatedState, tally: Tally, emit: Emit,
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.clock = clock
        self.state = state
        self.tally = tally
        self._emit = emit
        self.duties: list[Duty] = []
        self.runners: dict[str, DutyRunner] = {}
        self.owners = OwnerTable()
        self.placing = False  # switched by the state machine's Start/StopPlacing
        self.wake = asyncio.Event()
        self._stopping: set[DutyRunner] = set()  # being stopped gracefully
        self._free_since: dict[str, float] = {}
        self._stable_since = 0.0
        self._held: dict[str, float] = {}  # duties taken by the grace fallback, when
        self._member_sig: frozenset[tuple[str, bool]] = frozenset()
        self.placer = Placer(balanced=settings.balanced, newest_version=settings.newest_version)
        self._changed = asyncio.Event()  # members, owners or duties changed (spares)
        self._seen = asyncio.Event()  # set on every membership or owner change
        self.moved = asyncio.Event()  # the same, for a leave awaiting its takeover
        # spares in a worker thread on the real clock; inline under a simulated one,
        # where a thread's real duration would make the simulation nondeterministic
        self.offload_spares = isinstance(self.clock, SystemClock)
        self._anchors: tuple[list[Duty], frozenset[str]] | None = None  # with_duty targets
        self._leader: str | None = None  # last leader reported
        self._acquiring: frozenset[str] = frozenset()  # in the acquisition in flight

    # -- inputs ---------------------------------------------------------------------
    def set_duties(self, duties: list[Duty]) -> None:
        """Replace the declared duties (``for_each_doc`` documents came or went):
        placement is computed again and a pass runs; a duty no longer declared is
        stopped and released by that pass (:func:`~shoal.runtime.plan.plan`)."""
        if [(d.name, d.item) for d in duties] != [(d.name, d.item) for d in self.duties]:
            self.duties = duties
            self.placer.reset()
            self._changed.set()
            self.wake.set()

    def members_changed(self, members: Mapping[str, Member]) -> None:
        """Restart the stability timer when the set of (name, draining) changes."""
        sig = frozenset((m.name, m.draining) for m in members.values())
        if sig != self._member_sig:
            self._member_sig = sig
            self._stable_since = self.clock.monotonic()
        self._seen.set()
        self.moved.set()
        self._changed.set()
        self.wake.set()

    def owners_changed(self, mirror: Mirror, events: list[Event] | None) -> None:
        """The watch on ``duties/`` moved (``events`` None: a full reload)."""
        if events is None:
            self.owners.reload(mirror.items)
        else:
            self.owners.apply(events)
        self.owners.confirm(mirror.revision)
        owner = self.owners.get(LEADER)
        leader = owner.node if owner is not None else None
        if leader != self._leader:
            self._leader = leader
            self._emit("leader", leader, "")
        self._seen.set()
        self.moved.set()
        self._changed.set()
        if events is None or not self._confirms_placement(events):
            self.wake.set()

    def _anchor_names(self) -> frozenset[str]:
        """Duties some declared duty follows (``with_duty``)."""
        if self._anchors is None or self._anchors[0] is not self.duties:
            self._anchors = (self.duties, frozenset(
                d.with_duty for d in self.duties if d.with_duty is not None))
        return self._anchors[1]

    def _confirms_placement(self, events: list[Event]) -> bool:
        """True if every event is a duty taken by the node the cached placement
        wants it on, that no local runner contradicts and no duty follows: a pass
        would find nothing to do (see the module docstring)."""
        current = self.placer.current
        if current is None:
            return False
        wanted = current.wanted
        anchors = self._anchor_names()
        for ev in events:
            if ev.type is not EventType.PUT:
                return False
            duty = ev.kv.key[len(DUTIES):]
            owner = self.owners.get(duty)
            if owner is None or wanted.get(duty) != owner.node or duty in anchors:
                return False
            runner = self.runners.get(duty)
            if owner.node == self.name:  # our own acquire: runs with that token already,
                if runner is None and duty in self._acquiring:  # or will once its reply
                    continue  # is in (the watch may deliver the write before the reply)
                if runner is None or runner.token != owner.token:
                    return False
            elif runner is not None:  # taken from under us: stop it now
                return False
        return True

    def placement(self, members: Mapping[str, Member], *, exact: bool = True) -> Placement:
        """Where every duty should run (:class:`~shoal.runtime.placer.Placer`: cached
        while members and owners hold; ``exact=False`` also reuses a placement the
        owners only confirmed since)."""
        return self.placer.place(self.duties, members.values(), self._owner_nodes(), exact=exact,
                                 history=self.owners)

    def _owner_nodes(self) -> dict[str, str]:
        return self.owners.nodes()

    async def _spares(self, members: Callable[[], Mapping[str, Member]]) -> None:
        """Compute spare placements once nothing changed for ``SPARE_QUIET`` seconds
        and no wanted duty is free, one at a time, giving way as soon as something
        changes (in clusters too large for spares, warm the placer's runner-ups
        instead, a few milliseconds at a time). Each is a pass on a fork of the
        incremental placer, in the event loop (what the loss changes: a few
        milliseconds at 1,000 duties), when the placer allows it
        (:meth:`Placer.spare_forks`); otherwise a placement from scratch in a
        worker thread of its own (``offload_spares``: the event loop stays free to
        see a node's death, and the app's threads are not used)."""
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"shoal-spares-{self.name}")
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._changed.wait()
                while self._changed.is_set():
                    self._changed.clear()
                    await self.clock.sleep(SPARE_QUIET)
                    if not self._changed.is_set() and not self.placer.settled(
                        self.duties, self._owner_nodes()
                    ):
                        # a move is pending (a join's rebalance): what is computed now
                        # is thrown away when it happens, and on a shared machine it
                        # takes CPU from the other nodes' own passes. Wait for it, at
                        # most rebalance_delay (a duty may stay off its wanted node)
                        await event_or_tick(self._changed, self.clock,
                                            self.settings.rebalance_delay)
                while self.placing and not self._changed.is_set():
                    duties, owners = self.duties, self._owner_nodes()
                    current = list(members().values())
                    missing = self.placer.spares_missing(duties, current, owners, self.name)
                    if not missing and not self.placer.warms(duties, current):
                        break  # done
                    if not self.placer.nothing_free(duties, owners):
                        break  # a failover or handover is under way
                    if not missing:  # spares off: warm runner-ups instead
                        while self.placing and not self._changed.is_set():
                            if self.placer.warm(duties, current):
                                break
                            await asyncio.sleep(0)  # a step at a time: passes go first
                        break
                    fork = self.placer.spare_forks(duties)
                    compute = functools.partial(
                        self.placer.spare, duties, current, owners, missing[0], fork=fork)
                    if self.offload_spares and not fork:
                        spare = await loop.run_in_executor(pool, compute)
                    else:
                        spare = compute()
                        await asyncio.sleep(0)
                    if not self._changed.is_set():  # else computed for a past situation
                        self.placer.keep_spare(duties, current, owners, spare)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop ---------------------------------------------------------------------
    async def run(
        self, lease: Callable[[], int | None], members: Callable[[], Mapping[str, Member]],
        on_tick: Callable[[], None],
    ) -> None:
        """Run passes until cancelled. ``lease()``: the lease to act on, or None while
        passes must not run; ``on_tick`` is called before each pass."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._spares(members), name=f"shoal-spares-{self.name}")
            await self._passes(lease, members, on_tick)

    async def _passes(
        self, lease: Callable[[], int | None], members: Callable[[], Mapping[str, Member]],
        on_tick: Callable[[], None],
    ) -> None:
        tick = max(0.05, min(self.settings.grace, self.settings.rebalance_delay) / 2)
        last_passes = (float("-inf"), float("-inf"))  # two latest woken ones, oldest first
        while True:
            woken = await event_or_tick(self.wake, self.clock, tick)
            for _ in range(3):  # let the watches apply what is already queued (coalesce)
                await asyncio.sleep(0)
            if self.clock.monotonic() - last_passes[0] < STORM_WINDOW:
                # a storm of changes (start-up, mass failover): batch them so a pass
                # is not re-run per event. A lone event after a quiet spell, or the
                # second of a pair (a drain: the draining flag, then the revoke), is
                # not delayed
                await self.clock.sleep(STORM_BATCH)
            if woken:
                await self._await_leave(members)
            self.wake.clear()
            on_tick()
            if lease() is None:
                continue
            try:
                await self.reconcile(lease, members(), exact=not woken)
            except StoreError as exc:
                log.debug("node %s: reconcile failed: %s", self.name, exc)
            if woken:  # periodic passes are not part of a storm
                last_passes = (last_passes[1], self.clock.monotonic())

    async def _await_leave(self, members: Callable[[], Mapping[str, Member]]) -> None:
        """When a node's death is half seen (its duties all free but its record still
        listed, or the other way round: :meth:`Placer.leaving`), give the other half
        (same revision, another watch) up to ``LEAVE_WAIT`` seconds to arrive, so
        the pass places with the spare instead of placing for a half-seen cluster."""
        deadline = self.clock.monotonic() + LEAVE_WAIT
        while self.placer.leaving(self.duties, members().values(), self._owner_nodes()):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return
            self._seen.clear()
            await event_or_tick(self._seen, self.clock, left)

    async def reconcile(
        self, lease: Callable[[], int | None], members: Mapping[str, Member], *,
        exact: bool = True,
    ) -> None:
        """One pass: compute the plan and carry it out (stops early when ``lease()``
        changes or turns None). ``exact=False``: a woken pass, which may reuse a
        placement the owners only confirmed (:meth:`placement`)."""
        current = lease()
        if current is None:
            return
        owners = self.owners.view()
        now = self.clock.monotonic()
        for duty in self.duties:
            if duty.name in owners:
                self._free_since.pop(duty.name, None)
            else:
                self._free_since.setdefault(duty.name, now)
        for name in [n for n in self._held if (o := owners.get(n)) is None or o.node != self.name]:
            del self._held[name]  # the fallback's acquisition failed, or the duty left
        view = View(
            me=self.name, lease=current, duties=self.duties, owners=owners,
            placement=self.placement(members, exact=exact),
            running={n: r.token for n, r in self.runners.items()},
            now=now, free_since=self._free_since, stable_since=self._stable_since,
            held=self._held,
            grace=self.settings.grace, rebalance_delay=self.settings.rebalance_delay,
        )
        by_name = {d.name: d for d in self.duties}
        actions = plan(view)
        for action in actions:  # no await in this loop: the lease cannot change in it
            if isinstance(action, Stop):
                self.stop_now(action.duty, action.reason)
            elif isinstance(action, Run):
                self._run(by_name[action.duty], action.owner)
        releases, acquires = batches(actions, by_name)  # one transaction per max_txn_ops
        if releases and lease() == current:
            await self._release_batch(releases)
        if acquires and lease() == current and self.placing:
            for a in acquires:
                if by_fallback(view, a, by_name[a.duty]):
                    self._held[a.duty] = now  # see plan's rules
            await self._acquire_batch(
                [by_name[a.duty] for a in acquires], lease=current, current=lease
            )

    # -- duties -----------------------------------------------------------------------
    def stop_now(self, duty: str, reason: str) -> None:
        runner = self.runners.pop(duty, None)
        if runner is not None:
            runner.cancel_now(reason)
            self._emit("stopped", duty, reason)

    def stop_all(self, reason: str) -> None:
        """Stop every duty NOW, synchronously (the lease may be gone: G1)."""
        for name, runner in list(self.runners.items()):
            runner.cancel_now(f"lease lost: {reason}")
            self.tally.lost += 1
            self._emit("stopped", name, f"lease lost: {reason}")
        self.runners.clear()
        for runner in list(self._stopping):  # a graceful stop in progress ends NOW too
            runner.cancel_now(f"lease lost: {reason}")
        self.owners.forget_pending()

    def abandon(self) -> None:
        """Cancel every duty as a crash would: nothing released, nothing counted."""
        for runner in self.runners.values():
            runner.cancel_now("abandoned")
        self.runners.clear()

    async def release_all(self, reason: str, timeout: float) -> None:  # noqa: ASYNC109
        """Stop every duty gracefully, in parallel, each bounded by ``timeout``. The
        owner keys stay: they go with the lease when the node revokes it."""
        runners, self.runners = self.runners, {}
        self._stopping.update(runners.values())
        try:
            await asyncio.gather(*(r.stop(reason, timeout) for r in runners.values()))
        finally:
            self._stopping.difference_update(runners.values())
        for name in runners:
            self._emit("stopped", name, reason)

    def on_crash(self, duty: str, exc: BaseException) -> None:
        self.tally.crashes += 1
        self._emit("crashed", duty, f"{type(exc).__name__}: {exc}")

    def _run(self, duty: Duty, owner: Owner) -> None:
        self.stop_now(duty.name, "token changed")
        ctx = DutyContext(
            name=duty.name, token=owner.token, node=self.name, store=self.store,
            clock=self.clock, params=self.settings.params, item=duty.item,
            loop=asyncio.get_running_loop(), partition=duty.partition, state=self.state,
            settings=self.settings, doc=duty.doc,
        )
        runner = DutyRunner(
            duty.fn, ctx, self.clock, backoff=self.settings.crash_backoff,
            backoff_max=self.settings.crash_backoff_max, on_crash=self.on_crash,
        )
        self.runners[duty.name] = runner
        runner.start()
        self._emit("started", duty.name, f"token {owner.token}")

    async def _acquire_batch(
        self, duties: list[Duty], lease: int, current: Callable[[], int | None]
    ) -> None:
        """Take the free ``duties`` in batched transactions (``max_txn_ops`` keys
        each, conflict-tolerant: a key taken by another node is skipped); run the
        ones won, if ``current()`` is still ``lease`` when the answer comes (G1: an
        answer may come back after the lease's deadline passed and every duty was
        stopped; the keys then hang on a lease given up, that the store drops)."""
        free = {d.name: d for d in duties if self.owners.get(d.name) is None}
        self._acquiring = frozenset(free)
        answered = False
        try:
            tokens = await ownership.acquire_many(
                self.store, free, self.name, lease, self.clock.time(),
                limit=self.settings.max_txn_ops,
            )
            answered = True
        finally:
            self._acquiring = frozenset()
            if not answered:  # events let by while in flight are looked at again
                self.wake.set()
        if current() != lease:  # lost (or replaced) meanwhile: run none of them
            log.info("node %s: %d duties acquired on lease %x after it was given up; "
                     "not started", self.name, len(tokens), lease)
            self.wake.set()
            return
        for name, token in sorted(tokens.items()):
            owner = Owner(name, self.name, token, self.clock.time(), lease)
            self.owners.wrote(name, token, owner)
            self.tally.acquired += 1
            self._free_since.pop(name, None)
            self._run(free[name], owner)
        if len(tokens) < len(free) or not self._anchor_names().isdisjoint(tokens):
            self.wake.set()  # co-located duties may follow at once; or we lost a race

    async def _release_batch(self, waves: list[list[Release]]) -> None:
        """Stop each wave's runners in parallel (dependents before their anchor),
        then delete every key still held by its token, batched."""
        for wave in waves:
            await asyncio.gather(*(self._stop_gracefully(r.duty, r.reason) for r in wave))
        tokens = {r.duty: r.token for wave in waves for r in wave}
        done = await ownership.release_many(self.store, tokens, limit=self.settings.max_txn_ops)
        for duty, revision in done.items():
            self.owners.wrote(duty, revision, None)
            self.tally.released += 1
        self.wake.set()

    async def _stop_gracefully(self, duty: str, reason: str) -> None:
        runner = self.runners.pop(duty, None)
        if runner is not None:
            self._stopping.add(runner)
            try:
                await runner.stop(reason, self.settings.drain_timeout)
            finally:
                self._stopping.discard(runner)
            self._emit("stopped", duty, reason)


def order_duties(duties: list[Duty]) -> list[Duty]:
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
