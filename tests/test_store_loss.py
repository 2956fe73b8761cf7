"""When the store is lost (issue #12 section 1): keep serving, know what is unknown,
log the outage sparingly, come back fast, and give up when the name was taken."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.aio._outage import OutageLog
from shoal.http._view import cluster_view
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore

TTL = 6
pytestmark = pytest.mark.timeout(60)


class Cluster:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.app = App("t")

        @self.app.duty("importer")
        async def importer(ctx: DutyContext) -> None:
            await ctx.stopping.wait()

        self.nodes: list[Node] = []
        self.links: dict[Node, FaultyStore] = {}

    async def add(self, name: str) -> Node:
        link = FaultyStore(self.store)
        settings = NodeSettings(name=name, ttl=TTL, safety_margin=1.0, drain_timeout=1.0,
                                rebalance_delay=1.0, retry_backoff_max=5.0)
        node = Node(self.app, settings, store=link, clock=self.clock)
        self.nodes.append(node)
        self.links[node] = link
        await node.start()
        return node

    async def run(self, seconds: float) -> None:
        await self.clock.run_for(seconds, step=0.05)

    async def until(self, check: object, limit: float) -> float:
        """Run the fake clock until ``check()``; the fake seconds it took."""
        start = self.clock.monotonic()
        while not check():  # type: ignore[operator]
            assert self.clock.monotonic() - start < limit, "condition not reached in time"
            await self.clock.run_for(0.05, step=0.05)
        return self.clock.monotonic() - start


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    for node in c.nodes:
        await node.aclose()


async def test_ownership_is_unknown_while_the_node_is_not_active(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.run(2.0)
    view = cluster_view(a.status())
    assert view["owners_known"] is True and view["duties"][0]["owner"] in ("a", None)
    cluster.links[a].cut()
    await cluster.until(lambda: a.phase == "LOST", TTL + 1)
    assert cluster_view(a.status())["owners_known"] is False
    cluster.links[a].heal()
    await cluster.until(lambda: a.phase == "ACTIVE", 3)
    assert cluster_view(a.status())["owners_known"] is True


async def test_rejoin_after_a_long_outage_is_prompt(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.run(2.0)
    cluster.links[a].cut()
    await cluster.run(60.0)  # the back-off has long reached its maximum
    assert a.phase == "LOST"
    cluster.links[a].heal()
    took = await cluster.until(lambda: a.phase == "ACTIVE" and "importer" in a.runners, 10)
    # probes at most every second (jittered), whatever the back-off (max 5 s here);
    # then join, placement and acquisition take a few 0.05 s fake steps
    assert took <= 2.0


async def test_rejoin_revokes_the_old_lease_that_outlived_the_outage(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.until(lambda: "importer" in a.runners, 5)
    assert a.session is not None
    old = a.session.lease
    cluster.links[a].cut()
    await cluster.until(lambda: a.phase == "LOST", TTL)
    assert await cluster.store.lease_ttl(old) >= 0  # the store still holds the old lease
    cluster.links[a].heal()
    took = await cluster.until(lambda: a.phase == "ACTIVE" and "importer" in a.runners, 5)
    assert took <= 2.0 and not a.gave_up.is_set()  # not "NameTaken" by our own old record
    assert await cluster.store.lease_ttl(old) == -1


async def test_the_record_tells_when_the_node_started_and_when_it_last_registered(
    cluster: Cluster,
) -> None:
    b = await cluster.add("b")
    await cluster.run(3)
    a = await cluster.add("a")
    await cluster.until(lambda: "a" in b.members, 2)
    first = b.members["a"]
    assert first.started_at <= first.joined_at <= cluster.clock.time()
    cluster.links[a].cut()
    await cluster.until(lambda: a.phase == "LOST", TTL)
    await cluster.run(2)
    cluster.links[a].heal()
    await cluster.until(lambda: a.phase == "ACTIVE" and "a" in b.members
                        and b.members["a"].joined_at > first.joined_at, 10)
    again = b.members["a"]
    assert again.started_at == first.started_at  # the node did not restart
    assert again.joined_at >= first.joined_at + TTL  # the rejoin is stamped anew


async def test_a_node_whose_name_was_taken_gives_up(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.run(1.0)
    cluster.links[a].cut()
    await cluster.run(TTL + 2.0)  # LOST, and the store expired its lease
    twin = await cluster.add("a")  # another process took the name meanwhile
    cluster.links[a].heal()
    await cluster.until(lambda: a.gave_up.is_set(), 3)
    assert type(a.fatal).__name__ == "NameTaken" and "held by a live node" in str(a.fatal)
    assert twin.phase == "ACTIVE"


def test_an_outage_is_logged_once_then_every_30_s_then_once_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = OutageLog(logging.getLogger("t.outage"), "etcd", clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "t.outage")
    for step in range(400):  # 100 s, four watches failing every second
        now[0] = step / 4
        outage.failed(f"watch {step % 4}", "connection refused")
    for i in range(4):
        outage.recovered(f"watch {i}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "etcd unreachable (connection refused); retrying, next report in 30 s at most")
    assert [line.split(" (")[0] for line in lines[1:-1]] == [
        "etcd still unreachable after 30 s", "etcd still unreachable after 60 s",
        "etcd still unreachable after 90 s"]
    assert lines[-1] == "etcd reachable again after 99.8 s" and len(lines) == 5


# -- a real `shoal run` process -----------------------------------------------------------------
async def _lease_of(endpoints: list[str], prefix: str, name: str) -> int:
    """The live lease holding node ``name``'s record, else 0."""
    from shoal.primitives.membership import NODES
    from shoal.store.etcd import EtcdStore

    store = await EtcdStore.open(endpoints, prefix=prefix)
    try:
        kv = await store.get(NODES + name)
        if kv is None:
            return 0
        return kv.lease if await store.lease_ttl(kv.lease) >= 0 else 0
    finally:
        await store.aclose()


@pytest.mark.slow
@pytest.mark.etcd
@pytest.mark.timeout(120)
def test_shoal_run_exits_2_when_its_name_was_taken_while_it_was_paused(
    tmp_path: Path, etcd_endpoints: list[str]
) -> None:
    import asyncio

    from shoal.testing.procs import ProcCluster

    prefix = f"/names-{uuid.uuid4().hex[:8]}"  # etcd: a paused process holds no lock
    base = {"cluster": "names",
            "store": {"backend": "etcd", "etcd": {"endpoints": etcd_endpoints, "prefix": prefix}},
            "timings": {"preset": "local"}, "reaper": {"enabled": True}}
    with ProcCluster(tmp_path, base) as procs:
        first = procs.spawn("a")
        first.wait_for(r"joined cluster", timeout=60)
        first.sigstop()  # paused longer than its lease: the store expires it
        deadline = time.monotonic() + 30
        while asyncio.run(_lease_of(etcd_endpoints, prefix, "a")):
            assert time.monotonic() < deadline, "the paused node's lease never expired"
            time.sleep(0.1)
        twin = procs.spawn("a")  # another process takes the name meanwhile
        twin.wait_for(r"joined cluster", timeout=60)
        first.sigcont()
        assert first.wait_exit(30) == 2
        assert "NameTaken" in first.output() and "held by a live node" in first.output()
        assert twin.alive
