"""The cluster as plain JSON-ready data, built from a :class:`NodeStatus` snapshot.

:func:`cluster_json` is the ONE builder of the nodes and duties part of a cluster
view: :func:`cluster_view` (``GET /cluster``, the dashboard's live feed, ``shoal
status --json``) adds this node's own facts to it, and ``shoal status`` uses it for
the smaller view it reads from the store when no node answers. :func:`readiness`
serves ``GET /ready``. Nothing here does I/O or touches the node itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.http._ready import readiness as ready_for_traffic
from shoal.primitives.membership import Member
from shoal.primitives.ownership import Owner
from shoal.runtime._keys import secret_warnings
from shoal.runtime.app import LEADER
from shoal.runtime.schedule_view import summary
from shoal.runtime.status import MAX_NAMESPACES, NodeStatus, SessionStatus

__all__ = ["MAX_NAMESPACES", "cluster_json", "cluster_view", "readiness"]


def readiness(status: NodeStatus) -> tuple[bool, str, str]:
    """(ready, reason code, message) for user traffic: see :mod:`shoal.http._ready`."""
    r = ready_for_traffic(status)
    return r.ready, r.reason, r.message


def session_json(session: SessionStatus | None) -> dict[str, Any] | None:
    if session is None:
        return None
    return {
        "lease": f"{session.lease:x}",
        "ttl": session.ttl,
        "alive": session.alive,
        "suspended": session.suspended,
        "last_ack_age": round(session.last_ack_age, 3),
        "keepalive_latency": round(session.keepalive_latency, 6),
        "remaining": round(session.remaining, 3),
    }


def cluster_json(
    members: Mapping[str, Member],
    owners: Mapping[str, Owner] | None,
    *,
    declared: tuple[str, ...] | None = None,
    me: str | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``leader``, ``node_count``, ``owners_known``, ``nodes`` and ``duties`` of a
    cluster view. ``owners`` None means unknown: no leader, every duty's owner null.
    ``declared`` (a node's view): list those duties too, each marked ``declared``.
    ``me`` marks this node (``self``); ``extra`` adds fields to a node's entry."""
    known = owners is not None
    owners = owners or {}
    leader_owner = owners.get(LEADER)
    leader = leader_owner.node if leader_owner is not None else None
    owned: dict[str, list[str]] = {}
    duties = []
    for name in sorted(set(declared or ()) | set(owners)):
        owner = owners.get(name)
        if owner is not None:
            owned.setdefault(owner.node, []).append(name)
        row: dict[str, Any] = {
            "name": name,
            "owner": owner.node if owner else None,
            "token": owner.token if owner else None,
            "since": owner.since if owner else None,
        }
        if declared is not None:
            row["declared"] = name in declared
        duties.append(row)
    nodes = []
    for name, m in sorted(members.items()):
        entry: dict[str, Any] = {
            "name": name, "roles": list(m.roles), "zone": m.zone, "weight": m.weight,
            "can_lead": m.can_lead, "version": m.version, "app_version": m.app_version,
            "cordoned": m.cordoned, "address": m.address,
            "started_at": m.started_at, "joined_at": m.joined_at, "draining": m.draining,
            "disabled": list(m.disabled),
            "leader": name == leader, "self": name == me,
            "duties": sorted(owned.get(name, [])), "workers": dict(m.workers),
            "keys": list(m.keys),  # key ids of its session secrets, current first
            # partitioned families its app declares ({family: count}; None: not told)
            "partitions": None if m.partitions is None else dict(m.partitions),
        }
        entry.update((extra or {}).get(name, {}))
        nodes.append(entry)
    return {
        "leader": leader, "node_count": len(members), "owners_known": known,
        "nodes": nodes, "duties": duties,
    }


def cluster_view(status: NodeStatus) -> dict[str, Any]:
    """The cluster as one node sees it (JSON-ready; documented in docs/http.md).

    Keys: ``node`` (this node's name), ``phase``, ``draining``, ``ready``,
    ``ready_reason``, ``leader``, ``node_count``, ``owners_known`` (false while the
    node is not ACTIVE: then ``leader`` and every owner are null), ``nodes`` (one
    dict per live member; this node's also has ``session``), ``duties`` (every
    declared or owned duty: owner, token, since), ``local_duties`` (runners on this
    node), ``workers`` (this node's pools), ``store`` (connected, revision, stale,
    stale_seconds, documents, namespaces), ``counters``, ``schedules`` (owner, next
    run, last outcome, lateness of each), ``time``."""
    ready, reason, _ = readiness(status)
    store = status.store
    view: dict[str, Any] = {
        "node": status.name,
        "phase": str(status.phase),
        "draining": status.draining,
        "ready": ready,
        "ready_reason": reason,
    }
    view.update(cluster_json(
        status.members, status.owners, declared=status.declared, me=status.name,
        extra={status.name: {"session": session_json(status.session)}},
    ))
    view.update({
        "local_duties": [
            {"name": r.name, "status": r.status, "crashes": r.crashes,
             "last_error": r.last_error, "started_at": r.started_at, "token": r.token}
            for r in status.local
        ],
        "workers": {pool: dict(counts) for pool, counts in status.workers.items()},
        "store": {
            "connected": store.connected, "revision": store.revision, "stale": store.stale,
            "stale_seconds": round(store.stale_seconds, 3), "documents": store.documents,
            "namespace_count": store.namespace_count, "namespaces": dict(store.namespaces),
        },
        "counters": status.counters.as_dict(),
        "schedules": [summary(row) for row in status.schedules],
        "time": status.time,
        # misconfiguration seen across the cluster (a session secret others lack)
        "warnings": secret_warnings(status.members),
    })
    return view
