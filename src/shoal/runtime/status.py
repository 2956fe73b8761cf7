"""NodeStatus: one immutable snapshot of what a node knows, for every surface.

``Node.status()`` builds it on the node's event loop without I/O; the HTTP view
(``/cluster``), the metrics, the dashboard feed, ``shoal status`` and
:class:`~shoal.runtime.thread.NodeThread` read only this snapshot. Every field is
frozen (tuples, read-only mappings of frozen records), so a snapshot may be kept,
compared or handed to another thread.

``owners`` and ``leader`` are None ("unknown") while the node is not ACTIVE: a
suspended, lost or joining node's view of the owners may be stale or empty, and
showing it would mislead (see docs/concepts.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.core.node_state import NodeState, Phase
from shoal.primitives.membership import Member
from shoal.primitives.ownership import Owner
from shoal.runtime.app import LEADER
from shoal.runtime.schedule_view import schedule_rows

if TYPE_CHECKING:
    from shoal.runtime.node import Node
    from shoal.runtime.reconcile import Reconciler, Tally
    from shoal.runtime.state import ReplicatedState

MAX_NAMESPACES = 100  # namespaces listed by name (all are counted)

__all__ = [
    "MAX_NAMESPACES",
    "Counters",
    "NodeStatus",
    "RunnerStatus",
    "SessionStatus",
    "StoreStatus",
    "build_status",
    "frozen_map",
]


K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only copy of ``items``."""
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals since the node object was created."""

    acquired: int = 0  # duties this node acquired
    released: int = 0  # duties handed over (graceful release)
    lost: int = 0  # duties stopped because the lease was lost (each fails over)
    crashes: int = 0  # crashes of duty and worker functions
    rejoins: int = 0  # rejoins after the lease was lost
    events_dropped: int = 0  # node events dropped for slow subscribers

    def as_dict(self) -> dict[str, int]:
        return {
            "acquired": self.acquired, "released": self.released, "lost": self.lost,
            "crashes": self.crashes, "rejoins": self.rejoins,
            "events_dropped": self.events_dropped,
        }


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """This node's lease. Times in seconds; ``remaining`` is negative once passed."""

    lease: int
    ttl: float
    alive: bool
    suspended: bool  # keep-alives failing, the local deadline not passed yet
    last_ack_age: float  # since the last acknowledgement arrived
    keepalive_latency: float  # round trip of the last acknowledged keep-alive
    remaining: float  # until the local deadline (G1), from the state machine
    keepalives_failed: int


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """A duty running on this node."""

    name: str
    status: str
    crashes: int
    last_error: str
    started_at: float
    token: int


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The replicated state's link to the store."""

    connected: bool
    revision: int
    stale: bool
    stale_seconds: float
    documents: int
    namespace_count: int
    namespaces: tuple[tuple[str, int], ...]  # (namespace, documents), at most 100


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Everything one node knows, at one instant (``time``: wall clock)."""

    name: str
    phase: Phase
    draining: bool
    leader: str | None  # None: no leader, or unknown (not ACTIVE)
    members: Mapping[str, Member]
    owners: Mapping[str, Owner] | None  # None: unknown (not ACTIVE)
    declared: tuple[str, ...]  # duties declared on this node
    local: tuple[RunnerStatus, ...]  # duties running here, by name
    workers: Mapping[str, Mapping[str, int]]  # pool -> {"running": n, "restarts": k}
    counters: Counters
    session: SessionStatus | None
    store: StoreStatus
    time: float
    # every schedule (shoal.runtime.schedule_view rows: owner, next run, last runs, counts)
    schedules: tuple[Mapping[str, Any], ...] = ()
    roles: tuple[str, ...] = ()  # this node's roles (readiness by role)
    synced: bool = True  # replicated state loaded at least once (False: starting)
    stopping: bool = False  # closing (after a drain)

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self.leader == self.name

    @property
    def running(self) -> tuple[str, ...]:
        """Names of the duties running on this node."""
        return tuple(r.name for r in self.local)

    @property
    def unowned(self) -> int | None:
        """Declared duties no node owns (None while owners are unknown)."""
        if self.owners is None:
            return None
        return sum(1 for d in self.declared if d not in self.owners)


def build_status(
    node: Node, machine: NodeState, duties: Reconciler, tally: Tally,
    events_dropped: int = 0,
) -> NodeStatus:
    """The snapshot of ``node`` (called by :meth:`Node.status`)."""
    phase = node.phase
    known = phase is Phase.ACTIVE
    owners = duties.owners.view() if known else None
    leader_owner = owners.get(LEADER) if owners is not None else None
    return NodeStatus(
        name=node.name,
        phase=phase,
        draining=machine.draining,
        leader=leader_owner.node if leader_owner is not None else None,
        members=frozen_map(node.members),
        owners=None if owners is None else frozen_map(owners),
        declared=tuple(d.name for d in duties.duties),
        local=tuple(
            RunnerStatus(name, r.status, r.crashes, r.last_error, r.started_at, r.token)
            for name, r in sorted(duties.runners.items())
        ),
        workers=frozen_map({k: frozen_map(v) for k, v in node.pools.status().items()}),
        counters=Counters(
            acquired=tally.acquired, released=tally.released, lost=tally.lost,
            crashes=tally.crashes, rejoins=tally.rejoins, events_dropped=events_dropped,
        ),
        session=_session(node, machine),
        store=_store(node.state),
        time=node.clock.time(),
        schedules=tuple(schedule_rows(node, owners or {})),
        roles=tuple(node.settings.roles),
        synced=node.state.ready,
        stopping=node.closing,
    )


def _session(node: Node, machine: NodeState) -> SessionStatus | None:
    session = node.session
    if session is None:
        return None
    now = node.clock.monotonic()
    deadline = machine.lease_deadline
    return SessionStatus(
        lease=session.lease,
        ttl=session.ttl,
        alive=session.alive and machine.phase in (Phase.ACTIVE, Phase.SUSPENDED),
        suspended=machine.phase is Phase.SUSPENDED,
        last_ack_age=max(0.0, now - session.last_ack_at),
        keepalive_latency=session.last_ack_latency,
        remaining=(deadline - now) if deadline is not None else 0.0,
        keepalives_failed=session.keepalives_failed,
    )


def _store(state: ReplicatedState) -> StoreStatus:
    names = state.namespaces()
    return StoreStatus(
        connected=not state.stale,
        revision=state.revision,
        stale=state.stale,
        stale_seconds=state.stale_for,
        documents=state.size,
        namespace_count=len(names),
        namespaces=tuple((ns, len(state.items(ns))) for ns in names[:MAX_NAMESPACES]),
    )
