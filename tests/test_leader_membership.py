"""Leader and membership rows of docs/guarantees.md, on the fake-clock cluster: a crashed
node leaves the view after the TTL; a crashed, cut-off or draining leader is replaced, and
two nodes never lead at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.testing.cluster import SimCluster

TTL = 6
MARGIN = 1.0
INTERVAL = TTL / 3  # keep-alive period


async def _forever(ctx: DutyContext) -> None:
    await ctx.stopping.wait()


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    app = App("t")
    app.leader_duty("renewal")(_forever)  # leader-only work follows the leader
    c = SimCluster(app, ttl=TTL, safety_margin=MARGIN)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await c.run(2.0)
    yield c
    for link in c.links.values():
        link.heal()
    await c.aclose()


def leaders_running(c: SimCluster) -> list[str]:
    return c.running().get("leader", [])


async def run_checking_one_leader(c: SimCluster, seconds: float) -> None:
    for _ in range(round(seconds / 0.1)):
        await c.run(0.1)
        assert len(leaders_running(c)) <= 1, c.running()


async def test_a_crashed_node_leaves_the_view_after_the_ttl(cluster: SimCluster) -> None:
    c = cluster
    b = c.nodes["b"]
    assert set(b.members) == {"a", "b"}
    await c.nodes["a"].abandon()  # crash: nothing released, the lease left to expire
    del c.nodes["a"]
    await c.run(TTL - INTERVAL - 0.5)
    assert "a" in b.members  # the lease (last refreshed <= INTERVAL ago) still lives
    await c.run(INTERVAL + 1.0)
    assert set(b.members) == {"b"}
    assert await c.store.get("nodes/a") is None


async def test_a_crashed_leader_is_replaced_after_the_ttl(cluster: SimCluster) -> None:
    c = cluster
    old = c.owners()["leader"]
    new = "b" if old == "a" else "a"
    assert leaders_running(c) == [old] and c.nodes[new].leader == old
    await c.nodes[old].abandon()
    del c.nodes[old]
    await run_checking_one_leader(c, TTL - INTERVAL - 0.5)
    assert c.owners()["leader"] == old  # sticky: not moved while the lease lives
    await run_checking_one_leader(c, INTERVAL + 1.0)
    assert c.owners()["leader"] == new and c.nodes[new].is_leader
    assert leaders_running(c) == [new] and c.owners()["renewal"] == new


async def test_a_cut_off_leader_stops_before_a_new_one_is_elected(cluster: SimCluster) -> None:
    c = cluster
    old = c.owners()["leader"]
    new = "b" if old == "a" else "a"
    node = c.nodes[old]
    deadline = c.links[old].lease_acks[-1].sent + TTL - MARGIN  # last acknowledged send
    c.links[old].blackhole()
    stopped_at = started_at = None
    for _ in range(round((TTL + 2.0) / 0.1)):
        await c.run(0.1)
        running = leaders_running(c)
        assert len(running) <= 1, c.running()
        if stopped_at is None and old not in running:
            stopped_at = c.clock.monotonic()
        if started_at is None and new in running:
            started_at = c.clock.monotonic()
    assert stopped_at is not None and started_at is not None
    assert stopped_at <= deadline + 0.1 < deadline + MARGIN <= started_at
    assert "renewal" not in node.runners and c.owners()["renewal"] == new


async def test_drain_hands_leadership_over_within_round_trips(cluster: SimCluster) -> None:
    c = cluster
    old = c.owners()["leader"]
    new = "b" if old == "a" else "a"
    await c.nodes[old].drain()
    await c.run(0.2)  # a few round-trips, far below the TTL
    assert c.owners()["leader"] == new and leaders_running(c) == [new]
    assert c.owners()["renewal"] == new
