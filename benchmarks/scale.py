"""Scale: 1000 partitioned duties over 5 real node processes on a real etcd.

    python benchmarks/scale.py                      # 10 + 10 kill -9 runs + ops, ~4 min
    python benchmarks/scale.py --reps 3 --no-reaper-reps 0 --ops-seconds 10
    python benchmarks/scale.py --store sqlite --reps 10 --no-reaper-reps 0 --ops-seconds 0

``--store sqlite``: the same on one SQLite file (the embedded default) instead of
etcd; no etcd is started and the etcd counters (1.) are not measured.

This file is also the benchmarked app (``shoal run benchmarks/scale.py:app``): one
duty ``p`` with ``partitions=$SHOAL_SCALE_PARTITIONS`` (default 1000) that idles.

One etcd (``EtcdCluster``, 1 member, 127.0.0.1, free ports); 5 ``shoal run`` node
processes n1..n5 (``local`` preset: TTL 2 s, keep-alive every 0.667 s,
rebalance_delay 2 s; reaper on). This process follows ``nodes/`` and ``duties/``
with a :class:`~shoal.primitives.mirror.Mirror` over its own ``EtcdStore`` and
computes the wanted placement itself (``shoal.core.placement.place``).

1. steady-state store traffic: with every partition owned and placement settled,
   etcd's own counters (its client port serves ``/metrics``) are read twice,
   ``--ops-seconds`` apart (default 30): gRPC messages received per method
   (``grpc_server_msg_received_total``, which also counts each keep-alive on the
   LeaseKeepAlive stream) and ``etcd_mvcc_{put,range,txn,delete}_total``. Done for
   1000 partitions and, on a fresh 5-node cluster under another prefix, for 100;
   the point: it does not grow with the number of duties (one lease per node).
2. ``--reps`` times (default 10): a random node is ``kill -9``-ed at a random moment
   (0-1 s after the cluster settled); its reaper revokes its lease, so all of its
   ~200 partitions are freed at once. Measured: from just before ``os.kill`` to the
   moment this process sees (watch event) the LAST of them owned by another node.
   Then the node is restarted under the same name and the benchmark waits until the
   placement has settled again (all 1000 owned by their wanted node): "rebalance".
   Also measured: the CPU time the 4 survivors used together from the kill to that
   watch event (every thread's ``/proc/PID/task/*/schedstat``; on 2 cores it is
   what they queue for), and in the same window etcd's and this process's own.
3. ``--no-reaper-reps`` times (default 10): the same, but the node's reaper is killed
   first (a lost machine, or a node run with ``reaper.enabled: false``): the
   partitions wait for the lease to expire (TTL + etcd's 500 ms expiry tick).

Every child is ended by PID in ``finally``; the whole run is bounded by
``--max-seconds`` (default 470) and nodes exit by themselves if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.clock import SYSTEM_CLOCK
from shoal.core.placement import DutySpec, NodeInfo, place
from shoal.primitives.membership import NODES, Member
from shoal.primitives.mirror import Mirror
from shoal.primitives.ownership import DUTIES
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.store.protocol import Event, Store
from shoal.testing.etcd_server import EtcdCluster
from shoal.testing.procs import NodeProcess, ProcCluster

PARTITIONS = int(os.environ.get("SHOAL_SCALE_PARTITIONS", "1000"))
app = App("scale-bench")


@app.duty("p", partitions=PARTITIONS)
async def partition(ctx: DutyContext) -> None:
    await ctx.stopping.wait()


def _watch_parent(parent: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    sys.stderr.write("scale app: benchmark process gone or time limit reached; exiting\n")
    sys.stderr.flush()
    os._exit(1)


if __name__ != "__main__" and os.environ.get("SHOAL_BENCH_PARENT"):
    threading.Thread(
        target=_watch_parent,
        args=(int(os.environ["SHOAL_BENCH_PARENT"]),
              float(os.environ.get("SHOAL_BENCH_MAX_SECONDS", "600"))),
        daemon=True, name="bench-parent-watch",
    ).start()




# -- the benchmark driver (run as a script) -------------------------------------------
HERE = Path(__file__).resolve().parent
APP = f"{HERE / 'scale.py'}:app"
NODES_COUNT = 5
TTL = 2


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples p99 is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


class View:
    """This process's live copy of ``nodes/`` and ``duties/``, plus the wanted placement."""

    def __init__(self, store: Store, partitions: int) -> None:
        self.nodes = Mirror(store, NODES, SYSTEM_CLOCK, on_change=self._changed)
        self.duties = Mirror(store, DUTIES, SYSTEM_CLOCK, on_change=self._changed)
        bench = App("scale-bench")
        bench.duty("p", partitions=partitions)(partition)
        self.specs = [
            DutySpec(d.name, d.roles, d.sticky, d.leader_bound, d.with_duty, d.family)
            for d in bench.expand({})
        ]
        self.partitions = {s.name for s in self.specs if s.family == "p"}
        self.changes = 0
        self.victim: str | None = None
        self.pending: set[str] = set()
        self.reowned_at = 0.0
        self.reowned = asyncio.Event()

    async def start(self) -> None:
        self.nodes.start()
        self.duties.start()
        await self.nodes.wait_ready()
        await self.duties.wait_ready()

    async def aclose(self) -> None:
        await self.nodes.aclose()
        await self.duties.aclose()

    def owner(self, duty: str) -> str | None:
        kv = self.duties.items.get(duty)
        return str(json.loads(kv.value)["node"]) if kv is not None else None

    def owners(self) -> dict[str, str]:
        return {d: str(json.loads(kv.value)["node"]) for d, kv in self.duties.items.items()}

    def _changed(self, events: list[Event] | None) -> None:
        self.changes += 1
        if self.victim is None or not self.pending:
            return
        if events is None:  # a full reload: check every pending partition
            self.pending = {p for p in self.pending if self.owner(p) in (None, self.victim)}
        else:  # only the keys these events touched (O(events), not O(pending) per event)
            for ev in events:
                name = ev.kv.key[len(DUTIES):] if ev.kv.key.startswith(DUTIES) else ""
                if name in self.pending and self.owner(name) not in (None, self.victim):
                    self.pending.discard(name)
        if not self.pending:
            self.reowned_at = time.time()
            self.reowned.set()

    def arm(self, victim: str) -> int:
        """Watch for every partition ``victim`` owns now to be owned by another node."""
        self.victim = victim
        self.pending = {p for p in self.partitions if self.owner(p) == victim}
        self.reowned = asyncio.Event()
        return len(self.pending)

    def settled(self, live: set[str]) -> bool:
        """Exactly ``live`` registered, none draining, every duty owned by its wanted node."""
        members = [Member.decode(kv) for kv in self.nodes.items.values()]
        if {m.name for m in members} != live or any(m.draining for m in members):
            return False
        owners = self.owners()
        if not self.partitions <= owners.keys():
            return False
        infos = [NodeInfo(m.name, frozenset(m.roles), m.weight, m.can_lead,
                          frozenset(m.disabled), m.zone) for m in members]
        wanted = place(self.specs, infos, owners, balanced=True).wanted
        return all(owners.get(d) == w for d, w in wanted.items())

    async def wait_settled(self, live: set[str], procs: Sequence[NodeProcess],
                           limit: float) -> float:
        """Wait until :meth:`settled`; returns the time.time() it was first seen."""
        deadline = time.monotonic() + limit
        seen = -1
        while True:
            if self.changes != seen:
                seen = self.changes
                if self.settled(live):
                    return time.time()
            for proc in procs:
                if not proc.alive:
                    raise RuntimeError(f"{proc.label} died:\n{proc.output()[-3000:]}")
            if time.monotonic() > deadline:
                counts: dict[str, int] = {}
                for n in self.owners().values():
                    counts[n] = counts.get(n, 0) + 1
                raise TimeoutError(f"not settled within {limit:g} s: owners {counts}")
            await asyncio.sleep(0.05)


class Rig:
    """5 node processes of the app with ``partitions`` partitions, one prefix."""

    def __init__(self, workdir: Path, endpoints: Sequence[str], partitions: int) -> None:
        self.endpoints = list(endpoints)  # empty: the SQLite store in workdir
        self.partitions = partitions
        self.prefix = f"/scale-{partitions}-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.sqlite_path = workdir / "shoal.db"
        store_config: dict[str, Any] = (
            {"backend": "etcd", "etcd": {"endpoints": self.endpoints, "prefix": self.prefix}}
            if self.endpoints else
            {"backend": "sqlite", "sqlite": {"path": str(self.sqlite_path)}}
        )
        base = {
            "cluster": "scale-bench",
            "store": store_config,
            "timings": {"preset": "local", "ttl": TTL},
            "reaper": {"enabled": True},
        }
        self.cluster = ProcCluster(workdir, base, app=APP)
        self.live: dict[str, NodeProcess] = {}
        self.store: Store | None = None
        self.view: View | None = None
        self.survivor_cpu = 0.0  # CPU seconds the survivors used in the last failover
        # ... and the others on the same cores: the store server (etcd; none for
        # SQLite) and this benchmark process (the observer). The dead node's reaper
        # is gone by then (its CPU: benchmarks/reaper.py)
        self.other_cpu: dict[str, float] = {}
        self.server_pids: list[int] = []

    async def start(self) -> float:
        if self.endpoints:
            from shoal.store.etcd import EtcdStore

            self.store = await EtcdStore.open(self.endpoints, prefix=self.prefix)
        else:
            from shoal.store.sqlite import SqliteStore

            self.store = await SqliteStore.open(self.sqlite_path)
        self.view = View(self.store, self.partitions)
        await self.view.start()
        os.environ["SHOAL_SCALE_PARTITIONS"] = str(self.partitions)
        t0 = time.time()
        for i in range(1, NODES_COUNT + 1):
            self.live[f"n{i}"] = self.cluster.spawn(f"n{i}")
        done = await self.view.wait_settled(set(self.live), list(self.live.values()), 180)
        return done - t0

    async def close(self) -> None:
        self.cluster.cleanup()
        if self.view is not None:
            await self.view.aclose()
        if self.store is not None:
            await self.store.aclose()

    async def ops(self, metrics_url: str, seconds: float) -> dict[str, float]:
        """Store operations per second in steady state (etcd's own counters)."""
        assert self.view is not None
        await self.view.wait_settled(set(self.live), list(self.live.values()), 60)
        await asyncio.sleep(3.0)  # let the last handovers' traffic pass
        before = await asyncio.to_thread(scrape, metrics_url)
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        after = await asyncio.to_thread(scrape, metrics_url)
        took = time.monotonic() - t0
        if not self.view.settled(set(self.live)):
            log(f"warning: placement changed during the {self.partitions}-partition window")
        return {k: (after.get(k, 0.0) - v) / took for k, v in before.items()}

    async def failover(self, kill_reaper: bool) -> tuple[float, int, float]:
        """kill -9 a random node; (seconds until its partitions are all re-owned,
        how many it had, seconds from its restart until placement settled)."""
        view = self.view
        assert view is not None
        await view.wait_settled(set(self.live), list(self.live.values()), 60)
        name = random.choice(sorted(self.live))
        victim = self.live.pop(name)
        await asyncio.sleep(random.uniform(0.0, 1.0))
        reapers: list[int] = []
        if kill_reaper:
            victim.output()
            reapers = sorted(victim.reaper_pids)
            if not reapers:
                raise RuntimeError(f"{victim.label}: reaper pid unknown")
        count = view.arm(name)
        survivors = [p.pid for p in self.live.values()]
        others = {"bench": [os.getpid()]}
        if self.server_pids:  # (SQLite: no server)
            others["store"] = self.server_pids
        cpu0 = sum(cpu_ns(pid) for pid in survivors)
        other0 = {k: sum(cpu_ns(p) for p in pids) for k, pids in others.items()}
        t0 = time.time()
        for pid in reapers:
            os.kill(pid, signal.SIGKILL)
        os.kill(victim.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(view.reowned.wait(), TTL + 15)
        except TimeoutError:
            raise TimeoutError(f"{len(view.pending)} partitions of {name} not re-owned") from None
        self.survivor_cpu = (sum(cpu_ns(pid) for pid in survivors) - cpu0) / 1e9
        self.other_cpu = {k: (sum(cpu_ns(p) for p in pids) - other0[k]) / 1e9
                          for k, pids in others.items()}
        took = view.reowned_at - t0
        view.victim = None
        victim.stop()
        restarted = time.time()
        self.live[name] = self.cluster.spawn(name)
        settled = await view.wait_settled(set(self.live), list(self.live.values()), 90)
        return took, count, settled - restarted


def cpu_ns(pid: int) -> int:
    """CPU time a process has used, all its threads, in ns (Linux
    ``/proc/PID/task/*/schedstat``; 0 elsewhere or once it is gone)."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):  # gone: what was read
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total


def scrape(url: str) -> dict[str, float]:
    """etcd's request counters: gRPC messages received by method, and mvcc op totals."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{"):
            labels, value = line[len("grpc_server_msg_received_total{"):].rsplit("} ", 1)
            fields = dict(part.split("=", 1) for part in labels.split(","))
            if fields.get("grpc_service", "").startswith('"etcdserverpb.'):
                key = f"grpc {fields['grpc_method'].strip(chr(34))}"
                out[key] = out.get(key, 0.0) + float(value)
                out["grpc (all methods)"] = out.get("grpc (all methods)", 0.0) + float(value)
        for name in ("put", "range", "txn", "delete"):
            if line.startswith(f"etcd_mvcc_{name}_total "):
                out[f"mvcc {name}"] = float(line.split()[1])
    return out


def report(results: dict[str, Any]) -> str:
    lines = ["| measurement | runs | p50 / p99 | min - max |", "|---|---|---|---|"]
    for label, key, unit in (
        ("kill -9 a node (reaper on): all its partitions re-owned", "reown", 1000),
        ("  then restarted: placement settled again (from spawn)", "rebalance", 1000),
        ("kill -9 node + reaper (= no reaper): all its partitions re-owned",
         "reown_noreaper", 1000),
        ("  then restarted: placement settled again (from spawn)", "rebalance_noreaper", 1000),
        ("  CPU the 4 survivors used from the kill to the re-own (sum)", "cpu", 1000),
        ("  CPU the store server (etcd) used in that window", "cpu_store", 1000),
        ("  CPU this benchmark process (the observer) used in that window", "cpu_bench", 1000),
        ("partitions the killed node owned (count)", "owned", 1),
    ):
        if s := results.get(key):
            v = [x * unit for x in (pct(s, 50), pct(s, 99), min(s), max(s))]
            u = " ms" if unit > 1 else ""
            lines.append(f"| {label} | {len(s)} | {v[0]:.0f}{u} / {v[1]:.0f}{u} "
                         f"| {v[2]:.0f} - {v[3]:.0f}{u} |")
    ops: dict[str, dict[str, float]] = results.get("ops", {})
    counts = sorted(ops, key=int)
    shown = ["grpc (all methods)", "grpc LeaseKeepAlive", "grpc Range", "grpc Txn", "grpc Put",
             "mvcc range", "mvcc txn", "mvcc put", "mvcc delete"]
    keys = shown + sorted({k for r in ops.values() for k, v in r.items() if v} - set(shown))
    if counts:
        lines += ["", "| etcd counter, per second | "
                  + " | ".join(f"{c} partitions" for c in counts) + " |",
                  "|---|" + "---|" * len(counts)]
    for k in keys if counts else []:
        lines.append(f"| {k} | " + " | ".join(f"{ops[c].get(k, 0.0):.2f}" for c in counts) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"reown": [], "rebalance": [], "owned": [], "cpu": [],
                               "reown_noreaper": [], "rebalance_noreaper": [],
                               "cpu_noreaper": [], "ops": {}}
    etcd = EtcdCluster(members=1) if args.store == "etcd" else None
    try:
        endpoints: list[str] = []
        metrics = ""
        if etcd is not None:
            etcd.start()
            endpoints = list(etcd.endpoints)
            metrics = f"{endpoints[0]}/metrics"
            log(f"etcd at {endpoints[0]}; work dir {workdir}")
        else:
            log(f"sqlite store; work dir {workdir}")
            args.ops_seconds = 0  # etcd's counters only
            args.ops_partitions = [args.partitions]
        for count in sorted(args.ops_partitions, reverse=True):
            rig = Rig(workdir / f"p{count}", endpoints, count)
            if etcd is not None:
                rig.server_pids = [pid for pid in etcd.pids() if pid is not None]
            try:
                took = await rig.start()
                log(f"{count} partitions: 5 nodes up, all owned and settled in {took:.1f} s")
                if args.ops_seconds > 0:
                    rates = await rig.ops(metrics, args.ops_seconds)
                    results["ops"][str(count)] = rates
                    log(f"{count} partitions: {rates.get('grpc (all methods)', 0):.2f} "
                        f"gRPC msgs/s over {args.ops_seconds:g} s")
                if count != args.partitions:
                    continue
                for kind, reps in (("", args.reps), ("_noreaper", args.no_reaper_reps)):
                    for rep in range(reps):
                        reown, owned, rebalance = await rig.failover(kill_reaper=bool(kind))
                        results["reown" + kind].append(reown)
                        results["rebalance" + kind].append(rebalance)
                        results["cpu" + kind].append(rig.survivor_cpu)
                        if not kind:
                            results["owned"].append(owned)
                            for who, used in rig.other_cpu.items():
                                results.setdefault(f"cpu_{who}", []).append(used)
                        log(f"kill{kind or ''} #{rep + 1}: {owned} partitions re-owned in "
                            f"{reown * 1000:.1f} ms; rebalanced {rebalance:.2f} s after restart")
            finally:
                await rig.close()
    finally:
        if etcd is not None:
            etcd.stop()
    return results


def run_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1000,
                        help="partitions for the kill -9 runs (default 1000)")
    parser.add_argument("--reps", type=int, default=10, help="kill -9 runs, reaper on")
    parser.add_argument("--no-reaper-reps", type=int, default=10,
                        help="kill -9 runs with the reaper killed too (default 10; 0: skip)")
    parser.add_argument("--ops-partitions", default="100,1000",
                        help="partition counts for the steady-state ops measurement")
    parser.add_argument("--ops-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--store", choices=("etcd", "sqlite"), default="etcd",
                        help="the store the nodes share (default etcd)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw samples here")
    parser.add_argument("--max-seconds", type=int, default=470)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.ops_partitions = sorted({int(x) for x in args.ops_partitions.split(",") if x.strip()}
                                 | {args.partitions})
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    os.environ["SHOAL_BENCH_PARENT"] = str(os.getpid())
    os.environ["SHOAL_BENCH_MAX_SECONDS"] = str(args.max_seconds + 30)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-scale-"))
    started = time.monotonic()
    try:
        results = asyncio.run(run(args, workdir))
    finally:
        signal.alarm(0)
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(f"{dt.date.today()}: {args.store}, {NODES_COUNT} nodes, {args.partitions} partitions, "
          f"TTL {TTL} s, "
          f"reps {args.reps} + {args.no_reaper_reps} (no reaper), ops window "
          f"{args.ops_seconds:g} s, seed {seed}, {os.cpu_count()} CPUs, took {elapsed:.0f} s")
    print()
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": seed, "elapsed_s": elapsed, **results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main())
