"""Placement rules through real Nodes (memory store, fake clock): a preferred
owner gets its duty back after rebalance_delay; a rolling upgrade with
prefer_newest_version moves each singleton at most once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shoal.config import NodeConfig, load_config
from shoal.errors import InvalidArgument
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.settings import NodeSettings
from shoal.testing.cluster import SimCluster

SINGLETONS = [f"s{i}" for i in range(8)]


def make_app(version: str) -> App:
    app = App("t", version=version)

    async def idle(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    app.duty("engine", sticky=True)(idle)
    for name in SINGLETONS:
        app.duty(name)(idle)
    return app


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    c = SimCluster(make_app("1.0"), rebalance_delay=3.0)
    yield c
    await c.aclose()


async def test_preferred_owner_fails_back_after_rebalance_delay(cluster: SimCluster) -> None:
    await cluster.add("standby")
    await cluster.run(2.0)
    assert cluster.owners()["engine"] == "standby"  # no preferred node live: standby runs it
    await cluster.add("main", prefers=("engine",))
    assert (await cluster.record("main"))["prefers"] == ["engine"]
    await cluster.run(2.0)
    assert cluster.owners()["engine"] == "standby"  # sticky, and rebalance_delay not over
    await cluster.run(3.0)
    assert cluster.owners()["engine"] == "main"  # failed back
    await cluster.nodes.pop("main").aclose()
    await cluster.run(1.0)
    assert cluster.owners()["engine"] == "standby"


async def test_rolling_upgrade_moves_each_singleton_at_most_once(cluster: SimCluster) -> None:
    names = ["a", "b", "c"]
    for name in names:
        await cluster.add(name, newest_version=True)
    await cluster.run(6.0)
    assert set(cluster.owners()) >= set(SINGLETONS)
    last = {d: o for d, o in cluster.owners().items() if d in SINGLETONS}
    voluntary: Counter[str] = Counter()

    async def watch(seconds: float) -> None:
        for _ in range(int(seconds / 0.1)):
            await cluster.run(0.1)
            for duty, owner in cluster.owners().items():
                if duty in last and owner != last[duty]:
                    if last[duty] in cluster.nodes:  # left a live owner: a chosen move
                        voluntary[duty] += 1
                    last[duty] = owner
            for duty in [d for d, o in last.items() if o not in cluster.nodes]:
                last[duty] = "(gone)"  # its owner stopped: the next move is forced

    for name in names:  # restart each node onto 2.0, one at a time
        await cluster.nodes.pop(name).aclose()
        await watch(2.0)
        await cluster.add(name, app=make_app("2.0"), newest_version=True)
        assert (await cluster.record(name))["app_version"] == "2.0"
        await watch(6.0)
    assert max(voluntary.values(), default=0) <= 1, voluntary
    assert sum(voluntary.values()) >= 1  # the first upgraded node drew singletons
    owners = cluster.owners()
    assert all(owners[d] in names for d in SINGLETONS)


def test_settings_resolve_preferences_version_rule_and_batch_size() -> None:
    config = NodeConfig(
        node={"name": "node-a", "prefer_newest_version": True},
        duties={"engine-x": {"prefer": True}, "engine-y": {"prefer": ["node-a", "node-b"]},
                "engine-z": {"prefer": ["node-b"]}, "import:*": {"prefer": ["node-a"]}},
    )
    settings = NodeSettings.from_config(config)
    assert settings.prefers == ("engine-x", "engine-y", "import:*")
    assert settings.newest_version
    assert settings.max_txn_ops >= 128  # sqlite: no store limit, large batches
    etcd = NodeConfig(store={"backend": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}})
    assert NodeSettings.from_config(etcd).max_txn_ops == 128
    env = load_config(None, env={"SHOAL__DUTIES__ENGINE__PREFER": "node-a, node-b"})
    assert env.duties["engine"].prefer == ["node-a", "node-b"]
    env = load_config(None, env={"SHOAL__DUTIES__ENGINE__PREFER": "true"})
    assert env.duties["engine"].prefer is True


def family_app(families: list[tuple[str, int]]) -> App:
    app = App("t")

    async def idle(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    for family, count in families:
        app.duty(family, partitions=count)(idle)
    return app


async def test_nodes_of_two_releases_never_leave_a_partition_free() -> None:
    """During a rolling upgrade that adds a family, the nodes declare different
    duties, so their balanced shares differ: here n2 and n3 (families a and b)
    want partition b/… on n1, while n1 (b only) wants it elsewhere. Before the
    fallback hold, the partition was handed to n1, left free for `grace`, taken
    back by the fallback and handed over again, for ever: free 99 % of the time
    (found by the 5-run check of tests/test_rolling_repartition.py). Now the
    node that took it by the fallback keeps it until membership changes."""
    both, b_only = family_app([("a", 16), ("b", 32)]), family_app([("b", 32)])
    c = SimCluster(None, ttl=6, grace=1.0, rebalance_delay=1.0)
    try:
        await c.add("n2", both)
        await c.add("n3", both)
        await c.run(5)
        await c.add("n1", b_only)
        await c.run(15)
        for _ in range(20):
            await c.run(0.5)
            owners = c.owners()
            b = {d: n for d, n in owners.items() if d.startswith("b/")}
            assert len(b) == 32, sorted({f"b/{i}" for i in range(32)} - set(b))
            assert {d: n for d, n in owners.items() if d.startswith("a/")}.keys() == {
                f"a/{i}" for i in range(16)}
            assert "n1" not in {n for d, n in owners.items() if d.startswith("a/")}
            assert all(c.running().get(d) == [n] for d, n in owners.items())
        # n1 took most of its share of b (10-11); a partition kept by its fallback
        # owner stays there until membership changes, so a few may be short
        assert Counter(b.values())["n1"] >= 8, Counter(b.values())
        # membership changes: n1 leaves, b/… is rebalanced again and all is owned
        await c.nodes["n1"].aclose()
        await c.run(10)
        assert len([d for d in c.owners() if d.startswith("b/")]) == 32
    finally:
        await c.aclose()


def test_an_app_version_must_be_a_short_plain_string() -> None:
    for good in ("", "2.4.1", "1.0.0-rc.1+build.7", "v2", "x" * 64):
        assert App("t", version=good).version == good
    for bad in ("x" * 65, "1.0 beta", "a\nb", "-1", 5, None):
        with pytest.raises(InvalidArgument, match=r"^App version .*: use 1 to 64 letters"):
            App("t", version=bad)  # type: ignore[arg-type]
