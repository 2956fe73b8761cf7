"""The node state machine, the ONE place saying what a node does when its lease or the
store changes. Pure: ``step(state, event, now) -> (state, actions)``; the runtime feeds
events, reads the clock for ``now`` and runs the actions in order.

Phases: ``JOINING -> ACTIVE <-> SUSPENDED -> LOST -> JOINING ...``, any -> ``STOPPED``.

=================  =========================  =========  ====================================
phase              event                      next       actions, in this order
=================  =========================  =========  ====================================
JOINING            Joined(at, lease)          ACTIVE     ArmDeadline, StartPlacing*, ReportPhase
ACTIVE             KeepaliveOk(at)            ACTIVE     ArmDeadline (if the deadline moved)
ACTIVE             KeepaliveFailed            SUSPENDED  StopPlacing*, ReportPhase
SUSPENDED          KeepaliveOk(at)            ACTIVE     ReleaseAllDuties (if draining),
                                                         ArmDeadline, StartPlacing*, ReportPhase
SUSPENDED          KeepaliveFailed            SUSPENDED  (none; failed_at = now)
ACTIVE, SUSPENDED  DeadlinePassed, LeaseGone  LOST       StopAllDuties, StopPlacing*, ReportPhase
ACTIVE, SUSPENDED  Drain                      (same)     StopPlacing*, ReleaseAllDuties
JOINING, LOST      Drain                      (same)     (none; draining = True)
LOST               StoreBack                  JOINING    Rejoin(old_lease), ReportPhase
other phases       DeadlinePassed             (same)     StopAllDuties (idempotent safety net)
not STOPPED        Closed(orphan)             STOPPED    StopAllDuties, StopPlacing*,
                                                         RevokeLease (if a lease and not
                                                         orphan), ReportPhase
any                anything else, Tick        (same)     (none)
=================  =========================  =========  ====================================

``*`` StartPlacing / StopPlacing are emitted whenever "placing" (ACTIVE and not draining)
turns on / off, so a draining node never places duties again.

G1: ``lease_deadline = send time of the last acknowledged keep-alive (or grant) + ttl -
safety_margin``; the store cannot expire the lease before ``send time + ttl``, so duties
stop before another node could take them (given drift + stop time < ``safety_margin``).
``step`` also checks the deadline itself: a live node getting ANY event at ``now >=
lease_deadline`` (or whose new deadline is already past) goes to LOST first, with
StopAllDuties. ``DeadlinePassed`` is trusted even if early (re-arm the timer on every
``ArmDeadline``) and yields ``StopAllDuties`` in every phase.

Draining is a flag, not a phase: a draining node keeps membership and lease but gives its
duties away, and stays draining through LOST -> JOINING -> ACTIVE. Events not in the
table (a stale ack after LOST, Joined while ACTIVE...) are expected races: ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeAlias

from shoal.errors import InvalidArgument


class Phase(StrEnum):
    """A node's phase. The value is the name, as shown in JSON, metrics and logs."""

    JOINING = "JOINING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    STOPPED = "STOPPED"


_LIVE = (Phase.ACTIVE, Phase.SUSPENDED)


@dataclass(frozen=True, slots=True)
class NodeState:
    """``lease``: current lease id (in LOST: the lost one); ``last_ack_at``: send time of the
    last acknowledged keep-alive/grant; ``failed_at``: last failed keep-alive (SUSPENDED)."""

    phase: Phase
    since: float
    ttl: float
    safety_margin: float
    lease_deadline: float | None = None
    lease: int | None = None
    last_ack_at: float | None = None
    failed_at: float | None = None
    draining: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.safety_margin < self.ttl:
            raise InvalidArgument(
                f"need 0 < safety_margin < ttl, got {self.safety_margin}, {self.ttl}"
            )

    @property
    def placing(self) -> bool:
        """True while the node may acquire duties (ACTIVE and not draining)."""
        return self.phase is Phase.ACTIVE and not self.draining


@dataclass(frozen=True, slots=True)
class Joined:
    """Lease granted and node record written. ``at``: when the grant was SENT."""

    at: float
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class KeepaliveOk:
    """A keep-alive was acknowledged. ``at``: when it was SENT; ``ttl``: as reported."""

    at: float
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class KeepaliveFailed:
    """A keep-alive failed or got no answer in time (store unreachable or slow)."""


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The local lease deadline passed: duties must stop now."""


@dataclass(frozen=True, slots=True)
class LeaseGone:
    """The store says the lease is not found (expired or revoked)."""


@dataclass(frozen=True, slots=True)
class StoreBack:
    """The store answered again (e.g. a probe succeeded)."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Hand every duty over and take no new ones; keep membership."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The node is shutting down. ``orphan``: leave the lease to expire by its TTL (a
    simulated crash) instead of revoking it."""

    orphan: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Nothing happened, but time passed: only the deadline check runs."""


SessionEvent: TypeAlias = KeepaliveOk | KeepaliveFailed | LeaseGone
"""What a lease session reports (:mod:`shoal.primitives.session`)."""
_LeaseEvent: TypeAlias = Joined | SessionEvent | DeadlinePassed
Event: TypeAlias = _LeaseEvent | StoreBack | Drain | Closed | Tick


@dataclass(frozen=True, slots=True)
class StopAllDuties:
    """Stop every running duty NOW, without waiting for the store (G1)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReleaseAllDuties:
    """Graceful hand-over: stop each owned duty (bounded by the drain timeout); the
    owner keys go with the lease (``RevokeLease`` when the node closes)."""


@dataclass(frozen=True, slots=True)
class StartPlacing:
    """Start acquiring the duties placement wants on this node."""


@dataclass(frozen=True, slots=True)
class StopPlacing:
    """Acquire no new duties (running ones are not affected)."""


@dataclass(frozen=True, slots=True)
class Rejoin:
    """Revoke ``old_lease`` (best effort), grant a lease, re-register; then ``Joined``."""

    old_lease: int | None = None


@dataclass(frozen=True, slots=True)
class RevokeLease:
    """Revoke the lease (its node record and duty keys vanish with it)."""

    lease: int


@dataclass(frozen=True, slots=True)
class ArmDeadline:
    """(Re)arm the deadline timer for ``at``, replacing any earlier one."""

    at: float


@dataclass(frozen=True, slots=True)
class ReportPhase:
    """Tell observers (logs, metrics, health) the phase changed."""

    phase: Phase


_DutyAction: TypeAlias = StopAllDuties | ReleaseAllDuties | StartPlacing | StopPlacing
Action: TypeAlias = _DutyAction | Rejoin | RevokeLease | ArmDeadline | ReportPhase


def local_deadline(sent_at: float, ttl: float, safety_margin: float) -> float:
    """When duties must stop: ``sent_at + ttl - safety_margin``."""
    return sent_at + ttl - safety_margin


def initial(now: float, *, ttl: float, safety_margin: float) -> NodeState:
    """A node that is about to join."""
    return NodeState(phase=Phase.JOINING, since=now, ttl=ttl, safety_margin=safety_margin)


def next_keepalive_at(
    state: NodeState, interval: float | None = None, retry: float | None = None
) -> float | None:
    """When to send the next keep-alive: ``last_ack_at + interval`` (default ttl / 3);
    while SUSPENDED ``failed_at + retry`` (default interval / 4); None if no lease."""
    every = state.ttl / 3 if interval is None else interval
    if state.phase not in _LIVE or state.last_ack_at is None:
        return None
    if state.phase is Phase.SUSPENDED and state.failed_at is not None:
        return state.failed_at + (every / 4 if retry is None else retry)
    return state.last_ack_at + every


def _overdue(state: NodeState, now: float) -> bool:
    deadline = state.lease_deadline if state.phase in _LIVE else None
    return deadline is not None and now >= deadline


def _lose(state: NodeState, now: float) -> NodeState:
    return replace(state, phase=Phase.LOST, since=now, lease_deadline=None, failed_at=None)


def _apply(
    state: NodeState, event: Event, now: float
) -> tuple[NodeState, str | None, list[Action]]:
    """One row of the table: (new state, StopAllDuties reason or None, extra actions)."""
    phase = state.phase
    if isinstance(event, DeadlinePassed):
        return (_lose(state, now) if phase in _LIVE else state), "lease deadline passed", []
    if phase is Phase.STOPPED:
        return state, None, []
    if isinstance(event, Closed):
        lease = None if event.orphan else state.lease
        revoke: list[Action] = [] if lease is None else [RevokeLease(lease)]
        stopped = replace(state, phase=Phase.STOPPED, since=now, lease_deadline=None)
        return stopped, "closed", revoke
    if isinstance(event, Drain) and not state.draining:
        release: list[Action] = [ReleaseAllDuties()] if phase in _LIVE else []
        return replace(state, draining=True), None, release
    if isinstance(event, Joined) and phase is Phase.JOINING:
        deadline = local_deadline(event.at, state.ttl, state.safety_margin)
        joined = replace(
            state, phase=Phase.ACTIVE, since=now, lease=event.lease,
            last_ack_at=event.at, lease_deadline=deadline, failed_at=None,
        )  # fmt: skip
        return joined, None, []
    if isinstance(event, StoreBack) and phase is Phase.LOST:
        joining = replace(state, phase=Phase.JOINING, since=now, lease=None, last_ack_at=None)
        return joining, None, [Rejoin(old_lease=state.lease)]
    if phase not in _LIVE:
        return state, None, []
    if isinstance(event, LeaseGone):
        return _lose(state, now), "lease gone at the store", []
    if isinstance(event, KeepaliveFailed):
        since = now if phase is Phase.ACTIVE else state.since
        return replace(state, phase=Phase.SUSPENDED, since=since, failed_at=now), None, []
    if isinstance(event, KeepaliveOk):
        ttl = state.ttl if event.ttl is None else min(state.ttl, event.ttl)
        deadline = local_deadline(event.at, ttl, state.safety_margin)
        renewed = replace(
            state, phase=Phase.ACTIVE, failed_at=None,
            since=now if phase is Phase.SUSPENDED else state.since,
            lease_deadline=max(deadline, deadline if (d := state.lease_deadline) is None else d),
            last_ack_at=max(event.at, event.at if (a := state.last_ack_at) is None else a),
        )  # fmt: skip
        back = phase is Phase.SUSPENDED and state.draining
        return renewed, None, [ReleaseAllDuties()] if back else []
    return state, None, []


def _effects(
    old: NodeState, new: NodeState, reason: str | None, extra: list[Action]
) -> list[Action]:
    out: list[Action] = [] if reason is None else [StopAllDuties(reason)]
    if old.placing and not new.placing:
        out.append(StopPlacing())
    out.extend(extra)
    if new.lease_deadline is not None and new.lease_deadline != old.lease_deadline:
        out.append(ArmDeadline(new.lease_deadline))
    if new.placing and not old.placing:
        out.append(StartPlacing())
    if new.phase is not old.phase:
        out.append(ReportPhase(new.phase))
    return out


def step(state: NodeState, event: Event, now: float) -> tuple[NodeState, list[Action]]:
    """Apply ``event`` at time ``now`` (see the table in the module docstring)."""
    actions: list[Action] = []
    if _overdue(state, now) and not isinstance(event, DeadlinePassed):
        state, actions = step(state, DeadlinePassed(), now)
    new, reason, extra = _apply(state, event, now)
    if _overdue(new, now):  # e.g. an ack so late that its deadline is already past
        new, reason = _lose(new, now), "lease deadline passed"
        extra = [a for a in extra if not isinstance(a, ReleaseAllDuties)]
    return new, actions + _effects(state, new, reason, extra)
