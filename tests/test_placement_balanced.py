"""Placement (pure), balanced mode: exact weighted shares, ~1/N movement; and speed."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core._balance import _augment, _caps, _shares
from shoal.core.placement import DutySpec, NodeInfo, Placement, moves, place, rank


def n(name: str, *roles: str, **kw: object) -> NodeInfo:
    return NodeInfo(name, frozenset(roles), **kw)  # type: ignore[arg-type]


def names(k: int, prefix: str = "d") -> list[DutySpec]:
    return [DutySpec(f"{prefix}{i}") for i in range(k)]


@settings(max_examples=20, deadline=None, derandomize=True)
@given(prefix=st.text("abcxyz", max_size=5))
def test_join_and_leave_move_about_one_nth_balanced(prefix: str) -> None:
    duties = names(300, prefix)
    nodes = [n(f"node-{prefix}-{i}") for i in range(6)]
    five = place(duties, nodes[:5], {}, balanced=True)
    six = place(duties, nodes, {}, balanced=True)
    assert sorted(Counter(five.wanted.values()).values()) == [60] * 5
    assert sorted(Counter(six.wanted.values()).values()) == [50] * 6
    assert 50 <= len(moves(five, six)) <= 0.35 * 300  # the new node takes exactly 50
    other_five = place(duties, nodes[1:], {}, balanced=True)
    assert 50 <= len(moves(six, other_five)) <= 0.35 * 300


@pytest.mark.parametrize(("count", "expected"), [(12, [4, 4, 4]), (64, [21, 21, 22])])
def test_balanced_examples(count: int, expected: list[int]) -> None:
    nodes = [n("a"), n("b"), n("c")]
    result = place(names(count), nodes, {}, balanced=True)
    assert sorted(Counter(result.wanted.values()).values()) == expected


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(0, 120),
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=6),
    prefix=st.text("pq", max_size=3),
)
def test_balanced_counts_are_within_the_rounded_weighted_share(
    count: int, weights: list[float], prefix: str
) -> None:
    nodes = [n(f"n{i}", weight=w) for i, w in enumerate(weights)]
    result = place(names(count, prefix), nodes, {}, balanced=True)
    counts = Counter(result.wanted.values())
    assert sum(counts.values()) == count
    for node in nodes:
        share = count * node.weight / sum(weights)
        assert math.floor(share + 1e-9) <= counts[node.name] <= math.ceil(share - 1e-9)


def test_balanced_leaves_sticky_duties_alone() -> None:
    duties = [*names(9), DutySpec("leader", sticky=True)]
    nodes = [n("a"), n("b"), n("c")]
    result = place(duties, nodes, {"leader": "b"}, balanced=True)
    assert result.wanted["leader"] == "b"
    assert sorted(Counter(o for d, o in result.wanted.items() if d != "leader").values()) == [3] * 3


def test_balanced_falls_back_when_eligible_nodes_are_full() -> None:
    nodes = [n("a", "x"), n("b"), n("c")]
    duties = [*names(6), *(DutySpec(f"only-x-{i}", roles=frozenset({"x"})) for i in range(3))]
    result = place(duties, nodes, {}, balanced=True)
    assert all(result.wanted[f"only-x-{i}"] == "a" for i in range(3))
    assert all(o is not None for o in result.wanted.values())


def test_fifty_nodes_ten_thousand_duties() -> None:
    """Every duty placed (the time it takes: benchmarks/unit_timings.py)."""
    nodes = [
        n(
            f"node-{i}",
            "worker",
            weight=1.0 + i % 3,
            disabled=frozenset({"import:*"}) if i % 7 == 0 else frozenset(),
        )
        for i in range(50)
    ]
    duties = [DutySpec(f"import:{i}" if i % 5 == 0 else f"duty-{i}") for i in range(10_000)]
    for balanced in (False, True):
        result = place(duties, nodes, {}, balanced=balanced)
        assert all(o is not None for o in result.wanted.values())
        off = {f"node-{i}" for i in range(0, 50, 7)}  # import:* disabled there
        assert not any(result.wanted[f"import:{i}"] in off for i in range(0, 10_000, 5))


# -- movement, fixpoint and edge weights (issue #15) ---------------------------------
def owned(result: Placement) -> dict[str, str]:
    return {d: o for d, o in result.wanted.items() if o is not None}


def movement(balanced: bool, prefix: str, count: int, duties: int) -> tuple[float, int]:
    """A join then a leave, each placed from the current owners (as the runtime
    calls place()): (worst moved / minimal ratio, moves to or from another node)."""
    # the newcomer's name sorts first: ties of the remainder must not go its way
    nodes = [*(n(f"m{prefix}{i}") for i in range(count)), n(f"a{prefix}")]
    specs = names(duties, prefix)
    before = place(specs, nodes[:-1], {}, balanced=balanced)
    after = place(specs, nodes, owned(before), balanced=balanced)
    joined = moves(before, after)
    minimal = sum(o == nodes[-1].name for o in after.wanted.values())  # its share
    if balanced:  # the newcomer gets its share rounded down, the old nodes keep the
        # remainder's +1s (they already hold them): the fewest moves there are
        assert len(joined) == minimal == duties // (count + 1)
    else:  # plain placement does not depend on the owners
        assert after.wanted == place(specs, nodes, {}).wanted
    gone = place(specs, nodes[1:], owned(after), balanced=balanced)
    left = moves(after, gone)
    lost = sum(o == nodes[0].name for o in after.wanted.values())  # must move anyway
    wrong = sum(after.wanted[d] != nodes[-1].name for d in joined)
    wrong += sum(after.wanted[d] != nodes[0].name for d in left)
    return max(len(joined) / max(minimal, 1), len(left) / max(lost, 1)), wrong


@settings(max_examples=30, deadline=None)
@given(prefix=st.text("abxz", max_size=3), count=st.integers(2, 8),
       duties=st.integers(20, 200))
def test_plain_placement_moves_the_minimum_and_to_the_right_nodes(
    prefix: str, count: int, duties: int
) -> None:
    ratio, wrong = movement(False, prefix, count, duties)
    assert ratio <= 1.0 and wrong == 0  # exactly the new node's share moves, to it


# Issue #15's target: balanced moves within 1.2x the minimum, only to the joining / from
# the leaving node. (Placed from scratch, ignoring the owners, greedy bounded loads
# moved up to 3.0x with moves between old nodes; the runtime always passes the owners.)
BALANCED_MOVE_LIMIT = 1.2


@settings(max_examples=60, deadline=None)
@given(prefix=st.text("abxz", max_size=3), count=st.integers(2, 8),
       duties=st.integers(20, 200))
def test_balanced_placement_moves_the_minimum_and_to_the_right_nodes(
    prefix: str, count: int, duties: int
) -> None:
    ratio, wrong = movement(True, prefix, count, duties)
    assert ratio <= BALANCED_MOVE_LIMIT and wrong == 0


@st.composite
def membership_change(draw: st.DrawFn) -> tuple[list[DutySpec], list[NodeInfo], bool]:
    """Weighted nodes, some with roles, and a family of duties (some needing a role);
    then one node joins (True) or the first one leaves (False)."""
    with_roles = draw(st.booleans())
    roles = st.sampled_from([set(), set(), set(), {"x"}, {"y"}, {"x", "y"}])
    nodes = [
        n(f"n{i}", *sorted(draw(roles) if with_roles else ()),
          weight=draw(st.sampled_from([0.5, 1.0, 2.0, 3.0])))
        for i in range(draw(st.integers(2, 8)))
    ]
    needs = st.sampled_from([frozenset()] * 4 + [frozenset({"x"})] * with_roles)
    duties = [DutySpec(f"d{i}", roles=draw(needs)) for i in range(draw(st.integers(10, 150)))]
    return duties, nodes, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(world=membership_change())
def test_a_membership_change_moves_no_duty_through_a_third_node(
    world: tuple[list[DutySpec], list[NodeInfo], bool],
) -> None:
    """Placed from the current owners: a node never both gains and loses duties when
    the duty it gains could have gone where the one it loses went (no avoidable
    chain, so no avoidable move); without roles, exactly the necessary moves: each
    node gains or loses only what its new weighted share demands."""
    duties, nodes, join = world
    old, new = (nodes[:-1], nodes) if join else (nodes, nodes[1:])
    before = place(duties, old, {}, balanced=True)
    after = place(duties, new, owned(before), balanced=True)
    moved = moves(before, after)
    eligible = {d.name: set(after.ranks[d.name]) for d in duties}
    for x in {after.wanted[d] for d in moved} - {None}:
        gained = [d for d in moved if after.wanted[d] == x]
        given_to = {after.wanted[d] for d in moved if before.wanted[d] == x}
        assert not any(to in eligible[g] for g in gained for to in given_to - {None}), (x,)
    if not any(node.roles for node in nodes) and not any(d.roles for d in duties):
        a = Counter(owned(before).values())
        b = Counter(owned(after).values())
        necessary = sum(max(0, b[x] - a[x]) for x in b)
        assert len(moved) == necessary
        total = sum(x.weight for x in new)  # and the result is balanced
        for x in new:
            share = len(duties) * x.weight / total
            assert math.floor(share + 1e-9) <= b[x.name] <= math.ceil(share - 1e-9)


def test_unplaceable_duties_do_not_loosen_the_shares() -> None:
    """A duty no node can run takes no share: 4 duties over 3 nodes are 2/1/1, never
    2/2/0 (the 4 unplaceable ones once counted in the total, so two nodes could
    take their rounded-up share and leave the third below its rounded-down one)."""
    for prefix in ("p1", "p6", "p8", "p9", "q", ""):
        duties = [*names(4, prefix), *(DutySpec(f"{prefix}x{i}", roles=frozenset({"x"}))
                                       for i in range(4))]
        result = place(duties, [n("a"), n("b"), n("c")], {}, balanced=True)
        counts = Counter(result.wanted.values())
        assert counts[None] == 4 and sorted(counts[x] for x in "abc") == [1, 1, 2], prefix


def test_when_every_eligible_node_is_full_the_least_loaded_per_weight_takes_it() -> None:
    """The fallback of _balance, reached only when the rounded caps cannot all be
    kept (a chain of moves would place it otherwise: _augment). Shares: n1 1.33
    (z and the only y node), n0 and n2 0.33 (z), n3 and n4 0.5 (x): the two +1s of
    the remainder go to n3 and n4 (largest remainder), so the z nodes have room
    for nothing but d2 on n1, and d0 overflows to the least loaded per weight of
    its nodes: n0 or n2 (0 each; rank decides), never n1 (1)."""
    nodes = [n("n0", "z"), n("n1", "y", "z"), n("n2", "z"), n("n3", "x", weight=2.0),
             n("n4", "x", weight=2.0)]
    duties = [DutySpec(d, roles=frozenset({r})) for d, r in (("d0", "z"), ("d1", "x"),
                                                            ("d2", "y"))]
    result = place(duties, nodes, {}, balanced=True)
    assert result.wanted == {"d0": "n0", "d1": "n3", "d2": "n1"}
    assert result.ranks["d0"][0] == "n0"


def test_a_duty_with_only_full_nodes_gets_room_by_a_chain_of_moves() -> None:
    """Shares n0 0.67 (y), n1 0.83 (x, y), n2 0.5 (x): the +1s go to n1 and n0, so n2
    has cap 0. Greedy puts d0 (y) on n1, its best score; then d1 (x: n1, n2) finds
    both full. Moving d0 on to n0 makes room for d1 on n1, instead of putting two
    duties on n1 and none on n0."""
    nodes = [n("n0", "y", weight=2.0), n("n1", "x", "y"), n("n2", "x", "z")]
    duties = [DutySpec("d0", roles=frozenset({"y"})), DutySpec("d1", roles=frozenset({"x"}))]
    result = place(duties, nodes, {}, balanced=True)
    assert result.wanted == {"d0": "n0", "d1": "n1"}
    assert rank("d0", nodes[:2])[0] == "n1"  # greedy's pick for d0, by score


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(0, 60),
    weights=st.lists(st.sampled_from([0.0, 1e-9, 0.5, 1.0, 3.0, 1e6]), min_size=1, max_size=5),
    balanced=st.booleans(),
    sticky=st.booleans(),
)
def test_placing_again_from_the_result_changes_nothing(
    count: int, weights: list[float], balanced: bool, sticky: bool
) -> None:
    """Fixpoint: once duties sit where placement wants them, nothing flaps."""
    nodes = [n(f"n{i}", weight=w) for i, w in enumerate(weights)]
    duties = [*names(count), DutySpec("leader", sticky=sticky)]
    first = place(duties, nodes, {}, balanced=balanced)
    owners = {d: o for d, o in first.wanted.items() if o is not None}
    again = place(duties, nodes, owners, balanced=balanced)
    assert again.wanted == first.wanted and again.ranks == first.ranks


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 80),
    weights=st.lists(st.sampled_from([0.0, 1e-9, 0.5, 1.0, 3.0, 1e6]), min_size=1, max_size=5),
)
def test_edge_weights_in_balanced_mode(count: int, weights: list[float]) -> None:
    nodes = [n(f"n{i}", weight=w) for i, w in enumerate(weights)]
    result = place(names(count), nodes, {}, balanced=True)
    counts = Counter(result.wanted.values())
    assert sum(counts.values()) == count  # every duty placed, even on standby nodes
    total = sum(weights)
    if total > 0:  # weight-0 (standby) nodes get nothing while another node can take it
        assert all(counts[x.name] == 0 for x in nodes if x.weight == 0)
        for x in nodes:
            share = count * x.weight / total
            assert math.floor(share + 1e-9) <= counts[x.name] <= math.ceil(share - 1e-9)
    else:  # all standby: spread evenly
        assert max(counts.values()) - min(counts[x.name] for x in nodes) <= 1


@pytest.mark.parametrize(("weight_a", "x_duties"), [(1.0, 10), (2.0, 13), (1.0, 11)])
def test_duties_of_a_role_spread_over_its_nodes_by_weight(
    weight_a: float, x_duties: int
) -> None:
    """Role-x duties stay on the x nodes, spread by weight (within one per weight unit),
    and every duty is placed."""
    x = frozenset({"x"})
    nodes = [n("a", "x", weight=weight_a), n("b", "x"), n("c")]
    duties = [*(DutySpec(f"x{i}", roles=x) for i in range(x_duties)), *names(2, "p")]
    result = place(duties, nodes, {}, balanced=True)
    assert all(o is not None for o in result.wanted.values())
    assert all(result.wanted[f"x{i}"] in ("a", "b") for i in range(x_duties))
    counts = Counter(result.wanted.values())
    per_weight = [counts["a"] / weight_a, counts["b"] / 1.0]
    assert max(per_weight) - min(per_weight) <= 1.0, counts


def _feasible(eligible: dict[str, tuple[str, ...]], cap: dict[str, int]) -> bool:
    """Can every duty go to one of its eligible nodes with no node over its cap?
    (max bipartite b-matching by augmenting paths, written out plainly)"""
    at: dict[str, list[str]] = {n: [] for n in cap}

    def place_one(duty: str, seen: set[str]) -> bool:
        for node in eligible[duty]:
            if node in seen:
                continue
            seen.add(node)
            if len(at[node]) < cap[node]:
                at[node].append(duty)
                return True
            for other in list(at[node]):
                at[node].remove(other)
                at[node].append(duty)
                if place_one(other, seen):
                    return True
                at[node].remove(duty)
                at[node].append(other)
        return False

    return all(place_one(d, set()) for d in sorted(eligible))


@st.composite
def role_world(draw: st.DrawFn) -> tuple[list[DutySpec], list[NodeInfo]]:
    roles = st.sets(st.sampled_from(["x", "y", "z"]), max_size=3)
    nodes = [n(f"n{i}", *sorted(draw(roles)), weight=draw(st.sampled_from([1.0, 2.0])))
             for i in range(draw(st.integers(2, 6)))]
    need = st.sampled_from([frozenset(), frozenset({"x"}), frozenset({"y"}), frozenset({"z"})])
    duties = [DutySpec(f"d{i}", roles=draw(need)) for i in range(draw(st.integers(1, 16)))]
    return duties, nodes


@settings(max_examples=1500, deadline=None)
@given(world=role_world())
def test_caps_hold_whenever_some_assignment_keeps_them(
    world: tuple[list[DutySpec], list[NodeInfo]],
) -> None:
    """Against a brute-force oracle: when the duties CAN be placed with every node
    within its cap, balanced placement does so (greedy, then chains of moves);
    the overflow fallback is only for caps that cannot all hold."""
    duties, nodes = world
    result = place(duties, nodes, {}, balanced=True)
    live = {x.name: x for x in nodes}
    eligible = {d.name: tuple(result.ranks[d.name]) for d in duties if result.ranks[d.name]}
    pool = {d: (names, [(0.0, x) for x in names]) for d, names in eligible.items()}
    cap = _caps(_shares(pool, live), {}, len(pool))
    assert all(result.wanted[d] is not None for d in eligible)  # every placeable duty placed
    if _feasible(eligible, cap):
        counts = Counter(o for o in result.wanted.values() if o is not None)
        assert all(counts[x] <= cap[x] for x in cap), (counts, cap)


def test_a_chain_of_two_moves_makes_room() -> None:
    """Shares 1.17 / 0.5 / 0.5 / 0.83 give caps n0 1, n1 1, n2 0, n3 1 (the +1s by
    largest remainder: n3, then n1 before n2 by name). Greedy leaves d0 (z: n0,
    n2) with both full; room is two moves away (d2 n0 -> n3, d1 n3 -> n1), so
    both are made and no node ends over its cap. (Found by a random search.)"""
    nodes = [n("n0", "y", "z", weight=2.0), n("n1", "x"), n("n2", "z", weight=2.0),
             n("n3", "x", "y")]
    duties = [DutySpec("d0", roles=frozenset({"z"})), DutySpec("d1", roles=frozenset({"x"})),
              DutySpec("d2", roles=frozenset({"y"}))]
    result = place(duties, nodes, {}, balanced=True)
    assert result.wanted == {"d0": "n0", "d1": "n1", "d2": "n3"}


# -- _augment directly: chains, one after another in one pass, zones --------------
def _pool(eligible: dict[str, tuple[str, ...]]) -> dict[str, tuple[tuple[str, ...],
                                                                 list[tuple[float, str]]]]:
    return {d: (names, [(0.0, x) for x in names]) for d, names in eligible.items()}


def _no_zone(duty: str | None, node: str) -> tuple[str, str] | None:
    return None


def test_augment_runs_chains_one_after_another_and_keeps_its_books() -> None:
    """d0 has no way in (Z has cap 0 and holds nothing) and is returned; d1 and
    d2 still get their chains: d1 moves e1 A -> C; then d2 must move e2 B -> C
    and so e1 on again, C -> D (the first chain's result is where the second
    starts from). Loads end exact."""
    pool = _pool({"d0": ("Z",), "d1": ("A",), "d2": ("B",), "e1": ("A", "C", "D"),
                  "e2": ("B", "C"), "x": ("D",)})
    out = {"e1": "A", "e2": "B", "x": "D"}
    load = {"A": 1, "B": 1, "C": 0, "D": 1, "Z": 0}
    cap = {"A": 1, "B": 1, "C": 1, "D": 2, "Z": 0}
    rest = _augment(["d0", "d1", "d2"], pool, out, load, cap, _no_zone,
                    lambda d, x: False, {})
    assert rest == ["d0"]
    assert out == {"d1": "A", "d2": "B", "e2": "C", "e1": "D", "x": "D"}
    assert load == {"A": 1, "B": 1, "C": 1, "D": 2, "Z": 0}


def test_augment_moves_a_family_duty_only_within_its_zone_count() -> None:
    """e (family f) may move A -> C only when A and C are in the same zone; the
    placed duty counts in its zone."""
    zone = {"A": "z1", "C": "z1", "E": "z2"}

    def key(duty: str | None, node: str) -> tuple[str, str] | None:
        return ("f", zone[node]) if duty is not None and duty.startswith("f:") else None

    for room, placed in (("C", True), ("E", False)):
        pool = _pool({"f:d": ("A",), "f:e": ("A", room)})
        out, zone_load = {"f:e": "A"}, {("f", "z1"): 1}
        load, cap = {"A": 1, room: 0}, {"A": 1, room: 1}
        rest = _augment(["f:d"], pool, out, load, cap, key, lambda d, x: False, zone_load)
        assert (rest == []) is placed
        if placed:
            assert out == {"f:e": "C", "f:d": "A"} and zone_load == {("f", "z1"): 2}
        else:
            assert out == {"f:e": "A"} and zone_load == {("f", "z1"): 1}
