"""Simulated scale: N nodes and D duties on the memory store with a fake clock.

Measures (1) how long placement takes to converge after a node joins (in
simulated seconds and in real CPU seconds) and (2) store operations per
simulated second in steady state, which must not grow with the number of
duties (ownership keys hang on the node lease: keep-alive traffic only).

    python benchmarks/scale_sim.py --nodes 50 --duties 10000

``--placement`` simulates placement alone at a larger size (100 nodes x
100,000 duties): the cluster's owners move as the nodes' plans move them
(acquisitions and handovers in batches of 128 keys, a pass after every
batch), and every pass of an incremental placer is timed. A second placer
built from scratch at the end must give the very same answer, and one
from-scratch ``place()`` pass is timed for comparison. Every pass is told
which owners changed since the last (``changed=``), as the runtime's owner
table tells it (:meth:`shoal.runtime.owners.OwnerTable.changed_since`).
Phases: one more node joins; a node dies (its owners go with it); another
dies, and this time the passes are not told and compare the owners in full
(what the runtime does after a watch reload, or when its change log was cut).
Before each phase the placer's runner-ups are warmed as the runtime warms
them while the cluster is quiet (``Placer.warm``: steps of about 10,000
hashes), and the time that took is reported (not part of any pass):

    python benchmarks/scale_sim.py --placement --nodes 100 --duties 100000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from typing import Any

from shoal.core.incremental import IncrementalPlacer
from shoal.core.placement import DutySpec, NodeInfo, place
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.placer import WARM_PAIRS
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore


async def idle(ctx: DutyContext) -> None:
    await ctx.stopping.wait()


def make_app(duties: int) -> App:
    app = App("scale")
    app.duty("work:{i}", for_each="items")(idle)
    return app


async def run(nodes: int, duties: int) -> dict[str, Any]:
    clock = FakeClock()
    store = MemoryStore(clock)
    app = make_app(duties)
    params = {"items": [str(i) for i in range(duties)]}
    links: list[FaultyStore] = []
    cluster: list[Node] = []

    async def add(name: str) -> Node:
        link = FaultyStore(store)
        node = Node(app, NodeSettings(name=name, ttl=10, rebalance_delay=5.0, grace=5.0,
                                      params=params, drain_timeout=1.0),
                    store=link, clock=clock)
        await node.start()
        links.append(link)
        cluster.append(node)
        return node

    def owned() -> int:
        return len(store.snapshot("duties/"))

    def converged() -> bool:
        want = cluster[0].placement().wanted
        owners = cluster[0].owners
        return all(owners.get(d) is not None and owners[d].node == w for d, w in want.items())

    cpu0 = time.process_time()
    for i in range(nodes):
        await add(f"n{i:03d}")
    sim = 0.0
    while (owned() < duties + 1 or not converged()) and sim < 600:
        await clock.advance(1.0)
        sim += 1
    start_cpu = time.process_time() - cpu0
    # steady state: count store operations over 60 simulated seconds
    before = sum((link.calls for link in links), Counter())
    await clock.run_for(60.0, step=1.0)
    after = sum((link.calls for link in links), Counter())
    steady = {k: (after[k] - before[k]) / 60.0 for k in after if after[k] - before[k]}
    # a join: how long until placement converges again, and how much moved
    before_owner = {d: o.node for d, o in cluster[0].owners.items()}
    cpu1 = time.process_time()
    joiner = await add("joiner")
    sim_join = 0.0
    while (sim_join < 1 or not converged() or not joiner.runners) and sim_join < 600:
        await clock.advance(1.0)
        sim_join += 1
    join_cpu = time.process_time() - cpu1
    moved = sum(1 for d, o in cluster[0].owners.items() if before_owner.get(d) != o.node)
    for node in cluster:
        await node.aclose()
    return {
        "nodes": nodes, "duties": duties,
        "startup_sim_s": sim, "startup_cpu_s": round(start_cpu, 2),
        "steady_ops_per_s": round(sum(steady.values()), 2), "steady_ops": steady,
        "join_converge_sim_s": sim_join, "join_cpu_s": round(join_cpu, 2),
        "moved_on_join": moved, "ideal_moved": round(duties / (nodes + 1)),
    }


BATCH = 128  # keys per acquire/release transaction (etcd's default txn limit)
PHASES = ("join", "leave", "leave, untold")


def _converge(placer: IncrementalPlacer, live: list[NodeInfo], owners: dict[str, str],
              rng: random.Random, times: list[float], batch: int = BATCH,
              changed: list[str] | None = None) -> tuple[int, int, int]:
    """Run passes until the placement is owned as wanted: after each pass the
    nodes carry out a batch of its moves (free duties acquired by their wanted
    node; handovers released, then acquired next time). Returns (passes, duties
    moved, duties that moved more than once). ``changed`` (the duties whose
    owner changed before the first pass): tell every pass what changed since the
    last, instead of letting it compare the owners in full."""
    start = dict(owners)
    moves: Counter[str] = Counter()
    passes = 0
    while passes < 100_000:
        t0 = time.perf_counter()
        wanted = placer.place(live, owners, changed).wanted
        times.append(time.perf_counter() - t0)
        passes += 1
        todo = [d for d, n in wanted.items() if owners.get(d) != n]
        if not todo:
            break
        rng.shuffle(todo)
        if changed is not None:
            changed = todo[:batch]
        for duty in todo[:batch]:
            target = wanted[duty]
            if duty in owners:  # handover: release first (another pass runs between)
                del owners[duty]
            elif target is not None:
                owners[duty] = target
                moves[duty] += 1
    moved = sum(1 for d, n in owners.items() if start.get(d) != n)
    return passes, moved, sum(1 for c in moves.values() if c > 1)


def _warm(placer: IncrementalPlacer, nodes: int) -> float:
    """Warm the runner-ups to the end, in the runtime's steps; seconds taken."""
    t0 = time.perf_counter()
    while not placer.warm(max(1, WARM_PAIRS // nodes)):
        pass
    return time.perf_counter() - t0


def _ms(times: list[float]) -> str:
    ordered = sorted(times)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"{p50:.1f} / {p99:.1f} / {ordered[-1] * 1000:.1f}"


def placement_run(nodes: int, duties: int, seed: int = 1) -> dict[str, Any]:
    """Placement alone, at scale: grow to ``nodes`` one join at a time, then time
    the passes of one more join and of one node's death (``--placement``)."""
    rng = random.Random(seed)
    specs = [DutySpec(f"work:{i}", family="work") for i in range(duties)]
    placer = IncrementalPlacer(specs)
    live: list[NodeInfo] = []
    owners: dict[str, str] = {}
    grow: list[float] = []
    t0 = time.perf_counter()
    for i in range(nodes):
        live.append(NodeInfo(f"n{i:03d}", frozenset()))
        _converge(placer, live, owners, rng, grow, batch=duties)  # set-up: not timed
    out: dict[str, Any] = {"nodes": nodes, "duties": duties,
                           "grow_s": round(time.perf_counter() - t0, 1)}
    for phase in PHASES:
        warmed = _warm(placer, len(live))  # the quiet time before the phase
        hits = placer.runner_hits
        times: list[float] = []
        changed: list[str] | None = []  # told (as the runtime's owner table tells it)
        if phase == "join":
            live.append(NodeInfo("joiner", frozenset()))
        else:  # kill -9: the node and its duties leave in one revision (reaper)
            lost = live.pop(rng.randrange(len(live))).name
            changed = [d for d, n in owners.items() if n == lost]
            if phase != "leave":  # after a watch reload: compared in full
                changed = None
            owners = {d: n for d, n in owners.items() if n != lost}
        before = dict(owners)
        passes, moved, twice = _converge(placer, live, owners, rng, times, changed=changed)
        ideal = duties // len(live) if phase == "join" else len(before) and duties - len(before)
        out[phase] = {"passes": passes, "pass_ms": _ms(times), "first_ms": times[0] * 1000,
                      "moved": moved, "ideal": ideal, "moved_twice": twice,
                      "warmed_s": warmed, "hits": placer.runner_hits - hits}
    fresh = IncrementalPlacer(specs)  # a node starting now: its first pass
    t1 = time.perf_counter()
    same = fresh.place(live, owners).wanted == placer.place(live, owners).wanted
    out["fresh_first_pass_s"] = round(time.perf_counter() - t1, 2)
    live.append(NodeInfo("joiner-2", frozenset()))
    t2 = time.perf_counter()
    scratch = place(specs, live, owners, balanced=True).wanted
    out["scratch_pass_s"] = round(time.perf_counter() - t2, 1)
    out["same_answer"] = same and scratch == placer.place(live, owners).wanted
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--duties", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--placement", action="store_true",
                    help="simulate placement alone (100 nodes x 100,000 duties)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.placement:
        print("| nodes | duties | phase | passes to converge | pass p50 / p99 / max (ms) "
              "| first pass (ms) | moved (ideal) | moved twice | warmed before (s) "
              "| placed from runner-ups (summed over passes) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for d in args.duties:
            r = placement_run(args.nodes, d, args.seed)
            for phase in PHASES:
                p = r[phase]
                print(f"| {r['nodes']} | {d} | {phase} | {p['passes']} | {p['pass_ms']} "
                      f"| {p['first_ms']:.1f} | {p['moved']} ({p['ideal']}) "
                      f"| {p['moved_twice']} | {p['warmed_s']:.2f} | {p['hits']} |", flush=True)
            print(f"grow to {r['nodes']} nodes: {r['grow_s']} s; a fresh node's first pass "
                  f"{r['fresh_first_pass_s']} s; one from-scratch place() pass "
                  f"{r['scratch_pass_s']} s; same answer: {r['same_answer']}", flush=True)
        return
    print("| nodes | duties | startup (sim s / cpu s) | join converge (sim s / cpu s) "
          "| moved on join (ideal) | steady store ops/s |")
    print("|---|---|---|---|---|---|")
    for d in args.duties:
        r = asyncio.run(run(args.nodes, d))
        print(f"| {r['nodes']} | {r['duties']} | {r['startup_sim_s']:.0f} / {r['startup_cpu_s']} "
              f"| {r['join_converge_sim_s']:.0f} / {r['join_cpu_s']} "
              f"| {r['moved_on_join']} ({r['ideal_moved']}) | {r['steady_ops_per_s']} "
              f"{dict(r['steady_ops'])} |", flush=True)


if __name__ == "__main__":
    main()
