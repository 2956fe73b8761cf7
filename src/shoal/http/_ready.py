"""``GET /ready``: may a load balancer send user traffic to this node?

Statiko's promise is that nodes keep serving when the store is lost, so
readiness does NOT follow the lease: a node that has synced its replicated
state once is ready — even from a stale cache while the store is away (the
answer then says ``stale`` and its age) — until it drains, stops or is
stopped. Two narrower questions are asked with parameters:

* ``?coordinated=1``: does the node hold its lease (phase ACTIVE)? For
  checks that need the cluster's coordination, not for user traffic.
* ``?role=R``: is the node ready AND does it have role R? Keeps ingestion
  nodes out of the user-facing pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.core.node_state import Phase
from shoal.runtime._state_model import short_repr

if TYPE_CHECKING:
    from shoal.runtime.status import NodeStatus

__all__ = ["Readiness", "readiness"]


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str  # ready, stale, starting, draining, stopping, stopped, not_coordinated, no_role
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def readiness(
    status: NodeStatus, *, role: str | None = None, coordinated: bool = False
) -> Readiness:
    """Whether the node of ``status`` should get user traffic (see the module docstring)."""
    store = status.store
    phase = status.phase
    details: dict[str, Any] = {"stale": store.stale, "stale_seconds": round(store.stale_seconds, 3)}
    name = status.name
    if not status.synced:
        return Readiness(False, "starting", f"node {name} is starting (state never synced)",
                         details)
    if status.stopping:
        return Readiness(False, "stopping", f"node {name} is stopping", details)
    if status.draining:
        return Readiness(False, "draining", f"node {name} is draining (handing its duties over)",
                         details)
    if phase is Phase.STOPPED:
        return Readiness(False, "stopped", f"node {name} is stopped", details)
    if role is not None and role not in status.roles:
        return Readiness(False, "no_role",
                         f"node {name} does not have role {short_repr(role)}", details)
    if coordinated and phase is not Phase.ACTIVE:
        return Readiness(False, "not_coordinated",
                         f"node {name} is {phase}: it holds no lease (duties stopped)", details)
    if store.stale:
        return Readiness(True, "stale", (
            f"node {name} serves from its local copy, stale for {store.stale_seconds:.1f} s "
            f"(store unreachable; phase {phase}); writes are refused"), details)
    return Readiness(True, "ready", f"node {name} is {phase} and in sync", details)
