"""Schedules as plain data for the surfaces (API, dashboard, metrics, CLI).

:func:`schedule_rows` reads only the node's in-memory view (its replicated
state, declarations and owners), so it is cheap to call on every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.core.schedule import describe
from shoal.runtime.schedule import NAMESPACE

if TYPE_CHECKING:
    from shoal.primitives.ownership import Owner
    from shoal.runtime.node import Node

__all__ = ["schedule_rows", "summary"]


def schedule_rows(
    node: Node, owners: Mapping[str, Owner] | None = None
) -> list[dict[str, Any]]:
    """Every schedule declared on ``node`` or recorded in the cluster, sorted by
    name (:func:`shoal.core.schedule.describe` rows). ``owners``: the owners to
    show (default: the node's current view)."""
    docs = node.state.items(NAMESPACE)
    declared = {d.name for d in node.duties if d.schedule is not None}
    if owners is None:
        owners = node.owners
    now = node.clock.time()
    rows = []
    for name in sorted(declared | set(docs)):
        doc = docs.get(name)
        data = doc.value if doc is not None and isinstance(doc.value, dict) else {}
        owner = owners.get(name)
        rows.append(describe(name, data, owner.node if owner else None, now))
    return rows


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for open endpoints (cluster view, dashboard): outcomes and times,
    never error text."""
    last = row["last_run"] or {}
    return {
        "name": row["name"], "owner": row["owner"], "cron": row["cron"],
        "every": row["every"], "tz": row["tz"], "next_run": row["next_run"],
        "last_start": last.get("start"), "last_outcome": last.get("outcome"),
        "running": row["running"] is not None, "lateness": row["lateness"],
        "counts": row["counts"],
    }
