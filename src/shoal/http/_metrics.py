"""Prometheus metrics of one node, through ``prometheus_client``.

:class:`NodeCollector` is a custom collector: every scrape it takes ONE
:class:`~shoal.runtime.status.NodeStatus` snapshot and turns it into metric
families, so the values of one scrape are consistent with each other. Each HTTP app
has its own :class:`~prometheus_client.CollectorRegistry` (:func:`node_registry`),
never the global one, so several nodes in one process do not collide.

Every series carries ``node="<name>"``. The list (and what each means) is in
docs/http.md; :data:`METRICS` is the source of truth for names and help.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from shoal.core.node_state import Phase
from shoal.http._schedules import SCHEDULE_METRICS, schedule_samples
from shoal.runtime.status import NodeStatus

__all__ = ["CONTENT_TYPE", "METRICS", "NodeCollector", "node_registry", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# name -> (type, help); counters are named with their ``_total`` suffix
METRICS: dict[str, tuple[str, str]] = {
    "shoal_info": (
        "gauge", "Always 1; labels carry the Shoal version and the app's own version."
    ),
    "shoal_nodes": ("gauge", "Live nodes in the cluster as this node sees them."),
    "shoal_is_leader": ("gauge", "1 if this node is the leader, else 0."),
    "shoal_phase": ("gauge", "1 for this node's current phase, 0 for the others."),
    "shoal_draining": ("gauge", "1 while this node is draining."),
    "shoal_cordoned": ("gauge", "1 while this node is cordoned (it takes no new duties)."),
    "shoal_duties_owned": ("gauge", "Duties running on this node."),
    "shoal_duties_unowned": (
        "gauge", "Declared duties that no node owns right now (absent while unknown)."
    ),
    "shoal_duties_acquired_total": ("counter", "Duties this node acquired."),
    "shoal_duties_released_total": ("counter", "Duties this node released (handed over)."),
    "shoal_failovers_total": (
        "counter", "Duties this node stopped because its lease was lost (each fails over)."
    ),
    "shoal_duty_crashes_total": ("counter", "Crashes of duty and worker functions on this node."),
    "shoal_rejoins_total": ("counter", "Times this node rejoined after losing its lease."),
    "shoal_events_dropped_total": (
        "counter", "Node events dropped because a subscriber fell behind."
    ),
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
    **SCHEDULE_METRICS,
}


class _Families:
    """Metric families of one scrape, each created once from :data:`METRICS`."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.made: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, name: str, value: float, **labels: str) -> None:
        family = self.made.get(name)
        if family is None:
            kind, text = METRICS[name]
            names = ["node", *labels]
            family = (
                CounterMetricFamily(name, text, labels=names) if kind == "counter"
                else GaugeMetricFamily(name, text, labels=names)
            )
            self.made[name] = family
        family.add_metric([self.node, *labels.values()], float(value))


class NodeCollector(Collector):
    """Turns one :class:`NodeStatus` per scrape into Shoal's metric families."""

    def __init__(self, status: Callable[[], NodeStatus], version: str = "",
                 app_version: str = "") -> None:
        self._status = status
        self._version = version
        self._app_version = app_version

    def describe(self) -> list[Metric]:
        return []  # families are only known at scrape time (no auto-describe)

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        f = _Families(s.name)
        f.add("shoal_info", 1, version=self._version, app_version=self._app_version)
        f.add("shoal_nodes", len(s.members))
        f.add("shoal_is_leader", s.is_leader)
        for phase in Phase:
            f.add("shoal_phase", phase is s.phase, phase=str(phase))
        f.add("shoal_draining", s.draining)
        me = s.members.get(s.name)  # its record, as the other nodes see it
        f.add("shoal_cordoned", me is not None and me.cordoned)
        f.add("shoal_duties_owned", len(s.local))
        if s.unowned is not None:
            f.add("shoal_duties_unowned", s.unowned)
        c = s.counters
        f.add("shoal_duties_acquired_total", c.acquired)
        f.add("shoal_duties_released_total", c.released)
        f.add("shoal_failovers_total", c.lost)
        f.add("shoal_duty_crashes_total", c.crashes)
        f.add("shoal_rejoins_total", c.rejoins)
        f.add("shoal_events_dropped_total", c.events_dropped)
        session = s.session
        f.add("shoal_keepalive_latency_seconds", session.keepalive_latency if session else 0.0)
        f.add("shoal_lease_remaining_seconds", session.remaining if session else 0.0)
        store = s.store
        f.add("shoal_store_up", not store.stale)
        f.add("shoal_state_revision", store.revision)
        f.add("shoal_state_stale_seconds", store.stale_seconds)
        f.add("shoal_state_documents", store.documents)
        for pool, counts in sorted(s.workers.items()):
            f.add("shoal_workers_running", counts.get("running", 0), pool=pool)
            f.add("shoal_worker_restarts_total", counts.get("restarts", 0), pool=pool)
        for metric, value, labels in schedule_samples(s.schedules, s.name):
            f.add(metric, value, **labels)
        yield from f.made.values()


def node_registry(status: Callable[[], NodeStatus], version: str = "",
                  app_version: str = "") -> CollectorRegistry:
    """A registry of its own holding one :class:`NodeCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(status, version, app_version))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format 0.0.4."""
    return generate_latest(registry)
