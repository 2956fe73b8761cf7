"""Schedules: runs per slot and lateness, Shoal vs 3 replicas of APScheduler 3.11.

    python benchmarks/schedule.py                   # --slots 20, ~25 s
    python benchmarks/schedule.py --slots 5 --every 1
    python benchmarks/schedule.py --scenarios failover --reps 5 --store etcd

Both contenders run the same interval job (``--every`` seconds, default 1) for
``--slots`` slots, in this process, on the real clock:

* **Shoal**: 3 :class:`~shoal.Node` objects, each with its own connection to one
  SQLite store file (a temporary directory), ``local`` timings, no reaper; the job
  is ``@app.schedule("bench", every=...)``. Each run records the node, its slot and
  ``time.time()`` when the function starts.
* **APScheduler 3.11**: 3 ``AsyncIOScheduler`` instances — what 3 replicas of a
  service each start — with the same ``IntervalTrigger`` (same start time, so the
  same slots), each recording its runs the same way.

Then **data-driven duties**: the same 3 Shoal nodes declare ``doc:{key}`` with
``for_each_doc="bench-docs"``; ``--docs`` documents (default 1,000) are written in
ONE store transaction, and each duty records ``time.time()`` when it starts: the
time from the commit to the last duty running (p50 / p99 / max over the duties).
All 3 nodes share this process (and its one CPU core): a pessimistic figure.

Reported per contender: runs per slot (how many replicas ran each slot: APScheduler
runs it on every replica, Shoal exactly once), slots missed, and lateness (start -
slot) p50 / p99 / max in ms. Lateness includes Shoal's claim (one store read and
one fenced transaction before the function starts).

Then **failover** (``--scenarios failover``; ``--store sqlite`` by default, or ``etcd``:
one real etcd from ``shoal.testing``'s launcher on free 127.0.0.1 ports): 3 real
``shoal run benchmarks/schedule_app.py:app`` node processes (``local`` timings, TTL
2 s, reaper on, ``rebalance_delay`` 600 s), schedule ``bench`` every ``--every-proc``
seconds (default 4). For each of ``--reps`` repetitions (default 5): wait for a stable
cluster, find the schedule's owner (its status line), ``kill -9`` its node process
(its reaper alive) 1 s before the next slot, then read the schedule's record from the
store (``shoal.runtime.schedule.read_record``) until that slot has a run: lateness =
the run's ``start`` (on the new owner) - the slot. A fresh node replaces the killed
one. Exactly once: every slot from the first measured one to the last is counted
over all node logs (each run prints a line) and must have run once. Every node
process (and its reaper) is ended by PID; the run is bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def report(name: str, runs: list[tuple[str, float, float]], slots: list[float]) -> None:
    per_slot = Counter(slot for _, slot, _ in runs if slot in slots)
    late = [(start - slot) * 1000 for _, slot, start in runs if slot in slots]
    counts = Counter(per_slot.get(s, 0) for s in slots)
    print(f"\n{name}: {len(slots)} slots, {len(runs)} runs")
    print("  runs per slot: " + ", ".join(f"{k}x: {v} slots" for k, v in sorted(counts.items())))
    print(f"  lateness ms: p50 {statistics.median(late) if late else math.nan:.1f}  "
          f"p99 {percentile(late, 0.99):.1f}  max {max(late, default=math.nan):.1f}")
    print(f"  nodes that ran: {dict(Counter(n for n, _, _ in runs))}")


async def bench_shoal(every: float, n_slots: int) -> None:
    from shoal import App, Node, NodeSettings
    from shoal.runtime.schedule import RunContext
    from shoal.store.sqlite import SqliteStore

    runs: list[tuple[str, float, float]] = []
    app = App("bench")

    @app.schedule("bench", every=timedelta(seconds=every))
    async def job(ctx: RunContext) -> None:
        assert ctx.slot is not None
        runs.append((ctx.node, ctx.slot.timestamp(), time.time()))

    with tempfile.TemporaryDirectory() as tmp:
        nodes = []
        for name in ("n1", "n2", "n3"):
            store = await SqliteStore.open(Path(tmp) / "shoal.db")
            settings = NodeSettings(name=name, ttl=2, safety_margin=0.3, rebalance_delay=600,
                                    drain_timeout=1.0, grace=0.5)
            node = Node(app, settings, store=store, own_store=True)
            await node.start()
            nodes.append(node)
        try:
            await asyncio.sleep(every * 2)  # owned, record written
            first = (time.time() // every + 1) * every
            slots = [first + i * every for i in range(n_slots)]
            await asyncio.sleep(slots[-1] + 0.5 - time.time())
        finally:
            for node in nodes:
                await node.aclose()
    report("Shoal (3 nodes, sqlite)", runs, slots)


async def bench_apscheduler(every: float, n_slots: int) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    runs: list[tuple[str, float, float]] = []
    start = datetime.fromtimestamp((time.time() // every + 2) * every, UTC)
    schedulers: list[Any] = []

    def make_job(replica: str) -> Any:
        async def job(scheduled: float) -> None:
            runs.append((replica, scheduled, time.time()))
        return job

    for replica in ("r1", "r2", "r3"):
        sched = AsyncIOScheduler(timezone="UTC")
        trigger = IntervalTrigger(seconds=every, start_date=start, timezone="UTC")
        job_fn = make_job(replica)

        async def runner(job_fn: Any = job_fn) -> None:
            # the slot this run is for: the job's previous fire time is gone by now,
            # so round the start time down to the grid (lateness << every)
            now = time.time()
            await job_fn(now - (now - start.timestamp()) % every)

        sched.add_job(runner, trigger, misfire_grace_time=max(1, int(every)), coalesce=True,
                      max_instances=1)
        sched.start()
        schedulers.append(sched)
    try:
        first = start.timestamp() + every
        slots = [first + i * every for i in range(n_slots)]
        await asyncio.sleep(slots[-1] + 0.5 - time.time())
    finally:
        for sched in schedulers:
            sched.shutdown(wait=False)
    report("APScheduler 3.11 (3 replicas)", runs, slots)


async def bench_data_duties(docs: int) -> None:
    from shoal import App, DutyContext, Node, NodeSettings
    from shoal.store.protocol import Put
    from shoal.store.sqlite import SqliteStore

    started: dict[str, float] = {}
    all_running = asyncio.Event()
    app = App("bench-docs")

    @app.duty("doc:{key}", for_each_doc="bench-docs")
    async def doc(ctx: DutyContext) -> None:
        started.setdefault(ctx.name, time.time())
        if len(started) >= docs:
            all_running.set()
        await ctx.stopping.wait()

    with tempfile.TemporaryDirectory() as tmp:
        nodes = []
        for name in ("n1", "n2", "n3"):
            store = await SqliteStore.open(Path(tmp) / "shoal.db")
            settings = NodeSettings(name=name, ttl=2, safety_margin=0.3, rebalance_delay=600,
                                    drain_timeout=1.0, grace=0.5)
            node = Node(app, settings, store=store, own_store=True)
            await node.start()
            nodes.append(node)
        try:
            await asyncio.sleep(1.0)
            ops = [Put(f"state/bench-docs/k{i}", b'{"n":1}') for i in range(docs)]
            t0 = time.time()
            await nodes[0].store.txn([], ops)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_running.wait(), 60)
            spread = Counter(n.name for n in nodes for d in n.runners if d.startswith("doc:"))
        finally:
            for node in nodes:
                await node.aclose()
    took = [(t - t0) * 1000 for t in started.values()]
    print(f"\nData duties: {docs} documents in one transaction, 3 nodes (sqlite)")
    print(f"  running: {len(started)} of {docs}; per node {dict(spread)}")
    print(f"  commit -> duty running ms: p50 {statistics.median(took):.0f}  "
          f"p99 {percentile(took, 0.99):.0f}  max {max(took):.0f}")


# -- failover: kill -9 of the owner 1 s before a slot (real node processes) -------------
SCHED_APP = f"{Path(__file__).resolve().parent / 'schedule_app.py'}:app"
RAN_LINE = re.compile(r"^BENCH ran slot=([\d.]+) node=(\S+) at=([\d.]+)$", re.M)


async def _run_of(store_cfg: dict[str, Any], slot: float, within: float) -> Any:
    """The schedule's finished or running run for ``slot``, from its record in the store."""
    from shoal.config import StoreSection
    from shoal.runtime.schedule import read_record
    from shoal.store.factory import open_store

    store = await open_store(StoreSection(**store_cfg))
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rec, _ = await read_record(store, "bench")
            if rec is not None:
                runs = [*rec.runs, *([rec.current] if rec.current else [])]
                for run in runs:
                    if run.slot is not None and abs(run.slot - slot) < 1e-3:
                        return run
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()
    raise TimeoutError(f"slot {slot:.3f} has no run in the record within {within:g} s")


def bench_failover(store: str, reps: int, every: float, grace: float | None,
                   max_seconds: int) -> None:
    from failover import ShoalRig

    from shoal.testing.etcd_server import EtcdCluster

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --max-seconds {max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max_seconds)
    os.environ["SHOAL_BENCH_PARENT"] = str(os.getpid())  # nodes exit if we die
    os.environ["SHOAL_BENCH_MAX_SECONDS"] = str(max_seconds + 60)
    os.environ["SHOAL_BENCH_EVERY"] = str(every)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-sched-failover-"))
    etcd: EtcdCluster | None = None
    rig: ShoalRig | None = None
    late: list[float] = []
    takers: list[str] = []
    try:
        if store == "etcd":
            etcd = EtcdCluster(members=1)
            etcd.start()
            store_cfg: dict[str, Any] = {"backend": "etcd", "etcd": {
                "endpoints": list(etcd.endpoints), "prefix": f"/sched-{os.getpid()}"}}
        else:
            store_cfg = {"backend": "sqlite", "sqlite": {"path": str(workdir / "shoal.db")}}
        rig = ShoalRig(workdir, store_cfg)
        rig.cluster.app = SCHED_APP
        if grace is not None:
            rig.cluster.base_config["timings"]["grace"] = grace
        rig.start()
        first: float | None = None
        last = 0.0
        for rep in range(reps):
            owner = rig.wait_stable()
            slot = (time.time() // every + 1) * every
            if slot - time.time() < 1.5:
                slot += every
            first = slot if first is None else first
            last = slot
            time.sleep(max(0.0, slot - 1.0 - time.time()))
            killed_at = time.time()
            owner.kill9()
            run = asyncio.run(_run_of(store_cfg, slot, within=every + 15))
            late.append((run.start - slot) * 1000)
            takers.append(run.node)
            print(f"  rep {rep + 1}: killed {owner.name} {slot - killed_at:.3f} s before "
                  f"the slot; {run.node} ran it, lateness {late[-1]:.1f} ms")
            rig.live.remove(owner)
            owner.stop()
            rig.live.append(rig.new_node())
        rig.wait_stable()
        assert first is not None
        ran = Counter(round(float(m.group(1)), 3) for n in rig.cluster.nodes
                      for m in RAN_LINE.finditer(n.output()))
        grid = [round(s, 3) for s in _grid(first, max(last, time.time() - every), every)]
        per_slot = Counter(ran.get(s, 0) for s in grid)
    finally:
        signal.alarm(0)
        if rig is not None:
            rig.close()
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nFailover: kill -9 of the owner 1 s before a slot, 3 node processes "
          f"({store}), every {every:g} s, grace {grace if grace is not None else 'preset'}; "
          f"{reps} reps")
    print(f"  lateness of that slot ms: p50 {statistics.median(late):.1f}  "
          f"p99 {percentile(late, 0.99):.1f}  max {max(late):.1f}  (all: "
          + ", ".join(f"{x:.0f}" for x in late) + ")")
    print(f"  taken by: {dict(Counter(takers))}")
    print(f"  runs per slot over {len(grid)} slots from the first killed one: "
          + ", ".join(f"{k}x: {v} slots" for k, v in sorted(per_slot.items())))
    if set(per_slot) != {1}:
        raise SystemExit("FAILED: a slot did not run exactly once (see the counts above)")


def _grid(first: float, until: float, every: float) -> list[float]:
    out = []
    slot = first
    while slot <= until:
        out.append(slot)
        slot += every
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="steady,docs,failover",
                        help="comma-separated: steady (Shoal vs APScheduler), docs, failover")
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5, help="failover repetitions")
    parser.add_argument("--every-proc", type=float, default=4.0,
                        help="failover: the schedule's interval, seconds")
    parser.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite")
    parser.add_argument("--grace", type=float, default=None,
                        help="failover: timings.grace (default: the local preset's)")
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args()
    scenarios = set(args.scenarios.split(","))
    if "steady" in scenarios:
        asyncio.run(bench_shoal(args.every, args.slots))
        asyncio.run(bench_apscheduler(args.every, args.slots))
    if "docs" in scenarios and args.docs:
        asyncio.run(bench_data_duties(args.docs))
    if "failover" in scenarios:
        bench_failover(args.store, args.reps, args.every_proc, args.grace, args.max_seconds)


if __name__ == "__main__":
    main()
