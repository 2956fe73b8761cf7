"""Replicated state (node.state): memory store + fake clock for the cache rules (G4,
G5, fencing), sqlite with several nodes and another OS process, real etcd and a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import (
    Conflict,
    DocumentTooLarge,
    DutyLost,
    InvalidDocument,
    NotRunning,
    StoreUnavailable,
)
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.runtime.state import Change, CheckDoc, DeleteDoc, PutDoc, ReplicatedState
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Event, EventType, KeyValue, Store
from shoal.testing.clock import FakeClock
from shoal.testing.cluster import SimCluster
from shoal.testing.faulty import FaultyStore

TTL = 6
pytestmark = pytest.mark.timeout(60)


class Cluster(SimCluster):
    """Nodes on one memory store, each behind its own FaultyStore link."""

    def __init__(self, app: App | None = None) -> None:
        super().__init__(app, ttl=TTL)

    def state_keys(self) -> dict[str, bytes]:
        return {k: kv.value for k, kv in self.store.snapshot("state/").items()}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.aclose()


async def collect(it: AsyncIterator[Change], into: list[Change]) -> None:
    async for change in it:
        into.append(change)


# -- G4: replication, order, read-your-writes -------------------------------------------
async def test_write_on_one_node_is_visible_on_every_node(cluster: Cluster) -> None:
    a, b, c = [await cluster.add(n) for n in "abc"]
    rev = await a.state.put("cfg", "feature-x", {"on": True, "pct": 12.5})
    await cluster.run(0.1)
    for node in (a, b, c):
        doc = node.state.get("cfg", "feature-x")
        assert doc is not None and doc.value == {"on": True, "pct": 12.5}
        assert (doc.revision, doc.version, doc.create_revision) == (rev, 1, rev)
        assert node.state.namespaces() == ["cfg"] and list(node.state.items("cfg")) == ["feature-x"]
        assert not node.state.stale and node.state.stale_for == 0.0
    rev2 = await b.state.put("cfg", "feature-x", {"on": False})
    rev3 = await c.state.delete("cfg", "feature-x")
    assert rev3 > rev2 > rev
    await cluster.run(0.1)
    assert all(n.state.get("cfg", "feature-x") is None for n in (a, b, c))
    assert all(n.state.namespaces() == [] and n.state.revision == rev3 for n in (a, b, c))
    assert await c.state.delete("cfg", "feature-x") == 0  # nothing to delete


async def test_read_your_writes_and_atomic_transactions(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    await a.state.put("cfg", "gone", 1)
    ops = [PutDoc("cfg", f"k{i}", i) for i in range(5)] + [DeleteDoc("cfg", "gone")]
    rev = await a.state.transaction(ops)
    await a.state.wait_for(rev)  # no clock step: returns once ALL six events are applied
    assert {k: d.value for k, d in a.state.items("cfg").items()} == {f"k{i}": i for i in range(5)}
    assert all(d.revision == rev for d in a.state.items("cfg").values())
    # another node's waiter wakes when that node has applied the write
    rev2 = await a.state.put("cfg", "k0", "x")
    waiter = asyncio.ensure_future(b.state.wait_for(rev2))
    await asyncio.sleep(0)
    assert not waiter.done() and b.state.get("cfg", "k0").value == 0  # type: ignore[union-attr]
    await cluster.run(0.1)
    assert waiter.done() and b.state.get("cfg", "k0").value == "x"  # type: ignore[union-attr]
    # a check-only transaction writes nothing and returns 0
    assert await b.state.transaction([CheckDoc("cfg", "k1", rev)]) == 0


async def test_changes_are_applied_in_revision_order_and_subscribers_see_them(
    cluster: Cluster,
) -> None:
    nodes = [await cluster.add(n) for n in "abc"]
    seen_all: list[Change] = []
    seen_cfg: list[Change] = []
    tasks = [
        asyncio.ensure_future(collect(nodes[0].state.subscribe(), seen_all)),
        asyncio.ensure_future(collect(nodes[0].state.subscribe("cfg"), seen_cfg)),
    ]
    await cluster.run(0.1)
    revs = []
    for i in range(30):
        node = nodes[i % 3]
        ns = "cfg" if i % 2 else "other"
        revs.append(await node.state.put(ns, f"k{i % 4}", i))
    revs.append(await nodes[1].state.delete("cfg", "k1"))
    await cluster.run(0.2)
    assert [ch.revision for ch in seen_all] == revs  # every change, once, in order (G4)
    assert all(ch.namespace == "cfg" for ch in seen_cfg) and len(seen_cfg) == 16
    assert seen_cfg[-1] == Change("delete", "cfg", "k1", None, revs[-1])
    assert seen_all[0] == Change("put", "other", "k0", 0, revs[0])
    for t in tasks:
        t.cancel()


# -- compare-and-set ------------------------------------------------------------------------
async def test_concurrent_compare_and_set_exactly_one_wins(cluster: Cluster) -> None:
    a, b, c = [await cluster.add(n) for n in "abc"]
    results = await asyncio.gather(
        a.state.put("locks", "job", "a", expect_revision=0),
        b.state.put("locks", "job", "b", expect_revision=0),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, int)]
    losses = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].current == wins[0]
    assert f"expected to create it (expect_revision=0) but its current revision is {wins[0]}" in (
        str(losses[0])
    )
    # a counter incremented by three nodes with retry-on-conflict loses no update
    await a.state.put("counters", "n", 0)
    await cluster.run(0.1)

    async def bump(node: Node, times: int) -> int:
        conflicts = 0
        for _ in range(times):
            while True:
                doc = node.state.get("counters", "n")
                assert doc is not None
                try:
                    rev = await node.state.put(
                        "counters", "n", doc.value + 1, expect_revision=doc.revision
                    )
                except Conflict:
                    conflicts += 1
                    await cluster.clock.settle()
                    continue
                await node.state.wait_for(rev)
                break
        return conflicts

    conflicts = await asyncio.gather(bump(a, 10), bump(b, 10), bump(c, 10))
    await cluster.run(0.1)
    assert all(n.state.get("counters", "n").value == 30 for n in (a, b, c))  # type: ignore[union-attr]
    assert sum(conflicts) > 0
    with pytest.raises(Conflict, match=r"expected revision 1 but its current revision is \d+"):
        await a.state.delete("counters", "n", expect_revision=1)
    with pytest.raises(Conflict, match="expected revision 5 but it does not exist"):
        await a.state.put("counters", "absent", 1, expect_revision=5)


# -- G5: store loss -------------------------------------------------------------------------
async def test_store_outage_stale_reads_refused_writes_then_catch_up(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    before = [await a.state.put("cfg", f"a{i}", i) for i in range(3)]
    await cluster.run(0.5)
    link = cluster.links["a"]
    link.cut()
    cut_at = cluster.clock.monotonic()
    await cluster.run(3.0)
    assert a.phase == "SUSPENDED"
    assert a.state.stale and a.state.stale_for >= 3.0
    assert a.state.get("cfg", "a1").value == 1  # type: ignore[union-attr]  # reads keep working
    txns, now = link.calls["txn"], cluster.clock.monotonic()
    with pytest.raises(StoreUnavailable, match=r"stale for \d+\.\d s\); write refused"):
        await a.state.put("cfg", "refused", 1)
    assert link.calls["txn"] == txns and cluster.clock.monotonic() == now  # at once, no I/O
    # the cluster goes on without a; a keeps serving its (stale) copy past its deadline
    during = [await b.state.put("cfg", f"b{i}", i) for i in range(4)]
    during.append(await b.state.delete("cfg", "a0"))
    await cluster.run(TTL)
    assert a.phase in ("LOST", "JOINING") and a.state.stale
    assert a.state.stale_for >= cluster.clock.monotonic() - cut_at
    assert a.state.get("cfg", "a0") is not None and a.state.get("cfg", "b0") is None
    link.heal()
    await cluster.run(a.settings.retry_backoff_max + 1.0)  # a jittered rejoin back-off
    assert a.phase == "ACTIVE" and not a.state.stale and a.state.stale_for == 0.0
    await a.state.wait_for(during[-1])
    assert a.state.items("cfg") == b.state.items("cfg")  # nothing lost, nothing extra
    assert set(a.state.items("cfg")) == {"a1", "a2", "b0", "b1", "b2", "b3"}
    assert a.state._mirror.reloads == 1  # resumed from its revision: no full reload
    assert a.state.revision == during[-1] > before[-1]
    assert await a.state.put("cfg", "after", 1) > during[-1]  # writes work again


async def test_compaction_during_an_outage_forces_an_atomic_full_reload(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    await a.state.transaction([PutDoc("cfg", "x", 1), PutDoc("cfg", "y", 1)])
    await cluster.run(0.2)
    changes: list[Change] = []
    seen_at_reload: list[dict[str, Any]] = []

    async def watch() -> None:
        async for ch in a.state.subscribe("cfg"):
            changes.append(ch)
            if ch.kind == "reload":
                seen_at_reload.append({k: d.value for k, d in a.state.items("cfg").items()})

    task = asyncio.ensure_future(watch())
    cluster.links["a"].cut()
    await cluster.run(1.0)
    await b.state.put("cfg", "x", 2)
    await b.state.delete("cfg", "y")
    last = await b.state.put("cfg", "z", 3)
    await cluster.store.compact(last)  # a's next revision is gone from the history
    assert {k: d.value for k, d in a.state.items("cfg").items()} == {"x": 1, "y": 1}
    cluster.links["a"].heal()
    await cluster.run(3.0)
    assert a.state._mirror.reloads == 2 and not a.state.stale
    assert {k: d.value for k, d in a.state.items("cfg").items()} == {"x": 2, "z": 3}
    assert a.state.revision >= last
    assert [ch.kind for ch in changes] == ["reload"] and changes[0].namespace == "cfg"
    assert seen_at_reload == [{"x": 2, "z": 3}]  # no stale value visible after the swap
    task.cancel()


async def test_standalone_state_measures_staleness_from_its_watch_alone() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    link = FaultyStore(store)
    state = ReplicatedState(link, clock)  # no node, no keep-alives: only the watch tells
    state.start()
    await state.wait_ready()
    assert not state.stale
    link.cut()
    await clock.run_for(5.0)  # the watch is retried (and refused) many times meanwhile
    assert state.stale and state.stale_for == pytest.approx(5.0, abs=0.01)
    link.heal()
    await clock.run_for(1.5)
    assert not state.stale and state.stale_for == 0.0
    await state.aclose()


async def test_wait_for_an_own_transaction_waits_for_every_event_of_it() -> None:
    """Events of one revision may arrive one by one (a watch may yield between them):
    wait_for(revision of my write) returns only once all of them are applied."""
    clock = FakeClock()
    state = ReplicatedState(MemoryStore(clock), clock)  # fed by hand below
    state._expect[7] = 3  # what transaction() records for a write of 3 keys

    def event(i: int, rev: int = 7) -> Event:
        return Event(EventType.PUT, KeyValue(f"state/cfg/k{i}", b"1", rev, rev, 1))

    mine = asyncio.ensure_future(state.wait_for(7))
    other = asyncio.ensure_future(state.wait_for(6))
    await asyncio.sleep(0)
    for i in range(3):
        assert not mine.done()
        state._changed([event(i)])
        await asyncio.sleep(0)
        assert other.done()
    assert mine.done() and len(state.items("cfg")) == 3
    state._changed([event(0, rev=5)])  # an older revision is never applied (G4)
    assert state.revision == 7 and state.get("cfg", "k0").revision == 7  # type: ignore[union-attr]


# -- G2: fenced writes -----------------------------------------------------------------------
async def test_fenced_write_from_a_superseded_duty_is_refused() -> None:
    contexts: list[DutyContext] = []
    app = App("t")
    c = Cluster(app)

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        contexts.append(ctx)
        await c.nodes[ctx.node].state.put("jobs", "out", ctx.node, guard=ctx.guard())
        await ctx.stopping.wait()

    try:
        await c.add("a")
        await c.run(1.0)
        await c.add("b")
        await c.run(1.0)
        old = contexts[-1]
        c.links[old.node].blackhole()  # the old owner is cut off (a paused process)
        await c.run(TTL + 2.0)
        new = contexts[-1]
        assert new.node != old.node and new.token > old.token
        c.links[old.node].heal()
        await c.run(3.0)  # the old node rejoins: its state is fresh again
        old_state = c.nodes[old.node].state
        assert not old_state.stale
        txns = c.links[old.node].calls["txn"]
        with pytest.raises(DutyLost, match="guard on duties/job no longer holds"):
            await old_state.put("jobs", "out", "stale", guard=old.guard())
        assert c.links[old.node].calls["txn"] == txns + 1  # refused by the store itself
        assert c.store.snapshot()["state/jobs/out"].value == json.dumps(new.node).encode()
        await c.run(0.1)
        assert all(n.state.get("jobs", "out").value == new.node for n in c.nodes.values())  # type: ignore[union-attr]
    finally:
        await c.aclose()


# -- bad input --------------------------------------------------------------------------------
BAD_WRITES: list[tuple[str, Callable[[ReplicatedState], Any], type[Exception], str]] = [
    ("over-size", lambda s: s.put("cfg", "big", "x" * 100), DocumentTooLarge,
     "document cfg/big is 102 bytes encoded as JSON; the limit is 64 bytes"),
    ("set", lambda s: s.put("cfg", "k", {1, 2}), InvalidDocument,
     "cfg/k: value: type set is not JSON-serialisable"),
    ("nested object", lambda s: s.put("cfg", "k", {"a": [1, object()]}), InvalidDocument,
     "cfg/k: value['a'][1]: type object is not JSON-serialisable"),
    ("nan", lambda s: s.put("cfg", "k", [float("nan")]), InvalidDocument,
     "value[0]: float nan is not allowed in JSON"),
    ("int key", lambda s: s.put("cfg", "k", {1: "x"}), InvalidDocument,
     "dict key 1 of type int is not a string"),
    ("bytes", lambda s: s.put("cfg", "k", b"raw"), InvalidDocument, "type bytes"),
    ("namespace space", lambda s: s.put("my cfg", "k", 1), InvalidDocument,
     "bad namespace 'my cfg': a namespace must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
    ("namespace slash", lambda s: s.put("a/b", "k", 1), InvalidDocument, "bad namespace 'a/b'"),
    ("namespace empty", lambda s: s.delete("", "k"), InvalidDocument, "bad namespace ''"),
    ("key leading slash", lambda s: s.put("cfg", "/k", 1), InvalidDocument,
     "bad key '/k': a key must match ^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,511}$"),
    ("key too long", lambda s: s.put("cfg", "k" * 513, 1), InvalidDocument, "bad key 'kkk"),
    ("key type", lambda s: s.put("cfg", 7, 1), InvalidDocument, "bad key 7"),
    ("bad op in txn", lambda s: s.transaction([PutDoc("cfg", "ok", 1), PutDoc("cfg", "k", {3})]),
     InvalidDocument, "cfg/k: value: type set"),
    ("twice in txn", lambda s: s.transaction([PutDoc("cfg", "k", 1), DeleteDoc("cfg", "k")]),
     InvalidDocument, "cfg/k is written twice in one transaction"),
    ("too many ops", lambda s: s.transaction([PutDoc("cfg", f"k{i}", i) for i in range(129)]),
     InvalidDocument, "transaction has 129 operations; the limit is 128"),
    ("negative expect", lambda s: s.put("cfg", "k", 1, expect_revision=-1), InvalidDocument,
     "expected revision must be an int >= 0"),
]


@pytest.mark.parametrize(
    ("write", "error", "message"), [b[1:] for b in BAD_WRITES], ids=[b[0] for b in BAD_WRITES]
)
async def test_bad_input_is_refused_before_anything_is_written(
    cluster: Cluster, write: Callable[[ReplicatedState], Any], error: type[Exception], message: str
) -> None:
    a = await cluster.add("a")
    a.state.max_doc_bytes = 64
    link = cluster.links["a"]
    calls, revision = sum(link.calls.values()), await cluster.store.revision()
    with pytest.raises(error) as info:
        await write(a.state)
    assert message in str(info.value)
    assert cluster.state_keys() == {}
    assert await cluster.store.revision() == revision
    assert sum(link.calls.values()) == calls  # refused before any store call


async def test_bad_input_is_reported_even_while_the_store_is_away(cluster: Cluster) -> None:
    a = await cluster.add("a")
    cluster.links["a"].cut()
    await cluster.run(0.5)
    with pytest.raises(InvalidDocument):
        await a.state.put("bad ns", "k", 1)
    with pytest.raises(StoreUnavailable):
        await a.state.put("cfg", "k", 1)


async def test_raw_keys_that_are_not_documents_are_ignored(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.store.put("state/out", b"x")  # no namespace/key split
    await cluster.store.put("state/cfg/raw", b"not json")
    await cluster.store.put("state/cfg/nan", b"NaN")
    await a.state.put("cfg", "good", [1])
    await cluster.run(0.1)
    assert list(a.state.items("cfg")) == ["good"]
    assert a.state.invalid == {"out", "cfg/raw", "cfg/nan"}
    await a.state.put("cfg", "raw", "fixed")
    await cluster.run(0.1)
    assert a.state.get("cfg", "raw").value == "fixed" and "cfg/raw" not in a.state.invalid  # type: ignore[union-attr]


async def test_reads_are_local(cluster: Cluster) -> None:
    """Reads never touch the store (their speed: benchmarks/unit_timings.py)."""
    a = await cluster.add("a")
    for chunk in range(10):
        await a.state.transaction([PutDoc("ns", f"k{chunk}-{i}", i) for i in range(100)])
    await cluster.run(0.1)
    assert a.state.size == 1000
    keys = [f"k{i % 10}-{i % 100}" for i in range(1000)]
    calls = sum(cluster.links["a"].calls.values())
    for key in keys:
        doc = a.state.get("ns", key)
        assert doc is not None and doc.value == int(key.split("-")[1])
    assert sum(cluster.links["a"].calls.values()) == calls  # no I/O


async def test_closed_state_keeps_its_copy_and_refuses_the_rest() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    state = ReplicatedState(store, clock)
    state.start()
    await state.wait_ready()
    rev = await state.put("cfg", "k", 1)
    await state.wait_for(rev)
    waiter = asyncio.ensure_future(state.wait_for(rev + 10))
    await clock.settle()
    await state.aclose()
    with pytest.raises(NotRunning):
        await waiter
    assert state.get("cfg", "k").value == 1 and state.stale  # type: ignore[union-attr]
    with pytest.raises(NotRunning):
        await state.put("cfg", "k", 2)
    assert [ch async for ch in state.subscribe()] == []
    await store.aclose()


# -- sqlite: several nodes, and another OS process ---------------------------------------------
async def _poll(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sqlite_nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    from shoal.store.sqlite import SqliteStore

    stores: list[Store] = []
    nodes: list[Node] = []
    for name in "abc":
        store = await SqliteStore.open(tmp_path / "shoal.db")
        stores.append(store)
        node = Node(App("t"), NodeSettings(name=name, ttl=5, drain_timeout=1.0), store=store)
        await node.start()
        nodes.append(node)
    yield nodes
    for node in nodes:
        await node.aclose()
    for store in stores:
        await store.aclose()


async def test_sqlite_nodes_share_state(sqlite_nodes: list[Node]) -> None:
    a, b, c = sqlite_nodes
    rev = await a.state.put("cfg", "x", {"v": 1})
    await a.state.wait_for(rev)
    await _poll(lambda: all(n.state.revision >= rev for n in (b, c)))
    assert all(n.state.get("cfg", "x") == a.state.get("cfg", "x") for n in (b, c))
    results = await asyncio.gather(
        b.state.put("cfg", "x", "b", expect_revision=rev),
        c.state.put("cfg", "x", "c", expect_revision=rev),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "int"]
    won = next(r for r in results if isinstance(r, int))
    await _poll(lambda: all(n.state.revision >= won for n in (a, b, c)))
    assert len({n.state.get("cfg", "x").value for n in (a, b, c)}) == 1  # type: ignore[union-attr]


WRITER = """
import asyncio, sys
from shoal.store.sqlite import SqliteStore
from shoal.runtime.state import ReplicatedState, PutDoc

async def main():
    store = await SqliteStore.open(sys.argv[1])
    state = ReplicatedState(store)
    state.start()
    await state.wait_ready()
    rev = await state.transaction([PutDoc("ext", f"k{i}", {"from": "process", "i": i})
                                   for i in range(3)])
    await state.wait_for(rev)
    print(rev, flush=True)
    await state.aclose()
    await store.aclose()

asyncio.run(main())
"""


async def test_sqlite_write_from_another_process_reaches_every_node(
    sqlite_nodes: list[Node], tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(tmp_path / "shoal.db"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    rev = int(out.decode().strip())
    for node in sqlite_nodes:
        await asyncio.wait_for(node.state.wait_for(rev), 5)
        assert {k: d.value["i"] for k, d in node.state.items("ext").items()} == {
            "k0": 0, "k1": 1, "k2": 2
        }


# -- real etcd, real PostgreSQL -------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("etcd", marks=pytest.mark.etcd), "postgres"])
async def test_write_on_a_is_visible_on_b(backend: str, request: pytest.FixtureRequest) -> None:
    stores: list[Any]
    if backend == "etcd":
        from shoal.store.etcd import EtcdStore

        endpoints = request.getfixturevalue("etcd_endpoints")
        prefix = f"/state-test-{uuid.uuid4().hex[:8]}"
        stores = [await EtcdStore.open(endpoints, prefix=prefix) for _ in range(2)]
    else:
        from shoal.store.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        schema = f"state_{uuid.uuid4().hex[:8]}"
        stores = [await PostgresStore.open(dsn, schema=schema) for _ in range(2)]
    nodes = [
        Node(App("t"), NodeSettings(name=n, ttl=5, drain_timeout=1.0), store=s)
        for n, s in zip("ab", stores, strict=True)
    ]
    try:
        for node in nodes:
            await node.start()
        a, b = nodes
        rev = await a.state.put("cfg", "x", {"v": [1, 2]})
        await a.state.wait_for(rev)
        await asyncio.wait_for(b.state.wait_for(rev), 5)
        assert b.state.get("cfg", "x") == a.state.get("cfg", "x")
        with pytest.raises(Conflict):
            await b.state.put("cfg", "x", 1, expect_revision=0)
        rev2 = await b.state.transaction([PutDoc("cfg", "y", 1), DeleteDoc("cfg", "x")])
        await asyncio.wait_for(a.state.wait_for(rev2), 5)
        assert list(a.state.items("cfg")) == ["y"] and not a.state.stale
    finally:
        for node in nodes:
            await node.aclose()
        for store in stores:
            await store.aclose()
