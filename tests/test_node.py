"""Node runtime on the memory store with a fake clock: every guarantee row."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from typing import Any

import pytest

from shoal.errors import DutyLost, NameTaken
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.store.protocol import Put
from shoal.testing.clock import FixedRandom
from shoal.testing.cluster import SimCluster

TTL = 6


class Cluster(SimCluster):
    """The shared fake-clock harness (shoal.testing.cluster) with this file's TTL."""

    def __init__(self, app: App | None = None, **defaults: Any) -> None:
        super().__init__(app, **{"ttl": TTL, **defaults})


@pytest.fixture
def sim_cluster_class() -> type[SimCluster]:
    """``cluster_factory`` (shoal.testing.pytest_plugin) builds this file's Cluster."""
    return Cluster


def managers_app(n: int = 12) -> App:
    app = App("t")
    for i in range(n):
        app.duty(f"m{i}")(_forever)
    return app


async def _forever(ctx: DutyContext) -> None:
    while await ctx.sleep(1.0):
        pass


def assert_single_owners(c: Cluster) -> None:
    for duty, nodes in c.running().items():
        assert len(nodes) == 1, f"{duty} runs on {nodes}"


async def test_balanced_distribution_after_rebalance_delay(cluster_factory: Any) -> None:
    c = cluster_factory(managers_app(12))
    await c.add("a")
    await c.run(1.0)
    assert set(c.owners().values()) == {"a"} and len(c.owners()) == 13
    await c.add("b")
    await c.add("c")
    delay = c.defaults["rebalance_delay"]
    await c.run(delay - 0.3)  # membership stable for less than rebalance_delay
    assert set(c.owners().values()) == {"a"}, "a duty moved before rebalance_delay"
    await c.run(5.0)
    counts = Counter(c.owners()[f"m{i}"] for i in range(12))
    assert sorted(counts.values()) == [4, 4, 4]
    assert_single_owners(c)
    assert sum(len(v) for v in c.running().values()) == 13  # 12 managers + leader
    assert len({n.leader for n in c.nodes.values()}) == 1


async def test_crash_of_owner_moves_duties_after_ttl(cluster_factory: Any) -> None:
    c = cluster_factory(managers_app(6))
    a = await c.add("a")
    await c.add("b")
    await c.run(5.0)
    a_duties = [d for d, n in c.owners().items() if n == "a"]
    assert a_duties
    await a.abandon()  # crash: no handover, lease left to expire
    del c.nodes["a"]
    await c.run(TTL - 1.5)
    assert all(c.owners().get(d) in (None, "a") for d in a_duties)  # lease still alive
    await c.run(3.0)  # TTL passed: the store expired a's lease
    owners = c.owners()
    assert all(owners[d] == "b" for d in a_duties)
    assert set(c.running()) == set(owners)


async def test_partition_stops_duties_before_the_lease_expires(cluster_factory: Any) -> None:
    log: list[tuple[float, str, str]] = []
    app = App("t")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        log.append((ctx.clock.monotonic(), ctx.node, "start"))
        try:
            await ctx.stopping.wait()
        finally:
            log.append((ctx.clock.monotonic(), ctx.node, "stop"))

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await c.run(1.0)
    first = c.owners()["job"]
    other = "b" if first == "a" else "a"
    last = c.links[first].lease_acks[-1]  # the last acknowledged keep-alive
    c.links[first].blackhole()  # partition: keep-alives hang
    await c.run(TTL + 2.0)
    assert c.nodes[first].phase == "LOST"
    assert c.owners()["job"] == other
    stops = [t for t, n, e in log if n == first and e == "stop"]
    starts = [t for t, n, e in log if n == other and e == "start"]
    margin = c.defaults["safety_margin"]
    # G1: stopped by send time + TTL - margin, i.e. before the store could expire the
    # lease (>= TTL after it got that keep-alive); the other node started only after that
    assert stops and starts
    assert stops[0] <= last.sent + TTL - margin < last.applied + TTL <= starts[0]
    # heal: the partitioned node rejoins without a restart
    c.links[first].heal()
    await c.run(3.0)
    assert c.nodes[first].phase == "ACTIVE"
    assert c.nodes[first].name in c.nodes[other].members
    assert_single_owners(c)


async def test_store_outage_then_rejoin(cluster_factory: Any) -> None:
    c = cluster_factory(managers_app(4))
    a = await c.add("a")
    await c.run(2.0)
    c.links["a"].cut()
    await c.run(2.5)  # the next keep-alive (every TTL/3) fails
    assert a.phase == "SUSPENDED"
    assert a.runners  # duties keep running until the local deadline
    await c.run(TTL)
    assert a.phase in ("LOST", "JOINING") and not a.runners
    c.links["a"].heal()
    # rejoin attempts wait a jittered back-off of at most retry_backoff_max
    await c.run(a.settings.retry_backoff_max + 1.0)
    assert a.phase == "ACTIVE"
    assert len(a.runners) == 5 and a.counters["rejoins"] == 1


async def test_fencing_refuses_a_superseded_owner(cluster_factory: Any) -> None:
    contexts: list[DutyContext] = []
    app = App("t")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        contexts.append(ctx)
        await ctx.put("state/out", ctx.node.encode())
        await ctx.stopping.wait()

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await c.run(1.0)
    old = contexts[-1]
    c.links[old.node].blackhole()
    await c.run(TTL + 2.0)
    new = contexts[-1]
    assert new.node != old.node and new.token > old.token
    c.links[old.node].heal()
    with pytest.raises(DutyLost):  # a paused process waking up late: its write is refused
        await old.put("state/out", b"stale")
    assert (await c.store.get("state/out")).value == new.node.encode()  # type: ignore[union-attr]


async def test_duplicate_node_name_is_refused(cluster_factory: Any) -> None:
    c = cluster_factory(managers_app(1))
    await c.add("a")
    with pytest.raises(NameTaken, match="'a' is held by a live node"):
        await c.add("a")


async def test_colocated_duties_move_together(cluster_factory: Any) -> None:
    app = App("t")
    app.duty("import:{engine}", for_each="engines")(_forever)
    app.duty("event-import:{engine}", for_each="engines", with_duty="import:{engine}")(_forever)
    app.duty("cleanup:{engine}", for_each="engines", with_duty="event-import:{engine}")(_forever)
    c = cluster_factory(app)
    params = {"engines": ["e1", "e2", "e3"]}
    for n in ("a", "b", "c"):
        await c.add(n, params=params)
    await c.run(6.0)
    owners = c.owners()
    for e in params["engines"]:
        assert owners[f"import:{e}"] == owners[f"event-import:{e}"] == owners[f"cleanup:{e}"]
    victim = owners["import:e1"]
    await c.nodes[victim].drain()
    await c.run(6.0)
    owners = c.owners()
    assert owners["import:e1"] != victim
    assert owners["import:e1"] == owners["event-import:e1"] == owners["cleanup:e1"]
    assert_single_owners(c)


async def test_disabled_duty_and_leader_only_on_can_lead(cluster_factory: Any) -> None:
    app = managers_app(0)
    app.duty("rule-engine")(_forever)
    app.leader_duty("certificate-renewal")(_forever)
    c = cluster_factory(app)
    await c.add("a", disabled=("rule-engine",), can_lead=False)
    await c.run(3.0)
    assert "rule-engine" not in c.owners() and "leader" not in c.owners()
    await c.add("b")
    await c.run(5.0)
    owners = c.owners()
    assert owners["rule-engine"] == "b" and owners["leader"] == "b"
    assert owners["certificate-renewal"] == "b"


async def test_graceful_drain_hands_over_quickly(cluster_factory: Any) -> None:
    c = cluster_factory(managers_app(6))
    a = await c.add("a")
    await c.add("b")
    await c.run(5.0)
    await a.drain()
    await c.run(0.2)  # a few round-trips, far below the TTL
    assert set(c.owners().values()) == {"b"} and len(c.owners()) == 7
    assert "a" not in c.nodes["b"].members


async def test_others_see_the_draining_flag_while_a_slow_duty_stops(
    cluster_factory: Any,
) -> None:
    """The draining flag is published while the duties stop (others stop placing
    on the node), and the revoke follows once they have stopped, not earlier."""
    app = App("t")

    @app.duty("slow")
    async def slow(ctx: DutyContext) -> None:
        await ctx.stopping.wait()
        await ctx.clock.sleep(2.0)  # a clean but slow stop

    c = cluster_factory(app)
    a = await c.add("a", drain_timeout=5.0)
    b = await c.add("b")
    await c.run(3.0)
    assert c.owners().get("slow") == "a"
    drain = asyncio.create_task(a.drain())
    await c.run(1.0)
    assert b.members["a"].draining and c.owners().get("slow") == "a"  # still stopping
    await c.run(1.5)
    await drain
    await c.run(0.2)
    assert "a" not in b.members and c.owners().get("slow") == "b"


async def test_a_quick_drain_revokes_without_publishing_the_flag_first(
    cluster_factory: Any,
) -> None:
    """Duties that stop within FLAG_AFTER: no draining flag is written; the revoke
    is the one write the others see (record and owner keys gone together)."""
    app = App("t")

    @app.duty("quick")
    async def quick(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    c = cluster_factory(app)
    a = await c.add("a")
    b = await c.add("b")
    await c.run(3.0)
    assert c.owners().get("quick") == "a"
    seen = b.subscribe()
    await a.drain()
    await c.run(0.2)
    events = []
    while (ev := seen.get_nowait()) is not None:
        events.append((ev.kind, ev.name))
    assert ("left", "a") in events and ("updated", "a") not in events, events
    assert "a" not in b.members and c.owners().get("quick") == "b"


async def test_crashing_duty_is_restarted_with_backoff(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shoal.aio._retry._random", FixedRandom(0.5))
    calls: list[float] = []
    app = App("t")

    @app.duty("flaky")
    async def flaky(ctx: DutyContext) -> None:
        calls.append(ctx.clock.monotonic())
        raise RuntimeError("boom")

    c = cluster_factory(app)
    a = await c.add("a", crash_backoff=1.0, crash_backoff_max=4.0)
    await c.run(20.0)
    gaps = [round(b - a_, 1) for a_, b in itertools.pairwise(calls)]
    # half of 1, 2, 4, 4, 4 (the jitter draws 0.5): doubles, then held at the cap
    assert gaps[:5] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert a.runners["flaky"].crashes == len(calls)
    assert a.counters["crashes"] == len(calls)


async def test_sync_duty_runs_in_a_thread(cluster_factory: Any) -> None:
    seen: list[str] = []
    wrote = threading.Event()
    loop_thread = threading.get_ident()
    app = App("t")

    @app.duty("sync-job")
    def job(ctx: DutyContext) -> None:
        seen.append(threading.current_thread().name)
        assert threading.get_ident() != loop_thread  # not on the event loop's thread
        ctx.put_sync("state/sync", b"1")
        wrote.set()
        ctx.stopping.wait_sync(5.0)

    c = cluster_factory(app)
    a = await c.add("a")
    await c.run(0.5)
    assert await asyncio.to_thread(wrote.wait, 10)  # the loop stays free meanwhile
    assert len(seen) == 1 and seen[0] != threading.current_thread().name
    assert (await c.store.get("state/sync")).value == b"1"  # type: ignore[union-attr]
    await a.drain()


async def test_superseded_sync_and_txn_writes_are_refused(cluster_factory: Any) -> None:
    """G2 for every fenced path of a context: ``put``, ``txn`` and ``put_sync``."""
    contexts: list[DutyContext] = []
    app = App("t")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        contexts.append(ctx)
        await ctx.stopping.wait()

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await c.run(1.0)
    old = contexts[-1]
    await old.txn([], [Put("state/t", b"ok")])  # while it owns the duty: accepted
    c.links[old.node].blackhole()
    await c.run(TTL + 2.0)
    assert contexts[-1].node != old.node
    c.links[old.node].heal()
    with pytest.raises(DutyLost):
        await old.txn([], [Put("state/t", b"stale")])
    with pytest.raises(DutyLost):
        await asyncio.to_thread(old.put_sync, "state/t", b"stale")
    assert (await c.store.get("state/t")).value == b"ok"  # type: ignore[union-attr]


async def test_duty_writes_fenced_state_through_its_context(cluster_factory: Any) -> None:
    app = App("t")

    @app.duty("writer")
    async def writer(ctx: DutyContext) -> None:
        await ctx.state.put("jobs", "last", {"node": ctx.node}, guard=ctx.guard())
        await ctx.stopping.wait()

    c = cluster_factory(app)
    a = await c.add("a")
    await c.run(2.0)
    doc = a.state.get("jobs", "last")
    assert doc is not None and doc.value == {"node": "a"}


async def test_a_duty_being_handed_over_stops_when_the_lease_is_lost(
    cluster_factory: Any,
) -> None:
    """G1 (found by the chaos run): a duty in a graceful stop (rebalance) that
    ignores ctx.stopping is cancelled at once when its node loses the lease."""
    running: dict[str, list[str]] = {}
    names = [f"d{i}" for i in range(6)]

    async def stubborn(ctx: DutyContext) -> None:
        running.setdefault(ctx.name, []).append(ctx.node)
        try:
            while True:  # noqa: ASYNC110 - stuck in a call that never looks at ctx.stopping
                await asyncio.sleep(0.01)
        finally:
            running[ctx.name].remove(ctx.node)

    app = App("t")
    for name in names:
        app.duty(name)(stubborn)
    c = cluster_factory(app)
    a = await c.add("a", drain_timeout=30.0, grace=1.0)
    await c.run(2.0)
    await c.add("b", drain_timeout=30.0, grace=1.0)
    releasing: list[str] = []
    for _ in range(100):
        await c.run(0.1)
        releasing = [d for d in names if d not in a.runners and running.get(d) == ["a"]]
        if releasing:
            break
    assert releasing, "a never started a handover"
    c.links["a"].blackhole()  # cut off while waiting for the duty to stop
    doubles: dict[str, list[str]] = {}
    for _ in range(120):
        await c.run(0.1)
        doubles = {d: list(v) for d, v in running.items() if len(v) > 1}
        if doubles:
            break
    assert a.phase in ("LOST", "JOINING")
    assert not doubles, f"two nodes run {doubles}"
    for node in list(c.nodes.values()):  # stubborn duties: do not wait for a graceful stop
        await node.abandon()
    c.nodes.clear()
