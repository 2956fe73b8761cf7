"""Failover faster than a lease: Shoal vs OpenStack tooz (redis, etcd3gw, postgresql),
real processes.

    python benchmarks/failover.py                # --reps 10, everything, ~3 min on 2 cores
    python benchmarks/failover.py --reps 3 --contenders shoal
    python benchmarks/failover.py --contenders shoal-postgres,tooz-postgresql

On PostgreSQL (``shoal-postgres``, ``tooz-postgresql``) a PostgreSQL server is started
too (``shoal.testing.pg_server``, free port, stopped by PID): Shoal's nodes use the
postgres backend; tooz's postgresql driver holds advisory locks (it has no groups, so
no (e) for it); (d) compares Shoal's acquire with the same create-if-absent
transaction issued through raw psycopg (the statements of the postgres store: BEGIN
with the revision lock and the compare read, the put, the revision update with COMMIT).

One real etcd (``EtcdCluster``, 127.0.0.1, free ports) and one redis-server (free port,
no persistence) are started; then, one contender after the other, in this process run:

Shoal -- 3 ``shoal run benchmarks/failover_app.py:app`` node processes (``local`` preset:
TTL 2 s, keep-alive every 0.667 s; reaper on; ``rebalance_delay`` 600 s so that the
duty moves only because of the fault). The duty ``bench`` prints ``time.time()`` as the
first thing it does on a node (see ``failover_app.py``).

  (a) crash:     kill -9 of the owner's node process (its reaper alive) -> new owner runs
  (b) machine:   kill -9 of the owner's reaper, then of its node process -> new owner runs
  (c) graceful:  SIGTERM to the owner (drain) -> new owner runs
  (d) acquire:   Shoal's ownership acquire (create-if-absent txn through EtcdStore) vs a
                 raw etcd3aio txn (compare create_revision == 0, put with lease), same
                 etcd, same lease, interleaved, in this process; then 40 more raw
                 txns, each after 0.2-0.6 s idle: a round trip from idle, as the
                 first write of a handover makes it
  (e) join:      a 4th node joins -> the 3 others print ``joined <name>``; from the
                 registration (``joined_at`` in its node record: taken just before the
                 register txn is sent) to the LAST of the 3 status lines (ms stamps)

tooz -- 3 ``benchmarks/failover_tooz.py worker`` processes per driver (own processes:
tooz's etcd3gw driver never shares a process with etcd3aio), same TTL (lock_timeout =
membership_timeout = 2 s; tooz heartbeats every TTL/2), competing for one tooz lock
with an acquire loop (non-blocking ``acquire`` + ``run_watchers()`` every ``--tooz-poll``
seconds, default 0.05). The winner prints ``time.time()``. For tooz (a) and (b) are the
same measurement (no reaper): kill -9 of the owner. (c): SIGTERM -> the owner releases
the lock. (d): non-blocking acquire of a free lock. (e): a 4th member joins the group;
the 3 others see it through ``watch_join_group`` + ``run_watchers``.

The fault is injected at a random moment (0-1 s after the cluster is stable) and the
kill time is ``time.time()`` in this process, compared with the wall-clock time the new
owner printed (same machine, same clock). Every child is ended by PID in ``finally``;
the whole run is bounded by ``--max-seconds``.
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
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoal.testing.etcd_server import EtcdCluster
from shoal.testing.pg_server import PgServer
from shoal.testing.procs import NodeProcess, ProcCluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = f"{HERE / 'failover_app.py'}:app"
TOOZ_WORKER = HERE / "failover_tooz.py"
TTL = 2  # seconds, every contender
COLD_ITERS = 40  # (d): raw txns after idleness (about 16 s)
CONTENDERS = ("shoal", "tooz-redis", "tooz-etcd3gw", "shoal-postgres", "tooz-postgresql")
SCENARIOS = ("crash", "machine", "graceful", "acquire", "join")
BENCH_LINE = re.compile(r"^BENCH started bench node=(\S+) token=(\d+) at=([\d.]+)$", re.M)
STATUS_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d\.\d{3}) .*\| (\w+) \| leader \S+ \| members (\S+) \| runs (\S+)$", re.M
)


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples p99 is the maximum)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_first(
    sources: Sequence[Any], pattern: re.Pattern[str], marks: dict[int, int], timeout: float,
    poll: float = 0.01,
) -> tuple[Any, re.Match[str]]:
    """The first of ``sources`` (with ``output()``) whose output after its mark matches."""
    deadline = time.monotonic() + timeout
    while True:
        for src in sources:
            match = pattern.search(src.output(), marks[id(src)])
            if match:
                return src, match
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s.label}\n{s.output()[-1500:]}" for s in sources)
            raise TimeoutError(f"no {pattern.pattern!r} within {timeout:g} s\n{tails}")
        time.sleep(poll)


# -- Shoal ---------------------------------------------------------------------------
class ShoalRig:
    """3 ``shoal run`` nodes on one store (``store``: the config's ``store`` section);
    replaced after every fault."""

    def __init__(self, workdir: Path, store: dict[str, Any]) -> None:
        self.store = store
        base = {
            "cluster": "failover-bench",
            "store": store,
            "timings": {"preset": "local", "ttl": TTL, "rebalance_delay": 600},
            "reaper": {"enabled": True},
        }
        self.cluster = ProcCluster(workdir, base, app=APP)
        self.live: list[NodeProcess] = []
        self.seq = 0

    def new_node(self, prefix: str = "n") -> NodeProcess:
        self.seq += 1
        return self.cluster.spawn(f"{prefix}{self.seq}")

    def start(self, count: int = 3) -> None:
        for _ in range(count):
            self.live.append(self.new_node())
        self.wait_stable(timeout=60)

    def close(self) -> None:
        self.cluster.cleanup()

    @staticmethod
    def last_status(node: NodeProcess) -> re.Match[str] | None:
        matches = list(STATUS_LINE.finditer(node.output()))
        return matches[-1] if matches else None

    def wait_stable(self, timeout: float = 30.0) -> NodeProcess:
        """Every live node ACTIVE and seeing exactly the live set; one of them runs
        ``bench``. Returns that owner."""
        names = ",".join(sorted(n.name for n in self.live))
        deadline = time.monotonic() + timeout
        while True:
            owners: list[NodeProcess] = []
            ok = True
            for node in self.live:
                if not node.alive:
                    raise RuntimeError(f"{node.label} died:\n{node.output()[-3000:]}")
                status = self.last_status(node)
                if status is None or status.group(2) != "ACTIVE" or status.group(3) != names:
                    ok = False
                    break
                if "bench" in status.group(4).split(","):
                    owners.append(node)
            if ok and len(owners) == 1:
                return owners[0]
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.label}\n{n.output()[-1500:]}" for n in self.live)
                raise TimeoutError(f"shoal cluster not stable within {timeout:g} s\n{tails}")
            time.sleep(0.02)

    def failover(self, kind: str) -> float:
        """One fault of ``kind`` (crash / machine / graceful) on the owner of ``bench``;
        seconds from the fault to the new owner's ``BENCH started`` line."""
        owner = self.wait_stable()
        survivors = [n for n in self.live if n is not owner]
        marks = {id(n): n.mark() for n in survivors}
        reapers: list[int] = []
        if kind == "machine":
            owner.output()
            reapers = sorted(owner.reaper_pids)
            if not reapers:
                raise RuntimeError(f"{owner.label}: reaper pid unknown")
        time.sleep(random.uniform(0.0, 1.0))
        t0 = time.time()
        for pid in reapers:
            os.kill(pid, signal.SIGKILL)
        os.kill(owner.pid, signal.SIGTERM if kind == "graceful" else signal.SIGKILL)
        _, match = wait_first(survivors, BENCH_LINE, marks, timeout=TTL + 10)
        took = float(match.group(3)) - t0
        self.live.remove(owner)
        if kind == "graceful":
            code = owner.wait_exit(timeout=15)
            if code != 0:
                raise RuntimeError(f"{owner.label} exited {code} after SIGTERM")
        owner.stop()
        self.live.append(self.new_node())
        return took

    def join(self) -> float:
        """A 4th node joins: seconds from its registration to the last of the 3 others'
        ``joined <name>`` status lines. Then it leaves (SIGTERM)."""
        self.wait_stable()
        others = list(self.live)
        marks = {id(n): n.mark() for n in others}
        time.sleep(random.uniform(0.0, 1.0))
        joiner = self.new_node("j")
        try:
            pattern = re.compile(rf"^(\d\d:\d\d:\d\d\.\d{{3}}) joined {joiner.name} \|", re.M)
            stamps = [
                wait_first([n], pattern, marks, timeout=30)[1].group(1) for n in others
            ]
            joined_at = asyncio.run(self._joined_at(joiner.name))
            seen = [_stamp_to_epoch(s, joined_at) for s in stamps]
            took = max(seen) - joined_at
            left = {id(n): n.mark() for n in others}
            joiner.terminate()
            joiner.wait_exit(timeout=15)
            for n in others:
                wait_first([n], re.compile(rf" left {joiner.name} \|"), left, timeout=15)
        finally:
            joiner.stop()
        return took

    async def _joined_at(self, name: str) -> float:
        from shoal.config import StoreSection
        from shoal.store.factory import open_store

        store = await open_store(StoreSection(**self.store))
        try:
            kv = await store.get(f"nodes/{name}")
        finally:
            await store.aclose()
        if kv is None:
            raise RuntimeError(f"no node record for {name}")
        record = json.loads(kv.value)
        return float(record.get("joined_at") or record["started_at"])


def _stamp_to_epoch(stamp: str, near: float) -> float:
    """``HH:MM:SS.mmm`` (local time, as ``shoal run`` prints it) -> epoch seconds,
    taking the day of ``near``."""
    base = dt.datetime.fromtimestamp(near)
    clock = dt.datetime.strptime(stamp, "%H:%M:%S.%f").time()
    value = dt.datetime.combine(base.date(), clock).timestamp()
    if value - near > 43200:
        value -= 86400
    elif near - value > 43200:
        value += 86400
    return value


async def shoal_acquire(
    endpoints: Sequence[str], iters: int, warmup: int = 20, cold: int = COLD_ITERS
) -> dict[str, Any]:
    """Shoal's ownership acquire vs a raw etcd3aio create-if-absent txn (same etcd,
    same lease, interleaved, alternating which goes first). Then ``cold`` more raw
    txns, each after 0.2-0.6 s of idleness (client and etcd asleep, as for the first
    write of a handover or failover): what a round trip costs from idle."""
    from etcd3aio.client import Etcd3Client
    from etcd3aio.kv import KVService

    from shoal.primitives import ownership
    from shoal.store.etcd import EtcdStore

    prefix = f"/acq-{uuid.uuid4().hex[:8]}"
    store = await EtcdStore.open(endpoints, prefix=prefix)
    raw = Etcd3Client([e.split("://", 1)[1] for e in endpoints], rpc_max_attempts=1)
    await raw.connect()
    assert raw.kv is not None
    shoal: list[float] = []
    plain: list[float] = []
    try:
        lease = (await store.grant(60)).id

        async def one_shoal(i: int) -> float:
            t0 = time.perf_counter()
            token = await ownership.acquire(store, f"d{i}", "bench-node", lease, time.time())
            took = time.perf_counter() - t0
            assert token is not None
            return took

        async def one_raw(i: int) -> float:
            assert raw.kv is not None
            t0 = time.perf_counter()
            key = f"{prefix}/raw/d{i}".encode()
            value = json.dumps({"node": "bench-node", "since": time.time()}).encode()
            resp = await raw.kv.txn(
                [KVService.txn_compare_create_revision(key, 0)],
                [KVService.txn_op_put(key, value, lease=lease)],
                timeout=5, max_attempts=1,
            )
            took = time.perf_counter() - t0
            assert resp.succeeded
            return took

        for i in range(warmup + iters):
            pair = [one_shoal, one_raw] if i % 2 == 0 else [one_raw, one_shoal]
            got = {f: await f(i) for f in pair}
            if i >= warmup:
                shoal.append(got[one_shoal])
                plain.append(got[one_raw])
        idle: list[float] = []
        for i in range(cold):
            await asyncio.sleep(random.uniform(0.2, 0.6))
            idle.append(await one_raw(warmup + iters + i))
        await store.revoke(lease)
    finally:
        await raw.close()
        await store.aclose()
    return {"shoal": shoal, "raw": plain, "cold": idle}


async def shoal_acquire_pg(
    dsn: str, iters: int, warmup: int = 20, cold: int = COLD_ITERS
) -> dict[str, Any]:
    """Shoal's ownership acquire on the postgres store vs the same create-if-absent
    transaction through raw psycopg (same server, same lease, interleaved); then
    ``cold`` raw ones after idleness, as :func:`shoal_acquire`."""
    import psycopg

    from shoal.primitives import ownership
    from shoal.store._pg_sql import Sql
    from shoal.store.postgres import PostgresStore

    schema = f"acq_{uuid.uuid4().hex[:8]}"
    store = await PostgresStore.open(dsn, schema=schema)
    sql = Sql(schema)
    raw = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    shoal: list[float] = []
    plain: list[float] = []
    try:
        lease = (await store.grant(60)).id

        async def one_shoal(i: int) -> float:
            t0 = time.perf_counter()
            token = await ownership.acquire(store, f"d{i}", "bench-node", lease, time.time())
            took = time.perf_counter() - t0
            assert token is not None
            return took

        async def one_raw(i: int) -> float:
            t0 = time.perf_counter()
            key = f"raw/d{i}".encode()
            value = json.dumps({"node": "bench-node", "since": time.time()}).encode()
            cur = await raw.execute(f"BEGIN; {sql.lock_rev}; {sql.get_listed([key])}")
            cur.nextset()
            rev = int((await cur.fetchone())[0])
            cur.nextset()
            if await cur.fetchall():
                raise RuntimeError("raw: key exists")
            await raw.execute(sql.put, {"key": key, "value": value, "rev": rev + 1,
                                        "lease": lease})
            await raw.execute(f"{sql.finish(rev + 1)}; COMMIT")
            return time.perf_counter() - t0

        for i in range(warmup + iters):
            pair = [one_shoal, one_raw] if i % 2 == 0 else [one_raw, one_shoal]
            got = {f: await f(i) for f in pair}
            if i >= warmup:
                shoal.append(got[one_shoal])
                plain.append(got[one_raw])
        idle: list[float] = []
        for i in range(cold):
            await asyncio.sleep(random.uniform(0.2, 0.6))
            idle.append(await one_raw(warmup + iters + i))
        await store.revoke(lease)
    finally:
        await raw.close()
        await store.aclose()
    return {"shoal": shoal, "raw": plain, "cold": idle}


def run_shoal(
    workdir: Path, store: dict[str, Any], reps: int, iters: int, scenarios: Sequence[str],
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    postgres = store["backend"] == "postgres"
    name = "shoal-postgres" if postgres else "shoal"
    if "acquire" in scenarios:
        raw_name = "raw psycopg" if postgres else "raw etcd3aio"
        log(f"{name} (d) acquire: {iters} txns each, Shoal and {raw_name}")
        if postgres:
            acq = asyncio.run(shoal_acquire_pg(store["dsn_for_bench"], iters))
        else:
            acq = asyncio.run(shoal_acquire(store["etcd"]["endpoints"], iters))
        results["acquire"] = acq["shoal"]
        results["acquire-raw"] = acq["raw"]
        if acq.get("cold"):
            results["acquire-cold"] = acq["cold"]
    store = {k: v for k, v in store.items() if k != "dsn_for_bench"}
    rig = ShoalRig(workdir, store)
    try:
        log(f"{name}: starting 3 nodes")
        rig.start()
        for kind in ("crash", "machine", "graceful"):
            if kind not in scenarios:
                continue
            results[kind] = []
            for rep in range(reps):
                took = rig.failover(kind)
                results[kind].append(took)
                log(f"{name} {kind} #{rep + 1}: {took * 1000:.1f} ms")
        if "join" in scenarios:
            results["join"] = []
            for rep in range(reps):
                took = rig.join()
                results["join"].append(took)
                log(f"{name} join #{rep + 1}: {took * 1000:.1f} ms")
    finally:
        rig.close()
    return results


# -- tooz ------------------------------------------------------------------------------
class ToozProc:
    """One ``failover_tooz.py`` process with its log file."""

    def __init__(self, mode: str, url: str, member: str, workdir: Path, extra: list[str]) -> None:
        self.label = member
        self.member = member
        self.log_path = workdir / f"{member}.log"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(TOOZ_WORKER), mode, url, member, *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        return len(self.output())

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)


OWNER_LINE = re.compile(r"^OWNER id=(\S+) at=([\d.]+)$", re.M)


class ToozRig:
    """3 tooz worker processes competing for one lock; replaced after every fault."""

    def __init__(self, name: str, url: str, workdir: Path, poll: float, limit: float) -> None:
        self.name = name
        self.url = url
        self.workdir = workdir
        self.poll = poll
        self.limit = limit  # each worker exits by itself after this many seconds
        self.live: list[ToozProc] = []
        self.all: list[ToozProc] = []
        self.seq = 0

    def spawn(self, mode: str = "worker", prefix: str = "w") -> ToozProc:
        self.seq += 1
        member = f"{self.name}-{prefix}{self.seq}"
        extra = ["--poll", str(self.poll), "--max-seconds", str(self.limit)]
        proc = ToozProc(mode, self.url, member, self.workdir, extra)
        self.all.append(proc)
        return proc

    def start(self, count: int = 3) -> None:
        for _ in range(count):
            self.live.append(self.spawn())
        self.wait_stable(timeout=60)

    def close(self) -> None:
        for proc in self.all:
            proc.stop()

    def wait_stable(self, timeout: float = 30.0) -> ToozProc:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.live:
                if not proc.alive:
                    raise RuntimeError(f"{proc.label} died:\n{proc.output()[-3000:]}")
            ready = all("READY " in p.output() for p in self.live)
            owners = [p for p in self.live if OWNER_LINE.search(p.output())]
            if ready and len(owners) == 1:
                return owners[0]
            if len(owners) > 1:
                raise RuntimeError(f"{self.name}: two live lock owners: {owners}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.label}\n{p.output()[-1500:]}" for p in self.live)
                raise TimeoutError(f"{self.name} not stable within {timeout:g} s\n{tails}")
            time.sleep(0.02)

    def failover(self, kind: str) -> float:
        owner = self.wait_stable()
        survivors = [p for p in self.live if p is not owner]
        marks = {id(p): p.mark() for p in survivors}
        time.sleep(random.uniform(0.0, 1.0))
        t0 = time.time()
        os.kill(owner.pid, signal.SIGTERM if kind == "graceful" else signal.SIGKILL)
        _, match = wait_first(survivors, OWNER_LINE, marks, timeout=TTL + 15)
        took = float(match.group(2)) - t0
        self.live.remove(owner)
        if kind == "graceful":
            code = owner.proc.wait(15)
            if code != 0:
                raise RuntimeError(f"{owner.label} exited {code}:\n{owner.output()[-2000:]}")
        owner.stop()
        self.live.append(self.spawn())
        return took

    def join(self) -> float:
        self.wait_stable()
        others = list(self.live)
        marks = {id(p): p.mark() for p in others}
        time.sleep(random.uniform(0.0, 1.0))
        joiner = self.spawn("join", "j")
        try:
            joined = wait_first(
                [joiner], re.compile(r"^JOINED id=\S+ sent=([\d.]+) at=([\d.]+)$", re.M),
                {id(joiner): 0}, timeout=30,
            )[1]
            sent = float(joined.group(1))
            pattern = re.compile(rf"^SEEN member={re.escape(joiner.member)} by=\S+ at=([\d.]+)$",
                                 re.M)
            seen = [float(wait_first([p], pattern, marks, timeout=30)[1].group(1))
                    for p in others]
            os.kill(joiner.pid, signal.SIGTERM)
            joiner.proc.wait(15)
        finally:
            joiner.stop()
        return max(seen) - sent

    def acquire(self, iters: int) -> list[float]:
        member = f"{self.name}-acq"
        out = subprocess.run(
            [sys.executable, str(TOOZ_WORKER), "acquire", self.url, member,
             "--iters", str(iters)],
            capture_output=True, text=True, timeout=180, cwd=str(REPO),
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} acquire failed:\n{out.stdout}\n{out.stderr}")
        match = re.search(r"^ACQUIRE samples=(.*)$", out.stdout, re.M)
        assert match is not None, out.stdout
        return [float(x) for x in json.loads(match.group(1))]


def run_tooz(
    name: str, url: str, workdir: Path, reps: int, iters: int, poll: float,
    scenarios: Sequence[str], limit: float,
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    rig = ToozRig(name, url, workdir, poll, limit)
    try:
        if "acquire" in scenarios:
            log(f"{name} (d) acquire: {iters} free-lock acquires")
            results["acquire"] = rig.acquire(iters)
        log(f"{name}: starting 3 workers")
        rig.start()
        kinds = [k for k in ("crash", "graceful") if k in scenarios or
                 (k == "crash" and "machine" in scenarios)]
        for kind in kinds:
            results[kind] = []
            for rep in range(reps):
                took = rig.failover(kind)
                results[kind].append(took)
                log(f"{name} {kind} #{rep + 1}: {took * 1000:.1f} ms")
        if "crash" in results:
            results["machine"] = results["crash"]  # no reaper: the same fault
        if "join" in scenarios and name == "tooz-postgresql":
            log(f"{name}: no groups in this driver, no (e) join")
        elif "join" in scenarios:
            results["join"] = []
            for rep in range(reps):
                took = rig.join()
                results["join"].append(took)
                log(f"{name} join #{rep + 1}: {took * 1000:.1f} ms")
    finally:
        rig.close()
    return results


class RedisServer:
    """redis-server on a free 127.0.0.1 port, no persistence; stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                "redis-server not found: apt-get update && apt-get install -y redis-server"
            )
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return (f"redis://127.0.0.1:{self.port}?timeout=5&lock_timeout={TTL}"
                f"&membership_timeout={TTL}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- report ------------------------------------------------------------------------------
Check = Callable[[Sequence[float], dict[str, list[float]]], bool]
REFERENCES = ("acquire-raw", "acquire-cold")  # Shoal-only rows: no peer, no target
ROWS: list[tuple[str, str, str, Check | None]] = [
    ("crash", "(a) process crash: kill -9 node, reaper alive", "p99 < 50 ms",
     lambda s, _: pct(s, 99) < 0.050),
    ("machine", "(b) machine loss: kill -9 node + reaper", f"p99 < TTL + 0.6 s = {TTL + 0.6:g} s",
     lambda s, _: pct(s, 99) < TTL + 0.6),
    ("graceful", "(c) graceful handover: SIGTERM", "p99 < 10 ms",
     lambda s, _: pct(s, 99) < 0.010),
    ("acquire", "(d) duty acquisition (one txn)", "p50 <= 1.5 x raw etcd txn",
     lambda s, r: pct(s, 50) <= 1.5 * pct(r["acquire-raw"], 50)),
    ("acquire-raw", "(d) reference: raw etcd3aio txn", "-", None),
    ("acquire-cold", "(d) reference: raw etcd3aio txn after 0.2-0.6 s idle", "-", None),
    ("join", "(e) 4th node joins, seen by all 3", "p99 < 10 ms",
     lambda s, _: pct(s, 99) < 0.010),
]


def fmt(samples: Sequence[float] | None) -> str:
    if not samples:
        return "-"

    def one(v: float) -> str:
        ms = v * 1000
        return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"

    return f"{one(pct(samples, 50))} / {one(pct(samples, 99))}"


def ratio(other: Sequence[float] | None, shoal: Sequence[float] | None) -> str:
    if not other or not shoal:
        return "-"
    return f"{pct(other, 50) / pct(shoal, 50):.1f}x"


def table(results: dict[str, dict[str, list[float]]]) -> str:
    shoal = results.get("shoal", {})
    redis = results.get("tooz-redis", {})
    gw = results.get("tooz-etcd3gw", {})
    lines = [
        "| scenario | target (Shoal) | Shoal p50 / p99 ms | met | tooz-redis p50 / p99 ms "
        "| tooz-etcd3gw p50 / p99 ms | p50 ratio redis / Shoal | p50 ratio etcd3gw / Shoal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label, target, check in ROWS:
        mine = shoal.get(key)
        met = "-"
        if check is not None and mine:
            met = "yes" if check(mine, shoal) else "**no**"
        if key in REFERENCES:
            lines.append(f"| {label} | {target} | {fmt(mine)} | - | - | - | - | - |")
            continue
        if key == "acquire" and mine and shoal.get("acquire-raw"):
            target += f" ({pct(mine, 50) / pct(shoal['acquire-raw'], 50):.2f} x)"
        note = " (= a)" if key == "machine" else ""
        cells = [f"{fmt(c.get(key))}{note}" if c.get(key) else "-" for c in (redis, gw)]
        lines.append(
            f"| {label} | {target} | {fmt(mine)} | {met} | {cells[0]} | {cells[1]} "
            f"| {ratio(redis.get(key), mine)} | {ratio(gw.get(key), mine)} |"
        )
    return "\n".join(lines)


def table_pg(results: dict[str, dict[str, list[float]]]) -> str:
    """Shoal on PostgreSQL vs tooz's postgresql driver (advisory locks)."""
    shoal = results.get("shoal-postgres", {})
    tooz = results.get("tooz-postgresql", {})
    lines = [
        "| scenario | target (Shoal) | Shoal-on-postgres p50 / p99 ms | met "
        "| tooz-postgresql p50 / p99 ms | p50 ratio tooz / Shoal |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, target, check in ROWS:
        mine = shoal.get(key)
        met = "-"
        if check is not None and mine:
            met = "yes" if check(mine, shoal) else "**no**"
        label = label.replace("raw etcd3aio", "raw psycopg (same statements)")
        target = target.replace("raw etcd txn", "raw txn")
        if key == "acquire" and mine and shoal.get("acquire-raw"):
            target += f" ({pct(mine, 50) / pct(shoal['acquire-raw'], 50):.2f} x)"
        if key in REFERENCES and not mine:
            continue
        theirs = tooz.get(key) if key not in REFERENCES else None
        note = " (= a)" if key == "machine" and theirs else ""
        lines.append(f"| {label} | {target} | {fmt(mine)} | {met} | "
                     f"{fmt(theirs) + note if theirs else '-'} | {ratio(theirs, mine)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="faults per scenario (default 10)")
    parser.add_argument("--acquire-iters", type=int, default=300,
                        help="acquisitions measured for (d) (default 300)")
    parser.add_argument("--tooz-poll", type=float, default=0.05,
                        help="tooz workers' acquire/run_watchers period, s (default 0.05)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--etcd-members", type=int, default=1)
    parser.add_argument("--etcd-no-fsync", action="store_true",
                        help="start etcd with --unsafe-no-fsync (to tell the disk's share "
                             "from the rest; not how to run etcd)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (fault timing)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw samples here")
    parser.add_argument("--max-seconds", type=int, default=900,
                        help="abort (and clean up) after this long (default 900)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for c in contenders:
        if c not in CONTENDERS:
            parser.error(f"unknown contender {c!r}")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    os.environ["SHOAL_BENCH_PARENT"] = str(os.getpid())  # nodes exit if we die
    os.environ["SHOAL_BENCH_MAX_SECONDS"] = str(args.max_seconds + 60)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-failover-"))
    started = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {}
    etcd = EtcdCluster(members=args.etcd_members, no_fsync=args.etcd_no_fsync)
    redis: RedisServer | None = None
    pg: PgServer | None = None
    try:
        etcd.start()
        endpoints = list(etcd.endpoints)
        log(f"etcd {args.etcd_members} member(s) at {', '.join(endpoints)}; work dir {workdir}")
        etcd_store = {"backend": "etcd", "etcd": {
            "endpoints": endpoints, "prefix": f"/failover-{uuid.uuid4().hex[:8]}"}}
        runners: dict[str, Callable[[], dict[str, list[float]]]] = {
            "shoal": lambda: run_shoal(workdir / "shoal", etcd_store, args.reps,
                                       args.acquire_iters, scenarios),
        }
        if any(c.endswith("postgres") or c.endswith("postgresql") for c in contenders):
            pg = PgServer()
            pg.start()
            log(f"postgres pid {pg.pid} on {pg.host}:{pg.port}")
            pg_store = {"backend": "postgres", "dsn_for_bench": pg.dsn(), "postgres": {
                "host": pg.host, "port": pg.port, "user": pg.user, "dbname": "postgres",
                "password": pg.password, "schema": f"failover_{uuid.uuid4().hex[:8]}"}}
            runners["shoal-postgres"] = lambda: run_shoal(
                workdir / "shoal-postgres", pg_store, args.reps, args.acquire_iters, scenarios)
            pg_url = (f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/postgres")
            runners["tooz-postgresql"] = lambda: run_tooz(
                "tooz-postgresql", pg_url, workdir / "tooz-postgresql", args.reps,
                args.acquire_iters, args.tooz_poll, scenarios, args.max_seconds)
        if "tooz-redis" in contenders:
            redis = RedisServer(workdir)
            log(f"redis-server pid {redis.proc.pid} on 127.0.0.1:{redis.port}")
            redis_url = redis.url
            runners["tooz-redis"] = lambda: run_tooz(
                "tooz-redis", redis_url, workdir / "tooz-redis", args.reps,
                args.acquire_iters, args.tooz_poll, scenarios, args.max_seconds)
        host = endpoints[0].split("://", 1)[1]
        gw_url = f"etcd3+http://{host}?timeout=5&lock_timeout={TTL}&membership_timeout={TTL}"
        runners["tooz-etcd3gw"] = lambda: run_tooz(
            "tooz-etcd3gw", gw_url, workdir / "tooz-etcd3gw", args.reps, args.acquire_iters,
            args.tooz_poll, scenarios, args.max_seconds)
        for name in contenders:
            (workdir / name).mkdir(parents=True, exist_ok=True)
            results[name] = runners[name]()
    finally:
        signal.alarm(0)
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()
        etcd.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(f"reps {args.reps}, TTL {TTL} s, tooz poll {args.tooz_poll * 1000:g} ms, "
          f"etcd members {args.etcd_members}"
          f"{' (--unsafe-no-fsync)' if args.etcd_no_fsync else ''}, seed {seed}, "
          f"{os.cpu_count()} CPUs, "
          f"took {elapsed:.0f} s")
    print()
    if any(c in results for c in ("shoal", "tooz-redis", "tooz-etcd3gw")):
        print(table(results))
    if any(c in results for c in ("shoal-postgres", "tooz-postgresql")):
        print()
        print(table_pg(results))
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "seed": seed,
             "elapsed_s": elapsed,
             "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
