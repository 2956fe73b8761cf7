"""The small parts Node is built from: Fanout (one overflow policy), OwnerTable (reads
never change it), the lease Session (typed events only)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.node_state import KeepaliveFailed, KeepaliveOk, LeaseGone, SessionEvent
from shoal.primitives.ownership import DUTIES, Owner
from shoal.primitives.session import LeaseSession
from shoal.runtime.fanout import Fanout, Subscription
from shoal.runtime.owners import OwnerTable
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Event, EventType, KeyValue
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore


# -- Fanout ---------------------------------------------------------------------------------
async def test_fanout_drops_the_oldest_and_counts_it() -> None:
    fan: Fanout[int] = Fanout(maxsize=3)
    slow, other = fan.subscribe(), fan.subscribe(maxsize=10)
    for i in range(5):
        fan.publish(i)
    assert [await slow.get() for _ in range(3)] == [2, 3, 4]
    assert slow.dropped == 2 and other.dropped == 0 and fan.dropped == 2
    assert [other.get_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert other.get_nowait() is None


async def test_fanout_collapse_replaces_the_backlog() -> None:
    def collapse(newest: str, sub: Subscription[str]) -> str:
        return f"reload@{newest}"

    fan: Fanout[str] = Fanout(maxsize=2, collapse=collapse)
    sub = fan.subscribe()
    for item in "abc":
        fan.publish(item)
    assert [sub.get_nowait(), sub.get_nowait()] == ["reload@c", None]
    assert sub.dropped == 2


async def test_fanout_topics_and_close() -> None:
    fan: Fanout[str] = Fanout()
    ns1, every = fan.subscribe(topic="ns1"), fan.subscribe()
    fan.publish("x", topic="ns2")
    fan.publish("y", topic="ns1")
    fan.close()
    assert [item async for item in ns1] == ["y"]  # what was queued, then the end
    assert [item async for item in every] == ["x", "y"]
    assert len(fan) == 0
    late = fan.subscribe()
    assert late.closed and await late.get() is None


async def test_closing_the_loop_unsubscribes() -> None:
    fan: Fanout[int] = Fanout()
    sub, other = fan.subscribe(), fan.subscribe()
    fan.publish(1)
    async with contextlib.aclosing(aiter(sub)) as items:
        async for _ in items:
            break
    assert len(fan) == 1 and sub.closed
    other.close()
    fan.publish(2)
    assert len(fan) == 0 and other.get_nowait() == 1 and other.get_nowait() is None


# -- OwnerTable -----------------------------------------------------------------------------
def _put(duty: str, node: str, rev: int) -> Event:
    value = json.dumps({"node": node, "since": 0.0}).encode()
    return Event(EventType.PUT, KeyValue(DUTIES + duty, value, rev, rev, 1, 7))


def test_owner_table_reads_never_change_it() -> None:
    table = OwnerTable()
    table.apply([_put("a", "n1", 5)])
    table.wrote("b", 9, Owner("b", "me", 9, 0.0, 7))
    table.wrote("a", 10, None)  # our release, not watched yet
    for _ in range(2):
        assert set(table.view()) == {"b"} and table.get("a") is None
    assert table.pending.keys() == {"a", "b"}  # reading twice kept both
    table.confirm(9)
    assert table.pending.keys() == {"a"}
    table.apply([_put("b", "me", 9)])
    assert table.view()["b"].node == "me"
    table.confirm(10)
    assert not table.pending and table.get("a") is not None  # the watch has not said delete
    table.forget_pending()


def test_owner_table_nodes_is_one_dict_until_something_changes() -> None:
    table = OwnerTable()
    table.apply([_put("a", "n1", 5)])
    first = table.nodes()
    assert first == {"a": "n1"} and table.nodes() is first  # unchanged: the same dict
    table.confirm(3)  # covers no pending write: nothing changed
    assert table.nodes() is first
    steps = [
        lambda: table.wrote("b", 9, Owner("b", "me", 9, 0.0, 7)),
        lambda: table.wrote("a", 10, None),
        lambda: table.confirm(9),
        lambda: table.apply([_put("b", "me", 9)]),
        lambda: table.forget_pending(),
        lambda: table.reload({}),
    ]
    seen = [first]
    for step in steps:
        step()
        now = table.nodes()
        assert now == {d: o.node for d, o in table.view().items()}
        assert all(now is not old for old in seen)  # every change: a new dict
        seen.append(now)
    # the dicts handed out earlier were never changed since
    assert seen[1] == {"a": "n1", "b": "me"} and seen[2] == {"b": "me"}
    assert seen[-1] == {}


def _delete(duty: str, rev: int) -> Event:
    return Event(EventType.DELETE, KeyValue(DUTIES + duty, b"", rev, rev, 0, 0))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "wrote", "release", "confirm",
                                          "forget", "reload"]),
                          st.sampled_from(["a", "b", "c", "d"]),
                          st.sampled_from(["n1", "n2", "me"])), max_size=30),
       st.integers(min_value=2, max_value=12))
def test_owner_table_changed_since_covers_every_owner_that_differs(
    ops: list[tuple[str, str, str]], limit: int,
) -> None:
    """changed_since(v) names every duty whose owner differs from nodes() at v
    (a superset), or says None: after a reload, or once the log was cut (never
    for the version just before a change other than a reload)."""
    table = OwnerTable()
    rev = 0
    snaps: list[tuple[int, dict[str, str]]] = [(table.version, dict(table.nodes()))]
    reloaded_at = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("shoal.runtime.owners.LOG_LIMIT", limit)
        for op, duty, node in ops:
            rev += 1
            if op == "put":
                table.apply([_put(duty, node, rev), _put("e", node, rev)])
            elif op == "delete":
                table.apply([_delete(duty, rev)])
            elif op == "wrote":
                table.wrote(duty, rev, Owner(duty, node, rev, 0.0, 7))
            elif op == "release":
                table.wrote(duty, rev, None)
            elif op == "confirm":
                table.confirm(rev - 3)
            elif op == "forget":
                table.forget_pending()
            else:
                table.reload({d: KeyValue(DUTIES + d, _put(d, node, rev).kv.value, rev, rev, 1, 7)
                              for d in ("a", duty)})
                reloaded_at = table.version
            now = table.nodes()
            for version, before in snaps:
                told = table.changed_since(version)
                if told is None:  # a reload since, or cut: never the step just before
                    assert version < reloaded_at or version < snaps[-1][0]
                    continue
                assert {d for d, _ in before.items() ^ now.items()} <= told
            snaps.append((table.version, dict(now)))
    assert table.changed_since(table.version) == set()
    assert table.changed_since(table.version + 1) is None  # a version not reached


def test_owner_table_changed_since_forgets_the_oldest_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shoal.runtime.owners.LOG_LIMIT", 4)
    table = OwnerTable()
    start = table.version
    for i in range(3):
        table.apply([_put(f"d{i}", "n1", i + 1)])
    assert table.changed_since(start) == {"d0", "d1", "d2"}
    table.apply([_put("x", "n1", 4), _put("y", "n1", 4)])  # 5 logged: the oldest go
    assert table.changed_since(start) is None
    assert table.changed_since(table.version - 1) == {"x", "y"}
    table.reload({})
    assert table.changed_since(table.version - 1) is None
    assert table.changed_since(table.version) == set()


# -- Session --------------------------------------------------------------------------------
async def test_session_reports_typed_events_with_send_times() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    link = FaultyStore(store)
    events: list[tuple[float, SessionEvent]] = []
    session = await LeaseSession.open(
        link, clock, ttl=6, interval=2.0,
        on_event=lambda ev: events.append((clock.monotonic(), ev)),
    )
    t0 = clock.monotonic()
    assert session.granted_at == t0 and session.alive
    await clock.run_for(2.5)
    oks = [ev for _, ev in events if isinstance(ev, KeepaliveOk)]
    assert oks and all(ev.at >= t0 for ev in oks)
    link.cut()
    await clock.run_for(2.0)  # the next keep-alive (every 2 s) fails
    assert any(isinstance(ev, KeepaliveFailed) for _, ev in events)
    link.heal()
    await store.revoke(session.lease)
    await clock.run_for(3.0)
    assert isinstance(events[-1][1], LeaseGone) and not session.alive
    await session.aclose()  # idempotent after the lease is gone
    await asyncio.sleep(0)
