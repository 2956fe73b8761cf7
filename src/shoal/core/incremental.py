"""Incremental placement: :func:`~shoal.core.placement.place`'s answer, computed
from the previous pass in time that grows with what changed, not with the
number of duties. Pure: no I/O, no clock.

A from-scratch balanced pass ranks every duty over every node: 100,000 duties
over 100 nodes is ten million hashes, seconds of CPU. But between two passes
little changes: a few owners, or one node joining or leaving. An
:class:`IncrementalPlacer` keeps, across passes:

* each live node's *kept* duties (those it owns and may run) in the order of
  its own rendezvous score, so that a node over its cap gives away its
  lowest-scored duties without ranking anything else;
* the *orphans*: declared balanced duties that no live eligible node holds;
* the wanted owner of every duty, patched where something changed.

Each pass then costs one comparison of the owners (C speed, but it touches
every entry: 10-20 ms at 100,000 duties; a caller that knows which owners
changed passes them as ``changed=`` and skips it), the caps (per node), and
ranking only the duties that must move, and only over the nodes with room for
them (a node at its cap never takes one: the same greedy as
:func:`~shoal.core._balance.balance`, without its no-op steps). A moving
duty's keys are never sorted: it takes the smallest among the nodes with room,
found again if that node fills up first.
Ranks (the fallback order) are computed per duty when read.

*Runner-ups* (:meth:`IncrementalPlacer.warm`, called while the cluster is
quiet; :mod:`shoal.core._runner`): for each kept duty, its best eligible node
other than its owner. When a node dies, each of its duties' best node among
the survivors is then known without ranking it over them all (98,000 hashes at
100 nodes x 100,000 duties); a duty is ranked in full only if that node fills
up first.

The answer is the one ``place(..., balanced=True)`` gives for the same
duties, nodes and owners (``tests/test_incremental.py`` checks it under
hypothesis). Where the fast path does not apply (unbalanced placement,
cordoned or preferring nodes, preferred owners, newest-version singletons,
more than one zone, or a duty all of whose eligible nodes are full), a pass
calls ``place`` itself.
"""

from __future__ import annotations

import copy
import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from shoal.core._balance import _caps
from shoal.core._runner import RunnerUps
from shoal.core.placement import (
    DutySpec,
    NodeInfo,
    Placement,
    ScoreCache,
    _colocated_order,
    _Ranker,
    _unique,
    is_disabled,
    place,
)

__all__ = ["IncrementalPlacer"]

Key = tuple[frozenset[str], bool, frozenset[str]]  # roles, leader-bound, nodes disabling it
_Keyed = tuple[list[float], Sequence[str]]  # a duty's keys over some nodes (in name order)


def _best(keyed: _Keyed, roomy: set[str]) -> tuple[float, str] | None:
    """The best ``(key, node)`` of a duty among the nodes with room (ties by name:
    the first in order). No tuple per pair: this runs for every full node a
    duty finds first."""
    keys, nodes = keyed
    key = min((k for k, n in zip(keys, nodes, strict=True) if n in roomy), default=None)
    if key is None:
        return None
    at = keys.index(key)
    while nodes[at] not in roomy:  # an equal key on a full node, first in order
        at = keys.index(key, at + 1)
    return key, nodes[at]


def _fast(nodes: Mapping[str, NodeInfo], duties: Sequence[DutySpec]) -> bool:
    """True if a balanced pass over these nodes needs no rule of the slow path."""
    return (len({n.zone for n in nodes.values()}) < 2
            and not any(n.cordoned or n.prefers for n in nodes.values()))


@dataclass(frozen=True)
class _Pass:
    """What a pass's ranks are computed from (immutable once handed out)."""

    by_name: Mapping[str, DutySpec]
    key_of: Mapping[str, Key]
    names: Mapping[Key, tuple[str, ...]]  # eligible live nodes per key, by name
    ranker: _Ranker
    wanted: Mapping[str, str | None]


class _Ranks(Mapping[str, list[str]]):
    """``Placement.ranks`` computed per duty on first read (same lists as place's)."""

    def __init__(self, ctx: _Pass) -> None:
        self._ctx = ctx
        self._memo: dict[str, list[str]] = {}

    def _base(self, name: str) -> list[str]:
        ctx = self._ctx
        duty = ctx.by_name[name]
        allowed = ctx.names[ctx.key_of[name]]
        if duty.with_duty is not None:
            return [n for n in self._base(duty.with_duty) if n in allowed]
        return [n for _, n in ctx.ranker.scored(name, allowed)]

    def __getitem__(self, name: str) -> list[str]:
        found = self._memo.get(name)
        if found is None:
            found = self._base(name)
            owner = self._ctx.wanted[name]
            if owner is not None and found[0] != owner:
                found = [owner, *(n for n in found if n != owner)]
            self._memo[name] = found
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._ctx.by_name)

    def __len__(self) -> int:
        return len(self._ctx.by_name)


class IncrementalPlacer:
    """Placements of one fixed list of duties, pass after pass (module docstring)."""

    def __init__(self, duties: Sequence[DutySpec], *, balanced: bool = True,
                 newest_version: bool = False) -> None:
        _unique((d.name for d in duties), "duty")
        self.duties = list(duties)
        self._by_name = {d.name: d for d in sorted(duties, key=lambda d: d.name)}
        self._chained = _colocated_order(self._by_name)
        self._pooled = [n for n, d in self._by_name.items()
                        if not d.sticky and d.with_duty is None]
        self._sticky = [n for n, d in self._by_name.items()
                        if d.sticky and d.with_duty is None]
        self._slow_only = (not balanced or newest_version
                           or any(d.prefer for d in duties))
        self._balanced = balanced
        self._newest = newest_version
        self._scores = ScoreCache()  # for the passes ``place`` computes
        self.fast_passes = 0
        self.slow_passes = 0
        self._reset()

    def _reset(self) -> None:
        self._valid = False
        self._live: dict[str, NodeInfo] = {}
        self._restricted: tuple[tuple[str, frozenset[str]], ...] | None = None
        self._key_of: dict[str, Key] = {}
        self._keys: set[Key] = set()
        self._key_count: dict[Key, int] = {}  # pooled duties per key
        self._key_first: dict[Key, str] = {}  # first pooled duty of a key, by name
        self._names: dict[Key, tuple[str, ...]] = {}
        self._sets: dict[Key, frozenset[str]] = {}
        self._owners: dict[str, str] = {}
        self._owned: dict[str, set[str]] = {}  # node -> pooled duties it owns
        self._kept: dict[str, dict[str, float]] = {}  # live node -> kept duty -> -score
        self._order: dict[str, list[tuple[float, str]]] = {}  # the same, sorted
        self._orphans: set[str] = set()
        self._moving: set[str] = set()  # duties the last pass assigned by the greedy
        self._wanted: dict[str, str | None] = {}
        self._ranker: _Ranker | None = None
        # a moving duty's ranking over all its eligible nodes, while the nodes hold
        # (a dead node's duties are ranked once, not once per pass until taken)
        self._ranked: dict[str, _Keyed] = {}
        self._runner = RunnerUps()  # computed by warm() (module docstring)
        self.runner_hits = 0  # pending duties placed from their runner-up

    # -- the pass -------------------------------------------------------------------
    def place(self, nodes: Sequence[NodeInfo], owners: Mapping[str, str],
              changed: Iterable[str] | None = None) -> Placement:
        """The placement ``place(duties, nodes, owners, ...)`` would give.

        ``changed``: the duties whose owner may differ from the ``owners`` of the
        previous call (taken, freed or moved since), so that the owners are not
        compared in full (tens of milliseconds at 100,000 duties). A duty left out
        whose owner did change makes the answer wrong: pass None when unsure."""
        _unique((n.name for n in nodes), "node")
        live = {n.name: n for n in sorted(nodes, key=lambda n: n.name)}
        if self._slow_only or not _fast(live, self.duties):
            return self._slow(nodes, owners)
        ranker = self._ranker
        if not self._valid or ranker is None or ranker.plain != _Ranker.plain_for(live.values()):
            self._rebuild(live, owners)
        else:
            if live != self._live:
                self._set_nodes(live)
            self._set_owners(owners, changed)
        result = self._compute()
        if result is None:
            return self._slow(nodes, owners)
        self.fast_passes += 1
        return result

    def forkable(self) -> bool:
        """True if :meth:`fork` then a pass costs what changed, not a pass from
        scratch: the last pass took the fast path (the state is kept) and a pass
        over a subset of its nodes would take it too."""
        return self._valid and not self._slow_only and _fast(self._live, self.duties)

    def fork(self) -> IncrementalPlacer:
        """A copy to run a what-if pass on (a spare placement: "if this node left"),
        leaving this placer's own state as it is. Costs a copy of the state kept
        (linear in the duties, no hashing); a pass on the copy then costs what
        changed. Not thread-safe: fork and pass where this placer is used."""
        twin = copy.copy(self)  # shares the configuration and what passes replace
        twin._owners = dict(self._owners)  # and copies what they change in place
        twin._owned = {n: set(s) for n, s in self._owned.items()}
        twin._kept = {n: dict(k) for n, k in self._kept.items()}
        twin._order = {n: list(o) for n, o in self._order.items()}
        twin._orphans = set(self._orphans)
        twin._moving = set(self._moving)
        twin._wanted = dict(self._wanted)
        twin._ranked = dict(self._ranked)
        twin._runner = self._runner.copy()
        return twin

    def warm(self, limit: int) -> bool:
        """Compute the runner-ups of up to ``limit`` kept duties that lack a current
        one (module docstring): as many hashes each as it has eligible nodes, or
        as nodes came since its entry. For idle time; the answer of a pass never
        depends on it. Returns True once its work list (every kept duty after a
        node came or changed, else the duties whose owner changed since) is done;
        the next call draws up a new one."""
        if not self._valid or self._ranker is None:
            return True
        key_of, names, sets = self._key_of, self._names, self._sets
        return self._runner.warm(limit, self._kept, self._owners.get, self._ranker,
                                 lambda d: names[key_of[d]], lambda d: sets[key_of[d]])

    def _slow(self, nodes: Sequence[NodeInfo], owners: Mapping[str, str]) -> Placement:
        self.slow_passes += 1
        self._valid = False
        return place(self.duties, nodes, owners, balanced=self._balanced,
                     newest_version=self._newest, cache=self._scores)

    # -- state kept across passes ------------------------------------------------------
    def _rebuild(self, live: dict[str, NodeInfo], owners: Mapping[str, str]) -> None:
        self._reset()
        self._live = live
        self._ranker = _Ranker(live.values())
        self._classify()
        self._owners = dict(owners)
        for name in self._pooled:
            owner = self._owners.get(name)
            if owner is not None:
                self._owned.setdefault(owner, set()).add(name)
        self._orphans = set(self._pooled)
        for node in live:
            self._adopt(node)
        self._moving = set(self._pooled)  # every wanted entry is computed afresh
        self._valid = True

    def _classify(self) -> None:
        """Eligibility keys of every duty (when the nodes disabling some changed)
        and the eligible live nodes of each key."""
        live = self._live
        restricted = tuple((n.name, n.disabled) for n in live.values() if n.disabled)
        if restricted != self._restricted:
            self._restricted = restricted
            self._key_of = {
                name: (d.roles, d.leader_bound, frozenset(
                    n for n, _ in restricted if is_disabled(d, live[n])))
                for name, d in self._by_name.items()
            }
            self._keys = set(self._key_of.values())
            self._key_count = {}
            self._key_first = {}
            for name in self._pooled:  # in name order
                key = self._key_of[name]
                self._key_count[key] = self._key_count.get(key, 0) + 1
                self._key_first.setdefault(key, name)
        self._names = {}
        for key in self._keys:
            roles, bound, off = key
            self._names[key] = tuple(
                n for n, node in live.items()
                if (not roles or not roles.isdisjoint(node.roles))
                and (node.can_lead or not bound) and n not in off)
        self._sets = {k: frozenset(v) for k, v in self._names.items()}

    def _fits(self, duty: str, node: str) -> bool:
        return node in self._sets[self._key_of[duty]]

    def _adopt(self, node: str) -> None:
        """Start keeping the duties live ``node`` owns and may run."""
        assert self._ranker is not None
        kept: dict[str, float] = {}
        for duty in self._owned.get(node, ()):
            if self._fits(duty, node):
                kept[duty] = self._ranker.scored(duty, (node,))[0][0]
                self._orphans.discard(duty)
                self._moving.add(duty)  # its wanted node is recomputed
        self._kept[node] = kept
        self._order[node] = sorted((s, d) for d, s in kept.items())

    def _drop(self, node: str) -> None:
        """``node`` left (or changed): the duties it kept are orphans now."""
        kept = self._kept.pop(node, {})
        self._order.pop(node, None)
        self._orphans.update(kept)
        self._moving.update(kept)

    def _set_nodes(self, live: dict[str, NodeInfo]) -> None:
        old = self._live
        changed = [n for n, info in old.items() if live.get(n) != info]
        for node in changed:
            self._drop(node)
        self._live = live
        before = self._restricted
        self._classify()
        if self._restricted != before:  # which duty may run where changed
            for node in [n for n in live if n in self._kept]:
                self._drop(node)
        self._ranker = _Ranker(live.values())
        came = [n for n in live if n not in old]
        only_came = changed == [n for n in old if n not in live]
        if came or not only_came:
            # a node came or changed: the rankings lack it. (Nodes only leaving keep
            # them: a pass ranks over the live nodes with room, and the keys of the
            # others are the same under the new ranker, whose mode place() checked.)
            self._ranked = {}
            self._runner.nodes_changed(came, only_came)
        for node in live:
            if node not in self._kept:
                self._adopt(node)
        self._moving.update(self._orphans)

    def _set_owners(self, owners: Mapping[str, str], hint: Iterable[str] | None) -> None:
        prev = self._owners
        if hint is None:
            if owners == prev:
                return
            changed = {d for d, _ in prev.items() ^ owners.items()}
            self._owners = dict(owners)
        else:
            changed = {d for d in hint if prev.get(d) != owners.get(d)}
            prev = {d: prev[d] for d in changed if d in prev}
            for duty in changed:
                if (owner := owners.get(duty)) is None:
                    del self._owners[duty]
                else:
                    self._owners[duty] = owner
        assert self._ranker is not None
        self._runner.touch(changed)
        for duty in changed:
            spec = self._by_name.get(duty)
            if spec is None or spec.sticky or spec.with_duty is not None:
                continue
            if (old := prev.get(duty)) is not None:
                self._owned[old].discard(duty)
                kept = self._kept.get(old)
                if kept is not None and (score := kept.pop(duty, None)) is not None:
                    order = self._order[old]
                    del order[bisect_left(order, (score, duty))]
            owner = self._owners.get(duty)
            self._moving.add(duty)
            if owner is None:
                self._orphans.add(duty)
                continue
            self._owned.setdefault(owner, set()).add(duty)
            if owner in self._kept and self._fits(duty, owner):
                score = self._ranker.scored(duty, (owner,))[0][0]
                self._kept[owner][duty] = score
                insort(self._order[owner], (score, duty))
                self._orphans.discard(duty)
            else:
                self._orphans.add(duty)

    # -- the computation -----------------------------------------------------------------
    def _caps(self) -> tuple[dict[str, int], dict[str, int], dict[tuple[str, ...], bool]]:
        """Held counts, caps (as balance computes them) and, per group of eligible
        nodes, whether a node short of its cap is in it."""
        live = self._live
        groups: dict[tuple[str, ...], int] = {}
        for key in sorted(self._key_count, key=self._key_first.__getitem__):
            names = self._names[key]
            groups[names] = groups.get(names, 0) + self._key_count[key]
        share: dict[str, float] = dict.fromkeys(live, 0.0)
        for names, count in groups.items():
            total = sum(live[n].weight for n in names)
            for n in names:
                share[n] += count * (live[n].weight / total if total > 0 else 1 / len(names))
        held = {n: len(self._kept[n]) for n in live}
        cap = _caps(share, held, sum(c for names, c in groups.items() if names))
        short = {n for n in live if held[n] < cap[n]}
        return held, cap, {names: not short.isdisjoint(names) for names in groups}

    def _excess(self, held: dict[str, int], cap: dict[str, int],
                flags: dict[tuple[str, ...], bool]) -> list[str]:
        """The kept duties each node over its cap gives away: its lowest-scored,
        those a node short of its cap could take first (balance's order)."""
        out: list[str] = []
        for node in self._live:
            if held[node] <= cap[node]:
                continue
            order = self._order[node]
            seen = {f for names, f in flags.items() if node in names}
            if len(seen) > 1:
                key_of, names = self._key_of, self._names
                order = ([x for x in order if not flags[names[key_of[x[1]]]]]
                         + [x for x in order if flags[names[key_of[x[1]]]]])
            out.extend(d for _, d in order[cap[node]:])
        return out

    def _compute(self) -> Placement | None:
        held, cap, flags = self._caps()
        excess = self._excess(held, cap, flags)
        load = {n: min(held[n], cap[n]) for n in self._live}
        roomy = {n for n in self._live if load[n] < cap[n]}
        names_of = self._names
        key_of = self._key_of
        assert self._ranker is not None
        ranker = self._ranker
        pending = [d for d in self._orphans if names_of[key_of[d]]] + excess
        all_roomy = len(roomy) == len(self._live)
        # each pending duty's keys over its candidates, never sorted: the heap holds
        # its best node with room; if that node is full when popped, the duty goes
        # back with its best node still with room (what walking its sorted list and
        # skipping full nodes gives: nodes never regain room within a pass)
        cands: dict[str, _Keyed] = {}
        heap: list[tuple[int, float, str, str]] = []
        runner = self._runner
        for duty in pending:
            names = names_of[key_of[duty]]
            found = self._ranked.get(duty)
            best: tuple[float, str] | None
            if found is None and (best := runner.best(duty, self._sets[key_of[duty]])):
                # its best eligible node (its owner is gone): ranked in full only if
                # that node is full, or fills up first
                self.runner_hits += 1
                heap.append((len(names), best[0], best[1], duty))
                continue
            if found is None:
                if all_roomy:
                    cand: Sequence[str] = names
                elif len(names) <= len(roomy):
                    cand = [n for n in names if n in roomy]
                else:
                    allowed = self._sets[key_of[duty]]
                    cand = sorted(n for n in roomy if n in allowed)
                if all_roomy or 2 * len(cand) > len(names):  # most: rank over all, keep it
                    found = self._ranked[duty] = (ranker.keys(duty, names), names)
                else:
                    found = (ranker.keys(duty, cand), cand)
                keys, nodes = found
                if nodes is cand and keys:  # all with room: the best is the min key
                    key = min(keys)  # and its first index (nodes in name order)
                    best = (key, nodes[keys.index(key)])
                else:
                    best = _best(found, roomy)
            else:  # ranked in an earlier pass: may name nodes gone since
                best = _best(found, roomy)
            if best is None:
                return None  # every eligible node full: balance's chains and fallback
            cands[duty] = found
            heap.append((len(names), best[0], best[1], duty))
        heapq.heapify(heap)
        out: dict[str, str] = {}
        while heap:
            width, _, node, duty = heapq.heappop(heap)
            if load[node] < cap[node]:
                load[node] += 1
                out[duty] = node
                if load[node] == cap[node]:
                    roomy.discard(node)
                continue
            found = cands.get(duty)
            if found is None:  # placed from its runner-up so far: rank it now
                names = names_of[key_of[duty]]
                found = cands[duty] = self._ranked[duty] = (ranker.keys(duty, names), names)
            best = _best(found, roomy)
            if best is None:
                return None
            heapq.heappush(heap, (width, best[0], best[1], duty))
        wanted = self._wanted
        gone = set(excess)
        for duty in self._moving.union(pending):
            if duty in out:
                wanted[duty] = out[duty]
            elif duty in self._orphans or duty in gone:
                wanted[duty] = None  # no eligible node
            else:
                wanted[duty] = self._owners[duty]
        self._moving = set(pending)
        if len(self._ranked) > 2 * len(pending) + 1024:
            self._ranked = {d: r for d, r in self._ranked.items() if d in self._moving}
        self._place_rest()
        result = dict(wanted)
        ctx = _Pass(self._by_name, key_of, names_of, ranker, result)
        return Placement(wanted=result, ranks=_Ranks(ctx))

    def _place_rest(self) -> None:
        """Sticky duties (their live eligible owner, else the top-ranked node) and
        co-located ones (their anchor's node, if eligible), as ``place`` does."""
        assert self._ranker is not None
        wanted = self._wanted
        for name in self._sticky:
            key = self._key_of[name]
            owner = self._owners.get(name)
            if owner is not None and owner in self._sets[key]:
                wanted[name] = owner
            else:
                scored = self._ranker.scored(name, self._names[key])
                wanted[name] = scored[0][1] if scored else None
        for duty in self._chained:
            assert duty.with_duty is not None
            target = wanted[duty.with_duty]
            ok = target is not None and target in self._sets[self._key_of[duty.name]]
            wanted[duty.name] = target if ok else None
