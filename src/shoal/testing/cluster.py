"""SimCluster: several in-process nodes on one memory store with a fake clock.

Every node is a real :class:`~shoal.runtime.node.Node` (its own session,
watches and reconcile loop) reaching the shared store through its own
:class:`~shoal.testing.faulty.FaultyStore` link, so a test can cut or
blackhole one node and move time by whole lease TTLs in milliseconds::

    c = SimCluster(app)
    await c.add("a"); await c.add("b")
    await c.run(5.0)                 # five simulated seconds
    c.links["a"].blackhole()
    assert c.owners()["job"] == "b"
"""

from __future__ import annotations

import json
from typing import Any

from shoal.primitives.ownership import DUTIES, Owner
from shoal.runtime.app import App
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore

DEFAULTS: dict[str, Any] = {
    "ttl": 6, "safety_margin": 1.0, "rebalance_delay": 3.0, "drain_timeout": 1.0,
}


class SimCluster:
    """Nodes of ``app`` on one :class:`MemoryStore` driven by a :class:`FakeClock`."""

    def __init__(self, app: App | None = None, **defaults: Any) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.app = app or App("sim")
        self.defaults = {**DEFAULTS, **defaults}
        self.nodes: dict[str, Node] = {}
        self.links: dict[str, FaultyStore] = {}

    def node(self, name: str, app: App | None = None, **settings: Any) -> Node:
        """Make node ``name`` without starting it (NodeSettings fields override
        the defaults); it is closed with the cluster."""
        link = FaultyStore(self.store, self.clock)
        merged = {**self.defaults, **settings}
        node = Node(app or self.app, NodeSettings(name=name, **merged), store=link,
                    clock=self.clock)
        self.nodes[name] = node
        self.links[name] = link
        return node

    async def add(self, name: str, app: App | None = None, **settings: Any) -> Node:
        """Start node ``name`` (NodeSettings fields override the defaults)."""
        node = self.node(name, app, **settings)
        await node.start()
        return node

    async def run(self, seconds: float, step: float = 0.1) -> None:
        """Let ``seconds`` of simulated time pass, in steps."""
        await self.clock.run_for(seconds, step=step)

    def owners(self) -> dict[str, str]:
        """Duty -> owner node, as the store says now."""
        return {
            k[len(DUTIES):]: Owner.decode(k[len(DUTIES):], kv).node
            for k, kv in self.store.snapshot(DUTIES).items()
        }

    def running(self) -> dict[str, list[str]]:
        """Duty -> nodes where it runs right now (more than one: a G1 breach)."""
        out: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            for duty in node.runners:
                out.setdefault(duty, []).append(name)
        return out

    async def record(self, name: str) -> dict[str, Any]:
        """Node ``name``'s membership record as stored."""
        kv = await self.store.get(f"nodes/{name}")
        assert kv is not None, f"no record for node {name}"
        data: dict[str, Any] = json.loads(kv.value)
        return data

    async def aclose(self) -> None:
        """Close every node, then the store. Idempotent. A link still broken
        (blackholed, answers dropped) is aborted first, so calls hanging on it
        fail instead of waiting for a heal that never comes; healthy links
        stay up so their nodes close gracefully."""
        for link in self.links.values():
            if link.mode == "blackhole" or link.acks_dropped:
                link.abort()
        for node in list(self.nodes.values()):
            await node.aclose()
        await self.store.aclose()
