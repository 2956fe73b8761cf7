"""Worker pools on the memory store with a fake clock (harness as in test_node.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from shoal.config import parse_config
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.settings import NodeSettings
from shoal.runtime.workers import WorkerContext
from shoal.testing.clock import FixedRandom
from shoal.testing.cluster import SimCluster

TTL = 6
POOL = "ingest-worker"


class Cluster(SimCluster):
    def __init__(self, app: App | None = None, **defaults: Any) -> None:
        super().__init__(app, **{"ttl": TTL, **defaults})

    async def record(self, name: str) -> dict[str, Any]:  # the workers part of it
        workers: dict[str, Any] = (await super().record(name))["workers"]
        return workers


@pytest.fixture
def sim_cluster_class() -> type[SimCluster]:
    """``cluster_factory`` (shoal.testing.pytest_plugin) builds this file's Cluster."""
    return Cluster


class Journal:
    """What the copies did: (node, index, "start" | "stop")."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def live(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for node, index, what in self.events:
            if what == "start":
                out.setdefault(node, set()).add(index)
            else:
                out.get(node, set()).discard(index)
        return {n: s for n, s in out.items() if s}


def pool_app(journal: Journal, per_node: int = 4, needs_store: bool = False) -> App:
    app = App("t")

    @app.workers(POOL, per_node=per_node, roles=["ingest"], needs_store=needs_store)
    async def worker(ctx: WorkerContext) -> None:
        journal.events.append((ctx.node, ctx.worker_index, "start"))
        try:
            while await ctx.sleep(0.5):
                pass
        finally:
            journal.events.append((ctx.node, ctx.worker_index, "stop"))

    @app.duty("rule-engine")  # pools live alongside ordinary duties
    async def rules(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    return app


async def ingest_and_frontend(c: Cluster, **ingest_kw: Any) -> None:
    await c.add("i1", roles=("ingest",), **ingest_kw)
    await c.add("i2", roles=("ingest",))
    await c.add("f1", roles=("frontend",))
    await c.run(3.0)


def test_declaration_errors() -> None:
    app = App("t")
    app.duty("ingest")(lambda ctx: None)
    with pytest.raises(ValueError, match="declared twice"):
        app.workers("ingest", per_node=2)(lambda ctx: None)
    with pytest.raises(ValueError, match="per_node must be an int >= 1"):
        app.workers("w", per_node=0)
    with pytest.raises(ValueError, match="reserved"):
        app.workers("leader", per_node=1)


async def test_pools_run_on_every_ingest_node_and_not_on_frontends(cluster_factory: Any) -> None:
    journal = Journal()
    c = cluster_factory(pool_app(journal))
    await ingest_and_frontend(c)
    assert journal.live() == {"i1": {0, 1, 2, 3}, "i2": {0, 1, 2, 3}}
    for name in ("i1", "i2"):
        assert c.nodes[name].workers_status() == {POOL: {"running": 4, "restarts": 0}}
        assert await c.record(name) == {POOL: 4}
    assert c.nodes["f1"].workers_status() == {}
    assert await c.record("f1") == {}
    view = c.nodes["f1"].members  # the cluster view, as any node sees it
    assert dict(view["i1"].workers) == {POOL: 4} and view["f1"].workers == ()
    assert "rule-engine" in set().union(*(n.runners for n in c.nodes.values()))


async def test_per_node_override_and_disable(cluster_factory: Any) -> None:
    journal = Journal()
    c = cluster_factory(pool_app(journal))
    await ingest_and_frontend(c, per_node={POOL: 2})
    await c.add("i3", roles=("ingest",), disabled=(POOL,))
    await c.run(2.0)
    assert {n: len(s) for n, s in journal.live().items()} == {"i1": 2, "i2": 4}
    assert c.nodes["i1"].workers_status()[POOL]["running"] == 2
    assert c.nodes["i3"].workers_status() == {}
    assert await c.record("i1") == {POOL: 2}


def test_per_node_override_is_resolved_from_config() -> None:
    config = parse_config({
        "node": {"name": "n1", "roles": ["ingest"]},
        "duties": {"ingest-*": {"per_node": 2}, "other-worker": {"per_node": 3}},
    })
    settings = NodeSettings.from_config(config, workers=[POOL, "unset-worker"])
    assert settings.per_node == {POOL: 2}
    exact = parse_config({"duties": {POOL: {"per_node": 1}, "ingest-*": {"per_node": 2}}})
    assert NodeSettings.from_config(exact, workers=[POOL]).per_node == {POOL: 1}


async def test_a_crashing_worker_is_restarted_with_backoff_and_counted(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shoal.aio._retry._random", FixedRandom(0.5))
    calls: list[float] = []
    app = App("t")

    @app.workers(POOL, per_node=3)
    async def worker(ctx: WorkerContext) -> None:
        if ctx.worker_index == 1:
            calls.append(ctx.clock.monotonic())
            raise RuntimeError("boom")
        await ctx.stopping.wait()

    c = cluster_factory(app)
    writes: list[float] = []

    async def follow() -> None:
        async for _ in c.store.watch("nodes/a"):
            writes.append(c.clock.monotonic())

    watcher = asyncio.create_task(follow())
    await c.clock.settle()
    node = await c.add("a", crash_backoff=1.0)
    await c.run(8.0)
    watcher.cancel()
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(calls)]
    assert gaps[:3] == [0.5, 1.0, 2.0]  # half of 1, 2, 4: the jitter draws 0.5
    status = node.workers_status()[POOL]
    assert status == {"running": 2, "restarts": len(calls)}
    assert node.counters["crashes"] == len(calls)
    assert await c.record("a") == {POOL: 2}  # the crashing copy is not counted as running
    # the record follows the counts, rate-limited to one rewrite per second
    assert 2 <= len(writes) <= 10
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(writes[1:]))


async def test_drain_stops_workers(cluster_factory: Any) -> None:
    journal = Journal()
    c = cluster_factory(pool_app(journal))
    await ingest_and_frontend(c)
    await c.nodes["i1"].drain()
    await c.run(0.5)
    assert journal.live() == {"i2": {0, 1, 2, 3}}
    assert c.nodes["i1"].workers_status() == {POOL: {"running": 0, "restarts": 0}}
    assert "i1" not in c.nodes["i2"].members


async def test_workers_keep_running_through_a_store_outage(cluster_factory: Any) -> None:
    journal = Journal()
    c = cluster_factory(pool_app(journal))
    await ingest_and_frontend(c)
    c.links["i1"].blackhole()  # partition: keep-alives hang
    await c.run(TTL + 1.0)
    assert c.nodes["i1"].phase == "LOST" and not c.nodes["i1"].runners  # duties stopped
    assert journal.live()["i1"] == {0, 1, 2, 3}  # the pool needs no coordination: it runs
    assert not [e for e in journal.events if e[0] == "i1" and e[2] == "stop"]
    c.links["i1"].heal()
    await c.run(4.0)
    assert c.nodes["i1"].phase == "ACTIVE"
    assert journal.live()["i1"] == {0, 1, 2, 3}
    assert [e for e in journal.events if e[0] == "i1" and e[2] == "start"] == [
        ("i1", i, "start") for i in range(4)]  # never restarted
    assert await c.record("i1") == {POOL: 4}


async def test_lost_node_stops_needs_store_workers_and_restarts_them_on_rejoin(
    cluster_factory: Any,
) -> None:
    journal = Journal()
    c = cluster_factory(pool_app(journal, needs_store=True))
    await ingest_and_frontend(c)
    c.links["i1"].blackhole()  # partition: keep-alives hang
    await c.run(TTL + 1.0)
    assert c.nodes["i1"].phase == "LOST"
    assert "i1" not in journal.live()
    c.links["i1"].heal()
    await c.run(c.nodes["i1"].settings.retry_backoff_max + 1.0)  # a jittered rejoin back-off
    assert c.nodes["i1"].phase == "ACTIVE"
    assert journal.live()["i1"] == {0, 1, 2, 3}
    assert await c.record("i1") == {POOL: 4}


async def test_sync_worker_runs_in_a_thread_and_has_no_token(cluster_factory: Any) -> None:
    seen: list[tuple[int, int]] = []  # (worker index, thread id)
    both = threading.Barrier(3)  # the two workers and the test meet here
    app = App("t")

    @app.workers("sync-pool", per_node=2)
    def worker(ctx: WorkerContext) -> None:
        seen.append((ctx.worker_index, threading.get_ident()))
        with pytest.raises(TypeError, match="no fencing token"):
            ctx.put_sync("state/x", b"1")
        both.wait(10)
        while ctx.sleep_sync(0.01):
            pass

    c = cluster_factory(app)
    node = await c.add("a")
    await c.run(0.5)
    await asyncio.to_thread(both.wait, 10)  # both copies are running, each in a thread
    assert sorted(i for i, _ in seen) == [0, 1]
    threads = {tid for _, tid in seen}
    assert len(threads) == 2 and threading.get_ident() not in threads
    await node.drain()
    assert node.workers_status() == {"sync-pool": {"running": 0, "restarts": 0}}
