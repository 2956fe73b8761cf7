"""The one retry helper: exponential back-off with full jitter, a cap, on the fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from shoal.aio._retry import Backoff
from shoal.aio._tasks import event_or_tick
from shoal.errors import InvalidArgument, ShoalError
from shoal.testing.clock import FakeClock


def test_ceilings_grow_exponentially_up_to_the_cap() -> None:
    b = Backoff(0.1, 1.0, rand=lambda: 1.0)
    assert [round(b.next_delay(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)
    # far past the cap: no float overflow, still the cap
    assert Backoff(0.001, 5.0, factor=10.0).ceiling(10_000) == 5.0
    assert Backoff(0.5, 0.5, factor=1.0).ceiling(10_000) == 0.5


def test_full_jitter_draws_uniformly_between_zero_and_the_ceiling() -> None:
    rng = random.Random(7)
    b = Backoff(0.05, 2.0, rand=rng.random)
    seen: dict[int, list[float]] = {}
    for _ in range(400):
        b.reset()
        for attempt in range(8):
            seen.setdefault(attempt, []).append(b.next_delay())
    for attempt, delays in seen.items():
        ceiling = min(2.0, 0.05 * 2**attempt)
        assert all(0.0 <= d <= ceiling for d in delays)
        # spread over the whole range, not clustered at the ceiling (that is no jitter)
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling
        assert 0.4 * ceiling < sum(delays) / len(delays) < 0.6 * ceiling
    # two nodes that failed together do not retry in lockstep
    a, c = Backoff(0.05, 2.0), Backoff(0.05, 2.0)
    assert [a.next_delay() for _ in range(5)] != [c.next_delay() for _ in range(5)]


def test_a_random_source_out_of_range_is_clamped() -> None:
    assert Backoff(1.0, 4.0, rand=lambda: 7.0).next_delay() == 1.0
    assert Backoff(1.0, 4.0, rand=lambda: -1.0).next_delay() == 0.0


def test_bad_parameters_are_a_usage_error() -> None:
    for args in [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)]:
        with pytest.raises(InvalidArgument, match="base > 0") as info:
            Backoff(*args)
        assert isinstance(info.value, ValueError) and isinstance(info.value, ShoalError)
    with pytest.raises(InvalidArgument, match="factor"):
        Backoff(1.0, 2.0, factor=0.5)


async def test_sleep_waits_the_drawn_delay_on_the_fake_clock() -> None:
    clock = FakeClock()
    b = Backoff(1.0, 8.0, clock=clock, rand=lambda: 0.5)
    start = clock.monotonic()
    task = asyncio.create_task(b.sleep())
    await clock.settle()
    assert clock.next_deadline == start + 0.5
    await clock.advance(0.49)
    assert not task.done()
    await clock.advance(0.02)
    assert task.done() and task.result() is True
    # the next one is drawn from a doubled ceiling; ``limit`` bounds it
    task = asyncio.create_task(b.sleep(limit=0.25))
    await clock.settle()
    assert clock.next_deadline == pytest.approx(clock.monotonic() + 0.25)
    await clock.advance(0.25)
    assert task.done()


async def test_sleep_wakes_early_when_told_to_stop() -> None:
    clock = FakeClock()
    stop = asyncio.Event()
    b = Backoff(10.0, 10.0, clock=clock, rand=lambda: 1.0)
    task = asyncio.create_task(b.sleep(stop))
    await clock.advance(1.0)
    assert not task.done()
    stop.set()
    await clock.settle()
    assert task.done() and task.result() is False
    assert clock.next_deadline is None  # the clock sleeper did not outlive the call
    assert await b.sleep(stop) is False  # already set: returns at once


async def test_event_or_tick() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    ticked = asyncio.create_task(event_or_tick(event, clock, 2.0))
    await clock.advance(1.9)
    assert not ticked.done()
    await clock.advance(0.2)
    assert ticked.done() and ticked.result() is False
    assert not event.is_set()
    woken = asyncio.create_task(event_or_tick(event, clock, 2.0))
    await clock.settle()
    event.set()
    await clock.settle()
    assert woken.done() and woken.result() is True
    assert clock.next_deadline is None
    # cancelling the caller cancels both waits
    event.clear()
    waiting = asyncio.create_task(event_or_tick(event, clock, 5.0))
    await clock.settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert clock.next_deadline is None


def test_a_floor_bounds_the_wait_from_below() -> None:
    low = Backoff(0.1, 0.4, floor=0.1, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(4)] == [0.1, 0.1, 0.1, 0.1]
    high = Backoff(0.1, 0.4, floor=0.1, rand=lambda: 1.0)
    assert [round(high.next_delay(), 6) for _ in range(4)] == [0.1, 0.2, 0.4, 0.4]
    with pytest.raises(InvalidArgument, match="floor"):
        Backoff(0.1, 0.4, floor=0.2)
