"""The primitives directly, on the memory store with a fake clock and a FaultyStore link:
lease session (keep-alive events with send times, LeaseGone, orphan vs aclose), ownership
(create-if-absent, fencing token, guarded release, an unknown outcome settled by re-read),
membership (G6, guarded update, record round trip) and the mirror (load, follow, resume
after a cut, full reload after compaction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from shoal.core.node_state import KeepaliveFailed, KeepaliveOk, LeaseGone
from shoal.errors import NameTaken, OutcomeUnknown
from shoal.primitives import membership, ownership
from shoal.primitives.membership import Member
from shoal.primitives.mirror import Mirror
from shoal.primitives.session import LeaseSession
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Compare, TxnOp, TxnResult
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeClock, MemoryStore, FaultyStore]]:
    clock = FakeClock()
    store = MemoryStore(clock)
    link = FaultyStore(store, clock)
    yield clock, store, link
    link.heal()
    await store.aclose()


# -- lease session -----------------------------------------------------------------
async def test_session_reports_each_keepalive_with_its_send_time(env: tuple) -> None:
    clock, _store, link = env
    events: list[object] = []
    s = await LeaseSession.open(link, clock, ttl=6, on_event=events.append)
    t0 = clock.monotonic()
    assert s.granted_at == t0 and s.interval == 2.0 and s.alive
    await clock.advance(2.0)
    assert events == [KeepaliveOk(at=t0), KeepaliveOk(at=t0 + 2.0)]
    link.cut()
    await clock.advance(2.0)
    assert events[-1] == KeepaliveFailed() and s.keepalives_failed == 1 and s.alive
    link.heal()
    await clock.advance(0.5)  # retried quickly (interval / 4) after a failure
    assert events[-1] == KeepaliveOk(at=t0 + 4.5)
    await s.aclose()


async def test_a_hanging_keepalive_reports_nothing(env: tuple) -> None:
    """The node's deadline (G1) then passes: the session never reports a late success."""
    clock, store, link = env
    events: list[object] = []
    s = await LeaseSession.open(link, clock, ttl=6, on_event=events.append)
    await clock.settle()
    link.blackhole()
    n = len(events)
    await clock.advance(20.0)
    assert len(events) == n and s.alive
    link.heal()
    await s.aclose()
    assert await store.lease_ttl(s.lease) == -1


async def test_session_ends_when_the_store_says_the_lease_is_gone(env: tuple) -> None:
    clock, store, link = env
    events: list[object] = []
    s = await LeaseSession.open(link, clock, ttl=6, on_event=events.append)
    await store.revoke(s.lease)
    await clock.advance(2.0)
    assert s.done.is_set() and not s.alive and "gone" in s.end_reason
    assert events[-1] == LeaseGone()
    await s.aclose()


async def test_orphan_lets_the_lease_expire_and_aclose_revokes(env: tuple) -> None:
    clock, store, link = env
    s = await LeaseSession.open(link, clock, ttl=6)
    await s.orphan()
    assert not s.alive and await store.lease_ttl(s.lease) > 0
    await clock.advance(7.0)
    assert await store.lease_ttl(s.lease) == -1
    s2 = await LeaseSession.open(link, clock, ttl=6)
    await s2.aclose()
    await s2.aclose()  # idempotent
    assert await store.lease_ttl(s2.lease) == -1 and link.calls["revoke"] == 1
    with pytest.raises(ValueError, match="ttl must be >= 1"):
        LeaseSession(link, clock, ttl=0)


# -- ownership ---------------------------------------------------------------------
async def test_acquire_is_create_if_absent_and_the_token_is_the_create_revision(
    env: tuple,
) -> None:
    _clock, store, _ = env
    la, lb = (await store.grant(10)).id, (await store.grant(10)).id
    token = await ownership.acquire(store, "d", "a", la, 1.0)
    assert token is not None
    assert await ownership.acquire(store, "d", "b", lb, 2.0) is None
    kv = await store.get("duties/d")
    assert kv is not None and kv.create_revision == token and kv.lease == la
    assert ownership.Owner.decode("d", kv) == ownership.Owner("d", "a", token, 1.0, la)
    assert (await store.txn([ownership.guard("d", token)])).succeeded
    assert await ownership.release(store, "d", token + 1) == 0  # not its token: kept
    assert await store.get("duties/d") is not None
    assert await ownership.release(store, "d", token) > token
    newer = await ownership.acquire(store, "d", "b", lb, 3.0)
    assert newer is not None and newer > token
    assert not (await store.txn([ownership.guard("d", token)])).succeeded  # fenced (G2)


class UnknownOutcome(FaultyStore):
    """The txn lands (or not) but its answer is lost: OutcomeUnknown."""

    land = True

    async def txn(self, compares: Sequence[Compare], on_success: Sequence[TxnOp] = (),
                  on_failure: Sequence[TxnOp] = ()) -> TxnResult:  # fmt: skip
        if self.land:
            await self.inner.txn(compares, on_success, on_failure)
        raise OutcomeUnknown("answer lost")


async def test_an_unknown_acquire_outcome_is_settled_by_re_reading(env: tuple) -> None:
    clock, store, _ = env
    lease = (await store.grant(10)).id
    link = UnknownOutcome(store, clock)
    token = await ownership.acquire(link, "d", "a", lease, 1.0)
    kv = await store.get("duties/d")
    assert kv is not None and token == kv.create_revision
    other = (await store.grant(10)).id
    assert await ownership.acquire(link, "d", "b", other, 1.0) is None  # landed for a only
    link.land = False
    assert await ownership.acquire(link, "e", "a", lease, 1.0) is None
    assert link.calls["txn"] == 0  # never resent: the inner txn was called directly


# -- membership --------------------------------------------------------------------
async def test_register_refuses_a_live_name_and_update_is_guarded(env: tuple) -> None:
    _clock, store, _ = env
    la, lb = (await store.grant(10)).id, (await store.grant(10)).id
    me = Member("a", roles=("web",), weight=2.0, workers=(("w", 3),))
    rev = await membership.register(store, me, la)
    kv = await store.get("nodes/a")
    assert kv is not None and Member.decode(kv) == me and Member.decode(kv).lease == la
    assert Member.decode(kv).revision == rev
    with pytest.raises(NameTaken, match=r"'a' is held by a live node .*expires in \d+s"):
        await membership.register(store, Member("a"), lb)
    assert await membership.update(store, Member("a", draining=True), lb) == 0  # not my lease
    assert await membership.update(store, Member("a", draining=True), la) > rev
    kv = await store.get("nodes/a")
    assert kv is not None and Member.decode(kv).draining
    await store.revoke(la)
    assert await membership.register(store, Member("a"), lb) > 0  # the name is free again


def test_member_decode_ignores_unknown_fields() -> None:
    from shoal.store.protocol import KeyValue

    kv = KeyValue("nodes/a", b'{"name": "a", "future": 1, "workers": {"w": 2}}', 3, 4, 1, 9)
    m = Member.decode(kv)
    assert m.name == "a" and m.workers == (("w", 2),) and m.lease == 9 and m.revision == 4


# -- mirror ------------------------------------------------------------------------
async def test_mirror_tells_listeners_a_transactions_events_in_one_call(env: tuple) -> None:
    """The events that arrive together (here: one transaction's) reach a listener
    in one call, in order, after the mirror applied them all; a later change comes
    in a call of its own."""
    from shoal.store.protocol import Put

    clock, store, link = env
    calls: list[tuple[list[str], set[str]]] = []
    m = Mirror(link, "p/", clock)
    m.listen(lambda evs: calls.append(([e.kv.key for e in evs or []], set(m.items))))
    m.start()
    await m.wait_ready()
    calls.clear()
    await store.txn([], [Put(f"p/{i}", b"v") for i in range(5)])
    await clock.settle()
    keys = [f"p/{i}" for i in range(5)]
    assert calls == [(keys, {str(i) for i in range(5)})]
    await store.put("p/9", b"v")
    await clock.settle()
    assert len(calls) == 2 and calls[1][0] == ["p/9"]
    await m.aclose()


async def test_mirror_loads_follows_resumes_and_reloads(env: tuple) -> None:
    clock, store, link = env
    await store.put("p/a", b"1")
    await store.put("q/x", b"other prefix")
    seen: list[object] = []
    m = Mirror(link, "p/", clock, on_change=lambda evs: seen.append(
        None if evs is None else [e.kv.key for e in evs]))
    m.start()
    await m.wait_ready()
    assert set(m.items) == {"a"} and m.reloads == 1 and seen == [None]
    await store.put("p/b", b"2")
    await clock.settle()
    assert set(m.items) == {"a", "b"} and seen[-1] == ["p/b"]
    assert m.revision == await store.revision()
    link.cut()
    await clock.settle()
    assert not m.connected
    await store.delete("p/a")  # missed while cut
    link.heal()
    await clock.advance(0.1)  # retried with backoff, resumed from the last revision
    assert set(m.items) == {"b"} and m.reloads == 1 and seen[-1] == ["p/a"]
    link.cut()
    await clock.settle()
    await store.put("p/c", b"3")
    await store.put("q/y", b"other prefix")
    await store.compact(await store.revision())  # the change to p/c is compacted away
    link.heal()
    await clock.advance(0.2)
    assert set(m.items) == {"b", "c"}, m.items
    assert (m.reloads, seen[-1]) == (2, None), (m.reloads, seen)
    await m.aclose()
    await asyncio.sleep(0)
