"""Duties that follow data (for_each_doc) on SimCluster with a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shoal.core.placement import Placement
from shoal.primitives.ownership import Owner
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.plan import Release, Stop, View, plan
from shoal.testing.cluster import SimCluster

TTL = 6


@pytest.fixture
async def cluster_factory() -> AsyncIterator[Callable[[App], SimCluster]]:
    made: list[SimCluster] = []

    def make(app: App) -> SimCluster:
        c = SimCluster(app, ttl=TTL, grace=1.0)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


def sites_app(seen: dict[str, list[Any]]) -> App:
    app = App("t")

    @app.duty("site:{key}", for_each_doc="sites")
    async def site(ctx: DutyContext) -> None:
        seen.setdefault(ctx.name, []).append(ctx.item)
        async for value in ctx.changes():
            seen[ctx.name].append(value)

    return app


def site_owners(c: SimCluster) -> dict[str, str]:
    return {d: n for d, n in c.owners().items() if d.startswith("site:")}


def running_sites(c: SimCluster) -> dict[str, list[str]]:
    return {d: ns for d, ns in c.running().items() if d.startswith("site:")}


async def test_a_duty_per_document_appears_and_goes_live(cluster_factory: Any) -> None:
    seen: dict[str, list[Any]] = {}
    c = cluster_factory(sites_app(seen))
    a = await c.add("a")
    await c.add("b")
    await c.add("c")
    await c.run(2.0)
    assert site_owners(c) == {}
    for i in range(9):
        await a.state.put("sites", f"s{i}", {"host": f"h{i}"})
    await c.run(5.0)
    owners = site_owners(c)
    assert sorted(owners) == [f"site:s{i}" for i in range(9)]
    assert len(set(owners.values())) == 3  # spread over the nodes
    assert all(len(ns) == 1 for ns in running_sites(c).values())
    assert seen["site:s3"] == [{"host": "h3"}]
    # a change reaches the running duty through ctx.changes()
    await a.state.put("sites", "s3", {"host": "new"})
    await c.run(1.0)
    assert seen["site:s3"] == [{"host": "h3"}, {"host": "new"}]
    # deleting a document stops the duty and releases its key, everywhere
    await a.state.delete("sites", "s3")
    await c.run(2.0)
    assert "site:s3" not in site_owners(c) and "site:s3" not in running_sites(c)
    assert len(site_owners(c)) == 8


async def test_family_switch_keeps_data_duties_off_a_node(cluster_factory: Any) -> None:
    seen: dict[str, list[Any]] = {}
    c = cluster_factory(sites_app(seen))
    a = await c.add("a", disabled=("site:*",))
    await c.add("b")
    for i in range(6):
        await a.state.put("sites", f"s{i}", {"n": i})
    await c.run(5.0)
    assert set(site_owners(c).values()) == {"b"} and len(site_owners(c)) == 6


async def test_documents_added_and_removed_during_a_rebalance(cluster_factory: Any) -> None:
    seen: dict[str, list[Any]] = {}
    c = cluster_factory(sites_app(seen))
    a = await c.add("a")
    for i in range(10):
        await a.state.put("sites", f"s{i}", {"n": i})
    await c.run(3.0)
    assert set(site_owners(c).values()) == {"a"}
    await c.add("b")  # rebalance starts after rebalance_delay
    await c.run(1.0)
    for i in range(5):
        await a.state.delete("sites", f"s{i}")
    for i in range(10, 15):
        await a.state.put("sites", f"s{i}", {"n": i})
    await c.run(10.0)
    owners = site_owners(c)
    assert sorted(owners) == sorted(f"site:s{i}" for i in range(5, 15))
    assert set(owners.values()) == {"a", "b"}
    running = running_sites(c)
    assert sorted(running) == sorted(owners) and all(len(v) == 1 for v in running.values())
    assert all(running[d] == [n] for d, n in owners.items())


async def test_a_document_with_a_bad_name_makes_no_duty(cluster_factory: Any) -> None:
    seen: dict[str, list[Any]] = {}
    c = cluster_factory(sites_app(seen))
    a = await c.add("a")
    await a.state.put("sites", "ok", {})
    await a.state.put("sites", "a@b", {})  # '@' is fine in a key, not in a duty name
    await c.run(3.0)
    assert sorted(site_owners(c)) == ["site:ok"]


def test_plan_releases_a_duty_that_is_no_longer_declared() -> None:
    owner = Owner("site:x", "a", 7, 0.0, 1)
    view = View(me="a", lease=1, duties=[], owners={"site:x": owner},
                placement=Placement({}, {}), running={"site:x": 7, "site:y": 9}, now=0.0)
    actions = plan(view)
    assert Release("site:x", 7, "no longer declared (document deleted)") in actions
    assert Stop("site:y", "no longer declared") in actions


def test_declaration_errors() -> None:
    app = App("t")
    with pytest.raises(ValueError, match="no \\{key\\} placeholder"):
        app.duty("site", for_each_doc="sites")
    with pytest.raises(ValueError, match="neither for_each"):
        app.duty("site:{key}", for_each_doc="sites", for_each="x")


async def test_steady_state_store_traffic_does_not_grow_with_documents(
    cluster_factory: Any,
) -> None:
    async def calls_in_steady_state(docs: int) -> int:
        seen: dict[str, list[Any]] = {}
        c = cluster_factory(sites_app(seen))
        a = await c.add("a")
        await c.add("b")
        await c.add("c")
        from shoal.runtime.state import PutDoc

        for start in range(0, docs, 100):
            await a.state.transaction(
                [PutDoc("sites", f"s{i}", {"n": i}) for i in range(start, min(docs, start + 100))]
            )
        await c.run(15.0)  # placed, acquired, rebalanced
        assert len(site_owners(c)) == docs
        before = sum(sum(link.calls.values()) for link in c.links.values())
        await c.run(20.0)
        after = sum(sum(link.calls.values()) for link in c.links.values())
        await c.aclose()
        return after - before

    few, many = await calls_in_steady_state(3), await calls_in_steady_state(300)
    assert few > 0 and many <= few + 3, (few, many)  # keep-alives only, whatever the docs
