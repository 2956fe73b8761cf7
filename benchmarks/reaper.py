"""The reaper alone: from a node's death to its lease revoked, and the CPU it costs.

    python benchmarks/reaper.py                     # etcd and SQLite, 20 runs each
    python benchmarks/reaper.py --stores sqlite --reps 10 --keys 200

For each run: a lease with ``--keys`` keys on it (a node owning that many duties),
a reaper started as a node starts it (``shoal.runtime.reaper.Reaper.start`` with
the store settings ``NodeSettings.from_config`` resolves for that store) and told
the lease; once it is ready (``--settle`` seconds), the pipe's write end is closed
(what the kernel does when the node dies, even by ``kill -9``). Measured, per run:

* **revoked**: from closing the pipe until this process's own store sees the keys
  gone (a watch event: what the other nodes wait for);
* **exited**: from closing the pipe until the reaper has exited (``os.wait4``);
* **CPU after the death**: the CPU the reaper used from the close to its exit
  (its total from ``wait4``'s rusage minus what ``/proc/PID/schedstat`` showed just
  before the close). In a mass failover this CPU is taken from the same cores the
  surviving nodes need (``benchmarks/scale.py``).

One etcd (``EtcdCluster``, 1 member, 127.0.0.1, free ports) or one SQLite file in a
temporary directory. Every child is ended by PID; the run is bounded by
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.config import parse_config
from shoal.runtime.reaper import Reaper
from shoal.runtime.settings import NodeSettings
from shoal.store.protocol import EventType, Put, Store
from shoal.testing.etcd_server import EtcdCluster


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples p99 is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _cpu_ns(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


async def _gone(store: Store, keys: set[str], revision: int) -> float:
    """time.perf_counter() when the watch has shown every key in ``keys`` deleted."""
    left = set(keys)
    async for ev in store.watch("bench/", revision + 1):
        if ev.type is EventType.DELETE:
            left.discard(ev.kv.key)
        if not left:
            return time.perf_counter()
    raise RuntimeError("watch ended")


async def one_run(
    store: Store, config: dict[str, Any], keys: int, settle: float
) -> dict[str, float]:
    lease = await store.grant(30)
    names = {f"bench/{lease.id}/{i}" for i in range(keys)}
    result = None
    for chunk in [sorted(names)[i:i + 100] for i in range(0, keys, 100)]:
        result = await store.txn([], [Put(k, b"x", lease.id) for k in chunk], [])
    assert result is not None
    reaper = Reaper.start(NodeSettings.from_config(parse_config(config)).reaper_store)
    pid = reaper.pid
    try:
        reaper.watch_lease(lease.id)
        await asyncio.sleep(settle)
        watcher = asyncio.create_task(_gone(store, names, result.revision))
        await asyncio.sleep(0.05)  # the watch is in place
        before = _cpu_ns(pid)
        t0 = time.perf_counter()
        os.close(reaper._fd)  # what the kernel does when the node process dies
        reaper._closed = True
        _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)
        exited = time.perf_counter()
        revoked = await asyncio.wait_for(watcher, 10)
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"reaper exited with status {status}")
    cpu = (usage.ru_utime + usage.ru_stime) * 1e9 - before
    return {"revoked": revoked - t0, "exited": exited - t0, "cpu": cpu / 1e9}


async def bench(
    name: str, reps: int, keys: int, settle: float, workdir: Path
) -> list[dict[str, float]]:
    etcd = EtcdCluster(members=1) if name == "etcd" else None
    store: Store
    try:
        if etcd is not None:
            etcd.start()
            from shoal.store.etcd import EtcdStore

            section: dict[str, Any] = {"endpoints": list(etcd.endpoints), "prefix": "/reaper-bench"}
            store = await EtcdStore.open(section["endpoints"], prefix=section["prefix"])
        else:
            from shoal.store.sqlite import SqliteStore

            section = {"path": str(workdir / "shoal.db")}
            store = await SqliteStore.open(section["path"])
        config = {"cluster": "reaper-bench", "node": {"name": "n1"},
                  "store": {"backend": name, name: section}, "reaper": {"enabled": True}}
        try:
            return [await one_run(store, config, keys, settle) for _ in range(reps)]
        finally:
            await store.aclose()
    finally:
        if etcd is not None:
            etcd.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stores", default="etcd,sqlite")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--keys", type=int, default=200, help="keys on the revoked lease")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between the reaper's start and the death")
    parser.add_argument("--max-seconds", type=int, default=300)
    args = parser.parse_args(argv)
    signal.alarm(args.max_seconds)  # bound the whole run (children are ended by PID)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal-reaper-bench-") as tmp:
        for name in args.stores.split(","):
            runs = asyncio.run(bench(name, args.reps, args.keys, args.settle, Path(tmp)))
            for label, key in (("revoked: keys gone, seen by a watch", "revoked"),
                               ("reaper exited", "exited"),
                               ("reaper CPU from the death to its exit", "cpu")):
                s = [r[key] * 1000 for r in runs]
                rows.append(f"| {name} | {label} | {len(s)} | {pct(s, 50):.1f} / "
                            f"{pct(s, 99):.1f} ms | {min(s):.1f} - {max(s):.1f} ms |")
    print(f"\n{dt.date.today()}: {args.keys} keys on the lease, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}\n")
    print("| store | measurement | runs | p50 / p99 | min - max |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
