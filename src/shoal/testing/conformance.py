"""The store conformance suite: one set of tests every backend must pass.

Real etcd is the oracle: everything checked here holds on etcd v3, and the
suite runs against a real etcd in Shoal's own tests. A third-party backend
proves itself by subclassing :class:`StoreConformance` (exported as
``shoal.testing.StoreConformance``) in a test module and providing a
``harness`` fixture that returns a :class:`StoreHarness`::

    from shoal.testing import StoreConformance, StoreHarness

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def harness(self, tmp_path):
            h = StoreHarness("mine", lambda: MyStore.open(tmp_path / "db"))
            yield h
            await h.aclose()

``StoreHarness.open()`` must return a NEW client of the SAME store each time
(the in-process memory store hands out ``MemoryStore.client()``). Give ``clock=`` when the store
runs on a :class:`~shoal.testing.FakeClock`, so lease tests move fake time.
The suite needs pytest-asyncio in auto mode. :mod:`shoal.testing.pytest_plugin`
has ready harness fixtures for the built-in backends (``memory_harness``,
``sqlite_harness``, ``etcd_harness``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import pytest

from shoal.errors import Compacted, InvalidTransaction, LeaseNotFound
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    Op,
    Put,
    Store,
    TxnOp,
)
from shoal.testing.clock import FakeClock


class StoreHarness:
    """How the suite reaches a backend: ``open()`` gives a new client of the
    SAME store; ``advance(s)`` lets ``s`` seconds pass (fake or real time)."""

    def __init__(
        self,
        name: str,
        opener: Callable[[], Awaitable[Store]],
        clock: FakeClock | None = None,
    ) -> None:
        self.name = name
        self._opener = opener
        self.clock = clock
        self.prefix = f"t{uuid.uuid4().hex[:10]}/"
        self._opened: list[Store] = []

    async def open(self) -> Store:
        store = await self._opener()
        self._opened.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            await self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def eventually(
        self, check: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.05  # noqa: ASYNC109
    ) -> bool:
        """Let time pass until ``check()`` holds; False after ``timeout`` seconds."""
        waited = 0.0
        while waited <= timeout:
            if await check():
                return True
            await self.advance(step)
            waited += step
        return await check()

    async def aclose(self) -> None:
        for store in reversed(self._opened):
            await store.aclose()


async def _collect(it: AsyncIterator[Event], n: int, limit_s: float = 5.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for ev in it:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), limit_s)
    return out


class StoreConformance:
    """Subclass me and provide a ``harness`` fixture (see module docstring)."""

    # -- revisions and versions ----------------------------------------------
    async def test_put_get_revisions_and_versions(self, harness: StoreHarness) -> None:
        s = await harness.open()
        k = harness.prefix + "a"
        r0 = await s.revision()
        r1 = await s.put(k, b"1")
        assert r1 == r0 + 1
        kv = await s.get(k)
        assert kv is not None
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            k, b"1", r1, r1, 1, 0,
        )
        r2 = await s.put(k, b"2")
        kv = await s.get(k)
        assert kv is not None and (kv.create_revision, kv.mod_revision, kv.version) == (r1, r2, 2)
        assert await s.delete(k) == 1
        assert await s.get(k) is None
        r4 = await s.put(k, b"3")
        kv = await s.get(k)
        assert kv is not None and (kv.create_revision, kv.version) == (r4, 1)
        assert await s.revision() == r4

    async def test_revision_moves_only_on_change(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        r0 = await s.put(p + "x", b"")
        assert await s.delete(p + "missing") == 0
        res = await s.txn([Compare.exists(p + "x")], [Get(p + "x")])
        assert res.succeeded and res.revision == r0
        assert await s.revision() == r0

    async def test_range_is_sorted_and_prefix_exact(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        for k in ("a/2", "a/1", "ab", "a/3", "b"):
            await s.put(p + k, k.encode())
        res = await s.range(p + "a/")
        assert [kv.key for kv in res.kvs] == [p + "a/1", p + "a/2", p + "a/3"]
        assert res.revision == await s.revision()
        assert await s.delete(p + "a/", prefix=True) == 3
        assert [kv.key for kv in (await s.range(p)).kvs] == [p + "ab", p + "b"]

    # -- compares and transactions --------------------------------------------
    async def test_every_compare_kind(self, harness: StoreHarness) -> None:
        s = await harness.open()
        k = harness.prefix + "c"
        lease = await s.grant(30)
        r1 = await s.put(k, b"m", lease=lease.id)
        cases = [
            (Compare.value(k, Op.EQUAL, b"m"), True),
            (Compare.value(k, Op.NOT_EQUAL, b"m"), False),
            (Compare.value(k, Op.GREATER, b"a"), True),
            (Compare.value(k, Op.LESS, b"a"), False),
            (Compare.create_revision(k, Op.EQUAL, r1), True),
            (Compare.create_revision(k, Op.LESS, r1), False),
            (Compare.mod_revision(k, Op.EQUAL, r1), True),
            (Compare.mod_revision(k, Op.GREATER, r1 - 1), True),
            (Compare.version(k, Op.EQUAL, 1), True),
            (Compare.version(k, Op.GREATER, 1), False),
            (Compare.lease(k, Op.EQUAL, lease.id), True),
            (Compare.lease(k, Op.NOT_EQUAL, lease.id), False),
            (Compare.exists(k), True),
            (Compare.absent(k), False),
            (Compare.absent(k + "-none"), True),
            (Compare.version(k + "-none", Op.EQUAL, 0), True),
            (Compare.value(k + "-none", Op.EQUAL, b""), False),  # etcd: value compare on missing
        ]
        for compare, expected in cases:
            res = await s.txn([compare])
            assert res.succeeded is expected, compare
        await s.revoke(lease.id)

    async def test_txn_is_atomic(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        res = await s.txn(
            [Compare.absent(p + "lock")],
            [Put(p + "lock", b"me"), Put(p + "data", b"d"), Get(p + "data")],
            [Get(p + "lock")],
        )
        assert res.succeeded
        lock, data = await s.get(p + "lock"), await s.get(p + "data")
        assert lock and data and lock.mod_revision == data.mod_revision == res.revision
        got = res.results[2]
        assert isinstance(got, list) and got[0].value == b"d"
        res2 = await s.txn([Compare.absent(p + "lock")], [Put(p + "data", b"x")], [Get(p + "lock")])
        assert not res2.succeeded and res2.revision == res.revision
        failed_get = res2.results[0]
        assert isinstance(failed_get, list) and failed_get[0].value == b"me"
        assert (await s.get(p + "data")) == data
        # a put on a missing lease fails the whole transaction, nothing written
        with pytest.raises(LeaseNotFound):
            await s.txn([], [Put(p + "y", b"1"), Put(p + "z", b"1", lease=0x7FFF1234)])
        assert await s.get(p + "y") is None
        assert await s.revision() == res.revision

    async def test_txn_writing_one_key_twice_is_refused(self, harness: StoreHarness) -> None:
        """etcd refuses a branch that puts one key twice, or puts and deletes one
        key (in either order, a prefix delete included), with "duplicate key given
        in txn request" — checked on BOTH branches before the compares run."""
        s = await harness.open()
        p = harness.prefix
        await s.put(p + "a", b"0")
        before = await s.revision()
        refused: list[tuple[list[TxnOp], list[TxnOp]]] = [
            ([Put(p + "a", b"1"), Put(p + "a", b"2")], []),
            ([Put(p + "a", b"1"), Delete(p + "a")], []),
            ([Delete(p + "a"), Put(p + "a", b"1")], []),
            ([Put(p + "a/x", b"1"), Delete(p + "a/", prefix=True)], []),
            ([Put(p + "b", b"1")], [Put(p + "a", b"1"), Put(p + "a", b"2")]),  # not taken
            ([], [Delete(p + "a"), Put(p + "a", b"1")]),
        ]
        for on_success, on_failure in refused:
            with pytest.raises(InvalidTransaction) as info:
                await s.txn([], on_success, on_failure)
            assert isinstance(info.value, ValueError)  # a usage error
        assert await s.revision() == before  # nothing was written
        kv = await s.get(p + "a")
        assert kv is not None and kv.value == b"0"
        assert await s.get(p + "b") is None
        # what etcd accepts: two deletes of one key, a put and a get, a neighbour
        res = await s.txn([], [Delete(p + "a"), Delete(p + "a")])
        assert res.results == (1, 0)
        res = await s.txn(
            [], [Put(p + "a", b"1"), Get(p + "a"), Put(p + "ab", b"2"), Delete(p + "z")]
        )
        got = res.results[1]
        assert isinstance(got, list) and got[0].value == b"1"

    async def test_concurrent_cas_has_exactly_one_winner(self, harness: StoreHarness) -> None:
        clients = [await harness.open() for _ in range(4)]
        for round_ in range(5):
            key = f"{harness.prefix}race{round_}"

            async def attempt(i: int, s: Store, key: str = key) -> bool:
                res = await s.txn([Compare.absent(key)], [Put(key, str(i).encode())])
                return res.succeeded

            wins = await asyncio.gather(*(attempt(i, c) for i, c in enumerate(clients * 2)))
            assert sum(wins) == 1
            kv = await clients[0].get(key)
            assert kv is not None and kv.version == 1

    # -- leases ---------------------------------------------------------------
    async def test_lease_expiry_removes_attached_keys(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        lease = await s.grant(2)
        assert lease.ttl >= 2
        await s.put(p + "eph", b"1", lease=lease.id)
        await s.put(p + "keep", b"1")
        assert 0 < await s.lease_ttl(lease.id) <= lease.ttl

        async def gone() -> bool:
            return await s.get(p + "eph") is None

        assert not await gone()
        assert await harness.eventually(gone, timeout=lease.ttl + 3.0)
        assert await s.get(p + "keep") is not None
        assert await s.lease_ttl(lease.id) == -1
        with pytest.raises(LeaseNotFound):
            await s.keepalive(lease.id)

    async def test_keepalive_extends_and_revoke_deletes(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        lease = await s.grant(2)
        await s.put(p + "k", b"1", lease=lease.id)
        for _ in range(4):  # 4 x 1 s > TTL: only keepalive keeps it
            await harness.advance(1.0)
            assert await s.keepalive(lease.id) >= 2
        assert await s.get(p + "k") is not None
        await s.revoke(lease.id)
        assert await s.get(p + "k") is None
        with pytest.raises(LeaseNotFound):
            await s.revoke(lease.id)
        with pytest.raises(LeaseNotFound):
            await s.put(p + "k2", b"1", lease=lease.id)

    # -- watch ----------------------------------------------------------------
    async def test_watch_is_ordered_and_complete(self, harness: StoreHarness) -> None:
        a, b = await harness.open(), await harness.open()
        p = harness.prefix
        start = await a.revision() + 1
        async with aclosing(a.watch(p, start)) as it:
            revs = [await b.put(f"{p}k{i % 3}", str(i).encode()) for i in range(20)]
            await b.delete(p + "k0")
            await b.txn([], [Put(p + "t1", b"1"), Put(p + "t2", b"2")])
            events = await _collect(it, 23)
        assert [e.revision for e in events[:20]] == revs
        assert [e.kv.value for e in events[:20]] == [str(i).encode() for i in range(20)]
        assert events[20].type is EventType.DELETE and events[20].kv.key == p + "k0"
        assert events[20].kv.value == b"" and events[20].revision == revs[-1] + 1
        assert events[21].revision == events[22].revision == revs[-1] + 2
        assert [e.kv.key for e in events[21:]] == [p + "t1", p + "t2"]
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions)

    async def test_closing_one_client_leaves_another_working(self, harness: StoreHarness) -> None:
        a, b = await harness.open(), await harness.open()
        assert a is not b, "open() must hand out a separate client each time"
        p = harness.prefix
        await a.put(p + "shared", b"from-a")
        start = await b.revision() + 1
        async with aclosing(b.watch(p, start)) as it:
            await a.aclose()
            rev = await b.put(p + "after", b"from-b")
            events = await _collect(it, 1)
        assert [(e.kv.key, e.revision) for e in events] == [(p + "after", rev)]
        shared = await b.get(p + "shared")
        assert shared is not None and shared.value == b"from-a"

    async def test_watch_from_old_revision_replays(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        r1 = await s.put(p + "h", b"1")
        await s.put(p + "h", b"2")
        await s.delete(p + "h")
        async with aclosing(s.watch(p, r1)) as it:
            events = await _collect(it, 3)
        assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
        assert [e.kv.version for e in events[:2]] == [1, 2]

    async def test_watch_prefix_does_not_see_neighbours(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        start = await s.revision() + 1
        async with aclosing(s.watch(p + "a/", start)) as it:
            await s.put(p + "ab", b"no")
            await s.put(p + "a", b"no")
            await s.put(p + "b/x", b"no")
            await s.put(p + "a/x", b"yes")
            events = await _collect(it, 1)
        assert [e.kv.key for e in events] == [p + "a/x"]

    async def test_watch_sees_a_revoke_as_one_revision_of_deletes(
        self, harness: StoreHarness
    ) -> None:
        s = await harness.open()
        p = harness.prefix
        lease = await s.grant(30)
        other = await s.grant(30)
        keys = [f"{p}r/{i:02d}" for i in (3, 1, 2, 0)]
        for key in keys:
            await s.put(key, b"1", lease=lease.id)
        await s.put(p + "r/other", b"1", lease=other.id)
        r = await s.put(p + "r/free", b"1")
        async with aclosing(s.watch(p, r + 1)) as it:
            await s.revoke(lease.id)
            await s.put(p + "r/after", b"1")  # the revoke's events end before this one
            events = await _collect(it, len(keys) + 1)
        deletes, after = events[:-1], events[-1]
        assert [e.type for e in deletes] == [EventType.DELETE] * len(keys)
        assert sorted(e.kv.key for e in deletes) == sorted(keys)
        assert len({e.revision for e in deletes}) == 1  # one revision: seen at once
        assert after.kv.key == p + "r/after" and after.revision > deletes[0].revision
        assert await s.get(p + "r/other") is not None and await s.get(p + "r/free") is not None
        assert await s.lease_ttl(other.id) > 0

    async def test_watch_sees_lease_expiry(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        lease = await s.grant(2)
        r = await s.put(p + "e", b"1", lease=lease.id)
        async with aclosing(s.watch(p, r + 1)) as it:
            task = asyncio.ensure_future(_collect(it, 1, limit_s=lease.ttl + 10.0))

            async def done() -> bool:
                return task.done()

            await harness.eventually(done, timeout=lease.ttl + 4.0)
            events = await task
        assert events[0].type is EventType.DELETE and events[0].kv.key == p + "e"

    async def test_compaction_is_reported(self, harness: StoreHarness) -> None:
        s = await harness.open()
        p = harness.prefix
        r1 = await s.put(p + "c", b"1")
        r2 = await s.put(p + "c", b"2")
        await s.put(p + "c", b"3")
        await s.compact(r2)
        with pytest.raises(Compacted) as info:
            async with aclosing(s.watch(p, r1)) as it:
                await _collect(it, 1)
        assert info.value.compact_revision == r2
        async with aclosing(s.watch(p, r2)) as it:
            events = await _collect(it, 2)
        assert [e.kv.value for e in events] == [b"2", b"3"]
