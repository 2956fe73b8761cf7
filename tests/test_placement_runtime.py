"""Placement rules through real Nodes (memory store, fake clock): a preferred
owner gets its duty back after rebalance_delay; a rolling upgrade with
prefer_newest_version moves each singleton at most once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shoal.config import NodeConfig, load_config
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
