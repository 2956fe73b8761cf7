"""The node state machine is in charge: every action kind that ``core.node_state.step``
returns is carried out by Node (fake clock, memory store, one faulty link per node)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.core import node_state as fsm
from shoal.core.node_state import Phase
from shoal.primitives.ownership import DUTIES
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import ClusterEvent, Node
from shoal.testing.cluster import SimCluster

TTL = 6
MARGIN = 1.0


def job_app(log: list[tuple[float, str, str]] | None = None) -> App:
    app = App("t")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        if log is not None:
            log.append((ctx.clock.monotonic(), ctx.node, "start"))
        try:
            await ctx.stopping.wait()
        finally:
            if log is not None:
                log.append((ctx.clock.monotonic(), ctx.node, "stop"))

    return app


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    made: list[SimCluster] = []

    def make(app: App) -> SimCluster:
        c = SimCluster(app, ttl=TTL, safety_margin=MARGIN)
        made.append(c)
        return c

    yield make
    for c in made:
        for link in c.links.values():
            link.heal()
        await c.aclose()


def record_actions(node: Node) -> list[fsm.Action]:
    """Wrap the node's action dispatcher to record every action it carries out."""
    seen: list[fsm.Action] = []
    do = node._do

    def spy(action: fsm.Action, old: Phase) -> None:
        seen.append(action)
        do(action, old)

    node._do = spy  # type: ignore[method-assign]
    return seen


async def test_arm_deadline_stops_duties_at_the_g1_deadline(sim: Any) -> None:
    log: list[tuple[float, str, str]] = []
    c = sim(job_app(log))
    a = await c.add("a")
    await c.run(1.0)
    assert a.runners.keys() == {"job", "leader"}
    deadline = a._fsm.lease_deadline
    assert deadline is not None and a._deadline.at == deadline  # ArmDeadline armed the timer
    last_ack = a._fsm.last_ack_at
    assert last_ack is not None and deadline == pytest.approx(last_ack + TTL - MARGIN)
    c.links["a"].blackhole()  # keep-alives hang: no event at all reaches the machine
    await c.run(TTL + 1.0)
    assert a.phase in (Phase.LOST, Phase.JOINING) and not a.runners
    stop = next(t for t, n, e in log if e == "stop")
    assert deadline <= stop < last_ack + TTL  # G1: before the store could expire the lease
    assert a.counters["lost"] == 2  # job and leader, each fails over


async def test_tick_alone_enforces_the_deadline(sim: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    await c.run(1.0)
    seen = record_actions(a)
    c.links["a"].blackhole()
    await c.run(2.0)  # past the last ArmDeadline: no new one can come (no acks)
    a._deadline.cancel()  # no timer: only the reconcile loop's Tick events remain
    deadline = a._fsm.lease_deadline
    assert deadline is not None
    await c.run(deadline - c.clock.monotonic() + 1.0)
    assert a.phase in (Phase.LOST, Phase.JOINING) and not a.runners
    assert fsm.StopAllDuties("lease deadline passed") in seen


async def test_stop_and_start_placing(sim: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")  # joined; its reconcile loop has not run a pass yet
    seen = record_actions(a)
    lease = a._fsm.lease
    a._feed(fsm.KeepaliveFailed())  # ACTIVE -> SUSPENDED
    assert a.phase is Phase.SUSPENDED and fsm.StopPlacing() in seen
    assert a._duties.placing is False
    await a._duties.reconcile(lambda: lease, {"a": a._member()})
    assert c.owners() == {} and not a.runners  # a suspended node acquires nothing
    a._feed(fsm.KeepaliveOk(at=c.clock.monotonic()))  # SUSPENDED -> ACTIVE
    assert a.phase is Phase.ACTIVE and fsm.StartPlacing() in seen
    assert a._duties.placing is True
    await a._duties.reconcile(lambda: lease, {"a": a._member()})
    assert c.owners() == {"job": "a", "leader": "a"} and set(a.runners) == {"job", "leader"}


async def test_drain_releases_all_duties_then_revokes_the_lease(sim: Any) -> None:
    log: list[tuple[float, str, str]] = []
    c = sim(job_app(log))
    a = await c.add("a")
    await c.run(1.0)
    seen = record_actions(a)
    lease = a._fsm.lease
    assert lease is not None
    runner = a.runners["job"]
    await a.drain()
    kinds = [type(x) for x in seen]
    assert kinds.index(fsm.ReleaseAllDuties) < kinds.index(fsm.RevokeLease)
    assert fsm.RevokeLease(lease) in seen and fsm.ReportPhase(Phase.STOPPED) in seen
    assert runner.status == "stopped" and [e for _, _, e in log] == ["start", "stop"]
    assert not a.runners
    assert a.phase is Phase.STOPPED and a.counters["lost"] == 0  # handed over, not lost
    assert await c.store.lease_ttl(lease) == -1  # revoked at once, not left to the TTL
    assert await c.store.get("nodes/a") is None
    assert await c.store.get(DUTIES + "job") is None


async def test_abandon_does_not_revoke(sim: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    await c.run(1.0)
    seen = record_actions(a)
    lease = a._fsm.lease
    await a.abandon()
    del c.nodes["a"]
    assert a.phase is Phase.STOPPED
    assert not any(isinstance(x, fsm.RevokeLease) for x in seen)
    assert await c.store.get("nodes/a") is not None  # left to expire by its TTL
    assert lease is not None and await c.store.lease_ttl(lease) > 0


async def test_rejoin_revokes_the_old_lease_and_joins_again(sim: Any, fixed_jitter: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    await c.run(1.0)
    seen = record_actions(a)
    old = a._fsm.lease
    assert old is not None
    c.links["a"].blackhole()
    while a.phase is not Phase.LOST:
        await c.run(0.1)
    assert await c.store.lease_ttl(old) >= 0  # the store has not expired it yet
    c.links["a"].heal()
    await c.run(1.0)
    assert fsm.Rejoin(old_lease=old) in seen
    assert a.phase is Phase.ACTIVE and a._fsm.lease not in (None, old)
    assert await c.store.lease_ttl(old) == -1  # revoked by Rejoin, before its TTL
    assert a.counters["rejoins"] == 1 and set(a.runners) == {"job", "leader"}


async def test_report_phase_reaches_subscribers_as_phases(sim: Any, fixed_jitter: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    events = a.subscribe()
    await c.run(1.0)
    c.links["a"].cut()
    await c.run(TTL)
    c.links["a"].heal()
    for _ in range(60):  # the store probe backs off (at most retry_backoff_max = 5 s)
        if a.phase is Phase.ACTIVE:
            break
        await c.run(0.1)
    phases = []
    while (ev := events.get_nowait()) is not None:
        if ev.kind == "phase":
            phases.append(ev.detail)
    assert phases[:2] == [Phase.SUSPENDED, Phase.LOST]
    assert phases[-2:] == [Phase.JOINING, Phase.ACTIVE]
    assert all(isinstance(p, Phase) for p in phases)
    events.close()


async def test_status_is_an_immutable_consistent_snapshot(sim: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    await c.add("b")
    await c.run(2.0)
    s = a.status()
    assert s.phase is Phase.ACTIVE and s.name == "a" and set(s.members) == {"a", "b"}
    assert s.owners is not None and s.leader == s.owners["leader"].node
    assert set(s.running) == set(a.runners)
    assert s.session is not None and s.session.lease == a._fsm.lease
    assert 0 < s.session.remaining <= TTL - MARGIN
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.phase = Phase.LOST  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.members["x"] = s.members["a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        s.owners["x"] = s.owners["leader"]  # type: ignore[index]
    before = (dict(s.members), dict(s.owners), s.running)
    await a.drain()
    assert a.status().phase is Phase.STOPPED and not a.status().running
    assert (dict(s.members), dict(s.owners), s.running) == before  # the old one never moves


async def test_status_owners_are_unknown_while_not_active(sim: Any) -> None:
    c = sim(job_app())
    a = await c.add("a")
    await c.run(1.0)
    c.links["a"].cut()
    await c.run(2.0)
    s = a.status()
    assert s.phase is Phase.SUSPENDED
    assert s.owners is None and s.leader is None and s.unowned is None
    assert s.session is not None and s.session.suspended
    assert s.running == ("job", "leader")  # duties still run until the deadline (G1)


def test_cluster_event_is_frozen() -> None:
    ev = ClusterEvent("phase", "a", Phase.ACTIVE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.kind = "x"  # type: ignore[misc]
