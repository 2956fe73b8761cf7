"""Shoal's placement vs tooz's hash-ring partitioner on the same membership changes.

    python benchmarks/partitioner_compare.py                 # 1000 keys, 5 -> 6 -> 5 nodes
    python benchmarks/partitioner_compare.py --keys 10000 --nodes 10

Pure computation, one process: the assignment each system computes for the same
keys and members (tooz: ``tooz.hashring.HashRing``, what ``tooz.partitioner``
uses, default 32 partitions per node, md5; Shoal: ``shoal.core.placement.place``
with ``balanced=True`` and the current owners, as a running node calls it).
For a join (N -> N+1) and a leave (N+1 -> N, a random member) it reports keys
moved against the ideal (``keys / (N+1)``), the most and fewest keys on one
member, and the time one member takes to compute the new assignment.

Not measured here: time until every member *agrees* (tooz members learn of a
join by polling ``run_watchers()``; Shoal nodes by their watch, see
benchmarks/scale.py).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable

from tooz import hashring

from shoal.core.placement import DutySpec, NodeInfo, ScoreCache, place

Assign = Callable[[list[str], dict[str, str]], dict[str, str]]


def tooz_assign(keys: list[str]) -> Assign:
    def assign(members: list[str], _owners: dict[str, str]) -> dict[str, str]:
        ring = hashring.HashRing(members)
        return {k: next(iter(ring.get_nodes(k.encode()))) for k in keys}

    return assign


def shoal_assign(keys: list[str]) -> Assign:
    specs = [DutySpec(k, family="p") for k in keys]
    cache = ScoreCache()

    def assign(members: list[str], owners: dict[str, str]) -> dict[str, str]:
        nodes = [NodeInfo(m, frozenset()) for m in members]
        wanted = place(specs, nodes, owners, balanced=True, cache=cache).wanted
        return {k: o for k, o in wanted.items() if o is not None}

    return assign


def step(
    assign: Assign, members: list[str], owners: dict[str, str]
) -> tuple[dict[str, str], float]:
    started = time.perf_counter()
    out = assign(members, owners)
    return out, time.perf_counter() - started


def report(
    name: str, assign: Assign, keys: list[str], members: list[str], leaver: str
) -> list[str]:
    start, _ = step(assign, members, {})
    joined, t_join = step(assign, [*members, "newcomer"], start)
    left_members = [m for m in [*members, "newcomer"] if m != leaver]
    left, t_leave = step(assign, left_members, joined)
    ideal = len(keys) / (len(members) + 1)
    rows = []
    for label, before, after, took in (("join", start, joined, t_join),
                                       ("leave", joined, left, t_leave)):
        moved = sum(1 for k in keys if before[k] != after[k])
        load = Counter(after.values())
        rows.append(
            f"| {name} | {label} | {moved} ({moved / ideal:.2f}x ideal {ideal:.0f}) | "
            f"{max(load.values())} / {min(load.values())} | {took * 1000:.1f} ms |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    keys = [f"p/{i}" for i in range(args.keys)]
    members = [f"node-{i}" for i in range(1, args.nodes + 1)]
    leaver = rng.choice(members)
    print(f"# {args.keys} keys, {args.nodes} -> {args.nodes + 1} -> {args.nodes} members "
          f"({leaver} leaves); seed {args.seed}\n")
    print("| system | change | keys moved | most / fewest keys on a member | compute |")
    print("|---|---|---|---|---|")
    for line in report("tooz HashRing", tooz_assign(keys), keys, members, leaver):
        print(line)
    for line in report("shoal place", shoal_assign(keys), keys, members, leaver):
        print(line)


if __name__ == "__main__":
    main()
