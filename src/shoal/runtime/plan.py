"""What a node should do about its duties, given what it sees. Pure: no I/O.

The runtime builds a :class:`View` from its mirrors and clock and carries
out the :func:`plan`'s actions in order.

Rules, per duty (``wanted`` comes from :func:`shoal.core.placement.place`):

* owned by me (on my current lease):
  - co-located (``with_duty=X``) and I no longer own X (or X is being
    released) -> Release;
  - balanced, wanted elsewhere, and membership stable for
    ``rebalance_delay`` -> Release (handover: stop, then delete the key),
    unless I took it by the fallback below since the last membership change
    (``held``): the node it is wanted on did not take it then, so handing it
    over again would leave it free again. Nodes whose placements disagree
    (different app releases during a rolling upgrade declare different
    duties, so their balanced shares differ) would otherwise pass a duty
    back and forth with nobody running it; it stays here until membership
    changes;
  - sticky, but I am no longer eligible for it (a preferred owner or a
    newer version came back: fail-back), wanted elsewhere, and membership
    stable for ``rebalance_delay`` -> Release;
  - else make sure it runs with the current token -> Run.
* owned by my previous lease (stale, after a rejoin) -> Release.
* not owned by me but running here -> Stop at once (ownership lost).
* owned by me (or running here) but no longer declared — a ``for_each_doc``
  duty whose document was deleted -> Release (stop, then delete the key).
* free: co-located -> Acquire if I own X; otherwise Acquire if I am the
  wanted node, or if I am k-th in rank order and it has been free for
  ``k * grace`` seconds (fallback when the preferred node does not act).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.core.placement import Placement
from shoal.primitives.ownership import Owner
from shoal.runtime.app import Duty


@dataclass(frozen=True, slots=True)
class Acquire:
    duty: str


@dataclass(frozen=True, slots=True)
class Release:
    duty: str
    token: int
    reason: str


@dataclass(frozen=True, slots=True)
class Run:
    duty: str
    owner: Owner


@dataclass(frozen=True, slots=True)
class Stop:
    duty: str
    reason: str


Action = Acquire | Release | Run | Stop


@dataclass(frozen=True)
class View:
    me: str
    lease: int
    duties: list[Duty]  # co-located duties after the duty they follow
    owners: Mapping[str, Owner]
    placement: Placement
    running: Mapping[str, int]  # duty -> token of the local runner
    now: float
    free_since: Mapping[str, float] = field(default_factory=dict)
    stable_since: float = 0.0
    held: Mapping[str, float] = field(default_factory=dict)  # taken by fallback, when
    grace: float = 1.0
    rebalance_delay: float = 5.0


def batches(
    actions: list[Action], duties: Mapping[str, Duty]
) -> tuple[list[list[Release]], list[Acquire]]:
    """The plan's releases in waves (a duty's wave comes before the wave of the
    duty it follows, so dependents stop first; each wave may stop in parallel)
    and its acquisitions (one batch: they do not depend on each other)."""
    remaining = [a for a in actions if isinstance(a, Release)]
    waves: list[list[Release]] = []
    while remaining:
        anchors = {
            d.with_duty for r in remaining if (d := duties.get(r.duty)) and d.with_duty
        }
        wave = [r for r in remaining if r.duty not in anchors] or remaining
        waves.append(wave)
        remaining = [r for r in remaining if r not in wave]
    return waves, [a for a in actions if isinstance(a, Acquire)]


def _held(view: View, duty: str) -> bool:
    """Taken by the fallback since the last membership change (see the rules)."""
    taken = view.held.get(duty)
    return taken is not None and taken >= view.stable_since


def by_fallback(view: View, acquire: Acquire, duty: Duty) -> bool:
    """True if ``plan`` chose ``acquire`` by the ``k * grace`` fallback (a duty
    wanted elsewhere, not co-located): the runtime then records it in ``held``."""
    return duty.with_duty is None and view.placement.wanted.get(acquire.duty) != view.me


def plan(view: View) -> list[Action]:
    """The actions to take now, releases of dependents before their anchor."""
    actions: list[Action] = []
    releasing: set[str] = set()
    me = view.me
    stable = view.now - view.stable_since >= view.rebalance_delay
    for duty in view.duties:
        name = duty.name
        owner = view.owners.get(name)
        running = view.running.get(name)
        if owner is not None and owner.node == me and owner.lease == view.lease:
            wanted = view.placement.wanted.get(name)
            reason = ""
            if duty.with_duty is not None:
                anchor = view.owners.get(duty.with_duty)
                if (duty.with_duty in releasing or anchor is None or anchor.node != me
                        or anchor.lease != view.lease):  # X is a stale record: leaving too
                    reason = f"follows {duty.with_duty}, which left this node"
            elif wanted not in (None, me) and stable and not _held(view, name):
                if not duty.sticky:
                    reason = f"rebalance to {wanted}"
                elif me not in view.placement.ranks.get(name, []):
                    reason = f"fail-back to {wanted}"
            if reason:
                releasing.add(name)
                actions.append(Release(name, owner.token, reason))
            elif running != owner.token:
                actions.append(Run(name, owner))
            continue
        if running is not None:
            actions.append(Stop(name, "ownership lost"))
        if owner is not None:
            if owner.node == me:  # left over from my previous lease
                actions.append(Release(name, owner.token, "stale record of a previous session"))
            continue
        if duty.with_duty is not None:
            anchor = view.owners.get(duty.with_duty)
            if (anchor is not None and anchor.node == me and anchor.lease == view.lease
                    and me in view.placement.ranks.get(name, [])):
                actions.append(Acquire(name))
            continue
        if view.placement.wanted.get(name) == me:  # then I am first in its ranks
            actions.append(Acquire(name))
            continue
        free_for = view.now - view.free_since.get(name, view.now)
        if free_for < view.grace:  # I am not first: k >= 1 (ranks are read lazily)
            continue
        ranks = view.placement.ranks.get(name, [])
        if me in ranks and free_for >= view.grace * ranks.index(me):
            actions.append(Acquire(name))
    declared = {d.name for d in view.duties}
    for name, owner in view.owners.items():
        if name not in declared and owner.node == me:
            actions.append(Release(name, owner.token, "no longer declared (document deleted)"))
    for name in view.running:
        if name not in declared and name not in view.owners:
            actions.append(Stop(name, "no longer declared"))
    releases = [a for a in actions if isinstance(a, Release)]
    others = [a for a in actions if not isinstance(a, Release)]
    return [*reversed(releases), *others]
