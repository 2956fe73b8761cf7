"""Replicated state: write -> visible on every node, local reads, memory; vs raw etcd3aio.

    python benchmarks/state.py                         # 500 writes, 100,000 docs, ~1 min
    python benchmarks/state.py --writes 200 --docs 20000

One real etcd (``EtcdCluster``, 1 member, 127.0.0.1, free ports) and, in the same run:

* 3 Shoal node processes (``benchmarks/state_app.py node``: ``Node.from_config`` +
  ``start``, ``lan`` timings, no reaper), each with a subscriber on the ``bench``
  namespace that prints ``CLOCK_MONOTONIC`` when its copy has the new value;
* 3 raw watcher processes (``benchmarks/state_app.py raw``): one etcd3aio client each,
  watching a raw prefix of the same etcd, printing the same clock on every event;
* in this process: a writer ``Node`` (4th member; ``node.state.put``) and a raw
  etcd3aio client (``kv.put`` of ``json.dumps`` of the same document).

(1) **write -> visible**: ``--writes`` sequential writes per system (after ``--warmup``),
    Shoal and raw interleaved (alternating which goes first), each of the same
    ``--value-size`` JSON document to one of 100 keys of the same length. Each write
    waits until all 3 watchers of its system reported it (closed loop: one write in
    flight), then a random 0-``--pause`` ms pause. Times are from just before the put
    (encoding included for both) to the watcher's report: the time on ONE node (3
    samples per write) and on ALL 3 (the last of the three).
(2) **local reads**: ``node.state.get`` in a tight loop in each node process for
    ``--read-seconds``: one hot key, and every key of the loaded namespace in a
    shuffled order (after (3) loaded it). One node at a time.
(3) **memory**: VmRSS of every node process (``/proc/PID/status``, after
    ``gc.collect()``) before and after ``--docs`` documents of ``--doc-size`` bytes
    (encoded JSON) were written by the writer node in transactions of ``--batch``
    puts and applied by all 3 nodes. Then a 4th node process starts cold (one range
    read of everything) and its time to ready and its RSS are reported too.

Every child is ended by PID in ``finally`` (they also exit when their stdin closes, and
after ``--max-seconds``); the whole run is bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from etcd3aio import Etcd3Client

from shoal.config import load_config
from shoal.runtime.app import App
from shoal.runtime.node import Node
from shoal.runtime.state import PutDoc
from shoal.testing.etcd_server import EtcdCluster, find_etcd_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "state_app.py"
TIMEOUT = 5.0
TARGET_VISIBLE_P99_MS = 10.0
TARGET_VISIBLE_RATIO = 2.0
TARGET_READS = 500_000
CLOCK = time.CLOCK_MONOTONIC


def now() -> float:
    return time.clock_gettime(CLOCK)


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def document(seq: int, size: int) -> dict[str, Any]:
    """A JSON document of exactly ``size`` bytes (compact encoding; ``size`` >= ~200):
    a few typed fields, a short list and a padding string."""
    doc: dict[str, Any] = {
        "seq": seq,
        "name": f"item-{seq:08d}",
        "owner": f"user{seq % 977}@example.org",
        "active": seq % 3 != 0,
        "score": round((seq * 7919 % 10007) / 101.0, 3),
        "tags": ["alpha", "beta", f"t{seq % 17}"],
        "limits": {"cpu": seq % 8 + 1, "memory_mb": 256 * (seq % 4 + 1)},
        "pad": "",
    }
    base = len(encode(doc))
    doc["pad"] = "x" * max(0, size - base)
    return doc


def encode(doc: Any) -> bytes:
    # What Shoal stores (shoal.runtime._state_model.encode_value): compact UTF-8 JSON.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# -- child processes -----------------------------------------------------------------------
class Child:
    """One ``state_app.py`` process: commands on stdin, ``SEEN``/``REPLY`` lines on stdout."""

    def __init__(self, label: str, argv: list[str], workdir: Path, pids: list[int]) -> None:
        self.label = label
        self.argv = argv
        self.log_path = workdir / f"{label}.log"
        self.pids = pids
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.on_seen: Any = None  # callable(label, seq, t)
        self._reader: asyncio.Task[None] | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        with self.log_path.open("ab") as err:
            self.started_at = now()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, cwd=str(REPO), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                limit=1 << 20,
            )
        self.pids.append(self.proc.pid)
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self.replies.put_nowait({"error": "process ended", "eof": True})
                return
            text = line.decode()
            if text.startswith("SEEN "):
                _, seq, t = text.split()
                if self.on_seen is not None:
                    self.on_seen(self.label, int(seq), float(t))
            elif text.startswith("REPLY "):
                self.replies.put_nowait(json.loads(text[6:]))

    async def call(self, command: str, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            out = await asyncio.wait_for(self.replies.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.label}: no reply to {command!r} within {timeout:g} s\n"
                               + self.tail()) from None
        if "error" in out:
            raise RuntimeError(f"{self.label}: {command!r} failed: {out['error']}\n" + self.tail())
        return out

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def rss(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(rest.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    def cpu(self) -> float:
        """CPU seconds used so far by every thread of the process (schedstat, ns)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class Expect:
    """Futures per write sequence number: done when every expected watcher saw it."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[set[str], dict[str, float], asyncio.Future[None]]] = {}

    def add(self, seq: int, labels: Sequence[str]) -> tuple[dict[str, float], asyncio.Future[None]]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        times: dict[str, float] = {}
        self.pending[seq] = (set(labels), times, fut)
        return times, fut

    def seen(self, label: str, seq: int, t: float) -> None:
        entry = self.pending.get(seq)
        if entry is None:
            return
        remaining, times, fut = entry
        if label in remaining:
            remaining.discard(label)
            times[label] = t
            if not remaining:
                del self.pending[seq]
                if not fut.done():
                    fut.set_result(None)


# -- the run --------------------------------------------------------------------------------
def node_config(endpoint: str, prefix: str, name: str) -> dict[str, Any]:
    return {
        "cluster": "state-bench",
        "node": {"name": name},
        "store": {"backend": "etcd", "etcd": {"endpoints": [endpoint], "prefix": prefix}},
        "timings": {"preset": "lan"},
        "reaper": {"enabled": False},
    }


async def run(args: argparse.Namespace, endpoint: str, workdir: Path,
              pids: list[int]) -> dict[str, Any]:
    prefix = f"/sb-{uuid.uuid4().hex[:8]}"
    raw_prefix = f"{prefix}/rawst/bench/"  # same length as "{prefix}/state/bench/"
    limit = str(args.max_seconds + 60)
    expect = Expect()
    children: list[Child] = []
    nodes: list[Child] = []
    raws: list[Child] = []
    for i in range(args.nodes):
        path = workdir / f"n{i + 1}.yaml"
        path.write_text(yaml.safe_dump(node_config(endpoint, prefix, f"n{i + 1}")))
        nodes.append(Child(f"n{i + 1}", [sys.executable, str(APP), "node", "--config", str(path),
                                         "--max-seconds", limit], workdir, pids))
        raws.append(Child(f"raw{i + 1}", [
            sys.executable, str(APP), "raw", "--endpoint", endpoint.removeprefix("http://"),
            "--prefix", raw_prefix, "--max-seconds", limit], workdir, pids))
    children = nodes + raws
    writer: Node | None = None
    raw_client = Etcd3Client([endpoint.removeprefix("http://")])
    out: dict[str, Any] = {}
    try:
        for child in children:
            child.on_seen = expect.seen
            await child.start()
        config = load_config(None, env={}, overrides=node_config(endpoint, prefix, "writer"))
        writer = await Node.from_config(App("state-bench"), config)
        await writer.start()
        await raw_client.connect()
        assert raw_client.kv is not None
        kv = raw_client.kv
        for child in children:
            await child.call("ping", timeout=60)
        log(f"{len(nodes)} nodes + {len(raws)} raw watchers ready "
            f"(pids {', '.join(str(c.pid) for c in children)})")

        # (1) write -> visible, interleaved
        samples: dict[str, dict[str, list[float]]] = {
            s: {"put": [], "one": [], "all": []} for s in ("shoal", "raw")
        }
        labels = {"shoal": [c.label for c in nodes], "raw": [c.label for c in raws]}
        seq = 0
        rng = random.Random(args.seed)
        cpu0 = {c.label: c.cpu() for c in children}
        for i in range(args.warmup + args.writes):
            order = ["shoal", "raw"] if i % 2 == 0 else ["raw", "shoal"]
            for system in order:
                seq += 1
                key = f"k{seq % 100:03d}"
                doc = document(seq, args.value_size)
                times, fut = expect.add(seq, labels[system])
                await asyncio.sleep(rng.uniform(0, args.pause / 1000))
                t0 = now()
                if system == "shoal":
                    await writer.state.put("bench", key, doc)
                else:
                    await kv.put((raw_prefix + key).encode(), encode(doc), timeout=TIMEOUT)
                t1 = now()
                try:
                    await asyncio.wait_for(fut, TIMEOUT)
                except TimeoutError:
                    raise TimeoutError(
                        f"{system} write {seq}: seen only by {sorted(times)}"
                    ) from None
                if i >= args.warmup:
                    s = samples[system]
                    s["put"].append(t1 - t0)
                    s["one"].extend(t - t0 for t in times.values())
                    s["all"].append(max(times.values()) - t0)
        out["visible"] = samples
        n = args.warmup + args.writes
        out["cpu_per_write"] = {
            system: [(c.cpu() - cpu0[c.label]) / n for c in group]
            for system, group in (("shoal", nodes), ("raw", raws))
        }
        log(f"(1) {args.writes} writes per system done")

        # (3) memory: before, load, after
        before: dict[str, tuple[int, int]] = {}
        for child in nodes:
            await child.call("gc")
            before[child.label] = child.rss()
        t_load = now()
        last_rev = 0
        batch: list[PutDoc] = []
        txns = 0
        for d in range(args.docs):
            batch.append(PutDoc("load", f"d{d:07d}", document(d, args.doc_size)))
            if len(batch) == args.batch or d == args.docs - 1:
                last_rev = await writer.state.transaction(batch)
                txns += 1
                batch = []
                if txns % 100 == 0:
                    log(f"(3) loaded {d + 1}/{args.docs}")
        t_written = now()
        applied: dict[str, float] = {}
        for child in nodes:
            got = await child.call(f"wait_rev {last_rev} 300", timeout=310)
            applied[child.label] = got["t"]
            if got["size"] < args.docs:
                raise RuntimeError(f"{child.label}: {got['size']} documents < {args.docs}")
        log(f"(3) {args.docs} docs written in {t_written - t_load:.1f} s; all applied "
            f"{max(applied.values()) - t_written:.2f} s later")
        after: dict[str, tuple[int, int]] = {}
        for child in nodes:
            await child.call("gc")
            after[child.label] = child.rss()
        out["memory"] = {"before": before, "after": after, "write_s": t_written - t_load,
                         "applied_s": {k: v - t_written for k, v in applied.items()},
                         "txns": txns}

        # (2) local reads, one node at a time
        reads: dict[str, dict[str, float]] = {}
        for child in nodes:
            reads[child.label] = {}
            for mode in ("hot", "spread"):
                got = await child.call(f"reads load {args.read_seconds} {mode}", timeout=60)
                if got["found_of_1000"] != 1000:
                    raise RuntimeError(f"{child.label}: reads found {got['found_of_1000']}/1000")
                reads[child.label][mode] = got["reads"] / got["seconds"]
                reads[child.label][mode + "-cpu"] = got["reads"] / got["cpu_seconds"]
        out["reads"] = reads
        log("(2) reads done")
        trimmed: dict[str, tuple[int, int]] = {}
        for child in nodes:
            await child.call("trim")
            trimmed[child.label] = child.rss()
        out["memory"]["trimmed"] = trimmed

        # (3b) a 4th node starting with everything already in the store
        path = workdir / "cold.yaml"
        path.write_text(yaml.safe_dump(node_config(endpoint, prefix, "cold")))
        cold = Child("cold", [sys.executable, str(APP), "node", "--config", str(path),
                              "--max-seconds", limit], workdir, pids)
        children.append(cold)
        await cold.start()
        got = await cold.call("ping", timeout=120)
        ready_s = now() - cold.started_at
        if got["size"] < args.docs:
            raise RuntimeError(f"cold: {got['size']} documents < {args.docs}")
        await cold.call("gc")
        rss = cold.rss()
        await cold.call("trim")
        out["cold"] = {"ready_s": ready_s, "rss": rss, "trimmed": cold.rss()}
        log(f"(3b) cold node ready in {ready_s:.1f} s")
        return out
    finally:
        for child in children:
            with contextlib.suppress(Exception):
                await child.stop()
        with contextlib.suppress(Exception):
            await raw_client.close()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.aclose()


# -- report ---------------------------------------------------------------------------------
def ms(v: float) -> str:
    v *= 1000
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def mb(v: float) -> str:
    return f"{v / 2**20:.0f}"


def report(args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    vis = out["visible"]
    lines = [
        "| measurement | target | Shoal | raw etcd3aio | Shoal / raw | met |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        ("put returned", "put", "-"),
        ("write -> visible on one node", "one", "-"),
        ("write -> visible on all 3 nodes", "all",
         f"p99 < {TARGET_VISIBLE_P99_MS:g} ms, <= {TARGET_VISIBLE_RATIO:g}x raw"),
    ]
    for label, key, target in rows:
        s, r = vis["shoal"][key], vis["raw"][key]
        cell_s = f"{ms(pct(s, 50))} / {ms(pct(s, 99))} ms"
        cell_r = f"{ms(pct(r, 50))} / {ms(pct(r, 99))} ms"
        ratio50 = pct(s, 50) / pct(r, 50)
        ratio99 = pct(s, 99) / pct(r, 99)
        met = "-"
        if key == "all":
            ok = (pct(s, 99) * 1000 < TARGET_VISIBLE_P99_MS
                  and ratio50 <= TARGET_VISIBLE_RATIO and ratio99 <= TARGET_VISIBLE_RATIO)
            met = "yes" if ok else "**no**"
        lines.append(f"| {label} (p50 / p99, n={len(s)}) | {target} | {cell_s} | {cell_r} "
                     f"| {ratio50:.2f}x / {ratio99:.2f}x | {met} |")
    cpu = out["cpu_per_write"]
    cpu_s, cpu_r = (sum(cpu[k]) / len(cpu[k]) for k in ("shoal", "raw"))
    lines.append(
        f"| CPU per write of each watching process (all threads, mean of "
        f"{len(cpu['shoal'])}) | - | {cpu_s * 1e6:.0f} µs | {cpu_r * 1e6:.0f} µs "
        f"| {cpu_s / cpu_r:.2f}x | - |"
    )
    reads = out["reads"]
    for mode, what in (("hot", "one hot key"), ("spread", f"{args.docs:,} keys, shuffled")):
        per = [reads[n][mode] for n in sorted(reads)]
        ok = "yes" if min(per) > TARGET_READS else "**no**"
        vals = " / ".join(f"{v / 1e6:.2f}M" for v in per)
        cpu = " / ".join(f"{reads[n][mode + '-cpu'] / 1e6:.2f}M" for n in sorted(reads))
        lines.append(f"| local reads/s per node ({what}; {' / '.join(sorted(reads))}) "
                     f"| > {TARGET_READS:,} | {vals} (per CPU-second: {cpu}) | - | - | {ok} |")
    mem = out["memory"]
    names = sorted(mem["after"])
    deltas = [mem["after"][n][0] - mem["before"][n][0] for n in names]
    lines.append(
        f"| RSS per node before -> after {args.docs:,} docs of {args.doc_size} B "
        f"({' / '.join(names)}) | - | "
        + " / ".join(f"{mb(mem['before'][n][0])} -> {mb(mem['after'][n][0])} MB" for n in names)
        + " | - | - | - |"
    )
    per_doc = sum(deltas) / len(deltas) / args.docs
    lines.append(
        f"| RSS growth per document (mean of {len(names)} nodes) | - | {per_doc:,.0f} B "
        f"({per_doc / args.doc_size:.1f}x the encoded size) | - | - | - |"
    )
    trimmed = [mem["trimmed"][n][0] - mem["before"][n][0] for n in names]
    per_trim = sum(trimmed) / len(trimmed) / args.docs
    lines.append(
        f"| the same after glibc `malloc_trim(0)` (freed heap handed back) | - | {per_trim:,.0f} B "
        f"({per_trim / args.doc_size:.1f}x) | - | - | - |"
    )
    hwm = max(mem["after"][n][1] for n in names)
    lines.append(f"| peak RSS of a node during the load (VmHWM, max) | - | {mb(hwm)} MB "
                 "| - | - | - |")
    applied = max(mem["applied_s"].values())
    lines.append(
        f"| load: {args.docs:,} docs in {mem['txns']:,} txns of {args.batch} from the writer "
        f"node | - | {mem['write_s']:.1f} s ({args.docs / mem['write_s']:,.0f} docs/s); "
        f"all 3 nodes applied {applied:.2f} s after the last txn returned | - | - | - |"
    )
    cold = out["cold"]
    lines.append(
        f"| a 4th node started after the load: process start -> joined with all docs; RSS "
        f"(after `malloc_trim`) | - | {cold['ready_s']:.1f} s; {mb(cold['rss'][0])} MB "
        f"({mb(cold['trimmed'][0])} MB) | - | - | - |"
    )
    steady = sum(mem["after"][n][0] for n in names) / len(names)
    ratio = cold["rss"][1] / steady
    lines.append(
        f"| the 4th node's peak RSS while joining (VmHWM) / a loaded node's steady RSS | "
        f"<= 1.5x | {mb(cold['rss'][1])} MB / {mb(steady)} MB = {ratio:.2f}x | - | - | "
        f"{'yes' if ratio <= 1.5 else 'no'} |"
    )
    return lines


def etcd_version(binary: str) -> str:
    import subprocess

    try:
        text = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in text.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=500, help="timed writes per system")
    p.add_argument("--warmup", type=int, default=50, help="untimed writes per system first")
    p.add_argument("--value-size", type=int, default=1024, help="bytes per written document")
    p.add_argument("--pause", type=float, default=2.0, help="random 0-N ms before each write")
    p.add_argument("--docs", type=int, default=100_000, help="documents for the memory test")
    p.add_argument("--doc-size", type=int, default=1024, help="bytes per loaded document")
    p.add_argument("--batch", type=int, default=100, help="puts per load transaction")
    p.add_argument("--read-seconds", type=float, default=1.0, help="per node and mode")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=int, default=420, help="abort (and clean up) after")
    p.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if min(args.writes, args.docs, args.batch, args.nodes) < 1 or args.value_size < 300 \
            or args.doc_size < 300 or args.batch > 128:
        p.error("--writes/--docs/--nodes >= 1, 1 <= --batch <= 128, sizes >= 300")

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-state-bench-"))
    binary = find_etcd_binary()
    etcd = EtcdCluster(members=1, binary=binary)
    pids: list[int] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    try:
        etcd.start()
        endpoint = etcd.endpoints[0]
        log(f"etcd at {endpoint}; work dir {workdir}")
        out = asyncio.run(run(args, endpoint, workdir, pids))
    finally:
        signal.alarm(0)
        for pid in pids:  # normally gone already (stopped by run()); only ours
            with contextlib.suppress(OSError):
                if str(APP).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        etcd.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    load = os.getloadavg()
    stamp = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    print(f"# replicated state benchmark — {stamp}")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"etcd {etcd_version(binary)} (1 member, fsync on); load avg (1/5 min) "
          f"{load0[0]:.2f}/{load0[1]:.2f} before, {load[0]:.2f}/{load[1]:.2f} after; "
          f"total {elapsed:.0f} s")
    print(f"# command: python benchmarks/state.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    for line in report(args, out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
