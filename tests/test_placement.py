"""Placement (pure): eligibility, weighted rendezvous ranking, place() properties.

Balanced mode and performance: tests/test_placement_balanced.py."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core import placement as placement_mod
from shoal.core.placement import (
    DutySpec,
    NodeInfo,
    Placement,
    duty_family,
    eligible,
    is_disabled,
    moves,
    place,
    rank,
)

ROLES = ["api", "worker", "ingest"]
PATTERNS = ["import", "import:*", "cleanup", "c*", "rules:b"]
DUTY_NAMES = ["leader", "cleanup", "import:a", "import:b", "rules:a", "rules:b", "cert", "x", "y"]


def n(name: str, *roles: str, **kw: object) -> NodeInfo:
    return NodeInfo(name, frozenset(roles), **kw)  # type: ignore[arg-type]


@st.composite
def nodes_st(draw: st.DrawFn) -> list[NodeInfo]:
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=7))
    return [
        NodeInfo(
            name,
            frozenset(draw(st.sets(st.sampled_from(ROLES)))),
            weight=draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.5])),
            can_lead=draw(st.booleans()),
            disabled=frozenset(draw(st.sets(st.sampled_from(PATTERNS), max_size=2))),
        )
        for name in names
    ]


@st.composite
def duties_st(draw: st.DrawFn) -> list[DutySpec]:
    names = draw(st.lists(st.sampled_from(DUTY_NAMES), unique=True, max_size=len(DUTY_NAMES)))
    out: list[DutySpec] = []
    for i, name in enumerate(names):
        follows = draw(st.none() | st.sampled_from(names[:i])) if i else None  # acyclic
        out.append(
            DutySpec(
                name,
                roles=frozenset(draw(st.sets(st.sampled_from(ROLES), max_size=2))),
                sticky=draw(st.booleans()),
                leader_bound=draw(st.booleans()),
                with_duty=follows,
            )
        )
    return out


@st.composite
def world_st(draw: st.DrawFn) -> tuple[list[DutySpec], list[NodeInfo], dict[str, str]]:
    nodes = draw(nodes_st())
    duties = draw(duties_st())
    candidates = [x.name for x in nodes] + ["dead-node"]
    owners = {d.name: draw(st.sampled_from(candidates)) for d in duties if draw(st.booleans())}
    return duties, nodes, owners


def fits(duty: DutySpec, node: NodeInfo) -> bool:
    """Eligibility ignoring with_duty, via the public eligible()."""
    plain = DutySpec(duty.name, duty.roles, leader_bound=duty.leader_bound, family=duty.family)
    return node in eligible(plain, [node], {})


def names(k: int, prefix: str = "d") -> list[DutySpec]:
    return [DutySpec(f"{prefix}{i}") for i in range(k)]


def test_eligible_roles_leadership_and_with_duty() -> None:
    a, b, c = n("a", "api"), n("b", "worker"), n("c", "worker", can_lead=False)
    assert eligible(DutySpec("any"), [c, a, b], {}) == [a, b, c]
    assert eligible(DutySpec("w", roles=frozenset({"worker"})), [a, b, c], {}) == [b, c]
    assert eligible(DutySpec("l", leader_bound=True), [a, b, c], {}) == [a, b]
    follower = DutySpec("f", roles=frozenset({"worker"}), with_duty="leader")
    assert eligible(follower, [a, b, c], {}) == []  # leader unowned
    assert eligible(follower, [a, b, c], {"leader": "b"}) == [b]
    assert eligible(follower, [a, b, c], {"leader": "a"}) == []  # a lacks the role
    assert eligible(follower, [a, b, c], {"leader": "gone"}) == []


@pytest.mark.parametrize(
    ("pattern", "duty", "off"),
    [
        ("import", DutySpec("import:engine-a"), True),  # family name
        ("import:*", DutySpec("import:engine-a"), True),  # family pattern
        ("import", DutySpec("event-import", family="import"), True),  # explicit family
        ("import:*", DutySpec("event-import", family="import"), True),
        ("import:engine-a", DutySpec("import:engine-a"), True),  # exact name
        ("import:engine-b", DutySpec("import:engine-a"), False),
        ("imp*", DutySpec("import:engine-a"), True),  # fnmatch
        ("import", DutySpec("importer"), False),
        ("rules[1]", DutySpec("rules[1]"), True),  # exact match even with glob characters
        ("Import", DutySpec("import:a"), False),  # case-sensitive everywhere
    ],
)
def test_disabled_patterns(pattern: str, duty: DutySpec, off: bool) -> None:
    node = n("a", disabled=frozenset({pattern}))
    assert is_disabled(duty, node) is off
    assert (eligible(duty, [node], {}) == []) is off


def test_duty_family() -> None:
    assert duty_family(DutySpec("import:a")) == "import"
    assert duty_family(DutySpec("cleanup")) is None
    assert duty_family(DutySpec("x:y", family="z")) == "z"


def test_rank_is_stable_across_processes_and_versions() -> None:
    # Golden values: a change here reshuffles every running cluster during an upgrade.
    plain = [n(x) for x in ["alpha", "beta", "gamma", "delta"]]
    assert rank("import:engine-a", plain) == ["gamma", "delta", "alpha", "beta"]
    weighted = [
        n("alpha", weight=1.0),
        n("beta", weight=2.0),
        n("gamma", weight=0.5),
        n("delta", weight=0.0),
    ]
    assert rank("leader", weighted) == ["gamma", "alpha", "beta", "delta"]


def test_weight_zero_is_standby_and_ranks_last() -> None:
    nodes = [n("s", weight=0.0), n("a"), n("b")]
    for d in names(50):
        assert rank(d.name, nodes)[-1] == "s"
    assert place([DutySpec("x")], [n("s", weight=0.0)], {}).wanted == {"x": "s"}


def test_weights_are_respected_statistically() -> None:
    nodes = [n("big", weight=2.0), n("small-1"), n("small-2")]
    counts = Counter(place(names(3000), nodes, {}).wanted.values())
    assert 0.45 < counts["big"] / 3000 < 0.55
    assert 1.7 < counts["big"] / ((counts["small-1"] + counts["small-2"]) / 2) < 2.3


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="weight"):
        n("a", weight=-1.0)
    with pytest.raises(ValueError, match="weight"):
        n("a", weight=math.inf)
    with pytest.raises(ValueError, match="duplicate node"):
        place([], [n("a"), n("a")], {})
    with pytest.raises(ValueError, match="duplicate duty"):
        place([DutySpec("x"), DutySpec("x")], [n("a")], {})


@settings(max_examples=150, deadline=None)
@given(world=world_st(), balanced=st.booleans(), seed=st.integers(0, 2**32))
def test_deterministic_and_order_independent(
    world: tuple[list[DutySpec], list[NodeInfo], dict[str, str]], balanced: bool, seed: int
) -> None:
    duties, nodes, owners = world
    first = place(duties, nodes, owners, balanced=balanced)
    rng = random.Random(seed)
    shuffled_d, shuffled_n = rng.sample(duties, len(duties)), rng.sample(nodes, len(nodes))
    shuffled_o = dict(rng.sample(sorted(owners.items()), len(owners)))
    assert place(shuffled_d, shuffled_n, shuffled_o, balanced=balanced) == first
    assert place(duties, nodes, owners, balanced=balanced) == first


@settings(max_examples=200, deadline=None)
@given(world=world_st(), balanced=st.booleans())
def test_never_on_an_ineligible_node(
    world: tuple[list[DutySpec], list[NodeInfo], dict[str, str]], balanced: bool
) -> None:
    duties, nodes, owners = world
    result = place(duties, nodes, owners, balanced=balanced)
    placed = {d: o for d, o in result.wanted.items() if o is not None}
    assert set(result.wanted) == set(result.ranks) == {d.name for d in duties}
    for duty in duties:
        wanted, ranks = result.wanted[duty.name], result.ranks[duty.name]
        assert len(set(ranks)) == len(ranks)
        assert all(fits(duty, x) for x in nodes if x.name in ranks)
        if wanted is not None:
            assert ranks[0] == wanted
            # eligible against the placement itself: co-located duties sit with X
            assert wanted in [x.name for x in eligible(duty, nodes, placed)]
        if duty.with_duty is None:
            assert sorted(ranks) == [x.name for x in eligible(duty, nodes, owners)]
            assert (wanted is None) == (not ranks)
        else:
            target = result.wanted[duty.with_duty]
            ok = target is not None and fits(duty, next(x for x in nodes if x.name == target))
            assert wanted == (target if ok else None)


@settings(max_examples=200, deadline=None)
@given(world=world_st(), balanced=st.booleans())
def test_sticky_duty_with_live_eligible_owner_never_moves(
    world: tuple[list[DutySpec], list[NodeInfo], dict[str, str]], balanced: bool
) -> None:
    duties, nodes, owners = world
    result = place(duties, nodes, owners, balanced=balanced)
    for duty in duties:
        owner = owners.get(duty.name)
        live = [x.name for x in eligible(duty, nodes, owners)]
        if duty.sticky and duty.with_duty is None and owner in live:
            assert result.wanted[duty.name] == owner


@settings(max_examples=20, deadline=None, derandomize=True)
@given(prefix=st.text("abcxyz", max_size=5), count=st.integers(5, 8))
def test_join_and_leave_move_about_one_nth_plain(prefix: str, count: int) -> None:
    duties = names(300, prefix)
    nodes = [n(f"node-{prefix}-{i}") for i in range(count)]
    before = place(duties, nodes[:-1], {})
    after = place(duties, nodes, {})
    moved = moves(before, after)
    assert all(after.wanted[d] == nodes[-1].name for d in moved)  # only TO the new node
    assert 0.08 * 300 <= len(moved) <= 0.35 * 300
    gone = nodes[0].name
    left = place(duties, nodes[1:], {})
    moved = moves(after, left)
    assert moved == {d for d, o in after.wanted.items() if o == gone}  # only FROM it
    assert 0.08 * 300 <= len(moved) <= 0.35 * 300


def test_colocated_chain_moves_with_its_anchor() -> None:
    duties = [
        DutySpec("history-cleanup", with_duty="event-import"),
        DutySpec("event-import", with_duty="import:a"),
        DutySpec("import:a", roles=frozenset({"ingest"})),
    ]
    nodes = [n(f"n{i}", "ingest") for i in range(5)]
    before = place(duties, nodes, {})
    anchor = before.wanted["import:a"]
    assert before.wanted == dict.fromkeys(before.wanted, anchor)
    after = place(duties, [x for x in nodes if x.name != anchor], {})
    assert after.wanted["import:a"] != anchor
    assert len(set(after.wanted.values())) == 1
    assert moves(before, after) == {"history-cleanup", "event-import", "import:a"}


def test_colocated_duty_not_eligible_on_the_anchor_is_unplaced() -> None:
    duties = [
        DutySpec("leader", sticky=True, leader_bound=True),
        DutySpec("report", roles=frozenset({"api"}), with_duty="leader"),
    ]
    result = place(duties, [n("a", "worker"), n("b", "api")], {"leader": "a"})
    assert result.wanted == {"leader": "a", "report": None}
    assert result.ranks["report"] == ["b"]  # fallback if b ever owns the leader duty


def test_sticky_leader_stays_until_its_owner_leaves() -> None:
    nodes = [n(x) for x in "abcde"]
    leader = DutySpec("leader", sticky=True, leader_bound=True)
    preferred = rank("leader", nodes)[0]
    other = next(x.name for x in nodes if x.name != preferred)
    assert place([leader], nodes, {"leader": other}).wanted["leader"] == other
    assert place([leader], nodes, {"leader": "dead"}).wanted["leader"] == preferred
    demoted = [NodeInfo(x.name, x.roles, can_lead=x.name != other) for x in nodes]
    assert place([leader], demoted, {"leader": other}).wanted["leader"] == preferred


def test_with_duty_cycles_and_unknown_targets_raise() -> None:
    cycle = [
        DutySpec("a", with_duty="b"),
        DutySpec("b", with_duty="c"),
        DutySpec("c", with_duty="a"),
    ]
    with pytest.raises(ValueError, match="a -> b -> c -> a"):
        place(cycle, [n("x")], {})
    with pytest.raises(ValueError, match="cycle: s -> s"):
        place([DutySpec("s", with_duty="s")], [n("x")], {})
    with pytest.raises(ValueError, match="'nope'"):
        place([DutySpec("a", with_duty="nope")], [n("x")], {})


def test_no_nodes_and_moves_helper() -> None:
    assert place([DutySpec("x")], [], {}) == Placement({"x": None}, {"x": []})
    before = Placement({"a": "n1", "b": "n1", "c": None, "gone": "n1"}, {})
    after = Placement({"a": "n1", "b": "n2", "c": "n1", "new": "n2"}, {})
    assert moves(before, after) == {"b", "c"}


def test_equal_weight_keys_order_pairs_as_the_float_scores_do() -> None:
    """_Ranker's int keys (the hash alone) and the float score weight / ln(h) give
    the same order: adjacent 52-bit hashes never share a float score (checked at
    both ends of the range and at seeded random points)."""
    two_52 = float(1 << 52)

    def neg_score(bits: int) -> float:
        return 1.0 / math.log((bits + 0.5) / two_52)

    rng = random.Random(7)
    points = [*range(2000), *((1 << 52) - 2 - i for i in range(2000)),
              *(rng.getrandbits(52) - 1 for _ in range(20000))]
    for k in points:
        k = max(0, k)
        assert neg_score(k) > neg_score(k + 1), k
    nodes = [NodeInfo(f"n{i}", frozenset()) for i in range(9)]
    weighted = [*nodes[:-1], NodeInfo("n8", frozenset(), weight=1.0000001)]
    for duty in ("a", "p/1", "p/2", "import:x"):
        plain = placement_mod._Ranker(nodes)
        floats = placement_mod._Ranker(weighted)
        assert plain.plain and not floats.plain
        # n8's weight differs by 1e-7: the order of the other eight is the same
        assert [n for _, n in plain.scored(duty, [n.name for n in nodes[:-1]])] == [
            n for _, n in floats.scored(duty, [n.name for n in nodes[:-1]])]
