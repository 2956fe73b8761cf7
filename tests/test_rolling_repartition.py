"""Changing a partition count without a full stop, with 3 real node processes
on the SQLite store: release 1 declares ``ingest`` (64 partitions), release 2
``ingest`` and ``ingest-v2`` (128) with a :class:`~shoal.runtime.cutover.Cutover`,
release 3 ``ingest-v2`` only. The nodes are rolled one at a time (SIGTERM:
drain, start the next release) while a producer keeps adding items. Every item
is handled exactly once, by one family, on the right side of its partition's
seal; no node refuses to start during the roll."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from shoal.cli.status import fetch_view
from shoal.config import load_config
from shoal.store.factory import open_store
from shoal.store.protocol import Put, Store
from shoal.testing.procs import ProcCluster

pytestmark = pytest.mark.slow
T = TypeVar("T")
OLD, NEW = 64, 128
APP = '''
import json, os
from shoal.runtime.app import App
from shoal.runtime.cutover import Cutover
from shoal.store.protocol import Put

RELEASE = int(os.environ["REPART_RELEASE"])
LOG = os.environ["REPART_LOG"]
app = App("repart", version=str(RELEASE))
cutover = Cutover("ingest", 64, "ingest-v2")


def items(ctx, buckets, after):
    """(seq, k) of the items in ``buckets`` (k % 128) past ``after``, in order."""
    out = []
    for b in buckets:
        for key, doc in ctx.state.items(f"items.{b}").items():
            if int(key) > after(doc.value["k"], int(key)):
                out.append((int(key), doc.value["k"]))
    return sorted(out)


async def progress(ctx):
    """The last item this partition handled, read from the store: the local copy
    may not have the previous owner's last commit yet."""
    kv = await ctx.store.get(f"state/progress/{ctx.name}")
    return 0 if kv is None else json.loads(kv.value)["last"]


async def handle(ctx, family, seq, k, compares):
    res = await ctx.txn(compares, [
        Put(f"state/handled/{family}.{seq}", json.dumps({"k": k, "node": ctx.node}).encode()),
        Put(f"state/progress/{ctx.name}", json.dumps({"last": seq}).encode()),
    ])
    if res.succeeded:
        with open(LOG, "a") as f:
            f.write(f"{family} {ctx.partition} {seq} {k} {ctx.node}\\n")
    return res.succeeded


async def ingest(ctx):
    last = await progress(ctx)
    while not ctx.stopping:
        if cutover.sealed(ctx) is not None:
            break  # sealed by an earlier owner: nothing left to do
        if RELEASE >= 2 and cutover.requested(ctx):
            await cutover.seal(ctx, last)  # the items after `last` are the new family's
            break
        compares = [cutover.guard(ctx)]
        for seq, k in items(ctx, (ctx.partition, ctx.partition + 64), lambda k, s: last):
            if not await handle(ctx, "ingest", seq, k, compares):
                break  # sealed meanwhile
            last = seq
        await ctx.sleep(0.2)
    await ctx.stopping.wait()  # sealed: idle until handed over


async def ingest_v2(ctx):
    bounds = await cutover.boundaries(ctx)
    if bounds is None:
        return
    last = await progress(ctx)
    while not ctx.stopping:
        past = lambda k, s: max(last, bounds[k % 64])
        for seq, k in items(ctx, (ctx.partition,), past):
            await handle(ctx, "ingest-v2", seq, k, [])
            last = seq
        await ctx.sleep(0.2)


if RELEASE <= 2:
    app.duty("ingest", partitions=64)(ingest)
if RELEASE >= 2:
    app.duty("ingest-v2", partitions=128)(ingest_v2)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Side:
    """The test's own connection to the store, on a loop in a thread; also the
    producer adding one item every ``period`` seconds."""

    def __init__(self, config_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store: Store = self.call(open_store(load_config(config_path)))
        self.produced: dict[int, int] = {}  # seq -> k
        self.producing = threading.Event()
        self.producer: threading.Thread | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def keys(self, prefix: str) -> dict[str, bytes]:
        res = self.call(self.store.range(prefix))
        return {kv.key[len(prefix):]: kv.value for kv in res.kvs}

    def produce(self, period: float = 0.05) -> None:
        rng = random.Random(14)

        def loop() -> None:
            seq = 0
            while self.producing.is_set():
                seq += 1
                k = rng.randrange(1 << 20)
                value = json.dumps({"k": k}).encode()
                self.call(self.store.txn([], [Put(f"state/items.{k % NEW}/{seq}", value)]))
                self.produced[seq] = k
                time.sleep(period)  # the producer's pace, not a synchronisation

        self.producing.set()
        self.producer = threading.Thread(target=loop, daemon=True)
        self.producer.start()

    def stop_producing(self) -> None:
        self.producing.clear()
        if self.producer is not None:
            self.producer.join(30)

    def close(self) -> None:
        self.stop_producing()
        self.call(self.store.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60,
               state: Callable[[], object] = lambda: "") -> None:
    """Poll ``check`` (bounded; generous because the machine may be loaded); on
    a timeout, say what was seen (``state``) so that a failure can be read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {state()}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def test_rolling_repartition_handles_every_item_once(tmp_path: Path) -> None:
    app_file = tmp_path / "repart_app.py"
    app_file.write_text(APP)
    log = tmp_path / "handled.log"
    base = {
        "cluster": "repart",
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "shoal.db")}},
        "timings": {"preset": "local", "rebalance_delay": 1},
        "http": {"host": "127.0.0.1"},
    }
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(yaml.safe_dump({**base, "node": {"name": "cli"}}))
    names = ["n1", "n2", "n3"]
    release: dict[str, int] = {}
    with ProcCluster(tmp_path, base, app=f"{app_file}:app") as procs:
        running: dict[str, Any] = {}

        urls: dict[str, str] = {}

        def start(name: str, rel: int) -> None:
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            proc = procs.node(name, http={"port": port})
            proc.env = {"REPART_RELEASE": str(rel), "REPART_LOG": str(log)}
            proc.start()
            proc.wait_for(r"joined cluster", timeout=60)  # never refused (exit 2)
            running[name], release[name] = proc, rel

        def owners(family: str) -> dict[str, str]:
            return {k: json.loads(v)["node"]
                    for k, v in side.keys(f"duties/{family}/").items()}

        def settled(name: str) -> bool:
            families = {1: ["ingest"], 2: ["ingest", "ingest-v2"], 3: ["ingest-v2"]}
            for family in families[release[name]]:
                owned = owners(family)
                want = OLD if family == "ingest" else NEW
                if len(owned) != want or name not in owned.values():
                    return False
                if set(owned.values()) - {n for n in running if family in families[release[n]]}:
                    return False  # a family's partitions only on nodes that declare it
            return True

        def roll(name: str, rel: int) -> None:
            running[name].terminate()  # SIGTERM: drain, hand over, exit
            assert running[name].proc.wait(30) == 0
            del running[name]
            start(name, rel)
            wait_until(f"{name} at release {rel} settled", lambda: settled(name),
                       state=lambda: {f: Counter(owners(f).values())
                                      for f in ("ingest", "ingest-v2")})

        for name in names:
            start(name, 1)
        side = Side(running["n1"].config_path)
        try:
            wait_until("release 1 settled", lambda: all(settled(n) for n in names))
            side.produce()
            # release 2, one node at a time; the cut-over is refused while one lags
            roll("n1", 2)
            declared = {n["name"]: n["partitions"] for n in fetch_view(urls["n2"])["nodes"]}
            assert declared == {"n1": {"ingest": OLD, "ingest-v2": NEW},
                                "n2": {"ingest": OLD}, "n3": {"ingest": OLD}}
            refused = cli("partitions", "cutover", "ingest", "ingest-v2", "-c", str(cli_config))
            assert refused.returncode == 2, refused
            assert "do not declare 'ingest-v2' yet (n2, n3)" in refused.stderr
            roll("n2", 2)
            roll("n3", 2)
            done = cli("partitions", "cutover", "ingest", "ingest-v2", "-c", str(cli_config))
            assert done.returncode == 0 and "requested" in done.stdout, done
            wait_until("every old partition sealed",
                       lambda: len(side.keys("state/shoal.cutover/ingest/")) == OLD)
            # a node of release 1 would not honour the seals: it refuses to start
            late = procs.node("late", http={"port": free_port()})
            late.env = {"REPART_RELEASE": "1", "REPART_LOG": str(log)}
            late.start()
            assert late.wait_exit(60) == 2
            assert "is being cut over to 'ingest-v2'" in late.output()
            still = cli("partitions", "forget", "ingest", "-c", str(cli_config))
            assert still.returncode == 2 and "n1, n2, n3" in still.stderr, still
            # release 3: the old family is dropped, node by node
            for name in names:
                roll(name, 3)
            gone = cli("partitions", "forget", "ingest", "-c", str(cli_config))
            assert gone.returncode == 0 and "forgotten" in gone.stdout, gone
            assert side.keys("meta/partitions/") == {"ingest-v2": b"128"}
            side.stop_producing()
            produced = dict(side.produced)

            def seqs() -> set[int]:
                return {int(k.rsplit(".", 1)[1]) for k in side.keys("state/handled/")}

            wait_until("every item handled", lambda: seqs() >= set(produced), timeout=30)
            handled = side.keys("state/handled/")
            seals = {int(k): json.loads(v)["last"]
                     for k, v in side.keys("state/shoal.cutover/ingest/").items()}
        finally:
            side.close()
    by_seq: dict[int, list[str]] = {}
    for key in handled:
        family, seq = key.rsplit(".", 1)
        by_seq.setdefault(int(seq), []).append(family)
    assert sorted(by_seq) == sorted(produced), "an item was lost"
    both = {s: f for s, f in by_seq.items() if len(f) > 1}
    assert not both, f"handled by both families: {both}"
    for seq, (family,) in by_seq.items():
        past_seal = seq > seals[produced[seq] % OLD]
        assert past_seal == (family == "ingest-v2"), (seq, family, seals[produced[seq] % OLD])
    lines = [line.split() for line in log.read_text().splitlines()]
    times = Counter(int(seq) for _, _, seq, _, _ in lines)
    assert set(times) == set(produced) and set(times.values()) == {1}, "handled twice"
    counts = Counter(by_seq[s][0] for s in by_seq)
    assert counts["ingest"] > 50 and counts["ingest-v2"] > 50, counts
