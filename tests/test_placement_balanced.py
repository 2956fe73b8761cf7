"""Placement (pure), balanced mode: exact weighted shares, ~1/N movement; and speed."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.placement import DutySpec, NodeInfo, moves, place


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
def movement(balanced: bool, prefix: str, count: int, duties: int) -> tuple[float, int]:
    """A join then a leave: (worst moved / minimal ratio, moves to or from another node)."""
    nodes = [n(f"m{prefix}{i}") for i in range(count + 1)]
    specs = names(duties, prefix)
    before = place(specs, nodes[:-1], {}, balanced=balanced)
    after = place(specs, nodes, {}, balanced=balanced)
    joined = moves(before, after)
    minimal = sum(o == nodes[-1].name for o in after.wanted.values())  # its share
    gone = place(specs, nodes[1:], {}, balanced=balanced)
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


# Target (issue #15): balanced moves within 1.2x the minimum, only to the joining / from
# the leaving node. Balanced placement today (greedy bounded loads) measures up to 3.0x
# (20-200 duties, 2-8 nodes), with some moves between old nodes: the placement rewrite
# (another issue) must bring BALANCED_MOVE_LIMIT down to 1.2 and stop moves between
# old nodes (docs/testing.md).
BALANCED_MOVE_LIMIT = 3.0


@settings(max_examples=30, deadline=None)
@given(prefix=st.text("abxz", max_size=3), count=st.integers(2, 8),
       duties=st.integers(20, 200))
def test_balanced_placement_movement_is_bounded(prefix: str, count: int, duties: int) -> None:
    ratio, _ = movement(True, prefix, count, duties)
    assert ratio <= BALANCED_MOVE_LIMIT


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
    and every duty is placed. (The "every eligible node full" fallback of _balance is
    still never reached by any test: docs/testing.md, mutation check.)"""
    x = frozenset({"x"})
    nodes = [n("a", "x", weight=weight_a), n("b", "x"), n("c")]
    duties = [*(DutySpec(f"x{i}", roles=x) for i in range(x_duties)), *names(2, "p")]
    result = place(duties, nodes, {}, balanced=True)
    assert all(o is not None for o in result.wanted.values())
    assert all(result.wanted[f"x{i}"] in ("a", "b") for i in range(x_duties))
    counts = Counter(result.wanted.values())
    per_weight = [counts["a"] / weight_a, counts["b"] / 1.0]
    assert max(per_weight) - min(per_weight) <= 1.0, counts
