"""Duty placement: who should own which duty. Pure: no I/O, no clock, no randomness.

Every node computes the same answer from the same membership view:

1. ``eligible(duty, nodes, owners)``: live nodes whose roles meet the duty's (no roles:
   any node), where the duty is not disabled, that may lead if the duty is leader-bound
   and, for ``with_duty=X``, that currently own X.
2. ``rank(duty, nodes)``: weighted rendezvous hashing. Each (duty, node) pair gets a
   uniform ``h`` in (0, 1) from BLAKE2b (stable across processes, unlike ``hash()``);
   score = ``weight / -ln(h)``, so a node wins with probability ``weight / sum(weights)``
   and a join or leave moves only the duties that node wins or loses. Weight-0 nodes
   score 0 and rank last (standby). Ties are broken by name.
3. ``place(duties, nodes, owners)`` -> ``Placement(wanted, ranks)``:

   * a sticky duty whose current owner is live and eligible stays there;
   * any other duty wants the first of its ranked eligible nodes;
   * a co-located duty (``with_duty=X``) wants X's *wanted* owner if that node is
     eligible for it, else None: it moves together with X and its own ``sticky`` flag
     has no effect. Chains are resolved in order; a cycle or unknown X: ``ValueError``;
   * ``balanced=True``: non-sticky, non-co-located duties are assigned by
     :func:`shoal.core._balance.balance`: bounded-load consistent hashing (each
     node takes at most its weighted share rounded down, plus one while the
     remainder lasts: 12 duties over 3 equal nodes give 4/4/4, 64 give 21/21/22),
     current owners kept while their caps allow (a join moves only the newcomer's
     share, a leave only the lost node's duties), and a family's duties spread
     over ``zone`` values so that losing one zone loses at most its fair share.

   Operator rules, applied to a duty's eligible nodes before ranking:

   * **cordon**: a ``cordoned`` node keeps the duties it owns (they stay there,
     outside balancing) and is not eligible for any other duty;
   * **preferred owners**: when some eligible node prefers the duty (its name is
     in ``duty.prefer``, or one of ``node.prefers`` names the duty like
     ``disabled`` does), only those nodes are eligible; the others are standbys,
     used while no preferred node is live. A sticky duty on a standby is wanted
     back on a preferred node (fail-back; the runtime waits ``rebalance_delay``);
   * **newest version** (``newest_version=True``): a singleton (a duty outside
     any family) is eligible only on the nodes running the newest ``version``
     present, and stays on its owner while that owner runs it, so during a
     rolling upgrade it moves once, to the first upgraded node. Such singletons
     are placed by rank, outside balancing.

   Placing again from the result (owners = wanted) changes nothing (fixpoint).
   :class:`shoal.core.incremental.IncrementalPlacer` gives the same answer pass
   after pass in time that grows with what changed (the runtime uses it).

   Invariants: ``wanted[d]`` is None or ``ranks[d][0]``; ``ranks[d]`` lists only nodes
   eligible for ``d``, preferred first, for fallback after a grace period (co-located
   duties: in X's order, filtered by their own roles/disabled/leadership; the runtime
   must still check that the node owns X, e.g. ``eligible(d, nodes, current_owners)``).
   Results do not depend on the order of ``duties`` or ``nodes``; duplicate names
   raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from hashlib import blake2b

from shoal.core._balance import balance
from shoal.errors import InvalidArgument

__all__ = [
    "DutySpec",
    "NodeInfo",
    "Placement",
    "ScoreCache",
    "duty_family",
    "eligible",
    "is_disabled",
    "moves",
    "place",
    "prefers",
    "rank",
    "version_key",
]

_PERSON = b"shoal-rdv-v1"  # domain separation; changing it reshuffles every cluster
_TWO_52 = float(1 << 52)
_from_bytes = int.from_bytes
_log = math.log
_copy = blake2b.copy
_digest = blake2b.digest


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as placement sees it. ``weight`` >= 0 (0 = standby: ranks last)."""

    name: str
    roles: frozenset[str]
    weight: float = 1.0
    can_lead: bool = True
    disabled: frozenset[str] = frozenset()
    zone: str = ""
    version: str = ""
    cordoned: bool = False  # keeps what it owns, gets nothing new
    prefers: frozenset[str] = frozenset()  # duty names / families / patterns it prefers

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise InvalidArgument(
                f"node {self.name!r}: weight must be finite and >= 0, got {self.weight!r}"
            )


@dataclass(frozen=True, slots=True)
class DutySpec:
    """A duty's placement constraints. Empty ``roles`` = any node."""

    name: str
    roles: frozenset[str] = frozenset()
    sticky: bool = False
    leader_bound: bool = False
    with_duty: str | None = None
    family: str | None = None
    prefer: frozenset[str] = frozenset()  # preferred owner node names


@dataclass(frozen=True, slots=True)
class Placement:
    """``wanted``: duty -> preferred owner (None: nobody eligible).
    ``ranks``: duty -> eligible node names, preferred first (fallback order)."""

    wanted: dict[str, str | None] = field(default_factory=dict)
    ranks: Mapping[str, list[str]] = field(default_factory=dict)


def duty_family(duty: DutySpec) -> str | None:
    """The duty's family: ``duty.family``, else the part before ':' in its name."""
    head, sep, _ = duty.name.partition(":")
    return duty.family if duty.family is not None else (head if sep else None)


def _names(duty: DutySpec, patterns: Iterable[str]) -> bool:
    family = duty_family(duty)
    whole = (family, f"{family}:*") if family is not None else ()
    return any(p == duty.name or p in whole or fnmatchcase(duty.name, p) for p in patterns)


def is_disabled(duty: DutySpec, node: NodeInfo) -> bool:
    """True if one of ``node.disabled`` names the duty, its family (``"import"`` or
    ``"import:*"``), or is an fnmatch pattern matching the duty's name."""
    return _names(duty, node.disabled)


def prefers(node: NodeInfo, duty: DutySpec) -> bool:
    """True if ``node`` is a preferred owner of ``duty`` (``duty.prefer`` names it,
    or one of ``node.prefers`` names the duty as ``disabled`` would)."""
    return node.name in duty.prefer or _names(duty, node.prefers)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions: parts split on ``.``, ``-`` and ``+``; numbers compare
    numerically (``"1.10" > "1.9"``) and sort before words. Pre-release tags are
    not special (``"2.0-rc1" > "2.0"``): use plain numbers for release order."""
    parts = [p for p in version.replace("-", ".").replace("+", ".").split(".") if p]
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _fits(duty: DutySpec, node: NodeInfo) -> bool:
    """Eligibility without the ``with_duty`` rule."""
    return (
        (not duty.roles or not duty.roles.isdisjoint(node.roles))
        and (node.can_lead or not duty.leader_bound)
        and not is_disabled(duty, node)
    )


def eligible(
    duty: DutySpec, nodes: Iterable[NodeInfo], owners: Mapping[str, str]
) -> list[NodeInfo]:
    """Live nodes that may run ``duty`` now, sorted by name. ``owners``: duty -> owner."""
    required = owners.get(duty.with_duty) if duty.with_duty is not None else None
    if duty.with_duty is not None and required is None:
        return []
    found = [n for n in nodes if _fits(duty, n) and (required is None or n.name == required)]
    return sorted(found, key=lambda n: n.name)


def _uniform(weights: set[float]) -> bool:
    return len(weights) == 1 and min(weights) > 0


_LINES = 1024  # tuples of names a ranker keeps hashers for


class _Ranker:
    """Rendezvous scores with the per-node half of the hash precomputed.

    :meth:`scored` gives each pair's key: ``-score``, so that sorting puts the best
    first. When every node has the same positive weight, ``weight / -ln(h)`` orders
    pairs exactly as ``h`` does, so the key is ``h``'s 52 bits, negated: an int, no
    logarithm, no division (about half the cost of a pair). Keys of one ranker are
    only ever compared with each other. (Releases before this one compared the
    float scores; the two orders differ only where two distinct hashes give the
    same float score: ``tests/test_placement.py`` finds none among adjacent
    hashes at both ends of the range and at random points; not proven for all.)"""

    def __init__(self, nodes: Iterable[NodeInfo], cache: dict[tuple[str, str], int] | None = None,
                 ) -> None:
        self._cache = cache  # (duty, node) -> the pair's 52-bit hash, kept across calls
        self._rows: dict[str, tuple[blake2b, float]] = {}  # name -> (hasher, weight)
        for node in nodes:
            raw = node.name.encode()
            hasher = blake2b(digest_size=8, person=_PERSON)
            hasher.update(len(raw).to_bytes(4, "big") + raw)
            self._rows[node.name] = (hasher, node.weight)
        self._plain = _uniform({w for _, w in self._rows.values()})
        self._lines: dict[int, tuple[tuple[str, ...], list[blake2b]]] = {}

    def _line(self, names: Sequence[str]) -> list[blake2b]:
        """The prepared hasher of each name; kept per tuple of names (a pass asks
        for the same eligible nodes again and again), found by identity: hashing
        a tuple of 100 names costs more than the lookup saves."""
        if not isinstance(names, tuple):
            return [self._rows[n][0] for n in names]
        found = self._lines.get(id(names))
        if found is not None and found[0] is names:  # held here: its id is not reused
            return found[1]
        if len(self._lines) >= _LINES:
            self._lines.clear()
        line = [self._rows[n][0] for n in names]
        self._lines[id(names)] = (names, line)
        return line

    @staticmethod
    def plain_for(nodes: Iterable[NodeInfo]) -> bool:
        """The :attr:`plain` a ranker over ``nodes`` has."""
        return _uniform({n.weight for n in nodes})

    @property
    def plain(self) -> bool:
        """True if keys are the negated 52-bit hashes (all weights equal, positive)."""
        return self._plain

    def keys(self, duty: str, names: Sequence[str]) -> list[float]:
        """Each node's key (``-score``: smaller is better), in the order of
        ``names``. The hot path of a pass: no tuple per pair (a caller wanting the
        best takes ``min`` and its first index, which is :meth:`scored`'s first
        when ``names`` are in name order)."""
        raw = duty.encode()
        if self._cache is None and self._plain:
            # the hot loop, in C where it can be (map): ~7% less than a loop doing
            # copy, update, digest and from_bytes per node; the same keys (from_bytes is
            # big-endian by default since Python 3.11)
            hashers = list(map(_copy, self._line(names)))
            for hasher in hashers:
                hasher.update(raw)
            return [-(h >> 12) for h in map(_from_bytes, map(_digest, hashers))]
        out: list[float] = []
        add = out.append
        bits: int | None
        cache, plain = self._cache, self._plain
        for name in names:
            base, weight = self._rows[name]
            if cache is None or (bits := cache.get((duty, name))) is None:
                hasher = base.copy()
                hasher.update(raw)
                bits = _from_bytes(hasher.digest(), "big") >> 12
                if cache is not None:
                    cache[duty, name] = bits
            # log(h) < 0: weight / log(h) is -score
            add(-bits if plain else weight / _log((bits + 0.5) / _TWO_52))
        return out

    def scored(self, duty: str, names: Iterable[str], *, sort: bool = True,
               ) -> list[tuple[float, str]]:
        """``(key, name)`` for each node, best first (ties by name); ``sort=False``:
        in the order of ``names``."""
        seq = names if isinstance(names, (tuple, list)) else list(names)
        out = list(zip(self.keys(duty, seq), seq, strict=True))
        if sort:
            out.sort()
        return out


def _unique(names: Iterable[str], what: str) -> None:
    if dupes := sorted(n for n, count in Counter(names).items() if count > 1):
        raise InvalidArgument(f"duplicate {what} names: {dupes}")


class ScoreCache:
    """Memo of the rendezvous hashes of (duty, node) pairs for repeated
    :func:`place` calls: a pass after a node leaves or an ownership change then
    hashes nothing. Answers never depend on it. Holds at most ``limit`` pairs
    (cleared when full)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._hashes: dict[tuple[str, str], int] = {}
        self._limit = limit

    def hashes(self) -> dict[tuple[str, str], int]:
        if len(self._hashes) > self._limit:
            self._hashes = {}
        return self._hashes


def rank(duty_name: str, nodes: Sequence[NodeInfo]) -> list[str]:
    """Node names in weighted rendezvous order for ``duty_name``, best first."""
    _unique((n.name for n in nodes), "node")
    return [name for _, name in _Ranker(nodes).scored(duty_name, (n.name for n in nodes))]


def _colocated_order(by_name: Mapping[str, DutySpec]) -> list[DutySpec]:
    """Co-located duties, each after the duty it follows. Raises on cycles."""
    depth = {n: 0 for n, d in by_name.items() if d.with_duty is None}
    for start in sorted(by_name):
        path: list[str] = []
        name = start
        while name not in depth:
            if name in path:
                cycle = " -> ".join([*path[path.index(name) :], name])
                raise InvalidArgument(f"with_duty cycle: {cycle}")
            path.append(name)
            target = by_name[name].with_duty
            if target is None or target not in by_name:
                raise InvalidArgument(f"duty {name!r} has with_duty={target!r}: no such duty")
            name = target
        for offset, item in enumerate(reversed(path), start=1):
            depth[item] = depth[name] + offset
    return [by_name[n] for _, n in sorted((d, n) for n, d in depth.items() if d > 0)]


def _fits_cache(live: Mapping[str, NodeInfo]) -> Callable[[DutySpec], tuple[str, ...]]:
    """Eligible node names per duty, cached by what eligibility depends on."""
    restricted = [n for n in live.values() if n.disabled]
    cache: dict[object, tuple[str, ...]] = {}

    def names(duty: DutySpec) -> tuple[str, ...]:
        off = frozenset(n.name for n in restricted if is_disabled(duty, n))
        key = (duty.roles, duty.leader_bound, off)
        if (found := cache.get(key)) is None:
            found = cache[key] = tuple(n for n, node in live.items() if _fits(duty, node))
        return found

    return names


def _rules(
    duty: DutySpec,
    names: tuple[str, ...],
    live: Mapping[str, NodeInfo],
    owner: str | None,
    newest_version: bool,
) -> tuple[tuple[str, ...], bool]:
    """Eligible names after cordon, preference and version rules, and whether
    the current owner must stay (cordoned owner, singleton on the newest version)."""
    if any(live[n].cordoned for n in names):
        names = tuple(n for n in names if not live[n].cordoned or n == owner)
    preferred = tuple(n for n in names if prefers(live[n], duty))
    if preferred:
        names = preferred
    stay = owner is not None and owner in names and live[owner].cordoned
    if newest_version and duty_family(duty) is None and names:
        top = max(version_key(live[n].version) for n in names)
        names = tuple(n for n in names if version_key(live[n].version) == top)
        stay = stay or (owner is not None and owner in names)
    return names, stay


def place(
    duties: Sequence[DutySpec],
    nodes: Sequence[NodeInfo],
    owners: Mapping[str, str],
    *,
    balanced: bool = False,
    newest_version: bool = False,
    cache: ScoreCache | None = None,
) -> Placement:
    """Wanted owner and fallback order of every duty (see the module docstring).
    ``cache``: reuse rendezvous scores across calls (same answer, less hashing)."""
    _unique((d.name for d in duties), "duty")
    _unique((n.name for n in nodes), "node")
    by_name = {d.name: d for d in duties}
    live = {n.name: n for n in sorted(nodes, key=lambda n: n.name)}
    ranker = _Ranker(live.values(), cache.hashes() if cache is not None else None)
    fits = _fits_cache(live)
    rules = newest_version or any(n.cordoned or n.prefers for n in live.values())
    wanted: dict[str, str | None] = {}
    ranks: dict[str, list[str]] = {}
    pool: dict[str, tuple[tuple[str, ...], list[tuple[float, str]]]] = {}
    chained = _colocated_order(by_name)
    for name in sorted(by_name):
        duty = by_name[name]
        if duty.with_duty is not None:
            continue
        owner = owners.get(name)
        names, stay = fits(duty), False
        if rules or duty.prefer:
            names, stay = _rules(duty, names, live, owner, newest_version)
        scored = ranker.scored(name, names)
        ranks[name] = [n for _, n in scored]
        pinned = newest_version and duty_family(duty) is None  # never balanced
        if (duty.sticky or stay) and owner is not None and owner in names:
            wanted[name] = owner
        elif balanced and not duty.sticky and not pinned:
            pool[name] = (names, scored)
        else:
            wanted[name] = scored[0][1] if scored else None
    if pool:
        families = {d: duty_family(by_name[d]) for d in pool}
        assigned = balance(pool, live, owners, families)
        for name in pool:
            wanted[name] = assigned.get(name)
    for duty in chained:
        assert duty.with_duty is not None
        target = wanted[duty.with_duty]
        allowed = fits(duty)
        ranks[duty.name] = [n for n in ranks[duty.with_duty] if n in allowed]
        wanted[duty.name] = target if target is not None and target in allowed else None
    for name, owner in wanted.items():
        if owner is not None and ranks[name][0] != owner:
            ranks[name] = [owner, *(n for n in ranks[name] if n != owner)]
    return Placement(
        wanted={n: wanted[n] for n in sorted(wanted)},
        ranks={n: ranks[n] for n in sorted(ranks)},
    )


def moves(before: Placement, after: Placement) -> set[str]:
    """Duties present in both placements whose wanted owner changed (to/from None too)."""
    return {
        d for d, owner in after.wanted.items() if d in before.wanted and before.wanted[d] != owner
    }
