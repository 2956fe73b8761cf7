"""A graceful leave tears nothing down before the next owners hold its duties
(shoal.runtime.handover): memory store, fake clock for the nodes; the wait
itself is bounded in real time."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.primitives.membership import Member
from shoal.primitives.ownership import Owner
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.handover import TAKEOVER_WAIT, await_takeover, could_take, untaken


def _owner(node: str) -> Owner:
    return Owner(duty="d", node=node, token=1, since=0.0, lease=1)


def test_untaken_lists_duties_free_or_still_ours() -> None:
    owners = {"x": _owner("b"), "y": _owner("a")}
    assert untaken(["x", "y", "z"], owners.get, "a") == ["y", "z"]
    assert untaken(["x"], owners.get, "a") == []


def test_only_a_live_placing_other_node_could_take() -> None:
    assert not could_take({"a": Member("a")}, "a")
    assert not could_take({"a": Member("a"), "b": Member("b", draining=True),
                           "c": Member("c", cordoned=True)}, "a")
    assert could_take({"a": Member("a"), "b": Member("b")}, "a")


async def test_the_wait_ends_when_the_last_duty_is_taken() -> None:
    owners: dict[str, Owner] = {}
    moved = asyncio.Event()
    wait = asyncio.create_task(await_takeover(
        ["x", "y"], me="a", owner_of=owners.get,
        members=lambda: {"b": Member("b")}, moved=moved))
    await asyncio.sleep(0.01)
    owners["x"] = _owner("b")
    moved.set()
    await asyncio.sleep(0.01)
    assert not wait.done()  # y is still free
    owners["y"] = _owner("b")
    moved.set()
    assert await asyncio.wait_for(wait, 0.2) == []  # at once (and the settle)


async def test_the_wait_is_bounded_and_names_what_was_not_taken() -> None:
    loop = asyncio.get_running_loop()
    moved = asyncio.Event()
    start = loop.time()
    wait = asyncio.create_task(await_takeover(
        ["x"], me="a", owner_of={}.get, members=lambda: {"b": Member("b")},
        moved=moved, limit=0.1))
    await asyncio.sleep(0.02)
    moved.set()  # a change that takes nothing: the wait goes on
    assert await asyncio.wait_for(wait, 5) == ["x"]
    assert loop.time() - start >= 0.1


async def test_no_wait_when_no_other_node_could_take() -> None:
    left = await asyncio.wait_for(await_takeover(
        ["x"], me="a", owner_of={}.get, members=lambda: {"b": Member("b", cordoned=True)},
        moved=asyncio.Event()), TAKEOVER_WAIT / 5)
    assert left == ["x"]


def _app() -> App:
    app = App("t")
    for i in range(4):
        @app.duty(f"d{i}")
        async def duty(ctx: DutyContext) -> None:
            await ctx.stopping.wait()
    return app


async def test_a_drain_returns_once_the_next_owner_holds_its_duties(
    cluster_factory: Any,
) -> None:
    """Without the takeover wait a drain returned right after its revoke, with
    the duties still free in the store (the others not yet scheduled)."""
    c = cluster_factory(_app())
    a = await c.add("a")
    await c.run(3.0)
    b = await c.add("b")
    await c.run(3.0)
    mine = {d for d, n in c.owners().items() if n == "a"}
    assert mine
    await asyncio.wait_for(a.drain(), 5)  # no fake time passes meanwhile
    owners = c.owners()
    assert all(owners.get(d) == "b" for d in mine), owners
    assert set(b.runners) >= mine


async def test_the_last_node_leaves_without_waiting(cluster_factory: Any) -> None:
    c = cluster_factory(_app())
    a = await c.add("a")
    await c.run(3.0)
    assert len(c.owners()) == 5  # four duties and the leader
    await asyncio.wait_for(a.drain(), TAKEOVER_WAIT / 5)  # no other node: no wait
    assert c.owners() == {}


class _Reaper:
    """Stands in for the reaper process: records what the node tells it."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.calls: list[tuple[str, Any]] = []

    def watch_lease(self, lease: int) -> None:
        self.calls.append(("watch", lease))

    def forget_lease(self, lease: int) -> None:
        self.calls.append(("forget", lease))

    async def aclose(self) -> None:
        self.calls.append(("aclose", dict(self.cluster.owners())))

    def close(self) -> None:
        self.calls.append(("close", None))


async def test_the_reaper_forgets_the_revoked_lease_and_closes_after_the_takeover(
    cluster_factory: Any,
) -> None:
    c = cluster_factory(_app())
    a = await c.add("a")
    await c.run(3.0)
    await c.add("b")
    await c.run(3.0)
    mine = {d for d, n in c.owners().items() if n == "a"}
    assert mine
    lease = a.session.lease if a.session is not None else 0
    reaper = a.reaper = _Reaper(c)
    await asyncio.wait_for(a.drain(), 5)
    kinds = [k for k, _ in reaper.calls]
    assert kinds == ["forget", "aclose"], reaper.calls
    assert reaper.calls[0] == ("forget", lease) and lease
    at_close = reaper.calls[1][1]
    assert all(at_close.get(d) == "b" for d in mine), at_close
    assert a.reaper is None
