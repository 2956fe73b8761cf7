"""A chaos run: real ``shoal run`` nodes, real faults, the history checked against G1-G5.

    python -m shoal.testing.chaos --store etcd3 --nodes 5 --duration 120 --seed 1

Starts the store (a sqlite file, a 1- or 3-member etcd with one fault proxy per node
and member in front of it, or a PostgreSQL server with one fault proxy per node), N
nodes of :mod:`shoal.testing.chaos_app` (preset ``local``: TTL 2 s, with reapers), then
injects a seeded schedule of faults, one after the other:

* ``kill9``: ``kill -9`` of the owner of a random duty, restarted 0.3-1.5 s later;
* ``pause``: SIGSTOP of the owner of a random duty for 2.5-4 s (longer than the TTL;
  on sqlite never while it holds the write lock, which would stall every node);
* ``partition``: one node cut off from the store for 2.5-4 s (etcd: every proxy of the
  node cut or blackholed; sqlite: the node's store link, see chaos_app);
* ``member_kill`` (etcd3): ``kill -9`` of one etcd member, restarted 2-4 s later;
* ``store_outage``: the whole store gone for 2.5-4 s (etcd: every member killed, or
  every proxy cut; postgres: the server stopped (fast shutdown) and started again, or
  every proxy cut; sqlite: another process holds the write lock).

The schedule starts with a minimum of each kind (QUOTA) in an order shuffled by the
seed, then draws random kinds (seeded) until ``--duration`` seconds of faults have
passed. At the end it heals everything, waits the G3 bound, stops all writes, writes a
marker and waits for every node to apply it, reads the final state, stops the nodes
(SIGTERM) and checks the history (:mod:`shoal.testing.chaos_report`). Exit status 1 on
any violation or anomaly. Every process it started is ended by PID (nodes, reapers,
etcd, postgres); every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from shoal.config import StoreSection
from shoal.errors import InvalidArgument, ProcessError
from shoal.primitives.ownership import DUTIES as OWNERS
from shoal.primitives.ownership import Owner
from shoal.store.factory import open_store
from shoal.store.protocol import Delete, Put, Store
from shoal.testing.chaos_app import DOCS, DUTIES, LEADER_DUTY, STOP_FILE
from shoal.testing.chaos_report import ChaosResult, analyse, disagreeing, latest_applied
from shoal.testing.data_check import DOC_DUTY_PREFIX
from shoal.testing.etcd_server import EtcdCluster, etcd_version, member_view
from shoal.testing.history import HistoryRecorder, load_history
from shoal.testing.pg_server import PgServer
from shoal.testing.procs import NodeProcess
from shoal.testing.proxy import FaultProxy

__all__ = [
    "QUOTA", "STORES", "STORE_DIVERGED", "ChaosResult", "fault_kinds", "main", "quota_size",
    "run_chaos",
]  # fmt: skip

T = TypeVar("T")
APP = "shoal.testing.chaos_app:app"
TTL = 2
ETCD_TIMEOUT = 2.0
BOUND_S = TTL + 0.5 + TTL / 2 + TTL / 3 + 1.0  # G3 after the last heal: ttl + expiry tick
#   + grace (a non-preferred node takes a free duty) + rejoin backoff + watch/start slack
STORES = ("sqlite", "etcd1", "etcd3", "postgres")
STORE_DIVERGED = "store diverged"  # the start of the anomaly check_members_agree reports
KINDS = ("kill9", "pause", "partition", "member_kill", "store_outage")
QUOTA = {"kill9": 3, "pause": 2, "partition": 2, "member_kill": 1, "store_outage": 1}
WEIGHT = {"kill9": 3, "pause": 2, "partition": 2, "member_kill": 1, "store_outage": 1}
CHECKED_DUTIES = (*DUTIES, LEADER_DUTY)


def fault_kinds(store: str, seed: int) -> Iterator[str]:
    """The kinds of fault to inject, in order: QUOTA of each kind that applies to
    ``store``, shuffled by ``seed``; then random kinds (seeded, weighted) for ever."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if k != "member_kill" or store == "etcd3"]
    quota = [k for k in kinds for _ in range(QUOTA[k])]
    rng.shuffle(quota)
    yield from quota
    while True:
        yield rng.choices(kinds, weights=[WEIGHT[k] for k in kinds])[0]


def quota_size(store: str) -> int:
    return sum(n for k, n in QUOTA.items() if k != "member_kill" or store == "etcd3")


class _Hub:
    """One event-loop thread for every proxy and the driver's own store client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Chaos:
    def __init__(self, store: str, nodes: int, seed: int, workdir: Path, history: Path) -> None:
        if store not in STORES:
            raise InvalidArgument(f"store must be one of {STORES}, got {store!r}")
        self.kind, self.seed, self.workdir, self.history = store, seed, workdir, history
        self.rng = random.Random(seed * 7919 + 1)
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        self.rec = HistoryRecorder(history / "driver.jsonl", "driver")
        self.hub = _Hub()
        self.etcd: EtcdCluster | None = None
        self.pg: PgServer | None = None
        self.proxies: dict[str, list[FaultProxy]] = {}
        self.procs: dict[str, NodeProcess] = {}
        self.all_procs: list[NodeProcess] = []
        self.store: Store | None = None
        self.db = workdir / "shoal.db"
        self.anomalies: list[str] = []
        self.env = {"SHOAL_HISTORY_DIR": str(history)}
        self.docs: list[str] = []  # documents of the data namespace that exist now
        self._doc_seq = 0

    # -- setting up ---------------------------------------------------------------------
    def start(self) -> None:
        section: dict[str, Any]
        if self.kind == "sqlite":
            section = {"backend": "sqlite", "sqlite": {"path": str(self.db)}}
            self.env["SHOAL_CHAOS_LINK"] = "1"
        elif self.kind == "postgres":
            self.pg = PgServer()
            self.pg.start()
            section = {"backend": "postgres", "postgres": {
                "host": self.pg.host, "port": self.pg.port, "user": self.pg.user,
                "dbname": "postgres", "password": self.pg.password,
                "schema": f"chaos_{self.seed}", "timeout": ETCD_TIMEOUT}}
            for name in self.names:
                target = (self.pg.host, self.pg.port)
                self.proxies[name] = [self.hub.call(FaultProxy(target).start())]
        else:
            self.etcd = EtcdCluster(members=1 if self.kind == "etcd1" else 3, no_fsync=True)
            self.etcd.start()
            prefix = f"/chaos-{self.seed}"
            section = {"backend": "etcd", "etcd": {"endpoints": self.etcd.endpoints,
                                                   "prefix": prefix, "timeout": ETCD_TIMEOUT}}
            for name in self.names:
                self.proxies[name] = [self.hub.call(FaultProxy(ep).start())
                                      for ep in self.etcd.endpoints]  # fmt: skip
        self.section = section
        self.store = self.hub.call(open_store(StoreSection(**section)))
        for name in self.names:
            self.spawn(name)
        for name in self.names:
            self.procs[name].wait_for(r"joined cluster", timeout=60)

    def config(self, name: str) -> dict[str, Any]:
        store = json.loads(json.dumps(self.section))
        if name in self.proxies and self.kind == "postgres":
            host, port = self.proxies[name][0].listen_address
            store["postgres"].update(host=host, port=port)
        elif name in self.proxies:
            store["etcd"]["endpoints"] = [p.endpoint for p in self.proxies[name]]
        return {"cluster": "chaos", "node": {"name": name}, "store": store,
                "timings": {"preset": "local"}, "reaper": {"enabled": True},
                "params": {"history_dir": str(self.history)}}  # fmt: skip

    def spawn(self, name: str) -> NodeProcess:
        label = f"{name}.{sum(p.name == name for p in self.all_procs)}"
        proc = NodeProcess(name, self.config(name), self.workdir, app=APP, env=self.env,
                           label=label)  # fmt: skip
        self.all_procs.append(proc)
        self.procs[name] = proc.start()
        return proc

    def restart(self, name: str) -> None:
        """Start ``name`` again; retried while the old lease still holds the name (G6)."""
        for _ in range(20):
            proc = self.spawn(name)
            with contextlib.suppress(RuntimeError):
                proc.wait_for(r"joined cluster", timeout=60)
                return
            time.sleep(0.5)
        raise ProcessError(f"node {name} did not rejoin:\n{proc.output()[-2000:]}")

    # -- choosing targets ---------------------------------------------------------------
    def owner_of_random_duty(self) -> str:
        duty = self.rng.choice(CHECKED_DUTIES)
        assert self.store is not None
        with contextlib.suppress(Exception):
            kv = self.hub.call(self.store.get(OWNERS + duty), timeout=5)
            if kv is not None and Owner.decode(duty, kv).node in self.procs:
                return Owner.decode(duty, kv).node
        return self.rng.choice(self.names)

    # -- faults -------------------------------------------------------------------------
    def kill9(self) -> None:
        target = self.owner_of_random_duty()
        self.rec.fault("kill9", target)
        self.procs[target].kill9()
        time.sleep(self.rng.uniform(0.3, 1.5))
        self.restart(target)
        self.rec.heal("kill9", target)

    def pause(self) -> None:
        target = self.owner_of_random_duty()
        proc = self.procs[target]
        for _ in range(100):
            proc.sigstop()
            if self.kind != "sqlite" or not self._sqlite_locked():
                break
            proc.sigcont()  # it holds the write lock: a pause would stall every node
            time.sleep(0.03)
        else:
            raise ProcessError(f"could not pause {target} outside the sqlite write lock")
        self.rec.fault("pause", target)
        time.sleep(self.rng.uniform(2.5, 4.0))
        self.rec.heal("pause", target)
        proc.sigcont()

    def _sqlite_locked(self) -> bool:
        with contextlib.closing(sqlite3.connect(self.db, 0.2, isolation_level=None)) as db:
            try:
                db.execute("BEGIN IMMEDIATE").execute("ROLLBACK")
            except sqlite3.OperationalError:
                return True
            return False

    def _link(self, name: str, mode: str) -> None:
        if self.kind == "sqlite":  # the node's FaultyStore link (chaos_app)
            (self.history / f"link-{name}").write_text(mode)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.procs[name].pid, signal.SIGUSR1)
            return

        async def apply() -> None:
            for proxy in self.proxies[name]:
                getattr(proxy, mode)()

        self.hub.call(apply())

    def partition(self) -> None:
        target = self.owner_of_random_duty()
        mode = self.rng.choice(("cut", "blackhole"))
        self.rec.fault("partition", target, mode=mode)
        self._link(target, mode)
        time.sleep(self.rng.uniform(2.5, 4.0))
        self.rec.heal("partition", target)
        self._link(target, "heal")

    def member_kill(self) -> None:
        assert self.etcd is not None
        index = self.rng.randrange(self.etcd.members)
        self.rec.fault("member_kill", f"etcd-m{index}")
        self.etcd.kill_member(index)
        time.sleep(self.rng.uniform(2.0, 4.0))
        self.rec.heal("member_kill", f"etcd-m{index}")
        self.etcd.restart_member(index)

    def store_outage(self) -> None:
        every = list(CHECKED_DUTIES)
        down = self.rng.uniform(2.5, 4.0)
        if self.kind == "sqlite":  # another process holds the write lock
            db = sqlite3.connect(self.db, timeout=10, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                self.rec.fault("store_outage", None, mode="sqlite_write_lock", duties=every)
                time.sleep(down)
                self.rec.heal("store_outage", None)
                db.execute("ROLLBACK")
            finally:
                db.close()
            return
        if self.pg is not None:
            self._postgres_outage(every, down)
            return
        assert self.etcd is not None
        mode = self.rng.choice(("kill_members", "cut_proxies"))
        self.rec.fault("store_outage", None, mode=mode, duties=every)
        if mode == "kill_members":
            for i in range(self.etcd.members):
                self.etcd.kill_member(i)
        else:
            for name in self.names:
                self._link(name, "cut")
        time.sleep(down)
        self.rec.heal("store_outage", None)
        if mode == "kill_members":
            for i in range(self.etcd.members):
                self.etcd.restart_member(i, wait=False)
            self.etcd.wait_healthy()
        else:
            for name in self.names:
                self._link(name, "heal")

    def _postgres_outage(self, every: list[str], down: float) -> None:
        assert self.pg is not None
        mode = self.rng.choice(("restart_server", "cut_proxies"))
        self.rec.fault("store_outage", None, mode=mode, duties=every)
        if mode == "restart_server":
            self.pg.stop_server()
        else:
            for name in self.names:
                self._link(name, "cut")
        time.sleep(down)
        self.rec.heal("store_outage", None)
        if mode == "restart_server":
            self.pg.start_server()
        else:
            for name in self.names:
                self._link(name, "heal")

    # -- data-driven duties: documents come and go between faults ------------------------
    def churn_docs(self) -> None:
        """Add one document of the data namespace; delete one of the older ones
        half of the time. ``doc_put`` is recorded before the write (a duty cannot
        start earlier), ``doc_delete`` after its acknowledgement."""
        assert self.store is not None
        self._doc_seq += 1
        key = f"d{self._doc_seq}"
        self.rec.record("doc_put", doc=key)
        with contextlib.suppress(Exception):
            self.hub.call(self.store.txn([], [Put(f"state/{DOCS}/{key}", b'{"n":1}')]), 10)
            self.docs.append(key)
        if len(self.docs) > 2 and self.rng.random() < 0.5:
            gone = self.docs.pop(self.rng.randrange(len(self.docs) - 1))
            with contextlib.suppress(Exception):  # unknown outcome: left out of the checks
                self.hub.call(self.store.txn([], [Delete(f"state/{DOCS}/{gone}")]), 10)
                self.rec.record("doc_delete", doc=gone)

    def doc_duties(self) -> tuple[str, ...]:
        return tuple(DOC_DUTY_PREFIX + k for k in self.docs)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if not proc.alive:
                self.anomalies.append(f"node {name} exited by itself (code {proc.returncode}); "
                                      f"log {proc.log_path}")  # fmt: skip
                self.rec.fault("crash", name, unexpected=True)
                self.restart(name)

    # -- the end ----------------------------------------------------------------------
    def finish(self) -> tuple[dict[str, Any], dict[str, int]]:
        """Settle, stop writes, wait for convergence; the final state and revisions."""
        assert self.store is not None
        self.check_alive()
        self.rec.heal("settled", None)  # G3 is checked from here
        time.sleep(BOUND_S + 1.0)
        (self.history / STOP_FILE).touch()
        time.sleep(ETCD_TIMEOUT + 0.5)  # writes in flight end
        marker = {"final": True, "seed": self.seed}
        rev = self.hub.call(self.store.put("state/chaos/final", json.dumps(marker).encode()))
        self.rec.write_ack("state/chaos/final", marker, rev)
        deadline = time.monotonic() + 15
        applied = latest_applied(self.history, self.names)
        while time.monotonic() < deadline:
            applied = latest_applied(self.history, self.names)
            if len(applied) == len(self.names) and min(applied.values()) >= rev and len(
                set(applied.values())) == 1:  # fmt: skip
                break
            time.sleep(0.2)
        res = self.hub.call(self.store.range("state/"))
        final = {kv.key: json.loads(kv.value) for kv in res.kvs}
        if self.etcd is not None and self.etcd.members > 1:
            self.check_members_agree()
        return final, applied

    def check_members_agree(self) -> None:
        """An anomaly when etcd's members disagree on the mod revisions under ``state/``:
        each member read on its own (linearizably, so caught up), after every write ended.
        Then the store broke its own guarantees (e.g. etcd-io/etcd#13766 in etcd
        3.5.0-3.5.2, after a kill -9 under load) and the violations are not Shoal's."""
        assert self.etcd is not None
        prefix = self.section["etcd"]["prefix"]
        views = []
        for endpoint in self.etcd.endpoints:
            try:
                views.append(self.hub.call(member_view(endpoint, prefix, "state/")))
            except Exception as exc:  # reported, so that the run's other checks still run
                self.anomalies.append(f"etcd member {endpoint} could not be read on its own "
                                      f"after the run: {type(exc).__name__}: {exc}")  # fmt: skip
                return
        differ = disagreeing(views)
        if differ:
            self.anomalies.append(
                f"{STORE_DIVERGED}: etcd {etcd_version(self.etcd.binary)}'s members disagree "
                f"on the mod revisions of {len(differ)} keys (e.g. "
                f"{[[v.get(k) for v in views] for k in differ[:3]]} for {differ[:3]}); "
                "etcd 3.5.0-3.5.2 can do this after a kill -9 (etcd-io/etcd#13766)"
            )

    def stop_nodes(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for name, proc in self.procs.items():
            try:
                code = proc.wait_exit(timeout=20)
            except Exception:
                code = None
            if code != 0:
                self.anomalies.append(f"node {name} did not stop gracefully (code {code})")

    def cleanup(self) -> None:
        for proc in self.all_procs:
            with contextlib.suppress(Exception):
                proc.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.hub.call(self.store.aclose(), timeout=10)
        for proxies in self.proxies.values():
            for p in proxies:
                with contextlib.suppress(Exception):
                    self.hub.call(p.aclose(), timeout=10)
        self.hub.close()
        if self.etcd is not None:
            self.etcd.stop()
        if self.pg is not None:
            self.pg.stop()
        self.rec.close()


def run_chaos(store: str = "etcd3", nodes: int = 5, duration: float = 120.0, seed: int = 1,
              history_dir: Path | None = None, workdir: Path | None = None,
              log: Callable[[str], None] = print) -> ChaosResult:  # fmt: skip
    """One chaos run (see the module doc); every process it started is ended."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="shoal-chaos-"))
    history = Path(history_dir or workdir / "history")
    history.mkdir(parents=True, exist_ok=True)
    if any(history.iterdir()):
        raise InvalidArgument(f"history directory {history} is not empty (a previous run?)")
    command = (f"python -m shoal.testing.chaos --store {store} --nodes {nodes} "
               f"--duration {duration:g} --seed {seed}")  # fmt: skip
    log(f"{command}\nworkdir {workdir}; history {history}")
    injected: list[str] = []
    t0 = time.monotonic()
    chaos = Chaos(store, nodes, seed, workdir, history)
    try:
        chaos.start()
        time.sleep(TTL)  # duties placed
        start = time.monotonic()
        for kind in fault_kinds(store, seed):
            if len(injected) >= quota_size(store) and time.monotonic() - start >= duration:
                break
            chaos.check_alive()
            injected.append(kind)
            log(f"[{time.monotonic() - t0:6.1f}s] fault {len(injected)}: {kind}")
            getattr(chaos, kind)()
            chaos.churn_docs()
            time.sleep(chaos.rng.uniform(0.5, 2.0))
        final_state, applied = chaos.finish()
        chaos.stop_nodes()
    finally:
        chaos.cleanup()
    recs = load_history([history])
    return analyse(
        recs, final_state=final_state, final_revisions=applied,
        duties=(*CHECKED_DUTIES, *chaos.doc_duties()),
        bound_s=BOUND_S, outage_grace_s=float(TTL), planned=injected, anomalies=chaos.anomalies,
        elapsed=time.monotonic() - t0, command=command,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.testing.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=STORES, default="etcd3")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--history-dir", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_chaos(args.store, args.nodes, args.duration, args.seed, args.history_dir,
                       args.workdir, log=lambda s: print(s, flush=True))  # fmt: skip
    print(result.text())
    return 0 if result.ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
