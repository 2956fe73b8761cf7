"""After a join, how long until every member agrees on the new assignment:
Shoal's placement vs tooz's partitioner, side by side on the same machine.

    python benchmarks/partitioner_agree.py                  # 5 members + 1 joining, 1000 keys
    python benchmarks/partitioner_agree.py --reps 20 --tooz-poll 0.01

Every member is its own process (this file, ``member`` mode), as in a real
deployment; the two systems run one after the other in the same invocation,
with the same number of members and keys:

- **Shoal**: a ``Node`` per process with its own ``EtcdStore`` client, on one
  real etcd (1 member, fsync on, free 127.0.0.1 ports); an app with one
  partitioned family of K duties, balanced placement, TTL 2 s. A member's view
  is the ``wanted`` owner of each of the K duties in the placement its own
  reconcile passes computed (what it acts on), read every millisecond (a read
  that computes nothing), reported when it changes. The join is timed from the newcomer's
  registration (``joined_at`` in its node record: just before its register
  transaction). Also timed: when the new assignment is *in effect* (every member
  runs exactly the keys the agreed view gives it), which Shoal delays on purpose
  by ``--rebalance-delay`` (a join moves duties only after membership has been
  stable that long).
- **tooz 9.1** (redis driver; redis-server without persistence): a coordinator
  per process, ``join_partitioned_group()`` (``tooz.partitioner.Partitioner``:
  hash ring, 32 partitions per member), calling ``heartbeat()`` and
  ``run_watchers()`` every ``--tooz-poll`` seconds: tooz members learn of a
  join only there. A member's time is taken when its ring changed (its view of
  the keys is computed after the stamp: in tooz's favour). The join is timed
  from just before the newcomer's ``join_partitioned_group()``. tooz has no
  ownership: a member acts on its own view, so until every member has the new
  ring, a key moving to the newcomer is claimed by two members (reported).

Reported per system: ms from the join until every member's view is the same
(p50 / p99 / min - max), keys whose member changed (against the ideal
K/(N+1)). After each join the newcomer stops (SIGTERM: Shoal drains, tooz leaves
the group) and the members settle before the next one. Every child (etcd,
redis-server, members) is stopped by PID; the run is bounded by
``--max-seconds``. Needs the ``[bench]`` extra and ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILY = "p"
HERE = Path(__file__).resolve()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def digest(view: dict[str, str]) -> str:
    return hashlib.blake2b(json.dumps(view, sort_keys=True).encode(), digest_size=8).hexdigest()


# -- member processes -------------------------------------------------------------------
async def shoal_member(args: argparse.Namespace) -> None:
    from shoal.runtime.app import App
    from shoal.runtime.context import DutyContext
    from shoal.runtime.node import Node
    from shoal.runtime.settings import NodeSettings
    from shoal.store.etcd import EtcdStore

    app = App("agree-bench")

    @app.duty(FAMILY, partitions=args.keys)
    async def work(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    store = await EtcdStore.open(args.endpoints.split(","), prefix=args.prefix)
    settings = NodeSettings(name=args.name, ttl=2, rebalance_delay=args.rebalance_delay,
                            grace=1.0, drain_timeout=2.0)
    node = Node(app, settings, store=store)
    events = node.subscribe()

    async def seen() -> None:  # when this node learnt of a join (for --verbose)
        async for ev in events:
            if ev.kind == "joined":
                say("SEEN", f"{time.time():.6f}", ev.name)

    await node.start()
    watcher = asyncio.create_task(seen())
    last: object = None
    shown = ""
    runs = -1
    joined = False
    ticks = 0
    placer = node._duties.placer
    while not stop.is_set():
        # the placement the node's own reconcile passes computed: reading it costs
        # nothing, where node.placement() would compute one (and, polled every
        # millisecond, slow the node down and place more often than it does)
        placement = placer.current
        if placement is not None and placement is not last:
            last = placement
            stamp = time.time()
            view = {d: o for d, o in placement.wanted.items()
                    if d.startswith(FAMILY + "/") and o is not None}
            if (code := digest(view)) != shown:
                shown = code
                say("VIEW", f"{stamp:.6f}", code, json.dumps(view))
        if not joined and (me := node.members.get(args.name)) is not None:
            joined = True
            say("JOINED", f"{me.joined_at:.6f}")
        ticks += 1
        if ticks % 5 == 0:  # what it runs: every 5 ms is fine against rebalance_delay
            mine = sum(1 for d in node.runners if d.startswith(FAMILY + "/"))
            if mine != runs:
                runs = mine
                say("RUNS", f"{time.time():.6f}", mine)
        await asyncio.sleep(0.001)
    watcher.cancel()
    await node.aclose()
    await store.aclose()


def tooz_member(args: argparse.Namespace) -> None:
    from tooz import coordination

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    keys = [f"{FAMILY}/{i}" for i in range(args.keys)]
    coord = coordination.get_coordinator(args.url, args.name.encode())
    coord.start(start_heart=False)
    started = time.time()
    part = coord.join_partitioned_group(args.group.encode())
    say("JOINED", f"{started:.6f}")
    members: frozenset[Any] = frozenset()
    while not stop.is_set():
        coord.heartbeat()
        coord.run_watchers()
        now = frozenset(part.ring.nodes)
        if now != members:
            members = now
            stamp = time.time()
            view = {k: next(iter(part.members_for_object(k))).decode() for k in keys}
            say("VIEW", f"{stamp:.6f}", digest(view), json.dumps(view))
        stop.wait(args.tooz_poll)
    coord.leave_partitioned_group(part)
    coord.stop()


# -- driver side ----------------------------------------------------------------------
class Member:
    """One member process; its stdout lines are parsed in a thread."""

    def __init__(self, cmd: list[str], name: str, workdir: Path) -> None:
        self.name = name
        self.joined_at: float | None = None
        self.views: list[tuple[float, str, dict[str, str]]] = []
        self.runs: list[tuple[float, int]] = []
        self.seen: list[float] = []  # when it learnt of a join: Shoal
        self.changed = threading.Condition()
        self.err = (workdir / f"{name}.err").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self.changed:
                if kind == "VIEW":
                    stamp, code, view = rest.split(" ", 2)
                    self.views.append((float(stamp), code, json.loads(view)))
                elif kind == "JOINED":
                    self.joined_at = float(rest)
                elif kind == "SEEN":
                    self.seen.append(float(rest.split(" ")[0]))
                elif kind == "RUNS":
                    stamp, count = rest.split(" ")
                    self.runs.append((float(stamp), int(count)))
                self.changed.notify_all()

    def view(self) -> tuple[float, str, dict[str, str]] | None:
        with self.changed:
            return self.views[-1] if self.views else None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        self.err.close()


def wait_for(check: Any, limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while (found := check()) is None or found is False:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)
    return found


def agreed(members: list[Member], names: set[str]) -> tuple[float, dict[str, str]] | None:
    """(when the last member got it, the view) once every member's latest view is
    the same and spreads the keys over exactly ``names``."""
    latest = [m.view() for m in members]
    if any(v is None for v in latest):
        return None
    codes = {v[1] for v in latest if v is not None}
    if len(codes) != 1:
        return None
    view = latest[0][2]  # type: ignore[index]
    if set(view.values()) != names:
        return None
    return max(v[0] for v in latest if v is not None), view


def in_effect(members: list[Member], view: dict[str, str]) -> float | None:
    """When every member ran exactly its share of ``view`` (Shoal)."""
    want = {m.name: sum(1 for o in view.values() if o == m.name) for m in members}
    stamps = []
    for m in members:
        with m.changed:
            if not m.runs or m.runs[-1][1] != want[m.name]:
                return None
            stamps.append(m.runs[-1][0])
    return max(stamps)


def double_claims(members: list[Member], newcomer: Member, before: dict[str, str],
                  after: dict[str, str], since: float) -> int:
    """The most keys two members claimed at once while the join spread (each
    member works on its old view until its ring changes; the newcomer has the
    new one from the start)."""
    def switched(m: Member) -> float:
        return min(s for s, c, _ in m.views if s >= since and c == digest(after))

    order = sorted((m for m in members if m is not newcomer), key=switched)
    worst = 0
    for updated in range(len(order) + 1):
        new = {newcomer.name, *(m.name for m in order[:updated])}
        claims: dict[str, int] = {}
        for m in members:
            view = after if m.name in new else before
            for k, owner in view.items():
                if owner == m.name:
                    claims[k] = claims.get(k, 0) + 1
        worst = max(worst, sum(1 for c in claims.values() if c > 1))
    return worst


def run_system(system: str, args: argparse.Namespace, base: list[str],
               workdir: Path) -> list[dict[str, float]]:
    members: list[Member] = []
    spawned: list[Member] = []
    prefix = "s" if system == "shoal" else "t"

    def spawn(i: int) -> Member:
        name = f"{prefix}{i}"
        m = Member([*base, "--name", name], name, workdir)
        spawned.append(m)
        return m

    out: list[dict[str, float]] = []
    try:
        for i in range(1, args.members + 1):
            members.append(spawn(i))
            wait_for(lambda m=members[-1]: m.joined_at, 60, f"{system} member {i} to join")
        for rep in range(args.reps):
            names = {m.name for m in members}
            _, before = wait_for(lambda n=names: agreed(members, n), 120, f"{system} to settle")
            if system == "shoal":
                wait_for(lambda v=before: in_effect(members, v), 120, "shoal duties to settle")
            time.sleep(random.uniform(0.2, 0.7))
            since = time.time()
            newcomer = spawn(args.members + rep + 1)
            everyone = [*members, newcomer]
            names = {m.name for m in everyone}
            when, after = wait_for(lambda n=names, e=everyone: agreed(e, n), 60,
                                   f"{system} to agree")
            joined_at = wait_for(lambda m=newcomer: m.joined_at, 10, "the newcomer's join time")
            sample = {"agree": when - joined_at,
                      "moved": float(sum(1 for k, v in after.items() if before.get(k) != v))}
            if system == "shoal":
                effect = wait_for(lambda v=after, e=everyone: in_effect(e, v), 60,
                                  "shoal's new duties")
                sample["effect"] = effect - joined_at
            else:
                sample["double"] = float(double_claims(everyone, newcomer, before, after, since))
            out.append(sample)
            if args.verbose:
                for m in everyone:
                    seen = [f"{(t - joined_at) * 1000:+.1f}" for t, _, _ in m.views if t >= since]
                    heard = [f"{(t - joined_at) * 1000:+.1f}" for t in m.seen if t >= since]
                    log(f"  {m.name}: join seen at {' '.join(heard)}, views at {' '.join(seen)} ms")
            extra = (f", in effect {sample['effect'] * 1000:.0f} ms" if "effect" in sample
                     else f", up to {sample['double']:.0f} keys claimed twice meanwhile")
            log(f"{system} join #{rep + 1}: agreed {sample['agree'] * 1000:.1f} ms, "
                f"{sample['moved']:.0f} keys moved{extra}")
            newcomer.stop()
    finally:
        for m in spawned:
            m.stop()
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def row(system: str, what: str, samples: list[dict[str, float]], field: str) -> str:
    ms = [s[field] * 1000 for s in samples]
    return (f"| {system} | {what} | {pct(ms, 0.5):.1f} | {pct(ms, 0.99):.1f} | "
            f"{min(ms):.1f} - {max(ms):.1f} |")


def driver(args: argparse.Namespace) -> None:
    from failover import RedisServer

    from shoal.testing.etcd_server import EtcdCluster

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    random.seed(seed)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "seed": seed}
    started = time.monotonic()
    me = [sys.executable, str(HERE), "member", "--keys", str(args.keys)]
    with tempfile.TemporaryDirectory(prefix="shoal-agree-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir)
        etcd = EtcdCluster(members=1)
        timer = threading.Timer(args.max_seconds, _abort, (args.max_seconds, redis, etcd))
        timer.daemon = True
        timer.start()
        try:
            with etcd:
                log(f"etcd {etcd.endpoints[0]}, redis 127.0.0.1:{redis.port}, seed {seed}")
                results["shoal"] = run_system("shoal", args, [
                    *me, "--system", "shoal", "--endpoints", ",".join(etcd.endpoints),
                    "--prefix", f"/agree-{uuid.uuid4().hex[:8]}",
                    "--rebalance-delay", str(args.rebalance_delay)], workdir)
            results["tooz"] = run_system("tooz", args, [
                *me, "--system", "tooz", "--url", redis.url,
                "--group", f"agree-{uuid.uuid4().hex[:8]}",
                "--tooz-poll", str(args.tooz_poll)], workdir)
        finally:
            timer.cancel()
            redis.stop()
    ideal = args.keys / (args.members + 1)
    print(f"\n{args.members} members + 1 joining, {args.keys} keys (ideal move {ideal:.0f}), "
          f"{args.reps} joins each, tooz poll {args.tooz_poll * 1000:.0f} ms, Shoal "
          f"rebalance_delay {args.rebalance_delay} s, seed {seed}, "
          f"{os.cpu_count()} CPUs, took {time.monotonic() - started:.0f} s\n")
    print("| system | from the join until | p50 ms | p99 ms | min - max ms |")
    print("|---|---|---|---|---|")
    print(row("shoal", "every member's view is the same", results["shoal"], "agree"))
    print(row("shoal", "every member runs its new share", results["shoal"], "effect"))
    print(row("tooz", "every member's view is the same", results["tooz"], "agree"))
    print()
    for name in ("shoal", "tooz"):
        moves = sorted(int(s["moved"]) for s in results[name])
        print(f"- {name}: keys moved per join {moves[0]} - {moves[-1]} (ideal {ideal:.0f})")
    worst = sorted(int(s["double"]) for s in results["tooz"])
    print(f"- tooz: keys claimed by two members at once while the join spread: "
          f"{worst[0]} - {worst[-1]} per join (Shoal: none, a key has one owner)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


def _abort(limit: float, redis: Any, etcd: Any) -> None:
    """The time limit: stop etcd and redis (by PID), then exit at once (the
    members exit on their own when their store goes away or their pipe closes)."""
    sys.stderr.write(f"partitioner_agree: time limit of {limit:.0f} s reached; aborting\n")
    sys.stderr.flush()
    try:
        redis.stop()
        etcd.stop()
    finally:
        os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="driver", choices=["driver", "member"])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--tooz-poll", type=float, default=0.05)
    parser.add_argument("--rebalance-delay", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--verbose", action="store_true", help="each member's view times")
    # member mode
    parser.add_argument("--system", choices=["shoal", "tooz"])
    parser.add_argument("--name")
    parser.add_argument("--endpoints")
    parser.add_argument("--prefix")
    parser.add_argument("--url")
    parser.add_argument("--group")
    args = parser.parse_args()
    if args.mode == "driver":
        driver(args)
        return
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent, args.max_seconds), daemon=True).start()
    if args.system == "shoal":
        asyncio.run(shoal_member(args))
    else:
        tooz_member(args)


def _watch_parent(parent: int, limit: float) -> None:
    """A member exits when the driver is gone or after the time limit."""
    deadline = time.monotonic() + limit
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(1)


if __name__ == "__main__":
    main()
