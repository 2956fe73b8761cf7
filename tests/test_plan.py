"""runtime/plan.py, directly (pure): the k x grace fallback, never acquiring a duty someone
owns, releases of dependents before their anchor and before anything else, release of a
stale record of a previous session, rebalancing only after ``rebalance_delay``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.placement import Placement
from shoal.primitives.ownership import Owner
from shoal.runtime.app import Duty
from shoal.runtime.plan import Acquire, Release, Run, Stop, View, plan

ME, LEASE, OLD = "me", 7, 3
NODES = ["me", "n1", "n2", "n3"]


def duty(name: str, *, with_duty: str | None = None, sticky: bool = False) -> Duty:
    return Duty(name, name, None, frozenset(), with_duty, sticky, sticky)


def owner(name: str, node: str = ME, token: int = 10, lease: int = LEASE) -> Owner:
    return Owner(name, node, token, 0.0, lease)


def view(duties: list[Duty], **kw: Any) -> View:
    kw.setdefault("owners", {})
    kw.setdefault("placement", Placement())
    kw.setdefault("running", {})
    kw.setdefault("now", 100.0)
    return View(me=ME, lease=LEASE, duties=duties, grace=1.0, rebalance_delay=5.0, **kw)


def ranked(name: str, order: list[str], wanted: str | None = None) -> Placement:
    return Placement({name: order[0] if wanted is None else wanted}, {name: order})


# -- the grace fallback ------------------------------------------------------------
def test_the_wanted_node_acquires_a_free_duty_at_once() -> None:
    v = view([duty("d")], placement=ranked("d", [ME, "n1"]), free_since={"d": 100.0})
    assert plan(v) == [Acquire("d")]


def test_the_k_th_node_waits_k_times_grace() -> None:
    for k in (1, 2, 3):
        order = [n for n in NODES if n != ME]
        order.insert(k, ME)
        place = ranked("d", order)
        for free_for, acts in ((k * 1.0 - 0.01, []), (k * 1.0, [Acquire("d")])):
            v = view([duty("d")], placement=place, free_since={"d": 100.0 - free_for})
            assert plan(v) == acts, (k, free_for)
    unseen = view([duty("d")], placement=ranked("d", ["n1", ME]))  # never seen free: now
    assert plan(unseen) == []


def test_a_node_outside_the_ranks_never_acquires() -> None:
    v = view([duty("d")], placement=ranked("d", ["n1", "n2"]), free_since={"d": 0.0})
    assert plan(v) == []


# -- co-located duties ---------------------------------------------------------------
def test_a_colocated_duty_is_acquired_only_with_its_anchor_on_this_lease() -> None:
    duties = [duty("x"), duty("y", with_duty="x")]
    place = Placement({"x": ME, "y": ME}, {"x": [ME], "y": [ME]})
    mine = view(duties, placement=place, owners={"x": owner("x")}, running={"x": 10})
    assert plan(mine) == [Acquire("y")]
    for anchor in (owner("x", node="n1"), owner("x", lease=OLD)):
        v = view(duties, placement=place, owners={"x": anchor}, free_since={"y": 0.0})
        assert Acquire("y") not in plan(v)


def test_dependents_are_released_before_their_anchor() -> None:
    duties = [duty("x"), duty("y", with_duty="x"), duty("z", with_duty="y")]
    owners = {n: owner(n, token=t) for n, t in (("x", 1), ("y", 2), ("z", 3))}
    place = Placement({"x": "n1", "y": "n1", "z": "n1"}, {n: ["n1", ME] for n in "xyz"})
    v = view(duties, placement=place, owners=owners, running={"x": 1, "y": 2, "z": 3},
             stable_since=0.0)
    assert [(a.duty, a.token) for a in plan(v) if isinstance(a, Release)] == [
        ("z", 3), ("y", 2), ("x", 1)]


def test_a_dependent_follows_an_anchor_that_left() -> None:
    duties = [duty("x"), duty("y", with_duty="x")]
    v = view(duties, owners={"x": owner("x", node="n1"), "y": owner("y", token=4)},
             running={"y": 4})
    (rel,) = plan(v)
    assert rel == Release("y", 4, "follows x, which left this node")


# -- stale records and lost ownership -------------------------------------------------
def test_a_stale_record_of_a_previous_session_is_released() -> None:
    v = view([duty("d")], owners={"d": owner("d", lease=OLD, token=9)}, running={"d": 9})
    assert plan(v) == [Release("d", 9, "stale record of a previous session"),
                       Stop("d", "ownership lost")]
    v = view([duty("d")], owners={"d": owner("d", lease=OLD, token=9)})
    assert plan(v) == [Release("d", 9, "stale record of a previous session")]


def test_a_duty_owned_elsewhere_is_stopped_and_never_released() -> None:
    v = view([duty("d")], owners={"d": owner("d", node="n1")}, running={"d": 10},
             placement=ranked("d", [ME]), free_since={"d": 0.0})
    assert plan(v) == [Stop("d", "ownership lost")]


def test_run_starts_or_restarts_with_the_current_token() -> None:
    o = owner("d", token=12)
    assert plan(view([duty("d")], owners={"d": o})) == [Run("d", o)]
    assert plan(view([duty("d")], owners={"d": o}, running={"d": 11})) == [Run("d", o)]
    assert plan(view([duty("d")], owners={"d": o}, running={"d": 12})) == []


# -- rebalancing -------------------------------------------------------------------
def test_rebalance_waits_for_stable_membership_and_spares_sticky_duties() -> None:
    duties = [duty("d"), duty("leader", sticky=True)]
    owners = {"d": owner("d", token=5), "leader": owner("leader", token=6)}
    place = Placement({"d": "n1", "leader": "n1"}, {"d": ["n1", ME], "leader": ["n1", ME]})
    running = {"d": 5, "leader": 6}
    early = view(duties, owners=owners, placement=place, running=running, stable_since=95.01)
    assert plan(early) == []
    late = view(duties, owners=owners, placement=place, running=running, stable_since=95.0)
    assert plan(late) == [Release("d", 5, "rebalance to n1")]
    nobody = Placement({"d": None}, {"d": []})
    only_d = {"d": owners["d"]}
    assert plan(view([duty("d")], owners=only_d, placement=nobody, running={"d": 5})) == []


def test_a_duty_taken_by_the_fallback_stays_until_membership_changes() -> None:
    """Two nodes whose placements disagree (each wants the other to take d) must not
    pass d back and forth with nobody running it: once this node took d by the
    fallback, it keeps it until membership changes, then rebalances as usual."""
    o = owner("d", token=5)
    place = ranked("d", ["n1", ME])  # wanted on n1, which did not take it
    kw: dict[str, Any] = {"owners": {"d": o}, "placement": place, "running": {"d": 5},
                          "stable_since": 90.0}
    assert plan(view([duty("d")], held={"d": 97.0}, **kw)) == []  # taken after the change
    assert plan(view([duty("d")], held={"d": 90.0}, **kw)) == []  # ... in the same instant
    moved = [Release("d", 5, "rebalance to n1")]
    assert plan(view([duty("d")], held={"d": 89.9}, **kw)) == moved  # before: members changed
    assert plan(view([duty("d")], held={"e": 97.0}, **kw)) == moved  # another duty's hold


# -- properties over random views --------------------------------------------------
@st.composite
def views(draw: st.DrawFn) -> View:
    n = draw(st.integers(1, 6))
    duties: list[Duty] = []
    for i in range(n):
        anchor = draw(st.sampled_from([None, *[d.name for d in duties]]))
        duties.append(duty(f"d{i}", with_duty=anchor, sticky=draw(st.booleans())))
    owners: dict[str, Owner] = {}
    running: dict[str, int] = {}
    ranks: dict[str, list[str]] = {}
    wanted: dict[str, str | None] = {}
    free_since: dict[str, float] = {}
    for i, d in enumerate(duties):
        if draw(st.booleans()):
            owners[d.name] = owner(d.name, node=draw(st.sampled_from(NODES)), token=10 + i,
                                   lease=draw(st.sampled_from([LEASE, OLD])))
        if draw(st.booleans()):
            running[d.name] = draw(st.sampled_from([10 + i, 5]))
        ranks[d.name] = draw(st.permutations(NODES))[: draw(st.integers(0, 4))]
        wanted[d.name] = draw(st.sampled_from([None, *ranks[d.name][:1]]))
        if draw(st.booleans()):
            free_since[d.name] = draw(st.floats(90.0, 100.0))
    return view(duties, owners=owners, running=running, placement=Placement(wanted, ranks),
                free_since=free_since, stable_since=draw(st.floats(90.0, 100.0)))


@settings(max_examples=400, deadline=None)
@given(views())
def test_plan_invariants(v: View) -> None:
    acts = plan(v)
    by_name = {d.name: d for d in v.duties}
    kinds = [isinstance(a, Release) for a in acts]
    assert kinds == sorted(kinds, reverse=True)  # every release comes first
    released = [a.duty for a in acts if isinstance(a, Release)]
    assert len(released) == len(set(released))
    for a in acts:
        o = v.owners.get(a.duty)
        mine_now = o is not None and o.node == ME and o.lease == v.lease
        if isinstance(a, Acquire):  # never a duty someone (even me) holds
            assert o is None and ME in v.placement.ranks[a.duty]
            d = by_name[a.duty]
            if d.with_duty is not None:
                anchor = v.owners.get(d.with_duty)
                assert anchor is not None and anchor.node == ME and anchor.lease == LEASE
            elif v.placement.wanted.get(a.duty) != ME:
                k = v.placement.ranks[a.duty].index(ME)
                assert v.now - v.free_since.get(a.duty, v.now) >= k * v.grace
        elif isinstance(a, Release):  # only my own record, with its token
            assert o is not None and o.node == ME and a.token == o.token
            if o.lease != LEASE:
                assert a.reason == "stale record of a previous session"
        elif isinstance(a, Stop):
            assert a.duty in v.running and not mine_now
        else:
            assert o is not None and mine_now and v.running.get(a.duty) != o.token
            assert a.duty not in released
    for d in v.duties:  # a dependent is released before (never after) its anchor
        if d.with_duty in released and d.name in released:
            assert released.index(d.name) < released.index(d.with_duty)
        o = v.owners.get(d.name)
        if o is not None and o.node == ME and o.lease != LEASE:
            assert d.name in released  # a stale record is always cleaned up
        if d.with_duty is not None and o is not None and o.node == ME and o.lease == LEASE:
            anchor = v.owners.get(d.with_duty)
            if anchor is None or anchor.node != ME or d.with_duty in released:
                assert d.name in released  # it follows its anchor away


def test_a_dependent_of_a_stale_anchor_is_released_too() -> None:
    """Found by test_plan_invariants: X held by my PREVIOUS lease is released as stale, so a
    duty following X on my current lease must go too (acquire demands X on this lease)."""
    duties = [duty("x"), duty("y", with_duty="x")]
    owners = {"x": owner("x", lease=OLD, token=3), "y": owner("y", token=4)}
    acts = plan(view(duties, owners=owners, running={"y": 4}))
    assert [a for a in acts if isinstance(a, Release)] == [
        Release("y", 4, "follows x, which left this node"),
        Release("x", 3, "stale record of a previous session")]


def test_a_dependent_stays_while_its_anchor_is_mine() -> None:
    """Kills mutants that forget the anchor (mutmut): both owned here, both keep running."""
    duties = [duty("x"), duty("y", with_duty="x")]
    owners = {"x": owner("x", token=3), "y": owner("y", token=4)}
    place = Placement({"x": ME, "y": ME}, {"x": [ME], "y": [ME]})
    assert plan(view(duties, owners=owners, placement=place, running={"x": 3, "y": 4})) == []
    assert plan(view(duties, owners=owners, placement=place, running={"x": 3})) == [
        Run("y", owners["y"])]


def test_a_duty_placement_does_not_know_is_left_alone() -> None:
    assert plan(view([duty("d")], placement=Placement(), free_since={"d": 0.0})) == []


def test_duties_no_longer_declared_are_released_or_stopped() -> None:
    """A for_each_doc duty whose document was deleted: my record is released (after
    the duty stops), another node's is left alone, a runner without a record stops."""
    owners = {"gone": owner("gone", token=8), "theirs": owner("theirs", node="n1", token=9)}
    v = view([duty("d")], owners=owners, running={"gone": 8, "orphan": 2})
    assert plan(v) == [Release("gone", 8, "no longer declared (document deleted)"),
                       Stop("orphan", "no longer declared")]
    assert plan(view([], owners={"theirs": owners["theirs"]}, running={})) == []


def test_every_free_duty_wanted_here_is_acquired() -> None:
    duties = [duty("a"), duty("b"), duty("c")]
    place = Placement({"a": ME, "b": ME, "c": ME}, {n: [ME] for n in "abc"})
    assert plan(view(duties, placement=place)) == [Acquire("a"), Acquire("b"), Acquire("c")]


class _Untouchable(dict[str, list[str]]):
    """Ranks that fail the test when read (the incremental placer computes
    them per duty on first read: a pass must not read what it does not need)."""

    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError(f"ranks of {key!r} read")

    def __getitem__(self, key: str) -> list[str]:
        raise AssertionError(f"ranks of {key!r} read")


def test_plan_reads_ranks_only_for_a_fallback_that_may_be_due() -> None:
    duties = [duty("mine"), duty("theirs"), duty("owned"), duty("late")]
    wanted: dict[str, str | None] = {
        "mine": ME, "theirs": "n1", "owned": "n1", "late": "n1"}
    v = view(duties, placement=Placement(wanted, _Untouchable()),
             owners={"owned": owner("owned", node="n1")},
             free_since={"mine": 100.0, "theirs": 99.5, "late": 99.5})
    assert plan(v) == [Acquire("mine")]  # "theirs"/"late": free for 0.5 s < grace
    due = view([duty("late")], placement=Placement({"late": "n1"}, {"late": ["n1", ME]}),
               free_since={"late": 99.0})
    assert plan(due) == [Acquire("late")]
