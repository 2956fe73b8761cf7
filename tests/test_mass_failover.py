"""Mass failover through real Nodes (memory store, fake clock): a dead node's
partitions are re-owned with at most ONE placement and ONE batched transaction
per survivor (none when the spare placement for that loss was ready); the
survivors' acquisitions, which only confirm the placement, trigger no placement
of their own (benchmarks/scale.py measures the real thing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shoal.core.placement import DutySpec, NodeInfo, place
from shoal.errors import StoreUnavailable
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Delete
from shoal.testing.cluster import SimCluster

PARTS = 200
NODES = ["n1", "n2", "n3", "n4", "n5"]
TICK = 0.5  # the reconcile tick: min(grace, rebalance_delay) / 2


def partitioned_app() -> App:
    app = App("t")

    @app.duty("p", partitions=PARTS)
    async def part(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    return app


def count_txns(node: Node) -> list[int]:
    """Count the store transactions ``node`` sends (its link's ``txn``)."""
    calls = [0]
    inner: Callable[..., Awaitable[Any]] = node.store.txn

    async def txn(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await inner(*args, **kwargs)

    node.store.txn = txn  # type: ignore[method-assign]
    return calls


def fresh_wanted(c: SimCluster, live: list[str]) -> dict[str, str | None]:
    """The placement computed from scratch from the store's current owners."""
    specs = [DutySpec(f"p/{i}", family="p") for i in range(PARTS)]
    specs.append(DutySpec("leader", sticky=True, leader_bound=True))
    nodes = [NodeInfo(n, frozenset()) for n in live]
    return place(specs, nodes, c.owners(), balanced=True).wanted


async def settled_cluster() -> SimCluster:
    """Five nodes, joined, balanced and settled; spares computed inline."""
    c = SimCluster(partitioned_app(), grace=1.0, rebalance_delay=1.0)
    for name in NODES:
        node = await c.add(name)
        node._duties.offload_spares = False  # deterministic under the fake clock
    await c.run(4.0)  # joined, balanced (rebalance_delay), settled
    return c


async def crash(c: SimCluster, victim: str) -> None:
    """``victim`` crashes (nothing released) and its reaper revokes its lease at once."""
    dead = c.nodes.pop(victim)
    session = dead.session
    assert session is not None
    await dead.abandon()
    await c.store.revoke(session.lease)


@pytest.mark.parametrize("ahead", ["spares", "none", "runner-ups"])
async def test_a_dead_nodes_partitions_take_one_placement_and_one_txn_per_survivor(
    ahead: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is computed ahead while quiet: spares (small clusters), nothing, or
    (large ones) the placer's runner-ups, here switched on at this size."""
    spares = ahead == "spares"
    if not spares:
        monkeypatch.setattr("shoal.runtime.placer.SPARE_MAX_NODES", 0)
    if ahead == "runner-ups":
        monkeypatch.setattr("shoal.runtime.placer.WARM_MIN_DUTIES", 0)
    c = SimCluster(partitioned_app(), grace=1.0, rebalance_delay=1.0)
    try:
        for name in NODES:
            node = await c.add(name)
            node._duties.offload_spares = False  # deterministic under the fake clock
        await c.run(4.0)  # joined, balanced (rebalance_delay), settled
        owners = c.owners()
        assert len([d for d in owners if d.startswith("p/")]) == PARTS
        victim = max(NODES, key=lambda n: sum(1 for o in owners.values() if o == n))
        lost = {d for d, o in owners.items() if o == victim}
        assert len(lost) >= PARTS // 5
        survivors = [n for n in NODES if n != victim]
        placers = {n: c.nodes[n]._duties.placer for n in survivors}
        before = {n: p.computed for n, p in placers.items()}
        used = {n: p.spares_used for n, p in placers.items()}
        if spares:  # computed while the cluster was quiet: one per other live node
            assert all(p.spares_computed >= len(NODES) - 1 for p in placers.values())
        else:
            assert all(p.spares_computed == 0 for p in placers.values())
        engines = {n: p._engine(c.nodes[n]._duties.duties) for n, p in placers.items()}
        for n, engine in engines.items():  # warmed while quiet: every kept duty's
            kept = sum(len(k) for k in engine._kept.values())  # runner-up, or none
            assert len(engine._runner.table) == (kept if ahead == "runner-ups" else 0), n
        hits = {n: e.runner_hits for n, e in engines.items()}
        txns = {n: count_txns(c.nodes[n]) for n in survivors}

        dead = c.nodes.pop(victim)
        session = dead.session
        assert session is not None
        lease = session.lease
        await dead.abandon()  # a crash: nothing released ...
        await c.store.revoke(lease)  # ... and its reaper revokes the lease at once

        for _ in range(20):  # well inside one tick: only woken passes run
            await c.run(0.01, step=0.01)
        now = c.owners()
        assert all(now.get(d) in survivors for d in lost), "not all re-owned"
        for duty, nodes in c.running().items():
            assert len(nodes) == 1, f"{duty} runs on {nodes}"
        for n in survivors:
            placed = placers[n].computed - before[n]
            assert placed == (0 if spares else 1), f"{n} placed {placed} times for one loss"
            assert placers[n].spares_used - used[n] == (1 if spares else 0)
            assert txns[n][0] == 1, f"{n} sent {txns[n][0]} transactions"
            hit = engines[n].runner_hits - hits[n]  # the dead node's partitions: each
            assert hit == (len(lost - {"leader"}) if ahead == "runner-ups" else 0), n
        wanted = fresh_wanted(c, survivors)
        assert {d: now.get(d) for d in wanted} == wanted  # every duty on its wanted node

        await c.run(2 * TICK)  # the tick's exact pass: every duty on its wanted node,
        for n in survivors:  # so the placement is place's fixpoint: nothing placed again
            placed = placers[n].computed - before[n]
            assert placed == (0 if spares else 1), f"{n} placed {placed} times"
            assert c.nodes[n].placement().wanted == wanted
            assert txns[n][0] == 1  # nothing moved: no more writes
    finally:
        await c.aclose()


async def test_a_duty_taken_from_under_its_runner_is_stopped_at_once() -> None:
    """A PUT naming the wanted node is no mere confirmation while the duty still
    runs here: the pass runs at once and stops the local runner (G1)."""
    c = SimCluster(partitioned_app(), grace=1.0, rebalance_delay=60.0)
    try:
        n1 = await c.add("n1")
        await c.run(2.0)
        assert len(n1.runners) == PARTS + 1  # alone: every partition and the leader
        n2 = await c.add("n2")
        await c.run(1.0)  # n2 is wanted for about half, but rebalance_delay holds them
        wanted = n1.placement().wanted
        duty = sorted(d for d, w in wanted.items() if w == "n2")[0]
        assert duty in n1.runners and c.owners()[duty] == "n1"
        session = n2.session
        assert session is not None
        # n2's record replaces n1's in ONE put (as a buggy or forced writer would)
        await c.store.put(f"duties/{duty}", json.dumps({"node": "n2", "since": 0}).encode(),
                          lease=session.lease)
        await c.run(0.01, step=0.01)  # far less than a tick
        assert duty not in n1.runners
    finally:
        await c.aclose()


@pytest.mark.parametrize("record_first", [False, True])
async def test_a_survivor_waits_briefly_for_the_other_half_of_a_nodes_death(
    record_first: bool,
) -> None:
    """etcd delivers ``duties/`` and ``nodes/`` on two watches: the dead node's duties
    may be seen free before its record is seen gone, or the other way round. The
    survivors then wait for the other half (up to LEAVE_WAIT) and place with the
    spare, instead of placing for a half-seen cluster."""
    c = SimCluster(partitioned_app(), grace=1.0, rebalance_delay=1.0)
    try:
        for name in NODES:
            node = await c.add(name)
            node._duties.offload_spares = False
        await c.run(4.0)
        owners = c.owners()
        victim = "n3"
        lost = sorted(d for d, o in owners.items() if o == victim)
        survivors = [n for n in NODES if n != victim]
        placers = {n: c.nodes[n]._duties.placer for n in survivors}
        before = {n: (p.computed, p.spares_used) for n, p in placers.items()}
        dead = c.nodes.pop(victim)
        await dead.abandon()
        halves = [c.store.txn([], [Delete(f"duties/{d}") for d in lost]),
                  c.store.delete(f"nodes/{victim}")]
        if record_first:
            halves.reverse()
        await halves[0]
        await c.run(0.02, step=0.01)
        assert all(c.owners().get(d) in (None, victim) for d in lost)  # nobody placed yet
        await halves[1]  # the other half, 20 ms later
        await c.run(0.05, step=0.01)
        now = c.owners()
        assert all(now.get(d) in survivors for d in lost)
        for n, p in placers.items():
            assert (p.computed, p.spares_used) == (before[n][0], before[n][1] + 1), n
    finally:
        await c.aclose()


async def test_spares_use_a_thread_only_on_the_real_clock() -> None:
    """Under a simulated clock spares are computed inline: a worker thread's real
    duration would otherwise decide what simulated time things happen at (a
    fake-clock test of rejoin promptness failed on a loaded machine that way)."""
    c = SimCluster(App("t"))
    try:
        node = await c.add("a")
        assert node._duties.offload_spares is False
    finally:
        await c.aclose()
    real = Node(App("t"), NodeSettings(name="r"), store=MemoryStore())  # the real clock
    assert real._duties.offload_spares is True


async def test_spares_wait_for_a_joins_rebalance_then_are_computed_once() -> None:
    """Spares computed while a join's rebalance is pending would be thrown away
    when it happens (and take CPU from the other nodes' passes): they wait for
    it, then are computed for the new cluster."""
    c = SimCluster(partitioned_app(), grace=1.0, rebalance_delay=2.0)
    try:
        for name in NODES[:3]:
            node = await c.add(name)
            node._duties.offload_spares = False
        await c.run(6.0)  # balanced and settled: spares for each other node's loss
        placers = {n: c.nodes[n]._duties.placer for n in NODES[:3]}
        before = {n: p.spares_computed for n, p in placers.items()}
        assert all(v >= 2 for v in before.values())
        newcomer = await c.add("n4")
        newcomer._duties.offload_spares = False
        await c.run(1.5)  # joined, the rebalance (after 2 s) still pending
        assert any(o == "n4" for o in c.nodes["n1"].placement().wanted.values())
        assert all(o != "n4" for o in c.owners().values())
        assert {n: p.spares_computed for n, p in placers.items()} == before
        await c.run(3.0)  # the rebalance moved the newcomer's share: now settled
        assert sum(1 for o in c.owners().values() if o == "n4") >= PARTS // 4 - 1
        for n, p in placers.items():  # one spare per other live node (3), for the new cluster
            assert p.spares_computed - before[n] == 3, n
    finally:
        await c.aclose()


async def test_own_acquisitions_seen_before_the_reply_wake_no_second_pass() -> None:
    """The watch may deliver a survivor's own acquisition before the transaction's
    reply: those events only confirm what the pass in flight will run, so they wake
    no second pass (a placement and a plan over every duty, on the CPU the other
    survivors need). An acquisition that fails still wakes one."""
    c = await settled_cluster()
    try:
        owners = c.owners()
        victim = "n2"
        lost = {d for d, o in owners.items() if o == victim}
        survivors = [n for n in NODES if n != victim]
        passes = {n: [0] for n in survivors}
        for n in survivors:
            duties = c.nodes[n]._duties
            inner_pass, inner_txn = duties.reconcile, c.nodes[n].store.txn

            async def counted(*a: Any, _f: Any = inner_pass, _n: str = n, **k: Any) -> None:
                passes[_n][0] += 1
                await _f(*a, **k)

            async def late_reply(*a: Any, _f: Any = inner_txn, **k: Any) -> Any:
                res = await _f(*a, **k)
                for _ in range(10):  # the watch delivers the write first
                    await asyncio.sleep(0)
                return res

            duties.reconcile = counted  # type: ignore[method-assign]
            c.nodes[n].store.txn = late_reply  # type: ignore[method-assign]
        await crash(c, victim)
        for _ in range(20):  # well inside one tick: only woken passes run
            await c.run(0.01, step=0.01)
        assert all(c.owners().get(d) in survivors for d in lost)
        for duty, nodes in c.running().items():
            assert len(nodes) == 1, f"{duty} runs on {nodes}"
        assert {n: p[0] for n, p in passes.items()} == dict.fromkeys(survivors, 1)
    finally:
        await c.aclose()


async def test_an_acquisition_without_a_reply_wakes_a_pass_at_once() -> None:
    """The events let by while the acquisition was in flight are looked at again at
    once when it ends without a reply (here: its transaction raised after it was
    applied), not at the next tick: the duties it took run within milliseconds."""
    c = await settled_cluster()
    try:
        victim, unlucky = "n2", "n4"
        node = c.nodes[unlucky]
        inner_txn = node.store.txn
        raised = [0]

        async def no_reply(*a: Any, **k: Any) -> Any:
            res = await inner_txn(*a, **k)
            for _ in range(10):
                await asyncio.sleep(0)
            if not raised[0] and any(op.key.startswith("duties/p/") for op in a[1]):
                raised[0] += 1
                raise StoreUnavailable("the reply was lost")
            return res

        node.store.txn = no_reply  # type: ignore[method-assign]
        await crash(c, victim)
        for _ in range(5):  # far inside one tick (0.5 s)
            await c.run(0.01, step=0.01)
        assert raised[0] == 1
        mine = [d for d, o in c.owners().items() if o == unlucky]
        assert mine and all(d in node.runners for d in mine)
    finally:
        await c.aclose()
