"""Timing goals moved out of the unit tests (a loaded CI machine must not fail a test for
being slow; a benchmark run on a quiet one reports it). Each goal prints its measure and
the run exits 1 if one is missed:

* ``reads``     -- local reads of replicated state: > 500,000 reads/s, no store I/O;
* ``checker``   -- the history checker over 200 owner changes x 100 writes: < 3 s;
* ``placement`` -- ``place()`` of 10,000 duties over 50 nodes, plain and balanced: < 5 s
  each (about 0.5 s on a 2-core machine).

The cross-process sqlite watch lag (goal: p99 < 100 ms) is measured by
``benchmarks/store.py --backends sqlite`` ("watch delivery").

    python benchmarks/unit_timings.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from shoal.core.placement import DutySpec, NodeInfo, place
from shoal.runtime._state_model import PutDoc
from shoal.runtime.state import ReplicatedState
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock
from shoal.testing.faulty import FaultyStore
from shoal.testing.history import check


async def reads_per_second() -> float:
    clock = FakeClock()
    store = MemoryStore(clock)
    link = FaultyStore(store, clock)
    state = ReplicatedState(link, clock)
    state.start()
    await state.wait_ready()
    try:
        for chunk in range(10):
            await state.transaction([PutDoc("ns", f"k{chunk}-{i}", i) for i in range(100)])
        await clock.advance(0.1)
        keys = [f"k{i % 10}-{i % 100}" for i in range(1000)]
        calls = sum(link.calls.values())
        started = time.perf_counter()
        for _ in range(200):
            for key in keys:
                state.get("ns", key)
        elapsed = time.perf_counter() - started
        assert sum(link.calls.values()) == calls, "a local read went to the store"
        return 200_000 / elapsed
    finally:
        await state.aclose()
        await store.aclose()


def checker_seconds() -> float:
    hist: list[dict[str, Any]] = []
    t, rev = 0.0, 0
    for epoch in range(200):
        node = "abc"[epoch % 3]
        rev += 1
        token = rev
        hist.append({"t": t, "node": node, "kind": "duty_start", "duty": "d", "token": token})
        for _ in range(100):
            t += 0.01
            rev += 1
            hist.append({"t": t, "node": node, "kind": "write_ack", "duty": "d",
                         "token": token, "key": "k", "value": rev, "revision": rev})
            hist.append({"t": t, "node": node, "kind": "applied_revision", "revision": rev})
        hist.append({"t": t, "node": "h", "kind": "fault", "fault": "kill9", "target": node})
        t += 0.1
    started = time.perf_counter()
    report = check(hist, final_state={"k": rev}, bound_s=1.0)
    elapsed = time.perf_counter() - started
    assert report.ok, report.summary()
    return elapsed


def placement_seconds(balanced: bool) -> float:
    nodes = [
        NodeInfo(f"node-{i}", frozenset({"worker"}), weight=1.0 + i % 3,
                 disabled=frozenset({"import:*"}) if i % 7 == 0 else frozenset())
        for i in range(50)
    ]
    duties = [DutySpec(f"import:{i}" if i % 5 == 0 else f"duty-{i}") for i in range(10_000)]
    started = time.perf_counter()
    result = place(duties, nodes, {}, balanced=balanced)
    elapsed = time.perf_counter() - started
    assert all(o is not None for o in result.wanted.values())
    return elapsed


def main() -> int:
    goals: list[tuple[str, Callable[[], float], Callable[[float], bool], str]] = [
        ("reads", lambda: asyncio.run(reads_per_second()), lambda v: v > 500_000, "reads/s"),
        ("checker", checker_seconds, lambda v: v < 3.0, "s"),
        ("placement", lambda: placement_seconds(False), lambda v: v < 5.0, "s"),
        ("placement balanced", lambda: placement_seconds(True), lambda v: v < 5.0, "s"),
    ]
    missed = 0
    for name, measure, ok, unit in goals:
        value = measure()
        good = ok(value)
        missed += not good
        print(f"{name:<20} {value:>14,.3f} {unit:<8} {'ok' if good else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
