"""Simulated scale: N nodes and D duties on the memory store with a fake clock.

Measures (1) how long placement takes to converge after a node joins (in
simulated seconds and in real CPU seconds) and (2) store operations per
simulated second in steady state, which must not grow with the number of
duties (ownership keys hang on the node lease: keep-alive traffic only).

    python benchmarks/scale_sim.py --nodes 50 --duties 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--duties", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
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
