"""runtime/runner.py directly (fake clock): restart back-off doubles up to its cap, a
duty that returns is completed, stop() waits for a clean exit up to its timeout and then
cancels (an async duty) or abandons (a sync duty stuck in a thread: the drain_timeout
path), cancel_now() does not wait at all; and the reconcile loop's storm batching."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.runner import DutyRunner
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock, FixedRandom
from shoal.testing.cluster import SimCluster


def make(fn: Callable[..., Any] | None, clock: FakeClock, **kw: Any) -> DutyRunner:
    ctx = DutyContext(name="d", token=3, node="a", store=MemoryStore(clock), clock=clock,
                      params={}, item=None, loop=asyncio.get_running_loop())
    return DutyRunner(fn, ctx, clock, **kw)


async def test_crash_backoff_doubles_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.aio._retry._random", FixedRandom(0.5))  # half the ceiling
    clock = FakeClock()
    calls: list[float] = []
    crashes: list[str] = []

    async def boom(ctx: DutyContext) -> None:
        calls.append(clock.monotonic())
        raise RuntimeError(f"boom {len(calls)}")

    runner = make(boom, clock, backoff=1.0, backoff_max=4.0,
                  on_crash=lambda name, exc: crashes.append(f"{name}: {exc}"))
    runner.start()
    await clock.run_for(30.0, step=0.5)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 2.0, 2.0]  # half of 1, 2, 4 then the 4 s cap
    assert all(g == 2.0 for g in gaps[2:])
    assert runner.crashes == len(calls) == len(crashes) and crashes[0] == "d: boom 1"
    assert runner.status == "crashed" and runner.last_error == f"RuntimeError: boom {len(calls)}"
    await runner.stop("test")
    assert runner.status == "stopped"
    n = len(calls)
    await clock.run_for(10.0, step=0.5)
    assert len(calls) == n  # no restart after stop


async def test_a_duty_that_returns_is_completed_and_not_restarted() -> None:
    clock = FakeClock()
    calls: list[int] = []

    async def once(ctx: DutyContext) -> None:
        calls.append(1)

    runner = make(once, clock)
    runner.start()
    await clock.run_for(5.0)
    assert calls == [1] and runner.status == "completed" and runner.crashes == 0


async def test_an_ownership_only_duty_runs_until_stopped() -> None:
    clock = FakeClock()
    runner = make(None, clock)
    runner.start()
    await clock.settle()
    assert runner.status == "running"
    await runner.stop("drain", timeout=1.0)
    assert runner.status == "stopped" and runner.ctx.stopping.is_set()


async def test_stop_waits_for_a_clean_exit_then_cancels_a_stubborn_async_duty() -> None:
    clock = FakeClock()
    cleaned: list[str] = []

    async def polite(ctx: DutyContext) -> None:
        await ctx.stopping.wait()
        await asyncio.sleep(0)
        cleaned.append("polite")

    async def stubborn(ctx: DutyContext) -> None:
        try:
            await asyncio.Event().wait()  # never looks at ctx.stopping
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    for fn, expected in ((polite, "polite"), (stubborn, "cancelled")):
        runner = make(fn, clock)
        runner.start()
        await clock.settle()
        await runner.stop("drain", timeout=0.05)  # the drain_timeout
        assert cleaned[-1] == expected and runner.status == "stopped"


async def test_drain_timeout_abandons_a_sync_duty_stuck_in_its_thread() -> None:
    clock = FakeClock()
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    done: list[str] = []

    def stuck(ctx: DutyContext) -> None:
        entered.set()
        release.wait(30)  # ignores ctx.stopping (a thread cannot be cancelled)
        done.append("thread ended")
        finished.set()

    runner = make(stuck, clock)
    runner.start()
    await asyncio.to_thread(entered.wait, 30)
    await runner.stop("drain", timeout=0.05)
    assert runner.status == "stopped" and runner.ctx.stopping.is_set()
    assert done == []  # abandoned: stop() returned while the thread still runs
    release.set()
    assert await asyncio.to_thread(finished.wait, 30)
    assert done == ["thread ended"]


async def test_cancel_now_does_not_wait() -> None:
    clock = FakeClock()
    started = asyncio.Event()

    async def forever(ctx: DutyContext) -> None:
        started.set()
        await asyncio.Event().wait()

    runner = make(forever, clock)
    runner.start()
    await started.wait()
    runner.cancel_now("lease lost")
    assert runner.status == "stopped" and runner.ctx.stopping.is_set()
    assert runner._task is not None
    await asyncio.wait([runner._task])
    assert runner._task.cancelled()


async def test_a_storm_of_changes_is_planned_in_few_passes() -> None:
    """Duties freed one revision at a time, each delivered by its own watch event, are
    re-owned in a handful of reconcile passes (a pass less than 50 ms after the two
    before it waits 2 ms to batch), not one pass per event (without the batching: 30
    passes)."""
    app = App("t")
    names = [f"m{i}" for i in range(40)]
    for name in names:
        app.duty(name)(_forever)
    c = SimCluster(app)
    try:
        a = await c.add("a")
        await c.run(1.0)
        b = await c.add("b")
        await c.run(8.0)
        mine = [d for d, n in c.owners().items() if n == "a" and d in names]
        assert len(mine) > 10
        await a.abandon()  # a crashes; its keys are then freed one by one
        del c.nodes["a"]
        await c.store.delete("nodes/a")  # its record goes first: b is the preferred node
        await c.run(0.5)  # a quiet spell: the first event is acted on at once
        passes = 0
        reconciler = b._duties  # the node's reconcile loop (runtime/reconcile.py)
        real = reconciler.reconcile

        async def counted(*args: Any, **kwargs: Any) -> None:
            nonlocal passes
            passes += 1
            await real(*args, **kwargs)

        reconciler.reconcile = counted  # type: ignore[method-assign]
        for duty in mine:
            await c.store.delete(f"duties/{duty}")
            for _ in range(10):
                await asyncio.sleep(0)  # let the watch deliver this event alone
        assert passes <= 2  # (here a's death is half seen: passes wait for the clock)
        await c.run(0.2)
        assert all(c.owners()[d] == "b" for d in mine)
        assert passes <= 4, f"{passes} reconcile passes for {len(mine)} separate events"
    finally:
        await c.aclose()


async def test_a_lone_change_and_the_second_of_a_pair_are_planned_at_once() -> None:
    """The storm batching delays only the third of three passes within 50 ms: the
    first change after a quiet spell and the second of a pair (a graceful drain:
    its draining flag, then the revoke that frees its duties) are not delayed."""
    app = App("t")
    app.duty("one")(_forever)
    c = SimCluster(app)
    try:
        b = await c.add("b")
        await c.run(2.0)  # settled, then quiet
        passes = 0
        reconciler = b._duties
        real = reconciler.reconcile

        async def counted(*args: Any, **kwargs: Any) -> None:
            nonlocal passes
            passes += 1
            await real(*args, **kwargs)

        reconciler.reconcile = counted  # type: ignore[method-assign]
        seen = []
        for _ in range(3):  # three changes at the same (fake) instant
            reconciler.wake.set()
            for _ in range(50):
                await asyncio.sleep(0)
            seen.append(passes)
        assert seen == [1, 2, 2]  # the third waits for the 2 ms batch ...
        await c.run(0.01)
        assert passes == 3  # ... and then runs
    finally:
        await c.aclose()


async def _forever(ctx: DutyContext) -> None:
    await ctx.stopping.wait()
