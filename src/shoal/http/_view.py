"""What one node knows about the cluster, as plain JSON-ready data.

:func:`cluster_view` is shared by ``GET /cluster``, the dashboard's live feed
and ``shoal status --json``; :func:`readiness` by ``GET /ready``. Both only
read the node's in-memory view (no I/O), so they are cheap to call often.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = ["MAX_NAMESPACES", "cluster_view", "local_workers", "readiness"]

MAX_NAMESPACES = 100  # namespaces listed by name in the view (all are counted)


def readiness(node: Node) -> tuple[bool, str, str]:
    """(ready, reason code, message). Ready = joined (ACTIVE), the replicated
    state is in sync (not stale) and the node is not draining."""
    phase = node.phase
    if node.draining:
        return False, "draining", f"node {node.name} is draining (handing its duties over)"
    if phase != "ACTIVE":
        return False, "not_joined", f"node {node.name} is {phase}, not ACTIVE"
    state = node.state
    if state.stale:
        return False, "stale", (
            f"replicated state is stale for {state.stale_for:.1f} s (store unreachable "
            "or not loaded yet)"
        )
    return True, "ready", f"node {node.name} is ACTIVE and in sync"


def _session(node: Node) -> dict[str, Any] | None:
    session = node.session
    if session is None:
        return None
    now = node.clock.monotonic()
    return {
        "lease": f"{session.lease:x}",
        "ttl": session.ttl,
        "alive": session.alive,
        "suspended": session.suspended,
        "last_ack_age": round(max(0.0, now - session.last_ack_at), 3),
        "keepalive_latency": round(session.last_ack_latency, 6),
        "remaining": round(session.remaining(), 3),
    }


def local_workers(node: Node) -> dict[str, dict[str, int]]:
    status = getattr(node, "workers_status", None)
    if status is None:
        return {}
    try:
        result = status()
    except Exception:  # a pool being rebuilt must not break the view
        return {}
    return {str(k): dict(v) for k, v in dict(result).items()}


def _nodes(node: Node, leader: str | None, owned: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for name, m in sorted(node.members.items()):
        entry: dict[str, Any] = {
            "name": name,
            "roles": list(m.roles),
            "zone": m.zone,
            "weight": m.weight,
            "can_lead": m.can_lead,
            "version": m.version,
            "address": m.address,
            "started_at": m.started_at,
            "draining": m.draining,
            "disabled": list(m.disabled),
            "leader": name == leader,
            "self": name == node.name,
            "duties": sorted(owned.get(name, [])),
            "workers": dict(m.workers),
        }
        if name == node.name:
            entry["session"] = _session(node)
        out.append(entry)
    return out


def _duties(node: Node) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    owners = node.owners
    declared = {d.name for d in node.duties}
    owned: dict[str, list[str]] = {}
    rows = []
    for name in sorted(declared | set(owners)):
        owner = owners.get(name)
        if owner is not None:
            owned.setdefault(owner.node, []).append(name)
        rows.append({
            "name": name,
            "owner": owner.node if owner else None,
            "token": owner.token if owner else None,
            "since": owner.since if owner else None,
            "declared": name in declared,
        })
    return rows, owned


def _local(node: Node) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "status": r.status,
            "crashes": r.crashes,
            "last_error": r.last_error,
            "started_at": r.started_at,
            "token": r.token,
        }
        for name, r in sorted(node.runners.items())
    ]


def _store(node: Node) -> dict[str, Any]:
    state = node.state
    names = state.namespaces()
    return {
        "connected": not state.stale,
        "revision": state.revision,
        "stale": state.stale,
        "stale_seconds": round(state.stale_for, 3),
        "documents": state.size,
        "namespace_count": len(names),
        "namespaces": {ns: len(state.items(ns)) for ns in names[:MAX_NAMESPACES]},
    }


def cluster_view(node: Node) -> dict[str, Any]:
    """The cluster as ``node`` sees it (JSON-ready; documented in docs/http.md).

    Keys: ``node`` (this node's name), ``phase``, ``draining``, ``ready``,
    ``ready_reason``, ``leader``, ``node_count``, ``nodes`` (one dict per
    live member; this node's also has ``session``), ``duties`` (every declared
    or owned duty: owner, token, since), ``local_duties`` (runners on this
    node), ``workers`` (this node's pools), ``store`` (connected, revision,
    stale, stale_seconds, documents, namespaces), ``counters``, ``time``."""
    leader = node.leader
    duties, owned = _duties(node)
    ready, reason, _ = readiness(node)
    return {
        "node": node.name,
        "phase": node.phase,
        "draining": node.draining,
        "ready": ready,
        "ready_reason": reason,
        "leader": leader,
        "node_count": len(node.members),
        "nodes": _nodes(node, leader, owned),
        "duties": duties,
        "local_duties": _local(node),
        "workers": local_workers(node),
        "store": _store(node),
        "counters": dict(node.counters),
        "time": node.clock.time(),
    }
