"""Bounded-load assignment for :func:`shoal.core.placement.place` (pure).

``balance(pool, live, owners, family_of)`` assigns each pooled duty to one of
its eligible nodes:

* **caps**: each node takes its weighted share of the assignable duties
  rounded down, and as many nodes as the remainder allows one more (shares are
  computed per group of duties with the same eligible nodes). Who gets the +1
  is fixed up front (:func:`_caps`): first the nodes that already hold more
  than their rounded-down share, so nothing moves for it;
* **zones**: when a family's eligible nodes span two or more ``zone`` values,
  each zone takes at most ``ceil(family size * zone weight / total weight)``
  of that family, so losing one zone loses at most its fair share;
* **minimal movement**: first every duty whose current owner is eligible stays
  there while the caps allow; a node over its cap gives away first the duties
  that a node under its cap can run (so they go straight there), then its
  lowest-scored ones. The rest are assigned greedily in descending pair-score
  order (bounded-load consistent hashing), the duties with the fewest eligible
  nodes first. So after a join only the owners' excess over their new caps
  moves, to the newcomer; after a leave only the lost node's duties move; no
  duty is sent through a third node (``tests/test_placement_balanced.py``);
* a duty whose eligible nodes are all full gets room by a chain of moves when
  one exists (:func:`_augment`); only when the caps cannot all be kept does it
  go to its least-loaded (per weight) eligible node, inside its zone cap when
  one has room. So placing again from the result changes nothing.

The answer depends only on its arguments, never on their order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["Pool", "balance"]

_EPS = 1e-6  # tolerance when rounding weighted shares

# duty -> (eligible names, [(-score, name), ...] best first)
Pool = Mapping[str, tuple[tuple[str, ...], list[tuple[float, str]]]]


class _Node(Protocol):
    @property
    def weight(self) -> float: ...
    @property
    def zone(self) -> str: ...


def _shares(pool: Pool, live: Mapping[str, _Node]) -> dict[str, float]:
    share: dict[str, float] = dict.fromkeys(live, 0.0)
    groups: dict[tuple[str, ...], int] = {}
    for names, _ in pool.values():
        groups[names] = groups.get(names, 0) + 1
    for names, count in groups.items():
        total = sum(live[n].weight for n in names)
        for n in names:
            share[n] += count * (live[n].weight / total if total > 0 else 1 / len(names))
    return share


def _zone_caps(
    pool: Pool, live: Mapping[str, _Node], family_of: Mapping[str, str | None]
) -> dict[tuple[str, str], int]:
    """(family, zone) -> most duties of that family the zone may hold."""
    if len({node.zone for node in live.values()}) < 2:
        return {}
    members: dict[str, list[str]] = {}
    for duty in pool:
        if (fam := family_of.get(duty)) is not None:
            members.setdefault(fam, []).append(duty)
    caps: dict[tuple[str, str], int] = {}
    for fam, duties in members.items():
        nodes = {n for d in duties for n in pool[d][0]}
        zones: dict[str, float] = {}
        for n in nodes:
            zones[live[n].zone] = zones.get(live[n].zone, 0.0) + live[n].weight
        if len(zones) < 2:
            continue
        total = sum(zones.values())
        for zone, weight in zones.items():
            part = weight / total if total > 0 else 1 / len(zones)
            caps[fam, zone] = math.ceil(len(duties) * part - _EPS)
    return caps


def _caps(share: Mapping[str, float], held: Mapping[str, int], total: int) -> dict[str, int]:
    """Each node's cap: its share rounded down, plus one for as many nodes as the
    remainder allows. The +1 goes first to the nodes that already hold more than
    their rounded-down share (they keep it: nothing moves for it), then by
    largest remainder; on a tie first to a node below its rounded-down share (a
    joining node: it gains anyway), then by name. Fixed before any duty is
    assigned, so the order of assignment never decides who gets it."""
    low = {n: math.floor(s + _EPS) for n, s in share.items()}
    high = {n: max(low[n], math.ceil(s - _EPS)) for n, s in share.items()}
    spare = max(0, total - sum(low.values()))

    def order(n: str) -> tuple[bool, float, bool, str]:
        have = held.get(n, 0)
        return (have <= low[n], -round(share[n] % 1.0, 9), have >= low[n], n)

    extra = set(sorted((n for n in low if high[n] > low[n]), key=order)[:spare])
    return {n: low[n] + (n in extra) for n in low}


def balance(
    pool: Pool,
    live: Mapping[str, _Node],
    owners: Mapping[str, str],
    family_of: Mapping[str, str | None],
) -> dict[str, str]:
    """duty -> node for every pooled duty with an eligible node (see module doc)."""
    zone_cap = _zone_caps(pool, live, family_of)
    kept: list[tuple[bool, float, str, str]] = []
    held = dict.fromkeys(live, 0)
    for duty, (names, scored) in pool.items():
        owner = owners.get(duty)
        if owner is not None and owner in names:
            held[owner] += 1
            kept.append((False, next(s for s, n in scored if n == owner), owner, duty))
    cap = _caps(_shares(pool, live), held, sum(1 for names, _ in pool.values() if names))
    load = dict.fromkeys(live, 0)
    zone_load: dict[tuple[str, str], int] = {}
    out: dict[str, str] = {}

    def zone_key(duty: str, node: str) -> tuple[str, str] | None:
        if not zone_cap:
            return None
        fam = family_of.get(duty)
        key = (fam, live[node].zone) if fam is not None else None
        return key if key is not None and key in zone_cap else None

    def zone_full(duty: str, node: str) -> bool:
        key = zone_key(duty, node)
        return key is not None and zone_load.get(key, 0) >= zone_cap[key]

    def put(duty: str, node: str) -> None:
        load[node] += 1
        if (key := zone_key(duty, node)) is not None:
            zone_load[key] = zone_load.get(key, 0) + 1
        out[duty] = node

    def take(duty: str, node: str) -> bool:
        if zone_full(duty, node) or load[node] >= cap[node]:
            return False
        put(duty, node)
        return True

    # A node over its cap keeps last the duties a node under its cap could take,
    # so those are the ones that move (straight to that node, not via a third).
    short = {n for n in live if held[n] < cap[n]}
    for i, (_, neg, owner, duty) in enumerate(kept):
        if held[owner] > cap[owner] and any(n in short for n in pool[duty][0]):
            kept[i] = (True, neg, owner, duty)
    for _, _, owner, duty in sorted(kept):
        take(duty, owner)
    # (duty, node) pairs in descending score order, the duties with the fewest
    # eligible nodes first (they have the fewest places to go)
    heap = [(len(sc), sc[0][0], sc[0][1], d, 0) for d, (_, sc) in pool.items()
            if sc and d not in out]
    heapq.heapify(heap)
    while heap:
        width, _, node, duty, idx = heapq.heappop(heap)
        if not take(duty, node) and idx + 1 < width:
            neg_score, nxt = pool[duty][1][idx + 1]
            heapq.heappush(heap, (width, neg_score, nxt, duty, idx + 1))
    left = sorted(d for d in pool if d not in out and pool[d][1])
    if left:
        left = _augment(left, pool, out, load, cap, zone_key, zone_full, zone_load)
    for duty in left:
        ranked = [n for _, n in pool[duty][1]]  # all full: least loaded per weight, by rank
        roomy = [n for n in ranked if not zone_full(duty, n)] or ranked
        put(duty, min(roomy, key=lambda n: load[n] / live[n].weight if live[n].weight else 1e300))
    return out


def _augment(
    left: list[str], pool: Pool, out: dict[str, str], load: dict[str, int],
    cap: Mapping[str, int], zone_key: Callable[[str, str], tuple[str, str] | None],
    zone_full: Callable[[str, str], bool], zone_load: dict[tuple[str, str], int],
) -> list[str]:
    """Place each duty whose eligible nodes are all full by moving other duties
    along a shortest chain to a node with room (augmenting paths of a bounded
    b-matching), so a duty falls back past its node's cap only when no chain
    exists. A chain never moves a duty out of its zone count (only between nodes
    whose zone counts it the same way), so zone caps hold. The greedy rarely
    leaves any: overlapping groups of eligible nodes and zone caps do. Work is
    bounded (a few passes over the pool in all); returns the duties still
    unplaced, in order."""
    on: dict[str, list[str]] = {}
    for d, node in out.items():
        on.setdefault(node, []).append(d)
    budget = 4 * (len(pool) + 1)
    rest: list[str] = []
    for duty in left:
        queue = [n for n in pool[duty][0] if not zone_full(duty, n)]
        parent: dict[str, tuple[str, str] | None] = dict.fromkeys(queue)
        found = None
        while queue and found is None and budget > 0:
            u = queue.pop(0)
            for e in on.get(u, ()):
                budget -= 1
                for v in pool[e][0]:
                    if v in parent or zone_key(e, v) != zone_key(e, u):
                        continue
                    parent[v] = (u, e)
                    if load[v] < cap[v]:
                        found = v
                        break
                    queue.append(v)
                if found is not None:
                    break
        if found is None:
            rest.append(duty)
            continue
        load[found] += 1
        node, step = found, parent[found]
        while step is not None:  # shift each duty of the chain one node on
            u, e = step
            on[u].remove(e)
            on.setdefault(node, []).append(e)
            out[e] = node
            node, step = u, parent[u]
        on.setdefault(node, []).append(duty)
        out[duty] = node
        if (key := zone_key(duty, node)) is not None:
            zone_load[key] = zone_load.get(key, 0) + 1
    return rest
