"""Real OS processes (``shoal run examples/basic_app.py:app``) on sqlite, a real etcd and a
real PostgreSQL:
crash with and without the reaper, pause longer than the TTL, duplicate name, SIGTERM.

Nodes use the ``local`` preset (TTL 2 s, keep-alive every 0.667 s) and a long
``rebalance_delay`` so that duties move only because of the fault under test.
Every process is killed by PID when the test ends (``ProcCluster``)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.config import StoreSection, parse_config
from shoal.errors import NameTaken
from shoal.primitives.ownership import guard
from shoal.runtime.thread import NodeThread
from shoal.store.factory import open_store
from shoal.store.protocol import Put
from shoal.testing.pg_server import PgServer
from shoal.testing.procs import REPO, NodeProcess, ProcCluster

TTL = 2.0
INTERVAL = TTL / 3
pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd), "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "shoal.db")}}
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        postgres = {"host": pg.host, "port": pg.port, "user": pg.user, "dbname": "postgres",
                    "password": pg.password, "schema": f"procs_{uuid.uuid4().hex[:8]}"}  # fmt: skip
        return {"backend": "postgres", "postgres": postgres}
    endpoints = request.getfixturevalue("etcd_endpoints")
    prefix = f"/procs-{uuid.uuid4().hex[:8]}"
    return {"backend": "etcd", "etcd": {"endpoints": endpoints, "prefix": prefix}}


@pytest.fixture
def cluster(tmp_path: Path, store_config: dict[str, Any]) -> Iterator[ProcCluster]:
    base = {
        "cluster": "procs",
        "store": store_config,
        "timings": {"preset": "local", "rebalance_delay": 60},
        "reaper": {"enabled": True},
        "params": {"tick": 0.2},
    }
    with ProcCluster(tmp_path, base) as procs:
        yield procs


def started(duty: str) -> str:
    return rf"\bstarted {re.escape(duty)} \(token (\d+)\)"


def two_nodes(cluster: ProcCluster, **overrides: Any) -> tuple[NodeProcess, NodeProcess]:
    """Start a and b together; return (owner of ``ticker``, the other)."""
    a, b = cluster.spawn("a", **overrides), cluster.spawn("b", **overrides)
    for node in (a, b):
        node.wait_for(r"joined cluster", timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        owners = [n for n in (a, b) if re.search(started("ticker"), n.output())]
        if owners:
            assert len(owners) == 1, "two nodes started ticker"
            owner = owners[0]
            other = b if owner is a else a
            other.wait_for(r"members a,b", timeout=10)
            return owner, other
        time.sleep(0.02)
    raise AssertionError("nobody started ticker")


def takeover(fault: Any, survivor: NodeProcess, duty: str = "ticker") -> tuple[float, int]:
    """Run ``fault()``; seconds until ``survivor`` starts ``duty``, and its token."""
    mark = survivor.mark()
    t0 = time.monotonic()
    fault()
    match = survivor.wait_for(started(duty), since=mark, timeout=TTL + 8, poll=0.005)
    return time.monotonic() - t0, int(match.group(1))


def test_kill9_with_reaper_fails_over_well_under_the_ttl(
    cluster: ProcCluster, store_config: dict[str, Any]
) -> None:
    owner, other = two_nodes(cluster)
    took, _ = takeover(owner.kill9, other)
    print(f"\n[{store_config['backend']}] kill -9 with reaper: taken over in {took * 1000:.0f} ms")
    assert took < TTL / 2
    other.wait_for(r"runs janitor,leader,sync-worker,ticker", timeout=5)
    assert re.search(r"shoal reaper\[\d+\]: .* revoked", owner.output())


def test_kill9_without_reaper_waits_for_the_lease(
    cluster: ProcCluster, store_config: dict[str, Any]
) -> None:
    owner, other = two_nodes(cluster, reaper={"enabled": False})
    took, _ = takeover(owner.kill9, other)
    print(f"\n[{store_config['backend']}] kill -9 without reaper: taken over in {took:.2f} s")
    assert TTL - INTERVAL - 0.3 <= took <= TTL + 3
    assert "no reaper" in owner.output()


def _sigstop_outside_sqlite_lock(node: NodeProcess, store_config: dict[str, Any]) -> None:
    """SIGSTOP ``node``, but never while it holds the SQLite write lock (a paused
    lock holder stalls every process on that file: a limit of the sqlite backend)."""
    for _ in range(20):
        node.sigstop()
        if store_config["backend"] != "sqlite":
            return
        db = sqlite3.connect(store_config["sqlite"]["path"], timeout=0.2, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            node.sigcont()
            time.sleep(0.03)
        finally:
            db.close()
    raise AssertionError("could not pause the node outside the sqlite write lock")


async def _writers_since(store_config: dict[str, Any], key: str, revision: int) -> list[str]:
    """Which nodes wrote ``key`` at or after ``revision`` (from the store's history)."""
    store = await open_store(StoreSection(**store_config))
    try:
        current = await store.revision()
        nodes: list[str] = []
        events = store.watch(key, revision)
        try:
            async with asyncio.timeout(5):
                async for ev in events:
                    if ev.kv.key == key and ev.kv.value:
                        nodes.append(json.loads(ev.kv.value)["node"])
                    if ev.revision > current:
                        break
        finally:
            await events.aclose()
        return nodes
    finally:
        await store.aclose()


async def _ticker_owner(store_config: dict[str, Any]) -> tuple[str, int] | None:
    store = await open_store(StoreSection(**store_config))
    try:
        kv = await store.get("duties/ticker")
        return None if kv is None else (json.loads(kv.value)["node"], kv.create_revision)
    finally:
        await store.aclose()


async def _write_with_token(store_config: dict[str, Any], token: int) -> bool:
    """Try a write fenced by ``ticker``'s ``token``, as the paused owner would."""
    store = await open_store(StoreSection(**store_config))
    try:
        res = await store.txn([guard("ticker", token)], [Put("state/ticker", b"stale")])
        return res.succeeded
    finally:
        await store.aclose()


def test_sigstop_longer_than_ttl_is_replaced_and_fenced(
    cluster: ProcCluster, store_config: dict[str, Any]
) -> None:
    owner, other = two_nodes(cluster)
    match = re.search(started("ticker"), owner.output())
    assert match is not None
    old_token = int(match.group(1))
    # pause only once the owner has written with its token (else "it wrote, and the
    # write is now refused" below would depend on how fast the machine is)
    deadline = time.monotonic() + 15
    while owner.name not in asyncio.run(_writers_since(store_config, "state/ticker", old_token)):
        assert time.monotonic() < deadline, "the owner never wrote with its token"
        time.sleep(0.1)
    took, token = takeover(lambda: _sigstop_outside_sqlite_lock(owner, store_config), other)
    print(f"\n[{store_config['backend']}] SIGSTOP: replaced after {took:.2f} s (lease expiry)")
    assert took >= TTL - INTERVAL - 0.3, "replaced too early: was the lease revoked?"
    assert "revoked" not in owner.output(), "the reaper acted on a paused node"
    mark = owner.mark()
    owner.sigcont()
    owner.wait_for(r"\bstopped ticker \(lease lost", since=mark, timeout=5)
    owner.wait_for(r"JOINING -> ACTIVE", since=mark, timeout=10)  # rejoined, not as owner
    # the new owner's key is untouched (same token): the rejoined node never took it
    holder = asyncio.run(_ticker_owner(store_config))
    assert holder == (other.name, token), holder
    assert not re.search(started("ticker"), owner.output()[mark:])
    writers = asyncio.run(_writers_since(store_config, "state/ticker", token))
    assert writers and set(writers) == {other.name}, f"the old owner's write landed: {writers}"
    # not vacuous: the old owner did write with its token before the pause, and a write
    # with that token is now refused by the store itself (G2 even if it had not noticed)
    before = asyncio.run(_writers_since(store_config, "state/ticker", old_token))
    assert owner.name in before, f"the paused owner never wrote: {before}"
    assert not asyncio.run(_write_with_token(store_config, old_token)), "stale token accepted"
    assert "revoked" not in owner.output()


def test_duplicate_name_exits_with_one_line_error(
    cluster: ProcCluster, store_config: dict[str, Any]
) -> None:
    first = cluster.spawn("a")
    first.wait_for(r"joined cluster", timeout=20)
    dup = cluster.spawn("a")
    assert dup.wait_exit(timeout=20) == 2
    errors = [line for line in dup.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, dup.output()
    assert "NameTaken" in errors[0] and "'a'" in errors[0]
    assert first.alive and "revoked" not in dup.output()
    first.wait_for(started("ticker"))


def test_sigterm_hands_over_within_a_second(
    cluster: ProcCluster, store_config: dict[str, Any]
) -> None:
    owner, other = two_nodes(cluster)
    took, _ = takeover(owner.terminate, other)
    print(f"\n[{store_config['backend']}] SIGTERM: handed over in {took * 1000:.0f} ms")
    assert took < 1.0
    assert owner.wait_exit(timeout=10) == 0
    other.wait_for(r"runs janitor,leader,sync-worker,ticker", timeout=3)
    out = owner.output()
    assert "SIGTERM: draining" in out and f"node {owner.name} stopped" in out
    assert "revoked" not in out  # the reaper was told to exit, not to revoke


def _shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], capture_output=True, text=True,
        timeout=30, cwd=cwd,
    )


@pytest.mark.parametrize("spec", ["no.such.module:app", "json:dumps", "json", "json:nope"])
def test_run_bad_app_path_exits_2(tmp_path: Path, spec: str) -> None:
    out = _shoal("run", spec, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: bad app") and len(out.stderr.splitlines()) == 1


def test_run_store_unreachable_exits_3(tmp_path: Path) -> None:
    (tmp_path / "n.yaml").write_text(
        "store: {backend: etcd, etcd: {endpoints: ['http://127.0.0.1:1'], timeout: 1}}\n"
    )
    out = _shoal("run", "examples.basic_app:app", "-c", str(tmp_path / "n.yaml"),
                 cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 3, out.stderr
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("error:")] == [
        out.stderr.strip().splitlines()[-1]
    ]


def test_node_thread_for_sync_code(tmp_path: Path) -> None:

    spec = importlib.util.spec_from_file_location("basic_app", REPO / "examples/basic_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = {
        "node": {"name": "t1"}, "timings": {"preset": "local"}, "params": {"tick": 0.1},
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "s.db")}},
    }
    with NodeThread(module.app, parse_config(data)) as node:
        assert node.phase == "ACTIVE"
        deadline = time.monotonic() + 5
        while len(node.owners) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.leader == "t1" and set(node.members) == {"t1"}
        assert sorted(node.owners) == ["janitor", "leader", "sync-worker", "ticker"]
        with pytest.raises(NameTaken):
            NodeThread(module.app, parse_config(data)).start(timeout=10)
    assert node.phase == "STOPPED"
