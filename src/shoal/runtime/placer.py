"""Placer: the reconciler's placements, computed from scratch only when needed.

:func:`shoal.core.placement.place` over every declared duty is the largest CPU cost
of a reconcile pass (a few milliseconds for 1,000 duties). A mass failover (a node
with hundreds of duties dies) must not pay it more than once per survivor, and
preferably not on its critical path at all:

* **incremental**: a placement that must be computed starts from the previous
  one (:class:`shoal.core.incremental.IncrementalPlacer`: only the duties that
  move are ranked; the answer is ``place``'s);
  and, given the owners' history (:meth:`shoal.runtime.owners.OwnerTable.changed_since`),
  it is told which owners changed since its last pass instead of comparing them all;
* **cache**: a placement is reused while the live members and the owners hold;
* **confirmed owners**: a pass woken by owner changes that only CONFIRM the
  placement (a duty taken by the node it is wanted on) reuses it provisionally;
  the next exact request (the reconcile tick) places again, unless every duty
  is now owned by its wanted node (``place``'s fixpoint: the placement holds);
* **spares**: once the cluster has been quiet for a moment and every wanted duty
  is owned (no failover or handover under way), the placement that
  the loss of each other live node would need (that node gone, the duties it
  owns freed: what its reaper's revoke or its lease expiry produce in ONE store
  revision) is computed ahead. When that exact situation arrives the placement is
  ready. A spare is used only if the live members are exactly the ones it was
  computed for, and the owners too (so it is the very answer ``place`` would
  give) or, for a woken pass, the owners differ only by duties taken by the node
  the spare wants them on (the other survivors were faster), as above. Spares
  are skipped in large clusters (more than ``SPARE_MAX_NODES`` live nodes or
  ``SPARE_MAX_PAIRS`` duty x node pairs), where computing them ahead would cost
  too much idle CPU;
* **runner-ups**: there instead, from ``WARM_MIN_DUTIES`` duties up, the
  incremental placer's runner-ups are warmed while the cluster is quiet
  (:meth:`Placer.warm`: each kept duty's best node but its owner), so that a
  node's death does not rank its duties over every survivor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from shoal.core.incremental import IncrementalPlacer
from shoal.core.placement import DutySpec, NodeInfo, Placement, ScoreCache, place
from shoal.primitives.membership import Member
from shoal.runtime.app import Duty

__all__ = ["SPARE_MAX_NODES", "SPARE_MAX_PAIRS", "WARM_MIN_DUTIES", "WARM_PAIRS", "History",
           "Placer", "only_confirmed", "undeclared"]

SPARE_MAX_NODES = 16
SPARE_MAX_PAIRS = 100_000
WARM_MIN_DUTIES = 20_000  # below, a death's duties are ranked in a few ms: no warming
WARM_PAIRS = 10_000  # duty x node pairs hashed per warm step (a few ms of event loop)

Live = frozenset[Member]
Owners = dict[str, str]  # duty -> owner node


class History(Protocol):
    """Where owners come from, versioned (:class:`~shoal.runtime.owners.OwnerTable`):
    the owners a pass is given are the source's at its current ``version``."""

    @property
    def version(self) -> int: ...

    def changed_since(self, version: int) -> set[str] | None: ...


def undeclared(member: Member, families: set[str]) -> frozenset[str]:
    """The partitioned families (of ``families``) that ``member``'s app does not
    declare: placement treats them as disabled there, so that during a rolling
    upgrade that adds (or drops) a family its partitions go only to the nodes
    that run it. A record that does not say (older Shoal) declares everything."""
    if member.partitions is None:
        return frozenset()
    return frozenset(families - {name for name, _ in member.partitions})


def only_confirmed(
    before: Mapping[str, str], now: Mapping[str, str], wanted: Mapping[str, str | None]
) -> bool:
    """True if ``now`` differs from ``before`` only by duties owned by their
    ``wanted`` node (nothing freed, nothing taken by another node)."""
    if not before.keys() <= now.keys():
        return False
    return all(before.get(d) == n or wanted.get(d) == n for d, n in now.items())


def _settled(duties: list[Duty], owners: Owners, wanted: Mapping[str, str | None]) -> bool:
    """True if every declared duty is owned by its wanted node (none where no node
    is wanted): placing from these owners gives ``wanted`` again (``place``'s
    fixpoint), so a placement only confirmed since it was computed is exact."""
    return all(owners.get(d.name) == wanted.get(d.name) for d in duties)


class Placer:
    """Placements of one node's declared duties (see the module docstring)."""

    def __init__(self, *, balanced: bool, newest_version: bool) -> None:
        self.balanced = balanced
        self.newest_version = newest_version
        self.computed = 0  # placements computed on demand (not reused, not spares)
        self.spares_computed = 0
        self.spares_used = 0
        self._scores = ScoreCache()  # rendezvous hashes, reused by every placement
        self._specs: tuple[list[Duty], IncrementalPlacer] | None = None
        # the history and its version the engine's last pass placed from
        self._engine_at: tuple[IncrementalPlacer, History, int] | None = None
        self.told = 0  # engine passes told which owners changed
        # (duties, live members, owners placed from, placement, exact)
        self._cache: tuple[list[Duty], Live, Owners, Placement, bool] | None = None
        self._spare_base: tuple[list[Duty], Live, Owners] | None = None
        self._spares: dict[Live, tuple[Owners, Placement]] = {}  # keyed by the survivors

    @property
    def current(self) -> Placement | None:
        """The last placement handed out (None: none yet, or the duties changed)."""
        return self._cache[3] if self._cache is not None else None

    def reset(self) -> None:
        """The declared duties changed: nothing computed so far holds."""
        self._cache = None
        self._spare_base = None
        self._spares = {}

    def place(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners, *,
        exact: bool = True, history: History | None = None,
    ) -> Placement:
        """Where every duty should run, given the members (draining ones are not
        live) and ``owners``. ``exact=False`` allows reusing a placement the owners
        only confirmed since (see the module docstring). ``history``: where
        ``owners`` come from (they must be its owners at its current version)."""
        live = frozenset(m for m in members if not m.draining)
        cached = self._cache
        if cached is not None and cached[0] is duties and cached[1] == live:
            if cached[2] == owners and (cached[4] or not exact):
                return cached[3]
            if only_confirmed(cached[2], owners, cached[3].wanted):
                done = _settled(duties, owners, cached[3].wanted)  # the fixpoint: exact
                if done or not exact:
                    self._cache = (duties, live, owners, cached[3], done)
                    return cached[3]
        spare = self._spares.get(live)
        if spare is not None and self._spare_base is not None and self._spare_base[0] is duties:
            same = spare[0] == owners
            if same or (not exact and only_confirmed(spare[0], owners, spare[1].wanted)):
                self.spares_used += 1  # (other survivors may have taken their share already)
                self._cache = (duties, live, owners, spare[1], same)
                return spare[1]
        result = self._compute(duties, live, owners, history)
        self.computed += 1
        self._cache = (duties, live, owners, result, True)
        return result

    # -- spares ---------------------------------------------------------------------
    def settled(self, duties: list[Duty], owners: Owners) -> bool:
        """True if every duty is owned by the node the current placement wants it on
        (none where it wants none): no move is pending. Spares computed while a
        rebalance is pending are thrown away when it happens."""
        current = self.current
        return current is not None and _settled(duties, owners, current.wanted)

    def nothing_free(self, duties: list[Duty], owners: Owners) -> bool:
        """True if every duty the current placement wants somewhere is owned: no
        failover or handover is under way (spares wait for that, so as not to
        compete for CPU with the survivors' own acquisitions)."""
        current = self.current
        if current is None:
            return False
        wanted = current.wanted
        return all(d.name in owners for d in duties if wanted.get(d.name) is not None)

    def leaving(self, duties: list[Duty], members: Iterable[Member], owners: Owners) -> str | None:
        """A node whose death is half seen: one of its spares matches except that
        either its duties are all free but its record is still listed, or its record
        is gone but its duties are still listed. A store with one watch per prefix
        (etcd) may deliver the two halves of that one revision apart."""
        base = self._spare_base
        if base is None or base[0] is not duties:
            return None
        members = list(members)
        live = frozenset(m for m in members if not m.draining)
        listed = {m.name for m in members}
        for survivors, (freed, _) in self._spares.items():
            gone = {m.name for m in base[1]} - {m.name for m in survivors}
            if len(gone) != 1:
                continue
            lost = gone.pop()
            duties_first = (survivors < live and live - survivors == base[1] - survivors
                            and len(freed) == len(owners) and freed == owners)
            record_first = (survivors == live and lost not in listed
                            and lost in owners.values()
                            and {d: n for d, n in owners.items() if n != lost} == freed)
            if duties_first or record_first:
                return lost
        return None

    def spares_base_matches(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners
    ) -> bool:
        """True if the spares kept were computed for these duties, members and owners."""
        live = frozenset(m for m in members if not m.draining)
        base = self._spare_base
        return base is not None and base[0] is duties and base[1:] == (live, owners)

    def spares_missing(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners, me: str
    ) -> list[str]:
        """The live nodes (not ``me``) whose loss has no spare placement yet for
        these members and owners; [] when spares are off for a cluster this size."""
        live = frozenset(m for m in members if not m.draining)
        if self.spares_off(duties, live):
            return []
        names = {m.name for m in live}
        if not self.spares_base_matches(duties, live, owners):
            return sorted(n for n in names if n != me)
        done = {n for s in self._spares for n in names - {m.name for m in s}}
        return sorted(n for n in names if n != me and n not in done)

    def spares_off(self, duties: list[Duty], members: Iterable[Member]) -> bool:
        """True if the cluster is too large for spare placements."""
        live = sum(1 for m in members if not m.draining)
        return live > SPARE_MAX_NODES or live * len(duties) > SPARE_MAX_PAIRS

    def warms(self, duties: list[Duty], members: Iterable[Member]) -> bool:
        """True if runner-ups are warmed for these duties and members: spares are
        off, there are at least ``WARM_MIN_DUTIES`` duties, and a placement of
        them was computed (the incremental placer to warm exists)."""
        return (len(duties) >= WARM_MIN_DUTIES and self._specs is not None
                and self._specs[0] is duties and self.spares_off(duties, members))

    def warm(self, duties: list[Duty], members: Iterable[Member]) -> bool:
        """One step (about ``WARM_PAIRS`` hashes) of warming the incremental placer's
        runner-ups (where :meth:`warms`). True when there is nothing (left) to do
        for now."""
        members = list(members)
        if not self.warms(duties, members):
            return True
        assert self._specs is not None
        live = max(1, sum(1 for m in members if not m.draining))
        return self._specs[1].warm(max(1, WARM_PAIRS // live))

    def add_spare(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners, lost: str
    ) -> None:
        """Compute and keep the placement for the loss of node ``lost``: it leaves
        the live members and the duties it owns are freed."""
        members = list(members)
        self.keep_spare(duties, members, owners, self.spare(duties, members, owners, lost))

    def spare_forks(self, duties: list[Duty]) -> bool:
        """True if a spare for these duties would be a pass on a fork of the
        incremental placer (:meth:`spare` with ``fork=True``): what the node's
        loss changes, milliseconds at 1,000 duties, cheap enough for the event
        loop. Otherwise a spare is a placement from scratch (a worker thread)."""
        return self._specs is not None and self._specs[0] is duties and self._specs[1].forkable()

    def spare(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners, lost: str,
        *, fork: bool = False,
    ) -> tuple[Live, Owners, Placement]:
        """The spare placement for the loss of ``lost`` (survivors, their owners,
        placement), computed but not kept (the node keeps it with :meth:`keep_spare`).

        ``fork=True`` (when :meth:`spare_forks`): a pass on a fork of the incremental
        placer; only where the placer is used (the event loop). Otherwise from
        scratch, touching no state but the score cache: safe in a worker thread.
        Both give ``place``'s answer."""
        survivors = frozenset(m for m in members if not m.draining and m.name != lost)
        freed = {d: n for d, n in owners.items() if n != lost}
        if fork:
            twin = self._engine(duties).fork()
            return survivors, freed, twin.place(self._nodes(duties, survivors), freed)
        return survivors, freed, self._compute_spare(duties, survivors, freed)

    def keep_spare(
        self, duties: list[Duty], members: Iterable[Member], owners: Owners,
        spare: tuple[Live, Owners, Placement],
    ) -> None:
        """Keep a spare computed by :meth:`spare` for these duties, members, owners."""
        live = frozenset(m for m in members if not m.draining)
        if not self.spares_base_matches(duties, live, owners):
            self._spare_base = (duties, live, owners)
            self._spares = {}
        self._spares[spare[0]] = (spare[1], spare[2])
        self.spares_computed += 1

    def _nodes(self, duties: list[Duty], live: Live) -> list[NodeInfo]:
        families = {d.family for d in duties if d.partition is not None}
        return [
            NodeInfo(m.name, frozenset(m.roles), m.weight, m.can_lead,
                     frozenset(m.disabled) | undeclared(m, families),
                     m.zone, m.app_version, m.cordoned, frozenset(m.prefers))
            for m in live
        ]

    def _engine(self, duties: list[Duty]) -> IncrementalPlacer:
        if self._specs is None or self._specs[0] is not duties:
            self._specs = (duties, IncrementalPlacer([  # a singleton's family: none
                DutySpec(d.name, d.roles, d.sticky, d.leader_bound, d.with_duty,
                         d.family if d.family != d.name else None)
                for d in duties
            ], balanced=self.balanced, newest_version=self.newest_version))
        return self._specs[1]

    def _compute(self, duties: list[Duty], live: Live, owners: Owners,
                 history: History | None = None) -> Placement:
        """The placement, from the incremental placer (it keeps what the previous
        pass computed: see :mod:`shoal.core.incremental`), told which owners
        changed since its last pass when ``history`` knows it."""
        engine = self._engine(duties)
        changed: set[str] | None = None
        at = self._engine_at
        if history is not None and at is not None and at[0] is engine and at[1] is history:
            changed = history.changed_since(at[2])
        self._engine_at = None  # (should the pass raise)
        result = engine.place(self._nodes(duties, live), owners, changed)
        if changed is not None:
            self.told += 1
        if history is not None:
            self._engine_at = (engine, history, history.version)
        return result

    def _compute_spare(self, duties: list[Duty], live: Live, owners: Owners) -> Placement:
        """A spare's placement, from scratch (it may run in a worker thread: the
        incremental placer's state is the event loop's)."""
        engine = self._engine(duties)
        return place(engine.duties, self._nodes(duties, live), owners, balanced=self.balanced,
                     newest_version=self.newest_version, cache=self._scores)
