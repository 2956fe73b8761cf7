"""The runtime's resolved settings (built from a NodeConfig, or by hand in tests)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.config import NodeConfig


def _key_ids(config: NodeConfig) -> tuple[str, ...]:
    from shoal.config._secrets import key_id

    auth = config.auth
    if auth.secret is None:
        return ()
    ids = [key_id(auth.secret), *(key_id(s) for s in auth.previous_secrets)]
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class NodeSettings:
    """Everything a Node needs to know about itself, resolved.

    Timing formulas (see docs/configuration.md): keep-alive every ``ttl/3``;
    local deadline = last acknowledged keep-alive send time + ``ttl`` -
    ``safety_margin``; a free duty's k-th ranked node may take it after
    ``k * grace``; balanced duties move after ``rebalance_delay`` of stable
    membership; a graceful stop waits ``drain_timeout`` per duty.

    ``per_node``: worker pool name -> copies on this node, overriding the
    pool's declared ``per_node`` (config ``duties: {NAME: {per_node: N}}``).
    """

    name: str = field(default_factory=socket.gethostname)
    roles: tuple[str, ...] = ()
    weight: float = 1.0
    zone: str = ""
    address: str = ""
    can_lead: bool = True
    disabled: tuple[str, ...] = ()
    ttl: int = 5
    keepalive_interval: float | None = None
    safety_margin: float = 0.5
    rebalance_delay: float = 5.0
    drain_timeout: float = 10.0
    grace: float = 1.0
    retry_backoff_max: float = 5.0
    crash_backoff: float = 1.0
    crash_backoff_max: float = 60.0
    params: dict[str, Any] = field(default_factory=dict)
    reaper: bool = False
    reaper_store: dict[str, Any] = field(default_factory=dict)
    balanced: bool = True
    per_node: dict[str, int] = field(default_factory=dict)
    # config ``duties: {NAME or family:*: {cron | every}}`` -> (cron, every seconds)
    schedule_overrides: dict[str, tuple[str | None, float | None]] = field(default_factory=dict)
    # key ids (shoal.config._secrets.key_id) of auth.secret then auth.previous_secrets: announced
    # in the node record so a node signing with a secret the others lack is visible
    key_ids: tuple[str, ...] = ()
    prefers: tuple[str, ...] = ()  # duties this node is a preferred owner of
    newest_version: bool = False  # singletons follow the newest app version
    max_txn_ops: int = 128  # ownership keys per batched transaction (the store's limit)

    @classmethod
    def from_config(cls, config: NodeConfig, *, workers: Iterable[str] = ()) -> NodeSettings:
        """Resolve a validated :class:`~shoal.config.NodeConfig`; ``workers``:
        the app's worker pool names, whose ``per_node`` overrides are resolved
        with :meth:`~shoal.config.NodeConfig.duty_override`."""
        t = config.effective_timings()
        per_node = {
            name: n for name in workers if (n := config.duty_override(name).per_node) is not None
        }
        disabled = tuple(sorted(k for k, v in config.duties.items() if not v.enabled))
        schedules = {
            k: (v.cron, v.every) for k, v in config.duties.items()
            if v.cron is not None or v.every is not None
        }
        prefers = tuple(sorted(
            k for k, v in config.duties.items()
            if v.prefer is True or (isinstance(v.prefer, list) and config.node.name in v.prefer)
        ))
        backend = config.store.descriptor
        # A backend without a reaper module (memory: one process, nothing
        # outlives it) runs without one; docs/configuration.md says which have it.
        reaper_store: dict[str, Any] = {"backend": backend.name, "reaper": backend.reaper}
        if backend.reaper is not None:
            reaper_store.update(backend.reaper_info(config.store.selected))
        return cls(
            name=config.node.name, roles=tuple(config.node.roles), weight=config.node.weight,
            zone=config.node.zone, address=config.node.address, can_lead=config.node.can_lead,
            disabled=disabled, ttl=t.ttl, keepalive_interval=t.keepalive_interval,
            safety_margin=t.safety_margin, rebalance_delay=t.rebalance_delay,
            drain_timeout=t.drain_timeout, grace=t.grace, retry_backoff_max=t.retry_backoff_max,
            params=dict(config.params),
            reaper=config.reaper.enabled and backend.reaper is not None,
            reaper_store=reaper_store, per_node=per_node, schedule_overrides=schedules,
            key_ids=_key_ids(config),
            prefers=prefers,
            newest_version=config.node.prefer_newest_version,
            max_txn_ops=backend.max_txn_ops or 1024,
        )

    @property
    def interval(self) -> float:
        return self.keepalive_interval if self.keepalive_interval is not None else self.ttl / 3
