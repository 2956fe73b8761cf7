"""Bounded-load assignment for :func:`shoal.core.placement.place` (pure).

``balance(pool, live, owners, family_of)`` assigns each pooled duty to one of
its eligible nodes:

* **caps**: each node takes at most its weighted share of the pool rounded
  down, plus one while the remainder lasts (shares are computed per group of
  duties with the same eligible nodes);
* **zones**: when a family's eligible nodes span two or more ``zone`` values,
  each zone takes at most ``ceil(family size * zone weight / total weight)``
  of that family, so losing one zone loses at most its fair share;
* **minimal movement**: first every duty whose current owner is eligible stays
  there while the caps allow (in descending rendezvous score order), then the
  rest are assigned greedily in descending pair-score order (bounded-load
  consistent hashing). After a join only the owners' excess over their new
  caps moves, which is the newcomer's share; after a leave only the lost
  node's duties move;
* a duty whose eligible nodes are all full goes to its least-loaded (per
  weight) eligible node, inside its zone cap when one has room.

The answer depends only on its arguments, never on their order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
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


def _node_caps(pool: Pool, live: Mapping[str, _Node]) -> tuple[dict[str, int], dict[str, int]]:
    share: dict[str, float] = dict.fromkeys(live, 0.0)
    groups: dict[tuple[str, ...], int] = {}
    for names, _ in pool.values():
        groups[names] = groups.get(names, 0) + 1
    for names, count in groups.items():
        total = sum(live[n].weight for n in names)
        for n in names:
            share[n] += count * (live[n].weight / total if total > 0 else 1 / len(names))
    low = {n: math.floor(s + _EPS) for n, s in share.items()}
    high = {n: max(low[n], math.ceil(s - _EPS)) for n, s in share.items()}
    return low, high


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


def balance(
    pool: Pool,
    live: Mapping[str, _Node],
    owners: Mapping[str, str],
    family_of: Mapping[str, str | None],
) -> dict[str, str]:
    """duty -> node for every pooled duty with an eligible node (see module doc)."""
    low, high = _node_caps(pool, live)
    zone_cap = _zone_caps(pool, live, family_of)
    spare = max(0, len(pool) - sum(low.values()))
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

    def take(duty: str, node: str) -> bool:
        nonlocal spare
        if zone_full(duty, node):
            return False
        if not (load[node] < low[node] or (load[node] < high[node] and spare > 0)):
            return False
        if load[node] >= low[node]:
            spare -= 1
        load[node] += 1
        if (key := zone_key(duty, node)) is not None:
            zone_load[key] = zone_load.get(key, 0) + 1
        out[duty] = node
        return True

    kept = []
    for duty, (names, scored) in pool.items():
        owner = owners.get(duty)
        if owner is not None and owner in names:
            kept.append((next(s for s, n in scored if n == owner), owner, duty))
    for _, owner, duty in sorted(kept):
        take(duty, owner)
    heap = [(sc[0][0], sc[0][1], d, 0) for d, (_, sc) in pool.items() if sc and d not in out]
    heapq.heapify(heap)
    while heap:  # pops (duty, node) pairs in descending score order
        _, node, duty, idx = heapq.heappop(heap)
        if not take(duty, node) and idx + 1 < len(pool[duty][1]):
            neg_score, nxt = pool[duty][1][idx + 1]
            heapq.heappush(heap, (neg_score, nxt, duty, idx + 1))
    for duty in sorted(d for d in pool if d not in out and pool[d][1]):
        ranked = [n for _, n in pool[duty][1]]  # all full: least loaded per weight, by rank
        roomy = [n for n in ranked if not zone_full(duty, n)] or ranked
        node = min(roomy, key=lambda n: load[n] / live[n].weight if live[n].weight else 1e300)
        load[node] += 1
        if (key := zone_key(duty, node)) is not None:
            zone_load[key] = zone_load.get(key, 0) + 1
        out[duty] = node
    return out
