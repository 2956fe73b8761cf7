"""Placement rules (pure): zones, preferred owners with fail-back, newest version,
cordon; minimal movement and fixpoint. Hypothesis properties plus the runtime's
plan() under a fake clock (fail-back waits rebalance_delay)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.core.placement import DutySpec, NodeInfo, Placement, place, version_key
from shoal.primitives.ownership import Owner
from shoal.runtime.app import Duty
from shoal.runtime.plan import Release, View, plan

ZONES = ["z1", "z2", "z3"]


def fam(k: int, family: str = "part") -> list[DutySpec]:
    return [DutySpec(f"{family}:{i}") for i in range(k)]


def owned(result: Placement) -> dict[str, str]:
    return {d: o for d, o in result.wanted.items() if o is not None}


@st.composite
def zoned_nodes(draw: st.DrawFn) -> list[NodeInfo]:
    count = draw(st.integers(2, 9))
    return [
        NodeInfo(
            f"n{i}", frozenset(), weight=draw(st.sampled_from([1.0, 1.0, 2.0])),
            zone=draw(st.sampled_from(ZONES)),
        )
        for i in range(count)
    ]


@settings(max_examples=80, deadline=None)
@given(nodes=zoned_nodes(), size=st.integers(1, 90), lost=st.sampled_from(ZONES))
@example(  # found by the random search; moved a duty between two survivors (docs/testing.md)
    nodes=[NodeInfo("n0", frozenset(), weight=2.0, zone="z3"),
           NodeInfo("n1", frozenset(), weight=2.0, zone="z1"),
           NodeInfo("n2", frozenset(), weight=1.0, zone="z1"),
           NodeInfo("n3", frozenset(), weight=1.0, zone="z1")],
    size=2, lost="z3",
)
def test_losing_a_zone_loses_at_most_its_fair_share_and_only_moves_its_duties(
    nodes: list[NodeInfo], size: int, lost: str
) -> None:
    duties = fam(size)
    before = place(duties, nodes, {}, balanced=True)
    assert all(o is not None for o in before.wanted.values())
    zone_of = {n.name: n.zone for n in nodes}
    weights = Counter[str]()
    for n in nodes:
        weights[n.zone] += n.weight  # type: ignore[assignment]
    per_zone = Counter(zone_of[o] for o in before.wanted.values() if o is not None)
    if len(weights) > 1:
        for zone, held in per_zone.items():
            assert held <= math.ceil(size * weights[zone] / sum(weights.values()) - 1e-9)
    survivors = [n for n in nodes if n.zone != lost]
    if not survivors:
        return
    after = place(duties, survivors, owned(before), balanced=True)
    moved = {d for d in duties if after.wanted[d.name] != before.wanted[d.name]}
    assert moved == {d for d in duties if zone_of[before.wanted[d.name] or ""] == lost}


@st.composite
def rule_world(draw: st.DrawFn) -> tuple[list[DutySpec], list[NodeInfo], bool]:
    count = draw(st.integers(1, 7))
    names = [f"n{i}" for i in range(count)]
    nodes = [
        NodeInfo(
            name, frozenset(draw(st.sets(st.sampled_from(["api", "worker"])))),
            zone=draw(st.sampled_from(["", *ZONES])),
            version=draw(st.sampled_from(["1.0", "1.1", "2.0"])),
            cordoned=draw(st.booleans()) and draw(st.booleans()),
            prefers=frozenset(draw(st.sets(st.sampled_from(["part", "single-1", "x*"])))),
        )
        for name in names
    ]
    duties = [
        *fam(draw(st.integers(0, 40))),
        *(
            DutySpec(
                f"single-{i}", frozenset(draw(st.sets(st.sampled_from(["api"])))),
                sticky=draw(st.booleans()),
                prefer=frozenset(draw(st.sets(st.sampled_from(names), max_size=2))),
            )
            for i in range(draw(st.integers(0, 6)))
        ),
    ]
    return duties, nodes, draw(st.booleans())


_F = frozenset
FOUND_FLAPPING = (  # found by the random search: greedy overfilled n1, placing again moved one
    [DutySpec("part:0"), DutySpec("part:1"), DutySpec("single-0", _F({"api"})),
     DutySpec("single-1"), DutySpec("single-2", sticky=True),
     DutySpec("single-3", sticky=True), DutySpec("single-4", prefer=_F({"n1", "n2"}))],
    [NodeInfo("n0", _F()), NodeInfo("n1", _F({"api"})), NodeInfo("n2", _F()),
     NodeInfo("n3", _F()), NodeInfo("n4", _F({"api"}), prefers=_F({"part", "single-1"})),
     NodeInfo("n5", _F(), prefers=_F({"part", "single-1"}))],
    False,
)


FOUND_ZONE_FLAPPING = (  # the zone cap forced part:2 onto a full n2 (needs a chain)
    [*fam(4), DutySpec("single-0"), DutySpec("single-1"), DutySpec("single-2"),
     DutySpec("single-3", sticky=True), DutySpec("single-4", prefer=_F({"n0", "n2"}))],
    [NodeInfo("n0", _F(), prefers=_F({"part"})), NodeInfo("n1", _F(), cordoned=True),
     NodeInfo("n2", _F(), zone="z1", prefers=_F({"part"})),
     NodeInfo("n3", _F(), prefers=_F({"part"})), NodeInfo("n4", _F(), cordoned=True),
     NodeInfo("n5", _F(), prefers=_F({"part"}))],
    False,
)


@settings(max_examples=150, deadline=None)
@given(world=rule_world(), balanced=st.booleans())
@example(world=FOUND_FLAPPING, balanced=True)
@example(world=FOUND_ZONE_FLAPPING, balanced=True)
def test_placing_again_from_the_result_changes_nothing(
    world: tuple[list[DutySpec], list[NodeInfo], bool], balanced: bool
) -> None:
    duties, nodes, newest = world
    first = place(duties, nodes, {}, balanced=balanced, newest_version=newest)
    again = place(duties, nodes, owned(first), balanced=balanced, newest_version=newest)
    assert again.wanted == first.wanted
    for name, owner in first.wanted.items():
        if owner is not None:
            assert first.ranks[name][0] == owner


@settings(max_examples=80, deadline=None)
@given(
    count=st.integers(2, 12), size=st.integers(20, 400), prefix=st.text("ab", max_size=3),
    weights=st.lists(st.sampled_from([1.0, 1.0, 2.0]), min_size=13, max_size=13),
    zones=st.lists(st.sampled_from(["", "z1", "z2"]), min_size=13, max_size=13),
)
def test_a_join_moves_at_most_one_and_a_half_ideal_shares(
    count: int, size: int, prefix: str, weights: list[float], zones: list[str]
) -> None:
    duties = fam(size, f"f{prefix}")
    nodes = [
        NodeInfo(f"node-{i}", frozenset(), weight=weights[i], zone=zones[i])
        for i in range(count + 1)
    ]
    before = place(duties, nodes[:count], {}, balanced=True)
    after = place(duties, nodes, owned(before), balanced=True)
    moved = sum(1 for d in duties if before.wanted[d.name] != after.wanted[d.name])
    ideal = size * nodes[count].weight / sum(n.weight for n in nodes)
    assert moved <= max(1.5 * ideal, ideal + 2)  # whole duties: +2 for rounding of tiny shares
    if len(set(zones[: count + 1])) == 1:  # (with zones, a zone's new share may shift)
        elsewhere = [d for d, o in after.wanted.items()
                     if o != before.wanted[d] and o != f"node-{count}"]
        assert len(elsewhere) <= 2  # the newcomer takes the moves; rounding may pass one on


def test_cordoned_node_keeps_its_duties_and_gets_no_new_ones() -> None:
    nodes = [NodeInfo(x, frozenset()) for x in "abc"]
    duties = [*fam(30), DutySpec("solo")]
    before = place(duties, nodes, {}, balanced=True)
    held = {d for d, o in before.wanted.items() if o == "a"}
    cordoned = [NodeInfo("a", frozenset(), cordoned=True), *nodes[1:]]
    after = place(duties, cordoned, owned(before), balanced=True)
    assert {d for d, o in after.wanted.items() if o == "a"} == held
    # a free duty never goes to the cordoned node, and one it gave up never comes back
    for d in held:
        free = {k: v for k, v in owned(before).items() if k != d}
        assert place(duties, cordoned, free, balanced=True).wanted[d] != "a"
    assert set(place(duties, cordoned, {}, balanced=True).wanted.values()) <= {"b", "c"}


@settings(max_examples=60, deadline=None)
@given(sticky=st.booleans(), duty=st.sampled_from(["engine-x", "import:x"]))
def test_preferred_owner_owns_standby_covers_and_it_fails_back(sticky: bool, duty: str) -> None:
    spec = DutySpec(duty, sticky=sticky, prefer=frozenset({"a"}))
    a, b, c = (NodeInfo(x, frozenset()) for x in "abc")
    assert place([spec], [a, b, c], {}, balanced=True).wanted[duty] == "a"
    standby = place([spec], [b, c], {}, balanced=True).wanted[duty]
    assert standby in ("b", "c")
    back = place([spec], [a, b, c], {duty: standby}, balanced=True)
    assert back.wanted[duty] == "a" and back.ranks[duty] == ["a"]
    # node-side form: a node that prefers the duty (or its family, or a pattern)
    for pattern in (duty, duty.partition(":")[0], duty[:3] + "*"):
        c2 = NodeInfo("c", frozenset(), prefers=frozenset({pattern}))
        assert place([DutySpec(duty, sticky=sticky)], [a, b, c2], {"x": "a"}).wanted[duty] == "c"


def test_version_keys_order_numbers_numerically() -> None:
    assert version_key("1.10") > version_key("1.9") > version_key("1")
    assert version_key("2.0.1") > version_key("2.0")
    # parts split on ".", "-" and "+"; numbers before words; no pre-release rule
    assert version_key("2.0-rc1") == version_key("2.0.rc1") == ((0, 2), (0, 0), (1, "rc1"))
    assert version_key("1.2+build7") == ((0, 1), (0, 2), (1, "build7"))
    assert version_key("1.0-1") == version_key("1.0.1") > version_key("1.0")
    assert version_key("1.x") > version_key("1.99")  # a word sorts after any number
    assert version_key("") == () and version_key("1..2") == ((0, 1), (0, 2))


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(["a", "b", "c"]), sticky=st.booleans())
def test_rolling_upgrade_moves_each_singleton_once(order: list[str], sticky: bool) -> None:
    """Restart a, b, c one at a time onto 2.0: with the rule, a singleton never
    leaves a live owner more than once (moves forced by its owner stopping
    aside), and ends on the new version."""
    duties = [DutySpec(f"single-{i}", sticky=sticky) for i in range(12)]
    versions = dict.fromkeys("abc", "1.0")
    owners: dict[str, str] = {}

    def settle(live: list[str], newest: bool) -> dict[str, int]:
        nodes = [NodeInfo(x, frozenset(), version=versions[x]) for x in live]
        wanted = place(duties, nodes, owners, balanced=True, newest_version=newest).wanted
        voluntary = {d: 1 for d, o in wanted.items() if d in owners and owners[d] != o}
        owners.clear()
        owners.update({d: o for d, o in wanted.items() if o is not None})
        return voluntary

    settle(list("abc"), True)
    moves = Counter[str]()
    for node in order:
        rest = [x for x in "abc" if x != node]
        for d in [d for d, o in owners.items() if o == node]:
            del owners[d]  # its node stopped: a forced move, not counted
        settle(rest, True)
        versions[node] = "2.0"
        moves.update(settle(list("abc"), True))
    assert max(moves.values(), default=0) <= 1
    assert len(owners) == len(duties) and all(versions[o] == "2.0" for o in owners.values())


def _duty(name: str, sticky: bool) -> Duty:
    return Duty(name, name, None, frozenset(), None, sticky, False)


def test_plan_fails_back_a_sticky_duty_only_after_rebalance_delay() -> None:
    spec = DutySpec("engine", sticky=True, prefer=frozenset({"a"}))
    nodes = [NodeInfo(x, frozenset()) for x in "ab"]
    owner = Owner("engine", "b", 7, 0.0, 42)
    placement = place([spec], nodes, {"engine": "b"})
    assert placement.wanted["engine"] == "a"

    def at(now: float) -> list[object]:
        return list(plan(View(
            me="b", lease=42, duties=[_duty("engine", True)], owners={"engine": owner},
            placement=placement, running={"engine": 7}, now=now, stable_since=100.0,
            rebalance_delay=5.0,
        )))

    assert at(104.9) == []
    assert at(105.0) == [Release("engine", 7, "fail-back to a")]
    # a sticky duty whose owner is still eligible never moves
    plain = place([DutySpec("engine", sticky=True)], nodes, {"engine": "b"})
    assert plain.wanted["engine"] == "b"


def test_only_a_cordoned_owner_keeps_a_duty_it_would_not_get() -> None:
    """With a cordoned node in the cluster (the rules are on), a duty on an
    ordinary node that is not its best still moves to its best node; only the
    cordoned owner keeps what it has."""
    a, b = NodeInfo("a", frozenset()), NodeInfo("b", frozenset())
    c = NodeInfo("c", frozenset(), cordoned=True)
    for i in range(12):
        duty = DutySpec(f"job-{i}")
        best = place([duty], [a, b], {}).wanted[duty.name]
        other = "b" if best == "a" else "a"
        assert place([duty], [a, b, c], {duty.name: other}).wanted[duty.name] == best
        assert place([duty], [a, b, c], {duty.name: "c"}).wanted[duty.name] == "c"


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(2, 12), others=st.integers(0, 30),
    split=st.sampled_from([(1, 1), (1, 2), (2, 2), (1, 3), (2, 3)]),
    prefix=st.text("abc", max_size=2),
)
def test_two_zones_each_hold_at_most_their_share_of_a_family(
    size: int, others: int, split: tuple[int, int], prefix: str
) -> None:
    """The commonest deployment: two zones. A family mixed into a bigger pool (so
    the node caps alone would let one zone take all of it) is still spread: each
    zone holds at most ceil(size * its nodes / all nodes)."""
    nodes = [NodeInfo(f"{prefix}a{i}", frozenset(), zone="A") for i in range(split[0])]
    nodes += [NodeInfo(f"{prefix}b{i}", frozenset(), zone="B") for i in range(split[1])]
    duties = [*fam(size, f"{prefix}f"), *(DutySpec(f"{prefix}o{i}") for i in range(others))]
    result = place(duties, nodes, {}, balanced=True)
    zone_of = {x.name: x.zone for x in nodes}
    held = Counter(zone_of[o] for d, o in result.wanted.items()
                   if d.startswith(f"{prefix}f:") and o is not None)
    total = len(nodes)
    assert held["A"] <= math.ceil(size * split[0] / total - 1e-9), held
    assert held["B"] <= math.ceil(size * split[1] / total - 1e-9), held
