"""Store operation latency: memory, sqlite, Shoal's etcd backend and raw etcd3aio,
Shoal's postgres backend and the same statements through raw psycopg.

One run starts its own single-member etcd (127.0.0.1, free ports; stopped by PID at
the end) and measures, for every backend, over ``--ops`` sequential operations after
a warm-up:

* ``put``   — write one of ``--keys`` keys (``--value-size`` bytes);
* ``get``   — read one of those keys;
* ``txn``   — compare-and-set: ``mod_revision(key) == expected`` then put;
* ``watch`` — lag from a put *returning* to its event arriving at a watcher on a
  SEPARATE client (sqlite: a second SqliteStore on the same file; etcd: a second
  EtcdStore; raw: a second Etcd3Client; memory: the same store, it has no other).
  An event that arrives before its put's reply has been processed counts as 0 ms
  (with etcd that is most of them: the watcher and the writer share this process's
  event loop, and etcd sends the event and the reply together). So the table also
  has "watch delivery": from the put being *sent* to the event arriving.

Shoal's etcd backend and raw etcd3aio talk to the same etcd with keys of the same
length (``/b/s/k/00042`` vs ``/b/r/k/00042``), the same values and the same per-call
timeout; the backends are interleaved in rounds of ``--chunk`` ops with a rotating
order, so drift (other load on the machine, etcd's own housekeeping) hits all alike.

PostgreSQL: one run starts its own server (``shoal.testing.pg_server``, fsync off,
on 127.0.0.1; stopped by PID); ``rawpg`` issues exactly the statements the postgres
store issues, on one bare connection (benchmarks/_store_pg.py).

    python benchmarks/store.py                      # --ops 2000, every backend
    python benchmarks/store.py --ops 500 --backends etcd,raw
    python benchmarks/store.py --ops 500 --backends postgres,rawpg
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _store_pg import RawPgOps
from etcd3aio import Etcd3Client
from etcd3aio.kv import KVService

from shoal.store import _etcd_pb as pb
from shoal.store.etcd import EtcdStore
from shoal.store.memory import MemoryStore
from shoal.store.postgres import PostgresStore
from shoal.store.protocol import Compare, Op, Put, Store
from shoal.store.sqlite import SqliteStore
from shoal.testing.etcd_server import EtcdCluster, find_etcd_binary
from shoal.testing.pg_server import PgServer

BACKENDS = ("memory", "sqlite", "etcd", "raw", "postgres", "rawpg")
LABELS = {
    "memory": "memory",
    "sqlite": "sqlite",
    "etcd": "shoal etcd",
    "raw": "raw etcd3aio",
    "postgres": "shoal postgres",
    "rawpg": "raw psycopg",
}
PAIRS = (("etcd", "raw"), ("postgres", "rawpg"))  # (Shoal backend, raw driver)
TARGET_PG_WATCH_DELIVERY_P99_MS = 10.0
OPS = ("put", "get", "txn", "watch", "delivery")
TIMEOUT = 5.0  # per call, for Shoal's etcd backend and raw etcd3aio alike
TARGET_RATIO = 1.3
TARGET_SQLITE_WATCH_P99_MS = 50.0
TARGET_SQLITE_DELIVERY_P99_MS = 2.0
perf = time.perf_counter


# -- the backends under test ----------------------------------------------------------------
class Bench:
    """One backend: put/get/cas on a fixed key set, and a put watched from elsewhere."""

    name: str

    def __init__(self, keys: int, value: bytes) -> None:
        self.n_keys = keys
        self.value = value
        self.arrived: dict[int, float] = {}  # watch sequence -> perf_counter at arrival
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.early = 0  # events that arrived before their put returned
        self.delivery: list[float] = []  # seconds from put sent to event arrival
        self._watch_task: asyncio.Task[None] | None = None
        self._seq = 0

    def key(self, i: int) -> str:
        return f"k/{i % self.n_keys:05d}"

    async def put(self, i: int) -> None:
        raise NotImplementedError

    async def get(self, i: int) -> None:
        raise NotImplementedError

    async def cas(self, i: int) -> None:
        raise NotImplementedError

    async def setup_cas(self) -> None:
        raise NotImplementedError

    async def watch_put(self, value: bytes) -> None:
        raise NotImplementedError

    async def open_watcher(self, ready: asyncio.Event) -> None:
        """Run the watcher (on a separate client) until cancelled; set ``ready`` once
        the watch is established; call :meth:`_arrive` for every event."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- watch lag ----------------------------------------------------------------------
    def _arrive(self, value: bytes) -> None:
        now = perf()
        try:
            seq = int(value.split(b":", 1)[0])
        except ValueError:
            return
        self.arrived[seq] = now
        fut = self.waiting.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(now)

    async def start_watch(self) -> None:
        ready = asyncio.Event()
        self._watch_task = asyncio.create_task(self.open_watcher(ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self._watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            self._watch_task.result()  # the watcher failed: raise why
            raise RuntimeError(f"{self.name}: watcher ended before it was ready")

    async def watch_lag(self, _i: int) -> float:
        """One put on the watched key; seconds from its return to the event's arrival."""
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[seq] = fut
        sent = perf()
        await self.watch_put(b"%d:" % seq + self.value)
        returned = perf()
        arrived = await asyncio.wait_for(fut, TIMEOUT)
        self.arrived.pop(seq, None)
        self.delivery.append(arrived - sent)
        if arrived < returned:
            self.early += 1
        return max(0.0, arrived - returned)

    async def stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None


class StoreBench(Bench):
    """Any Shoal Store; ``watcher`` opens the second client (or returns the same store)."""

    def __init__(
        self,
        name: str,
        store: Store,
        watcher: Callable[[], Awaitable[tuple[Store, bool]]],
        keys: int,
        value: bytes,
    ) -> None:
        super().__init__(keys, value)
        self.name = name
        self.store = store
        self._watcher = watcher
        self._cas_rev = 0

    async def put(self, i: int) -> None:
        await self.store.put(self.key(i), self.value)

    async def get(self, i: int) -> None:
        kv = await self.store.get(self.key(i))
        assert kv is not None and len(kv.value) == len(self.value)

    async def setup_cas(self) -> None:
        self._cas_rev = await self.store.put("cas", self.value)

    async def cas(self, i: int) -> None:
        res = await self.store.txn(
            [Compare.mod_revision("cas", Op.EQUAL, self._cas_rev)], [Put("cas", self.value)]
        )
        if not res.succeeded:
            raise RuntimeError(f"{self.name}: compare-and-set failed at {self._cas_rev}")
        self._cas_rev = res.revision

    async def watch_put(self, value: bytes) -> None:
        await self.store.put("w/x", value)

    async def open_watcher(self, ready: asyncio.Event) -> None:
        store, own = await self._watcher()
        try:
            stream = store.watch("w/")
            async with contextlib.aclosing(stream):
                # The watch is "from now" at creation; the first event confirms it runs.
                probe = asyncio.create_task(self._probe(ready))
                try:
                    async for ev in stream:
                        if ev.kv.value == b"probe":
                            ready.set()
                            continue
                        self._arrive(ev.kv.value)
                finally:
                    probe.cancel()
        finally:
            if own:
                await store.aclose()

    async def _probe(self, ready: asyncio.Event) -> None:
        while not ready.is_set():
            await self.store.put("w/probe", b"probe")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.5)

    async def close(self) -> None:
        await self.store.aclose()


class RawBench(Bench):
    """etcd3aio used directly: protobufs in, protobufs out, no Shoal layer."""

    name = "raw"

    def __init__(self, endpoint: str, prefix: bytes, keys: int, value: bytes) -> None:
        super().__init__(keys, value)
        self.endpoint = endpoint
        self.prefix = prefix
        self.client = Etcd3Client([endpoint])
        self._cas_key = prefix + b"cas"
        self._cas_rev = 0
        self._watch_key = prefix + b"w/x"

    async def connect(self) -> None:
        await self.client.connect()
        await self.kv.get(b"ping", timeout=TIMEOUT)

    @property
    def kv(self) -> KVService:
        assert self.client.kv is not None
        return self.client.kv

    def raw_key(self, i: int) -> bytes:
        return self.prefix + self.key(i).encode()

    async def put(self, i: int) -> None:
        await self.kv.put(self.raw_key(i), self.value, timeout=TIMEOUT)

    async def get(self, i: int) -> None:
        resp = await self.kv.get(self.raw_key(i), timeout=TIMEOUT)
        assert resp.kvs and len(resp.kvs[0].value) == len(self.value)

    async def setup_cas(self) -> None:
        resp = await self.kv.put(self._cas_key, self.value, timeout=TIMEOUT)
        self._cas_rev = int(resp.header.revision)

    async def cas(self, i: int) -> None:
        compare = pb.Compare(
            result=pb.Compare.EQUAL,
            target=pb.Compare.MOD,
            key=self._cas_key,
            mod_revision=self._cas_rev,
        )
        success = [KVService.txn_op_put(self._cas_key, self.value)]
        resp = await self.kv.txn([compare], success, [], timeout=TIMEOUT)
        if not resp.succeeded:
            raise RuntimeError(f"raw: compare-and-set failed at {self._cas_rev}")
        self._cas_rev = int(resp.header.revision)

    async def watch_put(self, value: bytes) -> None:
        await self.kv.put(self._watch_key, value, timeout=TIMEOUT)

    async def open_watcher(self, ready: asyncio.Event) -> None:
        watcher = Etcd3Client([self.endpoint])
        await watcher.connect()
        try:
            assert watcher.watch is not None
            prefix = self.prefix + b"w/"
            end = prefix[:-1] + bytes([prefix[-1] + 1])
            async for resp in watcher.watch.watch(prefix, range_end=end):
                if resp.created:
                    ready.set()
                for ev in resp.events:
                    self._arrive(bytes(ev.kv.value))
        finally:
            await watcher.close()

    async def close(self) -> None:
        await self.client.close()


class RawPgBench(RawPgOps, Bench):
    """The postgres store's statements through raw psycopg (benchmarks/_store_pg.py)."""

    def __init__(self, dsn: str, schema: str, keys: int, value: bytes) -> None:
        Bench.__init__(self, keys, value)
        self.setup_raw(dsn, schema)

    def _arrive(self, value: bytes) -> None:
        Bench._arrive(self, value)


# -- measuring ------------------------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (seconds) in milliseconds."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1] * 1000


async def run_op(
    benches: list[Bench], op: str, ops: int, warmup: int, chunk: int
) -> dict[str, list[float]]:
    """``ops`` timed calls of ``op`` per backend, interleaved in rounds of ``chunk``."""

    def call(bench: Bench) -> Callable[[int], Awaitable[Any]]:
        return {
            "put": bench.put,
            "get": bench.get,
            "txn": bench.cas,
            "watch": bench.watch_lag,
        }[op]

    for bench in benches:  # warm-up: connections, code paths, etcd's caches
        fn = call(bench)
        for i in range(warmup):
            await fn(i)
        bench.delivery.clear()
        bench.early = 0
    samples: dict[str, list[float]] = {b.name: [] for b in benches}
    done = 0
    rnd = 0
    while done < ops:
        n = min(chunk, ops - done)
        shift = rnd % len(benches)
        for bench in benches[shift:] + benches[:shift]:
            fn = call(bench)
            out = samples[bench.name]
            for i in range(done, done + n):
                if op == "watch":
                    out.append(await fn(i))
                else:
                    start = perf()
                    await fn(i)
                    out.append(perf() - start)
        done += n
        rnd += 1
    return samples


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


async def bench_all(
    args: argparse.Namespace, endpoint: str | None, tmp: Path, pg_dsn: str | None = None
) -> dict[str, Any]:
    value = bytes(range(256)) * (args.value_size // 256 + 1)
    value = value[: args.value_size]
    benches: list[Bench] = []
    try:
        for name in args.backends:
            if name == "memory":
                mem = MemoryStore()

                async def same(store: Store = mem) -> tuple[Store, bool]:
                    return store, False

                benches.append(StoreBench("memory", mem, same, args.keys, value))
            elif name == "sqlite":
                path = tmp / "bench.sqlite"
                lite = await SqliteStore.open(path)

                async def second(path: Path = path) -> tuple[Store, bool]:
                    return await SqliteStore.open(path), True

                benches.append(StoreBench("sqlite", lite, second, args.keys, value))
            elif name == "etcd":
                assert endpoint is not None
                ep = endpoint
                store = await EtcdStore.open([ep], prefix="/b/s", timeout=TIMEOUT)

                async def other(ep: str = ep) -> tuple[Store, bool]:
                    return await EtcdStore.open([ep], prefix="/b/s", timeout=TIMEOUT), True

                benches.append(StoreBench("etcd", store, other, args.keys, value))
            elif name == "raw":
                assert endpoint is not None
                raw = RawBench(endpoint.removeprefix("http://"), b"/b/r/", args.keys, value)
                await raw.connect()
                benches.append(raw)
            elif name == "postgres":
                assert pg_dsn is not None
                dsn = pg_dsn
                pg = await PostgresStore.open(dsn, schema="bench_s", timeout=TIMEOUT)

                async def pg_other(dsn: str = dsn) -> tuple[Store, bool]:
                    return await PostgresStore.open(dsn, schema="bench_s", timeout=TIMEOUT), True

                benches.append(StoreBench("postgres", pg, pg_other, args.keys, value))
            elif name == "rawpg":
                assert pg_dsn is not None
                await (await PostgresStore.open(pg_dsn, schema="bench_r")).aclose()  # tables
                rawpg = RawPgBench(pg_dsn, "bench_r", args.keys, value)
                await rawpg.connect()
                benches.append(rawpg)
        results: dict[str, dict[str, list[float]]] = {}
        # put first: it also creates every key that get reads.
        for bench in benches:
            for i in range(args.keys):
                await bench.put(i)
        for op in ("put", "get"):
            results[op] = await run_op(benches, op, args.ops, args.warmup, args.chunk)
        for bench in benches:
            await bench.setup_cas()
        results["txn"] = await run_op(benches, "txn", args.ops, args.warmup, args.chunk)
        for bench in benches:
            await bench.start_watch()
        try:
            results["watch"] = await run_op(benches, "watch", args.ops, args.warmup, args.chunk)
            results["delivery"] = {b.name: list(b.delivery) for b in benches}
        finally:
            for bench in benches:
                await bench.stop_watch()
        early = {b.name: b.early for b in benches}
        idle: dict[str, float] = {}
        if "sqlite" in args.backends and args.idle_seconds > 0:
            for wake in (False, True):
                idle["wake-up channel" if wake else "poll only (10 ms)"] = await idle_cpu(
                    tmp / f"idle-{wake}.sqlite", args.idle_seconds, wake
                )
        return {"samples": results, "early": early, "idle": idle}
    finally:
        for bench in benches:
            with contextlib.suppress(Exception):
                await bench.close()


async def idle_cpu(path: Path, seconds: float, wake: bool) -> float:
    """CPU % of this process while one SqliteStore with one watch sits idle."""
    store = await SqliteStore.open(path, wake=wake)
    watch = store.watch("idle/")
    waiter = asyncio.ensure_future(anext(watch))
    try:
        await asyncio.sleep(0.5)
        used = time.process_time()
        await asyncio.sleep(seconds)
        return 100 * (time.process_time() - used) / seconds
    finally:
        waiter.cancel()
        with contextlib.suppress(BaseException):
            await waiter
        await watch.aclose()
        await store.aclose()


# -- report -----------------------------------------------------------------------------------
def table(samples: dict[str, dict[str, list[float]]], backends: list[str]) -> list[str]:
    head = ["op", *(f"{LABELS[b]} p50 / p99 ms" for b in backends)]
    pairs = [(s, r) for s, r in PAIRS if s in backends and r in backends]
    for s, r in pairs:
        head.append(f"{LABELS[s]} / {LABELS[r]} (p50)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = {
        "put": "put",
        "get": "get",
        "txn": "txn (CAS)",
        "watch": "watch lag (put returned -> event)",
        "delivery": "watch delivery (put sent -> event)",
    }
    for op in OPS:
        row = [names[op]]
        for b in backends:
            s = samples[op][b]
            row.append(f"{percentile(s, 50):.3f} / {percentile(s, 99):.3f}")
        for s, r in pairs:
            shoal = percentile(samples[op][s], 50)
            raw = percentile(samples[op][r], 50)
            if raw > 0:
                row.append(f"{shoal / raw:.2f}x")
            else:  # most events beat their put's reply: no ratio of zeros
                row.append("n/a (p50 0 for both; see delivery)")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def verdicts(samples: dict[str, dict[str, list[float]]], backends: list[str]) -> list[str]:
    out: list[str] = []
    for shoal, raw in PAIRS:
        if shoal not in backends or raw not in backends:
            continue
        for op in ("put", "get", "txn"):
            r = percentile(samples[op][shoal], 50) / percentile(samples[op][raw], 50)
            ok = "met" if r <= TARGET_RATIO else "NOT met"
            out.append(f"- {op} p50 {LABELS[shoal]} / {LABELS[raw]} = {r:.2f}x "
                       f"(target <= {TARGET_RATIO}x): {ok}")
    if "postgres" in backends:
        p99 = percentile(samples["delivery"]["postgres"], 99)
        ok = "met" if p99 < TARGET_PG_WATCH_DELIVERY_P99_MS else "NOT met"
        out.append(f"- postgres watch delivery p99 = {p99:.1f} ms "
                   f"(target < {TARGET_PG_WATCH_DELIVERY_P99_MS:.0f} ms): {ok}")
    if "sqlite" in backends:
        p99 = percentile(samples["watch"]["sqlite"], 99)
        ok = "met" if p99 < TARGET_SQLITE_WATCH_P99_MS else "NOT met"
        out.append(
            f"- sqlite watch lag p99 = {p99:.1f} ms (target < {TARGET_SQLITE_WATCH_P99_MS:.0f}"
            f" ms): {ok}"
        )
        p99 = percentile(samples["delivery"]["sqlite"], 99)
        ok = "met" if p99 < TARGET_SQLITE_DELIVERY_P99_MS else "NOT met"
        out.append(
            f"- sqlite watch delivery p99 = {p99:.2f} ms (target < "
            f"{TARGET_SQLITE_DELIVERY_P99_MS:.0f} ms): {ok}"
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--ops", type=int, default=2000, help="timed ops per op kind and backend")
    p.add_argument("--idle-seconds", type=float, default=3.0,
                   help="sqlite: idle CPU of an open store with a watch, per mode (0: skip)")
    p.add_argument("--warmup", type=int, default=200, help="untimed ops before each op kind")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)} (etcd = Shoal's backend)",
    )
    p.add_argument("--value-size", type=int, default=128, help="bytes per value")
    p.add_argument("--keys", type=int, default=100, help="distinct keys for put/get")
    p.add_argument("--chunk", type=int, default=50, help="ops per backend per round")
    p.add_argument("--no-fsync", action="store_true", help="start etcd with --unsafe-no-fsync")
    p.add_argument(
        "--time-limit", type=float, default=110.0, help="abort the measurement after N seconds"
    )
    args = p.parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        p.error(f"--backends: unknown {bad}; choose from {','.join(BACKENDS)}")
    args.backends = [b for b in BACKENDS if b in names]  # fixed order in the table
    if args.ops < 1 or args.warmup < 0 or args.value_size < 1 or args.keys < 1 or args.chunk < 1:
        p.error("--ops, --value-size, --keys and --chunk must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needs_etcd = "etcd" in args.backends or "raw" in args.backends
    needs_pg = "postgres" in args.backends or "rawpg" in args.backends
    cluster: EtcdCluster | None = None
    pg_server: PgServer | None = None
    version = "-"
    started = time.monotonic()
    try:
        endpoint = None
        if needs_etcd:
            binary = find_etcd_binary()
            version = etcd_version(binary)
            cluster = EtcdCluster(members=1, binary=binary, no_fsync=args.no_fsync)
            cluster.start()
            endpoint = cluster.endpoints[0]
        pg_dsn = None
        if needs_pg:
            pg_server = PgServer()
            pg_server.start()
            pg_dsn = pg_server.dsn()
        with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:

            async def bounded() -> dict[str, Any]:
                async with asyncio.timeout(args.time_limit):
                    return await bench_all(args, endpoint, Path(tmp), pg_dsn)

            result = asyncio.run(bounded())
    finally:
        if cluster is not None:
            cluster.stop()  # kills the etcd process it started, by PID
        if pg_server is not None:
            pg_server.stop()  # the PostgreSQL server it started, by PID
    elapsed = time.monotonic() - started
    load = os.getloadavg()
    samples = result["samples"]
    print(f"# store benchmark — {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"etcd {version} (1 member, fsync {'off' if args.no_fsync else 'on'}), "
        f"load avg {load[0]:.2f}/{load[1]:.2f}"
    )
    print(
        f"# {args.ops} timed ops per op and backend after {args.warmup} warm-up, "
        f"{args.value_size}-byte values, {args.keys} keys, interleaved in rounds of "
        f"{args.chunk}; total {elapsed:.1f}s"
    )
    print(f"# command: python benchmarks/store.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    for line in table(samples, args.backends):
        print(line)
    print()
    for line in verdicts(samples, args.backends):
        print(line)
    for mode, pct in result["idle"].items():
        print(f"- sqlite idle CPU, one store with one watch, {mode}: {pct:.2f}%")
    early = {LABELS[k]: v for k, v in result["early"].items() if v}
    if early:
        print(f"- watch events that arrived before their put returned (counted 0 ms): {early}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
