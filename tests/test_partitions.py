"""Partitioned duties on the memory store with a fake clock (harness as in test_node.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import pytest

from shoal.errors import ConfigError
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.workers import forget_partition_count
from shoal.store.protocol import EventType
from shoal.testing.cluster import SimCluster

TTL = 6
GRACE = 1.0
PARTS = 64


class Cluster(SimCluster):
    def __init__(self, app: App | None = None, **defaults: Any) -> None:
        super().__init__(app, **{"ttl": TTL, "grace": GRACE, **defaults})

    def partition_owners(self) -> dict[str, str]:
        return {d: n for d, n in self.owners().items() if d.startswith("ingest/")}


@pytest.fixture
def sim_cluster_class() -> type[SimCluster]:
    """``cluster_factory`` (shoal.testing.pytest_plugin) builds this file's Cluster."""
    return Cluster


SEEN: dict[str, tuple[int | None, Any]] = {}


def partitioned_app(count: int = PARTS, roles: tuple[str, ...] = ()) -> App:
    app = App("t")

    @app.duty("ingest", partitions=count, roles=list(roles))
    async def ingest(ctx: DutyContext) -> None:
        SEEN[ctx.name] = (ctx.partition, ctx.item)
        await ctx.stopping.wait()

    return app


async def three_nodes(c: Cluster, **kw: Any) -> None:
    for name in ("a", "b", "c"):
        await c.add(name, **kw)
        await c.run(0.5)
    await c.run(5.0)


async def recorded_count(c: Cluster) -> bytes | None:
    kv = await c.store.get("meta/partitions/ingest")
    return kv.value if kv is not None else None


def assert_single_owners(c: Cluster) -> None:
    for duty, nodes in c.running().items():
        assert len(nodes) == 1, f"{duty} runs on {nodes}"


def test_declaration_expands_to_numbered_singletons() -> None:
    duties = partitioned_app(4).expand({})
    parts = [d for d in duties if d.family == "ingest"]
    assert [d.name for d in parts] == ["ingest/0", "ingest/1", "ingest/2", "ingest/3"]
    assert [(d.partition, d.item) for d in parts] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    app = App("t")
    with pytest.raises(ValueError, match="partitions must be between 1"):
        app.duty("x", partitions=0)
    with pytest.raises(ValueError, match="not both"):
        app.duty("x:{e}", partitions=2, for_each="engines")
    with pytest.raises(ValueError, match="with_duty= is not supported"):
        app.duty("x", partitions=2, with_duty="leader")


async def test_64_partitions_over_3_nodes_end_21_21_22(cluster_factory: Any) -> None:
    SEEN.clear()
    c = cluster_factory(partitioned_app())
    await three_nodes(c)
    owners = c.partition_owners()
    assert len(owners) == PARTS
    assert sorted(Counter(owners.values()).values()) == [21, 21, 22]
    assert_single_owners(c)
    assert all(SEEN[f"ingest/{i}"] == (i, i) for i in range(PARTS))  # ctx.partition, ctx.item


async def test_weights_are_respected(cluster_factory: Any) -> None:
    c = cluster_factory(partitioned_app())
    for name, weight in (("a", 2.0), ("b", 1.0), ("c", 1.0)):
        await c.add(name, weight=weight)
        await c.run(0.5)
    await c.run(5.0)
    assert Counter(c.partition_owners().values()) == {"a": 32, "b": 16, "c": 16}


async def test_a_join_moves_about_a_quarter_and_nothing_twice(cluster_factory: Any) -> None:
    c = cluster_factory(partitioned_app())
    await three_nodes(c)
    before = c.partition_owners()
    puts: list[tuple[str, str]] = []  # (partition, new owner) for every ownership write

    async def follow() -> None:
        async for ev in c.store.watch("duties/ingest/"):
            if ev.type is EventType.PUT:
                puts.append((ev.kv.key[len("duties/"):], json.loads(ev.kv.value)["node"]))

    watcher = asyncio.create_task(follow())
    await c.clock.settle()
    await c.add("d")
    await c.run(10.0)  # rebalance_delay 3 s, then handovers
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    after = c.partition_owners()
    assert len(after) == PARTS
    moved = {p for p in after if after[p] != before[p]}
    assert 12 <= len(moved) <= 22, len(moved)
    assert Counter(after[p] for p in moved)["d"] == 16  # mostly towards the new node
    per_partition = Counter(p for p, _ in puts)
    assert set(per_partition) == moved  # nothing else was re-acquired...
    assert max(per_partition.values()) == 1  # ...and nothing moved twice
    assert sorted(Counter(after.values()).values()) == [16, 16, 16, 16]
    assert_single_owners(c)


async def test_dead_node_partitions_are_reowned_within_ttl_plus_grace(
    cluster_factory: Any,
) -> None:
    c = cluster_factory(partitioned_app())
    await three_nodes(c)
    victim = c.nodes.pop("b")
    lost = {p for p, n in c.partition_owners().items() if n == "b"}
    assert len(lost) >= 21
    await victim.abandon()  # a crash without the reaper: the lease expires by TTL
    took = None
    for step in range(int((TTL + GRACE) * 10) + 1):
        owners = c.partition_owners()
        if all(owners.get(p) in ("a", "c") for p in lost):
            took = step / 10
            break
        await c.run(0.1)
    assert took is not None, "partitions of the dead node not re-owned within TTL + grace"
    assert TTL - 3 < took <= TTL + GRACE
    assert len(c.partition_owners()) == PARTS
    assert_single_owners(c)


async def test_partitions_only_on_nodes_with_the_role(cluster_factory: Any) -> None:
    c = cluster_factory(partitioned_app(12, roles=("ingest",)))
    await c.add("front", roles=("frontend",))
    await c.add("i1", roles=("ingest",))
    await c.add("i2", roles=("ingest",))
    await c.run(6.0)
    assert Counter(c.partition_owners().values()) == {"i1": 6, "i2": 6}


async def test_a_different_partition_count_is_refused(cluster_factory: Any) -> None:
    c = cluster_factory(partitioned_app(64))
    await c.add("a")
    await c.run(1.0)
    assert await recorded_count(c) == b"64"
    with pytest.raises(ConfigError) as info:
        await c.add("b", app=partitioned_app(32))
    message = str(info.value)
    for part in ("'ingest'", "partitions=32", "with 64 partitions", "stop every node",
                 "meta/partitions/ingest", "docs/scaling.md"):
        assert part in message, (part, message)
    await c.run(1.0)
    assert "b" not in c.nodes["a"].members  # refused before joining
    assert (await c.store.get("nodes/b")) is None
    # the same count is fine
    await c.add("c", app=partitioned_app(64))
    # the documented procedure: stop every node, forget the count, restart with the new one
    with pytest.raises(ConfigError, match=r"while live nodes declare it \(a, c\)"):
        await forget_partition_count(c.store, "ingest")
    for name in ("a", "c"):
        await c.nodes.pop(name).aclose()
    assert await forget_partition_count(c.store, "ingest")
    await c.add("b", app=partitioned_app(32))
    await c.run(3.0)
    assert len(c.partition_owners()) == 32
    assert await recorded_count(c) == b"32"
