"""G1 under latency (FaultyStore's slow / late-ack / dropped-ack modes, fake clock): a
node runs a duty only while ``now <= send time of its last ACKNOWLEDGED keep-alive (or
grant) + ttl - margin``, its lease is alive at the store whenever a duty runs, and two
nodes never run one duty at once -- whether the calls are slow, the answers late or the
answers never come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.errors import LeaseNotFound, StoreUnavailable
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.store.memory import MemoryStore
from shoal.store.protocol import TxnResult
from shoal.testing.clock import FakeClock
from shoal.testing.cluster import SimCluster
from shoal.testing.faulty import FaultyStore

TTL = 6
MARGIN = 1.0
STEP = 0.05


STOPS: list[tuple[str, float]] = []  # (node, when its "job" stopped), from the duty itself


async def _job(ctx: DutyContext) -> None:
    try:
        await ctx.stopping.wait()
    finally:
        STOPS.append((ctx.node, ctx.clock.monotonic()))


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    STOPS.clear()
    app = App("t")
    app.duty("job")(_job)
    c = SimCluster(app, ttl=TTL, safety_margin=MARGIN)
    await c.add("a")
    await c.run(1.0)
    await c.add("b", can_lead=False)
    await c.run(20.0)  # past rebalance_delay and the balancing move: "job" stays put now
    yield c
    for link in c.links.values():
        link.heal()  # delays sleep on the fake clock, which nothing moves any more
    await c.aclose()


class Watcher:
    """Steps the clock and checks G1 for every node after every step."""

    def __init__(self, c: SimCluster) -> None:
        self.c = c
        self.lost: dict[str, int] = {}
        self.stops: list[tuple[str, float, float]] = []  # node, stopped at, its deadline
        self._seen = 0  # STOPS already matched
        self._running: dict[str, float] = {}  # node -> deadline while it ran a duty
        self.ran: set[tuple[str, str]] = set()  # (duty, node) seen running

    def deadline(self, name: str, now: float) -> float:
        acks = [a.sent for a in self.c.links[name].lease_acks if a.answered <= now]
        return max(acks) + TTL - MARGIN

    async def run(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            await self.c.run(STEP, step=STEP)
            await self.check()

    async def check(self) -> None:
        now = self.c.clock.monotonic()
        for duty, nodes in self.c.running().items():
            assert len(nodes) == 1, f"t={now}: {duty} runs on {nodes}"
            self.ran.add((duty, nodes[0]))
        for name, node in self.c.nodes.items():
            if node.phase == "LOST":
                self.lost[name] = self.lost.get(name, 0) + 1
            if "job" not in node.runners and name in self._running:
                stopped = [s for n, s in STOPS[self._seen:] if n == name]
                self._seen = len(STOPS)
                assert stopped, f"{name} stopped running without its duty noticing"
                self.stops.append((name, stopped[-1], self._running.pop(name)))
            if not node.runners:
                continue
            deadline = self.deadline(name, now)  # for every duty, the leader's too
            assert now <= deadline + 1e-9, (
                f"{name} runs {list(node.runners)} at {now} past its deadline {deadline}")
            assert node.session is not None
            try:  # the store still holds the lease: nobody else can own the duty
                await self.c.store.lease_ttl(node.session.lease)
            except LeaseNotFound:
                pytest.fail(f"{name} runs {list(node.runners)} at {now} on an expired lease")
            if "job" in node.runners:
                self._running[name] = deadline


async def test_small_latency_and_late_acks_keep_the_duty_where_it_is(
    cluster: SimCluster,
) -> None:
    c, w = cluster, Watcher(cluster)
    owner = c.owners()["job"]
    c.links[owner].slow(0.4)
    c.links[owner].delay_acks(0.5)
    await w.run(5 * TTL)
    assert not w.lost and c.owners()["job"] == owner and "job" in c.nodes[owner].runners
    assert len(c.links[owner].lease_acks) > 10  # keep-alives went on, late


async def test_slow_keepalives_stop_duties_by_the_deadline(cluster: SimCluster) -> None:
    c, w = cluster, Watcher(cluster)
    owner = c.owners()["job"]
    c.links[owner].slow(TTL - MARGIN - 0.5, calls={"keepalive"})  # acked 0.5 s before it
    await w.run(4 * TTL)
    assert w.lost.get(owner), "the slow node never gave up its lease"
    stops = [(t, d) for n, t, d in w.stops if n == owner]
    assert stops and all(t <= d + 1e-9 for t, d in stops)  # each time by its deadline


async def test_late_acks_stop_duties_by_the_deadline(cluster: SimCluster) -> None:
    c, w = cluster, Watcher(cluster)
    owner = c.owners()["job"]
    c.links[owner].delay_acks(TTL - MARGIN - 1.5)  # the next keep-alive is sent too late
    await w.run(4 * TTL)
    assert w.lost.get(owner)
    stop = next((t, d) for n, t, d in w.stops if n == owner)
    assert stop[0] <= stop[1] + 1e-9


async def test_dropped_acks_stop_duties_at_the_last_acknowledged_send(
    cluster: SimCluster,
) -> None:
    c, w = cluster, Watcher(cluster)
    owner = c.owners()["job"]
    link = c.links[owner]
    last = link.lease_acks[-1]
    link.drop_acks()  # keep-alives still reach the store; their answers never come
    await w.run(TTL + 2.0)
    (name, stopped, deadline), *_ = w.stops
    assert name == owner and deadline == last.sent + TTL - MARGIN
    assert last.sent + TTL - MARGIN - 2 * STEP < stopped <= deadline  # not early either
    assert link.calls["keepalive"] > len([a for a in link.lease_acks if a.call == "keepalive"])
    assert c.owners()["job"] != owner
    link.heal()
    await w.run(3.0)
    assert c.nodes[owner].phase == "ACTIVE"


async def test_faulty_store_modes_on_their_own() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    link = FaultyStore(store, clock)
    lease = await link.grant(5)
    t0 = clock.monotonic()
    link.slow(1.0, calls={"keepalive"})
    await link.put("k", b"v")  # not delayed: only keep-alives are
    call = clock.monotonic()
    task = asyncio.create_task(link.keepalive(lease.id))
    await clock.advance(0.5)
    assert not task.done()
    await clock.advance(0.6)
    assert task.done()
    ack = link.lease_acks[-1]
    assert (ack.call, ack.sent, ack.applied) == ("keepalive", call, call + 1.0)
    link.heal()
    link.delay_acks(2.0)
    task = asyncio.create_task(link.keepalive(lease.id))
    await clock.advance(1.0)
    assert not task.done() and link.calls["keepalive"] == 2  # reached the store already
    await clock.advance(1.5)
    ack = link.lease_acks[-1]
    assert ack.applied == ack.sent == t0 + 1.1 and ack.answered == ack.sent + 2.0
    link.drop_acks()
    task = asyncio.create_task(link.keepalive(lease.id))
    await clock.advance(4.0)  # past the deadline of the keep-alive before (t0 + 6.1)
    assert not task.done() and await store.lease_ttl(lease.id) > 0  # refreshed all the same
    link.heal()
    with pytest.raises(StoreUnavailable, match="answer dropped"):
        await task
    with pytest.raises(ValueError, match="delay: must be >= 0"):
        link.slow(-1)
    await store.aclose()


async def test_an_acquisition_answered_past_the_deadline_does_not_start_the_duty(
    cluster: SimCluster,
) -> None:
    """A chaos run's G1 breach (an etcd member killed): a node sends its acquisition
    before its lease deadline, the store applies it (the lease is alive there), and
    the answer comes back after the deadline, when the node has stopped everything
    and given that lease up. It must not start the duty then: the key hangs on the
    lease it gave up, which the store drops while the node would still run it."""
    c, w = cluster, Watcher(cluster)
    owner = c.owners()["job"]
    other = next(n for n in c.nodes if n != owner)
    link = c.links[other]
    last = link.lease_acks[-1]
    link.drop_acks()  # its keep-alives still refresh its lease at the store
    deadline = last.sent + TTL - MARGIN
    await w.run(round((deadline - 0.5 - c.clock.monotonic()) / STEP) * STEP)
    applied: list[float] = []
    plain_txn = link.txn

    async def late_answer(*args: Any, **kwargs: Any) -> TxnResult:
        result = await plain_txn(*args, **kwargs)  # applied at the store now
        applied.append(c.clock.monotonic())
        await c.clock.sleep(1.0)  # its answer comes back late
        return result

    link.txn = late_answer  # type: ignore[method-assign]
    dead = c.nodes[owner]
    assert dead.session is not None
    lease = dead.session.lease
    await dead.abandon()  # the owner crashes and its reaper revokes its lease
    await c.store.revoke(lease)
    await w.run(2.0)  # (the Watcher fails any duty run past its node's deadline)
    assert applied and applied[0] < deadline, "the acquisition was not applied in time"
    assert ("job", other) not in w.ran
    link.txn = plain_txn  # type: ignore[method-assign]
    link.heal()
    await w.run(3 * TTL)  # then it takes the duty on its new lease
    assert c.running().get("job") == [other]
