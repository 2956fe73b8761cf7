"""IncrementalPlacer gives place()'s answer, pass after pass, ranking only what moves."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core import placement as placement_mod
from shoal.core.incremental import IncrementalPlacer, _best
from shoal.core.placement import DutySpec, NodeInfo, place

NODE_NAMES = [f"n{i}" for i in range(7)]


@st.composite
def duty_lists(draw: Any) -> list[DutySpec]:
    n = draw(st.integers(1, 24))
    duties = []
    for i in range(n):
        roles = draw(st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"b"})]))
        kind = draw(st.sampled_from(["pooled", "pooled", "pooled", "sticky", "single"]))
        duties.append(DutySpec(
            f"fam:{i}" if kind == "pooled" else f"d{i}", roles=roles,
            sticky=kind == "sticky", leader_bound=draw(st.booleans()) and i % 5 == 0,
            family="fam" if kind == "pooled" else None))
    if draw(st.booleans()):
        anchor = draw(st.sampled_from(duties)).name
        duties.append(DutySpec("follower", with_duty=anchor))
    return duties


def node_infos(draw: Any, slow_rules: bool) -> list[NodeInfo]:
    names = draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, max_size=6))
    out = []
    for name in names:
        out.append(NodeInfo(
            name,
            draw(st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"a", "b"})])),
            weight=draw(st.sampled_from([1.0, 1.0, 2.0, 0.5, 0.0])),
            can_lead=draw(st.booleans()) or name != "n0",
            disabled=draw(st.sampled_from([frozenset(), frozenset(), frozenset({"fam"}),
                                           frozenset({"d*"})])),
            zone=draw(st.sampled_from(["z1", "z2"])) if slow_rules else "",
            cordoned=slow_rules and draw(st.booleans()),
        ))
    return out


@st.composite
def histories(draw: Any) -> tuple[list[DutySpec], list[tuple[list[NodeInfo], str, int]]]:
    duties = draw(duty_lists())
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        slow = draw(st.integers(0, 9)) == 0
        how = draw(st.sampled_from(["wanted", "wanted", "partial", "random", "same"]))
        steps.append((node_infos(draw, slow), how, draw(st.integers(0, 2**16))))
    return duties, steps


def next_owners(
    how: str, seed: int, previous: dict[str, str], wanted: dict[str, str | None],
    duties: list[DutySpec],
) -> dict[str, str]:
    """Owners as a cluster would move them: all, some or none of the wanted
    moves made, or arbitrary owners (dead nodes, undeclared duties)."""
    if how == "same":
        return dict(previous)
    if how == "wanted":
        return {d: n for d, n in wanted.items() if n is not None}
    out = dict(previous)
    for i, duty in enumerate(sorted(wanted)):
        bit = (seed >> (i % 16)) & 1
        if how == "partial" and bit:
            if wanted[duty] is None:
                out.pop(duty, None)
            else:
                out[duty] = wanted[duty]  # type: ignore[assignment]
        elif how == "random":
            choice = (seed + i * 7) % (len(NODE_NAMES) + 2)
            if choice >= len(NODE_NAMES):
                out.pop(duty, None)
            else:
                out[duty] = NODE_NAMES[choice]
    if how == "random" and seed % 3 == 0:
        out["undeclared:1"] = NODE_NAMES[seed % len(NODE_NAMES)]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_every_pass_equals_place_from_scratch(
    history: tuple[list[DutySpec], list[tuple[list[NodeInfo], str, int]]],
) -> None:
    duties, steps = history
    engine = IncrementalPlacer(duties)
    owners: dict[str, str] = {}
    wanted: dict[str, str | None] = {d.name: None for d in duties}
    for nodes, how, seed in steps:
        owners = next_owners(how, seed, owners, wanted, duties)
        got = engine.place(nodes, owners)
        want = place(duties, nodes, owners, balanced=True)
        assert got.wanted == want.wanted
        assert dict(got.ranks) == want.ranks
        wanted = dict(got.wanted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 2**16))
def test_passes_told_what_changed_equal_place_from_scratch(
    history: tuple[list[DutySpec], list[tuple[list[NodeInfo], str, int]]], extra: int,
) -> None:
    """``changed``: only the duties named are compared with the previous owners
    (here: exactly those whose owner changed, plus some that did not)."""
    duties, steps = history
    engine = IncrementalPlacer(duties)
    owners: dict[str, str] = {}
    wanted: dict[str, str | None] = {d.name: None for d in duties}
    names = sorted({d.name for d in duties} | {"undeclared:1"})
    for nodes, how, seed in steps:
        before = owners
        owners = next_owners(how, seed, owners, wanted, duties)
        changed = {d for d in before.keys() | owners.keys() if before.get(d) != owners.get(d)}
        changed |= {n for i, n in enumerate(names) if (extra >> (i % 16)) & 1}
        got = engine.place(nodes, owners, changed=sorted(changed))
        want = place(duties, nodes, owners, balanced=True)
        assert got.wanted == want.wanted
        assert dict(got.ranks) == want.ranks
        wanted = dict(got.wanted)


def _kept_state(engine: IncrementalPlacer) -> tuple[Any, ...]:
    return (engine._owners, engine._owned, engine._kept, engine._order, engine._orphans,
            engine._moving, engine._wanted,
            {d: sorted(zip(*r, strict=True)) for d, r in engine._ranked.items()},
            engine._valid)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 2**16))
def test_a_pass_on_a_fork_equals_place_and_leaves_the_original_as_it_was(
    history: tuple[list[DutySpec], list[tuple[list[NodeInfo], str, int]]], pick: int,
) -> None:
    """What a spare placement does: after each pass, fork, and on the fork place for
    the loss of one node (it leaves, its duties are freed). The fork's answer is
    place()'s; the original's state is the same as an engine's that never forked."""
    duties, steps = history
    engine, twin = IncrementalPlacer(duties), IncrementalPlacer(duties)
    owners: dict[str, str] = {}
    wanted: dict[str, str | None] = {d.name: None for d in duties}
    for nodes, how, seed in steps:
        owners = next_owners(how, seed, owners, wanted, duties)
        got = engine.place(nodes, owners)
        assert twin.place(nodes, owners).wanted == got.wanted
        if nodes and engine.forkable():
            lost = nodes[pick % len(nodes)].name
            survivors = [n for n in nodes if n.name != lost]
            freed = {d: n for d, n in owners.items() if n != lost}
            what_if = engine.fork().place(survivors, freed)
            want = place(duties, survivors, freed, balanced=True)
            assert what_if.wanted == want.wanted
            assert dict(what_if.ranks) == want.ranks
        assert _kept_state(engine) == _kept_state(twin)
        wanted = dict(got.wanted)


def test_a_hint_that_leaves_out_a_change_is_not_checked() -> None:
    """The hint is trusted (that is its point): a change left out of it is not seen.
    (This pins the contract the docstring states; callers pass None when unsure.)"""
    duties = [DutySpec(f"p:{i}", family="p") for i in range(6)]
    nodes = [NodeInfo("a", frozenset()), NodeInfo("b", frozenset())]
    on_a = {d.name: "a" for d in duties}
    on_b = {d.name: "b" for d in duties}
    from_a = place(duties, nodes, on_a, balanced=True).wanted
    from_b = place(duties, nodes, on_b, balanced=True).wanted
    assert from_a != from_b  # each keeps its own owner's three best: the owners matter
    told = IncrementalPlacer(duties)
    told.place(nodes, on_a)
    assert told.place(nodes, on_b, changed=list(on_b)).wanted == from_b
    untold = IncrementalPlacer(duties)
    untold.place(nodes, on_a)
    assert untold.place(nodes, on_b, changed=[]).wanted == from_a  # the move not seen
    assert untold.place(nodes, on_b).wanted == from_b  # None: compared in full


@pytest.mark.parametrize("moved", range(0, 12, 2))
def test_weights_that_stop_being_equal_rebuild_the_kept_orders(moved: int) -> None:
    """Equal weights rank by the hash alone (int keys), unequal ones by the weighted
    score (floats): when a weighted node joins, keys kept from before are not mixed
    with new ones (a node over its cap gives away its truly lowest-scored duties)."""
    duties = [DutySpec(f"p:{i}", family="p") for i in range(12)]
    a, b = NodeInfo("a", frozenset()), NodeInfo("b", frozenset())
    engine = IncrementalPlacer(duties)
    before = {d.name: "a" for d in duties}
    before[f"p:{moved}"] = before[f"p:{moved + 1}"] = "b"
    engine.place([a, b], before)
    after = {d.name: "a" for d in duties}  # the two come to a: ranked by the new ranker
    heavy = [a, b, NodeInfo("c", frozenset(), weight=3.0)]
    assert engine.place(heavy, after).wanted == place(duties, heavy, after, balanced=True).wanted


def test_unbalanced_and_rule_passes_fall_back_to_place() -> None:
    duties = [DutySpec(f"p:{i}", family="p") for i in range(12)]
    nodes = [NodeInfo(f"n{i}", frozenset(), zone=f"z{i % 2}") for i in range(3)]
    engine = IncrementalPlacer(duties)
    assert engine.place(nodes, {}).wanted == place(duties, nodes, {}, balanced=True).wanted
    assert (engine.fast_passes, engine.slow_passes) == (0, 1)
    flat = [NodeInfo(n.name, frozenset()) for n in nodes]
    assert engine.place(flat, {}).wanted == place(duties, flat, {}, balanced=True).wanted
    assert (engine.fast_passes, engine.slow_passes) == (1, 1)
    unbalanced = IncrementalPlacer(duties, balanced=False)
    assert unbalanced.place(flat, {}).wanted == place(duties, flat, {}).wanted
    assert unbalanced.slow_passes == 1


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of (duty, node) scores each ``keys`` call (which ``scored``
    calls) computes."""
    counts: list[int] = []
    real = placement_mod._Ranker.keys

    def counting(self: Any, duty: str, names: Any) -> Any:
        out = real(self, duty, names)
        counts.append(len(out))
        return out

    monkeypatch.setattr(placement_mod._Ranker, "keys", counting)
    return counts


def test_a_join_or_a_leave_ranks_only_the_duties_that_move(hashed: list[int]) -> None:
    duties = [DutySpec(f"p:{i}", family="p") for i in range(2000)]
    nodes = [NodeInfo(f"n{i:02d}", frozenset()) for i in range(20)]
    engine = IncrementalPlacer(duties)
    owners = {d.name: f"n{i % 20:02d}" for i, d in enumerate(duties)}
    engine.place(nodes, owners)  # the first pass scores every owner's duties once
    hashed.clear()
    joined = [*nodes, NodeInfo("new", frozenset())]
    after = engine.place(joined, owners)
    # only the duties given away are ranked, each over the nodes with room: the newcomer
    assert sum(hashed) == 2000 // 21
    assert after.wanted == place(duties, joined, owners, balanced=True).wanted
    moved = [d for d, n in after.wanted.items() if n != owners[d]]
    assert len(moved) == 2000 // 21  # the newcomer's share, nothing else
    hashed.clear()
    survivors = [n for n in nodes if n.name != "n00"]
    freed = {d: n for d, n in owners.items() if n != "n00"}
    after = engine.place(survivors, freed)
    assert sum(hashed) == 100 * 19  # n00's 100 duties, over the 19 survivors
    assert after.wanted == place(duties, survivors, freed, balanced=True).wanted
    settled = {d: n for d, n in after.wanted.items() if n is not None}
    hashed.clear()
    engine.place(survivors, settled)
    assert sum(hashed) == 100  # only the new owners' own scores (to keep them in order)
    assert engine.slow_passes == 0


def test_the_best_node_with_room_breaks_ties_by_name_order() -> None:
    keys = [5.0, -3.0, -3.0, 0.0]  # b and c tie for the best key
    nodes = ("a", "b", "c", "d")
    assert _best((keys, nodes), {"a", "b", "c", "d"}) == (-3.0, "b")
    assert _best((keys, nodes), {"a", "c", "d"}) == (-3.0, "c")  # b full: its tie c
    assert _best((keys, nodes), {"a", "d"}) == (0.0, "d")
    assert _best((keys, nodes), set()) is None


def test_ranker_keys_follow_the_names_given_whatever_their_container() -> None:
    nodes = [NodeInfo(f"n{i}", frozenset()) for i in range(5)]
    ranker = placement_mod._Ranker(nodes)
    names = tuple(n.name for n in nodes)
    want = ranker.keys("d", names)
    assert ranker.keys("d", list(names)) == want
    assert [k for k, _ in ranker.scored("d", iter(names), sort=False)] == want
    assert ranker.keys("d", tuple(reversed(names))) == want[::-1]  # another tuple
    # hashers are kept per tuple object, at most _LINES of them
    for i in range(placement_mod._LINES + 10):
        assert ranker.keys("d", (names[i % 5],)) == [want[i % 5]]
    assert len(ranker._lines) <= placement_mod._LINES


@st.composite
def leave_histories(
    draw: Any,
) -> tuple[list[DutySpec], list[NodeInfo], list[tuple[int, str, int, int]]]:
    """Many pooled duties, the first nodes, then steps that only take nodes away:
    how many leave, how the owners move after the warming (runner-ups go stale),
    a seed, and how many runner-ups are warmed before the step."""
    duties = [*draw(duty_lists()), *(DutySpec(f"fam:x{i}", family="fam",
                                              roles=frozenset({"a"}) if i % 7 == 3 else frozenset())
                                     for i in range(draw(st.integers(10, 60))))]
    names = NODE_NAMES[:draw(st.integers(3, 7))]
    equal = draw(st.booleans())
    nodes = [NodeInfo(n, draw(st.sampled_from([frozenset(), frozenset({"a"})])),
                      weight=1.0 if equal else draw(st.sampled_from([1.0, 2.0, 0.5])))
             for n in names]
    steps = [(draw(st.integers(0, 2)), draw(st.sampled_from(["same", "same", "partial", "random"])),
              draw(st.integers(0, 2**16)), draw(st.integers(0, 80)))
             for _ in range(draw(st.integers(1, 5)))]
    return duties, nodes, steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leave_histories())
def test_runner_ups_warmed_between_passes_give_place_s_answer(
    history: tuple[list[DutySpec], list[NodeInfo], list[tuple[int, str, int, int]]],
) -> None:
    """Runner-ups (warm) are only a shortcut: passes after nodes die (their duties
    freed, or still listed as theirs), with owners moved since the warming (stale
    runner-ups) or a dead node back first (a join), equal place() from scratch."""
    duties, nodes, steps = history
    engine = IncrementalPlacer(duties)
    owners: dict[str, str] = {}
    wanted: dict[str, str | None] = {d.name: None for d in duties}
    dead: list[NodeInfo] = []
    for leaving, how, seed, warm in steps:
        for _ in range(2):  # settle: every duty on its wanted node
            owners = next_owners("wanted", 0, owners, wanted, duties)
            wanted = dict(engine.place(nodes, owners).wanted)
        engine.warm(warm)
        if seed & 2:  # at scale the full rankings of past passes are trimmed
            engine._ranked.clear()
        owners = next_owners(how, seed, owners, wanted, duties)
        got = engine.place(nodes, owners)
        assert got.wanted == place(duties, nodes, owners, balanced=True).wanted
        if seed & 4 and dead:  # one of the dead comes back first (a join)
            nodes = [*nodes, dead.pop()]
            got = engine.place(nodes, owners)
            assert got.wanted == place(duties, nodes, owners, balanced=True).wanted
        gone = {n.name for n in nodes[:leaving]}
        dead.extend(nodes[:leaving])
        nodes = nodes[leaving:]
        if seed & 1:  # the reaper frees the dead nodes' duties in the same revision
            owners = {d: n for d, n in owners.items() if n not in gone}
        got = engine.place(nodes, owners)
        want = place(duties, nodes, owners, balanced=True)
        assert got.wanted == want.wanted
        assert dict(got.ranks) == want.ranks
        wanted = dict(got.wanted)


def test_a_death_places_from_runner_ups_without_ranking_every_duty(
    hashed: list[int],
) -> None:
    """Warmed while quiet, a node's death ranks over all survivors only the duties
    whose runner-up filled up first; the answer is place()'s."""
    duties = [DutySpec(f"p:{i}", family="p") for i in range(2000)]
    nodes = [NodeInfo(f"n{i:02d}", frozenset()) for i in range(20)]
    engine = IncrementalPlacer(duties)
    owners = {d.name: f"n{i % 20:02d}" for i, d in enumerate(duties)}
    engine.place(nodes, owners)
    owners = {d: n for d, n in engine.place(nodes, owners).wanted.items() if n is not None}
    engine.place(nodes, owners)
    assert not engine.warm(1500)  # 2,000 kept duties to do
    assert engine.warm(1500)  # the rest
    hashed.clear()
    assert engine.warm(1500) and hashed == []  # nothing left: nothing hashed
    hashed.clear()
    survivors = [n for n in nodes if n.name != "n00"]
    freed = {d: n for d, n in owners.items() if n != "n00"}
    after = engine.place(survivors, freed)
    ranked = sum(hashed)
    lost = sum(1 for n in owners.values() if n == "n00")
    assert engine.runner_hits == lost
    assert 0 < ranked < lost * 19 // 2  # only the duties whose best node filled up
    assert after.wanted == place(duties, survivors, freed, balanced=True).wanted
    # a join: most entries are caught up with one hash (the newcomer's key); the
    # duties that moved, or whose runner-up died, are ranked in full again
    settled = {d: n for d, n in after.wanted.items() if n is not None}
    joined = [*survivors, NodeInfo("new", frozenset())]
    settled = {d: n for d, n in engine.place(joined, settled).wanted.items() if n is not None}
    engine.place(joined, settled)
    hashed.clear()
    while not engine.warm(500):
        pass
    assert sum(1 for count in hashed if count == 1) > 1500
    assert sum(hashed) < 2000 * 20 // 4  # a quarter of warming them all afresh
    hits = engine.runner_hits
    hashed.clear()
    survivors = [n for n in joined if n.name != "n01"]  # a second death, after the join
    freed = {d: n for d, n in settled.items() if n != "n01"}
    after = engine.place(survivors, freed)
    assert engine.runner_hits - hits == sum(1 for n in settled.values() if n == "n01")
    assert sum(hashed) < (engine.runner_hits - hits) * 19 // 2
    assert after.wanted == place(duties, survivors, freed, balanced=True).wanted
    # a node whose record changes (here its weight) drops every entry
    changed = [NodeInfo(n.name, n.roles, weight=2.0) if n.name == "n02" else n
               for n in survivors]
    engine.place(changed, {d: n for d, n in after.wanted.items() if n is not None})
    assert engine._runner.table == {}
