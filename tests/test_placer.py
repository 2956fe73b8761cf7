"""Placer (shoal.runtime.placer): cached, provisional and spare placements always
give what a fresh ``place`` gives for the situation they are used in."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.placement import DutySpec, NodeInfo, Placement, place
from shoal.primitives.membership import Member
from shoal.primitives.ownership import DUTIES, Owner
from shoal.runtime.app import App, Duty
from shoal.runtime.context import DutyContext
from shoal.runtime.owners import OwnerTable
from shoal.runtime.placer import Placer, only_confirmed
from shoal.store.protocol import Event, EventType, KeyValue

NAMES = ["a", "b", "c", "d"]


def duties(parts: int = 40) -> list[Duty]:
    app = App("t")

    @app.duty("p", partitions=parts)
    async def part(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    @app.duty("boss", sticky=True)
    async def boss(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    return app.expand({})


def fresh(ds: list[Duty], members: list[Member], owners: dict[str, str]) -> Placement:
    specs = [DutySpec(d.name, d.roles, d.sticky, d.leader_bound, d.with_duty,
                      d.family if d.family != d.name else None) for d in ds]
    nodes = [NodeInfo(m.name, frozenset()) for m in members]
    return place(specs, nodes, owners, balanced=True)


def settled(ds: list[Duty], members: list[Member]) -> dict[str, str]:
    wanted = fresh(ds, members, {}).wanted
    return {d: n for d, n in wanted.items() if n is not None}


def test_a_spare_is_the_placement_of_that_exact_loss_and_is_used() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    placer.place(ds, members, owners)
    assert placer.spares_missing(ds, members, owners, "a") == ["b", "c", "d"]
    for lost in ["b", "c", "d"]:
        placer.add_spare(ds, members, owners, lost)
    assert placer.spares_missing(ds, members, owners, "a") == []
    computed = placer.computed
    survivors = [m for m in members if m.name != "c"]
    freed = {d: n for d, n in owners.items() if n != "c"}
    got = placer.place(ds, survivors, freed)
    assert placer.computed == computed and placer.spares_used == 1
    assert got == fresh(ds, survivors, freed)
    assert any(w == "a" for d, w in got.wanted.items() if owners[d] == "c")


def test_a_spare_is_not_used_when_anything_else_differs() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    placer.add_spare(ds, members, owners, "c")
    survivors = [m for m in members if m.name != "c"]
    freed = {d: n for d, n in owners.items() if n != "c"}
    one_more = sorted(d for d, n in freed.items() if n == "b")[0]
    del freed[one_more]  # another duty freed too: not the situation computed ahead
    got = placer.place(ds, survivors, freed)
    assert placer.spares_used == 0 and placer.computed == 1
    assert got == fresh(ds, survivors, freed)
    other = [Member("a"), Member("b", weight=2.0), Member("d")]  # a member changed
    placer.add_spare(ds, members, owners, "c")
    placer.place(ds, other, {d: n for d, n in owners.items() if n != "c"})
    assert placer.spares_used == 0 and placer.computed == 2


def test_spares_are_dropped_when_the_duties_or_the_base_change() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    placer.add_spare(ds, members, owners, "c")
    freed = {d: n for d, n in owners.items() if n != "c"}
    survivors = [m for m in members if m.name != "c"]
    placer.place(duties(), survivors, freed)  # another duty list: no spare for it
    assert placer.spares_used == 0
    moved = dict(owners, **{"p/0": "d" if owners["p/0"] != "d" else "a"})
    assert placer.spares_missing(ds, members, moved, "a") == ["b", "c", "d"]


def test_no_spares_for_large_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    placer = Placer(balanced=True, newest_version=False)
    monkeypatch.setattr("shoal.runtime.placer.SPARE_MAX_PAIRS", len(ds) * len(NAMES) - 1)
    assert placer.spares_missing(ds, members, {}, "a") == []
    monkeypatch.setattr("shoal.runtime.placer.SPARE_MAX_PAIRS", 10**9)
    monkeypatch.setattr("shoal.runtime.placer.SPARE_MAX_NODES", len(NAMES) - 1)
    assert placer.spares_missing(ds, members, {}, "a") == []


def test_confirmed_owners_reuse_the_placement_until_an_exact_request() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    placer = Placer(balanced=True, newest_version=False)
    first = placer.place(ds, members, {})
    some = dict(list(settled(ds, members).items())[:10])  # taken by their wanted nodes
    assert placer.place(ds, members, some, exact=False) is first
    assert placer.computed == 1
    again = placer.place(ds, members, some)  # exact: placed from scratch
    assert placer.computed == 2 and again == fresh(ds, members, some)
    wrong = dict(some)
    duty = next(iter(wrong))
    wrong[duty] = next(n for n in NAMES if n != some[duty])  # NOT its wanted node
    placer.place(ds, members, wrong, exact=False)
    assert placer.computed == 3


def test_only_confirmed() -> None:
    wanted: dict[str, str | None] = {"x": "a", "y": "b"}
    assert only_confirmed({}, {"x": "a"}, wanted)
    assert only_confirmed({"y": "c"}, {"x": "a", "y": "c"}, wanted)
    assert not only_confirmed({}, {"x": "b"}, wanted)
    assert not only_confirmed({"x": "a"}, {}, wanted)  # freed


def test_a_woken_pass_uses_the_spare_when_other_survivors_were_faster() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    placer.add_spare(ds, members, owners, "c")
    survivors = [m for m in members if m.name != "c"]
    freed = {d: n for d, n in owners.items() if n != "c"}
    spare = fresh(ds, survivors, freed)
    taken = {d: w for d, w in spare.wanted.items() if d not in freed and w in ("b", "d")}
    assert taken  # b and d took their share of c's duties before we placed
    now = {**freed, **{d: w for d, w in taken.items() if w is not None}}
    assert placer.place(ds, survivors, now, exact=False) == spare
    assert placer.spares_used == 1 and placer.computed == 0
    placer.place(ds, survivors, now)  # exact (the tick): placed from scratch
    assert placer.computed == 1


def test_a_placement_all_duties_confirmed_is_exact_without_placing_again() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    placer = Placer(balanced=True, newest_version=False)
    first = placer.place(ds, members, {})
    done = {d: w for d, w in first.wanted.items() if w is not None}
    assert placer.place(ds, members, done) is first  # exact request, no new placement
    assert placer.computed == 1
    assert first == fresh(ds, members, done)  # place's fixpoint


def test_a_leave_in_flight_is_recognised_from_its_spare() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    for lost in ["b", "c", "d"]:
        placer.add_spare(ds, members, owners, lost)
    freed = {d: n for d, n in owners.items() if n != "c"}
    assert placer.leaving(ds, members, owners) is None
    assert placer.leaving(ds, members, freed) == "c"  # c's record still listed
    assert placer.leaving(ds, [m for m in members if m.name != "c"], freed) is None  # seen
    assert placer.leaving(ds, [m for m in members if m.name != "c"], owners) == "c"  # record
    draining = [m if m.name != "c" else Member("c", draining=True) for m in members]
    assert placer.leaving(ds, draining, owners) is None  # a drain: c hands over, no wait
    partly = dict(freed)
    del partly[next(iter(partly))]
    assert placer.leaving(ds, members, partly) is None
    assert placer.leaving(duties(), members, freed) is None  # other duties: no spares


def test_nothing_free_only_when_every_wanted_duty_is_owned() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    placer = Placer(balanced=True, newest_version=False)
    owners = settled(ds, members)
    assert not placer.nothing_free(ds, owners)  # no placement yet
    placer.place(ds, members, owners)
    assert placer.nothing_free(ds, owners)
    moved = dict(owners, **{"p/0": next(n for n in NAMES if n != owners["p/0"])})
    assert placer.nothing_free(ds, moved)  # owned elsewhere (a rebalance to come): quiet
    freed = {d: n for d, n in owners.items() if n != "c"}
    assert not placer.nothing_free(ds, freed)  # c's duties free: a failover under way


def test_settled_only_when_every_duty_is_on_its_wanted_node() -> None:
    ds = duties()
    members = [Member(n) for n in NAMES]
    placer = Placer(balanced=True, newest_version=False)
    owners = settled(ds, members)
    assert not placer.settled(ds, owners)  # no placement yet
    placer.place(ds, members, owners)
    assert placer.settled(ds, owners)
    moved = dict(owners, **{"p/0": next(n for n in NAMES if n != owners["p/0"])})
    assert not placer.settled(ds, moved)  # a move is pending
    assert not placer.settled(ds, {d: n for d, n in owners.items() if d != "p/1"})  # one free


def test_a_forked_spare_is_the_same_placement_as_one_from_scratch() -> None:
    """After a fast pass, spares are passes on a fork of the incremental placer
    (cheap enough for the event loop); they equal the from-scratch ones, and the
    placer's own next pass is unchanged by them."""
    ds = duties(60)
    members = [Member(n) for n in NAMES]
    owners = settled(ds, members)
    placer = Placer(balanced=True, newest_version=False)
    assert not placer.spare_forks(ds)  # nothing placed yet: from scratch
    first = placer.place(ds, members, owners)
    assert placer.spare_forks(ds)
    for lost in ["a", "b", "c", "d"]:
        forked = placer.spare(ds, members, owners, lost, fork=True)
        scratch = placer.spare(ds, members, owners, lost)
        assert forked[:2] == scratch[:2] and forked[2] == scratch[2]
        assert forked[2] == fresh(ds, list(forked[0]), forked[1])
    assert placer.place(ds, members, owners) == first


class _Lying:
    """A history that says nothing changed (to show the hint is used)."""

    def __init__(self, table: OwnerTable) -> None:
        self._table = table

    @property
    def version(self) -> int:
        return self._table.version

    def changed_since(self, version: int) -> set[str] | None:
        return set()


def _owner(duty: str, node: str, rev: int) -> Event:
    value = json.dumps({"node": node, "since": 0.0}).encode()
    return Event(EventType.PUT, KeyValue(DUTIES + duty, value, rev, rev, 1, 7))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 59), st.sampled_from([*NAMES, None]),
                          st.booleans()), min_size=1, max_size=25))
def test_passes_told_what_changed_by_the_owner_table_give_places_answer(
    steps: list[tuple[int, str | None, bool]],
) -> None:
    """The runtime hands the placer its OwnerTable: a pass is then told which owners
    changed since the last one (not comparing them all), and still gives exactly
    what a fresh ``place`` gives, across owner changes and members leaving."""
    ds = duties(60)
    members = [Member(n) for n in NAMES]
    table = OwnerTable()
    table.reload({})
    rev = 0
    for d, n in settled(ds, members).items():
        rev += 1
        table.apply([_owner(d, n, rev)])
    placer = Placer(balanced=True, newest_version=False)
    assert placer.place(ds, members, table.nodes(), history=table) == fresh(
        ds, members, table.nodes())
    for index, node, leave in steps:
        rev += 1
        duty = ds[index].name
        if node is None:
            table.apply([Event(EventType.DELETE, KeyValue(DUTIES + duty, b"", rev, rev, 0, 0))])
        else:
            table.wrote(duty, rev, Owner(duty, node, rev, 0.0, 7))
        if leave and len(members) > 1:
            gone = members.pop(index % len(members)).name
            rev += 1
            table.apply([Event(EventType.DELETE, KeyValue(DUTIES + d, b"", rev, rev, 0, 0))
                         for d, n in table.nodes().items() if n == gone])
        owners = table.nodes()
        assert placer.place(ds, members, owners, history=table) == fresh(ds, members, owners)
    assert placer.told == placer.computed - 1  # every pass after the first was told


def test_a_pass_told_nothing_changed_keeps_the_old_owners() -> None:
    """The hint is used: told (falsely) that nothing changed, a pass misses the
    partitions b took from a and differs from ``place``, which moves some back.
    (The runtime's table never lies: see the test above.)"""
    ds = duties(60)
    members = [Member(n) for n in NAMES]
    table = OwnerTable()
    rev = 0
    for d, n in settled(ds, members).items():
        rev += 1
        table.apply([_owner(d, n, rev)])
    placer = Placer(balanced=True, newest_version=False)
    lying = _Lying(table)
    placer.place(ds, members, table.nodes(), history=lying)
    for d, n in list(table.nodes().items()):
        if n == "a" and d.startswith("p/"):  # b takes a's partitions: b is over its cap
            rev += 1
            table.wrote(d, rev, Owner(d, "b", rev, 0.0, 7))
    owners = table.nodes()
    got = placer.place(ds, members, owners, history=lying)
    assert placer.told == 1 and got.wanted != fresh(ds, members, owners).wanted
