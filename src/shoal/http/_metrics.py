"""Prometheus text exposition (format 0.0.4) of one node, written by hand.

Every series carries ``node="<name>"``. The list (and what each means) is in
docs/http.md; :data:`METRICS` is the source of truth for names and help.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from shoal.http._view import local_workers

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = ["CONTENT_TYPE", "METRICS", "PHASES", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PHASES = ("JOINING", "ACTIVE", "SUSPENDED", "LOST", "STOPPED")

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "shoal_info": ("gauge", "Always 1; labels carry the Shoal version."),
    "shoal_nodes": ("gauge", "Live nodes in the cluster as this node sees them."),
    "shoal_is_leader": ("gauge", "1 if this node is the leader, else 0."),
    "shoal_phase": ("gauge", "1 for this node's current phase, 0 for the others."),
    "shoal_draining": ("gauge", "1 while this node is draining."),
    "shoal_duties_owned": ("gauge", "Duties running on this node."),
    "shoal_duties_unowned": ("gauge", "Declared duties that no node owns right now."),
    "shoal_duties_acquired_total": ("counter", "Duties this node acquired."),
    "shoal_duties_released_total": ("counter", "Duties this node released (handed over)."),
    "shoal_failovers_total": (
        "counter", "Duties this node stopped because its lease was lost (each fails over)."
    ),
    "shoal_duty_crashes_total": ("counter", "Crashes of duty and worker functions on this node."),
    "shoal_rejoins_total": ("counter", "Times this node rejoined after losing its lease."),
    "shoal_keepalive_latency_seconds": (
        "gauge", "Round-trip time of the last acknowledged lease keep-alive."
    ),
    "shoal_lease_remaining_seconds": (
        "gauge", "Seconds until this node's local lease deadline (negative once passed)."
    ),
    "shoal_store_up": ("gauge", "1 while the store is reachable and state is in sync."),
    "shoal_state_revision": ("gauge", "Newest store revision applied to replicated state."),
    "shoal_state_stale_seconds": ("gauge", "Seconds replicated state has been stale (0 if not)."),
    "shoal_state_documents": ("gauge", "Replicated-state documents held by this node."),
    "shoal_workers_running": ("gauge", "Running copies of a worker pool on this node."),
    "shoal_worker_restarts_total": ("counter", "Restarts of a worker pool's copies on this node."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    def __init__(self, node_name: str) -> None:
        self.lines: list[str] = []
        self.node = node_name
        self._declared: set[str] = set()

    def add(self, name: str, value: float, **labels: str) -> None:
        if name not in self._declared:
            kind, text = METRICS[name]
            self.lines.append(f"# HELP {name} {text}")
            self.lines.append(f"# TYPE {name} {kind}")
            self._declared.add(name)
        pairs = {"node": self.node, **labels}
        body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())
        self.lines.append(f"{name}{{{body}}} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(node: Node, version: str = "") -> str:
    """The node's metrics in the Prometheus text format."""
    w = _Writer(node.name)
    w.add("shoal_info", 1, version=version)
    w.add("shoal_nodes", len(node.members))
    w.add("shoal_is_leader", node.leader == node.name)
    phase = node.phase
    for p in PHASES:
        w.add("shoal_phase", p == phase, phase=p)
    w.add("shoal_draining", node.draining)
    owners = node.owners
    w.add("shoal_duties_owned", len(node.runners))
    w.add("shoal_duties_unowned", sum(1 for d in node.duties if d.name not in owners))
    counters = node.counters
    w.add("shoal_duties_acquired_total", counters.get("acquired", 0))
    w.add("shoal_duties_released_total", counters.get("released", 0))
    w.add("shoal_failovers_total", counters.get("lost", 0))
    w.add("shoal_duty_crashes_total", counters.get("crashes", 0))
    w.add("shoal_rejoins_total", counters.get("rejoins", 0))
    session = node.session
    w.add("shoal_keepalive_latency_seconds", session.last_ack_latency if session else 0.0)
    w.add("shoal_lease_remaining_seconds", session.remaining() if session else 0.0)
    state = node.state
    w.add("shoal_store_up", not state.stale)
    w.add("shoal_state_revision", state.revision)
    w.add("shoal_state_stale_seconds", state.stale_for)
    w.add("shoal_state_documents", state.size)
    for pool, status in sorted(local_workers(node).items()):
        w.add("shoal_workers_running", status.get("running", 0), pool=pool)
        w.add("shoal_worker_restarts_total", status.get("restarts", 0), pool=pool)
    return w.text()
