"""The runtime's resolved settings (built from a NodeConfig, or by hand in tests)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeSettings:
    """Everything a Node needs to know about itself, resolved.

    Timing formulas (see docs/configuration.md): keep-alive every ``ttl/3``;
    local deadline = last acknowledged keep-alive send time + ``ttl`` -
    ``safety_margin``; a free duty's k-th ranked node may take it after
    ``k * grace``; balanced duties move after ``rebalance_delay`` of stable
    membership; a graceful stop waits ``drain_timeout`` per duty.
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

    @property
    def interval(self) -> float:
        return self.keepalive_interval if self.keepalive_interval is not None else self.ttl / 3
